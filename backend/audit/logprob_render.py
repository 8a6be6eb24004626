"""Render a local model's view of a chat as an OpenAI Chat Completions response with top-k logprobs.

Used to test the logprobs path against known truth (the full distributions are available here,
so the bounds can be checked) and by ``bench/logprob_bounds.py``. Token bytes come from the
byte-level BPE alphabet (GPT-2 style tokenizers: SmolLM2 and the tiny test model), so a
character split across tokens yields byte fragments exactly as the APIs return them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from tokenprism.backend.errors import UserError
from tokenprism.backend.models.loader import LoadedModel
from tokenprism.backend.scoring.encoding import encode_chat


def _byte_alphabet() -> dict[str, int]:
    """Character -> byte of the byte-level BPE alphabet: printable Latin-1 bytes stand for
    themselves, the other 68 bytes for the code points 256, 257, ... in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    out = {chr(b): b for b in keep}
    shifted = 0
    for b in range(256):
        if b not in keep:
            out[chr(256 + shifted)] = b
            shifted += 1
    return out


_BYTE_OF = _byte_alphabet()


@dataclass(frozen=True)
class RenderedTurn:
    """One rendered turn and the truth behind it.

    Attributes:
        response: the Chat Completions response (JSON-ready).
        entropy: ``[n]`` true full-vocabulary entropy (nats) of each response token.
        rank: ``[n]`` true rank of each token (1 + strictly more probable entries).
        logprob: ``[n]`` true log-probability of each token.
    """

    response: dict[str, Any]
    entropy: list[float]
    rank: list[int]
    logprob: list[float]


def token_bytes(tokenizer: Any, token_id: int) -> bytes:
    """The bytes a byte-level BPE token stands for (special tokens: their UTF-8 text)."""
    piece = tokenizer.convert_ids_to_tokens(int(token_id))
    if all(ch in _BYTE_OF for ch in piece):
        return bytes(_BYTE_OF[ch] for ch in piece)
    return str(piece).encode("utf-8")


def _entry(tokenizer: Any, token_id: int, logprob: float) -> dict[str, Any]:
    raw = token_bytes(tokenizer, token_id)
    return {
        "token": raw.decode("utf-8", "replace"),
        "logprob": logprob,
        "bytes": list(raw),
    }


@torch.no_grad()
def render_turn(
    lm: LoadedModel, messages: list[dict[str, str]], k: int, *, model_name: str = "local"
) -> RenderedTurn:
    """The chat's last (assistant) turn as an API would return it with ``top_logprobs=k``."""
    enc = encode_chat(lm.tokenizer, messages, context_length=lm.context_length)
    ids = torch.tensor([enc.input_ids], device=lm.device)
    logits = lm.model(ids).logits[0].double()  # float64: the truth must be exact to ~1e-12
    logp = torch.log_softmax(logits, dim=-1).cpu()
    # the response's own tokens: the template's closing tokens are scored but not returned
    start = enc.response_span[0]
    end = start + len(enc.response)
    positions = [
        i
        for i, (p, (a, b)) in enumerate(zip(enc.is_prompt, enc.offsets, strict=True))
        if not p and i > 0 and a >= start and b <= end and b > a
    ]
    content, entropy, rank, lps = [], [], [], []
    for pos in positions:
        dist = logp[pos - 1]
        tid = enc.input_ids[pos]
        lp = float(dist[tid])
        top_lp, top_ids = dist.topk(k)
        entry = _entry(lm.tokenizer, tid, lp)
        entry["top_logprobs"] = [
            _entry(lm.tokenizer, int(t), float(v)) for v, t in zip(top_lp, top_ids, strict=True)
        ]
        content.append(entry)
        p = dist.exp()
        entropy.append(float(-(p * dist).nansum()))
        rank.append(1 + int((dist > dist[tid]).sum()))
        lps.append(lp)
    text = b"".join(bytes(e["bytes"]) for e in content).decode("utf-8", "replace")
    if text != messages[-1]["content"]:
        raise UserError("the response's tokens do not rebuild its content with this tokenizer")
    response = {
        "id": "chatcmpl-local",
        "object": "chat.completion",
        "model": model_name,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": text},
                "logprobs": {"content": content},
            }
        ],
    }
    assert all(math.isfinite(x) for x in lps)
    return RenderedTurn(response, entropy, rank, lps)
