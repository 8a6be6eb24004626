"""Linear hallucination probes on the residual stream (Obeso, Arditi et al. 2025).

"Real-Time Detection of Hallucinated Entities in Long-Form Generation" trains one linear head
``q_t = sigmoid(w . h_t + b)`` on the residual stream after a decoder block. Annotators mark
character spans of a response as hallucinated (1) or supported (0); tokens overlapping a span
take its label. The loss mixes a weighted token BCE with a span-max BCE (a span counts as
hallucinated when its most suspicious token is), annealed from token to span over training:

    L = (1 - omega) L_tok + omega L_span,    omega = min(1, (step / max_steps) / anneal_warmup)

Upstream fine-tunes LoRA adapters together with the head for one epoch; here only the head is
trained, on frozen features, so several epochs are cheap and the default is 20.

Everything here is tensor math on features a forward pass already produced: the backend
extracts hidden states, maps annotated spans to token offsets and stores the trained weights.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import skip_init

IGNORE = -100.0
LOGIT_CLAMP = 100.0  # upstream clips token logits before the BCE
STD_FLOOR = 1e-6  # features this flat carry no signal; dividing by ~0 would only amplify noise


@dataclass(frozen=True)
class LabelledSpan:
    """An annotated character span ``[start, end)`` of the full text.

    ``label`` is 1 for hallucinated and 0 for supported content.
    """

    start: int
    end: int
    label: int


@dataclass
class TokenLabels:
    """Per-token training targets of one sequence.

    Attributes:
        labels: ``[T]`` float32, 1. (hallucinated), 0. (not) or -100. (ignored).
        weights: ``[T]`` float32 token-loss weights, 0 for ignored tokens.
        span_ids: ``[T]`` long, the span a token belongs to, -1 outside every span. A token
            in several spans takes the first positive one, else the first one.
        span_labels: ``[n_spans]`` float32 labels of the spans, in input order.
        unmatched: indices of spans that cover no eligible token (e.g. they lie in the prompt
            or were truncated away); they contribute nothing to training or evaluation.
    """

    labels: Tensor
    weights: Tensor
    span_ids: Tensor
    span_labels: Tensor
    unmatched: list[int] = field(default_factory=list)


def span_token_labels(
    offsets: Tensor,
    eligible: Tensor,
    spans: Sequence[LabelledSpan],
    *,
    default_ignore: bool = False,
    pos_weight: float = 10.0,
    neg_weight: float = 10.0,
) -> TokenLabels:
    """Map annotated character spans to token labels, weights and span ids.

    A token overlaps a span when ``token_start < span_end and token_end > span_start``, so a
    span starting mid-token still claims that token. Zero-width tokens (special tokens, BOS)
    never belong to a span: they have no characters an annotator could have marked.

    Args:
        offsets: ``[T, 2]`` int character offsets ``[start, end)`` of each token in the text.
        eligible: ``[T]`` bool, True for tokens that may be labelled (the response); prompt
            and padding tokens get -100 whatever spans cover them.
        spans: annotated spans; label 1 = hallucinated, 0 = supported.
        default_ignore: eligible tokens outside every span are ignored (-100) when True, or
            labelled 0 with weight 1 when False.
        pos_weight: loss weight of tokens inside a hallucinated span.
        neg_weight: loss weight of tokens inside a supported span (and no hallucinated one).

    Returns:
        :class:`TokenLabels`; a token in both a hallucinated and a supported span is positive,
        since a partly hallucinated stretch of text is hallucinated.
    """
    if offsets.ndim != 2 or offsets.shape[1] != 2:
        raise ValueError(f"offsets must be [T, 2], got {tuple(offsets.shape)}")
    if eligible.shape != offsets.shape[:1]:
        raise ValueError("eligible must be [T] like offsets")
    for s in spans:
        if s.label not in (0, 1):
            raise ValueError(f"span label must be 0 or 1, got {s.label}")
        if s.end < s.start:
            raise ValueError(f"span end {s.end} precedes start {s.start}")
    device = offsets.device
    n_tok = offsets.shape[0]
    eligible = eligible.to(device=device, dtype=torch.bool)
    tok_start, tok_end = offsets[:, 0].long(), offsets[:, 1].long()
    s_start = torch.tensor([s.start for s in spans], dtype=torch.long, device=device)
    s_end = torch.tensor([s.end for s in spans], dtype=torch.long, device=device)
    s_label = torch.tensor([s.label for s in spans], dtype=torch.float32, device=device)
    n_spans = len(spans)

    # [n_spans, T]: a handful of spans by a few thousand tokens stays small.
    overlap = (
        (tok_start[None, :] < s_end[:, None])
        & (tok_end[None, :] > s_start[:, None])
        & (tok_end > tok_start)[None, :]
        & eligible[None, :]
    )
    positive_span = (s_label == 1.0)[:, None]
    in_pos = (overlap & positive_span).any(0)
    in_neg = (overlap & ~positive_span).any(0)

    default = IGNORE if default_ignore else 0.0
    labels = torch.where(eligible, default, IGNORE).to(torch.float32)
    labels = torch.where(in_neg, 0.0, labels)
    labels = torch.where(in_pos, 1.0, labels)
    weights = (labels != IGNORE).to(torch.float32)
    weights = torch.where(in_neg, neg_weight, weights)
    weights = torch.where(in_pos, pos_weight, weights)

    span_ids = torch.full((n_tok,), -1, dtype=torch.long, device=device)
    if n_spans:
        idx = torch.arange(n_spans, device=device)[:, None]
        first_pos = torch.where(overlap & positive_span, idx, n_spans).amin(0)
        first_any = torch.where(overlap, idx, n_spans).amin(0)
        chosen = torch.where(first_pos < n_spans, first_pos, first_any)
        span_ids = torch.where(chosen < n_spans, chosen, span_ids)
    unmatched = torch.nonzero(~overlap.any(1)).flatten().tolist() if n_spans else []
    return TokenLabels(labels, weights, span_ids, s_label, unmatched)


class LinearProbe(nn.Module):
    """``d_model -> 1`` linear head; ``forward`` gives logits, :meth:`probabilities` sigmoids.

    Initialised like upstream: weight ~ N(0, 0.01^2), bias 0, drawn from a private generator
    so that building a probe neither depends on nor advances the global RNG.
    """

    def __init__(self, d_model: int, seed: int = 42) -> None:
        super().__init__()
        self.linear: nn.Linear = skip_init(nn.Linear, d_model, 1)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(1, d_model, generator=gen) * 0.01)
            self.linear.bias.zero_()

    def forward(self, hidden: Tensor) -> Tensor:
        """Logits ``[...]`` of hidden states ``[..., d_model]``, in float32."""
        return self.linear(hidden.float()).squeeze(-1)

    def probabilities(self, hidden: Tensor) -> Tensor:
        """Hallucination probabilities ``[...]`` of hidden states ``[..., d_model]``."""
        return torch.sigmoid(self(hidden))


def probe_loss(
    logits: Tensor,
    labels: Tensor,
    weights: Tensor,
    span_ids: Tensor,
    span_labels: Tensor,
    omega: float,
) -> Tensor:
    """Annealed mixture ``(1 - omega) L_tok + omega L_span`` of the paper's two losses.

    ``L_tok`` is the mean over non-ignored tokens of ``w_t * BCE(clamp(logit_t, +-100), y_t)``
    (a mean over tokens, not a weighted mean: upstream divides by the token count). ``L_span``
    is the mean over spans of ``BCE(max_{t in span} logit_t, y_span)``; a span with an ignored
    token, no token, or an ignored label (-100) is skipped, since its max would be taken over
    part of the span. A term with nothing to average is 0.

    Args:
        logits: ``[N]`` probe logits of the (concatenated) tokens.
        labels: ``[N]`` 1., 0. or -100.
        weights: ``[N]`` token-loss weights.
        span_ids: ``[N]`` long span index global over the batch, -1 outside spans.
        span_labels: ``[S]`` span labels.
        omega: mixing weight of the span loss, in [0, 1].

    Returns:
        Scalar float32 loss, differentiable in ``logits``.
    """
    logits = logits.float()
    labels = labels.to(logits.device, torch.float32)
    weights = weights.to(logits.device, torch.float32)
    span_ids = span_ids.to(logits.device, torch.long)
    span_labels = span_labels.to(logits.device, torch.float32)
    zero = logits.sum() * 0.0  # keeps the graph when a term is empty

    keep = labels != IGNORE
    if keep.any():
        bce = F.binary_cross_entropy_with_logits(
            logits[keep].clamp(-LOGIT_CLAMP, LOGIT_CLAMP), labels[keep], reduction="none"
        )
        tok_loss = (weights[keep] * bce).mean()
    else:
        tok_loss = zero

    n_spans = span_labels.shape[0]
    in_span = span_ids >= 0
    ids = span_ids[in_span]
    count = torch.bincount(ids, minlength=n_spans)
    ignored = torch.bincount(ids, weights=(~keep[in_span]).float(), minlength=n_spans)
    valid = (count > 0) & (ignored == 0) & (span_labels != IGNORE)
    if valid.any():
        span_max = torch.full((n_spans,), -math.inf, device=logits.device).scatter_reduce(
            0, ids, logits[in_span], reduce="amax", include_self=True
        )
        span_loss = F.binary_cross_entropy_with_logits(span_max[valid], span_labels[valid])
    else:
        span_loss = zero
    return (1.0 - omega) * tok_loss + omega * span_loss


@dataclass(frozen=True)
class ProbeTrainParams:
    """Training settings; defaults follow upstream except ``epochs`` (head-only training)."""

    epochs: int = 20
    lr: float = 1e-3
    batch_size: int = 16  # sequences per optimiser step
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # <= 0 disables clipping
    anneal_warmup: float = 1.0  # fraction of training over which omega rises from 0 to 1
    seed: int = 42
    standardize: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if not self.lr > 0:
            raise ValueError("lr must be > 0")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ProbeExample:
    """One sequence's frozen features and targets.

    Attributes:
        features: ``[T, d_model]`` float32 hidden states at every position.
        labels: the sequence's :class:`TokenLabels` (``[T]`` tensors).
    """

    features: Tensor
    labels: TokenLabels

    def __post_init__(self) -> None:
        if self.features.ndim != 2 or self.features.shape[0] != self.labels.labels.shape[0]:
            raise ValueError(
                f"features {tuple(self.features.shape)} do not match "
                f"{self.labels.labels.shape[0]} labels"
            )


def batch_examples(
    examples: Sequence[ProbeExample],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Concatenate sequences into one token batch.

    Returns:
        ``features [N, d_model]``, ``labels [N]``, ``weights [N]``, ``span_ids [N]`` (offset so
        they index the concatenated ``span_labels``; -1 stays -1) and ``span_labels [S]``.
    """
    if not examples:
        raise ValueError("no examples to batch")
    span_ids: list[Tensor] = []
    offset = 0
    for ex in examples:
        ids = ex.labels.span_ids.long()
        span_ids.append(torch.where(ids >= 0, ids + offset, ids))
        offset += ex.labels.span_labels.shape[0]
    return (
        torch.cat([ex.features.float() for ex in examples]),
        torch.cat([ex.labels.labels.float() for ex in examples]),
        torch.cat([ex.labels.weights.float() for ex in examples]),
        torch.cat(span_ids),
        torch.cat([ex.labels.span_labels.float() for ex in examples]),
    )


def _loss_relevant(ex: ProbeExample) -> ProbeExample:
    """Drop tokens the loss never reads (ignored and outside spans: prompt, padding)."""
    lab = ex.labels
    keep = (lab.labels != IGNORE) | (lab.span_ids >= 0)
    sub = TokenLabels(lab.labels[keep], lab.weights[keep], lab.span_ids[keep], lab.span_labels)
    return ProbeExample(ex.features[keep], sub)


def _feature_stats(examples: Sequence[ProbeExample]) -> tuple[Tensor, Tensor]:
    """Mean and population std ``[d_model]`` over the labelled tokens of all examples."""
    n = 0
    total: Tensor | None = None
    for ex in examples:
        x = ex.features[ex.labels.labels != IGNORE].float()
        n += x.shape[0]
        total = x.sum(0) if total is None else total + x.sum(0)
    if n == 0 or total is None:
        raise ValueError("no labelled tokens to train on")
    mean = total / n
    # Two passes rather than E[x^2] - E[x]^2: residual dims with |mean| >> std would cancel
    # catastrophically in float32.
    sq = torch.zeros_like(mean)
    for ex in examples:
        sq += (ex.features[ex.labels.labels != IGNORE].float() - mean).square().sum(0)
    std = (sq / n).sqrt()
    return mean, torch.where(std > STD_FLOOR, std, torch.ones_like(std))


def train_probe(
    examples: Sequence[ProbeExample],
    params: ProbeTrainParams,
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[LinearProbe, list[float]]:
    """Train a :class:`LinearProbe` on frozen features with the annealed token/span loss.

    With ``standardize`` the head is trained on ``(h - mean) / std`` (statistics of the
    labelled training tokens) and the affine map is folded into it afterwards,
    ``w' = w / std``, ``b' = b - w . (mean / std)``, so the returned probe reads raw hidden
    states. Residual streams have a few "massive activation" dimensions hundreds of times
    larger than the rest; on raw features one learning rate is too large for those and too
    small for the others, and the initial logits are dominated by them.

    Sequences are shuffled each epoch by a generator seeded with ``params.seed``, which also
    seeds the initial weights, so a run is deterministic for a given seed and input order.

    Args:
        examples: training sequences.
        params: see :class:`ProbeTrainParams`.
        progress: called after each step as ``progress(step, total_steps, loss)``, step from 1.

    Returns:
        The trained probe (on the features' device) and the loss of every step.
    """
    if not examples:
        raise ValueError("no training examples")
    d_model = examples[0].features.shape[-1]
    device = examples[0].features.device
    if params.standardize:
        mean, std = _feature_stats(examples)
    else:
        mean = torch.zeros(d_model, device=device)
        std = torch.ones(d_model, device=device)
    compact = [_loss_relevant(ex) for ex in examples]

    probe = LinearProbe(d_model, seed=params.seed).to(device)
    opt = torch.optim.AdamW(
        probe.parameters(), lr=params.lr, eps=1e-8, weight_decay=params.weight_decay
    )
    gen = torch.Generator().manual_seed(params.seed)
    n = len(compact)
    steps_per_epoch = math.ceil(n / params.batch_size)
    total = params.epochs * steps_per_epoch
    history: list[float] = []
    step = 0
    for _ in range(params.epochs):
        order = torch.randperm(n, generator=gen).tolist()
        for first in range(0, n, params.batch_size):
            batch = [compact[i] for i in order[first : first + params.batch_size]]
            feats, labels, weights, span_ids, span_labels = batch_examples(batch)
            frac = step / total
            omega = min(1.0, frac / params.anneal_warmup) if params.anneal_warmup > 0 else 1.0
            logits = probe((feats.to(device) - mean) / std)
            loss = probe_loss(logits, labels, weights, span_ids, span_labels, omega)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if params.max_grad_norm > 0:
                nn.utils.clip_grad_norm_(probe.parameters(), params.max_grad_norm)
            opt.step()
            step += 1
            history.append(float(loss.detach()))
            if progress is not None:
                progress(step, total, history[-1])

    with torch.no_grad():
        w = probe.linear.weight / std
        probe.linear.bias.sub_((w * mean).sum())
        probe.linear.weight.copy_(w)
    return probe, history


def _check_binary(scores: Tensor, labels: Tensor) -> Tensor:
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError("scores and labels must be [N] tensors of the same length")
    if torch.isnan(scores.float()).any():
        raise ValueError("scores contain NaN")
    lab = labels.float()
    if not ((lab == 0) | (lab == 1)).all():
        raise ValueError("labels must be 0 or 1")
    return lab == 1


def roc_auc(scores: Tensor, labels: Tensor) -> float:
    """ROC-AUC as the Mann-Whitney U statistic, ties counted as half.

    Args:
        scores: ``[N]`` scores, higher = more likely positive; no NaN.
        labels: ``[N]`` 0/1 labels.

    Returns:
        AUC in [0, 1]; NaN when only one class is present.
    """
    pos = _check_binary(scores, labels)
    n_pos = int(pos.sum())
    n_neg = pos.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, inverse, counts = torch.unique(scores.float(), return_inverse=True, return_counts=True)
    # Twice the average 1-based rank of each tie group, 2*start + count + 1, is an integer, so
    # the rank sum stays exact in int64 however many tokens there are.
    starts = torch.cumsum(counts, 0) - counts
    twice_rank = (2 * starts + counts + 1)[inverse]
    twice_u = int(twice_rank[pos].sum()) - n_pos * (n_pos + 1)
    return twice_u / (2 * n_pos * n_neg)


def roc_curve(scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """ROC curve with one point per distinct score, like sklearn's without point dropping.

    Args:
        scores: ``[N]`` scores, higher = more likely positive; no NaN.
        labels: ``[N]`` 0/1 labels.

    Returns:
        ``fpr [K+1]``, ``tpr [K+1]`` (float32) and ``thresholds [K+1]`` (descending, the first
        +inf for the (0, 0) point), where K is the number of distinct scores and a point counts
        ``score >= threshold`` as positive. A rate whose class is absent is NaN.
    """
    pos = _check_binary(scores, labels)
    values, inverse = torch.unique(scores.float(), return_inverse=True)
    n_groups = values.numel()
    pos_per = torch.bincount(inverse[pos], minlength=n_groups).flip(0)
    neg_per = torch.bincount(inverse[~pos], minlength=n_groups).flip(0)
    zero = torch.zeros(1, dtype=torch.long, device=scores.device)
    tps = torch.cat([zero, torch.cumsum(pos_per, 0)])
    fps = torch.cat([zero, torch.cumsum(neg_per, 0)])
    n_pos, n_neg = int(tps[-1]), int(fps[-1])
    nan = torch.full(tps.shape, math.nan, device=scores.device)
    tpr = tps.float() / n_pos if n_pos else nan
    fpr = fps.float() / n_neg if n_neg else nan
    inf = torch.full((1,), math.inf, device=scores.device)
    return fpr, tpr, torch.cat([inf, values.flip(0)])


def span_max_scores(scores: Tensor, span_ids: Tensor, n_spans: int) -> Tensor:
    """Highest score of each span's tokens.

    Args:
        scores: ``[N]`` token scores; NaN scores are treated as absent.
        span_ids: ``[N]`` long span index, -1 outside spans.
        n_spans: number of spans S.

    Returns:
        ``[S]`` float32; NaN for spans with no (non-NaN) token.
    """
    scores = scores.float()
    span_ids = span_ids.to(scores.device, torch.long)
    valid = (span_ids >= 0) & ~torch.isnan(scores)
    ids = span_ids[valid]
    out = torch.full((n_spans,), -math.inf, device=scores.device).scatter_reduce(
        0, ids, scores[valid], reduce="amax", include_self=True
    )
    has = torch.bincount(ids, minlength=n_spans) > 0
    return torch.where(has, out, math.nan)


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def evaluate_scores(
    token_scores: Tensor,
    labels: Tensor,
    span_ids: Tensor,
    span_labels: Tensor,
    *,
    higher_means_hallucinated: bool = True,
) -> dict[str, float]:
    """Token- and span-level detection metrics of any per-token score.

    Tokens labelled -100 and NaN scores are excluded everywhere; a span is scored by its
    highest remaining token and left out when none remains. Threshold metrics call a token
    hallucinated when its score is >= 0.5 (<= 0.5 when lower means hallucinated); they are
    only meaningful for probabilities but are computed for any score. Undefined ratios are NaN.

    Args:
        token_scores: ``[N]`` per-token scores.
        labels: ``[N]`` 1., 0. or -100.
        span_ids: ``[N]`` long span index global over the batch, -1 outside spans.
        span_labels: ``[S]`` span labels.
        higher_means_hallucinated: orientation of the score; when False scores are negated
            for the AUCs and the recall at FPR <= 0.1.

    Returns:
        ``token_auc``, ``span_max_auc``, ``accuracy``, ``precision``, ``recall``, ``f1``,
        ``recall_at_fpr_0_1``, ``n_tokens``, ``n_positive_tokens``, ``n_spans``,
        ``n_positive_spans``.
    """
    scores = token_scores.float()
    labels = labels.to(scores.device, torch.float32)
    span_ids = span_ids.to(scores.device, torch.long)
    span_labels = span_labels.to(scores.device, torch.float32)
    keep = (labels != IGNORE) & ~torch.isnan(scores)
    oriented_all = scores if higher_means_hallucinated else -scores
    s, y, oriented = scores[keep], labels[keep], oriented_all[keep]
    pos = y == 1

    pred = s >= 0.5 if higher_means_hallucinated else s <= 0.5
    tp = int((pred & pos).sum())
    fp = int((pred & ~pos).sum())
    fn = int((~pred & pos).sum())
    n_tok = int(y.numel())
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    if math.isnan(precision) or math.isnan(recall):
        f1 = math.nan
    else:
        f1 = _ratio(2 * precision * recall, precision + recall) if precision + recall else 0.0

    recall_at = math.nan
    if 0 < int(pos.sum()) < n_tok:
        fpr, tpr, _ = roc_curve(oriented, y)
        recall_at = float(tpr[fpr <= 0.1].max())  # the (0, 0) point always qualifies

    n_spans = span_labels.shape[0]
    span_scores = span_max_scores(oriented_all, torch.where(keep, span_ids, -1), n_spans)
    scored = ~torch.isnan(span_scores) & ((span_labels == 0) | (span_labels == 1))
    return {
        "token_auc": roc_auc(oriented, y),
        "span_max_auc": roc_auc(span_scores[scored], span_labels[scored]),
        "accuracy": _ratio(int((pred == pos).sum()), n_tok),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "recall_at_fpr_0_1": recall_at,
        "n_tokens": n_tok,
        "n_positive_tokens": int(pos.sum()),
        "n_spans": int(scored.sum()),
        "n_positive_spans": int((span_labels[scored] == 1).sum()),
    }
