"""The logit metrics' vocabulary sweep compiled into one fused loop, warmed in the background.

:func:`analysis.logits.vocab_moments` runs the sums behind entropy and kurtosis as about ten
separate passes over each ``[chunk, vocab]`` block of logits; ``torch.compile`` (Inductor)
fuses the same formulas into one loop (about a third of the eager sweep's single-thread CPU
time on 1,000 x 49k logits). Compiling takes 20-80 s on a small CPU, so a
user never waits for it:

* the policy is :attr:`backend.settings.Settings.compile_metrics`: ``off`` (the default: on the
  2-core reference machine the fused loop, ~3x cheaper in single-thread CPU time, gave no
  wall-clock gain with two threads, see README's performance section), ``auto`` compiles in
  a background thread when a long-lived process asks for it (:func:`start_warm_up`: the API
  server after loading its model, an audit before its first batch) and uses the kernel once
  it is ready; ``on`` also compiles on first use, waiting for it (benchmarks);
* until the kernel is ready, and for any block of another shape (the last, shorter block of a
  text), the eager :func:`~analysis.logits.vocab_moments` runs: the values agree within
  float32 rounding (~1e-6 relative; the fused sums accumulate in float64);
* a failed compile (no C++ compiler, an unsupported device) is logged once and the eager path
  stays; Inductor's on-disk cache makes later processes' compiles take seconds.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from tokenprism.analysis.logits import MomentsFn, vocab_moments

log = logging.getLogger(__name__)

Key = tuple[str, int, int]  # (device type, chunk rows, vocabulary size)

_LOCK = threading.Lock()
_READY: dict[Key, MomentsFn] = {}
_FAILED: set[Key] = set()
_STARTED: dict[Key, threading.Thread] = {}


def fused_moments(z: Tensor, m: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`analysis.logits.vocab_moments`'s formulas written for the compiler.

    Functional (no ``out=`` buffers, so Inductor can fuse every step into one loop over the
    vocabulary) and accumulating the four sums in float64, which the fused loop does in
    registers at no memory cost; results are float32 like the eager path's.
    """
    vocab = z.shape[-1]
    zc = z - m.unsqueeze(-1)
    e = torch.exp(zc)
    s = e.sum(-1, dtype=torch.float64).float()
    ez = (zc * e).sum(-1, dtype=torch.float64).float()
    d = e * s.reciprocal().unsqueeze(-1) - 1.0 / vocab
    d2 = d * d
    m2 = (d2.sum(-1, dtype=torch.float64) / vocab).float()
    m4 = ((d2 * d2).sum(-1, dtype=torch.float64) / vocab).float()
    return s, ez, m2, m4


def compiler_available(device: torch.device) -> bool:
    """Inductor needs a C++ compiler for CPU kernels (Triton, shipped with CUDA torch, on GPU)."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    return any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))


def _key(device: torch.device, chunk: int, vocab: int) -> Key:
    return (device.type, int(chunk), int(vocab))


def _compile(key: Key) -> None:
    """Compile and run the kernel once on a block of ``key``'s shape; record the outcome."""
    device, chunk, vocab = key
    try:
        fn: Any = torch.compile(fused_moments, dynamic=False)
        # scoring calls the kernel under inference mode: compile under the same guards
        with torch.inference_mode():
            z = torch.randn(chunk, vocab, device=device)
            fn(z, z.amax(-1))
    except Exception as err:  # noqa: BLE001 - any compiler failure keeps the eager path
        log.warning("compiled logit metrics unavailable (%s); using the eager path", err)
        with _LOCK:
            _FAILED.add(key)
        return
    with _LOCK:
        _READY[key] = fn


def start_warm_up(lm: Any, chunk: int, *, wait: bool = False) -> bool:
    """Compile the kernel for ``lm``'s vocabulary in the background (or wait, ``wait=True``).

    Does nothing when the policy (``lm.compile_metrics``) is ``off``, no compiler is found,
    or the kernel is ready, failed or already compiling. Returns whether it is ready now.
    """
    policy = getattr(lm, "compile_metrics", "off")
    if policy == "off" or not compiler_available(lm.device):
        return False
    vocab = int(lm.model.get_output_embeddings().weight.shape[0])
    key = _key(lm.device, chunk, vocab)
    with _LOCK:
        if key in _READY or key in _FAILED:
            return key in _READY
        thread = _STARTED.get(key)
        if thread is None:
            thread = threading.Thread(
                target=_compile, args=(key,), name="tokenprism-compile", daemon=True
            )
            _STARTED[key] = thread
            thread.start()
    if wait:
        thread.join()
    return key in _READY


def moments_for(lm: Any, chunk: int) -> MomentsFn | None:
    """The sweep to use for ``lm`` now: the compiled kernel when ready, else None (eager).

    Under the ``on`` policy the first call compiles and waits; under ``auto`` it only uses a
    kernel a warm-up has made.
    """
    policy = getattr(lm, "compile_metrics", "off")
    if policy == "off":
        return None
    if policy == "on":
        start_warm_up(lm, chunk, wait=True)
    device = lm.device
    with _LOCK:
        ready = {k: fn for k, fn in _READY.items() if k[0] == device.type and k[1] == chunk}
    if not ready:
        return None
    return _dispatch(ready, device.type, chunk)


def _dispatch(ready: dict[Key, MomentsFn], device: str, chunk: int) -> MomentsFn:
    """Use a compiled kernel for blocks of a compiled shape, the eager sweep for the rest."""

    def moments(z: Tensor, m: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        fn: Callable[..., Any] | None = None
        if z.shape[0] == chunk and z.dtype == torch.float32 and z.is_contiguous():
            fn = ready.get((device, chunk, z.shape[-1]))
        if fn is not None and torch.is_inference_mode_enabled():
            try:
                # a call that would recompile (other guards) must not stall scoring for
                # seconds: it raises here and this block takes the eager path
                with torch.compiler.set_stance("fail_on_recompile"):
                    return fn(z, m)
            except Exception:  # noqa: BLE001
                log.debug("compiled logit metrics skipped for one block", exc_info=True)
        return vocab_moments(z, m)

    return moments
