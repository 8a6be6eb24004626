"""Which packages an import really loads, checked in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def modules_loaded_by(modules: tuple[str, ...], watched: tuple[str, ...]) -> list[str]:
    """Import ``modules`` in a fresh interpreter; return the loaded modules under ``watched``."""
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {watched!r})))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    loaded: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return loaded


def packages_loaded_by(module: str, watched: tuple[str, ...]) -> list[str]:
    """Top-level packages of ``watched`` that importing ``module`` loads."""
    return sorted({m.split(".")[0] for m in modules_loaded_by((module,), watched)})
