"""The compiled vocabulary sweep: same values as the eager one, used only once it is ready."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tokenprism.analysis.logits import LogitMetricParams, head_logit_metrics, vocab_moments
from tokenprism.backend.scoring import compiled
from tokenprism.backend.scoring.compiled import fused_moments, moments_for, start_warm_up


def _logits(rows: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """Peaked, flat and in-between rows, like a language model's."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.01, 12.0, rows).unsqueeze(-1)
    return torch.randn(rows, vocab, generator=g) * scale


def _naive(z: torch.Tensor) -> list[np.ndarray]:
    """S, sum e (z - m), mean d^2, mean d^4 in float64 numpy, one row at a time."""
    out: list[list[float]] = [[], [], [], []]
    for row in z.double().numpy():
        zc = row - row.max()
        e = np.exp(zc)
        s = e.sum()
        d = e / s - 1.0 / row.size
        for i, v in enumerate((s, (e * zc).sum(), (d**2).mean(), (d**4).mean())):
            out[i].append(float(v))
    return [np.array(v) for v in out]


@pytest.mark.unit
def test_both_sweeps_match_a_naive_float64_loop() -> None:
    z = _logits(16, 3000)
    want = _naive(z)
    for fn in (vocab_moments, fused_moments):
        got = fn(z.clone(), z.amax(-1))
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g.double().numpy(), w, rtol=2e-5)


@pytest.mark.unit
def test_off_means_no_compile_and_the_eager_path() -> None:
    lm = SimpleNamespace(compile_metrics="off", device=torch.device("cpu"))
    assert start_warm_up(lm, 16) is False
    assert moments_for(lm, 16) is None


def test_compiled_kernel_equals_eager_metrics(tiny_lm: object) -> None:
    """Policy ``on`` compiles on first use; the metrics equal the eager ones within 1e-5."""
    if not compiled.compiler_available(torch.device("cpu")):
        pytest.skip("no C++ compiler for Inductor on this machine")
    lm = replace(tiny_lm, compile_metrics="on")  # type: ignore[type-var]
    params = LogitMetricParams(chunk_positions=4, head_positions=8)
    kernel = moments_for(lm, params.chunk_positions)
    assert kernel is not None  # compiled (or the test machine's compiler failed: see the log)
    head = lm.model.get_output_embeddings()
    hidden = torch.randn(2, 11, head.weight.shape[1]) * 3  # 11: the last block is shorter
    targets = torch.randint(0, head.weight.shape[0], (2, 11))
    with torch.inference_mode():
        eager = head_logit_metrics(hidden, head, targets, params, [11, 7])
        fused = head_logit_metrics(hidden, head, targets, params, [11, 7], kernel)
    for name in ("logprob", "entropy", "margin", "kurtosis", "top_probs"):
        a, b = getattr(eager, name), getattr(fused, name)
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True), name
    assert torch.equal(eager.rank, fused.rank) and torch.equal(eager.top_ids, fused.top_ids)
    vocab = head.weight.shape[0]
    assert ("cpu", 4, vocab) in compiled._READY
