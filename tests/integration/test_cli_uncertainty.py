"""``--metrics`` and ``tokenprism probe`` through the real console script on the tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.integration.test_cli import _assert_clean_error
from tokenprism.backend.errors import UserError


def test_score_with_ccp_and_sar_stores_tokens_claims_and_judge(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    proc = run_cli(
        "score",
        "--prompt",
        "Where is the Eiffel Tower?",
        "--response",
        "It is in Paris. It is tall.",
        "--metrics",
        "ccp,sar",
        "--model",
        str(tiny_model_dir),
        "--json",
        home=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    run = json.loads(proc.stdout)
    response = [t for t in run["tokens"] if not t["is_prompt"]]
    assert all(0.0 < t["ccp"] <= 1.0 for t in response)
    assert all(t["sar"] >= 0.0 for t in response)
    total = sum(t["sar"] for t in response)
    assert math.isclose(total, run["sequence"]["token_sar"], rel_tol=1e-4)
    assert [c["text"] for c in run["claims"]] == ["It is in Paris.", "It is tall."]
    assert run["provenance"]["extras"]["ccp"]["judge"].startswith("fallback:")
    # the stored rows answer SQL too
    sql = run_cli("sql", "SELECT count(*) AS n FROM claims", "--json", home=tmp_path)
    assert sql.returncode == 0, sql.stderr
    assert json.loads(sql.stdout)["rows"][0][0] == 2


def test_metric_and_probe_errors_are_one_clear_line(tmp_path: Path, tiny_model_dir: Path) -> None:
    proc = run_cli("score", "--text", "Hello there.", "--metrics", "ccp,nope", home=tmp_path)
    _assert_clean_error(proc, "unknown metric family", "'nope'")
    proc = run_cli(
        "score",
        "--text",
        "Hello there.",
        "--metrics",
        "probe",
        "--model",
        str(tiny_model_dir),
        home=tmp_path,
    )
    _assert_clean_error(proc, "no probe has been trained")


def test_probe_list_shows_the_shipped_probe(tmp_path: Path) -> None:
    proc = run_cli("probe", "list", "--json", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    probes = {p["name"]: p for p in json.loads(proc.stdout)}
    shipped = probes["smollm2-135m-facts"]
    assert shipped["shipped"] and shipped["layer"] == 17
    assert shipped["held_out"]["token_auc"]["probe"] > 0.5


@pytest.mark.usefixtures("home")
def test_ccp_preset_option_in_process(tiny_model_dir: Path) -> None:
    """``--ccp-preset`` reaches the stored provenance; an unknown preset is a clear error.
    (In-process, like the group commands: the console script is the installed package's.)"""
    from typer.testing import CliRunner

    from tokenprism.backend.cli.main import app

    runner = CliRunner()
    base = [
        "score",
        "--text",
        "It is in Paris.",
        "--metrics",
        "ccp",
        "--model",
        str(tiny_model_dir),
    ]
    for preset, stopwords in (("tokenprism", True), (None, False)):
        args = [*base, "--json"] + (["--ccp-preset", preset] if preset else [])
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (result.output, result.exception)
        ccp = json.loads(result.stdout)["provenance"]["extras"]["ccp"]
        assert ccp["preset"] == (preset or "lm-polygraph")
        assert ccp["params"]["stopword_rule"] is stopwords
    # in process the UserError is raised (the console script's main prints it as one line)
    result = runner.invoke(app, [*base, "--ccp-preset", "paper"])
    assert isinstance(result.exception, UserError)
    assert "unknown CCP preset 'paper'; choose from lm-polygraph, tokenprism" in str(
        result.exception
    )
    result = runner.invoke(app, ["score", "--text", "Hi.", "--ccp-preset", "tokenprism"])
    assert isinstance(result.exception, UserError) and "--ccp-preset" in str(result.exception)
