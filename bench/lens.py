"""Benchmark: logit lens and Integrated Gradients cost, in units of the model's own passes.

Run with ``.venv/bin/python bench/lens.py`` (``--tokens N``, ``--steps K``, ``--repeats R``,
``--model default|PATH``, ``--device cpu|cuda``). On the embedded default model and a text of
``--tokens`` tokens (1,000 by default), median of ``--repeats``:

* ``lens_vs_forward``: the lens over every layer (one forward pass with hooks, then every
  layer's residual stream through the final norm and the head, chunked, with rank, probability,
  top-5 and KL to the final layer) divided by one plain forward pass on the same ids;
* ``ig_forward_backward_equivalents``: Integrated Gradients as ``tokenprism attribute`` runs it
  (``--steps`` points placed adaptively, batched) for the token after ``--ig-tokens`` (256)
  tokens of input, divided by one forward + backward pass of the same score function on one
  input; ``ig_even_forward_backward_equivalents`` the same for the equally spaced rule
  (one batch of ``--steps`` points).

The lens's floor is arithmetic: every layer's reading is one LM-head matmul over the whole
vocabulary (rank, probability, top-5 and KL need all of it), so on SmolLM2-135M (30 blocks,
a 49,152 x 576 tied head, ~1/5 of a forward pass's multiply-adds at 1,000 tokens) the 31
readouts alone cost ~6 forward passes.

Before timing, the lens's last layer is checked against the model's logits (the script fails
rather than time a wrong readout). Prints ``name=value`` lines.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from tokenprism.analysis.attribution import integrated_gradients
from tokenprism.backend.lens.compute import (
    Target,
    attribute,
    baseline_embeddings,
    residual_streams,
    run_lens,
    score_fn,
)
from tokenprism.backend.models.loader import load_model
from tokenprism.backend.settings import Settings

TEXT = (
    "The capital of Australia is Canberra, a planned city chosen as a compromise between "
    "Sydney and Melbourne. Construction began in 1913 and Parliament moved there in 1927. "
)


def _median(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--ig-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    home = Path.home() / ".cache" / "tokenprism-bench"
    lm = load_model(args.model, Settings(home=home, device=args.device))
    ids = lm.tokenizer(TEXT * 40, add_special_tokens=False)["input_ids"][: args.tokens]
    ids = torch.tensor(ids)
    print(f"model={lm.label} tokens={len(ids)} layers={lm.model.config.num_hidden_layers}")

    _, logits = residual_streams(lm, ids)
    result = run_lens(lm, ids)
    want = torch.softmax(logits[:-1], -1).gather(-1, ids[1:, None].to(logits.device))[:, 0]
    gap = float((result.prob[-1].cpu() - want.cpu()).abs().max())
    if gap > 1e-4:
        raise SystemExit(f"lens last layer differs from the model by {gap}")

    def forward() -> None:
        with torch.inference_mode():
            lm.model(input_ids=ids[None].to(lm.device), use_cache=False)

    t_forward = _median(forward, args.repeats)
    t_lens = _median(lambda: run_lens(lm, ids), args.repeats)
    print(f"forward_s={t_forward:.3f} lens_s={t_lens:.3f}")
    print(f"lens_vs_forward={t_lens / t_forward:.2f}")

    n = min(args.ig_tokens, len(ids) - 1)
    target = Target(n, n)
    f = score_fn(lm, ids, target)
    emb = lm.model.get_input_embeddings()
    with torch.no_grad():
        x = emb(ids[:n].to(lm.device)).detach()
    base = baseline_embeddings(lm, x, "pad")

    def one_fwd_bwd() -> None:
        point = x[None].clone().requires_grad_(True)
        torch.autograd.grad(f(point).sum(), point)

    def ig() -> object:
        # the CLI's default: adaptive points, its batch size
        return attribute(lm, ids, target, method="ig", steps=args.steps)

    def ig_even() -> object:
        return integrated_gradients(f, x, base, steps=args.steps, batch_size=args.steps)

    t_fb = _median(one_fwd_bwd, args.repeats)
    t_ig = _median(ig, args.repeats)
    t_even = _median(ig_even, args.repeats)
    err = attribute(lm, ids, target, method="ig", steps=args.steps).completeness_error
    print(f"fwd_bwd_s={t_fb:.3f} ig_s={t_ig:.3f} ig_even_s={t_even:.3f}")
    print(f"ig_steps={args.steps} ig_tokens={n} completeness_error={err:.4f}")
    print(f"ig_forward_backward_equivalents={t_ig / t_fb:.1f}")
    print(f"ig_even_forward_backward_equivalents={t_even / t_fb:.1f}")


if __name__ == "__main__":
    main()
