"""int8 quantisation of a model's linear layers with torch's own dynamic quantisation.

``@int8`` uses ``torch.ao.quantization.quantize_dynamic`` with per-channel weights: every
``nn.Linear`` (the LM head too) becomes a dynamically quantised linear layer holding int8
weights (one scale per output channel); at run time its input is quantised to 8 bits per call
(one scale per tensor), multiplied in int8 by the fbgemm / x86 kernels and rescaled. This is
the CPU int8 path PyTorch users ship, and it is fast on CPU (a 576x1536 layer on 507 tokens
measured ~2x faster than float32 on the 2-core reference machine).

Why not torchao (the maintained successor the torch.ao deprecation notice points to): with
torchao 0.18 merely *installed*, ``transformers.modeling_utils`` imports it on every model load
(its torchao quantizer), which costs ~2.6 s per process and writes CUDA-extension and
``_pytree`` warnings to stderr of every command; and its W8A8 layer runs through
``torch._int_mm``, which measured ~30x slower than float32 on this CPU. torch 2.13 is pinned, so
its ``quantize_dynamic`` stays available; its deprecation warnings are captured while a
variant is built (replayed at DEBUG level) and never reach other commands.

Consequences: the quantised layers run on CPU only (a variant of a CUDA model is built and run
on the CPU), and because activations get one scale per tensor, a row's values can depend
slightly on the other rows of its batch (padding included).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

log = logging.getLogger(__name__)


class _Collect(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


@contextmanager
def captured_logs(names: tuple[str, ...] = ("torch",)) -> Iterator[list[str]]:
    """Route the records of the loggers ``names`` and Python warnings into the yielded list
    instead of stderr; every logger's handlers and propagation are restored on exit."""
    lines: list[str] = []
    handler = _Collect(lines)
    saved = []
    for name in names:
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.propagate))
        logger.handlers = [handler]
        logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield lines
        lines.extend(f"{w.category.__name__}: {w.message}" for w in caught)
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers = handlers
            logger.propagate = propagate


def quantize_int8(model: Any) -> dict[str, Any]:
    """Quantise ``model``'s linear layers in place (see the module docstring); what was done,
    for provenance. ``model`` must be a float32 model on the CPU."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    _untie(model)
    with captured_logs() as lines:
        quantize_dynamic(
            model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True
        )
    for line in lines:
        log.debug("quantize_dynamic: %s", line)
    n_layers = sum(1 for m in model.modules() if _is_quantized_linear(m))
    return {
        "quantization": "torch.ao quantize_dynamic: int8 linear weights per output channel, "
        "int8 activations per tensor at run time",
        "engine": torch.backends.quantized.engine,
        "quantized_linear_layers": n_layers,
        "torch_version": torch.__version__,
    }


def _is_quantized_linear(module: Any) -> bool:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return isinstance(module, DynamicLinear)


def _untie(model: Any) -> None:
    """Give the LM head its own weight (so quantising the head leaves the input embedding, an
    ``nn.Embedding``, in float) and keep transformers from tying them again."""
    head = model.get_output_embeddings()
    emb = model.get_input_embeddings()
    if head is not None and emb is not None and head.weight is emb.weight:
        head.weight = torch.nn.Parameter(emb.weight.detach().clone(), requires_grad=False)
        model.config.tie_word_embeddings = False
