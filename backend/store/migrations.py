"""Forward-only schema migrations, applied at open.

Each migration is a version number, a description and literal SQL frozen at the time it was
written (never generated from the current table definitions, which describe the latest schema
only). A database written by an older TokenPrism opens with a newer one: the missing migrations
run in order, each in its own transaction, and ``schema_version`` records them. Never edit a
released migration; add a new one, preferring additive changes (new tables, ``ADD COLUMN``).
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

import tokenprism.backend.store.schema as schema
from tokenprism.backend.errors import UserError

_V1 = """
CREATE TABLE IF NOT EXISTS models (
    model_key VARCHAR NOT NULL PRIMARY KEY, name VARCHAR NOT NULL, source VARCHAR NOT NULL,
    revision VARCHAR NOT NULL, label VARCHAR, architecture VARCHAR, context_length INTEGER,
    created_at TIMESTAMP NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR NOT NULL PRIMARY KEY, model_key VARCHAR NOT NULL, kind VARCHAR NOT NULL,
    prompt VARCHAR, response VARCHAR NOT NULL, text VARCHAR NOT NULL, system_prompt VARCHAR,
    messages VARCHAR, n_tokens INTEGER NOT NULL, n_response_tokens INTEGER NOT NULL,
    upload_id VARCHAR, job_id VARCHAR, group_id VARCHAR, turn_index INTEGER,
    provenance VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    run_id VARCHAR NOT NULL, position INTEGER NOT NULL, token_id INTEGER NOT NULL,
    text VARCHAR NOT NULL, display VARCHAR NOT NULL, char_start INTEGER NOT NULL,
    char_end INTEGER NOT NULL, is_prompt BOOLEAN NOT NULL, logprob DOUBLE PRECISION,
    prob DOUBLE PRECISION, rank INTEGER, entropy DOUBLE PRECISION);
CREATE TABLE IF NOT EXISTS token_metrics (
    run_id VARCHAR NOT NULL, position INTEGER NOT NULL, metric VARCHAR NOT NULL,
    value DOUBLE PRECISION);
CREATE TABLE IF NOT EXISTS alternatives (
    run_id VARCHAR NOT NULL, position INTEGER NOT NULL, alt_rank SMALLINT NOT NULL,
    token_id INTEGER NOT NULL, text VARCHAR NOT NULL, prob DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS sequence_metrics (
    run_id VARCHAR NOT NULL, metric VARCHAR NOT NULL, value DOUBLE PRECISION);
CREATE TABLE IF NOT EXISTS layer_metrics (
    run_id VARCHAR NOT NULL, layer INTEGER NOT NULL, metric VARCHAR NOT NULL,
    value DOUBLE PRECISION);
CREATE TABLE IF NOT EXISTS jobs (
    job_id VARCHAR NOT NULL PRIMARY KEY, kind VARCHAR NOT NULL, status VARCHAR NOT NULL,
    params VARCHAR NOT NULL, done INTEGER DEFAULT 0 NOT NULL, total INTEGER DEFAULT 0 NOT NULL,
    error VARCHAR, created_at TIMESTAMP NOT NULL, updated_at TIMESTAMP NOT NULL);
"""

_V2 = """
CREATE TABLE IF NOT EXISTS uploads (
    upload_id VARCHAR NOT NULL PRIMARY KEY, filename VARCHAR NOT NULL, sha256 VARCHAR NOT NULL,
    format VARCHAR NOT NULL, size_bytes BIGINT NOT NULL, n_items INTEGER NOT NULL,
    content VARCHAR NOT NULL, model VARCHAR NOT NULL, job_id VARCHAR,
    created_at TIMESTAMP NOT NULL);
ALTER TABLE runs ADD COLUMN item_index INTEGER;
ALTER TABLE tokens ADD COLUMN top_k STRUCT(token_id INTEGER, text VARCHAR, prob DOUBLE)[];
UPDATE tokens SET top_k = a.top_k FROM (
    SELECT run_id, position,
           list({'token_id': token_id, 'text': text, 'prob': prob} ORDER BY alt_rank) AS top_k
    FROM alternatives GROUP BY run_id, position) AS a
WHERE tokens.run_id = a.run_id AND tokens.position = a.position;
ALTER TABLE jobs ADD COLUMN started_at TIMESTAMP;
ALTER TABLE jobs ADD COLUMN finished_at TIMESTAMP;
ALTER TABLE jobs ADD COLUMN result VARCHAR;
"""

_V3 = """
CREATE TABLE IF NOT EXISTS claims (
    run_id VARCHAR NOT NULL, claim_index INTEGER NOT NULL, text VARCHAR NOT NULL,
    char_start INTEGER NOT NULL, char_end INTEGER NOT NULL, position_start INTEGER,
    position_end INTEGER, n_tokens INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS claim_metrics (
    run_id VARCHAR NOT NULL, claim_index INTEGER NOT NULL, metric VARCHAR NOT NULL,
    value DOUBLE PRECISION);
"""

_V4 = """
CREATE TABLE IF NOT EXISTS groups (
    group_id VARCHAR NOT NULL PRIMARY KEY, job_id VARCHAR, model VARCHAR NOT NULL,
    model_revision VARCHAR NOT NULL, prompt VARCHAR NOT NULL, verifier VARCHAR NOT NULL,
    params VARCHAR NOT NULL, n INTEGER NOT NULL, tree VARCHAR NOT NULL, summary VARCHAR NOT NULL,
    rollouts VARCHAR, contrastive VARCHAR, created_at TIMESTAMP NOT NULL);
"""

_V5 = """
CREATE TABLE IF NOT EXISTS experiments (
    experiment_id VARCHAR NOT NULL PRIMARY KEY, kind VARCHAR NOT NULL, job_id VARCHAR,
    model VARCHAR NOT NULL, model_revision VARCHAR NOT NULL, params VARCHAR NOT NULL,
    summary VARCHAR, created_at TIMESTAMP NOT NULL);
"""

_V6 = """
ALTER TABLE runs ADD COLUMN context_run_id VARCHAR;
"""

# Version 7: model diffs. A diff's token rows carry the diff id in their key, so they never
# collide with the run's own token_metrics.
_V7 = """
CREATE TABLE IF NOT EXISTS diffs (
    diff_id VARCHAR NOT NULL PRIMARY KEY, job_id VARCHAR, model_a VARCHAR NOT NULL,
    model_a_revision VARCHAR NOT NULL, model_b VARCHAR NOT NULL,
    model_b_revision VARCHAR NOT NULL, source VARCHAR NOT NULL, params VARCHAR NOT NULL,
    provenance VARCHAR NOT NULL, summary VARCHAR, created_at TIMESTAMP NOT NULL);
CREATE TABLE IF NOT EXISTS diff_runs (
    diff_id VARCHAR NOT NULL, run_id VARCHAR NOT NULL, item_index INTEGER NOT NULL,
    same_tokens BOOLEAN NOT NULL, n_tokens INTEGER NOT NULL, n_compared INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS diff_token_metrics (
    diff_id VARCHAR NOT NULL, run_id VARCHAR NOT NULL, position INTEGER NOT NULL,
    metric VARCHAR NOT NULL, value DOUBLE PRECISION);
CREATE TABLE IF NOT EXISTS diff_token_notes (
    diff_id VARCHAR NOT NULL, run_id VARCHAR NOT NULL, position INTEGER NOT NULL,
    reason VARCHAR NOT NULL);
"""

# Version 8: logit lens and input attributions of stored runs.
_V8 = """
CREATE TABLE IF NOT EXISTS lens_layers (
    run_id VARCHAR NOT NULL, position INTEGER NOT NULL, layer INTEGER NOT NULL,
    rank INTEGER NOT NULL, prob DOUBLE PRECISION NOT NULL, kl_final DOUBLE PRECISION,
    top_k STRUCT(token_id INTEGER, text VARCHAR, prob DOUBLE)[]);
CREATE TABLE IF NOT EXISTS attributions (
    attribution_id VARCHAR NOT NULL PRIMARY KEY, run_id VARCHAR NOT NULL,
    target_position INTEGER NOT NULL, target_end INTEGER NOT NULL, method VARCHAR NOT NULL,
    foil_token_id INTEGER, steps INTEGER NOT NULL, baseline VARCHAR, rule VARCHAR,
    score VARCHAR NOT NULL,
    f_x DOUBLE PRECISION, f_baseline DOUBLE PRECISION, total DOUBLE PRECISION,
    completeness_error DOUBLE PRECISION, blocks VARCHAR, created_at TIMESTAMP NOT NULL);
CREATE TABLE IF NOT EXISTS attribution_values (
    attribution_id VARCHAR NOT NULL, run_id VARCHAR NOT NULL, position INTEGER NOT NULL,
    value DOUBLE PRECISION NOT NULL);
"""

MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "models, runs, tokens, token_metrics, alternatives, sequence/layer metrics, jobs", _V1),
    (2, "uploads; runs.item_index for resumable jobs; tokens.top_k nested; job timing", _V2),
    (3, "claims (sentences of a response) and claim-level metrics", _V3),
    (4, "groups of sampled responses: tree, summary, rollouts, contrastive models", _V4),
    (5, "steering and decoding experiments (their runs carry group_id = experiment_id)", _V5),
    (6, "runs.context_run_id: context tokens stored once per conversation", _V6),
    (7, "model diffs: diffs, diff_runs, diff_token_metrics, diff_token_notes", _V7),
    (8, "logit lens per (run, position, layer); input attributions per (run, target, method)", _V8),
]

LATEST = MIGRATIONS[-1][0]


def current_version(conn: sa.Connection) -> int:
    schema.schema_version.create(conn, checkfirst=True)
    value = conn.execute(sa.select(sa.func.max(schema.schema_version.c.version))).scalar()
    return int(value or 0)


def migrate(engine: sa.Engine, *, target: int = LATEST) -> int:
    """Apply every migration newer than the database up to ``target``; return the version."""
    with engine.begin() as conn:
        version = current_version(conn)
    if version > LATEST:
        raise UserError(
            f"the database was written by a newer TokenPrism (schema {version} > {LATEST}); "
            "upgrade TokenPrism to open it"
        )
    for number, description, ddl in MIGRATIONS:
        if number <= version or number > target:
            continue
        with engine.begin() as conn:
            for statement in filter(str.strip, ddl.split(";")):
                conn.exec_driver_sql(statement)
            conn.execute(
                schema.schema_version.insert().values(
                    version=number, description=description, applied_at=datetime.now(UTC)
                )
            )
        version = number
    return version
