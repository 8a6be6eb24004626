"""Claim-Conditioned Probability (CCP; Fadeeva et al. 2024, as implemented in LM-Polygraph).

At each token t the model offered K alternatives (its top-K, with the actual token as element
0). A judge (an NLI model) labels each alternative against the actual token as entailment,
contradiction or neutral, and

    CCP_t = sum(p over entailing alternatives) / sum(p over entailing + contradicting ones).

Neutral alternatives are dropped from numerator and denominator alike: they neither support
nor change the claim. Probability mass outside the top-K is ignored; it would appear in both
sums' normaliser and cancels. A claim's CCP is the product of its tokens' CCP, and its
uncertainty is ``1 - prod_t CCP_t`` (metric-definitions §7).

Choices (metric-definitions §7, all in :class:`CcpParams`), grouped in two named presets
(:data:`CCP_PRESETS`):

* ``"lm-polygraph"`` (the default): LM-Polygraph's conventions (IINemo/lm-polygraph, the
  ``GreedyAlternativesNLICalculator`` and the CCP estimators). Words are stripped of
  ``string.punctuation + " \n"`` only; every alternative but element 0 goes to the judge, the
  same word and empty words included (an empty word is sent as ``""``); no stopword rule (the
  library's claim estimator tests the *token id* against NLTK's stopwords for white-box models,
  so it never fires, and its sequence estimator has no such rule); a claim's CCP is
  ``exp(sum log CCP_t)`` over its tokens, so a NaN token makes the claim NaN and a claim with no
  token has CCP 1 (the empty product); the sequence CCP is the same product over every
  response token.
* ``"tokenprism"``: our shortcuts, kept as an option. They save judge calls and remove judge
  noise on tokens that carry no claim, but they are *ours*, not the paper's or the library's:
  words also lose ``\t \r`` and the space markers ``▁ Ġ Ċ``; the same word up to case is
  entailment without asking the judge (``identity_casefold``); an empty word is neutral, i.e.
  dropped (``empty``), so punctuation-only tokens get CCP 1; a stopword as the actual token
  makes CCP_t = 1 (``stopword_rule``, the claim estimator's functional-word rule applied to the
  lowercased word as the paper intends), and this also feeds the sequence value; a claim's
  product skips NaN tokens and a claim with no scored token is NaN (an empty product of 1 would
  claim a certainty nobody measured); likewise the sequence.

Common to both: alternatives are the top-K by log-prob; the actual token is element 0 (always
entailment), and if it is not in the top-K it replaces the least probable alternative
(:func:`alternatives_with_target`); the judge sees both directions, combined by
:func:`combine_directions`; ``context="none"`` (LM-Polygraph's ``no_context``) judges the bare
words, ``"prefix"`` prepends a caller-given prefix (e.g. the claim text before the token).
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

ENTAIL = 0
CONTRA = 1
NEUTRAL = 2

EmptyRule = Literal["neutral", "entail", "judge", "judge-raw"]
ContextMode = Literal["none", "prefix"]
StripRule = Literal["lm-polygraph", "tokenprism"]
Aggregation = Literal["lm-polygraph", "tokenprism"]

# characters stripped from both ends of a word before it is judged, by rule
STRIP_CHARS: dict[str, str] = {
    "lm-polygraph": string.punctuation + " \n",
    "tokenprism": string.punctuation + " \n\t\r" + "▁ĠĊ",
}

# NLTK's English stopword list (179 words).
ENGLISH_STOPWORDS: frozenset[str] = frozenset(
    """
    i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself
    yourselves he him his himself she she's her hers herself it it's its itself they them their
    theirs themselves what which who whom this that that'll these those am is are was were be
    been being have has had having do does did doing a an the and but if or because as until
    while of at by for with about against between into through during before after above below
    to from up down in out on off over under again further then once here there when where why
    how all any both each few more most other some such no nor not only own same so than too
    very s t can will just don don't should should've now d ll m o re ve y ain aren aren't
    couldn couldn't didn didn't doesn doesn't hadn hadn't hasn hasn't haven haven't isn isn't
    ma mightn mightn't mustn mustn't needn needn't shan shan't shouldn shouldn't wasn wasn't
    weren weren't won won't wouldn wouldn't
    """.split()
)


class PairJudge(Protocol):
    """Labels ``(premise, hypothesis)`` pairs as :data:`ENTAIL`, :data:`CONTRA` or
    :data:`NEUTRAL`, one label per pair, in order."""

    name: str

    def __call__(self, pairs: Sequence[tuple[str, str]]) -> list[int]: ...


@dataclass(frozen=True)
class CcpParams:
    """How CCP labels alternatives (see the module docstring).

    The defaults are the ``lm-polygraph`` preset; :func:`ccp_params` builds a preset by name.

    Attributes:
        n_alternatives: K, alternatives per token including the token itself.
        identity_casefold: the same normalised word up to case is entailment, unjudged.
        empty: label of an alternative (or of every alternative of an original) whose
            normalised text is empty: ``neutral`` (dropped), ``entail``, ``judge`` (the judge
            gets the empty normalised word, as LM-Polygraph) or ``judge-raw`` (the judge gets
            the raw token text).
        stopword_rule: an English stopword as the actual token gives CCP_t = 1.
        context: ``none`` judges the bare words, ``prefix`` prepends per-token prefixes.
        strip: which characters :func:`normalise_word` strips (:data:`STRIP_CHARS`).
        aggregation: how claim and sequence products treat NaN tokens and empty claims
            (:func:`claim_ccp`).
    """

    n_alternatives: int = 10
    identity_casefold: bool = False
    empty: EmptyRule = "judge"
    stopword_rule: bool = False
    context: ContextMode = "none"
    strip: StripRule = "lm-polygraph"
    aggregation: Aggregation = "lm-polygraph"

    def __post_init__(self) -> None:
        if self.n_alternatives < 1:
            raise ValueError("n_alternatives must be >= 1")
        if self.empty not in ("neutral", "entail", "judge", "judge-raw"):
            raise ValueError(
                f"empty must be neutral, entail, judge or judge-raw, not {self.empty!r}"
            )
        if self.context not in ("none", "prefix"):
            raise ValueError(f"context must be none or prefix, not {self.context!r}")
        if self.strip not in STRIP_CHARS:
            raise ValueError(f"strip must be lm-polygraph or tokenprism, not {self.strip!r}")
        if self.aggregation not in ("lm-polygraph", "tokenprism"):
            raise ValueError(
                f"aggregation must be lm-polygraph or tokenprism, not {self.aggregation!r}"
            )

    def as_dict(self) -> dict[str, Any]:
        """Plain dict of the parameters, for run provenance."""
        return asdict(self)


CCP_PRESETS: dict[str, CcpParams] = {
    "lm-polygraph": CcpParams(),
    "tokenprism": CcpParams(
        identity_casefold=True,
        empty="neutral",
        stopword_rule=True,
        strip="tokenprism",
        aggregation="tokenprism",
    ),
}
DEFAULT_CCP_PRESET = "lm-polygraph"


def ccp_params(preset: str = DEFAULT_CCP_PRESET, **changes: Any) -> CcpParams:
    """The parameters of a named preset (:data:`CCP_PRESETS`), optionally with changes.

    Raises:
        ValueError: unknown preset name (the message lists the known ones).
    """
    if preset not in CCP_PRESETS:
        raise ValueError(f"unknown CCP preset {preset!r}; choose from {', '.join(CCP_PRESETS)}")
    return replace(CCP_PRESETS[preset], **changes)


def ccp_preset_name(params: CcpParams) -> str:
    """The preset ``params`` equal up to ``n_alternatives`` and ``context``, else ``custom``."""
    for name, preset in CCP_PRESETS.items():
        if replace(params, n_alternatives=preset.n_alternatives, context=preset.context) == preset:
            return name
    return "custom"


def normalise_word(s: str, strip: StripRule = "tokenprism") -> str:
    """Strip the surrounding characters of rule ``strip`` (:data:`STRIP_CHARS`); keep case.

    ``tokenprism`` strips punctuation, whitespace and the space markers ``▁ Ġ Ċ``;
    ``lm-polygraph`` only punctuation, spaces and newlines.
    """
    return s.strip(STRIP_CHARS[strip])


def alternatives_with_target(
    top_ids: Tensor,
    top_logprobs: Tensor,
    target_ids: Tensor,
    target_logprobs: Tensor,
    *,
    k: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Put the actual token first among the top-k alternatives.

    If the target is among the top-k (first occurrence), it moves to column 0 and the others
    keep their order; otherwise it enters at column 0 and the least probable (last) column is
    dropped. The target's log-prob always comes from ``target_logprobs``.

    Args:
        top_ids: ``[T, k]`` int64 top-k token ids, most probable first (may hold -1 padding).
        top_logprobs: ``[T, k]`` float log-probs of ``top_ids``.
        target_ids: ``[T]`` actual (generated / teacher-forced) token ids.
        target_logprobs: ``[T]`` float log-probs of the targets.
        k: keep only the first ``k`` columns of the top-k first (``None``: all of them).

    Returns:
        ``(ids [T, k], logprobs [T, k])`` with the target in column 0.
    """
    if k is not None:
        top_ids, top_logprobs = top_ids[:, :k], top_logprobs[:, :k]
    width = top_ids.shape[1]
    if width < 1:
        raise ValueError("need at least one alternative column")
    match = top_ids == target_ids[:, None]
    # argmax on a bool->int row gives the first match; rows without one drop the last column.
    drop = torch.where(match.any(dim=1), match.int().argmax(dim=1), width - 1)  # [T]
    cols = torch.arange(width - 1, device=top_ids.device)[None, :]  # output columns 1..k-1
    src = cols + (cols >= drop[:, None]).long()  # [T, k-1]: skip the dropped column
    ids = torch.cat([target_ids[:, None].to(top_ids.dtype), top_ids.gather(1, src)], dim=1)
    logprobs = torch.cat(
        [target_logprobs[:, None].to(top_logprobs.dtype), top_logprobs.gather(1, src)], dim=1
    )
    return ids, logprobs


def combine_directions(forward: Tensor, backward: Tensor) -> Tensor:
    """Combine the labels of (original, alt) and (alt, original), elementwise.

    Equal labels stand; entailment one way and contradiction the other is neutral; otherwise
    entailment in either direction wins, then contradiction, else neutral.

    Args:
        forward: int labels of judge(original, alternative), any shape.
        backward: int labels of judge(alternative, original), same shape.

    Returns:
        int64 labels, same shape.
    """
    f, b = forward.long(), backward.long()
    any_e = (f == ENTAIL) | (b == ENTAIL)
    any_c = (f == CONTRA) | (b == CONTRA)
    out = torch.full_like(f, NEUTRAL)
    out = torch.where(any_c, torch.full_like(f, CONTRA), out)
    out = torch.where(any_e, torch.full_like(f, ENTAIL), out)
    out = torch.where(any_e & any_c, torch.full_like(f, NEUTRAL), out)
    return torch.where(f == b, f, out)


def _judged_text(word: str, raw: str, params: CcpParams) -> str:
    """What the judge sees of a token: its normalised word, or its raw text when the word is
    empty and ``empty="judge-raw"``."""
    return raw if not word and params.empty == "judge-raw" else word


def label_alternatives(
    original: Sequence[str],
    alternatives: Sequence[Sequence[str]],
    judge: PairJudge,
    params: CcpParams,
    prefixes: Sequence[str] | None = None,
) -> Tensor:
    """NLI labels of each token's alternatives against the token.

    Every distinct (premise, hypothesis) pair of the whole batch is judged once, in a single
    judge call. Words go to the judge normalised (an empty normalised word as ``""`` with
    ``empty="judge"``, as its raw text with ``empty="judge-raw"``). With ``context="prefix"`` both
    texts get the token's prefix prepended verbatim, so the prefix should end with whatever
    separator (usually a space) belongs before the word; the identity rule still compares the
    bare words.

    Args:
        original: ``T`` decoded token texts.
        alternatives: ``T`` lists of decoded alternative texts, element 0 being the token
            itself; rows may be ragged (missing columns are labelled neutral).
        judge: the NLI judge.
        params: labelling rules.
        prefixes: ``T`` per-token prefixes, required when ``params.context == "prefix"``.

    Returns:
        ``[T, k]`` int64 labels (``k`` the longest row), column 0 always :data:`ENTAIL`.
    """
    n = len(original)
    if len(alternatives) != n:
        raise ValueError(f"{n} original tokens but {len(alternatives)} alternative rows")
    if params.context == "prefix":
        if prefixes is None or len(prefixes) != n:
            raise ValueError("context='prefix' needs one prefix per token")
    width = max((len(row) for row in alternatives), default=0)
    labels = torch.full((n, width), NEUTRAL, dtype=torch.long)
    pending: list[tuple[int, int, tuple[str, str]]] = []  # (row, col, forward pair)
    for t, (orig, row) in enumerate(zip(original, alternatives, strict=True)):
        prefix = prefixes[t] if params.context == "prefix" and prefixes is not None else ""
        pending += _label_row(labels, t, orig, row, params, prefix)
    if pending:
        _judge_pending(labels, pending, judge)
    return labels


def _label_row(
    labels: Tensor, t: int, orig: str, row: Sequence[str], params: CcpParams, prefix: str
) -> list[tuple[int, int, tuple[str, str]]]:
    """Label row ``t`` in place by the rules; return the pairs that need the judge."""
    if not row:
        return []
    labels[t, 0] = ENTAIL
    word = normalise_word(orig, params.strip)
    if params.stopword_rule and word.lower() in ENGLISH_STOPWORDS:
        labels[t, : len(row)] = ENTAIL
        return []
    if not word and params.empty in ("neutral", "entail"):
        labels[t, 1 : len(row)] = ENTAIL if params.empty == "entail" else NEUTRAL
        return []
    premise = prefix + _judged_text(word, orig, params)
    pending = []
    for j in range(1, len(row)):
        alt = normalise_word(row[j], params.strip)
        if not alt and params.empty in ("neutral", "entail"):
            labels[t, j] = ENTAIL if params.empty == "entail" else NEUTRAL
        elif params.identity_casefold and word and alt.casefold() == word.casefold():
            labels[t, j] = ENTAIL
        else:
            pending.append((t, j, (premise, prefix + _judged_text(alt, row[j], params))))
    return pending


def _judge_pending(
    labels: Tensor, pending: list[tuple[int, int, tuple[str, str]]], judge: PairJudge
) -> None:
    """Judge every distinct pair both ways in one call; write the combined labels in place."""
    unique: dict[tuple[str, str], int] = {}
    for _, _, (p, h) in pending:
        unique.setdefault((p, h), len(unique))
        unique.setdefault((h, p), len(unique))
    pairs = list(unique)
    verdicts = judge(pairs)
    if len(verdicts) != len(pairs):
        raise ValueError(f"judge {judge.name!r} gave {len(verdicts)} labels for {len(pairs)} pairs")
    judged = torch.tensor(verdicts, dtype=torch.long)
    if ((judged < ENTAIL) | (judged > NEUTRAL)).any():
        raise ValueError(f"judge {judge.name!r} returned labels outside 0..2")
    fwd = judged[torch.tensor([unique[(p, h)] for _, _, (p, h) in pending])]
    bwd = judged[torch.tensor([unique[(h, p)] for _, _, (p, h) in pending])]
    rows = torch.tensor([t for t, _, _ in pending])
    cols = torch.tensor([j for _, j, _ in pending])
    labels[rows, cols] = combine_directions(fwd, bwd)


def token_log_ccp(alt_logprobs: Tensor, labels: Tensor, valid: Tensor | None = None) -> Tensor:
    """log CCP_t = LSE(l over entailing) - LSE(l over entailing + contradicting), per token.

    Args:
        alt_logprobs: ``[T, k]`` float log-probs of the alternatives, the token in column 0.
        labels: ``[T, k]`` int NLI labels; column 0 counts as entailment whatever it says, and
            neutral columns (including padding) are excluded, so their log-probs may be
            anything.
        valid: ``[T]`` bool, tokens to score (``None``: all).

    Returns:
        ``[T]`` float32 log CCP in ``(-inf, 0]``; NaN where ``valid`` is False. A row whose
        alternatives are all neutral has log CCP 0.
    """
    lp = alt_logprobs.float()
    n, width = lp.shape
    if width == 0:
        return torch.full((n,), float("nan"), dtype=torch.float32, device=lp.device)
    lab = labels.long().to(lp.device).clone()
    lab[:, 0] = ENTAIL
    neg_inf = torch.full_like(lp, float("-inf"))
    num = torch.logsumexp(torch.where(lab == ENTAIL, lp, neg_inf), dim=1)
    den = torch.logsumexp(torch.where(lab != NEUTRAL, lp, neg_inf), dim=1)
    # num <= den in exact arithmetic; clamp float32 rounding so that CCP never exceeds 1.
    out = (num - den).clamp(max=0.0)
    if valid is not None:
        out = torch.where(valid.to(lp.device), out, torch.full_like(out, float("nan")))
    return out


def token_ccp(alt_logprobs: Tensor, labels: Tensor, valid: Tensor | None = None) -> Tensor:
    """CCP_t in ``(0, 1]`` per token, ``[T]`` float32; see :func:`token_log_ccp`."""
    return token_log_ccp(alt_logprobs, labels, valid).exp()


def claim_ccp(
    token_ccp: Tensor, positions: Sequence[Tensor], aggregation: Aggregation = "lm-polygraph"
) -> Tensor:
    """Claim CCP: the product of its tokens' CCP, computed as ``exp(sum log CCP_t)``.

    Args:
        token_ccp: ``[T]`` per-token CCP (NaN for unscored tokens).
        positions: per claim, a 1-D int64 tensor of its token positions.
        aggregation: ``lm-polygraph``: a NaN token makes the claim NaN and a claim without
            tokens has CCP 1 (the empty product, as the library's ``np.exp(np.sum(...))``);
            ``tokenprism``: NaN tokens are skipped and a claim with no scored token is NaN.

    Returns:
        ``[n_claims]`` float32.
    """
    device = token_ccp.device
    n_claims = len(positions)
    if n_claims == 0:
        return torch.empty(0, dtype=torch.float32, device=device)
    log_ccp = token_ccp.float().log()
    counts = torch.tensor([len(p) for p in positions], device=device)
    flat = torch.cat([p.to(device=device, dtype=torch.long).reshape(-1) for p in positions])
    owner = torch.repeat_interleave(torch.arange(n_claims, device=device), counts)
    vals = log_ccp[flat]
    zeros = torch.zeros(n_claims, dtype=torch.float32, device=device)
    if aggregation == "lm-polygraph":
        return zeros.index_add(0, owner, vals).exp()  # NaN + anything = NaN; empty sum 0
    scored = ~torch.isnan(vals)
    total = zeros.index_add(0, owner, torch.where(scored, vals, torch.zeros_like(vals)))
    n_scored = zeros.index_add(0, owner, scored.float())
    return torch.where(n_scored > 0, total.exp(), torch.full_like(total, float("nan")))


def sequence_ccp(token_ccp: Tensor, aggregation: Aggregation = "lm-polygraph") -> float:
    """Sequence CCP ``prod_t CCP_t`` over the given tokens, in float64 log space.

    LM-Polygraph's ``ClaimConditionedProbability`` returns ``-prod_t CCP_t`` over every
    generated token; TokenPrism stores the uncertainty ``1 - prod_t CCP_t`` (same ranking).

    Args:
        token_ccp: ``[T]`` CCP of the response tokens.
        aggregation: as :func:`claim_ccp`: ``lm-polygraph`` propagates NaN and gives 1 for no
            token; ``tokenprism`` skips NaN and gives NaN when no token is scored.

    Returns:
        the product.
    """
    logs = token_ccp.double().log()
    if aggregation == "lm-polygraph":
        return float(logs.sum().exp())
    logs = logs[~torch.isnan(logs)]
    return float(logs.sum().exp()) if len(logs) else math.nan
