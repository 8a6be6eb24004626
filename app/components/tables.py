"""DataFrames people read: audit turns by risk, uncertain tokens, the runs list, a run's tokens.

Stored indexes (turn_index, token position) count from 0; every frame here shows them counted
from 1 through ``display.shown_number``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import pandas as pd

from tokenprism.backend.display import number, sentence_context, shown_number

EXCERPT_CHARS = 80
TEXT_CHARS = 200  # prompt / response cells of the audit table: about three wrapped lines
TURN_COLUMNS = (
    "rank",
    "conversation",
    "turn",
    "prompt",
    "response",
    "risk",
    "geometric_mean_confidence",
    "mean_entropy",
    "perplexity",
    "line",
    "truncated_tokens",
    "rendering",
    "run_id",
)
TOKEN_COLUMNS = ("#", "token", "value", "prob", "entropy", "context", "conversation", "turn",
                 "position", "run_id")  # fmt: skip
RUN_COLUMNS = (
    "id",
    "source",
    "kind",
    "prompt",
    "response",
    "tokens",
    "GM confidence",
    "mean entropy",
    "perplexity",
    "model",
    "created",
    "run_id",
)
_INT_TURN_COLUMNS = ("rank", "conversation", "turn", "line", "truncated_tokens")
_FLOAT_TURN_COLUMNS = ("risk", "geometric_mean_confidence", "mean_entropy", "perplexity")


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: Any) -> float:
    """:func:`number` with NaN for missing values, so pandas keeps a float column."""
    finite = number(value)
    return math.nan if finite is None else finite


def excerpt(text: Any, limit: int = EXCERPT_CHARS) -> str:
    """One-line excerpt: newlines drawn as ↵, cut to ``limit`` characters with an ellipsis.

    Args:
        text: any text; None counts as empty.
        limit: most characters kept before the ellipsis.

    Returns:
        The excerpt.
    """
    flat = ("" if text is None else str(text)).replace("\r", "").replace("\n", "↵")
    return flat if len(flat) <= limit else flat[:limit] + "…"


def turns_frame(summary: dict[str, Any]) -> pd.DataFrame:
    """The audit's turns, riskiest first, as the audit page shows them.

    Args:
        summary: the upload's audit summary (``summary["turns"]`` already ranked).

    Returns:
        Columns :data:`TURN_COLUMNS`: rank (1-based, the summary's order), conversation,
        turn (1-based), prompt and response (first :data:`TEXT_CHARS` characters), risk,
        geometric-mean confidence, mean entropy, perplexity, line, tokens of history dropped
        to fit the context, how the chat was rendered (template or raw continuation) and the
        run id. Missing numbers are ``<NA>`` / NaN.
    """
    records = []
    for rank, turn in enumerate(summary.get("turns") or [], start=1):
        sequence = turn.get("sequence") or {}
        records.append(
            {
                "rank": rank,
                "conversation": _int(turn.get("conversation")),
                "turn": shown_number(turn.get("turn_index")),
                "line": _int(turn.get("line")),
                "risk": _float(turn.get("risk")),
                "geometric_mean_confidence": _float(sequence.get("geometric_mean_confidence")),
                "mean_entropy": _float(sequence.get("mean_entropy")),
                "perplexity": _float(sequence.get("perplexity")),
                "truncated_tokens": _int(turn.get("truncated_tokens")),
                "rendering": str(turn.get("rendering") or ""),
                "prompt": excerpt(turn.get("prompt"), TEXT_CHARS),
                "response": excerpt(turn.get("response"), TEXT_CHARS),
                "run_id": str(turn.get("run_id", "")),
            }
        )
    frame = pd.DataFrame.from_records(records, columns=list(TURN_COLUMNS))
    for col in _INT_TURN_COLUMNS:
        frame[col] = frame[col].astype("Int64")
    for col in _FLOAT_TURN_COLUMNS:
        frame[col] = frame[col].astype("float64")
    return frame


def _model_name(model: Any) -> str:
    if isinstance(model, dict):
        return str(model.get("id") or model.get("name") or "")
    return "" if model is None else str(model)


def _source(run: dict[str, Any]) -> str:
    """Where a run came from: its upload (short id) and 1-based turn, or a direct score."""
    upload = run.get("upload_id")
    if not upload:
        return "scored directly"
    turn = shown_number(run.get("turn_index"))
    return f"upload {str(upload)[:8]}" + ("" if turn is None else f" · turn {turn}")


def runs_frame(runs: Iterable[dict[str, Any]] | None) -> pd.DataFrame:
    """The runs list of ``GET /api/v1/runs`` as a table, newest first as the API sent it.

    Args:
        runs: the ``runs`` items (``run_id``, ``kind``, ``response``, ``n_response_tokens``,
            ``created_at``, ``model``, ``sequence``).

    Returns:
        Columns :data:`RUN_COLUMNS`; ``created`` is ``YYYY-MM-DD HH:MM:SS``, the metric
        columns are floats (NaN when missing), ``response`` an excerpt.
    """
    records = []
    for run in runs or []:
        sequence = run.get("sequence") or {}
        created = str(run.get("created_at") or "")[:19].replace("T", " ")
        records.append(
            {
                "id": str(run.get("run_id", ""))[:8],
                "created": created,
                "source": _source(run),
                "kind": str(run.get("kind") or ""),
                "model": _model_name(run.get("model")),
                "prompt": excerpt(run.get("prompt")),
                "tokens": _int(run.get("n_response_tokens")),
                "GM confidence": _float(sequence.get("geometric_mean_confidence")),
                "mean entropy": _float(sequence.get("mean_entropy")),
                "perplexity": _float(sequence.get("perplexity")),
                "response": excerpt(run.get("response")),
                "run_id": str(run.get("run_id", "")),
            }
        )
    frame = pd.DataFrame.from_records(records, columns=list(RUN_COLUMNS))
    frame["tokens"] = frame["tokens"].astype("Int64")
    for col in ("GM confidence", "mean entropy", "perplexity"):
        frame[col] = frame[col].astype("float64")
    return frame


def _in_context(tokens: list[dict[str, Any]] | None, position: Any) -> str:
    if not tokens or _int(position) is None:
        return ""
    before, token, after = sentence_context(tokens, int(position))
    return f"{before}«{token}»{after}".replace("\r", "").replace("\n", "↵")


def uncertain_tokens_frame(
    summary: dict[str, Any], run_tokens: dict[str, list[dict[str, Any]]] | None = None
) -> pd.DataFrame:
    """The audit's most uncertain tokens, each in its sentence.

    Args:
        summary: the upload's audit summary (``summary["tokens"]``: run_id, position, text,
            value, prob, entropy, conversation, turn_index), riskiest first.
        run_tokens: the tokens of those runs by run id, for the sentence context.

    Returns:
        Columns :data:`TOKEN_COLUMNS`: rank from 1, the token, its value of the ranking
        metric, prob, entropy, the sentence with the token in « », conversation, turn and
        position counted from 1, and the run id.
    """
    records = []
    for rank, tok in enumerate(summary.get("tokens") or [], start=1):
        run_id = str(tok.get("run_id", ""))
        records.append(
            {
                "#": rank,
                "token": str(tok.get("text") or "").replace("\r", "").replace("\n", "↵"),
                "value": _float(tok.get("value")),
                "prob": _float(tok.get("prob")),
                "entropy": _float(tok.get("entropy")),
                "context": _in_context((run_tokens or {}).get(run_id), tok.get("position")),
                "conversation": _int(tok.get("conversation")),
                "turn": shown_number(tok.get("turn_index")),
                "position": shown_number(tok.get("position")),
                "run_id": run_id,
            }
        )
    frame = pd.DataFrame.from_records(records, columns=list(TOKEN_COLUMNS))
    for col in ("#", "conversation", "turn", "position"):
        frame[col] = frame[col].astype("Int64")
    for col in ("value", "prob", "entropy"):
        frame[col] = frame[col].astype("float64")
    return frame


def run_tokens_frame(tokens: Iterable[dict[str, Any]] | None, metrics: list[str]) -> pd.DataFrame:
    """A run's tokens, one row each: number from 1, prompt flag, text and every metric.

    Args:
        tokens: the run's tokens in order.
        metrics: the metric columns to show (missing values are NaN).

    Returns:
        Columns ``#``, ``prompt``, ``token``, ``token_id``, then ``metrics``.
    """
    records = [
        {
            "#": shown_number(tok.get("position")),
            "prompt": bool(tok.get("is_prompt")),
            "token": str(tok.get("text") or ""),
            "token_id": _int(tok.get("token_id")),
            **{m: _float(tok.get(m)) for m in metrics},
        }
        for tok in tokens or []
    ]
    frame = pd.DataFrame.from_records(
        records, columns=["#", "prompt", "token", "token_id", *metrics]
    )
    for col in ("#", "token_id"):
        frame[col] = frame[col].astype("Int64")
    return frame
