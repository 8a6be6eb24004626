"""Groups of sampled responses: the prefix tree, token signals, rollouts and tables.

Every function is pure: it takes API JSON (``GET /api/v1/groups/{id}``, a run's tokens) and
returns a ``go.Figure``, a ``pd.DataFrame`` or a string. Text from the data that plotly renders
(labels, hover text) is HTML-escaped with whitespace drawn visibly, since plotly reads a subset
of HTML in them.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from tokenprism.backend.display import number, response_tokens, shown_number, visible_whitespace

# What the prefix tree can be coloured by: node key -> (title, colour scale).
TREE_COLOURS: dict[str, tuple[str, str]] = {
    "value": ("V(s)", "RdYlGn"),
    "entropy": ("entropy (nats)", "Viridis"),
    "td": ("TD", "RdBu"),
}
LABEL_CHARS = 24
HOVER_LINE_CHARS = 60
RESPONSE_COLUMNS = ("#", "reward", "advantage", "extracted answer", "reason", "response")
THR_COLUMNS = ("response", "position", "token", "THR")
COUNTERFACTUAL_COLUMNS = ("alternative", "p (model)", "c after the swap", "sample")
MARGIN = {"l": 10, "r": 10, "t": 30, "b": 10}


def _fmt(value: Any, spec: str = ".4g") -> str:
    finite = number(value)
    return "—" if finite is None else format(finite, spec)


def _visible(text: Any) -> str:
    return visible_whitespace("" if text is None else str(text))


def _escaped(text: Any) -> str:
    """Token or node text for plotly: whitespace visible, HTML-escaped."""
    return html.escape(_visible(text), quote=True)


def _truncated(text: Any, limit: int = LABEL_CHARS) -> str:
    shown = _visible(text)
    if len(shown) > limit:
        shown = shown[: limit - 1] + "…"
    return html.escape(shown, quote=True)


def _wrapped(text: Any, width: int = HOVER_LINE_CHARS) -> str:
    """The full text, escaped, broken into lines of ``width`` characters with ``<br>``."""
    shown = _visible(text)
    if not shown:
        return "∅"
    return "<br>".join(
        html.escape(shown[i : i + width], quote=True) for i in range(0, len(shown), width)
    )


def _empty(message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(xaxis={"visible": False}, yaxis={"visible": False}, margin=MARGIN, height=200)
    return fig


# ---- the prefix tree ---------------------------------------------------------------------


def tree_branchvalues(nodes: Sequence[dict[str, Any]]) -> str:
    """``"total"`` when every response ends at a leaf, ``"remainder"`` otherwise.

    A response that ends at an inner node (a prefix another response continues, or an empty
    response at the root) makes that node's count larger than its children's sum.
    """
    below: dict[Any, int] = {}
    for node in nodes:
        if node.get("parent") is not None:
            below[node["parent"]] = below.get(node["parent"], 0) + int(node.get("count") or 0)
    ends_inside = any(
        node["id"] in below and int(node.get("count") or 0) > below[node["id"]] for node in nodes
    )
    return "remainder" if ends_inside else "total"


def tree_figure(tree: dict[str, Any] | None, colour_by: str = "value") -> go.Figure:
    """The group's prefix tree as an icicle: one box per (compacted) node, sized by count.

    Args:
        tree: ``{"nodes": [{id, parent, text, depth, count, value, td, entropy, responses,
            children}, ...]}`` as ``GET /groups/{id}`` returns it (root: id 0, parent None).
        colour_by: ``"value"`` (V(s), the mean reward of the responses through the node),
            ``"entropy"`` (at the position that chose the node's first token) or ``"td"``.

    Returns:
        A figure with one ``go.Icicle``: ids / parents are the node ids as strings (the root's
        parent is ""), labels the node texts (whitespace visible, escaped, truncated to 24
        characters; the root is "all N responses"), colours the chosen key (missing values
        are left to plotly's default colour). With ``branchvalues="total"`` the values are the
        counts; when a response ends at an inner node, ``"remainder"`` is used and each value
        is the number of responses ending exactly there, so a box's size is still its count.
        The hover gives the full text, count, V(s), TD, entropy, depth and response indices.

    Raises:
        ValueError: for an unknown ``colour_by``.
    """
    if colour_by not in TREE_COLOURS:
        raise ValueError(f"colour_by must be one of {sorted(TREE_COLOURS)}, not {colour_by!r}")
    nodes = list((tree or {}).get("nodes") or [])
    if not nodes:
        return _empty("no prefix tree")
    mode = tree_branchvalues(nodes)
    below: dict[Any, int] = {}
    for node in nodes:
        if node.get("parent") is not None:
            below[node["parent"]] = below.get(node["parent"], 0) + int(node.get("count") or 0)
    ids, parents, labels, values, colours, custom = [], [], [], [], [], []
    for node in nodes:
        count = int(node.get("count") or 0)
        root = node.get("parent") is None
        ids.append(str(node["id"]))
        parents.append("" if root else str(node["parent"]))
        labels.append(f"all {count} responses" if root else _truncated(node.get("text")))
        values.append(count if mode == "total" else max(count - below.get(node["id"], 0), 0))
        colours.append(number(node.get(colour_by)))
        custom.append(
            [
                "(the prompt)" if root else _wrapped(node.get("text")),
                count,
                _fmt(node.get("value"), ".3f"),
                _fmt(node.get("td"), "+.3f"),
                _fmt(node.get("entropy"), ".3f"),
                ", ".join(str(r) for r in node.get("responses") or []) or "—",
                node.get("depth", 0),
            ]
        )
    title, scale = TREE_COLOURS[colour_by]
    finite = [c for c in colours if c is not None]
    marker: dict[str, Any] = {
        "colors": colours,
        "colorscale": scale,
        "showscale": True,
        "colorbar": {"title": {"text": title}},
    }
    if colour_by == "value":  # rewards: 0 = wrong (red) .. 1 = right (green)
        marker.update(cmin=min([0.0, *finite]), cmax=max([1.0, *finite]))
    elif colour_by == "td" and finite:  # centred: red loses reward, blue gains it
        bound = max(abs(c) for c in finite) or 1.0
        marker.update(cmin=-bound, cmax=bound)
    fig = go.Figure(
        go.Icicle(
            ids=ids,
            parents=parents,
            labels=labels,
            values=values,
            branchvalues=mode,
            marker=marker,
            customdata=custom,
            hovertemplate=(
                "<b>%{customdata[0]}</b><br>responses %{customdata[5]} (n = %{customdata[1]})"
                "<br>V(s) %{customdata[2]} · TD %{customdata[3]}"
                "<br>entropy %{customdata[4]} · depth %{customdata[6]} tokens<extra></extra>"
            ),
            tiling={"orientation": "h"},
            root={"color": "#f4f4f4"},
            textfont={"family": "ui-monospace, SFMono-Regular, Menlo, Consolas, monospace"},
        )
    )
    fig.update_layout(margin=MARGIN, height=max(320, min(900, 60 * len(nodes))))
    return fig


# ---- one response's signals --------------------------------------------------------------


def signals_figure(tokens: Iterable[dict[str, Any]] | None) -> go.Figure:
    """Entropy along a response with LATR branch points and CURE candidates marked.

    Args:
        tokens: a run's (or a group response's) tokens; prompt tokens are skipped.

    Returns:
        Three traces over the token positions: ``"entropy"`` (a line), ``"LATR branch"``
        (markers where ``latr_branch == 1``) and ``"CURE candidate"`` (markers where
        ``cure_rank`` is set, the rank on hover). Markers sit on the entropy curve (0 where
        the entropy is missing); every hover shows the token text, escaped.
    """
    shown = response_tokens(tokens)

    def points(chosen: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "x": [t.get("position") for t in chosen],
            "y": [number(t.get("entropy")) or 0.0 for t in chosen],
            "customdata": [
                [_escaped(t.get("text")), _fmt(t.get("cure_rank"), ".0f")] for t in chosen
            ],
        }

    latr = [t for t in shown if number(t.get("latr_branch")) == 1.0]
    cure = [t for t in shown if number(t.get("cure_rank")) is not None]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[t.get("position") for t in shown],
            y=[number(t.get("entropy")) for t in shown],
            customdata=[[_escaped(t.get("text"))] for t in shown],
            mode="lines+markers",
            marker={"size": 4, "color": "#1f77b4"},
            line={"width": 1.5, "color": "#1f77b4"},
            name="entropy",
            hovertemplate="position %{x}<br>token <b>%{customdata[0]}</b>"
            "<br>entropy %{y:.3f}<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            **points(latr),
            mode="markers",
            marker={"symbol": "triangle-up", "size": 12, "color": "#d62728"},
            name="LATR branch",
            hovertemplate="LATR branch point at %{x}<br>token <b>%{customdata[0]}</b>"
            "<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            **points(cure),
            mode="markers",
            marker={
                "symbol": "diamond-open",
                "size": 12,
                "color": "#ff7f0e",
                "line": {"width": 2},
            },
            name="CURE candidate",
            hovertemplate="CURE candidate #%{customdata[1]} at %{x}<br>token "
            "<b>%{customdata[0]}</b><extra></extra>",
        )
    )
    fig.update_layout(
        xaxis_title="token position",
        yaxis_title="entropy (nats)",
        hovermode="closest",
        legend={"orientation": "h", "y": 1.1},
        margin=MARGIN,
        height=280,
    )
    return fig


# ---- rollouts ----------------------------------------------------------------------------


def rollout_figure(
    tokens: Iterable[dict[str, Any]] | None, rollout: dict[str, Any] | None
) -> go.Figure:
    """The critical-token curve c(t) of a rollout result.

    Args:
        tokens: the response's tokens (for the hover texts and the x range).
        rollout: ``group["rollouts"][run_id]``: ``positions``, ``correct_rate``, ``baseline``,
            ``critical_position``.

    Returns:
        ``"c(t)"`` (markers + line over the evaluated positions, the token that ends each
        prefix on hover), ``"baseline"`` (a dashed line at the prompt-only correct rate,
        across the response) and, when a critical token was found, a ``"critical token"``
        marker plus a vertical line (a layout shape) at its position.
    """
    rollout = rollout or {}
    texts = {t.get("position"): t.get("text") for t in tokens or []}
    response = [t.get("position") for t in response_tokens(tokens)]
    positions = list(rollout.get("positions") or [])
    rates = [number(r) for r in rollout.get("correct_rate") or []]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=positions,
            y=rates,
            customdata=[_escaped(texts.get(p)) for p in positions],
            mode="lines+markers",
            marker={"size": 7, "color": "#1f77b4"},
            name="c(t)",
            hovertemplate="prefix through position %{x}<br>token <b>%{customdata}</b>"
            "<br>c(t) = %{y:.2f}<extra></extra>",
        )
    )
    span = [p for p in [*response, *positions] if isinstance(p, int)]
    baseline = number(rollout.get("baseline"))
    if baseline is not None and span:
        fig.add_trace(
            go.Scatter(
                x=[min(span), max(span)],
                y=[baseline, baseline],
                mode="lines",
                line={"dash": "dash", "color": "#7f7f7f"},
                name="baseline",
                hovertemplate=f"baseline (prompt only) c = {baseline:.2f}<extra></extra>",
            )
        )
    critical = rollout.get("critical_position")
    if isinstance(critical, int) and not isinstance(critical, bool):
        at = dict(zip(positions, rates, strict=False)).get(critical)
        fig.add_trace(
            go.Scatter(
                x=[critical],
                y=[0.0 if at is None else at],
                customdata=[_escaped(texts.get(critical, rollout.get("critical_token")))],
                mode="markers",
                marker={"symbol": "x", "size": 14, "color": "#d62728"},
                name="critical token",
                hovertemplate="critical token at %{x}<br><b>%{customdata}</b><extra></extra>",
            )
        )
        fig.add_vline(x=critical, line={"color": "#d62728", "dash": "dot", "width": 1.5})
    fig.update_layout(
        xaxis_title="token position (prefix ends with this token)",
        yaxis={"title": {"text": "c(t): share of correct continuations"}, "range": [-0.05, 1.05]},
        hovermode="closest",
        legend={"orientation": "h", "y": 1.12},
        margin=MARGIN,
        height=320,
    )
    return fig


def counterfactuals_frame(rollout: dict[str, Any] | None) -> pd.DataFrame:
    """The alternatives tried in place of the critical token and their correct rate."""
    rows = [
        {
            "alternative": _visible(c.get("text")),
            "p (model)": number(c.get("prob")),
            "c after the swap": number(c.get("correct_rate")),
            "sample": _visible((c.get("samples") or [""])[0]),
        }
        for c in (rollout or {}).get("counterfactuals") or []
    ]
    return pd.DataFrame(rows, columns=list(COUNTERFACTUAL_COLUMNS))


# ---- tables and captions -----------------------------------------------------------------


def is_incorrect(response: dict[str, Any]) -> bool:
    """A response with no reward (the backend's rule for rollouts and cDPO)."""
    return not response.get("reward")


def responses_frame(group: dict[str, Any]) -> pd.DataFrame:
    """One row per response: index, reward, advantage, extracted answer, reason, text."""
    rows = [
        {
            "#": shown_number(r.get("index")),
            "reward": number(r.get("reward")),
            "advantage": number(r.get("advantage")),
            "extracted answer": None if r.get("extracted") is None else str(r["extracted"]),
            "reason": r.get("reason"),
            "response": r.get("text"),
        }
        for r in group.get("responses") or []
    ]
    return pd.DataFrame(rows, columns=list(RESPONSE_COLUMNS))


def thr_status(summary: dict[str, Any] | None) -> tuple[bool, str]:
    """Whether THR was computed, and a one-line status: tau and p, or why THR is missing."""
    summary = summary or {}
    reason = summary.get("thr_reason")
    if reason:
        return False, f"THR is not available for this group: {reason}."
    tau = number(summary.get("thr_tau"))
    if tau is None:
        return False, "THR is not available for this group."
    size = summary.get("thr_vocab_size", summary.get("vocabulary_size", "?"))
    if summary.get("thr_vocab", "group") == "full":
        where = f"exactly, over the full {size}-token vocabulary"
    else:
        where = f"over the {size}-token group vocabulary V* (NTHR's shortcut)"
        agreement = summary.get("thr_group_agreement") or {}
        rho, signs = number(agreement.get("spearman")), number(agreement.get("sign_agreement"))
        if rho is not None and signs is not None:
            where += f"; vs the full vocabulary: Spearman {rho:.3f}, same sign {signs:.0%}"
    note = summary.get("thr_tau_note")
    return True, (
        f"THR computed {where}: dominant-token threshold τ = {tau:.4g}, "
        f"reweighting p = {summary.get('thr_p')}." + (f" {note}." if note else "")
    )


def thr_tokens_frame(group: dict[str, Any], sign: str = "positive") -> pd.DataFrame:
    """The group's top positive (or negative) THR tokens: response, position, token, value.

    The summary stores ``(response, t, value)`` with ``t`` counting the response tokens that
    have a prediction (position > 0); the table gives the response and the token's position
    in its run, both counted from 1, and its text.
    """
    if sign not in ("positive", "negative"):
        raise ValueError("sign must be 'positive' or 'negative'")
    responses = group.get("responses") or []
    rows = []
    for entry in (group.get("summary") or {}).get(f"top_{sign}_thr") or []:
        i, t, value = int(entry[0]), int(entry[1]), entry[2]
        tokens = [
            tok
            for tok in (responses[i].get("tokens") or [] if 0 <= i < len(responses) else [])
            if tok.get("position", 0) > 0
        ]
        tok = tokens[t] if 0 <= t < len(tokens) else {}
        rows.append(
            {
                "response": shown_number(i),
                "position": shown_number(tok.get("position", t)),
                "token": _visible(tok.get("text")),
                "THR": number(value),
            }
        )
    return pd.DataFrame(rows, columns=list(THR_COLUMNS))


def group_label(group: dict[str, Any]) -> str:
    """One line for a group in a picker: prompt, verifier, correct share, time."""
    prompt = " ".join(str(group.get("prompt") or "").split())
    if len(prompt) > 60:
        prompt = prompt[:59] + "…"
    return (
        f"{prompt} · {group.get('verifier')} · {group.get('n_correct')}/{group.get('n')} "
        f"correct · {str(group.get('created_at', ''))[:19]}"
    )


def response_label(response: dict[str, Any]) -> str:
    """One line for a response in a picker: index, right / wrong, reward, start of the text."""
    text = _visible(response.get("text"))
    if len(text) > 50:
        text = text[:49] + "…"
    mark = "✗" if is_incorrect(response) else "✓"
    index = shown_number(response.get("index")) or "?"
    return f"#{index} {mark} reward {_fmt(response.get('reward'), '.2g')} · {text}"
