"""The Ray engine's own local cluster (no address, Ray not initialised in this process): it
runs in a child process inside a private network namespace and stores what the local engine
stores. This module must not start an in-process cluster (that path is test_ray_engine.py's).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_ray_engine import assert_same_rows, corpus_lines, new_job, snapshot
from tokenprism.backend.audit.ingest import parse_transcript
from tokenprism.backend.audit.upload import score_items
from tokenprism.backend.models.loader import LoadedModel
from tokenprism.backend.settings import Settings

ray = pytest.importorskip("ray", reason="the Ray engine needs pip install -e '.[distributed]'")

from tokenprism.backend.audit.ray_engine import RayOptions, score_items_ray  # noqa: E402
from tokenprism.backend.audit.ray_local import namespace_refusal  # noqa: E402


def test_a_namespaced_local_cluster_stores_the_same_rows_as_the_local_engine(
    tiny_lm: LoadedModel, tmp_path: Path
) -> None:
    refusal = namespace_refusal()
    if refusal is not None:
        pytest.skip(f"no private network namespace on this machine: {refusal}")
    assert not ray.is_initialized()  # else the engine would use this process's cluster
    # three conversations, one with two assistant turns: four items, two shards of two
    items = parse_transcript("\n".join(corpus_lines(3)), "jsonl", "three.jsonl")
    local, local_job = new_job(tmp_path / "local.duckdb", items)
    score_items(tiny_lm, local, items, source="three", job_id=local_job)
    namespaced, job_id = new_job(tmp_path / "ray.duckdb", items)
    shards: list[tuple[int, int]] = []
    report = score_items_ray(
        tiny_lm,
        namespaced,
        items,
        settings=Settings(home=tmp_path, device="cpu"),
        source="three",
        job_id=job_id,
        options=RayOptions(workers=1, shard_items=2, object_store_mb=80),
        on_shard=lambda shard, pid: shards.append((shard, pid)),
    )
    assert not ray.is_initialized()  # the cluster lived in the child
    assert sorted(report.scored) == [s for s, _ in sorted(shards)] == list(range(report.shards))
    assert report.shards >= 2 and len({pid for _, pid in shards}) == 1  # one worker
    assert_same_rows(snapshot(namespaced, job_id), snapshot(local, local_job))
    local.close()
    namespaced.close()
