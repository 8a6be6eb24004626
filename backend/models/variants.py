"""Model variants by name: ``NAME@SUFFIX[@SUFFIX...]`` wherever a model is named.

A registry maps each suffix kind to a builder that turns a loaded model into a variant:

==================  =============================================================================
``@int8``           int8 weight-only quantisation of every linear layer but the LM head (one
                    scale per output channel; activations stay float); the LM head and the
                    tied input embedding stay float; see :mod:`.quantize` for why not torch's
                    dynamic W8A8 nor torchao. Runs on the base model's device and dtype.
``@bf16``/``@fp16`` the weights cast to bfloat16 / float16 (no autocast: they run in their own
                    precision).
``@layers=K``       early exit: the first K decoder blocks with the final norm and LM head.
``@adapter=PATH``   a peft LoRA adapter directory (safetensors only), merged into a copy.
``@steer=V:B[:L]``  saved steering vector V (``<home>/vectors/V``) times B added to the output
                    of decoder block L (default: the vector's own layer) at every position, by
                    the hook of :mod:`tokenprism.backend.lab.steering`.
==================  =============================================================================

Variants chain left to right (``default@int8@steer=east:4``). A variant's ``name`` is the exact
spec, its ``revision`` the base revision plus every suffix with the fingerprints of the files
it read (adapter weights, vector), and ``variants`` lists what each step did: run provenance
records all three. Variants are cached per process like base models, at most
``settings.max_loaded_models`` of them (least recently used dropped first, as
:func:`loader.get_model` does).

Through the API every spec passes :func:`backend.api.security.gate_model_name` first (the base
gated like any model name, adapter paths confined to the allowed directories).

The steering builder imports ``backend.lab.steering`` lazily (the hook lives there); nothing in
``lab.steering`` imports this module, so there is no cycle.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from tokenprism.backend.errors import ModelNotFound, UnsafeWeights, UserError
from tokenprism.backend.models import loader
from tokenprism.backend.models.loader import LoadedModel
from tokenprism.backend.settings import Settings

_STEER = re.compile(
    r"^(?P<vector>[A-Za-z0-9][A-Za-z0-9_.-]{0,63}):(?P<beta>[-+0-9.eE]+)(?::(?P<layer>\d+))?$"
)


@dataclass(frozen=True)
class Variant:
    """One parsed suffix: ``kind`` (``int8``, ``layers``, ...) and its argument."""

    kind: str
    arg: str | None = None

    @property
    def suffix(self) -> str:
        return f"@{self.kind}" if self.arg is None else f"@{self.kind}={self.arg}"


Builder = Callable[[LoadedModel, str | None, Settings], tuple[Any, dict[str, Any]]]


@dataclass(frozen=True)
class VariantKind:
    """A registered suffix kind.

    Attributes:
        name: the suffix (``int8``).
        build: ``(base, arg, settings) -> (LoadedModel fields to replace, provenance dict)``.
        validate: checks the argument without loading anything (bad specs fail before work).
        takes_arg: ``@kind=ARG`` (True) or bare ``@kind``.
        paths: local paths the argument names (checked against the allowed directories).
        help: one line for the CLI / UI.
    """

    name: str
    build: Builder
    validate: Callable[[str | None], None]
    takes_arg: bool
    help: str
    paths: Callable[[str], list[Path]] = lambda _arg: []


VARIANT_KINDS: dict[str, VariantKind] = {}


def register_variant(kind: VariantKind) -> VariantKind:
    if kind.name in VARIANT_KINDS:
        raise ValueError(f"variant {kind.name!r} is already registered")
    VARIANT_KINDS[kind.name] = kind
    return kind


def _parse_one(part: str) -> Variant:
    name, eq, arg = part.partition("=")
    kind = VARIANT_KINDS.get(name)
    if kind is None:
        known = ", ".join(f"@{k}" for k in VARIANT_KINDS)
        raise UserError(f"unknown model variant '@{part}'; known: {known}")
    if kind.takes_arg != bool(eq):
        form = f"@{name}=..." if kind.takes_arg else f"@{name}"
        raise UserError(f"model variant '@{part}' must be written {form}")
    kind.validate(arg if eq else None)
    return Variant(name, arg if eq else None)


def split_spec(spec: str) -> tuple[str, list[Variant]]:
    """``NAME@a@b=x`` -> ``("NAME", [Variant(a), Variant(b, x)])``; a plain name has none.

    A name that is an existing path is taken whole (a directory may contain ``@``).

    Raises:
        UserError: an unknown suffix or a malformed argument.
    """
    if "@" not in spec or _exists(spec):
        return spec, []
    base, *parts = spec.split("@")
    if not base:
        raise UserError(f"model {spec!r} names a variant but no model before '@'")
    return base, [_parse_one(p) for p in parts]


def _exists(name: str) -> bool:
    try:
        return Path(name).expanduser().exists()
    except (OSError, ValueError):  # too long for the file system, a NUL byte
        return False


def join_spec(base: str, variants: list[Variant]) -> str:
    return base + "".join(v.suffix for v in variants)


def variant_paths(variants: list[Variant]) -> list[Path]:
    """Local paths named by the variants' arguments (for the allowed-directories check)."""
    return [p for v in variants if v.arg is not None for p in VARIANT_KINDS[v.kind].paths(v.arg)]


# ---- cache ------------------------------------------------------------------------------------

_CACHE: OrderedDict[tuple[str, str, str, str], LoadedModel] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def cached_variant_names() -> list[str]:
    return [lm.name for lm in _CACHE.values()]


def get_model(spec: str, settings: Settings, *, base: LoadedModel | None = None) -> LoadedModel:
    """Load a model or variant by name; ``base`` is reused when its name is the spec's base."""
    name, variants = split_spec(spec)
    lm = base if base is not None and base.name == name else loader.get_model(name, settings)
    for variant in variants:
        key = (join_spec(lm.name, [variant]), lm.revision, str(lm.device), str(lm.dtype))
        with _CACHE_LOCK:
            hit = _CACHE.get(key)
            if hit is not None:
                _CACHE.move_to_end(key)
        if hit is None:
            hit = build_variant(lm, variant, settings)
            with _CACHE_LOCK:  # bounded like loaded models: each variant holds its own weights
                loader.remember(_CACHE, key, hit, settings.max_loaded_models)
        lm = hit
    return lm


def build_variant(lm: LoadedModel, variant: Variant, settings: Settings) -> LoadedModel:
    """``lm`` turned into ``variant`` (a new :class:`LoadedModel`; ``lm`` is untouched)."""
    fields, info = VARIANT_KINDS[variant.kind].build(lm, variant.arg, settings)
    tag = info.pop("revision_tag", variant.suffix)
    return replace(
        lm,
        name=lm.name + variant.suffix,
        revision=lm.revision + tag,
        label=lm.label + variant.suffix,
        path=None,  # the directory holds the base weights, not the variant's
        variants=[*lm.variants, {"suffix": variant.suffix, **info}],
        **fields,
    )


# ---- builders ---------------------------------------------------------------------------------


def _no_arg(_arg: str | None) -> None:
    return None


def _copy(lm: LoadedModel) -> Any:
    return copy.deepcopy(lm.model)


def _cast(dtype: torch.dtype) -> Builder:
    def build(lm: LoadedModel, _arg: str | None, _s: Settings) -> tuple[Any, dict[str, Any]]:
        model = _copy(lm).to(dtype=dtype).eval()
        name = str(dtype).removeprefix("torch.")
        return {"model": model, "dtype": dtype, "autocast": None}, {"cast": name}

    return build


def _int8(lm: LoadedModel, _arg: str | None, _s: Settings) -> tuple[Any, dict[str, Any]]:
    from tokenprism.backend.models.quantize import quantize_int8

    model = _copy(lm)
    info = quantize_int8(model)
    # the scheme is in the revision, so runs of an earlier @int8 (torch's dynamic W8A8) never
    # share a models row with these
    info["revision_tag"] = "@int8:w8-per-channel"
    return {"model": model.eval()}, info


def _int_arg(name: str) -> Callable[[str | None], None]:
    def check(arg: str | None) -> None:
        if arg is None or not arg.isdigit() or len(arg) > 6 or int(arg) < 1:
            raise UserError(f"@{name}= needs a positive integer, got {arg!r}")

    return check


def early_exit_model(lm: LoadedModel, n_layers: int) -> Any:
    """A deep copy of ``lm.model`` keeping its first ``n_layers`` decoder blocks, with the final
    norm and LM head (an early exit sharing the tokenizer)."""
    inner = getattr(lm.model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise UserError(f"cannot truncate {type(lm.model).__name__}: no model.layers")
    total = len(layers)
    if not 1 <= n_layers <= total:
        raise UserError(f"layers must be in 1..{total} for {lm.name!r}, got {n_layers}")
    model = copy.deepcopy(lm.model)
    model.model.layers = torch.nn.ModuleList(list(model.model.layers)[:n_layers])
    model.config.num_hidden_layers = n_layers
    layer_types = getattr(model.config, "layer_types", None)
    if isinstance(layer_types, list):
        model.config.layer_types = layer_types[:n_layers]
    return model.eval()


def _layers(lm: LoadedModel, arg: str | None, _s: Settings) -> tuple[Any, dict[str, Any]]:
    n = int(arg or 0)
    return {"model": early_exit_model(lm, n)}, {"layers": n}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _adapter_dir(arg: str) -> Path:
    return Path(arg).expanduser().resolve()


def _check_adapter(arg: str | None) -> None:
    if not arg:
        raise UserError("@adapter= needs the path of a peft adapter directory")


def _adapter(lm: LoadedModel, arg: str | None, _s: Settings) -> tuple[Any, dict[str, Any]]:
    # Errors name the adapter as it was written, never the resolved path.
    shown = repr((arg or "")[:200])
    path = _adapter_dir(arg or "")
    if not (path / "adapter_config.json").is_file():
        raise ModelNotFound(f"adapter {shown} is not a peft adapter directory")
    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        if any(path.glob("adapter_model.*")):
            raise UnsafeWeights(f"adapter {shown} has no adapter_model.safetensors (no pickle)")
        raise ModelNotFound(f"adapter {shown} holds no adapter_model.safetensors")
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(_copy(lm), str(path), is_trainable=False)
    except (ValueError, KeyError, RuntimeError) as err:
        first = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        raise UserError(f"cannot apply adapter {shown} to {lm.name!r}: {first}") from None
    model = peft_model.merge_and_unload().eval()  # a plain model again: same forward cost
    digest = _sha256(weights)
    info = {
        "adapter": str(path),
        "adapter_sha256": digest,
        "revision_tag": f"@adapter=sha256:{digest[:16]}",
    }
    return {"model": model}, info


def _check_steer(arg: str | None) -> None:
    match = _STEER.match(arg or "")
    if match is None:
        raise UserError(f"@steer= must be VECTOR:BETA[:LAYER] (e.g. east:4.0:12), got {arg!r}")
    try:
        beta = float(match["beta"])
    except ValueError:
        raise UserError(f"@steer= beta {match['beta']!r} is not a number") from None
    if beta != beta or abs(beta) == float("inf"):
        raise UserError("@steer= beta must be finite")


_STEERED: dict[type, type] = {}


def _steered_class(cls: type) -> type:
    """A subclass of ``cls`` whose forward runs inside the steering hook's context."""
    if cls in _STEERED:
        return _STEERED[cls]
    from tokenprism.backend.lab.steering import steer

    @functools.wraps(cls.forward)  # type: ignore[attr-defined]
    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        layer, vector, beta = self._tokenprism_steer
        # the hook is added for this call only and removed in finally, also on errors
        with steer(self, layer, vector, beta):
            return cls.forward(self, *args, **kwargs)  # type: ignore[attr-defined]

    steered = type(cls.__name__, (cls,), {"forward": forward, "__module__": __name__})
    _STEERED[cls] = steered
    return steered


def _steer(lm: LoadedModel, arg: str | None, settings: Settings) -> tuple[Any, dict[str, Any]]:
    from tokenprism.backend.lab.steering import decoder_layers, load_vector

    match = _STEER.match(arg or "")
    assert match is not None  # validated at parse time
    vec = load_vector(match["vector"], settings)
    layer = int(match["layer"]) if match["layer"] is not None else vec.layer
    hidden = int(getattr(lm.model.config, "hidden_size", vec.vector.shape[-1]))
    if vec.vector.shape[-1] != hidden:
        raise UserError(
            f"vector {vec.name!r} has width {vec.vector.shape[-1]}, {lm.name!r} has {hidden}"
        )
    n_layers = len(decoder_layers(lm.model))
    if not 0 <= layer < n_layers:
        raise UserError(f"@steer layer {layer} is out of range 0..{n_layers - 1}")
    # A shallow copy shares every weight with the base (steering changes no weight); only its
    # class differs, so its forward adds the vector and the base's forward stays clean.
    model = copy.copy(lm.model)
    model.__class__ = _steered_class(type(lm.model))
    beta = float(match["beta"])
    model._tokenprism_steer = (layer, vec.vector.to(lm.device), beta)
    digest = hashlib.sha256(vec.vector.float().numpy().tobytes()).hexdigest()
    info = {
        "vector": vec.name,
        "vector_sha256": digest,
        "vector_model_revision": vec.config.get("model_revision"),
        "beta": beta,
        "layer": layer,
        "revision_tag": f"@steer={vec.name}(sha256:{digest[:16]}):{beta:g}:{layer}",
    }
    return {"model": model}, info


for _kind in (
    VariantKind("int8", _int8, _no_arg, False, "int8 weights of the linear layers (LM head float)"),
    VariantKind("bf16", _cast(torch.bfloat16), _no_arg, False, "weights cast to bfloat16"),
    VariantKind("fp16", _cast(torch.float16), _no_arg, False, "weights cast to float16"),
    VariantKind("layers", _layers, _int_arg("layers"), True, "early exit after K decoder blocks"),
    VariantKind(
        "adapter",
        _adapter,
        _check_adapter,
        True,
        "a peft LoRA adapter directory, merged",
        paths=lambda arg: [_adapter_dir(arg)],
    ),
    VariantKind("steer", _steer, _check_steer, True, "saved steering vector VECTOR:BETA[:LAYER]"),
):
    register_variant(_kind)
