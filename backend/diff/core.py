"""Model diff: per-token divergence of model B from model A on A's tokens.

Flow of one batch: A's logits come from A's one scoring pass (a new text is scored and stored
as a run by :func:`score_and_capture`, whose ``on_forward`` keeps the logits) or from a bare
forward pass over a stored run's token ids; B runs one batched forward pass over the same texts;
:func:`analysis.divergence.pair_divergence` turns each pair into per-token values, chunked over
positions so memory stays bounded by the chunk.

Same vocabulary (B is a variant of A, or shares its tokenizer): B reads A's token ids and every
metric is defined at every predicted position. Different tokenizers: B tokenizes the same
characters; tokens are aligned by character offsets (:func:`analysis.divergence.align_spans`).
``delta_logprob`` then compares the log-probability of the characters both segmentations share
(the sum over B's tokens covering A's token span, minus A's over the same span), and KL / JS /
top-1 agreement are computed only where one A token and one B token have the same span, over
the surface strings both vocabularies hold (each distribution renormalised over them). Every
token that gets no KL carries a reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tokenprism.analysis.divergence import (
    DIVERGENCE_METRICS,
    align_spans,
    pair_divergence,
    shared_vocab_index,
    shared_vocab_logits,
)
from tokenprism.backend.models.loader import LoadedModel

FIRST_TOKEN = "first token: nothing predicts it"


@dataclass
class DiffItem:
    """One text to compare, on A's tokens (a stored run)."""

    run_id: str
    text: str
    input_ids: list[int]
    offsets: list[tuple[int, int]]
    is_prompt: list[bool]


@dataclass
class RunDiff:
    """Per-token values of one run: ``values[metric]`` is ``[n_tokens]`` float64, NaN where not
    compared; ``notes`` maps a position to why it has no KL."""

    run_id: str
    n_tokens: int
    same_tokens: bool
    values: dict[str, np.ndarray]
    notes: dict[int, str] = field(default_factory=dict)

    @property
    def n_compared(self) -> int:
        return int(np.isfinite(self.values["kl"]).sum())


def logits_width(model: Any) -> int:
    """Entries of the model's logits: its LM head's outputs (a quantised head may have no
    ``.weight`` tensor, only ``out_features``)."""
    head = model.get_output_embeddings()
    width = getattr(head, "out_features", None)
    return int(width) if width is not None else int(head.weight.shape[0])


def same_vocabulary(a: LoadedModel, b: LoadedModel) -> bool:
    """True when B can read A's token ids (same tokenizer vocabulary and logits width)."""
    if logits_width(a.model) != logits_width(b.model):
        return False
    return a.tokenizer is b.tokenizer or a.tokenizer.get_vocab() == b.tokenizer.get_vocab()


def forward_logits(lm: LoadedModel, id_lists: list[list[int]]) -> list[Tensor]:
    """One right-padded forward pass (no hidden states, no cache); per row ``[n_i, vocab]``."""
    width = max(len(ids) for ids in id_lists)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(id_lists), width), pad, dtype=torch.long)
    mask = torch.zeros((len(id_lists), width), dtype=torch.long)
    for row, seq in enumerate(id_lists):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    with torch.inference_mode(), lm.autocast_context():
        logits = lm.model(
            input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device), use_cache=False
        ).logits
    return [logits[row, : len(seq)] for row, seq in enumerate(id_lists)]


def _empty(n: int) -> dict[str, np.ndarray]:
    return {name: np.full(n, np.nan) for name in DIVERGENCE_METRICS}


def _same_tokens(item: DiffItem, la: Tensor, lb: Tensor, chunk: int) -> RunDiff:
    n = len(item.input_ids)
    values = _empty(n)
    if n > 1:
        targets = torch.tensor(item.input_ids[1:], device=la.device).unsqueeze(0)
        div = pair_divergence(
            la[:-1].unsqueeze(0), lb[:-1].unsqueeze(0), targets, chunk_positions=chunk
        )
        for name in DIVERGENCE_METRICS:
            values[name][1:] = getattr(div, name)[0].double().cpu().numpy()
    return RunDiff(item.run_id, n, True, values, {0: FIRST_TOKEN})


def _target_logprobs(logits: Tensor, ids: list[int]) -> np.ndarray:
    """log p(token) of every token (NaN for the first), ``[n]`` float64."""
    out = np.full(len(ids), np.nan)
    if len(ids) > 1:
        logp = torch.log_softmax(logits[:-1].float(), -1)
        tgt = torch.tensor(ids[1:], device=logp.device).unsqueeze(-1)
        out[1:] = logp.gather(-1, tgt).squeeze(-1).double().cpu().numpy()
    return out


@dataclass
class CrossVocab:
    """Two tokenizers' shared surface strings (built once per model pair)."""

    ids_a: Tensor
    ids_b: Tensor
    position_in_shared: dict[int, int]

    @classmethod
    def build(cls, a: LoadedModel, b: LoadedModel) -> CrossVocab:
        ia, ib = shared_vocab_index(a.vocab_strings, b.vocab_strings)
        return cls(ia, ib, {int(t): k for k, t in enumerate(ia.tolist())})


def _cross(
    item: DiffItem,
    la: Tensor,
    ids_b: list[int],
    offsets_b: list[tuple[int, int]],
    lb: Tensor,
    vocab: CrossVocab,
    chunk: int,
) -> RunDiff:
    n = len(item.input_ids)
    values, notes = _empty(n), {0: FIRST_TOKEN}
    lpa, lpb = _target_logprobs(la, item.input_ids), _target_logprobs(lb, ids_b)
    exact: list[tuple[int, int]] = []  # (A position, B position) with the same span
    for i, match in enumerate(align_spans(item.offsets, offsets_b)):
        if i == 0:
            continue
        if match.reason is not None:
            notes[i] = match.reason
            continue
        segment = range(match.segment_start if match.segment_start is not None else i, i + 1)
        if 0 in match.b_tokens or 0 in segment:
            notes[i] = "B's first token covers it: nothing in B predicts it"
            continue
        values["logprob_b"][i] = float(lpb[list(match.b_tokens)].sum())
        values["delta_logprob"][i] = values["logprob_b"][i] - float(lpa[list(segment)].sum())
        if match.exact:
            exact.append((i, match.b_tokens[0]))
        elif len(segment) > 1:
            notes[i] = f"one B token spans A's tokens {segment.start}..{i}: delta only, no KL"
        else:
            notes[i] = f"B splits this token into {len(match.b_tokens)}: delta only, no KL"
    if exact:
        pa_rows = torch.tensor([i - 1 for i, _ in exact], device=la.device)
        pb_rows = torch.tensor([j - 1 for _, j in exact], device=lb.device)
        sa = shared_vocab_logits(la.index_select(0, pa_rows), vocab.ids_a)
        sb = shared_vocab_logits(lb.index_select(0, pb_rows), vocab.ids_b).to(sa.device)
        tgt = torch.tensor(
            [vocab.position_in_shared.get(item.input_ids[i], 0) for i, _ in exact],
            device=sa.device,
        )
        div = pair_divergence(
            sa.unsqueeze(0), sb.unsqueeze(0), tgt.unsqueeze(0), chunk_positions=chunk
        )
        rows_b = lb.index_select(0, pb_rows).float()
        chosen = rows_b.gather(
            -1, torch.tensor([ids_b[j] for _, j in exact], device=rows_b.device).unsqueeze(-1)
        )
        rank_b = ((rows_b > chosen).sum(-1) + 1).cpu().numpy()
        for k, (i, _) in enumerate(exact):
            for name in ("kl", "kl_rev", "js", "top1_agree"):
                values[name][i] = float(getattr(div, name)[0, k])
            values["rank_b"][i] = float(rank_b[k])
    return RunDiff(item.run_id, n, False, values, notes)


def encode_for_b(lm_b: LoadedModel, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """B's tokens of A's exact characters (no special tokens added: A's text holds them)."""
    enc = lm_b.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def compare_batch(
    lm_a: LoadedModel,
    lm_b: LoadedModel,
    items: list[DiffItem],
    *,
    logits_a: list[Tensor] | None = None,
    cross: CrossVocab | None = None,
    chunk_positions: int = 64,
) -> list[RunDiff]:
    """Diff a batch: A's logits (given, or one batched pass), B's one batched pass, then the
    per-token divergences of every item."""
    if logits_a is None:
        logits_a = forward_logits(lm_a, [it.input_ids for it in items])
    if cross is None and same_vocabulary(lm_a, lm_b):
        logits_b = forward_logits(lm_b, [it.input_ids for it in items])
        return [
            _same_tokens(it, la, lb, chunk_positions)
            for it, la, lb in zip(items, logits_a, logits_b, strict=True)
        ]
    cross = cross or CrossVocab.build(lm_a, lm_b)
    encoded_b = [encode_for_b(lm_b, it.text) for it in items]
    logits_b = forward_logits(lm_b, [ids for ids, _ in encoded_b])
    return [
        _cross(it, la, ids, offs, lb, cross, chunk_positions)
        for it, la, (ids, offs), lb in zip(items, logits_a, encoded_b, logits_b, strict=True)
    ]


def capture_logits() -> tuple[list[Tensor], Any]:
    """A list and an ``on_forward`` callback for :func:`score_batch` that keeps each row's
    logits of A's one scoring pass (so the diff needs no second pass of A)."""
    kept: list[Tensor] = []

    def on_forward(out: Any, _ids: Tensor, mask: Tensor) -> None:
        lengths = mask.sum(-1).tolist()
        kept.extend(out.logits[row, : int(n)] for row, n in enumerate(lengths))

    return kept, on_forward
