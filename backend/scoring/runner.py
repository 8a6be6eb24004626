"""The model runner: one teacher-forced forward pass per batch, then ``analysis`` on its outputs."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import torch

from tokenprism.analysis.scoring import ScoredSequence, ScoringParams, score_forward
from tokenprism.analysis.steps import chars_to_tokens, step_char_starts
from tokenprism.backend import __version__
from tokenprism.backend.errors import UserError
from tokenprism.backend.models.loader import LoadedModel
from tokenprism.backend.scoring.encoding import EncodedText
from tokenprism.backend.scoring.extras import ClaimScore, ExtraPlan, claim_metrics, claims_of


@dataclass
class ScoredText:
    """An encoded text with its scores and the provenance of how they were made."""

    encoded: EncodedText
    scores: ScoredSequence
    provenance: dict[str, Any]
    claims: list[ClaimScore] = field(default_factory=list)


def step_positions(enc: EncodedText) -> list[int]:
    """Token positions where reasoning steps of the response begin (ASAP)."""
    start, end = enc.response_span
    # The end-of-turn marker is not part of the reasoning text.
    content_end = min(end, start + len(enc.response))
    chars = step_char_starts(enc.text, start, content_end)
    if not chars:
        return []
    ends = torch.tensor([o[1] for o in enc.offsets])
    return [int(i) for i in chars_to_tokens(ends, chars).tolist()]


def forward_batch(
    lm: LoadedModel, encoded: list[EncodedText]
) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """Right-pad ``encoded`` and run the model once with hidden states.

    The batch is built on the host and copied to the device once; the pass runs under
    ``inference_mode`` and the model's autocast setting (``lm.autocast``), so logits and hidden
    states may be bfloat16 / float16: ``analysis`` upcasts them to float32 before any metric.

    Returns ``(model output, input_ids [B, T], attention_mask [B, T])`` on the model's device.

    Raises:
        UserError: float16 overflowed (non-finite logits); bfloat16 has float32's range.
    """
    width = max(e.n_tokens for e in encoded)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, enc in enumerate(encoded):
        ids[row, : enc.n_tokens] = torch.tensor(enc.input_ids)
        mask[row, : enc.n_tokens] = 1
    ids, mask = ids.to(lm.device), mask.to(lm.device)
    with torch.inference_mode(), lm.autocast_context():
        out = lm.model(
            input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False
        )
    # float16 tops out at 65504: activations past it become inf and every metric NaN. One
    # reduction per batch (not per token) turns that into a clear error instead.
    if lm.compute_dtype == torch.float16 and not bool(torch.isfinite(out.logits).all()):
        raise UserError(
            "float16 overflowed in this model's forward pass (non-finite logits); "
            "use TOKENPRISM_AUTOCAST=bfloat16 or TOKENPRISM_DTYPE=bfloat16 instead"
        )
    return out, ids, mask


def score_batch(
    lm: LoadedModel,
    encoded: list[EncodedText],
    params: ScoringParams | None = None,
    extras: ExtraPlan | None = None,
    on_forward: Callable[[Any, torch.Tensor, torch.Tensor], None] | None = None,
) -> list[ScoredText]:
    """Score texts in one forward pass (right-padded); all metrics come from that pass.

    ``extras`` (see :mod:`backend.uncertainty`) adds CCP, probe, SAR and sampling-consistency
    metrics; the probe reads this pass's hidden states. Claims (sentences) are always found.
    ``on_forward(output, input_ids, attention_mask)`` sees the model output of the same pass
    (group metrics such as THR read its logits and hidden states) before it is released.
    """
    params = params or ScoringParams()
    began = time.perf_counter()
    out, ids, mask = forward_batch(lm, encoded)
    # built on the host and copied once (not one small copy per row)
    response = torch.zeros(mask.shape, dtype=torch.bool)
    for row, enc in enumerate(encoded):
        response[row, : enc.n_tokens] = torch.tensor([not p for p in enc.is_prompt])
    response = response.to(mask.device)
    with torch.inference_mode():
        scored = score_forward(
            out.logits,
            out.hidden_states,
            ids,
            mask.bool(),
            response,
            params,
            [step_positions(e) for e in encoded],
        )
        probe_values = extras.probe_values(out.hidden_states) if extras is not None else None
        if on_forward is not None:
            on_forward(out, ids, mask)
    del out  # hidden states of a long batch are large; extras that sample need the memory
    if extras is not None:
        applied = extras.apply(lm, encoded, scored, probe_values, rescore=score_batch)
    else:
        applied = [
            (claim_metrics(sc, claims_of(e, sc)), {}) for e, sc in zip(encoded, scored, strict=True)
        ]
    elapsed = time.perf_counter() - began
    now = datetime.now(UTC).isoformat()
    results = []
    for enc, sc, (claims, row_extras) in zip(encoded, scored, applied, strict=True):
        provenance = {
            **lm.provenance(),
            "tokenprism_version": __version__,
            "torch_version": torch.__version__,
            "scored_at": now,
            "params": params.as_dict(),
            "kind": enc.kind,
            "truncated": enc.truncated,
            "chat_template": enc.template,
            "rendered_text": enc.text if enc.kind == "chat" else None,
            "rendering": enc.rendering,
            "truncated_tokens": enc.truncated_tokens,
            "batch_size": len(encoded),
            "batch_seconds": round(elapsed, 4),
        }
        if enc.notes:
            provenance["rendering_notes"] = enc.notes
        if extras is not None:
            provenance["extras"] = {**extras.provenance(), **row_extras}
        results.append(ScoredText(encoded=enc, scores=sc, provenance=provenance, claims=claims))
    return results


def score_one(
    lm: LoadedModel,
    encoded: EncodedText,
    params: ScoringParams | None = None,
    extras: ExtraPlan | None = None,
) -> ScoredText:
    return score_batch(lm, [encoded], params, extras)[0]
