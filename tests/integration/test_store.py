"""The DuckDB token store: round trips, atomic writes, migrations, read-only SQL, locks."""

from __future__ import annotations

import math
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
import sqlalchemy as sa
from sqlalchemy.schema import CreateTable

from tokenprism.backend.errors import DatabaseLocked, ReadOnlyViolation, UserError
from tokenprism.backend.scoring.encoding import encode_pair, encode_text
from tokenprism.backend.scoring.runner import score_batch
from tokenprism.backend.store import Store, schema
from tokenprism.backend.store.migrations import LATEST, MIGRATIONS
from tokenprism.backend.store.store import run_read_only_sql


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    with Store(tmp_path / "t.duckdb") as s:
        yield s


@pytest.fixture
def scored(tiny_lm):  # type: ignore[no-untyped-def]
    encs = [
        encode_pair(
            tiny_lm.tokenizer,
            "What is the capital of France?",
            "It is Paris.\n\nThe answer is Paris.",
            context_length=256,
        ),
        encode_text(
            tiny_lm.tokenizer, "The quick brown fox jumps over the lazy dog.", context_length=256
        ),
    ]
    return score_batch(tiny_lm, encs)


def test_round_trip_keeps_every_value(store: Store, tiny_lm, scored) -> None:  # type: ignore[no-untyped-def]
    run_ids = store.save_runs(tiny_lm, scored)
    assert len(set(run_ids)) == 2
    for run_id, item in zip(run_ids, scored, strict=True):
        run = store.get_run(run_id)
        sc, enc = item.scores, item.encoded
        assert [t["token_id"] for t in run["tokens"]] == enc.input_ids
        assert "".join(t["text"] for t in run["tokens"]) == enc.text
        assert [t["is_prompt"] for t in run["tokens"]] == enc.is_prompt
        for pos, tok in enumerate(run["tokens"]):
            for name in ("logprob", "entropy", "margin", "kurtosis", "surprisal_bits"):
                want = float(sc.token[name][pos])
                got = tok[name]
                assert (got is None and math.isnan(want)) or got == pytest.approx(want, rel=1e-6)
            if pos == 0:
                assert tok["rank"] is None and tok["top_k"] == []
            else:
                assert tok["rank"] == int(sc.token["rank"][pos])
                assert [a["token_id"] for a in tok["top_k"]] == sc.top_ids[pos].tolist()
                assert tok["top_k"][0]["text"] == tiny_lm.tokenizer.decode(
                    [tok["top_k"][0]["token_id"]]
                )
                assert tok["gltr_bucket"] in (0, 1, 2, 3)
        assert run["sequence"]["mean_entropy"] == pytest.approx(
            sc.sequence["mean_entropy"], rel=1e-6
        )
        assert [layer["layer"] for layer in run["layers"]] == [0, 1, 2]
        assert run["model"]["revision"] == tiny_lm.revision
        assert run["provenance"]["params"]["logits"]["top_k"] == 10
        assert run["provenance"]["tokenprism_version"]


def test_list_filter_and_delete(store: Store, tiny_lm, scored) -> None:  # type: ignore[no-untyped-def]
    run_ids = store.save_runs(tiny_lm, scored)
    assert {r["run_id"] for r in store.list_runs()} == set(run_ids)
    assert [r["kind"] for r in store.list_runs(kind="text")] == ["text"]
    assert len(store.list_runs(search="lazy dog")) == 1
    assert store.list_runs(model="someone-else") == []
    assert store.delete_run(run_ids[0]) is True
    assert store.delete_run(run_ids[0]) is False
    with pytest.raises(UserError, match="no run"):
        store.get_run(run_ids[0])
    with store.engine.connect() as conn:
        for table in schema.BULK_TABLES:
            left = conn.execute(
                sa.text(f"SELECT count(*) FROM {table} WHERE run_id = :r"), {"r": run_ids[0]}
            ).scalar()
            assert left == 0, table


def test_a_failed_write_leaves_nothing_behind(
    store: Store,
    tiny_lm,
    scored,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = Store._append

    def failing(raw, table, rows):  # type: ignore[no-untyped-def]
        if table == "alternatives":
            raise RuntimeError("disk full")
        original(raw, table, rows)

    monkeypatch.setattr(Store, "_append", staticmethod(failing))
    with pytest.raises(RuntimeError):
        store.save_runs(tiny_lm, scored)
    for table in ("runs", "models", *schema.BULK_TABLES):
        assert store.count(table) == 0, table


def test_a_new_metric_needs_no_schema_change(store: Store, tiny_lm, scored) -> None:  # type: ignore[no-untyped-def]
    run_id = store.save_runs(tiny_lm, scored[:1])[0]
    n = len(scored[0].encoded.input_ids)
    store.append_arrow(
        "token_metrics",
        pa.table(
            {
                "run_id": [run_id] * n,
                "position": list(range(n)),
                "metric": ["probe"] * n,
                "value": [i / n for i in range(n)],
            }
        ),
    )
    run = store.get_run(run_id)
    assert [t["probe"] for t in run["tokens"]] == pytest.approx([i / n for i in range(n)])
    only = store.get_run(run_id, metrics=["probe"])
    assert "margin" not in only["tokens"][1] and "probe" in only["tokens"][1]


def test_columns_are_double_precision(store: Store) -> None:
    ddl = str(CreateTable(schema.tokens).compile(store.engine))
    assert "DOUBLE" in ddl and "FLOAT" not in ddl.replace("DOUBLE PRECISION", "")


def test_migrations_run_once_and_refuse_newer_files(tmp_path: Path) -> None:
    path = tmp_path / "m.duckdb"
    Store(path).close()
    with Store(path) as again:
        assert again.schema_version == LATEST
        assert again.count("schema_version") == len(MIGRATIONS)
    con = duckdb.connect(str(path))
    con.execute("INSERT INTO schema_version VALUES (999, 'from the future', now())")
    con.close()
    with pytest.raises(UserError, match="newer TokenPrism"):
        Store(path)


def test_read_only_sql(store: Store, tiny_lm, scored, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store.save_runs(tiny_lm, scored)
    store.close()
    cols, rows, truncated = run_read_only_sql(
        store.path, "SELECT kind, count(*) AS n FROM runs GROUP BY kind ORDER BY kind"
    )
    assert cols == ["kind", "n"] and rows == [("chat", 1), ("text", 1)] and not truncated
    _, rows, truncated = run_read_only_sql(store.path, "SELECT * FROM tokens", max_rows=3)
    assert len(rows) == 3 and truncated
    for query in (
        "DELETE FROM runs",
        "DROP TABLE tokens",
        "INSERT INTO runs SELECT * FROM runs",
        "UPDATE tokens SET prob = 1",
        "CREATE TABLE x (a INT)",
        f"COPY tokens TO '{tmp_path / 'out.csv'}'",
        f"ATTACH '{tmp_path / 'o.duckdb'}'",
    ):
        with pytest.raises(ReadOnlyViolation, match="read-only"):
            run_read_only_sql(store.path, query)
    with pytest.raises(UserError, match="exactly one"):
        run_read_only_sql(store.path, "SELECT 1; SELECT 2")
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    with pytest.raises(UserError):
        run_read_only_sql(store.path, f"SELECT * FROM read_csv('{secret}')")
    with pytest.raises(UserError, match="SQL error"):
        run_read_only_sql(store.path, "SELECT * FROM no_such_table")
    assert not (tmp_path / "out.csv").exists()


def test_a_locked_database_is_a_clear_error(db_lock_holder: Path) -> None:
    with pytest.raises(DatabaseLocked, match="in use by another process"):
        Store(db_lock_holder)
    with pytest.raises(DatabaseLocked, match="in use by another process"):
        run_read_only_sql(db_lock_holder, "SELECT 1")


def test_a_version_1_file_is_upgraded_in_place(tmp_path: Path) -> None:
    """Migration 2 adds columns and tables and backfills the nested alternatives."""
    from tokenprism.backend.store.migrations import migrate

    path = tmp_path / "v1.duckdb"
    engine = sa.create_engine(f"duckdb:///{path}")
    assert migrate(engine, target=1) == 1
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO models VALUES ('m1', 'old', 'local', 'sha256:x', NULL, NULL, 8, now())"
        )
        conn.exec_driver_sql(
            "INSERT INTO runs VALUES ('r1', 'm1', 'text', NULL, 'ab', 'ab', NULL, NULL, 2, 2, "
            "NULL, NULL, NULL, NULL, '{}', now())"
        )
        conn.exec_driver_sql(
            "INSERT INTO tokens VALUES ('r1', 0, 5, 'a', 'a', 0, 1, false, NULL, NULL, NULL, NULL),"
            " ('r1', 1, 6, 'b', 'b', 1, 2, false, -0.5, 0.6, 1, 1.2)"
        )
        conn.exec_driver_sql(
            "INSERT INTO alternatives VALUES ('r1', 1, 2, 7, 'c', 0.3), ('r1', 1, 1, 6, 'b', 0.6)"
        )
    engine.dispose()
    with Store(path) as store:
        assert store.schema_version == LATEST
        run = store.get_run("r1")
        assert run["tokens"][0]["top_k"] == []
        assert run["tokens"][1]["top_k"] == [
            {"token_id": 6, "text": "b", "prob": 0.6},
            {"token_id": 7, "text": "c", "prob": 0.3},
        ]
        assert store.count("uploads") == 0
        with store.engine.connect() as conn:
            cols = {r[0] for r in conn.exec_driver_sql("DESCRIBE runs")}
        assert "item_index" in cols


def test_fresh_schema_matches_the_table_definitions(store: Store) -> None:
    """Migrations (frozen SQL) and schema.py (used by queries) describe the same columns."""
    with store.engine.connect() as conn:
        for table in schema.metadata.sorted_tables:
            cols = [r[0] for r in conn.exec_driver_sql(f"DESCRIBE {table.name}")]
            assert cols == [c.name for c in table.columns], table.name


def test_token_json_cache_follows_writes(store: Store, tiny_lm, scored) -> None:  # type: ignore[no-untyped-def]
    run_id = store.save_runs(tiny_lm, scored[:1])[0]
    first = store.tokens_json(run_id)
    assert store.tokens_json(run_id) is first  # served from the cache
    n = len(scored[0].encoded.input_ids)
    store.append_arrow(
        "token_metrics",
        pa.table(
            {
                "run_id": [run_id] * n,
                "position": list(range(n)),
                "metric": ["probe"] * n,
                "value": [0.5] * n,
            }
        ),
    )
    assert '"probe":0.5' in store.tokens_json(run_id)  # the new metric shows at once
    assert store.delete_run(run_id)
    assert store.tokens_json(run_id) == "[]"
