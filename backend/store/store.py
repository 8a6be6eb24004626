"""Reading and writing runs in the DuckDB token store.

Writes go through SQLAlchemy Core for the small rows (model, run) and through Arrow for the bulk
tables: the rows are built column-wise, registered as an Arrow table on the same connection and
inserted with ``INSERT ... BY NAME SELECT``, all inside one transaction per call, so a crash
leaves either the whole run or nothing.
"""

from __future__ import annotations

import json
import math
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import sqlalchemy as sa

import tokenprism.backend.store.schema as schema
from tokenprism.backend.errors import DatabaseLocked, QueryLimit, ReadOnlyViolation, UserError
from tokenprism.backend.models.loader import LoadedModel
from tokenprism.backend.scoring.runner import ScoredText
from tokenprism.backend.store.migrations import migrate
from tokenprism.backend.store.tables import (
    CORE_TOKEN_METRICS,
    MODEL_FIELDS,
    RUN_TABLES,
    model_key,
    model_record,
    run_tables,
)

__all__ = ["CORE_TOKEN_METRICS", "Store"]

_READ_ONLY_TYPES = {"SELECT", "EXPLAIN"}
TOKEN_JSON_CACHE_CHARS = 256 * 1024 * 1024
# Kind of the run holding a conversation's context tokens once (migration 6): turns scored in
# the conversation's single pass store only their response tokens and point to it.
CONTEXT_KIND = "context"
# Token metrics defined over a run's response only (NaN on context): shown for a turn's own
# rows only, never taken from sibling runs of the same conversation.
RESPONSE_ONLY_TOKEN_METRICS = frozenset({"window_entropy", "step_first_surprisal"})
_METRIC_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")


@dataclass(frozen=True)
class SqlLimits:
    """Bounds of one user SQL query (the read-only interface).

    Attributes:
        timeout_s: wall-clock limit; a timer calls DuckDB's ``interrupt()`` on the query's
            cursor, which stops it between vectors (within milliseconds).
        memory_mb: DuckDB ``memory_limit`` of the database instance (applies to everything the
            instance does; DuckDB spills to its temp directory ``<db>.tmp`` before failing).
        max_result_bytes: most bytes of result values returned; further rows are cut
            (``truncated``), and a first row over the limit is refused.
    """

    timeout_s: float = 10.0
    memory_mb: int = 2048
    max_result_bytes: int = 16 * 1024 * 1024

    @classmethod
    def from_settings(cls, settings: Any) -> SqlLimits:
        return cls(settings.sql_timeout_s, settings.sql_memory_mb, settings.sql_max_result_bytes)


def _value_bytes(value: Any) -> int:
    """Rough size of a result value once sent as JSON."""
    if value is None or isinstance(value, bool | int | float):
        return 8
    if isinstance(value, str | bytes):
        return len(value) + 2
    if isinstance(value, list | tuple):
        return 2 + sum(_value_bytes(v) + 1 for v in value)
    if isinstance(value, dict):
        return 2 + sum(len(str(k)) + _value_bytes(v) + 4 for k, v in value.items())
    return len(str(value)) + 2


def _fetch_limited(
    cur: Any, max_rows: int, limits: SqlLimits
) -> tuple[list[tuple[Any, ...]], bool]:
    """At most ``max_rows`` rows and ``limits.max_result_bytes`` bytes; whether more existed."""
    rows: list[tuple[Any, ...]] = []
    size = 0
    while len(rows) <= max_rows:
        chunk = cur.fetchmany(min(1000, max_rows + 1 - len(rows)))
        if not chunk:
            return rows, False
        for row in chunk:
            size += sum(_value_bytes(v) for v in row)
            if size > limits.max_result_bytes:
                if not rows:
                    raise UserError(
                        f"a result row needs more than {limits.max_result_bytes:,} bytes; "
                        "select less (e.g. substr() of long text)"
                    )
                return rows, True
            rows.append(row)
    return rows[:max_rows], True


def _limited_error(err: duckdb.Error, limits: SqlLimits) -> UserError | None:
    """The 4xx for a query stopped by a limit, or None for other errors."""
    if isinstance(err, duckdb.InterruptException):
        return QueryLimit(
            f"query took longer than {limits.timeout_s:g} s and was stopped "
            "(TOKENPRISM_SQL_TIMEOUT_S sets the limit)"
        )
    if isinstance(err, duckdb.OutOfMemoryException):
        return QueryLimit(
            f"query needs more than {limits.memory_mb:,} MB of memory and was stopped "
            "(TOKENPRISM_SQL_MEMORY_MB sets the limit)"
        )
    return None


@contextmanager
def _deadline(cur: Any, timeout_s: float) -> Iterator[None]:
    """Interrupt ``cur``'s query after ``timeout_s`` seconds."""
    timer = threading.Timer(timeout_s, cur.interrupt)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _lock_message(path: Path, err: BaseException) -> str:
    pid = re.search(r"PID (\d+)", str(err))
    holder = f" (process {pid.group(1)})" if pid else ""
    return (
        f"the database {path} is in use by another process{holder}; stop it, or point "
        "TOKENPRISM_DB at another file"
    )


def _is_lock_error(err: BaseException) -> bool:
    text = str(err).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


def _clean(value: Any) -> Any:
    """JSON-safe scalar: NaN/inf become null, numpy scalars become Python numbers."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Store:
    """A DuckDB token store in one file; the only writer of that file in its process."""

    def __init__(self, path: Path, sql_limits: SqlLimits | None = None) -> None:
        self.path = Path(path)
        self.sql_limits = sql_limits or SqlLimits()
        # cursors of the user queries running now: stop_queries() interrupts them (SIGTERM)
        self._queries: set[Any] = set()
        self._queries_lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # No file or network access from SQL: the read-only SQL endpoint runs user queries on
        # this engine, and nothing TokenPrism does needs it (Arrow tables are registered).
        self.engine = sa.create_engine(
            f"duckdb:///{self.path}",
            connect_args={"config": {"enable_external_access": False}},
        )
        # DuckDB allows concurrent writers in one process but fails one of two conflicting
        # transactions; serialising writes keeps request threads and the job worker apart.
        self._write_lock = threading.RLock()
        # Token JSON of recently read runs: Streamlit re-fetches a run on every interaction,
        # and runs change only through this store, which forgets them when it writes.
        self._json_cache: OrderedDict[tuple[str, tuple[str, ...] | None], str] = OrderedDict()
        self._json_cache_chars = 0
        self._cache_lock = threading.Lock()
        try:
            self.schema_version = migrate(self.engine)
            if sql_limits is not None:
                # per database instance: the whole process's use of this file, SQL included
                with self.engine.connect() as conn:
                    conn.exec_driver_sql(f"SET memory_limit = '{int(sql_limits.memory_mb)}MB'")
        except UserError:
            self.engine.dispose()
            raise
        except (sa.exc.DBAPIError, duckdb.Error) as err:
            self.engine.dispose()
            if _is_lock_error(err):
                raise DatabaseLocked(_lock_message(self.path, err)) from None
            raise UserError(
                f"cannot open the database {self.path}: {str(err).splitlines()[0]}"
            ) from None

    def close(self) -> None:
        self.stop_queries()
        self.engine.dispose()

    def stop_queries(self) -> None:
        """Interrupt every user SQL query running now (the server is stopping)."""
        with self._queries_lock:
            for cur in list(self._queries):
                cur.interrupt()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writing -------------------------------------------------------------------------

    @contextmanager
    def writing(self) -> Iterator[sa.Connection]:
        """A write transaction, serialised with every other write of this store."""
        with self._write_lock, self.engine.begin() as conn:
            yield conn

    def ensure_model(self, conn: sa.Connection, lm: LoadedModel | dict[str, Any]) -> str:
        """The model's key, inserting its ``models`` row the first time it is seen.

        ``lm`` is a loaded model or its :func:`~backend.store.tables.model_record` (what a
        Parquet shard written on another machine carries).
        """
        record = model_record(lm) if isinstance(lm, LoadedModel) else lm
        key = model_key(record)
        # .all(), not .first(): DuckDB refuses to register Arrow tables on a connection
        # whose last result was not read to its end.
        exists = conn.execute(
            sa.select(schema.models.c.model_key).where(schema.models.c.model_key == key)
        ).all()
        if not exists:
            conn.execute(
                schema.models.insert().values(
                    model_key=key,
                    **{k: record[k] for k in MODEL_FIELDS},
                    created_at=datetime.now(UTC),
                )
            )
        return key

    def save_runs(
        self,
        lm: LoadedModel,
        scored: Sequence[ScoredText],
        *,
        upload_id: str | None = None,
        job_id: str | None = None,
        group_id: str | None = None,
        turn_indices: Sequence[int | None] | None = None,
        item_indices: Sequence[int | None] | None = None,
    ) -> list[str]:
        """Store scored texts in one transaction; return their new run ids."""
        run_ids = [uuid.uuid4().hex for _ in scored]
        tables = run_tables(
            lm,
            scored,
            run_ids,
            upload_id=upload_id,
            job_id=job_id,
            group_id=group_id,
            turn_indices=turn_indices,
            item_indices=item_indices,
        )
        self.ingest_tables(model_record(lm), tables)
        return run_ids

    def ingest_tables(self, model: dict[str, Any], tables: dict[str, pa.Table]) -> None:
        """Insert the tables of :func:`~backend.store.tables.run_tables` in one transaction.

        ``model`` is the runs' model record; its ``models`` row is added when missing. A crash
        leaves all of the tables' rows stored or none.
        """
        missing = [name for name in RUN_TABLES if name not in tables]
        if missing:
            raise ValueError(f"run tables lack {', '.join(missing)}")
        with self.writing() as conn:
            key = self.ensure_model(conn, model)
            if set(tables["runs"].column("model_key").to_pylist()) - {key}:
                raise ValueError("the runs' model_key does not match their model record")
            raw = conn.connection.dbapi_connection
            for name in RUN_TABLES:
                if tables[name].num_rows:
                    self._append(raw, name, tables[name])

    @staticmethod
    def _append(raw: Any, table: str, rows: pa.Table) -> None:
        staged = f"staged_{table}_{uuid.uuid4().hex[:8]}"
        raw.register(staged, rows)
        try:
            raw.execute(f"INSERT INTO {table} BY NAME SELECT * FROM {staged}")
        finally:
            raw.unregister(staged)

    def append_arrow(self, table: str, rows: pa.Table) -> None:
        """Bulk-append an Arrow table whose columns name columns of ``table`` (one transaction)."""
        if table not in schema.BULK_TABLES:
            raise ValueError(f"{table!r} is not a bulk table")
        with self.writing() as conn:
            self._append(conn.connection.dbapi_connection, table, rows)
        self._forget({str(r) for r in rows.column("run_id").unique().to_pylist()})

    # ---- reading -------------------------------------------------------------------------

    @contextmanager
    def _conn(self) -> Iterator[sa.Connection]:
        with self.engine.connect() as conn:
            yield conn

    @staticmethod
    def _run_filters(
        query: sa.Select[Any],
        *,
        model: str | None,
        kind: str | None,
        upload_id: str | None,
        search: str | None,
    ) -> sa.Select[Any]:
        r, m = schema.runs, schema.models
        if model:
            query = query.where(m.c.name == model)
        if kind:
            query = query.where(r.c.kind == kind)
        else:  # a conversation's shared context is part of its turns, not a run of its own
            query = query.where(r.c.kind != CONTEXT_KIND)
        if upload_id:
            query = query.where(r.c.upload_id == upload_id)
        if search:
            escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(r.c.text.ilike(f"%{escaped}%", escape="\\"))
        return query

    def list_runs(
        self,
        *,
        limit: int = 50,
        offset: int = 0,
        model: str | None = None,
        kind: str | None = None,
        upload_id: str | None = None,
        search: str | None = None,
    ) -> list[dict[str, Any]]:
        """Runs newest first with their model and headline sequence metrics."""
        r, m = schema.runs, schema.models
        query = (
            sa.select(
                r.c.run_id,
                r.c.kind,
                r.c.prompt,
                r.c.response,
                r.c.n_tokens,
                r.c.n_response_tokens,
                r.c.upload_id,
                r.c.job_id,
                r.c.turn_index,
                r.c.item_index,
                r.c.created_at,
                m.c.name.label("model"),
                m.c.revision,
            )
            .join(m, m.c.model_key == r.c.model_key)
            .order_by(r.c.created_at.desc(), r.c.item_index, r.c.run_id)
            .limit(limit)
            .offset(offset)
        )
        query = self._run_filters(query, model=model, kind=kind, upload_id=upload_id, search=search)
        with self._conn() as conn:
            rows = [dict(row._mapping) for row in conn.execute(query)]
            ids = [row["run_id"] for row in rows]
            seq = self._sequence(conn, ids)
        for row in rows:
            row["created_at"] = row["created_at"].isoformat()
            row["sequence"] = seq.get(row["run_id"], {})
        return rows

    def count_runs(
        self,
        *,
        model: str | None = None,
        kind: str | None = None,
        upload_id: str | None = None,
        search: str | None = None,
    ) -> int:
        r, m = schema.runs, schema.models
        query = sa.select(sa.func.count()).select_from(r.join(m, m.c.model_key == r.c.model_key))
        query = self._run_filters(query, model=model, kind=kind, upload_id=upload_id, search=search)
        with self._conn() as conn:
            return int(conn.execute(query).scalar() or 0)

    def query_read_only(
        self, query: str, *, max_rows: int = 10_000
    ) -> tuple[list[str], list[tuple[Any, ...]], bool]:
        """Run one read-only statement inside this process (the server owns the file).

        The DuckDB parser must classify it as SELECT or EXPLAIN, it runs in a transaction that
        is rolled back, and the engine has no file or network access. It runs within
        ``self.sql_limits`` (time, memory, result bytes; see :class:`SqlLimits`).
        """
        check_read_only(query)
        limits = self.sql_limits
        with self._conn() as conn:
            raw: Any = conn.connection.dbapi_connection
            try:
                cur = raw.cursor()
                with self._queries_lock:
                    self._queries.add(cur)
                try:
                    # EXPLAIN ANALYZE runs the statement it explains (a DELETE or DROP too) and
                    # the parser only sees "EXPLAIN": a read-only transaction refuses any write.
                    cur.execute("BEGIN TRANSACTION READ ONLY")
                    try:
                        with _deadline(cur, limits.timeout_s):
                            cur.execute(query)
                            columns: list[str] = [d[0] for d in cur.description or []]
                            rows, more = _fetch_limited(cur, max_rows, limits)
                    finally:
                        cur.execute("ROLLBACK")
                finally:
                    with self._queries_lock:
                        self._queries.discard(cur)
                    cur.close()
            except duckdb.Error as err:
                limited = _limited_error(err, limits)
                if limited is not None:
                    raise limited from None
                if "read-only mode" in str(err):
                    raise ReadOnlyViolation(
                        "refused: this SQL interface is read-only; use SELECT (or EXPLAIN) queries"
                    ) from None
                raise UserError(f"SQL error: {str(err).splitlines()[0]}") from None
            finally:
                conn.rollback()
        return columns, rows, more

    def _sequence(self, conn: sa.Connection, run_ids: list[str]) -> dict[str, dict[str, Any]]:
        if not run_ids:
            return {}
        s = schema.sequence_metrics
        out: dict[str, dict[str, Any]] = {}
        for run_id, metric, value in conn.execute(
            sa.select(s.c.run_id, s.c.metric, s.c.value).where(s.c.run_id.in_(run_ids))
        ):
            out.setdefault(run_id, {})[metric] = _clean(value)
        return out

    def get_run(self, run_id: str, *, metrics: Sequence[str] | None = None) -> dict[str, Any]:
        """A run in the ``score --json`` shape; ``metrics`` limits the extra token metrics."""
        with self._conn() as conn:
            row = conn.execute(
                sa.select(schema.runs, schema.models.c.name, schema.models.c.revision)
                .join(schema.models, schema.models.c.model_key == schema.runs.c.model_key)
                .where(schema.runs.c.run_id == run_id)
            ).first()
            if row is None:
                raise UserError(f"no run with id {run_id!r}")
            run = dict(row._mapping)
            sequence = self._sequence(conn, [run_id]).get(run_id, {})
            layers = self._layers(conn, run_id)
            claims = self._claims(conn, run_id)
        tokens: list[dict[str, Any]] = json.loads(self.tokens_json(run_id, metrics=metrics))
        provenance = json.loads(run["provenance"])
        steps = [
            {"position": t["position"], "surprisal": t["step_first_surprisal"]}
            for t in tokens
            if t.get("step_first_surprisal") is not None
        ]
        return {
            "run_id": run_id,
            "model": {"id": run["name"], "revision": run["revision"]},
            "kind": run["kind"],
            "prompt": run["prompt"],
            "response": run["response"],
            "text": run["text"],
            "upload_id": run["upload_id"],
            "turn_index": run["turn_index"],
            "created_at": run["created_at"].isoformat(),
            "tokens": tokens,
            "sequence": sequence,
            "layers": layers,
            "claims": claims,
            "steps": steps,
            "provenance": provenance,
        }

    def run_exists(self, run_id: str) -> bool:
        r = schema.runs
        with self._conn() as conn:
            return (
                conn.execute(sa.select(r.c.run_id).where(r.c.run_id == run_id)).first() is not None
            )

    def tokens_json(self, run_id: str, *, metrics: Sequence[str] | None = None) -> str:
        """A run's tokens as a JSON array text, assembled by DuckDB in one query.

        Building 10k token objects (each with top-k alternatives and every metric) in Python
        takes seconds; DuckDB's ``to_json`` does it in tens of milliseconds. Every token carries
        every stored metric name (null where absent); ``metrics`` limits the extra metrics.
        """
        key = (run_id, None if metrics is None else tuple(sorted(metrics)))
        with self._cache_lock:
            cached = self._json_cache.get(key)
            if cached is not None:
                self._json_cache.move_to_end(key)
                return cached
        with self._conn() as conn:
            body = self._tokens_json(conn, run_id, metrics)
        with self._cache_lock:
            self._json_cache[key] = body
            self._json_cache_chars += len(body)
            while self._json_cache_chars > TOKEN_JSON_CACHE_CHARS and len(self._json_cache) > 1:
                _, dropped = self._json_cache.popitem(last=False)
                self._json_cache_chars -= len(dropped)
        return body

    def _forget(self, run_ids: set[str]) -> None:
        """Drop cached token JSON of runs whose rows changed."""
        with self._cache_lock:
            for key in [k for k in self._json_cache if k[0] in run_ids]:
                self._json_cache_chars -= len(self._json_cache.pop(key))

    def _tokens_json(self, conn: sa.Connection, run_id: str, metrics: Sequence[str] | None) -> str:
        """One DuckDB query assembling a run's tokens.

        A turn scored in its conversation's single pass (``context_run_id`` set) stores only
        its response tokens; its other tokens are the rows, below its length, of the context
        run and of the conversation's other turns (positions are disjoint and the values are
        the same, the model being causal). They are read from there and marked as prompt.
        """
        r = schema.runs
        link = conn.execute(
            sa.select(r.c.context_run_id, r.c.n_tokens).where(r.c.run_id == run_id)
        ).first()
        ctx, n_tokens = (link[0], link[1]) if link is not None else (None, 0)
        if ctx is None:
            members = "SELECT CAST(:rid AS VARCHAR) AS run_id"
        else:
            members = "SELECT run_id FROM runs WHERE run_id = :ctx OR context_run_id = :ctx"
        params = {"rid": run_id, "ctx": ctx, "n": n_tokens if ctx is not None else 2**31 - 1}
        names = [
            row[0]
            for row in conn.execute(
                sa.text(
                    f"SELECT DISTINCT metric FROM token_metrics "
                    f"WHERE run_id IN ({members}) ORDER BY 1"
                ),
                params,
            )
        ]
        if metrics is not None:
            names = [n for n in names if n in set(metrics)]
        # metric names become struct keys in SQL text: only plain identifiers are allowed
        names = [n for n in names if _METRIC_NAME.fullmatch(n)]
        own = {n: " AND run_id = :rid" if n in RESPONSE_ONLY_TOKEN_METRICS else "" for n in names}
        pivot = "".join(
            f", max(value) FILTER (WHERE metric = '{n}'{own[n]}) AS m_{n}" for n in names
        )
        extra_keys = "".join(f", '{n}': e.m_{n}" for n in names)
        query = f"""
            WITH members AS ({members}),
            extra AS (
                SELECT position{pivot} FROM token_metrics
                WHERE run_id IN (SELECT run_id FROM members) AND position < :n
                GROUP BY position)
            SELECT coalesce(string_agg(to_json({{
                'position': t.position, 'token_id': t.token_id, 'text': t.text,
                'display': t.display, 'char_start': t.char_start, 'char_end': t.char_end,
                'is_prompt': t.is_prompt OR t.run_id <> :rid, 'logprob': t.logprob,
                'prob': t.prob, 'rank': t.rank, 'entropy': t.entropy,
                'top_k': coalesce(t.top_k, [])
                {extra_keys}}})::VARCHAR, ',' ORDER BY t.position), '')
            FROM tokens t
            LEFT JOIN extra e ON e.position = t.position
            WHERE t.run_id IN (SELECT run_id FROM members) AND t.position < :n
        """
        body = conn.execute(sa.text(query), params).scalar()
        return f"[{body or ''}]"

    def _claims(self, conn: sa.Connection, run_id: str) -> list[dict[str, Any]]:
        c, m = schema.claims, schema.claim_metrics
        claims: dict[int, dict[str, Any]] = {}
        for row in conn.execute(
            sa.select(c).where(c.c.run_id == run_id).order_by(c.c.claim_index)
        ).mappings():
            claims[row["claim_index"]] = {
                "index": row["claim_index"],
                "text": row["text"],
                "char_start": row["char_start"],
                "char_end": row["char_end"],
                "position_start": row["position_start"],
                "position_end": row["position_end"],
                "n_tokens": row["n_tokens"],
                "metrics": {},
            }
        for index, metric, value in conn.execute(
            sa.select(m.c.claim_index, m.c.metric, m.c.value).where(m.c.run_id == run_id)
        ):
            if index in claims:
                claims[index]["metrics"][metric] = _clean(value)
        return list(claims.values())

    def replace_metrics(
        self,
        run_id: str,
        *,
        token: dict[str, np.ndarray],
        sequence: dict[str, float],
        claims: dict[int, dict[str, float]],
        provenance_key: str,
        provenance: dict[str, Any],
    ) -> None:
        """Add (or overwrite) metrics of an existing run in one transaction.

        ``token`` maps metric names to ``[n_tokens]`` arrays (NaN = absent); ``claims`` maps
        claim indices to claim-level values; the run's provenance gets ``provenance`` under
        ``extras[provenance_key]`` so the stored values keep saying where they came from.
        """
        tm, sm, cm = schema.token_metrics, schema.sequence_metrics, schema.claim_metrics
        names = list(token)
        positions, metric, value = [], [], []
        for name, arr in token.items():
            vals = np.asarray(arr, dtype=np.float64)
            keep = np.flatnonzero(~np.isnan(vals))
            positions.append(keep.astype(np.int32))
            metric += [name] * len(keep)
            value.append(vals[keep])
        rows = pa.table(
            {
                "run_id": pa.array([run_id] * len(metric), pa.string()),
                "position": pa.array(np.concatenate(positions) if positions else [], pa.int32()),
                "metric": pa.array(metric, pa.string()),
                "value": pa.array(np.concatenate(value) if value else [], pa.float64()),
            }
        )
        claim_names = sorted({k for v in claims.values() for k in v})
        with self.writing() as conn:
            row = conn.execute(
                sa.select(schema.runs.c.provenance).where(schema.runs.c.run_id == run_id)
            ).first()
            if row is None:
                raise UserError(f"no run with id {run_id!r}")
            conn.execute(tm.delete().where(tm.c.run_id == run_id, tm.c.metric.in_(names)))
            conn.execute(sm.delete().where(sm.c.run_id == run_id, sm.c.metric.in_(list(sequence))))
            conn.execute(cm.delete().where(cm.c.run_id == run_id, cm.c.metric.in_(claim_names)))
            self._append(conn.connection.dbapi_connection, "token_metrics", rows)
            for seq_name, seq_val in sequence.items():
                conn.execute(
                    sm.insert().values(run_id=run_id, metric=seq_name, value=_clean(seq_val))
                )
            for index, claim_values in claims.items():
                for claim_name, claim_val in claim_values.items():
                    conn.execute(
                        cm.insert().values(
                            run_id=run_id,
                            claim_index=index,
                            metric=claim_name,
                            value=_clean(claim_val),
                        )
                    )
            prov = json.loads(row[0])
            prov.setdefault("extras", {})[provenance_key] = provenance
            conn.execute(
                schema.runs.update()
                .where(schema.runs.c.run_id == run_id)
                .values(provenance=json.dumps(prov))
            )
        self._forget({run_id})

    def _layers(self, conn: sa.Connection, run_id: str) -> list[dict[str, Any]]:
        lm = schema.layer_metrics
        layers: dict[int, dict[str, Any]] = {}
        for layer, metric, value in conn.execute(
            sa.select(lm.c.layer, lm.c.metric, lm.c.value)
            .where(lm.c.run_id == run_id)
            .order_by(lm.c.layer)
        ):
            layers.setdefault(layer, {"layer": layer})[metric] = _clean(value)
        return list(layers.values())

    def delete_run(self, run_id: str) -> bool:
        """Delete a run and all its rows in one transaction; False if it did not exist."""
        with self.writing() as conn:
            gone = conn.execute(schema.runs.delete().where(schema.runs.c.run_id == run_id))
            if not gone.rowcount:
                return False
            for name in schema.BULK_TABLES:
                table = schema.metadata.tables[name]
                conn.execute(table.delete().where(table.c.run_id == run_id))
        self._forget({run_id})
        return True

    def count(self, table: str) -> int:
        with self._conn() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(schema.metadata.tables[table])
                ).scalar()
                or 0
            )


def check_read_only(query: str) -> str:
    """Return the single statement in ``query`` if it only reads; raise otherwise."""
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as err:
        raise UserError(f"SQL error: {str(err).splitlines()[0]}") from None
    if len(statements) != 1:
        raise UserError(f"give exactly one SQL statement (got {len(statements)})")
    kind = statements[0].type.name
    if kind not in _READ_ONLY_TYPES:
        raise ReadOnlyViolation(
            f"refused: this SQL interface is read-only and {kind} statements change data; "
            "use SELECT (or EXPLAIN) queries"
        )
    return query


def run_read_only_sql(
    path: Path, query: str, *, max_rows: int = 10_000, limits: SqlLimits | None = None
) -> tuple[list[str], list[tuple[Any, ...]], bool]:
    """Run one read-only statement against the database file.

    The statement is checked by the DuckDB parser and then run on a read-only connection with
    external access (files, network) disabled, so neither data nor the file system can change,
    within ``limits`` (time, memory, result bytes; see :class:`SqlLimits`).

    Returns ``(column names, rows, truncated)``.
    """
    check_read_only(query)
    if not Path(path).is_file():
        raise UserError(f"no database at {path} yet: score something first")
    try:
        con = duckdb.connect(str(path), read_only=True, config={"enable_external_access": False})
    except duckdb.Error as err:
        if _is_lock_error(err):
            raise DatabaseLocked(_lock_message(Path(path), err)) from None
        raise UserError(f"cannot open the database {path}: {str(err).splitlines()[0]}") from None
    limits = limits or SqlLimits()
    try:
        con.execute(f"SET memory_limit = '{int(limits.memory_mb)}MB'")
        with _deadline(con, limits.timeout_s):
            cur = con.execute(query)
            columns = [d[0] for d in cur.description or []]
            rows, more = _fetch_limited(cur, max_rows, limits)
    except duckdb.Error as err:
        limited = _limited_error(err, limits)
        if limited is not None:
            raise limited from None
        raise UserError(f"SQL error: {str(err).splitlines()[0]}") from None
    finally:
        con.close()
    return columns, rows, more
