"""int8 weight-only quantisation of a model's linear layers (``NAME@int8``).

What is quantised: every ``nn.Linear`` but the LM head (in a Llama-style model: attention
q/k/v/o, MLP gate/up/down) gets its weight stored as int8 with one float32 scale per output channel
(symmetric, ``scale = max|w_row| / 127``, round to nearest); at run time the int8 weight is
converted to the activations' dtype, multiplied and the output rescaled per channel. The
activations stay in the model's own precision. This is the weight-only int8 scheme of
optimum-quanto (``weights=qint8``) and torchao's ``int8_weight_only``; the weights take a
quarter of their float32 memory.

What stays float: the LM head and anything tied to the input embedding (SmolLM2 ties them),
as ``transformers``' quantisation integrations keep the output embedding by default
(``get_keys_to_not_convert``); the embedding, norms and biases.

Why not torch's ``quantize_dynamic`` (W8A8, what ``@int8`` used before): it quantises each
linear layer's *input* to int8 with one scale per tensor, and SmolLM2 has massive activations:
on the first sample chat the input of ``layers.11.mlp.down_proj`` peaks at ~3,065 at the
first token while other tokens' peaks are ~1.8 (median), so every other token's input rounds to zero
and that MLP stops contributing. Measured on the 7 sample chats (chat template, all 442
tokens), mean KL against float32 / top-1 agreement: dynamic on every linear 1.76 / 0.46; on
the 30 ``down_proj`` only 1.35 / 0.52; on q/k/v only 0.15 / 0.84; on the LM head only
0.04 / 0.91. Weight-only on every linear 0.0058 / 0.973; with the LM head float (this module)
0.0048 / 0.973.

Why not torchao: with torchao 0.18 merely *installed*, ``transformers.modeling_utils`` imports
it on every model load (~2.6 s per process, CUDA-extension warnings on stderr of every
command); and ``torch._weight_int8pack_mm`` (its CPU int8 weight-only kernel) measured ~24x
slower than float32 matmul on the 2-core reference CPU, while converting the int8 weight per
call costs ~1.6x of a float32 layer.

Runs on the base model's device and dtype (CPU or CUDA); a row's values do not depend on the
other rows of its batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

SCHEME = "int8 weight-only, per output channel, symmetric (absmax/127)"


class Int8WeightLinear(nn.Module):
    """A linear layer holding an int8 weight ``[out, in]`` and a float32 scale per output
    channel; ``y = (x @ q.T) * scale + bias`` in ``x``'s dtype."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        w = linear.weight.detach().float()
        # an all-zero row keeps scale 1 (any scale gives q = 0) instead of dividing by zero
        scale = w.abs().amax(dim=1) / 127.0
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        self.qweight: Tensor
        self.scale: Tensor
        self.bias: Tensor | None
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale)
        bias = linear.bias.detach().clone() if linear.bias is not None else None
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        # the scale is per output channel, so it applies to the output: one multiply per
        # output entry instead of one per weight entry
        y = nn.functional.linear(x, self.qweight.to(x.dtype)) * self.scale.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def _kept_float(model: Any) -> set[str]:
    """Names of the linear modules to keep in float: the LM head and any module whose weight
    is the input embedding's (tied)."""
    head = model.get_output_embeddings()
    emb = model.get_input_embeddings()
    tied = {id(emb.weight)} if emb is not None else set()
    return {
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and (module is head or id(module.weight) in tied)
    }


def quantize_int8(model: Any) -> dict[str, Any]:
    """Replace ``model``'s linear layers in place (see the module docstring); what was done,
    for provenance."""
    keep = _kept_float(model)
    targets = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name not in keep
    ]
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8WeightLinear(getattr(parent, child)))
    return {
        "quantization": SCHEME,
        "activations": "unquantised, in the model's dtype",
        "quantized_linear_layers": len(targets),
        "kept_float": sorted(keep),
        "torch_version": torch.__version__,
    }
