"""The real ``tokenprism`` console script, in subprocesses, on the tiny local model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, run_cli


def _assert_clean_error(proc, *needles: str) -> None:  # type: ignore[no-untyped-def]
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_score_json_matches_a_plain_forward(tmp_path: Path, tiny_model_dir: Path, tiny_lm) -> None:  # type: ignore[no-untyped-def]
    text = "The capital of France is Paris."
    proc = run_cli(
        "score",
        "--text",
        text,
        "--no-template",
        "--json",
        "--model",
        str(tiny_model_dir),
        home=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    run = json.loads(proc.stdout)
    assert set(run) >= {"run_id", "model", "tokens", "sequence", "layers"}
    assert run["model"] == {"id": str(tiny_model_dir), "revision": tiny_lm.revision}
    tokens = run["tokens"]
    assert tokens[0]["logprob"] is None and tokens[0]["entropy"] is None
    ids = [t["token_id"] for t in tokens]
    with torch.no_grad():
        logp = torch.log_softmax(tiny_lm.model(torch.tensor([ids])).logits[0].double(), -1)
    for pos in range(1, len(ids)):
        assert tokens[pos]["logprob"] == pytest.approx(float(logp[pos - 1, ids[pos]]), abs=1e-4)
        ent = float(-(logp[pos - 1].exp() * logp[pos - 1]).sum())
        assert tokens[pos]["entropy"] == pytest.approx(ent, abs=1e-4)
        assert len(tokens[pos]["top_k"]) == 10
        assert set(tokens[pos]["top_k"][0]) == {"token_id", "text", "prob"}
    assert {"geometric_mean_confidence", "mean_prob", "perplexity", "mean_entropy"} <= set(
        run["sequence"]
    )
    assert [layer["layer"] for layer in run["layers"]] == [0, 1, 2]

    listed = run_cli("runs", "--json", home=tmp_path)
    assert [r["run_id"] for r in json.loads(listed.stdout)] == [run["run_id"]]
    shown = run_cli("show", run["run_id"], "--json", home=tmp_path)
    assert json.loads(shown.stdout)["tokens"] == tokens
    sql = run_cli("sql", "SELECT count(*) AS n FROM tokens", "--json", home=tmp_path)
    assert json.loads(sql.stdout)["rows"] == [[len(tokens)]]


def test_human_readable_outputs(tmp_path: Path, tiny_model_dir: Path) -> None:
    proc = run_cli(
        "score",
        "--prompt",
        "Capital of Italy?",
        "--response",
        "Rome.",
        "--model",
        str(tiny_model_dir),
        home=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "response tokens" in proc.stdout and "sequence metrics" in proc.stdout
    assert "Rome" in proc.stdout and "effective rank by layer" in proc.stdout
    assert run_cli("runs", home=tmp_path).returncode == 0
    assert "entropy" in run_cli("metrics", home=tmp_path).stdout


def test_audit_summarises_every_turn(tmp_path: Path, tiny_model_dir: Path) -> None:
    proc = run_cli(
        "audit",
        str(REPO / "data" / "samples" / "chats.jsonl"),
        "--model",
        str(tiny_model_dir),
        home=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("most uncertain by entropy") == 8
    assert "conversation 3, turn 2" in proc.stdout
    runs = json.loads(run_cli("runs", "--json", home=tmp_path).stdout)
    assert len(runs) == 8


@pytest.mark.usefixtures("home")  # an isolated data home for the in-process CLI
def test_audit_skip_invalid_and_the_upload_summary(tmp_path: Path, tiny_model_dir: Path) -> None:
    # in-process (typer's runner): the console script may belong to another checkout
    from typer.testing import CliRunner

    from tokenprism.backend.audit.ingest import TranscriptError
    from tokenprism.backend.cli.main import app

    records = [
        {"conversations": [{"from": "gpt", "value": "I start mid-conversation."}]},
        {"conversations": [{"from": "wizard", "value": "poof"}]},
        {"prompt": "Tell me. " + "Paris is nice. " * 80, "response": "Yes."},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]},
    ]
    export = tmp_path / "export.json"
    export.write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")
    model = ["--model", str(tiny_model_dir)]
    strict = CliRunner().invoke(app, ["audit", str(export), *model])
    assert isinstance(strict.exception, TranscriptError)
    assert "line 3" in str(strict.exception) and "wizard" in str(strict.exception)
    proc = CliRunner().invoke(app, ["audit", str(export), "--skip-invalid", "--no-summary", *model])
    assert proc.exit_code == 0, proc.output
    err = " ".join(proc.stderr.split())
    assert "4 conversations (1 invalid, skipped) · 3 assistant turns found · 2 to score" in err
    assert "2 scored · 2 skipped" in err
    assert "truncated to fit the context: 1 turns" in err and "rendered: 2 template" in err
    assert "skipped line 3: message 1 has unknown from 'wizard'" in err
    assert "skipped line 5, conversation 4, turn 1: empty assistant message" in err
    listed = CliRunner().invoke(app, ["runs", "--json"])
    assert len(json.loads(listed.stdout)) == 2


def test_bad_inputs_get_one_clear_line(
    tmp_path: Path, tiny_model_dir: Path, db_lock_holder: Path
) -> None:
    model = ("--model", str(tiny_model_dir))
    _assert_clean_error(run_cli("score", "--text", "", *model, home=tmp_path), "empty")
    _assert_clean_error(
        run_cli("score", "--text", "hi", "--model", str(tmp_path / "missing"), home=tmp_path),
        "does not exist",
    )
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04")
    _assert_clean_error(
        run_cli("score", "--text", "hi", "--model", str(pickled), home=tmp_path), "pickle"
    )
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("café olé".encode("latin-1"))
    _assert_clean_error(run_cli("score", "--file", str(latin), *model, home=tmp_path), "not UTF-8")
    _assert_clean_error(
        run_cli("score", "--text", "Paris " * 400, *model, home=tmp_path), "context is 256 tokens"
    )
    _assert_clean_error(run_cli("sql", "DROP TABLE runs", home=tmp_path), "read-only")
    _assert_clean_error(
        run_cli("score", "--text", "a", "--prompt", "b", home=tmp_path), "exactly one"
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"messages": [{"role": "user", "content": "hi"}, '
        '{"role": "assistant", "content": "yo"}]}\n{"messages": [oops\n'
    )
    _assert_clean_error(run_cli("audit", str(bad), *model, home=tmp_path), "line 2", "invalid JSON")
    _assert_clean_error(
        run_cli(
            "score",
            "--text",
            "hi",
            *model,
            home=tmp_path,
            env={"TOKENPRISM_DB": str(db_lock_holder)},
        ),
        "in use by another process",
    )
