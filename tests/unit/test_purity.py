"""The analysis package stays pure tensor math: no UI, web, database or model libraries."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = ("streamlit", "fastapi", "sqlalchemy", "transformers")
MODULES = (
    "analysis",
    "analysis.logits",
    "analysis.windows",
    "analysis.sequence",
    "analysis.steps",
    "analysis.geometry",
    "analysis.scoring",
    "analysis.registry",
    "analysis.types",
)


def _loaded_after_import(modules: tuple[str, ...], watched: tuple[str, ...]) -> list[str]:
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
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_importing_analysis_pulls_in_no_heavy_frameworks() -> None:
    assert _loaded_after_import(MODULES, FORBIDDEN) == []


def test_the_probe_sees_imported_modules() -> None:
    """Guard against a vacuous check: the probe reports a watched package once imported."""
    assert "email.mime" in _loaded_after_import(("email.mime.text",), ("email",))
