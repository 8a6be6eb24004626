"""Activation steering: a forward hook that adds beta * v to one layer's residual stream, and
steering vectors (EAST entropy-weighted, CAA contrastive) computed from prompt sets.

:func:`steer` is a context manager: the hook is registered with ``prepend=True`` (so it runs
before any output-recording hook and ``hidden_states`` show the steered stream) and is removed
in ``finally``, also when the forward pass raises. It counts the positions it has seen, so the
same hook works for a teacher-forced pass and for cached generation (where each step feeds one
new position): ``start`` selects absolute positions ``>= start`` (e.g. the first response
position), ``None`` steers every position.

Vectors are saved as safetensors with a JSON provenance (model revision, layer, prompts,
parameters) under ``<home>/vectors/<name>/`` and can be applied to any generation or scoring
of the same model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from tokenprism.analysis.steering import (
    SteeringVectorParams,
    contrastive_vector,
    entropy_weighted_vector,
)
from tokenprism.backend.errors import UserError
from tokenprism.backend.limits import check_cancelled, check_context
from tokenprism.backend.models.loader import LoadedModel
from tokenprism.backend.sampling.types import prompt_ids
from tokenprism.backend.settings import Settings

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def decoder_layers(model: Any) -> Any:
    """The list of decoder blocks of a Hugging Face causal LM (Llama-style ``model.layers``)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        layers = getattr(getattr(model, "transformer", None), "h", None)  # GPT-2 style
    if layers is None:
        raise UserError(f"cannot find the decoder layers of {type(model).__name__}")
    return layers


@dataclass
class _HookState:
    seen: int = 0
    calls: int = 0


@contextmanager
def steer(
    model: Any, layer: int, vector: Tensor, beta: float, *, start: int | None = None
) -> Iterator[_HookState]:
    """Add ``beta * vector`` to the output of decoder block ``layer`` while the block is active.

    Args:
        model: the causal LM.
        layer: 0-based decoder block; its output (the residual stream after it) is changed.
        vector: ``[d_model]`` steering vector.
        beta: coefficient.
        start: absolute position from which to steer (None = every position). Positions are
            counted across calls, so pass a fresh context per sequence / generation.

    Yields:
        The hook's state (positions seen, calls), for tests and diagnostics.
    """
    layers = decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise UserError(f"layer {layer} is out of range: the model has blocks 0..{len(layers) - 1}")
    state = _HookState()

    def hook(_module: Any, _inputs: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        steps = hidden.shape[-2]
        positions = torch.arange(state.seen, state.seen + steps, device=hidden.device)
        state.seen += steps
        state.calls += 1
        mask = (
            positions >= start
            if start is not None
            else torch.ones_like(positions, dtype=torch.bool)
        )
        delta = (beta * vector.to(hidden.device, torch.float32)).to(hidden.dtype)
        changed = hidden + mask.to(hidden.dtype).unsqueeze(-1) * delta
        if isinstance(output, tuple):
            return (changed, *output[1:])
        return changed

    handle = layers[layer].register_forward_hook(hook, prepend=True)
    try:
        yield state
    finally:
        handle.remove()


# ---- vectors ------------------------------------------------------------------------------


def _last_prompt_states(
    lm: LoadedModel, prompts: Sequence[str], layer: int
) -> tuple[Tensor, Tensor]:
    """Residual stream after block ``layer`` at the last prompt token, and the next-token
    entropy there (nats), for each chat-templated prompt: ``[N, d]``, ``[N]``."""
    reps, entropies = [], []
    for prompt in prompts:
        ids = prompt_tensor(lm, prompt)
        check_context(lm, int(ids.shape[1]))
        check_cancelled()
        with torch.inference_mode():
            out = lm.model(input_ids=ids, output_hidden_states=True, use_cache=False)
        reps.append(out.hidden_states[layer + 1][0, -1].float().cpu())
        logp = torch.log_softmax(out.logits[0, -1].float(), -1)
        entropies.append(float(-(logp.exp() * logp).sum()))
    return torch.stack(reps), torch.tensor(entropies)


def prompt_tensor(lm: LoadedModel, prompt: str, system: str | None = None) -> Tensor:
    """Token ids ``[1, T]`` on the model's device of a prompt ready for the response.

    The same ids every sampler starts from (:func:`~tokenprism.backend.sampling.types.prompt_ids`:
    chat template when present), as the tensor the steering and decoding loops feed the model.
    """
    ids, _ = prompt_ids(lm, prompt, system)
    return torch.tensor([ids], dtype=torch.long, device=lm.device)


@dataclass
class SteeringVector:
    """A vector with what it was computed from."""

    name: str
    vector: Tensor  # [d_model]
    config: dict[str, Any]

    @property
    def layer(self) -> int:
        return int(self.config["layer"])

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.config.get("kind"),
            "layer": self.layer,
            "model": self.config.get("model"),
            "model_revision": self.config.get("model_revision"),
            "norm": float(self.vector.norm()),
            "n_prompts": self.config.get("n_prompts"),
            "created_at": self.config.get("created_at"),
        }


def east_vector(
    lm: LoadedModel,
    prompts: Sequence[str],
    layer: int,
    params: SteeringVectorParams | None = None,
    *,
    name: str = "east",
) -> SteeringVector:
    """EAST: entropy-weighted, mean-centred last-prompt-token representations.

    The entropy of each prompt is that of the model's next-token distribution at the first
    response position (the "action distribution" of a one-token decision; the paper samples
    actions from an agent, which a general prompt set does not have). Documented choice.
    """
    params = params or SteeringVectorParams()
    if not prompts:
        raise UserError("EAST needs at least one prompt")
    if params.center and len(prompts) < 2:
        # the centred representation of a single prompt is exactly zero: "unit" would fail
        # with an opaque "zero direction" and "none" would return (and save) a zero vector
        raise UserError(
            f"EAST needs at least two prompts to mean-centre their representations "
            f"(got {len(prompts)}); add prompts or set center to false"
        )
    reps, entropies = _last_prompt_states(lm, prompts, layer)
    try:
        vector = entropy_weighted_vector(reps, entropies, params)
    except ValueError as err:
        raise UserError(f"cannot compute the EAST vector: {err}") from None
    return SteeringVector(
        name,
        vector,
        _config(lm, "east", layer, prompts, params.as_dict(), entropies=entropies.tolist()),
    )


def caa_vector(
    lm: LoadedModel,
    positive: Sequence[str],
    negative: Sequence[str],
    layer: int,
    *,
    normalize: str = "unit",
    name: str = "caa",
) -> SteeringVector:
    """Contrastive (CAA-style): mean representation of ``positive`` minus that of ``negative``."""
    if not positive or not negative:
        raise UserError("a contrastive vector needs prompts in both sets")
    pos, _ = _last_prompt_states(lm, positive, layer)
    neg, _ = _last_prompt_states(lm, negative, layer)
    try:
        vector = contrastive_vector(pos, neg, normalize=normalize)
    except ValueError as err:
        raise UserError(f"cannot compute the contrastive vector: {err}") from None
    return SteeringVector(
        name,
        vector,
        _config(
            lm,
            "caa",
            layer,
            [*positive, *negative],
            {"normalize": normalize},
            n_positive=len(positive),
        ),
    )


def _config(
    lm: LoadedModel,
    kind: str,
    layer: int,
    prompts: Sequence[str],
    params: dict[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    digest = hashlib.sha256("\x00".join(prompts).encode()).hexdigest()
    return {
        "kind": kind,
        "layer": layer,
        "model": lm.name,
        "model_revision": lm.revision,
        "params": params,
        "n_prompts": len(prompts),
        "prompts_sha256": digest,
        "prompts": list(prompts)[:200],
        "created_at": datetime.now(UTC).isoformat(),
        **extra,
    }


def vectors_dir(settings: Settings) -> Path:
    return settings.home / "vectors"


def save_vector(vec: SteeringVector, settings: Settings) -> Path:
    """Write a vector atomically under the home's ``vectors`` directory."""
    if not _NAME.fullmatch(vec.name):
        raise UserError(f"vector name {vec.name!r} must be letters, digits, '.', '_' or '-'")
    base = vectors_dir(settings)
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{vec.name}-", dir=base))
    try:
        save_file({"vector": vec.vector.float().contiguous()}, str(tmp / "vector.safetensors"))
        (tmp / "vector.json").write_text(json.dumps({"name": vec.name, **vec.config}, indent=2))
        target = base / vec.name
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return base / vec.name


def load_vector(name: str, settings: Settings) -> SteeringVector:
    path = vectors_dir(settings) / name
    if not _NAME.fullmatch(name) or not (path / "vector.safetensors").is_file():
        known = ", ".join(v.name for v in list_vectors(settings)) or "none"
        raise UserError(f"no steering vector named {name!r}; known: {known}")
    config = json.loads((path / "vector.json").read_text())
    return SteeringVector(name, load_file(str(path / "vector.safetensors"))["vector"], config)


def list_vectors(settings: Settings) -> list[SteeringVector]:
    base = vectors_dir(settings)
    if not base.is_dir():
        return []
    out = []
    for path in sorted(base.iterdir()):
        if (path / "vector.safetensors").is_file():
            out.append(load_vector(path.name, settings))
    return out
