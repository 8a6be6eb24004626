"""Where the parts of a Hugging Face decoder live: one layer template per architecture family.

Interpretability code needs the decoder blocks, the final norm, the LM head and, inside each
block, the attention and MLP modules whose outputs are added to the residual stream. Their
attribute paths differ by family (``model.layers`` vs ``transformer.h`` vs ``gpt_neox.layers``),
so a registry maps each family to dotted paths; a model whose ``config.model_type`` is not
listed is matched by trying every template, so new Llama-like models work unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from tokenprism.backend.errors import UserError


@dataclass(frozen=True)
class LayerTemplate:
    """Dotted attribute paths of one architecture family (block paths are relative to a block).

    Attributes:
        layers: the ``ModuleList`` of decoder blocks, from the causal-LM module.
        final_norm: the norm applied before the head.
        head: the LM head (``Linear``).
        attn: attention module inside a block (its output is added to the residual stream).
        mlp: MLP module (or its last linear) inside a block.
    """

    layers: str
    final_norm: str
    head: str
    attn: str
    mlp: str


TEMPLATES: dict[str, LayerTemplate] = {
    "llama": LayerTemplate("model.layers", "model.norm", "lm_head", "self_attn", "mlp"),
    "gpt2": LayerTemplate("transformer.h", "transformer.ln_f", "lm_head", "attn", "mlp"),
    "gpt_neox": LayerTemplate(
        "gpt_neox.layers", "gpt_neox.final_layer_norm", "embed_out", "attention", "mlp"
    ),
    "opt": LayerTemplate(
        "model.decoder.layers", "model.decoder.final_layer_norm", "lm_head", "self_attn", "fc2"
    ),
}
# model_type -> template; Llama's layout is shared by most current decoders
FAMILY = {
    "llama": "llama",
    "mistral": "llama",
    "mixtral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "gemma": "llama",
    "gemma2": "llama",
    "phi3": "llama",
    "olmo": "llama",
    "olmo2": "llama",
    "smollm3": "llama",
    "gpt2": "gpt2",
    "gpt_neox": "gpt_neox",
    "opt": "opt",
}


def _get(root: Any, path: str) -> Any:
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


@dataclass
class ArchAdapter:
    """The parts of one loaded model, found through its :class:`LayerTemplate`."""

    model: Any
    template: LayerTemplate

    @property
    def layers(self) -> Any:
        return _get(self.model, self.template.layers)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def final_norm(self) -> nn.Module:
        norm: nn.Module = _get(self.model, self.template.final_norm)
        return norm

    @property
    def head(self) -> nn.Module:
        head: nn.Module = _get(self.model, self.template.head)
        return head

    def block_part(self, layer: int, part: str) -> nn.Module:
        """``attn`` or ``mlp`` module of block ``layer``."""
        module: nn.Module = _get(self.layers[layer], getattr(self.template, part))
        return module

    def embeddings(self) -> nn.Module:
        emb: nn.Module = self.model.get_input_embeddings()
        return emb

    def frozen_norm(self, final_resid: Tensor) -> tuple[Tensor, Tensor | None, bool]:
        """The final norm linearised at ``final_resid [..., d]`` for direct logit attribution.

        Returns ``(scale [..., d], bias [d] | None, centred)``: a component ``c`` contributes
        ``scale * (c - mean(c) if centred else c)`` to the normalised stream, with the
        normalising statistics frozen at ``final_resid``; ``bias`` is added once.
        """
        norm = self.final_norm
        x = final_resid.float()
        weight = getattr(norm, "weight", None)
        gain = torch.ones(x.shape[-1]) if weight is None else weight.detach().float()
        if "gemma" in type(norm).__name__.lower():
            gain = 1.0 + gain  # Gemma's RMSNorm scales by (1 + weight)
        if isinstance(norm, nn.LayerNorm):
            var = x.var(dim=-1, unbiased=False, keepdim=True)
            scale = gain / torch.sqrt(var + norm.eps)
            bias = None if norm.bias is None else norm.bias.detach().float()
            return scale, bias, True
        eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
        rms = torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)
        return gain / rms, None, False


def adapter_for(model: Any) -> ArchAdapter:
    """The adapter of ``model``: its family's template, else the first template that fits."""
    model_type = str(getattr(getattr(model, "config", None), "model_type", ""))
    names = [FAMILY[model_type]] if model_type in FAMILY else []
    names += [n for n in TEMPLATES if n not in names]
    for name in names:
        template = TEMPLATES[name]
        layers = _get(model, template.layers)
        if layers is None or _get(model, template.final_norm) is None:
            continue
        if _get(model, template.head) is None or len(layers) == 0:
            continue
        if _get(layers[0], template.attn) is None or _get(layers[0], template.mlp) is None:
            continue
        return ArchAdapter(model, template)
    raise UserError(
        f"no layer template fits {type(model).__name__} (model_type {model_type!r}); "
        f"known families: {', '.join(TEMPLATES)}"
    )


@contextmanager
def capture_outputs(modules: dict[str, nn.Module]) -> Iterator[dict[str, Tensor]]:
    """Record each module's output tensor (first element of a tuple) under its key.

    The hooks are removed when the context exits, also when the forward pass raised.
    """
    seen: dict[str, Tensor] = {}
    handles = []

    def make(key: str) -> Any:
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            seen[key] = output[0] if isinstance(output, tuple) else output

        return hook

    try:
        for key, module in modules.items():
            handles.append(module.register_forward_hook(make(key)))
        yield seen
    finally:
        for handle in handles:
            handle.remove()
