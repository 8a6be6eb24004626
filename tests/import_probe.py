"""Which packages an import really loads (checked in a fresh interpreter), and which modules
the tree holds (found by walking its folders, so a new module is checked without a list edit)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "tokenprism"


def tree_modules(subpackage: str) -> tuple[str, ...]:
    """Every module of ``tokenprism.<subpackage>``, found by walking its folder.

    Args:
        subpackage: dotted path below ``tokenprism``, e.g. ``"analysis"`` or ``"app.components"``.

    Returns:
        Sorted dotted names: the package itself, its modules and those of its sub-packages.
    """
    # resolve(): tokenprism/<name> may be a link to the folder at the repository root
    root = (PACKAGE / subpackage.replace(".", "/")).resolve()
    names = set()
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.add(".".join(("tokenprism", subpackage, *parts)))
    return tuple(sorted(names))


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
