"""Claims (sentences) of a run with their claim-level scores, and probe evaluation charts."""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go

from tokenprism.backend.display import number

# Columns of the claims table, most telling first; each is "risk"-oriented for sorting.
CLAIM_COLUMNS = (
    ("ccp", "CCP"),
    ("probe", "probe (max)"),
    ("one_minus_prob", "1 - p (max)"),
    ("entropy", "entropy (mean)"),
    ("sar", "TokenSAR"),
    ("selfcheck_embed", "SelfCheck (embed)"),
    ("selfcheck_ngram", "SelfCheck (n-gram)"),
)
ROC_COLOURS = {
    "probe": "#d62728",
    "ccp": "#1f77b4",
    "entropy": "#2ca02c",
    "one_minus_prob": "#9467bd",
}


def claim_risk(metrics: dict[str, Any]) -> float | None:
    """How suspicious a claim looks: the probe when present, else 1 - CCP, else 1 - p."""
    probe = number(metrics.get("probe"))
    if probe is not None:
        return probe
    ccp = number(metrics.get("ccp"))
    if ccp is not None:
        return 1.0 - ccp
    return number(metrics.get("one_minus_prob"))


def claims_frame(run: dict[str, Any]) -> pd.DataFrame:
    """One row per claim: its text and every claim-level score present, worst first.

    Worst = highest :func:`claim_risk` (probe, else 1 - CCP, else the weakest token's 1 - p).
    Columns of scores no claim has are left out.
    """
    claims = run.get("claims") or []
    present = [
        (key, label)
        for key, label in CLAIM_COLUMNS
        if any(number(c["metrics"].get(key)) is not None for c in claims)
    ]
    rows = []
    for c in claims:
        row: dict[str, Any] = {"#": c["index"] + 1, "claim": c["text"], "tokens": c["n_tokens"]}
        for key, label in present:
            row[label] = number(c["metrics"].get(key))
        row["risk"] = claim_risk(c["metrics"])
        rows.append(row)
    frame = pd.DataFrame(rows, columns=["#", "claim", "tokens", *[lab for _, lab in present]])
    if rows:
        frame["risk"] = [r["risk"] for r in rows]
        frame = frame.sort_values("risk", ascending=False, na_position="last", kind="stable")
        frame = frame.drop(columns="risk").reset_index(drop=True)
    return frame


def judge_caption(run: dict[str, Any]) -> str | None:
    """Which judge produced the run's CCP values and which probe its probe values."""
    extras = (run.get("provenance") or {}).get("extras") or {}
    parts = []
    if "ccp" in extras:
        ccp = extras["ccp"]
        # runs stored before the presets existed used our shortcuts
        preset = ccp.get("preset") or "tokenprism (stored before presets)"
        parts.append(f"CCP judge: {ccp.get('judge')} · CCP preset: {preset}")
    if "probe" in extras:
        p = extras["probe"]
        parts.append(f"probe: {p.get('probe')} (layer {p.get('layer')})")
    return " · ".join(parts) or None


def roc_figure(report: dict[str, Any]) -> go.Figure:
    """ROC curves of the probe and the baselines on the held-out split, AUC in the legend."""
    held = report.get("held_out") or {}
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[0, 1],
            y=[0, 1],
            mode="lines",
            line={"dash": "dot", "color": "#999"},
            name="chance",
            hoverinfo="skip",
        )
    )
    for name, curve in (held.get("roc") or {}).items():
        if not curve.get("fpr"):
            continue
        auc = (held.get("token_auc") or {}).get(name)
        label = f"{name} (AUC {auc:.3f})" if isinstance(auc, int | float) else name
        fig.add_trace(
            go.Scatter(
                x=curve["fpr"],
                y=curve["tpr"],
                mode="lines",
                name=label,
                line={"color": ROC_COLOURS.get(name), "width": 3 if name == "probe" else 2},
            )
        )
    fig.update_layout(
        title="Held-out token ROC",
        xaxis_title="false positive rate",
        yaxis_title="true positive rate",
        xaxis={"range": [0, 1]},
        yaxis={"range": [0, 1]},
        height=420,
        margin={"l": 40, "r": 10, "t": 40, "b": 40},
    )
    return fig


def report_frame(report: dict[str, Any]) -> pd.DataFrame:
    """Token AUC and span-max AUC per score on the held-out split."""
    held = report.get("held_out") or {}
    names = list((held.get("token_auc") or {}).keys())
    return pd.DataFrame(
        {
            "score": names,
            "token AUC": [held["token_auc"].get(n) for n in names],
            "span-max AUC": [(held.get("span_max_auc") or {}).get(n) for n in names],
        }
    )
