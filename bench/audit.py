"""Benchmark: audits with one forward pass per conversation vs one pass per assistant turn.

Run with ``.venv/bin/python bench/audit.py`` (``make bench-audit``; ``--conversations N``,
``--repeats N``, ``--max-turn-tokens N`` to resize). On the embedded default model, a generated
corpus shaped like real chats (1-8 assistant turns, 50-1,500 tokens a turn, a system prompt on
some conversations, each conversation within the model's context) is audited, in one run,
interleaved and repeated (medians), each attempt into a fresh DuckDB file:

* per_turn_issue_time: the audit path when issue 15 was filed: every assistant turn with its
  whole history in a pass of its own, scored with that time's default metrics (every layer's
  effective rank, ``ScoringParams(layers="all")``), stored;
* per_turn: ``score_items(one_pass=False)``, one pass per turn as above but with today's
  scoring defaults (final-layer effective rank): what one pass per conversation alone saves;
* one_pass: ``score_items()``, one forward pass per conversation (audit.conversation), stored;
* bare: the model's forward pass (logits and hidden states, ``forward_batch``) over the same
  rendered conversations in the same length-bucketed batches, nothing else.

It prints ``audit_speedup=<per_turn_issue_time / one_pass>`` (the issue's "new audit path vs
today's one-turn-at-a-time path"), ``audit_speedup_same_scoring=<per_turn / one_pass>``,
``audit_vs_bare=<one_pass / bare>`` and ``stored_rows_per_token=<token rows stored by
one_pass / tokens of the rendered conversations>``.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from scoring import CITIES, bench_text  # bench/ is on sys.path when a bench script runs

from tokenprism.analysis.scoring import ScoredSequence, ScoringParams
from tokenprism.backend.audit.conversation import plan_units, unit_batches
from tokenprism.backend.audit.ingest import WorkItem
from tokenprism.backend.audit.upload import encode_items, score_items
from tokenprism.backend.models.loader import load_model
from tokenprism.backend.scoring.encoding import EncodedText
from tokenprism.backend.scoring.runner import ScoredText, forward_batch
from tokenprism.backend.settings import get_settings
from tokenprism.backend.store import Store

TOPICS = [
    ("What is the capital of {c}?", "The capital of {c} is {x}."),
    ("How much do {n} pens cost at 3 dollars each?", "{n} pens cost {n} x 3 = {m} dollars."),
    ("Name a famous landmark in {c}.", "A famous landmark in {c} is in {x}, its capital."),
    ("Translate 'thank you' for a traveller to {c}.", "In {c} people say thank you politely."),
]


def transcripts(n: int) -> list[dict[str, str]]:
    out = []
    for i in range(n):
        q, a = TOPICS[i % len(TOPICS)]
        c, x = CITIES[(i // len(TOPICS)) % len(CITIES)]
        k = 2 + i % 17
        fill = {"c": c, "x": x, "n": str(k), "m": str(3 * k)}
        out.append({"prompt": q.format(**fill), "response": a.format(**fill) * (1 + i % 3)})
    return out


def synthetic_run(tokens: int, vocab: int = 40000) -> ScoredText:
    """A stored-run-shaped result with ``tokens`` positions and every metric filled."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (tokens,), generator=g).tolist()
    texts = [f" w{i}" for i in range(tokens)]
    offsets, pos = [], 0
    for t in texts:
        offsets.append((pos, pos + len(t)))
        pos += len(t)
    enc = EncodedText(
        kind="text",
        text="".join(texts),
        input_ids=ids,
        offsets=offsets,
        token_texts=texts,
        is_prompt=[False] * tokens,
        response_span=(0, pos),
        prompt=None,
        response="".join(texts),
    )
    rand = torch.rand(tokens, generator=g)
    token = {
        name: rand.clone()
        for name in (
            "logprob",
            "prob",
            "surprisal_bits",
            "entropy",
            "margin",
            "kurtosis",
            "window_entropy",
            "step_first_surprisal",
        )
    }
    token["rank"] = torch.randint(1, 2000, (tokens,), generator=g)
    token["gltr_bucket"] = torch.randint(0, 4, (tokens,), generator=g)
    scores = ScoredSequence(
        length=tokens,
        response_mask=torch.ones(tokens, dtype=torch.bool),
        token=token,
        top_ids=torch.randint(0, vocab, (tokens, 10), generator=g),
        top_probs=torch.rand(tokens, 10, generator=g),
        sequence={"mean_entropy": 1.0},
        layers={"effective_rank": torch.rand(31, generator=g)},
    )
    return ScoredText(encoded=enc, scores=scores, provenance={"synthetic": True})


def chat_corpus(
    n: int, tokenizer: object, context: int, max_turn_tokens: int = 1500, seed: int = 0
) -> list[list[dict[str, str]]]:
    """``n`` conversations: 1-8 assistant turns of 50-``max_turn_tokens`` tokens each."""
    rng = random.Random(seed)
    texts = bench_text(max_turn_tokens * 2, tokenizer)
    words = texts.split(" ")
    chats = []
    for c in range(n):
        chat: list[dict[str, str]] = []
        if c % 3 == 0:
            chat.append({"role": "system", "content": "You are a careful, helpful assistant."})
        used = 40
        for t in range(rng.randint(1, 8)):
            q, _ = TOPICS[(c + t) % len(TOPICS)]
            city = CITIES[(c * 3 + t) % len(CITIES)]
            n_words = rng.randint(40, int(max_turn_tokens * 0.7))  # ~1.4 tokens a word
            start = rng.randrange(0, max(1, len(words) - n_words))
            answer = " ".join(words[start : start + n_words])
            cost = len(tokenizer(q + answer)["input_ids"]) + 20  # type: ignore[operator]
            if used + cost > context:
                break
            used += cost
            chat.append({"role": "user", "content": q.format(c=city[0], x=city[1], n="3", m="9")})
            chat.append({"role": "assistant", "content": answer})
        chats.append(chat)
    return chats


def work_items(chats: list[list[dict[str, str]]]) -> list[WorkItem]:
    items, index = [], 0
    for c, chat in enumerate(chats, start=1):
        turns = [i for i, m in enumerate(chat) if m["role"] == "assistant"]
        for t, end in enumerate(turns):
            items.append(WorkItem(index, index + 1, c, t, messages=chat[: end + 1]))
            index += 1
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-turn-tokens", type=int, default=1500)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    settings = get_settings()
    lm = load_model(settings.default_model, settings)
    chats = chat_corpus(args.conversations, lm.tokenizer, lm.context_length, args.max_turn_tokens)
    items = work_items(chats)
    encoded = encode_items(lm, items, "bench")
    units, _ = plan_units(items, encoded)
    rows = [u.row for u in units]
    rendered = sum(r.n_tokens for r in rows)
    batches = unit_batches(units, settings.batch_tokens)

    def bare() -> None:
        for batch in batches:
            forward_batch(lm, [rows[i] for i in batch])

    def audit(one_pass: bool, params: ScoringParams | None = None) -> Callable[[], int]:
        def run() -> int:
            with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "b.duckdb") as store:
                score_items(
                    lm,
                    store,
                    items,
                    source="bench",
                    upload_id="u",
                    job_id="j",
                    batch_tokens=settings.batch_tokens,
                    one_pass=one_pass,
                    params=params,
                )
                return store.count("tokens")

        return run

    score_items_warm = audit(True)
    bare()  # warm-up: allocator, kernels
    score_items_warm()
    runs: dict[str, Callable[[], object]] = {
        "per_turn_issue_time": audit(False, ScoringParams(layers="all")),
        "per_turn": audit(False),
        "one_pass": audit(True),
        "bare": bare,
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    stored = {}
    order = list(runs)
    for rep in range(args.repeats):
        for name in order[rep % len(order) :] + order[: rep % len(order)]:  # rotate the order
            began = time.perf_counter()
            result = runs[name]()
            times[name].append(time.perf_counter() - began)
            if isinstance(result, int):
                stored[name] = result
    med = {k: statistics.median(v) for k, v in times.items()}
    per_turn_tokens = sum(e.n_tokens for e in encoded)
    print(
        f"conversations={len(chats)} turns={len(items)} rendered_tokens={rendered} "
        f"per_turn_forward_tokens={per_turn_tokens} repeats={args.repeats} "
        f"threads={torch.get_num_threads()} batch_tokens={settings.batch_tokens}"
    )
    print(
        f"per_turn_issue_time_s={med['per_turn_issue_time']:.2f} "
        f"per_turn_s={med['per_turn']:.2f} one_pass_s={med['one_pass']:.2f} "
        f"bare_s={med['bare']:.2f} rows_per_turn_path={stored['per_turn']} "
        f"rows_one_pass={stored['one_pass']}"
    )
    print(f"audit_speedup_same_scoring={med['per_turn'] / med['one_pass']:.2f}")
    print(f"audit_speedup={med['per_turn_issue_time'] / med['one_pass']:.2f}")
    print(f"audit_vs_bare={med['one_pass'] / med['bare']:.3f}")
    print(f"stored_rows_per_token={stored['one_pass'] / rendered:.3f}")


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # skip duckdb/nanobind's cosmetic leak report at interpreter finalisation
