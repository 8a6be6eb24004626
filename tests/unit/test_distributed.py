"""The Ray engine's pure parts: engine checks, shard files, regrouping streamed rows."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pytest

from tokenprism.backend.audit.ray_engine import (
    MANIFEST,
    _collect_shards,
    _parquet_bytes,
    check_engine,
    plan_shards,
    read_shard,
    shard_path,
    write_shard,
)
from tokenprism.backend.errors import UserError
from tokenprism.backend.store.tables import RUN_TABLES


def test_unknown_engines_and_a_missing_ray_are_refused_with_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(UserError, match="unknown engine 'spark'"):
        check_engine("spark")
    assert check_engine("local") == "local"
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(UserError, match=r"pip install -e '\.\[distributed\]'"):
        check_engine("ray")


def test_shards_need_at_least_one_item_each() -> None:
    with pytest.raises(UserError):
        plan_shards({0: 3}, 0)
    assert plan_shards({}, 4) == []
    assert [len(s.items) for s in plan_shards({i: i for i in range(10)}, 4)] == [4, 4, 2]


def _tables(n: int) -> dict[str, bytes]:
    return {
        name: _parquet_bytes(pa.table({"run_id": [f"r{i}" for i in range(n)]}))
        for name in RUN_TABLES
    }


def test_a_shard_is_written_whole_and_replaces_an_older_copy(tmp_path: Path) -> None:
    path = shard_path(tmp_path, 3)
    assert path.name == "shard-00003"
    manifest = {"format": 1, "shard": 3, "items": [5, 1]}
    write_shard(path, manifest, _tables(2))
    got_manifest, tables = read_shard(path)
    assert got_manifest == manifest and set(tables) == set(RUN_TABLES)
    assert tables["tokens"].column("run_id").to_pylist() == ["r0", "r1"]
    write_shard(path, manifest, _tables(1))
    assert read_shard(path)[1]["runs"].num_rows == 1
    # no temporary directories are left next to the shard
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-00003"]


def test_a_failed_write_leaves_no_shard(tmp_path: Path) -> None:
    tables = _tables(1)
    tables["bad/name"] = b"x"  # cannot be created inside the shard directory
    with pytest.raises(OSError):
        write_shard(shard_path(tmp_path, 0), {"format": 1}, tables)
    assert list(tmp_path.iterdir()) == []
    assert not (shard_path(tmp_path, 0) / MANIFEST).exists()


def test_a_shard_of_another_format_is_not_read(tmp_path: Path) -> None:
    write_shard(shard_path(tmp_path, 0), {"format": 99}, _tables(1))
    with pytest.raises(UserError, match="another shard format"):
        read_shard(shard_path(tmp_path, 0))


def test_streamed_rows_regroup_into_whole_shards_in_completion_order() -> None:
    rows = []
    for shard in (2, 0):
        for name in RUN_TABLES:
            rows.append({"shard": shard, "table": name, "data": name.encode(), "pid": 40 + shard})
    # rows of two shards interleaved: each shard is yielded once all its tables arrived
    rows = rows[::2] + rows[1::2]
    got = list(_collect_shards(iter(rows), len(RUN_TABLES)))
    assert [(shard, pid) for shard, _, pid in got] == [(2, 42), (0, 40)]
    assert all(set(tables) == set(RUN_TABLES) for _, tables, _ in got)
    assert got[0][1]["tokens"] == b"tokens"


def test_plan_shards_keeps_a_conversation_in_one_shard() -> None:
    lengths = {0: 10, 1: 20, 2: 30, 3: 5, 4: 50, 5: 7}
    groups = {0: 1, 1: 1, 2: 1, 3: 2, 4: 3, 5: 3}
    shards = plan_shards(lengths, 2, groups)
    where = {i: s.shard for s in shards for i in s.items}
    assert where[0] == where[1] == where[2] and where[4] == where[5]
    assert sorted(where) == sorted(lengths)
    assert plan_shards(dict(reversed(lengths.items())), 2, groups) == shards
