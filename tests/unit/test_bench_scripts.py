"""The benchmark scripts' helpers: naive per-metric tools, their agreement check, peak memory.

``bench/`` is not a package (its scripts run as ``python bench/x.py``), so the scripts are
loaded from their file paths.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from tokenprism.analysis.scoring import ScoredSequence, ScoringParams, score_forward
from tokenprism.backend.scoring.runner import score_batch

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str) -> ModuleType:
    """Import ``bench/<name>.py`` under its own name (the scripts import each other so)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


naive = _load("one_pass_vs_naive")
throughput = _load("throughput")


def _hand_made(
    seed: int = 0, t: int = 30, vocab: int = 60, d: int = 12, layers: int = 3
) -> tuple[Any, ScoredSequence]:
    """Peaked random logits, token ids and hidden states of one text; its one-pass scores."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(t, vocab, generator=g) * 4.0
    ids = torch.randint(0, vocab, (t,), generator=g)
    hidden = tuple(torch.randn(t, d, generator=g) * (i + 1) for i in range(layers + 1))
    steps = (6, 17, 25)
    mask = torch.ones(1, t, dtype=torch.bool)
    scored = score_forward(
        logits[None],
        tuple(h[None] for h in hidden),
        ids[None],
        mask,
        mask,
        ScoringParams(erv_stride=5, layers="all"),
        [list(steps)],
    )[0]
    return naive.Pass(logits=logits, ids=ids, hidden=hidden, steps=steps), scored


def test_naive_tools_agree_with_score_forward_on_hand_made_logits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(naive, "ERV_STRIDE", 5)  # several ERV prefixes on 30 tokens
    p, scored = _hand_made()
    values = naive.all_tools(p)
    assert set(values) == set(naive.TOLERANCE)
    naive.check_agreement(values, scored, "hand-made")
    # relative to each value's size: perplexity here is ~1e4, where float32 rounding of the
    # mean log-probability alone moves it by a few hundredths, differently on AVX2 and AVX-512
    scale = {k: 1.0 + float(v.double().abs().nan_to_num(0.0).max()) for k, v in values.items()}
    relative = {k: d / scale[k] for k, d in naive.differences(values, scored).items()}
    assert max(relative.values()) < 1e-5, relative
    assert values["effective_rank"].shape == (4,)
    assert int((~values["step_first_surprisal"].isnan()).sum()) == 3
    assert float(values["erv"]) != 0.0 and float(values["era"]) != 0.0


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("entropy", lambda v: v * 1.001),
        ("rank", lambda v: v.roll(1)),
        ("window_entropy", lambda v: v.roll(1)),
        ("effective_rank", lambda v: v * 1.05),
        ("perplexity", lambda v: v * 1.001),
    ],
)
def test_agreement_check_fails_on_a_wrong_value(
    name: str,
    change: Callable[[torch.Tensor], torch.Tensor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(naive, "ERV_STRIDE", 5)
    p, scored = _hand_made(seed=1)
    values = naive.all_tools(p)
    values[name] = change(values[name])
    with pytest.raises(AssertionError, match=name):
        naive.check_agreement(values, scored, "broken")
    del values[name]
    with pytest.raises(AssertionError, match="did not compute"):
        naive.check_agreement(values, scored, "incomplete")


def test_padded_check_tolerates_a_rare_near_tie_flip_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(naive, "ERV_STRIDE", 5)
    p, scored = _hand_made(seed=2, t=150)
    values = naive.all_tools(p)
    one_flip = values["rank"].clone()
    one_flip[7] += 1  # 1 of 149 positions
    values["rank"] = one_flip
    with pytest.raises(AssertionError, match="rank"):
        naive.check_agreement(values, scored, "alone")
    naive.check_agreement(values, scored, "batched", padded=True)
    values["rank"] = one_flip.roll(1)
    with pytest.raises(AssertionError, match="rank"):
        naive.check_agreement(values, scored, "batched", padded=True)


def test_naive_loop_matches_score_batch_on_the_tiny_model(tiny_lm) -> None:  # type: ignore[no-untyped-def]
    enc = naive.exact_text(tiny_lm.tokenizer, 200, 3, tiny_lm.context_length)
    assert enc.n_tokens == 200 and "".join(enc.token_texts) == enc.text
    values, seconds = naive.run_naive(tiny_lm, enc)
    assert set(seconds) == set(naive.TOOLS) and all(s > 0 for s in seconds.values())
    scored = score_batch(tiny_lm, [enc], ScoringParams(layers="all"))[0].scores
    assert scored.sequence["n_steps"] >= 1
    naive.check_agreement(values, scored, "tiny")


def test_peak_growth_sees_a_known_allocation() -> None:
    size = 64 * throughput.MIB
    methods = ["sampled"] + (["hwm"] if throughput.cpu_memory_method() == "hwm" else [])
    for method in methods:
        with throughput.peak_growth(torch.device("cpu"), method) as peak:
            x = torch.ones(size // 4)  # float32: written, so resident
            time.sleep(0.05)  # the sampler reads every millisecond
            del x
        assert 0.9 * size < peak[0] < 1.5 * size, (method, peak[0] / throughput.MIB)


def test_throughput_table_helpers() -> None:
    assert throughput.ints("1, 2,4,") == [1, 2, 4]
    rows = [
        {"sweep": "batch", "batch": 1, "tok": 100.0},
        {"sweep": "batch", "batch": 4, "tok": 250.0},
        {"sweep": "length", "batch": 1, "tok": 50.0},
    ]
    assert throughput.scaling(rows, "batch", "tok") == 2.5
    table = throughput.markdown(rows).splitlines()
    assert table[0] == "| sweep | batch | tok |" and len(table) == 5
