"""DataFrames for the audit page (turns by risk) and the runs list, in the API's order."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import pandas as pd

from tokenprism.backend.display import number

EXCERPT_CHARS = 80
TURN_COLUMNS = (
    "rank",
    "conversation",
    "turn",
    "line",
    "risk",
    "geometric_mean_confidence",
    "mean_entropy",
    "perplexity",
    "truncated_tokens",
    "rendering",
    "prompt",
    "response",
    "run_id",
)
RUN_COLUMNS = (
    "id",
    "created",
    "source",
    "kind",
    "model",
    "prompt",
    "tokens",
    "GM confidence",
    "mean entropy",
    "perplexity",
    "response",
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
        turn (1-based), line, risk, geometric-mean confidence, mean entropy, perplexity,
        tokens of history dropped to fit the context, how the chat was rendered (template or
        raw continuation), prompt and response excerpts and the run id. Missing numbers are
        ``<NA>`` / NaN.
    """
    records = []
    for rank, turn in enumerate(summary.get("turns") or [], start=1):
        sequence = turn.get("sequence") or {}
        index = _int(turn.get("turn_index"))
        records.append(
            {
                "rank": rank,
                "conversation": _int(turn.get("conversation")),
                "turn": None if index is None else index + 1,
                "line": _int(turn.get("line")),
                "risk": _float(turn.get("risk")),
                "geometric_mean_confidence": _float(sequence.get("geometric_mean_confidence")),
                "mean_entropy": _float(sequence.get("mean_entropy")),
                "perplexity": _float(sequence.get("perplexity")),
                "truncated_tokens": _int(turn.get("truncated_tokens")),
                "rendering": str(turn.get("rendering") or ""),
                "prompt": excerpt(turn.get("prompt")),
                "response": excerpt(turn.get("response")),
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
    turn = _int(run.get("turn_index"))
    return f"upload {str(upload)[:8]}" + ("" if turn is None else f" · turn {turn + 1}")


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
