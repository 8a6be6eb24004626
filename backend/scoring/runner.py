"""The model runner: one teacher-forced forward pass per batch, then ``analysis`` on its outputs."""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import torch

from tokenprism.analysis.geometry import effective_rank
from tokenprism.analysis.scoring import (
    HeadFn,
    LayerSource,
    ScoredSequence,
    ScoringParams,
    View,
    hidden_positions,
    score_forward,
    score_hidden,
)
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
    # Token positions whose rows are stored (None: all). A turn scored in its conversation's
    # single pass stores its response only; the rest lives in the context run (store.py).
    stored_positions: list[int] | None = None


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
    ids, mask = _padded(lm, encoded)
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


# ---- the head-chunked pass: final hidden states, LM head applied chunk by chunk ----------

_HEAD_CHECK: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def _parts(lm: LoadedModel) -> tuple[Any, Any] | None:
    """``(decoder body, LM head module)`` of a causal LM, or None when not separable."""
    model = lm.model
    body = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if body is None or head is None or body is model:
        return None
    return body, head


def head_fn(lm: LoadedModel) -> HeadFn | None:
    """The model's logits as a function of final hidden states, or None (use full logits).

    ``body(ids).last_hidden_state`` through the LM head must reproduce the model's own logits;
    architectures that post-process logits (soft-capping, scaling) would not, so the first
    use per model compares both on a short input and falls back to the full-logits path when
    they differ (the verdict is cached per model object).
    """
    parts = _parts(lm)
    if parts is None:
        return None
    body, head = parts
    verdict = _HEAD_CHECK.get(lm.model)
    if verdict is None:
        ids = torch.arange(8, device=lm.device).unsqueeze(0) % lm.model.config.vocab_size
        with torch.inference_mode(), lm.autocast_context():
            full = lm.model(input_ids=ids, use_cache=False).logits.float()
            mine = head(body(input_ids=ids, use_cache=False).last_hidden_state).float()
        verdict = bool(torch.allclose(full, mine, rtol=1e-3, atol=1e-3))
        _HEAD_CHECK[lm.model] = verdict
    if not verdict:
        return None

    def apply(hidden: torch.Tensor) -> torch.Tensor:
        with lm.autocast_context():
            return head(hidden)

    return apply


@contextmanager
def layer_rank_hooks(
    body: Any, views: Sequence[View], params: ScoringParams
) -> Iterator[list[list[torch.Tensor]]]:
    """Effective rank of every layer at each view's response, computed as the layer finishes.

    Forward hooks on the embeddings and every decoder block but the last (HF's
    ``hidden_states`` are the embeddings, each block's output, and the final *normed* state
    in place of the last block's output, which the caller takes from ``last_hidden_state``),
    so no layer's states outlive its block. Yields ``ranks[layer][view]``, filled during the
    forward pass; the hooks are removed on exit, also after an error.
    """
    ranks: list[list[torch.Tensor]] = []
    modules = [body.embed_tokens, *list(body.layers)[:-1]]
    index = [hidden_positions(v.response, params.hidden_alignment) for v in views]

    def hook(_module: Any, _args: Any, output: Any) -> None:
        h = output[0] if isinstance(output, tuple) else output
        ranks.append(
            [
                effective_rank(
                    h[v.row, idx.to(h.device)],
                    center=params.erank_center,
                    method=params.erank_method,
                )
                for v, idx in zip(views, index, strict=True)
            ]
        )

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield ranks
    finally:
        for handle in handles:
            handle.remove()


def _padded(lm: LoadedModel, rows: Sequence[EncodedText]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(e.n_tokens for e in rows)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, enc in enumerate(rows):
        ids[row, : enc.n_tokens] = torch.tensor(enc.input_ids)
        mask[row, : enc.n_tokens] = 1
    return ids.to(lm.device), mask.to(lm.device)


def score_views_pass(
    lm: LoadedModel, rows: Sequence[EncodedText], views: Sequence[View], params: ScoringParams
) -> list[ScoredSequence] | None:
    """One forward pass over ``rows``; the scores of every view. None: not separable here.

    The decoder body runs without the LM head and without keeping every layer: the logit
    metrics come from :func:`analysis.scoring.score_hidden` (head applied chunk by chunk),
    the final layer's geometry from ``last_hidden_state``, and with ``layers="all"`` the
    other layers' effective ranks from forward hooks (:func:`layer_rank_hooks`).
    """
    head = head_fn(lm)
    parts = _parts(lm)
    if head is None or parts is None:
        return None
    body = parts[0]
    want_all = params.layer_metrics and params.layers == "all"
    if want_all and not all(hasattr(body, a) for a in ("embed_tokens", "layers")):
        return None
    ids, mask = _padded(lm, rows)
    hooks: AbstractContextManager[list[list[torch.Tensor]]] = (
        layer_rank_hooks(body, views, params) if want_all else nullcontext([])
    )
    with torch.inference_mode(), lm.autocast_context(), hooks as ranks:
        final = body(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    if lm.compute_dtype == torch.float16 and not bool(torch.isfinite(final).all()):
        raise UserError(
            "float16 overflowed in this model's forward pass (non-finite hidden states); "
            "use TOKENPRISM_AUTOCAST=bfloat16 or TOKENPRISM_DTYPE=bfloat16 instead"
        )
    n_layers = lm.model.config.num_hidden_layers + 1
    layers = LayerSource(final=final, n_layers=n_layers)
    if want_all:
        with torch.inference_mode():
            last = [
                effective_rank(
                    final[v.row, hidden_positions(v.response, params.hidden_alignment)],
                    center=params.erank_center,
                    method=params.erank_method,
                )
                for v in views
            ]
        ranks.append(last)
        layers.ranks = [torch.stack([r[i] for r in ranks]) for i in range(len(views))]
    with torch.inference_mode():
        return score_hidden(final, head, ids, list(views), params, layers)


def text_view(row: int, enc: EncodedText) -> View:
    """The view of a whole encoded text in batch row ``row``."""
    return View(
        row, enc.n_tokens, torch.tensor([not p for p in enc.is_prompt]), step_positions(enc)
    )


def make_results(
    lm: LoadedModel,
    encoded: Sequence[EncodedText],
    scored: Sequence[ScoredSequence],
    params: ScoringParams,
    *,
    batch_size: int,
    elapsed: float,
    extra_provenance: dict[str, Any] | None = None,
) -> list[ScoredText]:
    """Scored texts with claims (sentences) and provenance (no extras)."""
    now = datetime.now(UTC).isoformat()
    results = []
    for enc, sc in zip(encoded, scored, strict=True):
        provenance = _provenance(lm, enc, params, batch_size, elapsed, now)
        provenance.update(extra_provenance or {})
        claims = claim_metrics(sc, claims_of(enc, sc))
        results.append(ScoredText(encoded=enc, scores=sc, provenance=provenance, claims=claims))
    return results


def _provenance(
    lm: LoadedModel,
    enc: EncodedText,
    params: ScoringParams,
    batch_size: int,
    elapsed: float,
    now: str,
) -> dict[str, Any]:
    return {
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
        **({"rendering_notes": enc.notes} if enc.notes else {}),
        "batch_size": batch_size,
        "batch_seconds": round(elapsed, 4),
    }


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

    Without extras or ``on_forward`` (the default scoring of ``score``, ``POST /runs`` and
    audits) the pass never materialises the ``[batch, T, vocab]`` logits nor every layer's
    states (:func:`score_views_pass`); the values are the same within float32 rounding.
    """
    params = params or ScoringParams()
    began = time.perf_counter()
    if extras is None and on_forward is None:
        views = [text_view(row, e) for row, e in enumerate(encoded)]
        fast = score_views_pass(lm, encoded, views, params)
        if fast is not None:
            elapsed = time.perf_counter() - began
            return make_results(lm, encoded, fast, params, batch_size=len(encoded), elapsed=elapsed)
    return _score_batch_full(lm, encoded, params, extras, on_forward, began)


def _score_batch_full(
    lm: LoadedModel,
    encoded: list[EncodedText],
    params: ScoringParams,
    extras: ExtraPlan | None,
    on_forward: Callable[[Any, torch.Tensor, torch.Tensor], None] | None,
    began: float,
) -> list[ScoredText]:
    """The full-output pass: logits and every layer's hidden states kept (extras, groups)."""
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
        provenance = _provenance(lm, enc, params, len(encoded), elapsed, now)
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
