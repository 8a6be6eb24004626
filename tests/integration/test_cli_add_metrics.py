"""``tokenprism add-metrics`` in-process (typer's runner) on the tiny local model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest


@pytest.mark.usefixtures("home")  # an isolated data home for the in-process CLI
def test_add_metrics_to_an_audited_upload_then_again(tmp_path: Path, tiny_model_dir: Path) -> None:
    from typer.testing import CliRunner

    from tokenprism.backend.cli.main import app
    from tokenprism.backend.enrich.add import FamilyUnavailable
    from tokenprism.backend.errors import UserError

    pairs = [
        {"prompt": "Name a colour.", "response": "Blue is a colour. So is red."},
        {"prompt": "And a fruit?", "response": "An apple."},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(p) for p in pairs) + "\n")
    model = ["--model", str(tiny_model_dir)]
    audited = CliRunner().invoke(app, ["audit", str(path), "--no-summary", *model])
    assert audited.exit_code == 0, audited.output
    found = re.search(r"upload ([0-9a-f]{32})", audited.stderr)
    assert found, audited.stderr
    upload_id = found.group(1)

    added = CliRunner().invoke(app, ["add-metrics", upload_id, "--metrics", "sar"])
    assert added.exit_code == 0, added.output
    assert "added sar to 2 turns (0 had them already)" in " ".join(added.stderr.split())
    again = CliRunner().invoke(app, ["add-metrics", upload_id, "--metrics", "sar"])
    assert again.exit_code == 0, again.output
    assert "has sar already" in again.stdout

    bad = CliRunner().invoke(app, ["add-metrics", upload_id, "--metrics", "magic"])
    assert isinstance(bad.exception, UserError) and "magic" in str(bad.exception)
    gone = CliRunner().invoke(app, ["add-metrics", "nope", "--metrics", "sar"])
    assert isinstance(gone.exception, UserError) and "nope" in str(gone.exception)
    assert not isinstance(gone.exception, FamilyUnavailable)
