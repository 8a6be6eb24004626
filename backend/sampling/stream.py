"""Token-by-token sampling with live metrics, stop/mark/branch rules and a cancel flag.

One forward step per token on the KV cache: the step that feeds token t gives token t's hidden
state (what a probe reads, as in the stored run) and the logits for token t+1 (its entropy,
log-probability and top-5). Nothing is computed twice while streaming; the finished run is then
scored teacher-forced on the sampled ids themselves (:func:`encode_ids`), so the stored values
are those of every other run and agree with the streamed ones.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from tokenprism.analysis.stream_rules import StreamRule, advance, trailing_mean
from tokenprism.backend.limits import cancelled as scope_cancelled
from tokenprism.backend.limits import check_context
from tokenprism.backend.models.loader import LoadedModel
from tokenprism.backend.probes.storage import StoredProbe
from tokenprism.backend.sampling.types import eos_ids
from tokenprism.backend.scoring.encoding import EncodedText

TOP_K = 5


class IncrementalDecoder:
    """Text per token such that the pieces concatenate to the decoded ids.

    A token that ends inside a multi-byte character (byte-level BPE splits emoji and CJK over
    several tokens) gets ``""``; the character comes out with the token that completes it.
    Decoding a short tail with one token of left context keeps SentencePiece's leading spaces.
    """

    def __init__(self, tokenizer: Any, context: list[int] | None = None) -> None:
        self.tok = tokenizer
        self.ids: list[int] = list(context or [])
        self.prefix = max(len(self.ids) - 1, 0)
        self.read = len(self.ids)

    def _decode(self, ids: list[int]) -> str:
        return str(self.tok.decode(ids, skip_special_tokens=False))

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        before = self._decode(self.ids[self.prefix : self.read])
        text = self._decode(self.ids[self.prefix :])
        if text.endswith("\ufffd") or not text.startswith(before):
            return ""  # an incomplete character: wait for the token that finishes it
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(before) :]

    def flush(self) -> str:
        """Whatever is still pending at the end (a truncated character, as the decoder shows it)."""
        before = self._decode(self.ids[self.prefix : self.read])
        text = self._decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return text[len(before) :] if text.startswith(before) else ""


@dataclass
class StreamParams:
    """How to sample and what to watch (the stream's part of a generate request)."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    rules: list[StreamRule] = field(default_factory=list)
    probe: StoredProbe | None = None
    window: int = 4
    max_branches: int = 8  # branch firings per generation, so a rule cannot loop forever


@dataclass
class StreamResult:
    """What a finished stream leaves: the ids, why it stopped, what the rules did, timings."""

    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    stop_reason: str = "length"
    fired: list[dict[str, Any]] = field(default_factory=list)
    marks: list[dict[str, Any]] = field(default_factory=list)
    branches: list[dict[str, Any]] = field(default_factory=list)
    first_token_s: float | None = None
    generate_s: float = 0.0


def _filtered_logits(logits: Tensor, temperature: float, top_p: float) -> Tensor:
    """Temperature then nucleus filtering, as ``generate`` does (top token always kept).

    ``[vocab]`` float32 -> ``[vocab]`` with removed entries at ``-inf``.
    """
    scaled = logits / temperature
    if top_p >= 1.0:
        return scaled
    ordered, order = torch.sort(scaled, descending=False)
    cumulative = ordered.softmax(-1).cumsum(-1)
    drop = cumulative <= (1 - top_p)
    drop[-1] = False
    return scaled.masked_fill(drop.scatter(0, order, drop), float("-inf"))


def _draw(logits: Tensor, params: StreamParams, gen: torch.Generator | None, n: int) -> list[int]:
    if params.temperature == 0:
        return [int(logits.argmax())] * n
    probs = _filtered_logits(logits, params.temperature, params.top_p).softmax(-1)
    return [int(i) for i in torch.multinomial(probs, n, replacement=True, generator=gen).tolist()]


def _distribution(logits: Tensor) -> tuple[Tensor, float, list[tuple[int, float]]]:
    """``[vocab]`` raw logits -> (float32 log-probs, entropy in nats, top-5 (id, logprob))."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    entropy = float(-(logp.exp() * logp).nan_to_num_(nan=0.0).sum())
    top = torch.topk(logp, min(TOP_K, logp.shape[-1]))
    pairs = list(zip(top.indices.tolist(), top.values.tolist(), strict=True))
    return logp, entropy, [(int(i), float(v)) for i, v in pairs]


class TokenStream:
    """Iterate to sample; each item is one token event. ``result`` is complete afterwards.

    Args:
        lm: the loaded model (the caller holds the model lock).
        prompt: the prompt ids (see :func:`sampling.types.prompt_ids`).
        params: sampling parameters, rules and probe.
        cancelled: polled before every token (and before each branch candidate), besides the
            thread's :func:`limits.cancel_scope`; True ends the stream (reason ``cancelled``).

    Raises:
        InputTooLong: the prompt plus ``max_new_tokens`` does not fit the context (before the
            model sees anything).
    """

    def __init__(
        self,
        lm: LoadedModel,
        prompt: list[int],
        params: StreamParams,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> None:
        check_context(lm, len(prompt), params.max_new_tokens)
        self.lm, self.params = lm, params
        self.cancelled = lambda: cancelled() or scope_cancelled()
        self.result = StreamResult(prompt_ids=list(prompt))
        self.decoder = IncrementalDecoder(lm.tokenizer, list(prompt))
        self.eos = eos_ids(lm)
        self.cache: Any = None
        self.entropies: list[float] = []
        self.streaks = [0] * len(params.rules)
        self.open_marks: dict[int, dict[str, Any]] = {}

    def _forward(self, ids: list[int], *, hidden: bool) -> Any:
        x = torch.tensor([ids], dtype=torch.long, device=self.lm.device)
        with torch.inference_mode(), self.lm.autocast_context():
            return self.lm.model(
                input_ids=x,
                cache=self.cache,
                use_cache=True,
                output_hidden_states=hidden,
                logits_to_keep=1,
            )

    def _rewind(self, length: int) -> None:
        """Drop cached positions past ``length`` (what a branch candidate added)."""
        extra = self.cache.get_seq_length() - length
        if extra > 0:
            self.cache.crop(-extra)

    def _probe(self, out: Any) -> float:
        probe = self.params.probe
        if probe is None:
            return float("nan")
        return float(probe.apply(out.hidden_states)[0, -1])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from transformers import DynamicCache

        began = time.perf_counter()
        params, res = self.params, self.result
        gen = None
        if params.seed is not None:
            gen = torch.Generator(device=self.lm.device).manual_seed(params.seed)
        self.cache = DynamicCache()
        out = self._forward(res.prompt_ids, hidden=False)
        for index in range(params.max_new_tokens):
            if self.cancelled():
                res.stop_reason = "cancelled"
                break
            logits = out.logits[0, -1].float()
            logp, entropy, top = _distribution(logits)
            token = _draw(logits, params, gen, 1)[0]
            length = self.cache.get_seq_length()
            out = self._forward([token], hidden=params.probe is not None)
            self.entropies.append(entropy)
            values = self._values(logp, token, entropy, out)
            event, stop, branch = self._apply_rules(index, values)
            if branch is not None and len(res.branches) < params.max_branches:
                token, out, alternatives = self._branch(logits, logp, gen, length, branch)
                values = self._values(logp, token, entropy, out)
                event["branch"] = {"rule": branch, "alternatives": alternatives}
                res.branches.append({"index": index, **event["branch"], "chosen": token})
            event.update(self._token_fields(index, token, values, top))
            res.token_ids.append(token)
            res.texts.append(event["text"])
            if res.first_token_s is None:
                res.first_token_s = time.perf_counter() - began
            yield event
            if token in self.eos:
                res.stop_reason = "eos"
                break
            if stop is not None:
                res.stop_reason = f"rule:{stop}"
                break
        tail = self.decoder.flush()
        if tail and res.texts:
            res.texts[-1] += tail
        res.marks.extend(self.open_marks.values())
        res.generate_s = time.perf_counter() - began

    def _values(self, logp: Tensor, token: int, entropy: float, out: Any) -> dict[str, float]:
        lp = float(logp[token])
        return {
            "logprob": lp,
            "surprisal": -lp,
            "entropy": entropy,
            "window_entropy": trailing_mean(self.entropies, self.params.window),
            "probe": self._probe(out),
        }

    def _token_fields(
        self, index: int, token: int, values: dict[str, float], top: list[tuple[int, float]]
    ) -> dict[str, Any]:
        tok = self.lm.tokenizer
        return {
            "index": index,
            "token_id": token,
            "text": self.decoder.push(token),
            "logprob": values["logprob"],
            "entropy": values["entropy"],
            "window_entropy": _finite(values["window_entropy"]),
            "probe": _finite(values["probe"]) if self.params.probe is not None else None,
            "top": [
                {"token_id": i, "text": tok.decode([i], skip_special_tokens=False), "logprob": v}
                for i, v in top
            ],
        }

    def _apply_rules(
        self, index: int, values: dict[str, float]
    ) -> tuple[dict[str, Any], int | None, int | None]:
        """Advance every rule; returns (event fields, stop rule index, branch rule index)."""
        fired: list[dict[str, Any]] = []
        stop = branch = None
        for r, rule in enumerate(self.params.rules):
            self.streaks[r], hit = advance(rule, self.streaks[r], values[rule.metric])
            if not hit:
                if r in self.open_marks:
                    self.result.marks.append(self.open_marks.pop(r))
                continue
            record = {"rule": r, "action": rule.action, "index": index, "spec": rule.describe()}
            fired.append(record)
            self.result.fired.append(record)
            if rule.action == "stop" and stop is None:
                stop = r
            elif rule.action == "branch" and branch is None:
                branch = r
                self.streaks[r] = 0  # the branch is the answer to this streak
            elif rule.action == "mark":
                start = index - self.streaks[r] + 1
                mark = self.open_marks.setdefault(r, {"rule": r, "start": start, "end": index})
                mark["end"] = index
        return ({"rules": fired} if fired else {}), stop, branch

    def _branch(
        self, logits: Tensor, logp: Tensor, gen: torch.Generator | None, length: int, rule: int
    ) -> tuple[int, Any, list[dict[str, Any]]]:
        """Resample the position; continue from the branch whose next token is calmest."""
        n = self.params.rules[rule].branches
        candidates = list(dict.fromkeys(_draw(logits, self.params, gen, n)))
        hidden = self.params.probe is not None
        alternatives: list[dict[str, Any]] = []
        for cand in candidates:
            if alternatives and self.cancelled():
                break  # a cancel waits for no more than one candidate
            self._rewind(length)
            step = self._forward([cand], hidden=False)
            _, next_entropy, _ = _distribution(step.logits[0, -1])
            alternatives.append(
                {
                    "token_id": cand,
                    "text": self.lm.tokenizer.decode([cand], skip_special_tokens=False),
                    "logprob": float(logp[cand]),
                    "next_entropy": next_entropy,
                }
            )
        best = min(alternatives, key=lambda a: a["next_entropy"])["token_id"]
        self._rewind(length)
        return best, self._forward([best], hidden=hidden), alternatives


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def encode_ids(
    lm: LoadedModel, result: StreamResult, *, chat: bool, prompt: str, system: str | None
) -> EncodedText:
    """The sampled ids as an encoded text: prompt ids + generated ids, never re-tokenised.

    Token texts are the decoder's pieces (prompt) and the streamed pieces (response), so they
    concatenate to the stored text and match what the client was shown.
    """
    decoder = IncrementalDecoder(lm.tokenizer)
    prompt_texts = [decoder.push(t) for t in result.prompt_ids]
    if prompt_texts:
        prompt_texts[-1] += decoder.flush()
    texts = prompt_texts + list(result.texts)
    offsets, pos = [], 0
    for t in texts:
        offsets.append((pos, pos + len(t)))
        pos += len(t)
    head = sum(len(t) for t in prompt_texts)
    text = "".join(texts)
    response = lm.tokenizer.decode(result.token_ids, skip_special_tokens=True)
    return EncodedText(
        kind="chat" if chat else "pair",
        text=text,
        input_ids=[*result.prompt_ids, *result.token_ids],
        offsets=offsets,
        token_texts=texts,
        is_prompt=[True] * len(prompt_texts) + [False] * len(result.texts),
        response_span=(head, len(text)),
        prompt=prompt,
        response=response,
        system_prompt=system,
        messages=(
            ([{"role": "system", "content": system}] if system else [])
            + [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        )
        if chat
        else None,
        template=getattr(lm.tokenizer, "chat_template", None) if chat else None,
        rendering="template" if chat else "pair",
        notes=["scored on the sampled token ids (streamed generation)"],
    )
