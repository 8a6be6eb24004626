"""The Ray engine against the local one: same rows, shard resume, killed workers, CLI and API.

One local Ray cluster with 2 CPU slots serves the whole module (each run still starts its own
actor pool, which loads the tiny model once per actor).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from tests.conftest import run_cli
from tokenprism.backend.audit.ingest import WorkItem, parse_transcript
from tokenprism.backend.audit.upload import JobCancelled, score_items
from tokenprism.backend.models.loader import LoadedModel
from tokenprism.backend.settings import Settings
from tokenprism.backend.store import Store, schema
from tokenprism.backend.store.records import create_job

ray = pytest.importorskip("ray", reason="the Ray engine needs pip install -e '.[distributed]'")

from tokenprism.backend.audit.ray_engine import RayOptions, ShardPlan, plan_shards, score_items_ray  # noqa: E402

ANSWERS = [
    "The capital of France is Paris.",
    "Seven pens cost 21 dollars. The answer is 21.",
    "Let me think step by step.\n\nFirst, add the numbers.\n\nThe answer is 42.",
    "It is Canberra, not Sydney.",
    "Hello there! How can I help you today?",
]


def corpus_lines(n: int = 14) -> list[str]:
    """Chats of varied length; every third one has two assistant turns."""
    lines = []
    for i in range(n):
        answer = " ".join(ANSWERS[(i + k) % len(ANSWERS)] for k in range(1 + i % 4))
        messages = [
            {"role": "user", "content": f"Question {i}: what do you know?"},
            {"role": "assistant", "content": answer},
        ]
        if i % 3 == 0:
            messages += [
                {"role": "user", "content": "And then?"},
                {"role": "assistant", "content": ANSWERS[i % len(ANSWERS)]},
            ]
        lines.append(json.dumps({"messages": messages}))
    return lines


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A local 2-CPU Ray cluster for the module; yields its GCS address."""
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=256 * 1024 * 1024,
        log_to_driver=False,
    )
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def work(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The corpus, the tiny model and the local engine's stored result (the reference)."""
    from tokenprism.backend.models.loader import load_model

    home = tmp_path_factory.mktemp("ray-reference")
    settings = Settings(home=home, device="cpu")
    lm = load_model(str(tiny_model_dir), settings)
    text = "\n".join(corpus_lines())
    items = parse_transcript(text, "jsonl", "corpus.jsonl")
    store = Store(home / "local.duckdb")
    job_id = create_job(store, "audit", {}, len(items))
    # a small batch budget: the local batches differ from the shards' (padding must not matter)
    score_items(lm, store, items, source="corpus", job_id=job_id, batch_tokens=300)
    reference = snapshot(store, job_id)
    store.close()
    return {"lm": lm, "items": items, "reference": reference, "text": text}


FLOAT_TOL = {"rtol": 1e-4, "atol": 1e-5}
# per table: the columns that identify a row besides the item (run ids differ by design)
ROW_KEYS = {
    "tokens": ["position"],
    "token_metrics": ["position", "metric"],
    "alternatives": ["position", "alt_rank"],
    "sequence_metrics": ["metric"],
    "layer_metrics": ["layer", "metric"],
    "claims": ["claim_index"],
    "claim_metrics": ["claim_index", "metric"],
}


def snapshot(store: Store, job_id: str) -> dict[str, pd.DataFrame]:
    """Every stored row of a job, keyed by item instead of run id, in a stable order.

    A conversation's context run (kind "context", no item of its own) is keyed by
    ``-1 - <its first turn's item index>``, so it has one stable key whichever engine stored it.
    """
    with store.engine.connect() as conn:
        runs = pd.DataFrame(
            conn.execute(
                sa.text(
                    "SELECT item_index, turn_index, kind, prompt, response, text, n_tokens, "
                    "n_response_tokens, run_id, context_run_id FROM runs WHERE job_id = :job"
                ),
                {"job": job_id},
            ).all()
        )
    turns = runs[runs["item_index"].notna()]
    first_turn = turns.groupby("context_run_id")["item_index"].min()
    key = runs["item_index"].fillna(-1 - runs["run_id"].map(first_turn))
    runs["item_index"] = key.astype(int)
    ids = dict(zip(runs["run_id"], runs["item_index"], strict=True))
    frames = {
        "runs": runs.drop(columns=["run_id", "context_run_id"])
        .sort_values("item_index")
        .reset_index(drop=True)
    }
    with store.engine.connect() as conn:
        for name in schema.BULK_TABLES:
            table = schema.metadata.tables[name]
            cols = [c for c in table.c if c.name not in ("top_k",)]
            rows = conn.execute(sa.select(*cols).where(table.c.run_id.in_(list(ids)))).all()
            frame = pd.DataFrame(rows, columns=[c.name for c in cols])
            frame.insert(0, "item_index", frame.pop("run_id").map(ids))
            frames[name] = frame.sort_values(["item_index", *ROW_KEYS[name]]).reset_index(drop=True)
    return frames


def assert_same_rows(got: dict[str, pd.DataFrame], want: dict[str, pd.DataFrame]) -> None:
    for name, expected in want.items():
        actual = got[name]
        assert len(actual) == len(expected), f"{name}: {len(actual)} rows, want {len(expected)}"
        assert list(actual.columns) == list(expected.columns), name
        for col in expected.columns:
            a, e = actual[col], expected[col]
            if pd.api.types.is_float_dtype(e):
                assert np.allclose(
                    a.to_numpy(float), e.to_numpy(float), equal_nan=True, **FLOAT_TOL
                ), f"{name}.{col} differs: max {np.nanmax(np.abs(a - e))}"
            else:
                assert a.tolist() == e.tolist(), f"{name}.{col} differs"


def new_job(path: Path, items: list[WorkItem]) -> tuple[Store, str]:
    store = Store(path)
    return store, create_job(store, "audit", {"engine": "ray"}, len(items))


def ray_options(**kw: Any) -> RayOptions:
    return RayOptions(**{"workers": 2, "shard_items": 3, "batch_tokens": 2048, **kw})


def planned_shards(work: dict[str, Any], shard_items: int) -> int:
    """How many shards the corpus makes: conversations are packed whole, so a shard can hold
    more than ``shard_items`` items and there are at least len(items) / shard_items shards."""
    from tokenprism.backend.audit.items import encode_items

    items = work["items"]
    encoded = encode_items(work["lm"], items, "corpus")
    plans = plan_shards(
        {it.index: e.n_tokens for it, e in zip(items, encoded, strict=True)},
        shard_items,
        {it.index: it.conversation for it in items},
    )
    assert sorted(i for p in plans for i in p.items) == [it.index for it in items]
    conversation = {it.index: it.conversation for it in items}
    for p in plans:  # one conversation never spans two shards
        mine = {conversation[i] for i in p.items}
        assert set(p.items) == {i for i, c in conversation.items() if c in mine}
    assert len(plans) >= len(items) / shard_items
    return len(plans)


def test_plan_shards_is_stable_and_sorted_by_length() -> None:
    lengths = {0: 50, 1: 10, 2: 30, 3: 10, 4: 70}
    shards = plan_shards(lengths, 2)
    assert shards == [ShardPlan(0, (1, 3)), ShardPlan(1, (2, 0)), ShardPlan(2, (4,))]
    assert plan_shards(dict(reversed(lengths.items())), 2) == shards


def test_ray_engine_stores_the_same_rows_as_the_local_engine(
    ray_cluster: str,  # noqa: ARG001
    work: dict[str, Any],
    tmp_path: Path,
) -> None:
    lm: LoadedModel = work["lm"]
    items = work["items"]
    store, job_id = new_job(tmp_path / "ray.duckdb", items)
    settings = Settings(home=tmp_path, device="cpu")
    seen: list[int] = []
    report = score_items_ray(
        lm,
        store,
        items,
        settings=settings,
        source="corpus",
        job_id=job_id,
        options=ray_options(),
        on_progress=seen.append,
    )
    assert sorted(report.scored) == list(range(report.shards))
    assert report.shards == planned_shards(work, 3)
    assert not report.skipped and not report.from_disk
    assert seen[0] == 0 and seen[-1] == len(items) and seen == sorted(seen)
    assert_same_rows(snapshot(store, job_id), work["reference"])
    # the shards stay behind as Parquet that DuckDB reads in place
    import duckdb

    shards = Path(report.shard_dir)
    in_place = (
        duckdb.connect()
        .execute(f"SELECT count(*) FROM read_parquet('{shards}/*/tokens.parquet')")
        .fetchone()
    )
    assert in_place is not None and in_place[0] == store.count("tokens")
    manifest = json.loads((shards / "shard-00000" / "manifest.json").read_text())
    assert manifest["job_id"] == job_id and manifest["model"]["name"] == lm.name
    store.close()


def test_a_killed_worker_is_replaced_and_no_shard_is_lost(
    ray_cluster: str,  # noqa: ARG001
    work: dict[str, Any],
    tmp_path: Path,
) -> None:
    items = work["items"]
    store, job_id = new_job(tmp_path / "ray.duckdb", items)
    killed: list[int] = []

    def kill_first_worker(shard: int, pid: int) -> None:  # noqa: ARG001
        if not killed:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    report = score_items_ray(
        work["lm"],
        store,
        items,
        settings=Settings(home=tmp_path, device="cpu"),
        source="corpus",
        job_id=job_id,
        options=ray_options(shard_items=2),
        on_shard=kill_first_worker,
    )
    assert killed
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)
    assert sorted(report.scored) == list(range(report.shards))
    assert_same_rows(snapshot(store, job_id), work["reference"])
    store.close()


def test_an_interrupted_ray_job_resumes_shard_by_shard(
    ray_cluster: str,  # noqa: ARG001
    work: dict[str, Any],
    tmp_path: Path,
) -> None:
    lm, items = work["lm"], work["items"]
    store, job_id = new_job(tmp_path / "ray.duckdb", items)
    settings = Settings(home=tmp_path, device="cpu")
    first: list[int] = []
    with pytest.raises(JobCancelled):
        score_items_ray(
            lm,
            store,
            items,
            settings=settings,
            source="corpus",
            job_id=job_id,
            options=ray_options(),
            on_shard=lambda shard, pid: first.append(shard),  # noqa: ARG005
            should_stop=lambda: len(first) >= 2,
        )
    assert len(first) == 2
    # a crash between writing a shard and storing it: the shard is on disk, its rows are not
    lost = first[1]
    shard = tmp_path / "shards" / job_id / f"shard-{lost:05d}"
    manifest = json.loads((shard / "manifest.json").read_text())
    # the shard's runs: its turns and the context runs of its conversations
    run_ids = pq.read_table(shard / "runs.parquet", columns=["run_id"])["run_id"].to_pylist()
    with store.engine.connect() as conn:
        items_of = conn.execute(
            sa.select(schema.runs.c.item_index).where(schema.runs.c.run_id.in_(run_ids))
        ).all()
    assert len(items_of) == len(run_ids)
    assert sorted(i for (i,) in items_of if i is not None) == sorted(manifest["items"])
    for run_id in run_ids:
        store.delete_run(run_id)
    again = score_items_ray(
        lm,
        store,
        items,
        settings=settings,
        source="corpus",
        job_id=job_id,
        options=ray_options(),
    )
    assert again.skipped == [first[0]]
    assert again.from_disk == [lost]
    assert sorted(again.scored) == sorted(set(range(again.shards)) - {first[0], lost})
    assert_same_rows(snapshot(store, job_id), work["reference"])
    store.close()


def test_cli_audits_on_a_ray_cluster_and_resume_needs_an_unfinished_job(
    ray_cluster: str, work: dict[str, Any], tiny_model_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_text(work["text"])
    home = tmp_path / "home"
    args = ["audit", str(path), "--model", str(tiny_model_dir), "--engine", "ray"]
    done = run_cli(
        *args,
        "--address",
        ray_cluster,
        "--shard-items",
        "4",
        "--no-summary",
        home=home,
        env={"TOKENPRISM_DEVICE": "cpu"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    shards = planned_shards(work, 4)
    assert f"ray: {shards} shards scored, 0 read back from disk, 0 already stored" in done.stderr
    job_id = done.stderr.split(", job ")[1].split(":")[0]
    store = Store(home / "tokenprism.duckdb")
    with store.engine.connect() as conn:
        job = conn.execute(sa.select(schema.jobs).where(schema.jobs.c.job_id == job_id)).one()
    assert job.status == "done" and json.loads(job.params)["engine"] == "ray"
    assert_same_rows(snapshot(store, job_id), work["reference"])
    store.close()
    again = run_cli(*args, "--resume", job_id, home=home)
    assert again.returncode == 2 and "only unfinished jobs resume" in again.stderr


def test_an_upload_job_runs_on_the_ray_engine(
    ray_cluster: str,  # noqa: ARG001
    work: dict[str, Any],
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    import httpx

    from tests.backend.api_helpers import url, wait_job
    from tests.conftest import start_backend_thread

    settings = Settings(
        home=tmp_path / "home", default_model=str(tiny_model_dir), device="cpu", allow_ray=True
    )
    base, server, thread = start_backend_thread(settings)
    try:
        client = httpx.Client(base_url=base, timeout=60)
        files = {"file": ("corpus.jsonl", work["text"].encode(), "application/jsonl")}
        resp = client.post(url("/uploads"), files=files, data={"engine": "ray", "shard_items": "5"})
        assert resp.status_code == 202, resp.text
        job = wait_job(client, resp.json()["job_id"], timeout=300)
        assert job["status"] == "done", job
        assert job["result"]["engine"] == "ray"
        assert len(job["result"]["scored"]) == planned_shards(work, 5)
        assert job["result"]["items"] == len(work["items"])
        bad = client.post(url("/uploads"), files=files, data={"engine": "spark"})
        assert bad.status_code == 422
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=30)  # type: ignore[attr-defined]
