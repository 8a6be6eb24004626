"""Hallucination probes on disk: find, load, save, and apply them to hidden states.

A probe is a directory holding ``probe.safetensors`` (``weight [d_model]``, ``bias []``),
``probe.json`` (which model, its revision, the layer, how it was trained) and, when it was
evaluated, ``report.json``. Shipped probes live in ``data/probes/`` of the source tree; probes
trained by users go to ``<home>/probes/``; operators can add directories
(``TOKENPRISM_PROBE_DIRS``). A probe applies to runs of the model it was trained on: the model
name *and* weight revision must match, since a probe reads one model's residual stream.

Layer convention: ``layer = L`` reads ``hidden_states[L + 1]`` of the Hugging Face forward pass,
the residual stream after decoder block ``L`` (0-based). For the last block HF applies the final
norm to that tensor; training and application use the same tensor, so a probe stays consistent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from tokenprism.analysis.probe import LinearProbe
from tokenprism.backend.errors import NameTaken, UserError
from tokenprism.backend.models.loader import LoadedModel
from tokenprism.backend.resources import shipped
from tokenprism.backend.settings import Settings

SHIPPED_PROBES = shipped("probes")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass
class StoredProbe:
    """A probe read from disk."""

    name: str
    path: Path
    config: dict[str, Any]
    weight: Tensor  # [d_model]
    bias: Tensor  # []
    report: dict[str, Any] | None

    @property
    def layer(self) -> int:
        return int(self.config["layer"])

    def summary(self) -> dict[str, Any]:
        report = self.report or {}
        return {
            "name": self.name,
            "model": self.config.get("model"),
            "model_revision": self.config.get("model_revision"),
            "layer": self.layer,
            "hidden_size": int(self.weight.numel()),
            "created_at": self.config.get("created_at"),
            "shipped": self.path.parent.resolve() == SHIPPED_PROBES.resolve(),
            "description": self.config.get("description", ""),
            "held_out": report.get("held_out"),
        }

    def provenance(self) -> dict[str, Any]:
        return {
            "probe": self.name,
            "layer": self.layer,
            "model_revision": self.config.get("model_revision"),
            "created_at": self.config.get("created_at"),
        }

    def matches(self, lm: LoadedModel) -> bool:
        return self.config.get("model_revision") == lm.revision and int(self.weight.numel()) == int(
            lm.model.config.hidden_size
        )

    def apply(self, hidden_states: tuple[Tensor, ...]) -> Tensor:
        """Hallucination probability ``[batch, T]`` from a forward pass's hidden states."""
        if self.layer + 1 >= len(hidden_states):
            raise UserError(
                f"probe {self.name!r} reads layer {self.layer}, but the model has only "
                f"{len(hidden_states) - 1} layers"
            )
        h = hidden_states[self.layer + 1].float()
        w = self.weight.to(h.device, torch.float32)
        return torch.sigmoid(h @ w + self.bias.to(h.device, torch.float32))


def probe_dirs(settings: Settings) -> list[Path]:
    """Where probes are looked up, first match wins: shipped and operator-configured probes come
    before the home's trained ones, so a trained probe can never stand in for them."""
    return [SHIPPED_PROBES, *settings.probe_dirs, settings.probes_dir]


def check_not_shipped(name: str, settings: Settings) -> None:
    """Refuse (409) to train a probe under the name of a shipped or operator-provided one."""
    for base in [SHIPPED_PROBES, *settings.probe_dirs]:
        if (base / name).exists():
            raise NameTaken(
                f"probe name {name!r} belongs to a shipped probe and cannot be replaced; "
                "choose another name"
            )


def check_probe_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise UserError(
            f"probe name {name!r} must be 1-64 letters, digits, '.', '_' or '-' "
            "and start with a letter or digit"
        )
    return name


def _read(path: Path) -> StoredProbe:
    try:
        config = json.loads((path / "probe.json").read_text())
        tensors = load_file(str(path / "probe.safetensors"))
    except (OSError, ValueError) as err:
        raise UserError(f"probe at {path} cannot be read: {err}") from None
    report_file = path / "report.json"
    report = json.loads(report_file.read_text()) if report_file.is_file() else None
    return StoredProbe(path.name, path, config, tensors["weight"], tensors["bias"], report)


def list_probes(settings: Settings) -> list[StoredProbe]:
    """Every readable probe; a shipped one hides a trained one of the same name."""
    seen: dict[str, StoredProbe] = {}
    for base in probe_dirs(settings):
        if not base.is_dir():
            continue
        for path in sorted(base.iterdir()):
            if path.name not in seen and (path / "probe.safetensors").is_file():
                try:
                    seen[path.name] = _read(path)
                except UserError:
                    continue  # a half-written or foreign directory is not a probe
    return list(seen.values())


def load_probe(name: str, settings: Settings) -> StoredProbe:
    check_probe_name(name)
    for base in probe_dirs(settings):
        if (base / name / "probe.safetensors").is_file():
            return _read(base / name)
    known = ", ".join(p.name for p in list_probes(settings)) or "none"
    raise UserError(f"no probe named {name!r}; known probes: {known}")


def probe_for(lm: LoadedModel, settings: Settings, name: str | None = None) -> StoredProbe:
    """The named probe, checked against ``lm``; without a name, the newest matching probe."""
    if name:
        probe = load_probe(name, settings)
        if not probe.matches(lm):
            raise UserError(
                f"probe {name!r} was trained on {probe.config.get('model')!r} "
                f"(revision {str(probe.config.get('model_revision'))[:16]}), not on "
                f"{lm.name!r} (revision {lm.revision[:16]}); train one for this model"
            )
        return probe
    matching = [p for p in list_probes(settings) if p.matches(lm)]
    if not matching:
        raise UserError(
            f"no probe has been trained for model {lm.name!r}; train one with "
            "`tokenprism probe train` or POST /api/v1/probes"
        )
    return max(matching, key=lambda p: str(p.config.get("created_at", "")))


def save_probe(
    probe: LinearProbe,
    name: str,
    lm: LoadedModel,
    layer: int,
    directory: Path,
    *,
    config: dict[str, Any],
    report: dict[str, Any] | None,
) -> Path:
    """Write a probe atomically (a crash leaves the old probe or none, never half of one)."""
    check_probe_name(name)
    if directory.resolve() != SHIPPED_PROBES.resolve() and (SHIPPED_PROBES / name).exists():
        raise NameTaken(f"probe name {name!r} belongs to a shipped probe; choose another name")
    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=directory))
    try:
        weight = probe.linear.weight.detach().float().reshape(-1).contiguous().cpu()
        bias = probe.linear.bias.detach().float().reshape(()).contiguous().cpu()
        save_file({"weight": weight, "bias": bias}, str(tmp / "probe.safetensors"))
        full = {
            "name": name,
            "model": lm.name,
            "model_label": lm.label,
            "model_revision": lm.revision,
            "layer": layer,
            "hidden_size": int(weight.numel()),
            "created_at": datetime.now(UTC).isoformat(),
            **config,
        }
        (tmp / "probe.json").write_text(json.dumps(full, indent=2) + "\n")
        if report is not None:
            (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        target = directory / name
        tmp.chmod(0o755)  # mkdtemp makes it private; a probe is meant to be shared
        for file in tmp.iterdir():
            file.chmod(0o644)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory / name
