"""Table definitions of the token store.

Design: the token table holds the core columns every run has (id, text, offsets, logprob,
prob, rank, entropy); every other per-token metric goes to the long ``token_metrics`` table
``(run_id, position, metric, value)``, so adding a metric never changes the schema. Bulk tables
carry no primary key: DuckDB loads them several times faster without one, and runs are written
in one transaction, so a run is either complete or absent. Ids are client-side UUID hex strings
(DuckDB has no SERIAL). ``Double`` everywhere: ``Float`` would be 4-byte in DuckDB.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()


class TopKList(sa.types.UserDefinedType[list[dict[str, object]]]):
    """DuckDB ``STRUCT(token_id, text, prob)[]``: a token's alternatives, most probable first."""

    cache_ok = True

    def get_col_spec(self, **_: object) -> str:
        return "STRUCT(token_id INTEGER, text VARCHAR, prob DOUBLE)[]"


schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("description", sa.String, nullable=False),
    sa.Column("applied_at", sa.DateTime, nullable=False),
)

models = sa.Table(
    "models",
    metadata,
    sa.Column("model_key", sa.String, primary_key=True),
    sa.Column("name", sa.String, nullable=False),
    sa.Column("source", sa.String, nullable=False),
    sa.Column("revision", sa.String, nullable=False),
    sa.Column("label", sa.String),
    sa.Column("architecture", sa.String),
    sa.Column("context_length", sa.Integer),
    sa.Column("created_at", sa.DateTime, nullable=False),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("run_id", sa.String, primary_key=True),
    sa.Column("model_key", sa.String, nullable=False),
    sa.Column("kind", sa.String, nullable=False),
    sa.Column("prompt", sa.String),
    sa.Column("response", sa.String, nullable=False),
    sa.Column("text", sa.String, nullable=False),
    sa.Column("system_prompt", sa.String),
    sa.Column("messages", sa.String),
    sa.Column("n_tokens", sa.Integer, nullable=False),
    sa.Column("n_response_tokens", sa.Integer, nullable=False),
    sa.Column("upload_id", sa.String),
    sa.Column("job_id", sa.String),
    sa.Column("group_id", sa.String),
    sa.Column("turn_index", sa.Integer),
    sa.Column("provenance", sa.String, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("item_index", sa.Integer),  # v2: position of the run's item within its job
    # v6: a turn scored in its conversation's single pass stores only its response tokens; the
    # context run (kind "context") holds the conversation's other tokens once, see store.py
    sa.Column("context_run_id", sa.String),
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("run_id", sa.String, nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("token_id", sa.Integer, nullable=False),
    sa.Column("text", sa.String, nullable=False),
    sa.Column("display", sa.String, nullable=False),
    sa.Column("char_start", sa.Integer, nullable=False),
    sa.Column("char_end", sa.Integer, nullable=False),
    sa.Column("is_prompt", sa.Boolean, nullable=False),
    sa.Column("logprob", sa.Double),
    sa.Column("prob", sa.Double),
    sa.Column("rank", sa.Integer),
    sa.Column("entropy", sa.Double),
    # v2: the token's alternatives nested (also in ``alternatives``, long form, for SQL)
    sa.Column("top_k", TopKList()),
)

token_metrics = sa.Table(
    "token_metrics",
    metadata,
    sa.Column("run_id", sa.String, nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("metric", sa.String, nullable=False),
    sa.Column("value", sa.Double),
)

alternatives = sa.Table(
    "alternatives",
    metadata,
    sa.Column("run_id", sa.String, nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("alt_rank", sa.SmallInteger, nullable=False),
    sa.Column("token_id", sa.Integer, nullable=False),
    sa.Column("text", sa.String, nullable=False),
    sa.Column("prob", sa.Double, nullable=False),
)

sequence_metrics = sa.Table(
    "sequence_metrics",
    metadata,
    sa.Column("run_id", sa.String, nullable=False),
    sa.Column("metric", sa.String, nullable=False),
    sa.Column("value", sa.Double),
)

layer_metrics = sa.Table(
    "layer_metrics",
    metadata,
    sa.Column("run_id", sa.String, nullable=False),
    sa.Column("layer", sa.Integer, nullable=False),
    sa.Column("metric", sa.String, nullable=False),
    sa.Column("value", sa.Double),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("job_id", sa.String, primary_key=True),
    sa.Column("kind", sa.String, nullable=False),
    sa.Column("status", sa.String, nullable=False),
    sa.Column("params", sa.String, nullable=False),
    sa.Column("done", sa.Integer, nullable=False, server_default="0"),
    sa.Column("total", sa.Integer, nullable=False, server_default="0"),
    sa.Column("error", sa.String),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Column("started_at", sa.DateTime),  # v2
    sa.Column("finished_at", sa.DateTime),  # v2
    sa.Column("result", sa.String),  # v2: small JSON result of a finished job
)

uploads = sa.Table(  # v2
    "uploads",
    metadata,
    sa.Column("upload_id", sa.String, primary_key=True),
    sa.Column("filename", sa.String, nullable=False),
    sa.Column("sha256", sa.String, nullable=False),
    sa.Column("format", sa.String, nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("n_items", sa.Integer, nullable=False),
    sa.Column("content", sa.String, nullable=False),
    sa.Column("model", sa.String, nullable=False),
    sa.Column("job_id", sa.String),
    sa.Column("created_at", sa.DateTime, nullable=False),
)

claims = sa.Table(  # v3: the claims (sentences by default) of a run's response
    "claims",
    metadata,
    sa.Column("run_id", sa.String, nullable=False),
    sa.Column("claim_index", sa.Integer, nullable=False),
    sa.Column("text", sa.String, nullable=False),
    sa.Column("char_start", sa.Integer, nullable=False),
    sa.Column("char_end", sa.Integer, nullable=False),
    sa.Column("position_start", sa.Integer),  # first and last token position (inclusive)
    sa.Column("position_end", sa.Integer),
    sa.Column("n_tokens", sa.Integer, nullable=False),
)

claim_metrics = sa.Table(  # v3
    "claim_metrics",
    metadata,
    sa.Column("run_id", sa.String, nullable=False),
    sa.Column("claim_index", sa.Integer, nullable=False),
    sa.Column("metric", sa.String, nullable=False),
    sa.Column("value", sa.Double),
)

groups = sa.Table(  # v4: a group of responses sampled for one prompt (runs carry group_id)
    "groups",
    metadata,
    sa.Column("group_id", sa.String, primary_key=True),
    sa.Column("job_id", sa.String),
    sa.Column("model", sa.String, nullable=False),
    sa.Column("model_revision", sa.String, nullable=False),
    sa.Column("prompt", sa.String, nullable=False),
    sa.Column("verifier", sa.String, nullable=False),
    sa.Column("params", sa.String, nullable=False),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("tree", sa.String, nullable=False),  # JSON: the compacted prefix tree
    sa.Column("summary", sa.String, nullable=False),  # JSON: rewards, advantages, THR summary
    sa.Column("rollouts", sa.String),  # JSON: critical-token rollouts by run id
    sa.Column("contrastive", sa.String),  # JSON: the cDPO adapters' provenance
    sa.Column("created_at", sa.DateTime, nullable=False),
)

experiments = sa.Table(  # v5: steering / decoding experiments; runs carry group_id
    "experiments",
    metadata,
    sa.Column("experiment_id", sa.String, primary_key=True),
    sa.Column("kind", sa.String, nullable=False),
    sa.Column("job_id", sa.String),
    sa.Column("model", sa.String, nullable=False),
    sa.Column("model_revision", sa.String, nullable=False),
    sa.Column("params", sa.String, nullable=False),
    sa.Column("summary", sa.String),  # JSON, set when the experiment finished
    sa.Column("created_at", sa.DateTime, nullable=False),
)

diffs = sa.Table(  # v7: a model diff (B against A on A's tokens)
    "diffs",
    metadata,
    sa.Column("diff_id", sa.String, primary_key=True),
    sa.Column("job_id", sa.String),
    sa.Column("model_a", sa.String, nullable=False),
    sa.Column("model_a_revision", sa.String, nullable=False),
    sa.Column("model_b", sa.String, nullable=False),
    sa.Column("model_b_revision", sa.String, nullable=False),
    sa.Column("source", sa.String, nullable=False),  # JSON: {"kind": text|run|upload, ...}
    sa.Column("params", sa.String, nullable=False),
    sa.Column("provenance", sa.String, nullable=False),  # JSON: both models' provenance
    sa.Column("summary", sa.String),  # JSON, set when the diff finished
    sa.Column("created_at", sa.DateTime, nullable=False),
)

diff_runs = sa.Table(  # v7: the runs of a diff (one row per compared run, written with its rows)
    "diff_runs",
    metadata,
    sa.Column("diff_id", sa.String, nullable=False),
    sa.Column("run_id", sa.String, nullable=False),
    sa.Column("item_index", sa.Integer, nullable=False),
    sa.Column("same_tokens", sa.Boolean, nullable=False),
    sa.Column("n_tokens", sa.Integer, nullable=False),
    sa.Column("n_compared", sa.Integer, nullable=False),
)

diff_token_metrics = sa.Table(  # v7: long form, keyed by the diff (so by model B too)
    "diff_token_metrics",
    metadata,
    sa.Column("diff_id", sa.String, nullable=False),
    sa.Column("run_id", sa.String, nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("metric", sa.String, nullable=False),
    sa.Column("value", sa.Double),
)

diff_token_notes = sa.Table(  # v7: why a token could not be compared (different tokenizers)
    "diff_token_notes",
    metadata,
    sa.Column("diff_id", sa.String, nullable=False),
    sa.Column("run_id", sa.String, nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("reason", sa.String, nullable=False),
)


lens_layers = sa.Table(  # v8: logit lens of a run, one row per (position, layer)
    "lens_layers",
    metadata,
    sa.Column("run_id", sa.String, nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("layer", sa.Integer, nullable=False),
    sa.Column("rank", sa.Integer, nullable=False),
    sa.Column("prob", sa.Double, nullable=False),
    sa.Column("kl_final", sa.Double),
    sa.Column("top_k", TopKList),
)

attributions = sa.Table(  # v8: one attribution of a target (position or span) of a run
    "attributions",
    metadata,
    sa.Column("attribution_id", sa.String, primary_key=True),
    sa.Column("run_id", sa.String, nullable=False),
    sa.Column("target_position", sa.Integer, nullable=False),
    sa.Column("target_end", sa.Integer, nullable=False),
    sa.Column("method", sa.String, nullable=False),
    sa.Column("foil_token_id", sa.Integer),
    sa.Column("steps", sa.Integer, nullable=False),
    sa.Column("baseline", sa.String),
    sa.Column("rule", sa.String),  # IG quadrature: adaptive or even (None: gradient x input)
    sa.Column("score", sa.String, nullable=False),
    sa.Column("f_x", sa.Double),
    sa.Column("f_baseline", sa.Double),
    sa.Column("total", sa.Double),
    sa.Column("completeness_error", sa.Double),
    sa.Column("blocks", sa.String),  # JSON: direct logit attribution per block
    sa.Column("created_at", sa.DateTime, nullable=False),
)

attribution_values = sa.Table(  # v8: per input position
    "attribution_values",
    metadata,
    sa.Column("attribution_id", sa.String, nullable=False),
    sa.Column("run_id", sa.String, nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("value", sa.Double, nullable=False),
)

# Tables derived from a run on demand (not written with it); deleting a run clears them too.
DERIVED_TABLES = ("lens_layers", "attributions", "attribution_values")

BULK_TABLES = (
    "tokens",
    "token_metrics",
    "alternatives",
    "sequence_metrics",
    "layer_metrics",
    "claims",
    "claim_metrics",
)
