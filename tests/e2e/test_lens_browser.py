"""The lens in a real headless Chromium, on the tiny model (fast enough for a 2-core CI box).

A person opens a run, computes the logit lens, sees the layer x token heatmap, clicks a cell
of a response token and gets that layer's top-5 and the prompt coloured by the token's
attribution. The default model's version of the same view is the screenshot in
test_screenshots.py (its IG takes minutes on a loaded CPU).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.test_browser import (  # noqa: F401 - fixtures are found by name
    CHROMEDRIVER,
    CHROMIUM,
    _shot,
    _streamlit,
    _wait_rerender,
    browser,
)

pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="BROWSER TEST SKIPPED: Debian packages chromium and chromium-driver are not "
        "installed (apt-get install chromium chromium-driver)",
    ),
]


@pytest.fixture(scope="module")
def tiny_ui(live_backend: str) -> Iterator[str]:
    yield from _streamlit(live_backend)


def _button(driver: Any, text: str) -> Any:
    from selenium.webdriver.common.by import By

    return _wait_rerender(
        driver,
        lambda d: next((b for b in d.find_elements(By.TAG_NAME, "button") if text in b.text), None),
        timeout=90,
    )


def _lens_points(driver: Any, n_layers: int, n_tokens: int) -> Any:
    from selenium.webdriver.common.by import By

    def _drawn(d: Any) -> Any:
        # the lens chart is the one with a log10-rank colour bar (the run view has others)
        for plot in d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot"):
            if "log10 rank" not in plot.text:
                continue
            found = plot.find_elements(By.CSS_SELECTOR, ".scatterlayer path.point")
            if len(found) >= n_layers * n_tokens:
                return found
        return None

    return _wait_rerender(driver, _drawn, timeout=90)


def test_open_a_run_see_the_lens_click_a_token_see_its_attribution(
    browser: Any,  # noqa: F811
    tiny_ui: str,
    live_backend: str,
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    body = {
        "prompt": "What is the capital of Australia?",
        "response": "It is Canberra, not Sydney.",
    }
    run = httpx.post(f"{live_backend}/api/v1/runs", json=body, timeout=300).json()
    response = [t for t in run["tokens"] if not t["is_prompt"]]
    driver = browser
    driver.get(f"{tiny_ui}/?run={run['run_id']}")
    button = _button(driver, "Compute the logit lens")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
    button.click()
    n_layers = 3  # embeddings + the tiny model's 2 blocks
    # one square per (response token, layer), tokens along x, layers up y
    points = _lens_points(driver, n_layers, len(response))
    lens = httpx.get(f"{live_backend}/api/v1/runs/{run['run_id']}/lens", timeout=60).json()
    assert lens["layers"] == n_layers
    assert len(points) == n_layers * len(response)
    # the cell of the 3rd response token at layer 1 (points run token by token, layer by layer)
    target = response[2]
    cell = points[2 * n_layers + 1]
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", cell)
    ActionChains(driver).move_to_element(cell).click().perform()
    try:
        _wait_rerender(driver, lambda d: "Top-5 at layer 1" in d.page_source, timeout=60)
        # the click explained the token: the prompt, coloured on a diverging scale
        spans = _wait_rerender(
            driver,
            lambda d: (
                (found := d.find_elements(By.CSS_SELECTOR, ".tp-attr span[title]"))
                and len(found) >= target["position"]
                and found
            ),
            timeout=90,
        )
    except Exception:
        _shot(driver, "lens-tiny-failed.png")
        raise
    stored = httpx.get(
        f"{live_backend}/api/v1/runs/{run['run_id']}/attributions",
        params={"position": target["position"]},
        timeout=60,
    ).json()["attributions"]
    assert [a["method"] for a in stored] == ["ig"]  # one attribution, from the click
    assert stored[0]["completeness_error"] < 0.05
    colours = {s.value_of_css_property("background-color") for s in spans}
    assert len(colours) >= 5  # a diverging scale over the prompt, not one colour
    assert "Australia" in "".join(s.text for s in spans)
    page = driver.page_source
    assert f"{target['position']}: {target['text']!r}" in page  # the clicked token is explained
    assert "completeness error" in page and "direct logit attribution per block" in page
    header = driver.find_element(By.XPATH, "//*[contains(text(), 'Where the tokens came from')]")
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", header)
    _shot(driver, "lens-tiny.png")
