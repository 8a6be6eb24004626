"""Running a model for the lens and for attribution (the model-facing half of the room).

Everything here takes token ids of a stored run and a :class:`LoadedModel`; the tensor maths
lives in :mod:`analysis.lens` and :mod:`analysis.attribution`, the model's parts are found
through :mod:`backend.models.adapter`, so any Hugging Face decoder with a layer template works.
Positions follow the ``tokens`` table: the token at position ``p >= 1`` is predicted by the
logits at ``p - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tokenprism.analysis.attribution import (
    Attribution,
    adaptive_integrated_gradients,
    direct_logit_attribution,
    grad_x_input,
    integrated_gradients,
)
from tokenprism.analysis.lens import LensResult, lens
from tokenprism.backend.errors import UserError
from tokenprism.backend.models.adapter import adapter_for, capture_outputs
from tokenprism.backend.models.loader import LoadedModel

METHODS = ("ig", "grad_x_input", "contrastive")
BASELINES = ("zero", "pad")
# IG quadrature: points placed by the per-interval completeness residual, or equally spaced
RULES = ("adaptive", "even")


def residual_streams(lm: LoadedModel, ids: Tensor) -> tuple[Tensor, Tensor]:
    """Residual streams ``[L + 1, T, d]`` (embeddings, then after each block, before the final
    norm) and the model's own logits ``[T, V]`` (float32) for ``ids [T]``."""
    adapter = adapter_for(lm.model)
    blocks = {str(i): layer for i, layer in enumerate(adapter.layers)}
    with (
        torch.inference_mode(),
        lm.autocast_context(),
        capture_outputs(blocks) as seen,
    ):
        out = lm.model(
            input_ids=ids[None].to(lm.device), output_hidden_states=True, use_cache=False
        )
    streams = [out.hidden_states[0][0]] + [seen[str(i)][0] for i in range(len(blocks))]
    return torch.stack(streams), out.logits[0].float()


def run_lens(lm: LoadedModel, ids: Tensor, *, top_k: int = 5) -> LensResult:
    """Logit lens of every layer at positions ``1..T-1`` of ``ids [T]`` (targets ``ids[1:]``)."""
    adapter = adapter_for(lm.model)
    resid, _ = residual_streams(lm, ids)
    head = adapter.head
    bias = getattr(head, "bias", None)
    with torch.inference_mode():
        return lens(
            resid[:, :-1],
            ids[1:].to(resid.device),
            adapter.final_norm,
            head.weight,  # type: ignore[arg-type]
            bias if isinstance(bias, Tensor) else None,
            top_k=top_k,
        )


@dataclass
class Target:
    """What is attributed: tokens ``start..end`` (inclusive), optionally against a foil."""

    start: int
    end: int
    foil: int | None = None


def score_fn(lm: LoadedModel, ids: Tensor, target: Target) -> Any:
    """``f: [B, end, d] -> [B]``: summed log-probability of ``ids[start..end]`` given the
    embeddings of ``ids[:end]``; with a foil, log p(target) - log p(foil) at ``start``."""
    tgt = ids[target.start : target.end + 1].to(lm.device)
    rows = torch.arange(target.start - 1, target.end, device=lm.device)

    def f(embeds: Tensor) -> Tensor:
        # no autocast: bfloat16 matmuls put errors of ~1e-2 nats on each path point, which IG
        # sums over the path (completeness then reflects rounding, not the quadrature)
        logits = lm.model(inputs_embeds=embeds, use_cache=False).logits
        logp = torch.log_softmax(logits[:, rows].float(), dim=-1)  # [B, n, V]
        picked = logp.gather(-1, tgt[None, :, None].expand(len(embeds), -1, 1))[..., 0]
        if target.foil is not None:
            return picked[:, 0] - logp[:, 0, target.foil]
        return picked.sum(dim=-1)

    return f


def baseline_embeddings(lm: LoadedModel, x: Tensor, kind: str) -> Tensor:
    """``[T, d]`` baseline: zeros, or a neutral token's embedding at every position.

    ``pad`` takes the pad token's embedding, or the end-of-sequence token's when the pad row
    is all zeros (``padding_idx``): a zero residual stream sits on the singular point of
    RMSNorm (gradient ~ 1/sqrt(eps)), where Integrated Gradients needs thousands of steps.
    """
    if kind == "zero":
        return torch.zeros_like(x)
    if kind != "pad":
        raise UserError(f"unknown baseline {kind!r}; choose one of {', '.join(BASELINES)}")
    tok = lm.tokenizer
    emb = lm.model.get_input_embeddings()
    for token_id in (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id):
        if token_id is None:
            continue
        with torch.no_grad():
            row = emb(torch.tensor([token_id], device=x.device))[0].detach()
        if bool(row.abs().sum() > 0):
            return row.expand_as(x).clone()
    raise UserError("this tokenizer has no pad / end / start token with a non-zero embedding")


def top_alternative(lm: LoadedModel, ids: Tensor, position: int) -> int:
    """The most probable token other than ``ids[position]`` at ``position``."""
    with torch.inference_mode(), lm.autocast_context():
        logits = lm.model(input_ids=ids[None, :position].to(lm.device), use_cache=False).logits
    row = logits[0, -1].float().clone()
    row[int(ids[position])] = -torch.inf
    return int(row.argmax())


def attribute(
    lm: LoadedModel,
    ids: Tensor,
    target: Target,
    *,
    method: str = "ig",
    steps: int = 32,
    baseline: str = "pad",
    batch_size: int = 8,
    rule: str = "adaptive",
) -> Attribution:
    """Attribute the target's score to the embeddings of ``ids[:end]`` (one value each)."""
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if rule not in RULES:
        raise UserError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
    emb = lm.model.get_input_embeddings()
    with torch.no_grad():
        x = emb(ids[: target.end].to(lm.device)).detach()
    f = score_fn(lm, ids, target)
    if method == "grad_x_input":
        return grad_x_input(f, x)
    base = baseline_embeddings(lm, x, baseline)
    if rule == "even":
        return integrated_gradients(f, x, base, steps=steps, batch_size=batch_size)
    return adaptive_integrated_gradients(f, x, base, steps=steps, batch_size=batch_size)


def block_contributions(lm: LoadedModel, ids: Tensor, position: int) -> list[dict[str, Any]]:
    """Direct logit attribution of ``ids[position]``: one row per component.

    Components are the embedding, each block's attention and MLP outputs at ``position - 1``,
    and the final norm / head biases; they sum to the token's logit (norm frozen).
    """
    adapter = adapter_for(lm.model)
    parts = {}
    for i in range(adapter.n_layers):
        parts[f"attn.{i}"] = adapter.block_part(i, "attn")
        parts[f"mlp.{i}"] = adapter.block_part(i, "mlp")
    parts["last"] = adapter.layers[adapter.n_layers - 1]
    token = int(ids[position])
    with torch.inference_mode(), capture_outputs(parts) as seen:
        out = lm.model(
            input_ids=ids[None, :position].to(lm.device),
            output_hidden_states=True,
            use_cache=False,
        )
    row = position - 1
    names = ["embed"] + [k for k in parts if k != "last"]
    comps = [out.hidden_states[0][0, row]] + [seen[k][0, row] for k in names[1:]]
    scale, norm_bias, centred = adapter.frozen_norm(seen["last"][0, row])
    head = adapter.head
    direction = head.weight[token].detach()  # type: ignore[index]
    values = direct_logit_attribution(torch.stack(comps), direction, scale, centred=centred)
    rows = [_component(n, float(v)) for n, v in zip(names, values, strict=True)]
    bias_total = 0.0
    if norm_bias is not None:
        bias_total += float(norm_bias @ direction.float())
    head_bias = getattr(head, "bias", None)
    if isinstance(head_bias, Tensor):
        bias_total += float(head_bias[token])
    if bias_total:
        rows.append({"component": "bias", "layer": None, "block": "bias", "value": bias_total})
    rows.append(
        {
            "component": "logit",
            "layer": None,
            "block": "total",
            "value": float(out.logits[0, row, token]),
        }
    )
    return rows


def _component(name: str, value: float) -> dict[str, Any]:
    if name == "embed":
        return {"component": name, "layer": None, "block": "embed", "value": value}
    block, layer = name.split(".")
    return {"component": name, "layer": int(layer), "block": block, "value": value}
