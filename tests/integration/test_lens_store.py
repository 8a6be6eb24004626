"""The lens room end to end on the tiny model: store, SQL, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tokenprism.backend.errors import UserError
from tokenprism.backend.lens.service import (
    AttributionRequest,
    compute_attribution,
    compute_lens,
    read_attributions,
    read_lens,
    run_tokens,
)
from tokenprism.backend.scoring.encoding import encode_pair
from tokenprism.backend.scoring.runner import score_one
from tokenprism.backend.store import Store


def _stored_run(lm, path: Path) -> tuple[Store, str]:  # type: ignore[no-untyped-def]
    store = Store(path)
    enc = encode_pair(lm.tokenizer, "Capital of Australia?", "It is Canberra.", context_length=256)
    run_id = store.save_runs(lm, [score_one(lm, enc)])[0]
    return store, run_id


def test_lens_stored_and_queryable(tiny_lm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store, run_id = _stored_run(tiny_lm, tmp_path / "db.duckdb")
    with store:
        run = run_tokens(store, run_id)
        summary = compute_lens(tiny_lm, store, run)
        assert summary["layers"] == 3 and summary["positions"] == len(run.ids) - 1
        data = read_lens(store, run_id)
        assert data is not None
        stored = store.get_run(run_id)
        tokens = stored["tokens"]
        for pos in data["positions"]:
            last = pos["cells"][-1]
            # the last layer's reading is the scored distribution of the run
            assert last["rank"] == tokens[pos["position"]]["rank"]
            assert last["prob"] == pytest.approx(tokens[pos["position"]]["prob"], abs=1e-4)
            assert len(last["top_k"]) == 5
            assert pos["decided_layer"] == tokens[pos["position"]].get("decided_layer")
        assert [r["layer"] for r in stored["layers"]] == [0, 1, 2]
        assert all("lens_kl_final" in r for r in stored["layers"])
        with store.engine.connect() as conn:
            n = conn.exec_driver_sql(
                "SELECT count(*) FROM lens_layers WHERE run_id = ?", (run_id,)
            ).scalar()
        assert n == 3 * (len(run.ids) - 1)
        compute_lens(tiny_lm, store, run)  # recomputing replaces, never duplicates
        assert store.count("lens_layers") == n
        assert read_lens(store, "nope") is None


def test_attribution_stored_and_bad_inputs(tiny_lm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store, run_id = _stored_run(tiny_lm, tmp_path / "db.duckdb")
    with store:
        run = run_tokens(store, run_id)
        pos = len(run.ids) - 2
        res = compute_attribution(tiny_lm, store, run, AttributionRequest(pos, steps=48))
        assert res["completeness_error"] < 0.05
        assert res["total"] == pytest.approx(res["f_x"] - res["f_baseline"], rel=0.05)
        assert len(res["attributions"]) == pos
        assert any(b["block"] == "mlp" for b in res["blocks"])
        again = compute_attribution(tiny_lm, store, run, AttributionRequest(pos, steps=48))
        contra = compute_attribution(
            tiny_lm, store, run, AttributionRequest(pos, method="contrastive", steps=16)
        )
        assert contra["foil_token_id"] is not None and contra["score"] == "logprob_diff"
        listed = read_attributions(store, run_id, pos)
        assert {r["attribution_id"] for r in listed} == {
            again["attribution_id"],
            contra["attribution_id"],
        }
        before = (store.count("attributions"), store.count("attribution_values"))
        bad = [
            AttributionRequest(0),
            AttributionRequest(len(run.ids)),
            AttributionRequest(pos, method="shap"),
            AttributionRequest(pos, steps=1),
            AttributionRequest(pos, steps=10_000),
            AttributionRequest(pos, foil="x"),
            AttributionRequest(pos, baseline="noise"),
            AttributionRequest(pos, end=pos - 1),
            AttributionRequest(pos - 1, end=pos, method="contrastive"),
            AttributionRequest(pos, method="contrastive", foil_token_id=10**9),
        ]
        for req in bad:
            with pytest.raises(UserError):
                compute_attribution(tiny_lm, store, run, req)
        assert (store.count("attributions"), store.count("attribution_values")) == before
        assert store.delete_run(run_id)
        assert store.count("attributions") == store.count("attribution_values") == 0


@pytest.mark.usefixtures("home")  # an isolated data home for the in-process CLI
def test_cli_lens_and_attribute(tiny_model_dir: Path) -> None:
    # in-process (typer's runner): one import of torch and one load of the tiny model for the
    # five commands, where five console-script subprocesses spent minutes on a loaded machine
    from typer.testing import CliRunner

    from tokenprism.backend.cli.main import app

    cli = CliRunner()
    proc = cli.invoke(
        app,
        ["score", "--prompt", "Capital of Australia?", "--response", "Canberra.",
         "--model", str(tiny_model_dir), "--json"],
    )  # fmt: skip
    assert proc.exit_code == 0, proc.output
    run = json.loads(proc.stdout)
    lens = cli.invoke(app, ["lens", run["run_id"], "--json"])
    assert lens.exit_code == 0, lens.output
    assert json.loads(lens.stdout)["layers"] == 3
    pos = len(run["tokens"]) - 2
    attr = cli.invoke(
        app, ["attribute", run["run_id"], "--position", str(pos), "--steps", "16", "--json"]
    )
    assert attr.exit_code == 0, attr.output
    data = json.loads(attr.stdout)
    assert data["steps"] == 16 and len(data["attributions"]) == pos
    total = sum(r["value"] for r in data["attributions"])
    assert data["completeness_error"] == pytest.approx(
        abs(total - (data["f_x"] - data["f_baseline"])) / abs(data["f_x"] - data["f_baseline"]),
        rel=1e-4,
    )
    assert data["completeness_error"] < 0.05 and not math.isnan(total)
    bad = cli.invoke(app, ["attribute", run["run_id"], "--position", "0"])
    # main() turns a UserError into exit status 2 and its one line (test_cli.py checks that)
    assert isinstance(bad.exception, UserError) and "position 0" in str(bad.exception)
    human = cli.invoke(app, ["lens", run["run_id"]])
    assert human.exit_code == 0 and "lens_kl_final" in human.stdout


def test_lens_of_an_audited_turn_reads_its_conversation_context(tiny_lm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # a later turn of a conversation audited in one pass stores only its response rows; the
    # lens must read the whole sequence (context from the conversation's other runs), as the
    # store's own run view does, or it would explain the response without its prompt
    from tests.integration.test_one_pass_audit import _items
    from tokenprism.backend.audit.upload import score_items

    items = _items()
    with Store(tmp_path / "db.duckdb") as store:
        ids = score_items(tiny_lm, store, items, source="t", upload_id="u", job_id="j")
        later = [
            r["run_id"]
            for r in store.list_runs(upload_id="u", limit=50)
            if r["turn_index"] and r["turn_index"] > 0
        ]
        assert later and set(later) <= set(ids)
        for run_id in later:
            run = run_tokens(store, run_id)
            stored = store.get_run(run_id)["tokens"]
            assert run.ids == [t["token_id"] for t in stored]
            assert run.texts == [t["text"] for t in stored]
            assert run.is_prompt == [t["is_prompt"] for t in stored]
            assert sum(run.is_prompt) > sum(not p for p in run.is_prompt)  # context is there
        summary = compute_lens(tiny_lm, store, run_tokens(store, later[0]))
        assert summary["positions"] == len(store.get_run(later[0])["tokens"]) - 1
