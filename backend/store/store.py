"""Reading and writing runs in the DuckDB token store.

Writes go through SQLAlchemy Core for the small rows (model, run) and through Arrow for the bulk
tables: the rows are built column-wise, registered as an Arrow table on the same connection and
inserted with ``INSERT ... BY NAME SELECT``, all inside one transaction per call, so a crash
leaves either the whole run or nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import sqlalchemy as sa

from backend.encoding import visible_whitespace
from backend.errors import DatabaseLocked, ReadOnlyViolation, UserError
from backend.models import LoadedModel
from backend.runner import ScoredText
from backend.store import schema
from backend.store.migrations import migrate

# Token metrics with their own column in ``tokens``; all others go to ``token_metrics``.
CORE_TOKEN_METRICS = ("logprob", "prob", "rank", "entropy")
_READ_ONLY_TYPES = {"SELECT", "EXPLAIN"}
TOKEN_JSON_CACHE_CHARS = 256 * 1024 * 1024
_METRIC_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")


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

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
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
        self.engine.dispose()

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

    def ensure_model(self, conn: sa.Connection, lm: LoadedModel) -> str:
        key = hashlib.sha256(f"{lm.name}|{lm.source}|{lm.revision}".encode()).hexdigest()[:16]
        exists = conn.execute(
            sa.select(schema.models.c.model_key).where(schema.models.c.model_key == key)
        ).first()
        if exists is None:
            conn.execute(
                schema.models.insert().values(
                    model_key=key,
                    name=lm.name,
                    source=lm.source,
                    revision=lm.revision,
                    label=lm.label,
                    architecture=type(lm.model).__name__,
                    context_length=lm.context_length,
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
        now = datetime.now(UTC)
        bulk: dict[str, list[pa.Table]] = {name: [] for name in schema.BULK_TABLES}
        with self.writing() as conn:
            model_key = self.ensure_model(conn, lm)
            for i, (run_id, item) in enumerate(zip(run_ids, scored, strict=True)):
                enc = item.encoded
                conn.execute(
                    schema.runs.insert().values(
                        run_id=run_id,
                        model_key=model_key,
                        kind=enc.kind,
                        prompt=enc.prompt,
                        response=enc.response,
                        text=enc.text,
                        system_prompt=enc.system_prompt,
                        messages=json.dumps(enc.messages) if enc.messages is not None else None,
                        n_tokens=enc.n_tokens,
                        n_response_tokens=int(item.scores.response_mask.sum()),
                        upload_id=upload_id,
                        job_id=job_id,
                        group_id=group_id,
                        turn_index=turn_indices[i] if turn_indices is not None else None,
                        item_index=item_indices[i] if item_indices is not None else None,
                        provenance=json.dumps(item.provenance),
                        created_at=now,
                    )
                )
                for name, table in self._bulk_rows(run_id, item, lm).items():
                    bulk[name].append(table)
            raw = conn.connection.dbapi_connection
            for name, tables in bulk.items():
                if tables:
                    self._append(raw, name, pa.concat_tables(tables))
        return run_ids

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

    @staticmethod
    def _bulk_rows(run_id: str, item: ScoredText, lm: LoadedModel) -> dict[str, pa.Table]:
        enc, sc = item.encoded, item.scores
        n = enc.n_tokens
        positions = np.arange(n, dtype=np.int32)
        tok = {k: v.numpy() for k, v in sc.token.items()}
        rank = tok["rank"]
        tokens = pa.table(
            {
                "run_id": pa.array([run_id] * n),
                "position": positions,
                "token_id": np.asarray(enc.input_ids, dtype=np.int32),
                "text": enc.token_texts,
                "display": [visible_whitespace(t) for t in enc.token_texts],
                "char_start": np.asarray([o[0] for o in enc.offsets], dtype=np.int32),
                "char_end": np.asarray([o[1] for o in enc.offsets], dtype=np.int32),
                "is_prompt": np.asarray(enc.is_prompt, dtype=bool),
                "logprob": pa.array(tok["logprob"].astype(np.float64), from_pandas=True),
                "prob": pa.array(tok["prob"].astype(np.float64), from_pandas=True),
                "rank": pa.array(rank.astype(np.int32), mask=rank < 0),
                "entropy": pa.array(tok["entropy"].astype(np.float64), from_pandas=True),
            }
        )
        names, values, pos = [], [], []
        for name, arr in tok.items():
            if name in CORE_TOKEN_METRICS:
                continue
            vals = arr.astype(np.float64)
            if np.issubdtype(arr.dtype, np.integer):
                vals[arr < 0] = np.nan
            keep = ~np.isnan(vals)
            names.append(np.full(int(keep.sum()), name, dtype=object))
            values.append(vals[keep])
            pos.append(positions[keep])
        metric_names = np.concatenate(names) if names else np.array([], dtype=object)
        token_metrics = pa.table(
            {
                "run_id": pa.array([run_id] * len(metric_names), pa.string()),
                "position": pa.array(np.concatenate(pos) if pos else [], pa.int32()),
                "metric": pa.array(metric_names, pa.string()),
                "value": pa.array(np.concatenate(values) if values else [], pa.float64()),
            }
        )
        ids = sc.top_ids.numpy()
        probs = sc.top_probs.numpy().astype(np.float64)
        valid = ids >= 0
        k = ids.shape[1] if ids.ndim == 2 else 0
        alt_pos = np.repeat(positions, k).reshape(n, k)[valid]
        alt_rank = np.tile(np.arange(1, k + 1, dtype=np.int16), n).reshape(n, k)[valid]
        alt_ids = ids[valid]
        vocab = lm.vocab_array
        alt_id_arr = pa.array(alt_ids, pa.int32())
        alt_text_arr = pa.array(vocab[alt_ids], pa.string())
        alt_prob_arr = pa.array(probs[valid], pa.float64())
        alternatives = pa.table(
            {
                "run_id": pa.array([run_id] * len(alt_ids), pa.string()),
                "position": pa.array(alt_pos, pa.int32()),
                "alt_rank": pa.array(alt_rank, pa.int16()),
                "token_id": alt_id_arr,
                "text": alt_text_arr,
                "prob": alt_prob_arr,
            }
        )
        # the same alternatives nested per token: reads of whole runs need no aggregation
        offsets = np.concatenate([[0], np.cumsum(valid.sum(axis=1))]).astype(np.int32)
        top_k = pa.ListArray.from_arrays(
            pa.array(offsets, pa.int32()),
            pa.StructArray.from_arrays(
                [alt_id_arr, alt_text_arr, alt_prob_arr], names=["token_id", "text", "prob"]
            ),
        )
        tokens = tokens.append_column("top_k", top_k)
        seq_names = list(sc.sequence)
        sequence = pa.table(
            {
                "run_id": pa.array([run_id] * len(seq_names), pa.string()),
                "metric": pa.array(seq_names, pa.string()),
                "value": pa.array([float(sc.sequence[s]) for s in seq_names], pa.float64()),
            }
        )
        lay_rows: dict[str, list[Any]] = {"layer": [], "metric": [], "value": []}
        for name, layer_values in sc.layers.items():
            per_layer = layer_values.double().tolist()
            lay_rows["layer"] += list(range(len(per_layer)))
            lay_rows["metric"] += [name] * len(per_layer)
            lay_rows["value"] += per_layer
        layers = pa.table(
            {
                "run_id": pa.array([run_id] * len(lay_rows["layer"]), pa.string()),
                "layer": pa.array(lay_rows["layer"], pa.int32()),
                "metric": pa.array(lay_rows["metric"], pa.string()),
                "value": pa.array(lay_rows["value"], pa.float64()),
            }
        )
        claims, claim_values = Store._claim_rows(run_id, item)
        return {
            "tokens": tokens,
            "token_metrics": token_metrics,
            "alternatives": alternatives,
            "sequence_metrics": sequence,
            "layer_metrics": layers,
            "claims": claims,
            "claim_metrics": claim_values,
        }

    @staticmethod
    def _claim_rows(run_id: str, item: ScoredText) -> tuple[pa.Table, pa.Table]:
        rows: dict[str, list[Any]] = {
            k: []
            for k in ("claim_index", "text", "char_start", "char_end", "position_start")
            + ("position_end", "n_tokens")
        }
        values: dict[str, list[Any]] = {"claim_index": [], "metric": [], "value": []}
        for c in item.claims:
            rows["claim_index"].append(c.claim.index)
            rows["text"].append(c.claim.text)
            rows["char_start"].append(c.claim.char_start)
            rows["char_end"].append(c.claim.char_end)
            rows["position_start"].append(min(c.positions) if c.positions else None)
            rows["position_end"].append(max(c.positions) if c.positions else None)
            rows["n_tokens"].append(len(c.positions))
            for name, value in c.metrics.items():
                values["claim_index"].append(c.claim.index)
                values["metric"].append(name)
                values["value"].append(None if value != value else float(value))
        claims = pa.table(
            {
                "run_id": pa.array([run_id] * len(rows["text"]), pa.string()),
                "claim_index": pa.array(rows["claim_index"], pa.int32()),
                "text": pa.array(rows["text"], pa.string()),
                "char_start": pa.array(rows["char_start"], pa.int32()),
                "char_end": pa.array(rows["char_end"], pa.int32()),
                "position_start": pa.array(rows["position_start"], pa.int32()),
                "position_end": pa.array(rows["position_end"], pa.int32()),
                "n_tokens": pa.array(rows["n_tokens"], pa.int32()),
            }
        )
        claim_values = pa.table(
            {
                "run_id": pa.array([run_id] * len(values["metric"]), pa.string()),
                "claim_index": pa.array(values["claim_index"], pa.int32()),
                "metric": pa.array(values["metric"], pa.string()),
                "value": pa.array(values["value"], pa.float64()),
            }
        )
        return claims, claim_values

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
        is rolled back, and the engine has no file or network access.
        """
        check_read_only(query)
        with self._conn() as conn:
            raw: Any = conn.connection.dbapi_connection
            try:
                cur = raw.cursor()
                try:
                    # EXPLAIN ANALYZE runs the statement it explains (a DELETE or DROP too) and
                    # the parser only sees "EXPLAIN": a read-only transaction refuses any write.
                    cur.execute("BEGIN TRANSACTION READ ONLY")
                    try:
                        cur.execute(query)
                        columns: list[str] = [d[0] for d in cur.description or []]
                        rows: list[tuple[Any, ...]] = list(cur.fetchmany(max_rows + 1))
                    finally:
                        cur.execute("ROLLBACK")
                finally:
                    cur.close()
            except duckdb.Error as err:
                if "read-only mode" in str(err):
                    raise ReadOnlyViolation(
                        "refused: this SQL interface is read-only; use SELECT (or EXPLAIN) queries"
                    ) from None
                raise UserError(f"SQL error: {str(err).splitlines()[0]}") from None
            finally:
                conn.rollback()
        return columns, rows[:max_rows], len(rows) > max_rows

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
        names = [
            row[0]
            for row in conn.execute(
                sa.text("SELECT DISTINCT metric FROM token_metrics WHERE run_id = :rid ORDER BY 1"),
                {"rid": run_id},
            )
        ]
        if metrics is not None:
            names = [n for n in names if n in set(metrics)]
        # metric names become struct keys in SQL text: only plain identifiers are allowed
        names = [n for n in names if _METRIC_NAME.fullmatch(n)]
        pivot = "".join(f", max(value) FILTER (WHERE metric = '{n}') AS m_{n}" for n in names)
        extra_keys = "".join(f", '{n}': e.m_{n}" for n in names)
        query = f"""
            WITH extra AS (
                SELECT position{pivot} FROM token_metrics WHERE run_id = :rid GROUP BY position)
            SELECT coalesce(string_agg(to_json({{
                'position': t.position, 'token_id': t.token_id, 'text': t.text,
                'display': t.display, 'char_start': t.char_start, 'char_end': t.char_end,
                'is_prompt': t.is_prompt, 'logprob': t.logprob, 'prob': t.prob,
                'rank': t.rank, 'entropy': t.entropy,
                'top_k': coalesce(t.top_k, [])
                {extra_keys}}})::VARCHAR, ',' ORDER BY t.position), '')
            FROM tokens t
            LEFT JOIN extra e ON e.position = t.position
            WHERE t.run_id = :rid
        """
        body = conn.execute(sa.text(query), {"rid": run_id}).scalar()
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
    path: Path, query: str, *, max_rows: int = 10_000
) -> tuple[list[str], list[tuple[Any, ...]], bool]:
    """Run one read-only statement against the database file.

    The statement is checked by the DuckDB parser and then run on a read-only connection with
    external access (files, network) disabled, so neither data nor the file system can change.

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
    try:
        cur = con.execute(query)
        columns = [d[0] for d in cur.description or []]
        rows = cur.fetchmany(max_rows + 1)
    except duckdb.Error as err:
        raise UserError(f"SQL error: {str(err).splitlines()[0]}") from None
    finally:
        con.close()
    return columns, rows[:max_rows], len(rows) > max_rows
