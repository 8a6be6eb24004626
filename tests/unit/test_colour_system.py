"""One colour system: palette from the registry, signed scales centred on 0, readable text."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tokenprism.analysis.registry import get_metric, list_metrics
from tokenprism.backend.display import (
    DIVERGING_STOPS,
    SEQUENTIAL_STOPS,
    colour_scale,
    contrast_ratio,
    diverging_colour,
    legend_html,
    ramp_colour,
    text_colour,
)


def _toks(metric: str, values: list[float]) -> list[dict[str, float]]:
    return [{metric: v} for v in values]


@pytest.mark.parametrize("metric", ["thr", "thr_advantage", "tempo_td", "tempo_advantage"])
def test_signed_metrics_are_marked_and_get_the_diverging_palette(metric: str) -> None:
    assert get_metric(metric).signed
    scale = colour_scale(metric, _toks(metric, [-41.0, -3.0, 0.5, 12.0]), mode="run")
    assert scale.signed and scale.low == -scale.high
    # negative and positive values of the same size get different hues, 0 is near white
    neg, pos = scale.colour(-scale.high), scale.colour(scale.high)
    assert neg == diverging_colour(0.0) and pos == diverging_colour(1.0)
    assert neg != pos
    zero = scale.colour(0.0)
    assert zero == diverging_colour(0.5)
    assert min(int(c) for c in re.findall(r"\d+", zero)) > 230


def test_unsigned_metrics_get_the_sequential_palette() -> None:
    for metric in ("entropy", "prob", "surprisal_bits", "probe", "ccp"):
        spec = get_metric(metric)
        assert not spec.signed and spec.natural_range is not None
        scale = colour_scale(metric, _toks(metric, [0.2, 0.9]))
        colours = {scale.colour(v) for v in np.linspace(*spec.natural_range, 5)}
        sequential = {ramp_colour(x) for x in np.linspace(0, 1, 101)}
        assert colours <= sequential, metric


def test_direction_orients_the_sequential_palette() -> None:
    light, dark = f"rgb{SEQUENTIAL_STOPS[-1]}".replace(" ", ""), f"rgb{SEQUENTIAL_STOPS[0]}"
    dark = dark.replace(" ", "")
    assert colour_scale("entropy", []).colour(0.0) == light  # certain
    assert colour_scale("entropy", []).colour(4.0) == dark  # uncertain
    assert colour_scale("prob", []).colour(1.0) == light  # confident metric: high is certain
    assert colour_scale("prob", []).colour(0.0) == dark


def test_scale_modes_set_the_domain() -> None:
    values = list(np.linspace(0.0, 2.0, 101))
    fixed = colour_scale("entropy", _toks("entropy", values))
    assert (fixed.low, fixed.high) == (0.0, 4.0)
    run = colour_scale("entropy", _toks("entropy", values), mode="run")
    assert run.low == pytest.approx(np.percentile(values, 1))
    assert run.high == pytest.approx(np.percentile(values, 99))
    upload_values = [*values, 3.0, 3.5]
    upload = colour_scale("entropy", [], mode="upload", values=upload_values)
    assert upload.high == pytest.approx(np.percentile(upload_values, 99))
    with pytest.raises(ValueError, match="scale mode"):
        colour_scale("entropy", [], mode="nope")


def test_signed_legend_is_centred_on_zero_and_prints_the_domain() -> None:
    scale = colour_scale("thr", _toks("thr", [-41.0, -2.0, 5.0, 8.0]), mode="run")
    legend = legend_html(scale)
    low = float(re.search(r'class="lo">([^<]+)<', legend).group(1))  # type: ignore[union-attr]
    high = float(re.search(r'class="hi">([^<]+)<', legend).group(1))  # type: ignore[union-attr]
    assert low == pytest.approx(-high)
    assert f"domain [{scale.low:.3g}, {scale.high:.3g}]" in legend
    assert 'class="zero"' in legend
    # the gradient's middle stop is the colour of 0
    stops = re.findall(r"rgb\(\d+,\d+,\d+\)", legend.split("linear-gradient")[1])
    assert stops[4] == scale.colour(0.0) == diverging_colour(0.5)


@pytest.mark.parametrize("stops", [SEQUENTIAL_STOPS, DIVERGING_STOPS])
def test_text_on_every_background_is_readable(stops: tuple[tuple[int, int, int], ...]) -> None:
    for x in np.linspace(0, 1, 41):
        bg = ramp_colour(float(x)) if stops is SEQUENTIAL_STOPS else diverging_colour(float(x))
        fg = text_colour(bg)
        assert fg in ("#000000", "#ffffff")
        # the better of black and white always reaches WCAG AA for large text
        assert contrast_ratio(bg, fg) >= 4.5, (bg, fg)
    assert text_colour(ramp_colour(1.0)) == "#ffffff"  # dark purple
    assert text_colour(ramp_colour(0.0)) == "#000000"  # light yellow


def test_contrast_ratio_matches_wcag_extremes() -> None:
    assert contrast_ratio("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast_ratio("rgb(10,20,30)", "rgb(10,20,30)") == pytest.approx(1.0)


def test_every_registered_metric_has_a_scale() -> None:
    for spec in list_metrics("token"):
        scale = colour_scale(spec.name, _toks(spec.name, [0.1, 0.5]), mode="fixed")
        assert scale.high > scale.low
