"""How informative are API top-k logprobs? The default model's sample transcripts as top-k files.

Renders every assistant turn of data/samples/chats.jsonl with the default model as a Chat
Completions response with ``top_logprobs`` = 5 and 20 (the true distributions truncated, as an
API returns them), audits those files from their logprobs alone, and compares with the local
re-score's full-vocabulary entropy. Prints name=value lines:

* ``band_width_k{k}``: mean over tokens of entropy_upper - entropy_lower (nats), V = the
  tokenizer's vocabulary size (what a known model name gives);
* ``bracketed_k{k}``: share of tokens whose true entropy lies in the band (must be 1);
* ``auc_1mprob_k{k}``: ROC AUC of ``1 - prob`` (exact from any API) for telling high-entropy
  tokens (true entropy above the median over all response tokens) from the rest; likewise
  ``auc_entropy_renorm_k{k}``, ``auc_entropy_lower_k{k}``, ``auc_entropy_upper_k{k}``.

Usage: python bench/logprob_bounds.py [--model NAME]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from tokenprism.backend.audit.ingest import parse_transcript
from tokenprism.backend.audit.logprob_render import render_turn
from tokenprism.backend.audit.logprob_runs import item_metrics
from tokenprism.backend.audit.logprobs import parse_logprobs
from tokenprism.backend.models.loader import get_model
from tokenprism.backend.settings import get_settings

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples" / "chats.jsonl"


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney ROC AUC (ties count half)."""
    pos, neg = scores[labels], scores[~labels]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def chats() -> list[list[dict[str, str]]]:
    """Every assistant turn of the samples, with the turns before it."""
    items = parse_transcript(SAMPLES.read_text(), "jsonl", SAMPLES.name)
    return [it.messages for it in items if it.messages is not None]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    settings = get_settings()
    lm = get_model(args.model or settings.default_model, settings)
    vocab = len(lm.tokenizer)
    print(f"model={lm.name} vocab_size={vocab} turns={len(chats())}")
    for k in (5, 20):
        turns = [render_turn(lm, chat, k, model_name=lm.name) for chat in chats()]
        items = parse_logprobs("\n".join(json.dumps(t.response) for t in turns), f"top{k}")
        tok = [item_metrics(it, vocab) for it in items]
        cat = {name: np.concatenate([t[name] for t in tok]) for name in tok[0]}
        true = np.concatenate([t.entropy for t in turns])
        labels = true > np.median(true)
        print(f"tokens_k{k}={len(true)}")
        print(f"band_width_k{k}={np.mean(cat['entropy_upper'] - cat['entropy_lower']):.4f}")
        inside = (cat["entropy_lower"] <= true + 1e-6) & (true <= cat["entropy_upper"] + 1e-6)
        print(f"bracketed_k{k}={inside.mean():.4f}")
        print(f"mean_topk_mass_k{k}={cat['topk_mass'].mean():.4f}")
        print(f"auc_1mprob_k{k}={auc(1 - cat['prob'], labels):.4f}")
        for name in ("entropy", "entropy_lower", "entropy_upper"):
            label = "entropy_renorm" if name == "entropy" else name
            print(f"auc_{label}_k{k}={auc(cat[name], labels):.4f}")


if __name__ == "__main__":
    main()
