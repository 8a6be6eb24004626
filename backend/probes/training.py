"""Training and evaluating hallucination probes on span-labelled data.

Labelled JSONL, one example per line, in any of three shapes:

* ``{"prompt": ..., "response": ..., "spans": [...]}`` (optional ``"system"``): scored through
  the chat template; span offsets index the *response*;
* ``{"text": ..., "spans": [...]}``: scored as raw text; offsets index the text;
* the probe paper's release format ``{"conversation": [{role, content}, ...],
  "annotations": [{"span", "label", "index"}, ...]}`` (last turn = response).

A span is ``{"start", "end", "label"}`` or ``{"span": text, "index": offset, "label"}``
(located at ``index``, else its first occurrence). Labels: 1 / true / ``"hallucinated"`` /
``"Not Supported"`` / ``"Insufficient Information"`` = hallucinated; 0 / false /
``"supported"`` / ``"Supported"`` = supported; ``"N/A"`` = ignored. Optional ``"split"``
(``train`` / ``test``) fixes the held-out set; otherwise a hash of the example decides.
Everything is validated before any model work; problems name their line.

Evaluation on the held-out split reports token AUC of the probe next to three baselines that
come from the same forward pass (entropy, 1 - p(token)) and from CCP, plus span-max AUCs.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from tokenprism.analysis.probe import (
    LabelledSpan,
    LinearProbe,
    ProbeExample,
    ProbeTrainParams,
    TokenLabels,
    evaluate_scores,
    roc_curve,
    span_token_labels,
    train_probe,
)
from tokenprism.analysis.scoring import ScoredSequence, ScoringParams, score_forward
from tokenprism.backend.audit.ingest import MAX_ERRORS, TranscriptError
from tokenprism.backend.audit.upload import length_batches
from tokenprism.backend.errors import UserError
from tokenprism.backend.models.loader import LoadedModel
from tokenprism.backend.probes.factbank import split_of
from tokenprism.backend.scoring.encoding import EncodedText, encode_pair, encode_text
from tokenprism.backend.scoring.extras import ExtraPlan, ExtraRequest
from tokenprism.backend.scoring.runner import forward_batch, score_batch

_POSITIVE = {
    "1",
    "true",
    "hallucinated",
    "hallucination",
    "not supported",
    "insufficient information",
}
_NEGATIVE = {"0", "false", "supported", "correct"}
_IGNORED = {"n/a", "na", "ignore", "unknown"}
BASELINES = ("entropy", "one_minus_prob", "ccp")


@dataclass
class LabelledText:
    """One parsed line: what to encode and its spans (offsets into ``response`` or ``text``)."""

    line: int
    prompt: str | None
    response: str
    system: str | None
    spans: list[LabelledSpan]
    split: str | None
    meta: dict[str, Any] = field(default_factory=dict)


def _label(value: Any) -> int | None:
    key = str(value).strip().casefold()
    if isinstance(value, bool):
        key = "1" if value else "0"
    if key in _POSITIVE:
        return 1
    if key in _NEGATIVE:
        return 0
    if key in _IGNORED:
        return None
    raise ValueError(f"unknown span label {value!r} (use 1/0, hallucinated/supported or N/A)")


def _span(raw: Any, body: str) -> LabelledSpan | None:
    if not isinstance(raw, dict):
        raise ValueError("each span must be an object")
    label = _label(raw.get("label"))
    if "start" in raw or "end" in raw:
        start, end = raw.get("start"), raw.get("end")
        if not isinstance(start, int) or not isinstance(end, int) or isinstance(start, bool):
            raise ValueError("span start and end must be integers")
        if not 0 <= start < end <= len(body):
            raise ValueError(f"span [{start}, {end}) is outside the text (length {len(body)})")
    elif isinstance(raw.get("span"), str) and raw["span"]:
        text, index = raw["span"], raw.get("index")
        if isinstance(index, int) and body[index : index + len(text)] == text:
            start = index
        else:
            found = body.find(text, index if isinstance(index, int) and index >= 0 else 0)
            start = found if found >= 0 else body.find(text)
        if start < 0:
            raise ValueError(f"span text {text[:40]!r} does not occur in the response")
        end = start + len(text)
    else:
        raise ValueError('a span needs "start" and "end", or "span" (its text)')
    return None if label is None else LabelledSpan(start, end, label)


def parse_labelled(data: str, source: str) -> list[LabelledText]:
    """Parse and validate labelled JSONL; raise :class:`TranscriptError` naming the lines."""
    out: list[LabelledText] = []
    problems: list[tuple[int, str]] = []
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("each line must be a JSON object")
            out.append(_parse_object(obj, number))
        except (ValueError, TypeError) as err:
            problems.append((number, str(err)))
            if len(problems) > MAX_ERRORS * 10:
                break
    if problems:
        raise TranscriptError(source, problems)
    if not out:
        raise UserError(f"{source} holds no labelled examples")
    return out


def _parse_object(obj: dict[str, Any], number: int) -> LabelledText:
    prompt: str | None
    if "conversation" in obj:
        turns = obj["conversation"]
        if not isinstance(turns, list) or len(turns) < 2:
            raise ValueError('"conversation" needs at least a user and an assistant turn')
        prompt, response = turns[-2].get("content"), turns[-1].get("content")
        raw_spans = obj.get("annotations", [])
    elif "text" in obj:
        prompt, response = None, obj["text"]
        raw_spans = obj.get("spans", [])
    elif "response" in obj:
        prompt, response = obj.get("prompt", ""), obj["response"]
        raw_spans = obj.get("spans", [])
    else:
        raise ValueError('expected "prompt"/"response", "text" or "conversation"')
    if not isinstance(response, str) or not response.strip():
        raise ValueError("the response (or text) must be a non-empty string")
    if prompt is not None and not isinstance(prompt, str):
        raise ValueError("the prompt must be a string")
    if not isinstance(raw_spans, list):
        raise ValueError("spans must be a list")
    spans = [s for s in (_span(r, response) for r in raw_spans) if s is not None]
    split = obj.get("split")
    if split not in (None, "train", "test"):
        raise ValueError('"split" must be "train" or "test"')
    system = obj.get("system")
    meta: dict[str, Any] = {k: obj[k] for k in ("table", "expected") if k in obj}
    return LabelledText(number, prompt, response, system, spans, split, meta)


def encode_labelled(
    lm: LoadedModel, items: Sequence[LabelledText], source: str
) -> list[tuple[EncodedText, list[LabelledSpan]]]:
    """Encode every example; spans move to full-text offsets. Fails naming the lines."""
    template = bool(getattr(lm.tokenizer, "chat_template", None))
    out, problems = [], []
    for it in items:
        try:
            if it.prompt is None:
                enc = encode_text(lm.tokenizer, it.response, context_length=lm.context_length)
            else:
                enc = encode_pair(
                    lm.tokenizer,
                    it.prompt,
                    it.response,
                    context_length=lm.context_length,
                    template=template,
                    system_prompt=it.system,
                )
            base = enc.response_span[0]
            if enc.text[base : base + len(it.response)] != it.response:
                raise UserError("the chat template changes the response text; spans cannot map")
            spans = [LabelledSpan(s.start + base, s.end + base, s.label) for s in it.spans]
            out.append((enc, spans))
        except UserError as err:
            problems.append((it.line, str(err)))
    if problems:
        raise TranscriptError(source, problems)
    return out


def labels_of(enc: EncodedText, spans: Sequence[LabelledSpan]) -> TokenLabels:
    offsets = torch.tensor(enc.offsets, dtype=torch.long).reshape(-1, 2)
    eligible = ~torch.tensor(enc.is_prompt, dtype=torch.bool)
    return span_token_labels(offsets, eligible, spans)


@dataclass
class Collected:
    """Per example: hidden states of the chosen layers at response positions, the labels there,
    and the one-pass scores (for the baselines)."""

    features: dict[int, Tensor]  # layer -> [n_response, d_model]
    labels: TokenLabels  # restricted to response positions
    positions: Tensor  # [n_response] positions in the full sequence
    scored: ScoredSequence
    encoded: EncodedText


def _restrict(labels: TokenLabels, keep: Tensor) -> TokenLabels:
    return TokenLabels(
        labels=labels.labels[keep],
        weights=labels.weights[keep],
        span_ids=labels.span_ids[keep],
        span_labels=labels.span_labels,
        unmatched=labels.unmatched,
    )


def collect(
    lm: LoadedModel,
    examples: Sequence[tuple[EncodedText, list[LabelledSpan]]],
    layers: Sequence[int],
    *,
    batch_tokens: int = 4096,
    progress: Callable[[int, int], None] | None = None,
) -> list[Collected]:
    """One forward pass per batch: features for ``layers`` and the one-pass metrics."""
    out: list[Collected | None] = [None] * len(examples)
    params = ScoringParams(layer_metrics=False)
    done = 0
    for batch in length_batches([e.n_tokens for e, _ in examples], batch_tokens):
        encoded = [examples[i][0] for i in batch]
        model_out, ids, mask = forward_batch(lm, encoded)
        response = torch.zeros_like(mask, dtype=torch.bool)
        for row, enc in enumerate(encoded):
            response[row, : enc.n_tokens] = torch.tensor([not p for p in enc.is_prompt])
        with torch.inference_mode():
            scored = score_forward(model_out.logits, None, ids, mask.bool(), response, params)
        hidden = model_out.hidden_states
        for row, i in enumerate(batch):
            enc, spans = examples[i]
            keep = ~torch.tensor(enc.is_prompt, dtype=torch.bool)
            positions = keep.nonzero().squeeze(-1)
            feats = {
                layer: hidden[layer + 1][row, : enc.n_tokens][keep].float().cpu().clone()
                for layer in layers
            }
            out[i] = Collected(
                feats, _restrict(labels_of(enc, spans), keep), positions, scored[row], enc
            )
        del model_out, hidden
        done += len(batch)
        if progress:
            progress(done, len(examples))
    return [c for c in out if c is not None]


def _auc_or_nan(metrics: dict[str, float], key: str) -> float | None:
    value = metrics.get(key, math.nan)
    return None if value is None or math.isnan(value) else round(float(value), 4)


def _roc_points(scores: Tensor, labels: Tensor, keep: Tensor, limit: int = 200) -> dict[str, Any]:
    s, y = scores[keep], labels[keep]
    if not 0 < int((y == 1).sum()) < len(y):
        return {"fpr": [], "tpr": []}
    fpr, tpr, _ = roc_curve(s, y)
    step = max(1, len(fpr) // limit)
    idx = list(range(0, len(fpr), step))
    if idx[-1] != len(fpr) - 1:
        idx.append(len(fpr) - 1)
    return {
        "fpr": [round(float(fpr[i]), 4) for i in idx],
        "tpr": [round(float(tpr[i]), 4) for i in idx],
    }


def baseline_scores(c: Collected) -> dict[str, Tensor]:
    """Token scores oriented so that higher = more likely hallucinated."""
    pos = c.positions
    out = {
        "entropy": c.scored.token["entropy"][pos].float(),
        "one_minus_prob": 1.0 - c.scored.token["prob"][pos].float(),
    }
    if "ccp" in c.scored.token:
        out["ccp"] = 1.0 - c.scored.token["ccp"][pos].float()
    return out


def evaluate(
    probe: LinearProbe, layer: int, collected: Sequence[Collected], *, roc: bool = True
) -> dict[str, Any]:
    """Token and span-max AUCs of the probe and the baselines on ``collected``."""
    scores: dict[str, list[Tensor]] = {"probe": []}
    labels, span_ids, span_labels = [], [], []
    offset = 0
    for c in collected:
        with torch.no_grad():
            scores["probe"].append(probe.probabilities(c.features[layer]))
        for name, value in baseline_scores(c).items():
            scores.setdefault(name, []).append(value)
        labels.append(c.labels.labels)
        ids = c.labels.span_ids
        span_ids.append(torch.where(ids >= 0, ids + offset, ids))
        span_labels.append(c.labels.span_labels)
        offset += len(c.labels.span_labels)
    y, sid, sl = torch.cat(labels), torch.cat(span_ids), torch.cat(span_labels)
    report: dict[str, Any] = {"token_auc": {}, "span_max_auc": {}, "detail": {}}
    curves: dict[str, Any] = {}
    for name, parts in scores.items():
        if len(parts) != len(collected):
            continue  # CCP only where it was computed
        s = torch.cat(parts)
        m = evaluate_scores(s, y, sid, sl)
        report["token_auc"][name] = _auc_or_nan(m, "token_auc")
        report["span_max_auc"][name] = _auc_or_nan(m, "span_max_auc")
        report["detail"][name] = {k: _auc_or_nan(m, k) for k in m}
        if roc:
            curves[name] = _roc_points(s, y, (y != -100) & ~torch.isnan(s))
    first = next(iter(report["detail"].values()))
    report.update(
        n_examples=len(collected),
        n_tokens=int(first["n_tokens"] or 0),
        n_positive_tokens=int(first["n_positive_tokens"] or 0),
        n_spans=int(first["n_spans"] or 0),
        n_positive_spans=int(first["n_positive_spans"] or 0),
    )
    if roc:
        report["roc"] = curves
    return report


def default_layer(lm: LoadedModel) -> int:
    """The second-to-last block, as in the probe paper's example configuration."""
    return max(0, int(lm.model.config.num_hidden_layers) - 2)


def _examples(collected: Sequence[Collected], layer: int) -> list[ProbeExample]:
    return [ProbeExample(c.features[layer], c.labels) for c in collected]


def select_layer(
    collected: Sequence[Collected], layers: Sequence[int], params: ProbeTrainParams
) -> tuple[int, dict[int, float | None]]:
    """Pick the layer with the best token AUC on a validation part of the *training* split
    (every fifth example), so the held-out split never influences the choice."""
    val = [c for i, c in enumerate(collected) if i % 5 == 0]
    fit = [c for i, c in enumerate(collected) if i % 5 != 0]
    scores: dict[int, float | None] = {}
    for layer in layers:
        probe, _ = train_probe(_examples(fit, layer), params)
        scores[layer] = evaluate(probe, layer, val, roc=False)["token_auc"]["probe"]
    best = max(layers, key=lambda lay: scores[lay] or -1.0)
    return best, scores


def dataset_sha256(data: str) -> str:
    return hashlib.sha256(data.encode()).hexdigest()


def _candidate_layers(lm: LoadedModel, layer: int | str | None) -> list[int]:
    """Blocks to try: every third for ``auto``, else the one asked for (default: second-last)."""
    n_layers = int(lm.model.config.num_hidden_layers)
    if isinstance(layer, int) and not 0 <= layer < n_layers:
        raise UserError(f"layer {layer} is out of range: the model has blocks 0..{n_layers - 1}")
    if layer == "auto":
        return sorted({*range(n_layers - 1, -1, -3)})
    return [default_layer(lm) if layer is None else int(layer)]


def _split(collected: list[Any], splits: list[str]) -> tuple[list[Any], list[Any]]:
    """Train and test examples; both must be non-empty and training must have a positive."""
    train = [c for c, s in zip(collected, splits, strict=True) if s == "train"]
    test = [c for c, s in zip(collected, splits, strict=True) if s == "test"]
    if not train or not test:
        raise UserError(
            f"need examples in both splits (train {len(train)}, test {len(test)}); "
            'add more data or set "split" on some lines'
        )
    if not any(bool((c.labels.labels == 1).any()) for c in train):
        raise UserError("the training split has no hallucinated token; nothing to learn")
    return train, test


def train_and_evaluate(
    lm: LoadedModel,
    data: str,
    source: str,
    *,
    layer: int | str | None = None,
    params: ProbeTrainParams | None = None,
    test_fraction: float = 0.3,
    ccp_plan: ExtraPlan | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    model_lock: AbstractContextManager[Any] | None = None,
) -> tuple[LinearProbe, int, dict[str, Any]]:
    """Parse, encode, collect features, train on the train split, evaluate on the test split.

    ``layer``: a block index, ``auto`` (select on a validation part of the training split
    among every third block), or None (the second-to-last block). ``ccp_plan`` adds CCP as a
    baseline on the held-out split (it needs an NLI judge). Returns the probe, its layer and
    the report. ``model_lock`` is held while the model runs (features, CCP), not while the
    head trains, so a server keeps scoring other requests meanwhile.
    """
    lock = model_lock or nullcontext()
    params = params or ProbeTrainParams()
    items = parse_labelled(data, source)
    encoded = encode_labelled(lm, items, source)
    candidates = _candidate_layers(lm, layer)
    splits = [
        it.split or split_of(f"{it.prompt or ''}\x00{it.response}", test_fraction) for it in items
    ]

    def report_progress(stage: str) -> Callable[[int, int], None]:
        return lambda done, total: progress(stage, done, total) if progress else None

    with lock:
        collected = collect(lm, encoded, candidates, progress=report_progress("features"))
    train, test = _split(collected, splits)
    layer_scores: dict[int, float | None] = {}
    chosen = candidates[0]
    if len(candidates) > 1:
        chosen, layer_scores = select_layer(train, candidates, params)
    total_steps: list[int] = []

    def on_step(step: int, total: int, _loss: float) -> None:
        total_steps[:] = [total]
        if progress:
            progress("training", step, total)

    probe, history = train_probe(_examples(train, chosen), params, on_step)
    if ccp_plan is not None:
        for i, c in enumerate(test):
            with lock:
                ccp_plan.apply(lm, [c.encoded], [c.scored], None, rescore=score_batch)
            if progress:
                progress("ccp baseline", i + 1, len(test))
    report = {
        "model": lm.name,
        "model_label": lm.label,
        "model_revision": lm.revision,
        "layer": chosen,
        "layer_selection": {str(k): v for k, v in layer_scores.items()} or None,
        "data": {"source": source, "sha256": dataset_sha256(data), "n_examples": len(items)},
        "train": {
            "n_examples": len(train),
            "n_tokens": int(sum(int((c.labels.labels != -100).sum()) for c in train)),
            "n_spans": int(sum(len(c.labels.span_labels) for c in train)),
            "n_positive_spans": int(sum(int(c.labels.span_labels.sum()) for c in train)),
            "final_loss": round(history[-1], 5) if history else None,
            "steps": total_steps[0] if total_steps else len(history),
        },
        "held_out": evaluate(probe, chosen, test),
        "params": params.as_dict(),
        "test_fraction": test_fraction,
        "ccp_judge": ccp_plan.judge.name if ccp_plan is not None and ccp_plan.judge else None,
    }
    return probe, chosen, report


def ccp_baseline_plan(lm: LoadedModel, judge: str | None, settings: Any) -> ExtraPlan:
    from tokenprism.backend.scoring.extras import plan_extras

    return plan_extras(lm, ExtraRequest(metrics=("ccp",), judge=judge), settings)
