"""Benchmark: TokenPrism's one-pass scoring vs one forward pass per metric (separate tools).

Run with ``make bench-naive`` (or ``.venv/bin/python bench/one_pass_vs_naive.py``; ``--quick``
for a smoke run of well under a minute, ``--repeats N``, ``--device cpu|cuda``). On the embedded
default model and 8 texts of 200-400 tokens (prose with reasoning steps), interleaved and
repeated (median of ``--repeats``):

* naive: what a user of separate tools pays. For each text and each of 11 tools (surprisal,
  perplexity, entropy, GLTR rank, top-2 margin, top-k alternatives, kurtosis, ARES window
  entropy, ASAP step surprisal, per-layer effective rank, ERV/ERA) one forward pass of the
  model on that text (hidden states only for the last two) and simple per-metric code
  (full-vocabulary softmax per tool; effective ranks from ``torch.linalg.svdvals``, where
  TokenPrism's default takes the faster Gram eigenvalues);
* one-pass, per text: ``score_batch`` on each text alone (one forward pass, every token,
  sequence and layer metric, claim metrics too);
* one-pass, batched: ``score_batch`` on all texts at once (one right-padded forward pass).

Interleaving: each repeat runs the naive loop and the one-pass run on the same text back to
back (order alternating), and the batched run first or last (alternating).

Before any timing is printed the naive values are checked against TokenPrism's (token,
sequence and layer level, every text; against the batched run too in float32): the script
fails rather than print a ratio of two computations that disagree. It prints the largest
naive/one-pass difference per metric, one line per text (tokens, naive seconds, one-pass
seconds, their ratio), the naive seconds per tool, the totals (sums of the per-text
medians; the batched run: median of its repeats), then
``one_pass_per_text_speedup=<naive / one-pass per text>`` and, last,
``one_pass_speedup=<naive / one-pass batched>``.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from tokenprism.analysis.scoring import ScoredSequence, ScoringParams
from tokenprism.backend.models.loader import LoadedModel, load_model
from tokenprism.backend.scoring.encoding import EncodedText, encode_text
from tokenprism.backend.scoring.runner import score_batch, step_positions
from tokenprism.backend.settings import get_settings

# Constants a separate tool would hard-code; main() checks they are TokenPrism's defaults.
TOP_K = 10
GLTR_EDGES = (10, 100, 1000)
WINDOW = 4
ERV_STRIDE = 40
ERV_MAX_LEN = 512
EPS = 1e-8

PLACES = [
    ("France", "Paris"),
    ("Italy", "Rome"),
    ("Japan", "Tokyo"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Canada", "Ottawa"),
    ("Norway", "Oslo"),
    ("Egypt", "Cairo"),
    ("Chile", "Santiago"),
    ("Spain", "Madrid"),
]
GOODS = ["pens", "apples", "tickets", "books", "lamps", "chairs"]


def prose(tokenizer: Any, target_tokens: int, seed: int) -> str:
    """Deterministic varied prose with blank-line reasoning steps, at least ``target_tokens``."""
    rng = random.Random(seed)
    parts: list[str] = []
    while True:
        country, city = rng.choice(PLACES)
        a, b, n = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 40)
        good = rng.choice(GOODS)
        kind = rng.randrange(3)
        if kind == 0:
            part = (
                f"The capital of {country} is {city}, a city of about {rng.randint(1, 12)} "
                f"million people. A train from {city} travels {a} kilometres every hour for "
                f"{b} hours, so it covers {a * b} kilometres."
            )
        elif kind == 1:
            part = (
                f"A shop in {city} sells {good} at {a} dollars each. Buying {n} {good} costs "
                f"{n} times {a}, which is {n * a} dollars, and the change from {n * a + b} "
                f"dollars is {b} dollars."
            )
        else:
            part = (
                f"Let us check the claim about {country}. First, {a} plus {b} equals {a + b}. "
                f"Then {a + b} minus {n} leaves {a + b - n}, so the claim holds."
            )
        parts.append(f"Step {len(parts) + 1}: {part}")
        text = "\n\n".join(parts)
        if len(tokenizer(text)["input_ids"]) >= target_tokens:
            return text


def exact_text(tokenizer: Any, tokens: int, seed: int, context_length: int) -> EncodedText:
    """A raw text of exactly ``tokens`` tokens: :func:`prose` encoded, then cut after a token.

    The cut keeps the ids, offsets and token texts of the full encoding (no re-tokenisation),
    so the length is exact; text, response and span end at the last kept token.
    """
    enc = encode_text(
        tokenizer, prose(tokenizer, tokens, seed), context_length=max(context_length, 1 << 20)
    )
    if enc.n_tokens < tokens:
        raise ValueError(f"generated {enc.n_tokens} tokens, wanted {tokens}")
    cut = enc.offsets[tokens - 1][1]
    text = enc.text[:cut]
    return replace(
        enc,
        text=text,
        input_ids=enc.input_ids[:tokens],
        offsets=enc.offsets[:tokens],
        token_texts=enc.token_texts[:tokens],
        is_prompt=enc.is_prompt[:tokens],
        response_span=(0, cut),
        response=text,
    )


# --- the naive tools: each one sees the output of its own forward pass -----------------------


@dataclass
class Pass:
    """One text's forward pass as a single-metric tool sees it.

    Attributes:
        logits: ``[T, vocab]`` float32 logits of the text.
        ids: ``[T]`` the text's token ids.
        hidden: ``L+1`` hidden states ``[T, d_model]`` (None when the tool did not ask).
        steps: token positions where reasoning steps start.
    """

    logits: Tensor
    ids: Tensor
    hidden: tuple[Tensor, ...] | None = None
    steps: tuple[int, ...] = ()


def next_token_logprobs(p: Pass) -> Tensor:
    """``[T-1]`` log-probability of tokens 1..T-1 under the prediction before each."""
    logp = torch.log_softmax(p.logits[:-1], dim=-1)
    return logp[torch.arange(len(p.ids) - 1, device=logp.device), p.ids[1:]]


def tool_surprisal(p: Pass) -> dict[str, Tensor]:
    lp = next_token_logprobs(p)
    return {
        "logprob": lp,
        "prob": lp.exp(),
        "surprisal_bits": -lp / math.log(2.0),
        "geometric_mean_confidence": lp.mean().exp(),
        "mean_prob": lp.exp().mean(),
    }


def tool_perplexity(p: Pass) -> dict[str, Tensor]:
    return {"perplexity": torch.exp(-next_token_logprobs(p).mean())}


def entropies(p: Pass) -> Tensor:
    """``[T-1]`` Shannon entropy (nats) of each next-token distribution."""
    logp = torch.log_softmax(p.logits[:-1], dim=-1)
    return -(logp.exp() * logp).nan_to_num(nan=0.0).sum(-1)


def tool_entropy(p: Pass) -> dict[str, Tensor]:
    h = entropies(p)
    return {"entropy": h, "mean_entropy": h.mean()}


def tool_gltr(p: Pass) -> dict[str, Tensor]:
    """GLTR: rank of each token among the predictions (1 = top) and the bucket fractions."""
    logits = p.logits[:-1]
    chosen = logits[torch.arange(len(p.ids) - 1, device=logits.device), p.ids[1:]]
    rank = (logits > chosen[:, None]).sum(-1) + 1
    bucket = torch.zeros_like(rank)
    for edge in GLTR_EDGES:
        bucket += (rank > edge).long()
    n = rank.numel()
    frac = [(bucket == i).sum() / n for i in range(len(GLTR_EDGES) + 1)]
    return {
        "rank": rank,
        "gltr_bucket": bucket,
        "gltr_top10": frac[0],
        "gltr_top100": frac[1],
        "gltr_top1000": frac[2],
        "gltr_rest": frac[3],
    }


def tool_margin(p: Pass) -> dict[str, Tensor]:
    top2 = torch.softmax(p.logits[:-1], dim=-1).topk(2, dim=-1).values
    return {"margin": top2[:, 0] - top2[:, 1]}


def tool_top_k(p: Pass) -> dict[str, Tensor]:
    probs, ids = torch.softmax(p.logits[:-1], dim=-1).topk(TOP_K, dim=-1)
    return {"top_ids": ids, "top_probs": probs}


def tool_kurtosis(p: Pass) -> dict[str, Tensor]:
    """Pearson kurtosis m4 / m2^2 of each probability vector (entries as samples)."""
    probs = torch.softmax(p.logits[:-1], dim=-1)
    d = probs - 1.0 / probs.shape[-1]
    m2 = (d**2).mean(-1)
    m4 = (d**4).mean(-1)
    k = m4 / m2**2
    return {"kurtosis": k, "mean_kurtosis": k.mean()}


def tool_window_entropy(p: Pass) -> dict[str, Tensor]:
    """ARES window entropy (paper): mean of H_t .. H_{t+w-1}; NaN without a full window."""
    h = entropies(p)
    out = torch.full_like(h, float("nan"))
    if h.numel() >= WINDOW:
        out[: h.numel() - WINDOW + 1] = h.unfold(0, WINDOW, 1).mean(-1)
    return {"window_entropy": out}


def tool_step_surprisal(p: Pass) -> dict[str, Tensor]:
    """ASAP: surprisal (nats) of the first token of each reasoning step, NaN elsewhere."""
    lp = next_token_logprobs(p)
    out = torch.full_like(lp, float("nan"))
    steps = sorted({s for s in p.steps if 0 < s < len(p.ids)})
    idx = torch.tensor(steps, dtype=torch.long, device=lp.device) - 1
    out[idx] = -lp[idx]
    mean = out[idx].mean() if steps else torch.tensor(float("nan"))
    return {"step_first_surprisal": out, "mean_step_first_surprisal": mean}


def effective_rank(h: Tensor) -> Tensor:
    """Roy & Vetterli effective rank of the centred ``[n, d]`` matrix (VERL's eps)."""
    if h.shape[0] < 2:
        return torch.zeros((), device=h.device)
    s = torch.linalg.svdvals(h.float() - h.float().mean(0))
    q = s / (s.sum() + EPS)
    return torch.exp(-(q * torch.log(q + EPS)).sum())


def tool_layer_effective_rank(p: Pass) -> dict[str, Tensor]:
    assert p.hidden is not None
    return {"effective_rank": torch.stack([effective_rank(h) for h in p.hidden])}


def erv_era(ranks: list[float]) -> tuple[float, float]:
    """VERL ERV / ERA of prefix effective ranks m_1..m_K (deviation from running mean)."""
    deltas = [ranks[j] - sum(ranks[:j]) / j for j in range(1, len(ranks))]
    erv = sum(deltas) / len(deltas) if deltas else 0.0
    acc = [deltas[j] - deltas[j - 1] for j in range(1, len(deltas))]
    era = sum(acc) / len(acc) if acc else 0.0
    return erv, era


def tool_erv_era(p: Pass) -> dict[str, Tensor]:
    assert p.hidden is not None
    last = p.hidden[-1][-ERV_MAX_LEN:]
    ranks = [
        float(effective_rank(last[:end]))
        for end in range(ERV_STRIDE + 1, len(last) + 1, ERV_STRIDE)
    ]
    erv, era = erv_era(ranks)
    return {"erv": torch.tensor(erv), "era": torch.tensor(era)}


Tool = Callable[[Pass], dict[str, Tensor]]
# name -> (needs hidden states, tool)
TOOLS: dict[str, tuple[bool, Tool]] = {
    "surprisal": (False, tool_surprisal),
    "perplexity": (False, tool_perplexity),
    "entropy": (False, tool_entropy),
    "gltr_rank": (False, tool_gltr),
    "margin": (False, tool_margin),
    "top_k": (False, tool_top_k),
    "kurtosis": (False, tool_kurtosis),
    "window_entropy": (False, tool_window_entropy),
    "step_surprisal": (False, tool_step_surprisal),
    "layer_effective_rank": (True, tool_layer_effective_rank),
    "erv_era": (True, tool_erv_era),
}


def all_tools(p: Pass) -> dict[str, Tensor]:
    """Every tool's values from one pass (for tests; the benchmark gives each its own pass)."""
    values: dict[str, Tensor] = {}
    for _, tool in TOOLS.values():
        values.update({k: v.cpu() for k, v in tool(p).items()})
    return values


def naive_pass(lm: LoadedModel, enc: EncodedText, hidden: bool) -> Pass:
    """The plain forward pass a single-metric tool runs: one text, no KV cache.

    The attention mask is the tokenizer's (all ones), as in ``model(**tokenizer(text))``.
    """
    ids = torch.tensor([enc.input_ids], device=lm.device)
    with torch.inference_mode(), lm.autocast_context():
        out = lm.model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            use_cache=False,
            output_hidden_states=hidden,
        )
    return Pass(
        logits=out.logits[0].float(),
        ids=ids[0],
        hidden=tuple(h[0] for h in out.hidden_states) if hidden else None,
        steps=tuple(step_positions(enc)),
    )


def run_naive(lm: LoadedModel, enc: EncodedText) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Every tool on ``enc``, each with its own forward pass: (values on CPU, seconds per tool)."""
    values: dict[str, Tensor] = {}
    seconds: dict[str, float] = {}
    for name, (hidden, tool) in TOOLS.items():
        began = time.perf_counter()
        with torch.inference_mode():
            result = {k: v.cpu() for k, v in tool(naive_pass(lm, enc, hidden)).items()}
        seconds[name] = time.perf_counter() - began
        values.update(result)
    return values, seconds


# --- agreement with TokenPrism --------------------------------------------------------------

# (rtol, atol) per value; None = exact. Effective ranks: TokenPrism's default "gram" spectrum
# vs the exact SVD here (see analysis.geometry.singular_values). Measured on the default model:
# layers 1..30 agree to <= 1e-3 relative, but the embeddings (layer 0) of a text that repeats
# tokens have identical rows, so exact zero singular values, which the Gram path turns into
# float32 noise: +0.3 % at 200 tokens, +0.7 % at 400, ~1.5 % from 600 to 2,000 tokens.
# With ScoringParams(erank_method="svd") the values are identical.
TOLERANCE: dict[str, tuple[float, float] | None] = {
    "logprob": (1e-4, 1e-4),
    "prob": (1e-4, 1e-6),
    "surprisal_bits": (1e-4, 1e-4),
    "geometric_mean_confidence": (1e-4, 1e-6),
    "mean_prob": (1e-4, 1e-6),
    "perplexity": (1e-4, 1e-4),
    "entropy": (1e-4, 1e-4),
    "mean_entropy": (1e-4, 1e-4),
    "rank": None,
    "gltr_bucket": None,
    "gltr_top10": (0.0, 1e-6),
    "gltr_top100": (0.0, 1e-6),
    "gltr_top1000": (0.0, 1e-6),
    "gltr_rest": (0.0, 1e-6),
    "margin": (1e-4, 1e-6),
    "top_ids": None,
    "top_probs": (1e-4, 1e-6),
    "kurtosis": (1e-3, 1e-3),
    "mean_kurtosis": (1e-3, 1e-3),
    "window_entropy": (1e-4, 1e-4),
    "step_first_surprisal": (1e-4, 1e-4),
    "mean_step_first_surprisal": (1e-4, 1e-4),
    "effective_rank": (3e-2, 1e-2),
    "erv": (0.0, 5e-2),
    "era": (0.0, 5e-2),
}


def one_pass_values(sc: ScoredSequence) -> dict[str, Tensor]:
    """TokenPrism's values of one raw text in the naive tools' shapes (positions 1..T-1)."""
    out: dict[str, Tensor] = {}
    for name in TOLERANCE:
        if name in sc.token:
            out[name] = sc.token[name][1:]
        elif name in sc.sequence:
            out[name] = torch.tensor(sc.sequence[name])
    out["top_ids"], out["top_probs"] = sc.top_ids[1:], sc.top_probs[1:]
    out["effective_rank"] = sc.layers["effective_rank"]
    return out


def differences(naive: dict[str, Tensor], sc: ScoredSequence) -> dict[str, float]:
    """Largest |naive - one-pass| per value (NaN where both are NaN counts as equal)."""
    ours = one_pass_values(sc)
    out = {}
    for name, value in naive.items():
        a, b = value.double(), ours[name].double()
        if a.shape != b.shape:
            raise AssertionError(f"{name}: naive shape {tuple(a.shape)} != {tuple(b.shape)}")
        both_nan = a.isnan() & b.isnan()
        diff = (a - b).abs().masked_fill(both_nan, 0.0)
        out[name] = float(diff.nan_to_num(nan=math.inf).max()) if diff.numel() else 0.0
    return out


# A right-padded batch is not bitwise the same computation as the text alone: float32 logits
# move by ~1e-6, which flips an exact near-tie now and then. Against a batched run, discrete
# values (rank, bucket, top ids) may then differ at this fraction of positions, GLTR fractions
# by as much, and float tolerances are widened (x10, absolute at least 1e-5).
PADDED_MISMATCH = 0.01


def check_agreement(
    naive: dict[str, Tensor], sc: ScoredSequence, label: str = "", *, padded: bool = False
) -> None:
    """Raise AssertionError unless every naive value matches TokenPrism's within tolerance.

    ``padded``: ``sc`` comes from a right-padded batch, see :data:`PADDED_MISMATCH`.
    """
    ours = one_pass_values(sc)
    missing = set(TOLERANCE) - set(naive)
    if missing:
        raise AssertionError(f"{label}: the naive tools did not compute {sorted(missing)}")
    for name, tol in TOLERANCE.items():
        a, b = naive[name], ours[name]
        try:
            if tol is None and padded:
                if a.shape != b.shape:
                    raise AssertionError(f"shapes {tuple(a.shape)} != {tuple(b.shape)}")
                share = float((a != b).double().mean()) if a.numel() else 0.0
                if share > PADDED_MISMATCH:
                    raise AssertionError(f"{share:.1%} of the values differ")
            elif tol is None:
                torch.testing.assert_close(a, b, rtol=0, atol=0)
            else:
                rtol, atol = tol
                if padded and name.startswith("gltr_"):
                    rtol, atol = 0.0, PADDED_MISMATCH
                elif padded:
                    rtol, atol = rtol * 10, max(atol * 10, 1e-5)
                torch.testing.assert_close(
                    a.double(), b.double(), rtol=rtol, atol=atol, equal_nan=True
                )
        except AssertionError as err:
            raise AssertionError(f"{label} {name}: naive != one-pass: {err}") from None


# --- timing ---------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timings:
    """Seconds per repeat, and the largest naive/one-pass difference per value."""

    naive_s: list[list[float]]  # [text][repeat], all tools
    single_s: list[list[float]]  # [text][repeat], score_batch on that text alone
    batch_s: list[float]  # [repeat], score_batch on all texts
    tool_s: dict[str, list[float]]  # tool -> [repeat], summed over texts
    worst: dict[str, float]


def check_text(
    i: int,
    values: dict[str, Tensor],
    single: ScoredSequence,
    batch: ScoredSequence,
    worst: dict[str, float],
    check_batched: bool = True,
) -> None:
    """Check text ``i``'s naive values against both one-pass runs; update the worst differences.

    The one-pass run of the text alone has the naive passes' exact input. The batched run is
    right-padded (see :data:`PADDED_MISMATCH`); in bfloat16 / float16 the padded matmuls round
    so differently that ``check_batched=False`` only records its differences.
    """
    check_agreement(values, single, f"text {i} (one-pass alone)")
    if check_batched:
        check_agreement(values, batch, f"text {i} (one-pass batched)", padded=True)
    for sc in (single, batch):
        for name, d in differences(values, sc).items():
            worst[name] = max(worst.get(name, 0.0), d)


def measure(
    lm: LoadedModel, encs: list[EncodedText], params: ScoringParams, repeats: int
) -> Timings:
    """Naive loop, one-pass per text and one-pass batched, interleaved ``repeats`` times.

    In the first repeat each text's values are checked (:func:`check_text`) as soon as both of
    its runs are done, so a disagreement stops the benchmark early.
    """
    run_naive(lm, encs[0])  # warm-up: allocator, kernels, the claim splitter's lazy imports
    score_batch(lm, encs[:1], params)
    check_batched = lm.compute_dtype == torch.float32
    t = Timings(
        naive_s=[[] for _ in encs],
        single_s=[[] for _ in encs],
        batch_s=[],
        tool_s={name: [] for name in TOOLS},
        worst={},
    )

    def run_batched() -> list[ScoredSequence]:
        sync(lm.device)
        began = time.perf_counter()
        scored = [r.scores for r in score_batch(lm, encs, params)]
        t.batch_s.append(time.perf_counter() - began)
        return scored

    for rep in range(repeats):
        # the batched run first in even repeats (so the first repeat can check against it)
        batched = run_batched() if rep % 2 == 0 else []
        sums = dict.fromkeys(TOOLS, 0.0)
        for i, enc in enumerate(encs):
            # naive and one-pass on the same text back to back, the order alternating
            for what in ("naive", "single") if (rep + i) % 2 == 0 else ("single", "naive"):
                if what == "naive":
                    values, seconds = run_naive(lm, enc)
                    t.naive_s[i].append(sum(seconds.values()))
                    for name, sec in seconds.items():
                        sums[name] += sec
                else:
                    sync(lm.device)
                    began = time.perf_counter()
                    single = score_batch(lm, [enc], params)[0].scores
                    t.single_s[i].append(time.perf_counter() - began)
            if rep == 0:  # fail fast, before the remaining texts and repeats
                check_text(i, values, single, batched[i], t.worst, check_batched)
        for name, sec in sums.items():
            t.tool_s[name].append(sec)
        if rep % 2 == 1:  # ... and last in odd ones
            run_batched()
    return t


def check_constants(params: ScoringParams) -> None:
    """The naive tools use the same metric parameters as the TokenPrism run they are checked on."""
    lp = params.logits
    assert (lp.top_k, lp.gltr_edges, lp.kurtosis_excess) == (TOP_K, GLTR_EDGES, False)
    assert (params.window, params.window_mode) == (WINDOW, "inclusive")
    assert (params.erv_stride, params.erv_max_len) == (ERV_STRIDE, ERV_MAX_LEN)
    assert params.erank_center and params.hidden_alignment == "token"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--texts", type=int, default=8)
    parser.add_argument("--min-tokens", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=400)
    parser.add_argument("--repeats", type=int, help="default 3 (--quick: 1)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    parser.add_argument("--quick", action="store_true", help="3 short texts, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.texts, args.min_tokens, args.max_tokens = 3, 64, 128
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    torch.set_grad_enabled(False)
    settings = get_settings().model_copy(update={"device": args.device})
    lm = load_model(settings.default_model, settings)
    params = ScoringParams(layers="all")  # the naive tools compute every layer
    check_constants(params)
    step = (args.max_tokens - args.min_tokens) / max(1, args.texts - 1)
    lengths = [round(args.min_tokens + i * step) for i in range(args.texts)]
    encs = [exact_text(lm.tokenizer, n, i, lm.context_length) for i, n in enumerate(lengths)]

    began = time.perf_counter()
    t = measure(lm, encs, params, args.repeats)
    wall = time.perf_counter() - began

    med = statistics.median
    n_tokens = sum(lengths)
    naive_s, single_s, tool_s = t.naive_s, t.single_s, t.tool_s
    print(
        f"model={lm.name} device={lm.device} threads={torch.get_num_threads()} "
        f"texts={len(encs)} tokens={n_tokens} repeats={args.repeats} wall_s={wall:.0f} "
        f"forward_passes: naive={len(TOOLS) * len(encs)} "
        f"({sum(h for h, _ in TOOLS.values()) * len(encs)} with hidden states), "
        f"one_pass_per_text={len(encs)}, one_pass_batched=1"
    )
    checked = "checked" if lm.compute_dtype == torch.float32 else "not checked (half precision)"
    print(
        f"agreement (naive vs one-pass alone: checked; vs batched: {checked}), "
        "max |difference| over texts and both runs: "
        + " ".join(f"{k}={v:.2g}" for k, v in t.worst.items())
    )
    print("| text | tokens | naive_s | one_pass_s | naive/one_pass |")
    print("|---:|---:|---:|---:|---:|")
    for i, n in enumerate(lengths):
        a, b = med(naive_s[i]), med(single_s[i])
        print(f"| {i} | {n} | {a:.3f} | {b:.3f} | {a / b:.2f} |")
    print("naive_s_per_tool: " + " ".join(f"{name}={med(s):.2f}" for name, s in tool_s.items()))
    # totals: sums of the per-text medians (a burst of load on a shared machine hits one text
    # of one repeat, not a whole repeat's total)
    naive = sum(med(x) for x in naive_s)
    single = sum(med(x) for x in single_s)
    batch = med(t.batch_s)
    print(
        f"naive_total_s={naive:.3f} one_pass_per_text_total_s={single:.3f} "
        f"one_pass_batched_s={batch:.3f}"
    )
    print(f"one_pass_per_text_speedup={naive / single:.2f}")
    print(f"one_pass_speedup={naive / batch:.2f}")


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # skip duckdb/nanobind's cosmetic leak report at interpreter finalisation
