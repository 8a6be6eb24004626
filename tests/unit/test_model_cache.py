"""The converted-GGUF cache is keyed on the file's bytes, not only on where it is installed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tokenprism.backend.models.loader import _META, _convert_gguf


def _cached(target: Path, gguf: Path, *, path: str, sha: str) -> None:
    target.mkdir()
    meta = {"gguf": path, "size": gguf.stat().st_size, "sha256": sha}
    (target / _META).write_text(json.dumps(meta))


def test_the_same_file_installed_elsewhere_reuses_the_cache(tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"not really a gguf, never parsed when the cache matches")
    target = tmp_path / "cache"
    _cached(
        target,
        gguf,
        path="/other/venv/model.gguf",
        sha=hashlib.sha256(gguf.read_bytes()).hexdigest(),
    )
    assert _convert_gguf(gguf, target) == target


def test_a_different_file_of_the_same_size_is_converted_again(tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"not really a gguf, so converting it fails")
    target = tmp_path / "cache"
    _cached(target, gguf, path="/other/venv/model.gguf", sha="0" * 64)
    with pytest.raises(Exception):  # noqa: B017 - any failure shows a conversion was tried
        _convert_gguf(gguf, target)
    assert json.loads((target / _META).read_text())["sha256"] == "0" * 64  # cache untouched
