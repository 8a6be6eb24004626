"""Benchmark: streaming with live metrics vs plain ``model.generate`` for the same tokens.

Run with ``.venv/bin/python bench/stream.py [--model M] [--tokens N] [--repeats R]``. On the
default model (loaded once, so times exclude loading):

* plain: ``model.generate`` greedy, exactly N new tokens (``min_new_tokens = N``), KV cache;
* stream: :class:`TokenStream` greedy on the same prompt for N tokens with every live metric
  (log-prob, entropy, window entropy, top-5, incremental text) and an entropy ``mark`` rule.

Greedy decoding makes both produce the same tokens (checked: ``same_tokens=``). Prints
``stream_overhead=<stream time / plain time>`` (median of R) and ``first_token_ms=`` (from the
start of the stream to its first token event, model loaded: the prompt pass plus one step).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tokenprism.analysis.stream_rules import StreamRule
from tokenprism.backend.models.loader import get_model
from tokenprism.backend.sampling.stream import StreamParams, TokenStream
from tokenprism.backend.sampling.types import prompt_ids
from tokenprism.backend.settings import get_settings

PROMPT = "Explain in a few sentences why the sky is blue."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    settings = get_settings()
    lm = get_model(args.model or settings.default_model, settings)
    ids, _ = prompt_ids(lm, PROMPT)
    n = args.tokens
    pad = lm.tokenizer.pad_token_id or lm.tokenizer.eos_token_id
    x = torch.tensor([ids], device=lm.device)

    def plain() -> list[int]:
        with torch.inference_mode(), lm.autocast_context():
            out = lm.model.generate(
                x,
                attention_mask=torch.ones_like(x),
                do_sample=False,
                max_new_tokens=n,
                min_new_tokens=n,
                pad_token_id=pad,
            )
        return [int(t) for t in out[0, len(ids) :].tolist()]

    rule = StreamRule("entropy", 2.0, patience=2, action="mark")
    params = StreamParams(max_new_tokens=n, temperature=0, rules=[rule])

    def streamed() -> tuple[list[int], float]:
        stream = TokenStream(lm, ids, params)
        for _ in stream:
            pass
        return stream.result.token_ids, float(stream.result.first_token_s or 0.0)

    plain()  # warm-up (kernels, allocator)
    streamed()
    plain_s, stream_s, first = [], [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ref = plain()
        plain_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        got, ft = streamed()
        stream_s.append(time.perf_counter() - t0)
        first.append(ft)
    # the stream stops at EOS; compare the shared prefix, and time per token
    k = len(got)
    per_plain = statistics.median(plain_s) / n
    per_stream = statistics.median(stream_s) / k
    print(f"model={lm.name} device={lm.device} tokens={n} streamed_tokens={k}")
    print(f"same_tokens={ref[:k] == got}")
    print(f"plain_ms_per_token={per_plain * 1000:.2f}")
    print(f"stream_ms_per_token={per_stream * 1000:.2f}")
    print(f"stream_overhead={per_stream / per_plain:.3f}")
    print(f"first_token_ms={statistics.median(first) * 1000:.1f}")


if __name__ == "__main__":
    main()
