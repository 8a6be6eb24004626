"""Largest differences of the one-pass metrics and of THR against their float64 references.

Prints the "measured" numbers of docs/fidelity.md as ``name=value`` lines (run from the
repository root: ``python bench/fidelity.py``, about a minute on 2 CPU cores):

* the one-pass token and sequence metrics of ``analysis.scoring.score_forward`` against the
  float64 naive recomputation of tests/unit/test_scoring.py (``_naive_row``), 20 random seeds of
  its hand-made logits batch;
* THR's full-vocabulary matrix form (``analysis.thr.thr_full_vocab``) against the literal
  double sum (``thr_naive`` over every id), float64 with tiny chunks and float32, relative to
  the largest |THR| of each group.

The THR-vs-autograd and V* agreement numbers come from
tests/integration/test_groups_tiny.py (``pytest -s``), the CCP ones from tests/unit/test_ccp.py.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.unit import test_scoring as ts  # noqa: E402
from tests.unit.test_thr import _full_features, _head_group  # noqa: E402
from tokenprism.analysis.scoring import score_forward  # noqa: E402
from tokenprism.analysis.thr import thr_full_vocab, thr_naive  # noqa: E402


def _gap(got: Any, ref: Any, relative: bool = False) -> float:
    """Largest |got - ref| (relative to |ref| if asked) where ``ref`` is not NaN."""
    a, b = np.asarray(got, float), np.asarray(ref, float)
    keep = ~np.isnan(b)
    diff = np.abs(a[keep] - b[keep])
    if relative:
        diff = diff / np.maximum(np.abs(b[keep]), 1e-300)
    return float(diff.max()) if diff.size else 0.0


def one_pass(seeds: int = 20) -> dict[str, float]:
    worst: dict[str, float] = {}

    def keep(name: str, value: float) -> None:
        worst[name] = max(worst.get(name, 0.0), value)

    for seed in range(seeds):
        d: dict[str, Any] = ts._batch(seed)
        scored = score_forward(
            d["logits"], d["hidden"], d["input_ids"], d["attention"], d["response"], ts._params()
        )
        for b, sc in enumerate(scored):
            n = ts.LENGTHS[b]
            ref = ts._naive_row(d["logits"][b].numpy(), d["input_ids"][b].numpy(), n)
            for name in ("logprob", "prob", "surprisal_bits", "entropy", "margin"):
                keep(name, _gap(sc.token[name].numpy(), ref[name]))
            keep("kurtosis_rel", _gap(sc.token["kurtosis"].numpy(), ref["kurtosis"], True))
            keep("rank", _gap(sc.token["rank"].numpy()[1:], ref["rank"][1:]))
            keep("gltr_bucket", _gap(sc.token["gltr_bucket"].numpy()[1:], ref["gltr_bucket"][1:]))
            sel = slice(ts.PROMPT, n)
            lp = ref["logprob"][sel]
            s = sc.sequence
            gm = [s["geometric_mean_confidence"]]
            keep("geometric_mean_confidence_rel", _gap(gm, [math.exp(lp.mean())], True))
            keep("perplexity_rel", _gap([s["perplexity"]], [math.exp(-lp.mean())], True))
            keep("mean_prob", _gap([s["mean_prob"]], [np.exp(lp).mean()]))
            keep("mean_entropy", _gap([s["mean_entropy"]], [ref["entropy"][sel].mean()]))
            mk = [ref["kurtosis"][sel].mean()]
            keep("mean_kurtosis_rel", _gap([s["mean_kurtosis"]], mk, True))
            buckets = ref["gltr_bucket"][sel]
            got = [s["gltr_top10"], s["gltr_top100"], s["gltr_top1000"], s["gltr_rest"]]
            keep("gltr_fractions", _gap(got, [float(np.mean(buckets == k)) for k in range(4)]))
    return worst


def thr(seeds: int = 6) -> dict[str, float]:
    worst = {"thr_matrix_vs_naive_float64_rel": 0.0, "thr_matrix_vs_naive_float32_rel": 0.0}
    cases: tuple[tuple[list[int], list[float]], ...] = (
        ([5, 3, 7, 4], [1, 0, 1, 0]),
        ([6, 0, 9], [0, 1, 1]),
        ([4, 4, 1], [1, 1, 1]),
    )
    for seed in range(seeds):
        for lengths, rewards in cases:
            ids, hidden, weight, bias = _head_group(lengths, seed=seed)
            vocab = torch.arange(weight.shape[0])
            ref = thr_naive(_full_features(ids, hidden, rewards, weight, bias), vocab)
            scale = max(float(r.abs().max()) for r in ref if r.numel())
            exact = thr_full_vocab(
                ids, hidden, rewards, weight, bias, dtype=torch.float64, max_block=7
            )
            single = thr_full_vocab(ids, hidden, rewards, weight.float(), bias.float())
            runs = (("float64", exact), ("float32", single))
            for name, (got, _) in runs:
                gap = max(
                    float((g.double() - r).abs().max()) / scale
                    for g, r in zip(got, ref, strict=True)
                    if r.numel()
                )
                key = f"thr_matrix_vs_naive_{name}_rel"
                worst[key] = max(worst[key], gap)
    return worst


def main() -> None:
    for name, value in {**one_pass(), **thr()}.items():
        print(f"{name}={value:.3g}")


if __name__ == "__main__":
    main()
