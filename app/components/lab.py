"""The steering & decoding lab: experiment curves, per-rule summaries, output tables, pickers.

Every function is pure: it takes API JSON (``GET /api/v1/experiments/{id}`` or its
``summary``) or the text of a form field and returns a ``go.Figure``, a ``pd.DataFrame``, a
list or a string. Text from the data that plotly renders (prompts, vector names, modes in
titles, labels and hovers) is put on one line (newlines drawn as ↵) and HTML-escaped, since
plotly reads a subset of HTML in them.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from tokenprism.backend.display import number, shown_number

KINDS: dict[str, str] = {
    "refusal-sweep": "Refusal-bias sweep",
    "east-sweep": "EAST steering sweep",
    "grains-sweep": "GrAInS steering sweep",
    "decode": "Decoding rule",
}
DECODE_RULES: dict[str, str] = {
    "ead": "EAD: exploratory annealed decoding",
    "cntp": "CNTP: cautious next-token prediction",
    "switch": "Switch: entropy-adaptive small / large model",
    "latr": "LATR: lookahead branching",
}
# The token metric a decode output is best read by: the rule's own per-token signal.
RULE_SIGNALS: dict[str, str] = {
    "ead": "ead_temperature",
    "cntp": "cntp_trials",
    "switch": "large_model",
    "latr": "latr_branch",
}
# The per-condition key of a sweep's outputs.
CONDITION_KEYS: dict[str, str] = {
    "refusal-sweep": "value",
    "east-sweep": "beta",
    "grains-sweep": "beta",
}
MARGIN = {"l": 10, "r": 10, "t": 40, "b": 10}
LABEL_CHARS = 28
HOVER_LINE_CHARS = 60
COLOURS = {
    "all": "#1f77b4",
    "benign": "#2ca02c",
    "should_refuse": "#d62728",
    "p_refusal": "#7f7f7f",
    "next": "#1f77b4",
    "output": "#ff7f0e",
    "margin": "#2ca02c",
}


@dataclass(frozen=True)
class RuleParam:
    """One keyword parameter of a decoding rule, as a number input shows it."""

    name: str
    label: str
    default: float | int
    min_value: float | int
    max_value: float | int
    step: float | int
    help: str = ""


# The main parameters of each rule (backend.decoding_rules), with the rules' own defaults.
DECODE_PARAMS: dict[str, tuple[RuleParam, ...]] = {
    "ead": (
        RuleParam("tau_max", "τ max", 1.2, 0.05, 5.0, 0.05, "starting temperature"),
        RuleParam("tau_min", "τ min", 0.1, 0.01, 5.0, 0.05, "final temperature"),
        RuleParam("d", "decay d", 200.0, 1.0, 10_000.0, 10.0, "annealing horizon in tokens"),
        RuleParam("warmup", "warm-up", 10, 0, 1000, 1, "tokens at τ max before annealing"),
        RuleParam("top_p", "top-p", 1.0, 0.05, 1.0, 0.05),
    ),
    "cntp": (
        RuleParam("max_trials", "max trials", 10, 1, 64, 1, "trials at the highest entropy"),
        RuleParam("h_low", "H low (nats)", 0.01, 0.0, 20.0, 0.01, "one trial below this"),
        RuleParam("h_high", "H high (nats)", 1.5, 0.0, 20.0, 0.1, "max trials above this"),
        RuleParam("temperature", "temperature", 0.8, 0.05, 5.0, 0.05),
        RuleParam("top_p", "top-p", 0.95, 0.05, 1.0, 0.05),
        RuleParam("max_trial_tokens", "max trial tokens", 32, 1, 512, 1),
    ),
    "switch": (
        RuleParam(
            "threshold_bits", "threshold (bits)", 2.0, 0.0, 20.0, 0.1, "large model above this"
        ),
        RuleParam("window", "window", 5, 1, 256, 1, "rolling-mean window of the entropy"),
        RuleParam("temperature", "temperature", 0.0, 0.0, 5.0, 0.05, "0 = greedy"),
    ),
    "latr": (
        RuleParam("tau_abs", "τ abs", 0.25, 0.0, 1.0, 0.05, "runner-up probability to branch"),
        RuleParam("tau_rel", "τ rel", 0.15, 0.0, 1.0, 0.05, "top-2 gap to branch"),
        RuleParam("max_branches", "max branches", 4, 0, 64, 1),
        RuleParam("lookahead", "lookahead", 8, 1, 256, 1, "tokens compared before pruning"),
        RuleParam("tau_ed", "τ edit distance", 0.4, 0.0, 1.0, 0.05, "prune below this"),
    ),
}


# ---- helpers -------------------------------------------------------------------------------


def _fmt(value: Any, spec: str = ".4g") -> str:
    finite = number(value)
    return "—" if finite is None else format(finite, spec)


def _oneline(text: Any) -> str:
    """Prompt or response text on one line: newlines drawn as ↵, other blanks collapsed."""
    lines = ("" if text is None else str(text)).replace("\r\n", "\n").split("\n")
    return "↵".join(" ".join(line.split()) for line in lines)


def _truncated(text: Any, limit: int = LABEL_CHARS) -> str:
    """Plain (unescaped) text on one line, cut to ``limit`` characters."""
    shown = _oneline(text)
    return shown[: limit - 1] + "…" if len(shown) > limit else shown


def _wrapped(text: Any, width: int = HOVER_LINE_CHARS) -> str:
    """The full text on one line, escaped, broken into lines of ``width`` characters."""
    shown = _oneline(text)
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


def _series(values: Iterable[Any] | None) -> list[float | None]:
    return [number(v) for v in values or []]


# ---- form fields ---------------------------------------------------------------------------


def parse_numbers(text: str) -> list[float]:
    """Numbers separated by commas, semicolons or whitespace, in order.

    Raises:
        ValueError: for an entry that is not a finite number, naming it.
    """
    values: list[float] = []
    for part in text.replace(";", ",").replace(",", " ").split():
        try:
            parsed = float(part)
        except ValueError:
            raise ValueError(f"{part!r} is not a number") from None
        if not math.isfinite(parsed):
            raise ValueError(f"{part!r} is not a finite number")
        values.append(parsed)
    return values


def parse_prompts(text: str) -> list[dict[str, Any]]:
    """Prompts typed one per line: ``{"prompt", "should_refuse"}`` for each non-blank line.

    A line starting with ``!`` is a prompt that should be refused (the ``!`` and the blanks
    after it are dropped); other lines are benign. Surrounding blanks are stripped.
    """
    prompts = []
    for line in text.splitlines():
        stripped = line.strip()
        should = stripped.startswith("!")
        prompt = stripped[1:].strip() if should else stripped
        if prompt:
            prompts.append({"prompt": prompt, "should_refuse": should})
    return prompts


# ---- experiments and their outputs ---------------------------------------------------------


def experiment_label(row: dict[str, Any]) -> str:
    """One line for an experiment in a picker: kind, time, short id, unfinished mark."""
    kind = KINDS.get(str(row.get("kind")), str(row.get("kind")))
    mark = "" if row.get("finished", row.get("summary") is not None) else " · unfinished"
    created = str(row.get("created_at", ""))[:19].replace("T", " ")
    return f"{kind} · {created} · {str(row.get('experiment_id', ''))[:8]}{mark}"


def prompt_texts(
    experiment: dict[str, Any], shipped: Sequence[dict[str, Any]] | None = None
) -> list[str]:
    """The experiment's prompts in order: its ``params.prompts``, or the shipped refusal set
    (what the backend uses when a sweep's prompt list is empty)."""
    params = experiment.get("params") or {}
    given = params.get("prompts") or []
    if not given and experiment.get("kind") == "grains-sweep":
        # a GrAInS sweep without prompts generates from its examples' prompts
        given = [e.get("prompt", "") for e in params.get("examples") or [] if isinstance(e, dict)]
    elif not given and experiment.get("kind") in CONDITION_KEYS:
        given = list(shipped or [])
    return [str(p.get("prompt", "")) if isinstance(p, dict) else str(p) for p in given]


def _prompt_index(experiment: dict[str, Any], i: int, output: dict[str, Any], n: int) -> int | None:
    index = output.get("prompt_index")
    if isinstance(index, int) and not isinstance(index, bool):
        return index
    if experiment.get("kind") == "refusal-sweep" and n:
        # stored value by value, each value over every prompt in order
        return i % n
    return None


def _refusal_mode(experiment: dict[str, Any]) -> str:
    summary = experiment.get("summary") or {}
    params = experiment.get("params") or {}
    return str(summary.get("mode") or params.get("resolved_mode") or params.get("mode") or "")


def outputs_frame(
    experiment: dict[str, Any], shipped: Sequence[dict[str, Any]] | None = None
) -> pd.DataFrame:
    """One row per output run: its condition, the prompt, the response and the run id.

    Args:
        experiment: ``GET /experiments/{id}``.
        shipped: the shipped refusal prompts (``GET /experiments/prompts``), for sweeps that
            ran on them (an empty prompt list).

    Returns:
        ``#`` (from 1), then the condition columns of the kind (refusal: ``bias`` (``threshold`` in
        token mode), ``prompt id``, ``should refuse``, ``P(refusal)``, ``refused``; EAST:
        ``beta``, ``next-token entropy``; decode: ``rule``, ``branch``, ``stop``, ``tokens``),
        then ``prompt #`` (from 1), ``prompt``, ``response`` (the output text) and ``run id``.
        Texts are as stored.
    """
    kind = experiment.get("kind")
    prompts = prompt_texts(experiment, shipped)
    if kind == "refusal-sweep":
        value_name = "threshold" if _refusal_mode(experiment) == "tokens" else "bias"
        condition = [value_name, "prompt id", "should refuse", "P(refusal)", "refused"]
    elif kind == "east-sweep":
        condition = ["beta", "next-token entropy"]
    elif kind == "grains-sweep":
        condition = ["beta", "preference margin"]
    elif kind == "decode":
        condition = ["rule", "branch", "stop", "tokens"]
    else:
        condition = []
    columns = ["#", *condition, "prompt #", "prompt", "response", "run id"]
    rows = []
    for i, out in enumerate(experiment.get("outputs") or []):
        index = _prompt_index(experiment, i, out, len(prompts))
        row: dict[str, Any] = {"#": i + 1}
        if kind == "refusal-sweep":
            row.update(
                {
                    condition[0]: number(out.get("value")),
                    "prompt id": out.get("prompt_id"),
                    "should refuse": out.get("should_refuse"),
                    "P(refusal)": number(out.get("p_refusal")),
                    "refused": out.get("refused"),
                }
            )
        elif kind == "east-sweep":
            row.update(
                {
                    "beta": number(out.get("beta")),
                    "next-token entropy": number(out.get("next_token_entropy")),
                }
            )
        elif kind == "grains-sweep":
            row.update(
                {
                    "beta": number(out.get("beta")),
                    "preference margin": number(out.get("preference_margin")),
                }
            )
        elif kind == "decode":
            row.update(
                {
                    "rule": out.get("rule"),
                    "branch": out.get("branch_id"),
                    "stop": out.get("stop_reason"),
                    "tokens": out.get("n_generated"),
                }
            )
        row.update(
            {
                "prompt #": shown_number(index),
                "prompt": prompts[index]
                if index is not None and 0 <= index < len(prompts)
                else None,
                "response": out.get("response"),
                "run id": out.get("run_id"),
            }
        )
        rows.append(row)
    frame = pd.DataFrame(rows, columns=columns)
    frame["prompt #"] = frame["prompt #"].astype("Int64")
    return frame


def output_labels(
    experiment: dict[str, Any], shipped: Sequence[dict[str, Any]] | None = None
) -> list[str]:
    """One line per output for a picker: index, condition, prompt and the response's start."""
    kind = experiment.get("kind")
    prompts = prompt_texts(experiment, shipped)
    labels = []
    for i, out in enumerate(experiment.get("outputs") or []):
        index = _prompt_index(experiment, i, out, len(prompts))
        if kind == "refusal-sweep":
            name = "threshold" if _refusal_mode(experiment) == "tokens" else "bias"
            condition = f"{name} {_fmt(out.get('value'), 'g')}"
            if out.get("refused"):
                condition += " · refused"
        elif kind in ("east-sweep", "grains-sweep"):
            condition = f"β {_fmt(out.get('beta'), 'g')}"
        elif kind == "decode":
            condition = str(out.get("rule"))
            if out.get("branch_id"):
                condition += f" branch {out.get('branch_id')}"
        else:
            condition = str(kind)
        prompt = "?"
        if index is not None:
            text = prompts[index] if 0 <= index < len(prompts) else ""
            prompt = f"prompt {shown_number(index)}" + (
                f" “{_truncated(text, 24)}”" if text else ""
            )
        reply = _truncated(out.get("response"), 32)
        labels.append(f"#{shown_number(i)} · {condition} · {prompt} → {reply}")
    return labels


def default_pair(
    experiment: dict[str, Any], shipped: Sequence[dict[str, Any]] | None = None
) -> tuple[int, int]:
    """The two outputs to compare first (indices into ``outputs``).

    Sweeps: the first prompt's output at the condition closest to 0 (the unsteered baseline)
    and, for the same prompt, the one at the largest ``|condition|`` (the larger value on a
    tie). Decode: the first two outputs. One output: ``(0, 0)``.
    """
    outputs = experiment.get("outputs") or []
    if len(outputs) < 2:
        return 0, 0
    key = CONDITION_KEYS.get(str(experiment.get("kind")))
    if key is None:
        return 0, 1
    n = len(prompt_texts(experiment, shipped))
    first: list[tuple[int, float]] = []
    for i, out in enumerate(outputs):
        value = number(out.get(key))
        if value is not None and _prompt_index(experiment, i, out, n) in (0, None):
            first.append((i, value))
    if len(first) < 2:
        return 0, 1
    base = min(first, key=lambda iv: (abs(iv[1]), iv[0]))
    others = [iv for iv in first if iv[1] != base[1]] or [iv for iv in first if iv != base]
    far = max(others, key=lambda iv: (abs(iv[1]), iv[1]))
    return base[0], far[0]


# ---- refusal sweep -------------------------------------------------------------------------


def _refusal_counts(
    summary: dict[str, Any], values: Sequence[Any]
) -> dict[str, list[tuple[int, int]]]:
    """``(refused, prompts)`` per value, over all prompts and by group, from ``per_prompt``."""
    counts: dict[str, list[tuple[int, int]]] = {}
    rows = summary.get("per_prompt") or []
    for group, wanted in (("all", None), ("benign", False), ("should_refuse", True)):
        per_value = []
        for value in values:
            chosen = [
                r
                for r in rows
                if r.get("value") == value
                and (wanted is None or bool(r.get("should_refuse")) == wanted)
            ]
            per_value.append((sum(bool(r.get("refused")) for r in chosen), len(chosen)))
        counts[group] = per_value
    return counts


def refusal_curve_figure(summary: dict[str, Any] | None) -> go.Figure:
    """Refusal rate against the bias (or threshold), overall and by group, with P(refusal).

    Args:
        summary: a refusal sweep's ``summary``: ``mode``, ``curves`` (``value``,
            ``refusal_rate``, ``p_refusal``), ``refusal_rate_by_group`` (``benign``,
            ``should_refuse``; None where a group has no prompt) and ``per_prompt``.

    Returns:
        ``"refusal rate (all)"`` and, for groups with prompts, ``"benign"`` and ``"should
        refuse"`` (lines + markers on the left axis, 0..1; the hover gives "k of n refused"),
        and ``"mean P(refusal)"`` (dashed, on a second axis on the right, 0..1): the
        probability of the refusal marker (or ``[refuse]``) at the first response position
        after the bias. The x title names the bias (marker mode) or the threshold (token mode).
    """
    summary = summary or {}
    curves = summary.get("curves") or {}
    values = list(curves.get("value") or [])
    if not values:
        return _empty("no refusal curve yet")
    x = [number(v) for v in values]
    groups = summary.get("refusal_rate_by_group") or {}
    counts = _refusal_counts(summary, values)
    mode = str(summary.get("mode") or "marker")
    fig = go.Figure()
    for key, name, ys, dash in (
        ("all", "refusal rate (all)", curves.get("refusal_rate"), "solid"),
        ("benign", "benign", groups.get("benign"), "dot"),
        ("should_refuse", "should refuse", groups.get("should_refuse"), "dot"),
    ):
        y = _series(ys)
        if key != "all" and all(v is None for v in y):
            continue
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                customdata=[f"{k} of {n}" for k, n in counts[key]],
                mode="lines+markers",
                name=name,
                line={"color": COLOURS[key], "dash": dash, "width": 3 if key == "all" else 2},
                marker={"size": 8},
                hovertemplate=f"{name}<br>x = %{{x:g}}<br>refusal rate %{{y:.0%}} "
                "(%{customdata} refused)<extra></extra>",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=_series(curves.get("p_refusal")),
            mode="lines+markers",
            name="mean P(refusal)",
            yaxis="y2",
            line={"color": COLOURS["p_refusal"], "dash": "dash"},
            marker={"symbol": "diamond", "size": 7},
            hovertemplate="x = %{x:g}<br>mean P(refusal) at the first response token "
            "%{y:.3f}<extra></extra>",
        )
    )
    if mode == "tokens":
        x_title = "threshold on P([refuse]) (negative: the pairwise rule)"
        p_title = "mean P([refuse])"
    else:
        x_title = "logit bias on the refusal-marker tokens"
        p_title = "mean P(refusal marker)"
    fig.update_layout(
        title={"text": f"Refusal vs bias · mode {html.escape(mode, quote=True)}"},
        xaxis={"title": {"text": x_title}},
        yaxis={"title": {"text": "refusal rate"}, "range": [-0.05, 1.05], "tickformat": ".0%"},
        yaxis2={
            "title": {"text": p_title},
            "overlaying": "y",
            "side": "right",
            "range": [-0.05, 1.05],
            "showgrid": False,
        },
        hovermode="closest",
        legend={"orientation": "h", "y": -0.25},
        margin={**MARGIN, "r": 70},
        height=380,
    )
    return fig


# ---- EAST sweep ----------------------------------------------------------------------------


def east_curve_figure(summary: dict[str, Any] | None) -> go.Figure:
    """Mean next-token entropy and mean output entropy against the steering coefficient β.

    Args:
        summary: an EAST sweep's ``summary``: ``layer``, ``vector`` (``name``, ``norm``, ...)
            and ``curves`` (``beta``, ``next_token_entropy``, ``output_entropy``).

    Returns:
        ``"mean next-token entropy"`` (at the first response position) and ``"mean output
        entropy"`` (over the response tokens, scored with the vector applied), both in nats
        on one axis; the title names the vector (escaped) and the layer.
    """
    summary = summary or {}
    curves = summary.get("curves") or {}
    betas = list(curves.get("beta") or [])
    if not betas:
        return _empty("no entropy curve yet")
    x = [number(b) for b in betas]
    fig = go.Figure()
    for key, name, ys, where in (
        ("next", "mean next-token entropy", curves.get("next_token_entropy"), "first response"),
        ("output", "mean output entropy", curves.get("output_entropy"), "response tokens"),
    ):
        fig.add_trace(_beta_trace(x, ys, key, name, f"{name} ({where})"))
    vector = summary.get("vector") or {}
    name = html.escape(_oneline(vector.get("name") or "EAST"), quote=True)
    layer = summary.get("layer", vector.get("layer"))
    fig.update_layout(
        title={"text": f"Entropy vs β · vector “{name}” at layer {_fmt(layer, 'g')}"},
        xaxis={"title": {"text": "steering coefficient β"}},
        yaxis={"title": {"text": "entropy (nats)"}},
        hovermode="x unified",
        legend={"orientation": "h", "y": -0.25},
        margin=MARGIN,
        height=360,
    )
    return fig


def _beta_trace(
    x: list[float | None], ys: Any, key: str, name: str, hover: str, yaxis: str = "y"
) -> go.Scatter:
    """One curve of a strength sweep: ``ys`` (nats) against β, coloured by ``key``."""
    return go.Scatter(
        x=x,
        y=_series(ys),
        yaxis=yaxis,
        mode="lines+markers",
        name=name,
        line={"color": COLOURS[key], "width": 2},
        marker={"size": 8},
        hovertemplate=f"β = %{{x:g}}<br>{hover} %{{y:.3f}} nats<extra></extra>",
    )


def grains_curve_figure(summary: dict[str, Any] | None) -> go.Figure:
    """The GrAInS sweep: mean preference margin and mean output entropy against β.

    Args:
        summary: a GrAInS sweep's ``summary``: ``layer``, ``vector`` and ``curves`` (``beta``,
            ``preference_margin`` = mean log p(preferred) - log p(dispreferred) over the
            examples with the vector applied, ``output_entropy``).

    Returns:
        ``"mean preference margin"`` on the left axis and ``"mean output entropy"`` on the
        right one (both in nats, on different scales); the title names the vector (escaped)
        and the layer.
    """
    summary = summary or {}
    curves = summary.get("curves") or {}
    betas = list(curves.get("beta") or [])
    if not betas:
        return _empty("no GrAInS curve yet")
    x = [number(b) for b in betas]
    fig = go.Figure()
    for key, name, ys, axis in (
        ("margin", "mean preference margin", curves.get("preference_margin"), "y"),
        ("output", "mean output entropy", curves.get("output_entropy"), "y2"),
    ):
        fig.add_trace(_beta_trace(x, ys, key, name, name, yaxis=axis))
    vector = summary.get("vector") or {}
    name = html.escape(_oneline(vector.get("name") or "GrAInS"), quote=True)
    layer = summary.get("layer", vector.get("layer"))
    fig.update_layout(
        title={"text": f"Preference margin vs β · vector “{name}” at layer {_fmt(layer, 'g')}"},
        xaxis={"title": {"text": "steering coefficient β"}},
        yaxis={"title": {"text": "log p(preferred) − log p(dispreferred) (nats)"}},
        yaxis2={"title": {"text": "output entropy (nats)"}, "overlaying": "y", "side": "right"},
        hovermode="x unified",
        legend={"orientation": "h", "y": -0.25},
        margin={**MARGIN, "r": 60},
        height=360,
    )
    return fig


# ---- decode --------------------------------------------------------------------------------

# rule -> (per-prompt key, trace name, y title, overall summary key, y range)
_DECODE_MAIN: dict[str, tuple[str, str, str, str, list[float] | None]] = {
    "ead": (
        "mean_temperature",
        "mean temperature τ",
        "mean temperature τ",
        "mean_temperature",
        None,
    ),
    "cntp": ("mean_trials", "mean trials N", "mean trials per step N", "mean_trials", None),
    "switch": (
        "large_share",
        "large-model share",
        "share of tokens from the large model",
        "large_share",
        [0.0, 1.05],
    ),
}
LATR_COUNTS = (
    ("branches_spawned", "spawned", "#1f77b4"),
    ("branches_pruned", "pruned", "#d62728"),
    ("branches_returned", "returned", "#2ca02c"),
)


def decode_summary_figure(experiment: dict[str, Any] | None) -> go.Figure:
    """A decode experiment's per-prompt summary, by rule.

    Args:
        experiment: ``GET /experiments/{id}`` of kind ``decode``.

    Returns:
        Bars over the prompts (x: ``#i prompt…``, escaped; the hover has the full prompt,
        the stop reason and the token count): EAD the mean temperature τ, CNTP the mean
        number of trials, switch the large-model share of the tokens, each with a dashed
        ``"all tokens"`` line at the experiment-wide value; LATR the branches spawned,
        pruned and returned (grouped). A placeholder figure when there is no summary.
    """
    experiment = experiment or {}
    summary = experiment.get("summary") or {}
    rule = str(summary.get("rule") or (experiment.get("params") or {}).get("rule") or "")
    rows = list(summary.get("per_prompt") or [])
    if not rows:
        return _empty("no decoding summary yet")
    prompts = prompt_texts(experiment)
    x, hover = [], []
    for row in rows:
        index = row.get("prompt_index")
        text = prompts[index] if isinstance(index, int) and 0 <= index < len(prompts) else ""
        x.append(html.escape(f"#{shown_number(index) or '?'} {_truncated(text)}", quote=True))
        hover.append(
            [
                _wrapped(text),
                html.escape(str(row.get("stop_reason")), quote=True),
                row.get("n_tokens"),
            ]
        )
    template = (
        "<b>%{customdata[0]}</b><br>{what} %{y:.3g}<br>stop: %{customdata[1]} · "
        "%{customdata[2]} tokens<extra></extra>"
    )
    fig = go.Figure()
    if rule in _DECODE_MAIN:
        key, name, y_title, overall_key, y_range = _DECODE_MAIN[rule]
        fig.add_trace(
            go.Bar(
                x=x,
                y=[number(r.get(key)) for r in rows],
                customdata=hover,
                name=name,
                marker={"color": "#1f77b4"},
                hovertemplate=template.replace("{what}", name),
            )
        )
        overall = number(summary.get(overall_key))
        if overall is not None:
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=[overall] * len(x),
                    mode="lines",
                    name="all tokens",
                    line={"dash": "dash", "color": "#7f7f7f"},
                    hovertemplate=f"{name} over all tokens {overall:.3g}<extra></extra>",
                )
            )
    elif rule == "latr":
        y_title, y_range = "branches", None
        for key, name, colour in LATR_COUNTS:
            fig.add_trace(
                go.Bar(
                    x=x,
                    y=[number(r.get(key)) for r in rows],
                    customdata=hover,
                    name=name,
                    marker={"color": colour},
                    hovertemplate=template.replace("{what}", f"branches {name}"),
                )
            )
        fig.update_layout(barmode="group")
    else:
        return _empty(f"no chart for rule {html.escape(rule, quote=True)}")
    fig.update_layout(
        title={"text": html.escape(DECODE_RULES.get(rule, rule), quote=True)},
        xaxis={"title": {"text": "prompt"}, "type": "category"},
        yaxis={"title": {"text": y_title}, **({"range": y_range} if y_range else {})},
        legend={"orientation": "h", "y": -0.3},
        margin=MARGIN,
        height=360,
    )
    return fig


def decode_cards(summary: dict[str, Any] | None) -> list[tuple[str, str]]:
    """Headline numbers of a decode experiment as ``(label, value)`` pairs."""
    summary = summary or {}
    rule = summary.get("rule")
    cards = [
        ("prompts", _fmt(summary.get("n_prompts"), "g")),
        ("outputs", _fmt(summary.get("n_outputs"), "g")),
    ]
    if rule == "ead":
        cards.append(("mean τ", _fmt(summary.get("mean_temperature"), ".3f")))
    elif rule == "cntp":
        cards += [
            ("mean trials", _fmt(summary.get("mean_trials"), ".2f")),
            (
                "multi-trial chunks",
                f"{summary.get('multi_trial_chunks')} of {summary.get('chunks')}",
            ),
        ]
    elif rule == "switch":
        share = number(summary.get("large_share"))
        cards.append(("large-model share", "—" if share is None else f"{share:.0%}"))
    elif rule == "latr":
        cards += [(name, _fmt(summary.get(key), "g")) for key, name, _ in LATR_COUNTS]
    return cards
