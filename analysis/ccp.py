"""Claim-Conditioned Probability (CCP; Fadeeva et al. 2024, as implemented in LM-Polygraph).

At each token t the model offered K alternatives (its top-K, with the actual token as element
0). A judge (an NLI model) labels each alternative against the actual token as entailment,
contradiction or neutral, and

    CCP_t = sum(p over entailing alternatives) / sum(p over entailing + contradicting ones).

Neutral alternatives are dropped from numerator and denominator alike: they neither support
nor change the claim. Probability mass outside the top-K is ignored; it would appear in both
sums' normaliser and cancels. A claim's CCP is the product of its tokens' CCP, and its
uncertainty is ``1 - prod_t CCP_t`` (metric-definitions §7).

Choices (metric-definitions §7, all in :class:`CcpParams`):

* alternatives are the top-K by log-prob; the actual token is element 0, and if it is not in
  the top-K it replaces the least probable alternative (:func:`alternatives_with_target`);
* words are compared after :func:`normalise_word` (surrounding punctuation, whitespace and the
  SentencePiece / GPT-2 space markers stripped, case kept);
* the judge sees both directions, combined by :func:`combine_directions`;
* short-circuits decide some labels without the judge: element 0 is always entailment; the
  same word up to case and spacing is entailment (``identity_casefold``); an empty word is
  neutral (``empty``); a stopword as the actual token makes CCP_t = 1 (``stopword_rule``, the
  claim estimator's functional-word rule, applied to the lowercased word as the paper intends
  rather than by the library's token-id check);
* ``context="none"`` (LM-Polygraph's ``no_context``) judges the bare words; ``"prefix"``
  prepends a caller-given prefix (e.g. the claim text before the token) to both words.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

ENTAIL = 0
CONTRA = 1
NEUTRAL = 2

EmptyRule = Literal["neutral", "entail", "judge"]
ContextMode = Literal["none", "prefix"]

_STRIP = string.punctuation + " \n\t\r" + "▁ĠĊ"

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

    Attributes:
        n_alternatives: K, alternatives per token including the token itself.
        identity_casefold: the same normalised word up to case is entailment, unjudged.
        empty: label of an alternative (or of every alternative of an original) whose
            normalised text is empty: ``neutral`` (dropped), ``entail``, or ``judge``.
        stopword_rule: an English stopword as the actual token gives CCP_t = 1.
        context: ``none`` judges the bare words, ``prefix`` prepends per-token prefixes.
    """

    n_alternatives: int = 10
    identity_casefold: bool = True
    empty: EmptyRule = "neutral"
    stopword_rule: bool = True
    context: ContextMode = "none"

    def __post_init__(self) -> None:
        if self.n_alternatives < 1:
            raise ValueError("n_alternatives must be >= 1")
        if self.empty not in ("neutral", "entail", "judge"):
            raise ValueError(f"empty must be neutral, entail or judge, not {self.empty!r}")
        if self.context not in ("none", "prefix"):
            raise ValueError(f"context must be none or prefix, not {self.context!r}")

    def as_dict(self) -> dict[str, Any]:
        """Plain dict of the parameters, for run provenance."""
        return asdict(self)


def normalise_word(s: str) -> str:
    """Strip surrounding punctuation, whitespace and the space markers ``▁ Ġ Ċ``; keep case."""
    return s.strip(_STRIP)


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


def label_alternatives(
    original: Sequence[str],
    alternatives: Sequence[Sequence[str]],
    judge: PairJudge,
    params: CcpParams,
    prefixes: Sequence[str] | None = None,
) -> Tensor:
    """NLI labels of each token's alternatives against the token.

    Every distinct (premise, hypothesis) pair of the whole batch is judged once, in a single
    judge call. Words go to the judge normalised; a word whose normalised text is empty goes
    as its raw text (only reachable with ``empty="judge"``). With ``context="prefix"`` both
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
        if not row:
            continue
        labels[t, 0] = ENTAIL
        word = normalise_word(orig)
        if params.stopword_rule and word.lower() in ENGLISH_STOPWORDS:
            labels[t, : len(row)] = ENTAIL
            continue
        if not word and params.empty != "judge":
            labels[t, 1 : len(row)] = ENTAIL if params.empty == "entail" else NEUTRAL
            continue
        prefix = prefixes[t] if params.context == "prefix" and prefixes is not None else ""
        premise = prefix + (word or orig)
        for j in range(1, len(row)):
            alt = normalise_word(row[j])
            if not alt and params.empty != "judge":
                labels[t, j] = ENTAIL if params.empty == "entail" else NEUTRAL
            elif params.identity_casefold and word and alt.casefold() == word.casefold():
                labels[t, j] = ENTAIL
            else:
                pending.append((t, j, (premise, prefix + (alt or row[j]))))
    if not pending:
        return labels
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
    return labels


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


def claim_ccp(token_ccp: Tensor, positions: Sequence[Tensor]) -> Tensor:
    """Claim CCP: the product of its tokens' CCP, computed as ``exp(sum log CCP_t)``.

    Args:
        token_ccp: ``[T]`` per-token CCP (NaN for unscored tokens).
        positions: per claim, a 1-D int64 tensor of its token positions.

    Returns:
        ``[n_claims]`` float32; NaN tokens are skipped, and a claim with no scored token is NaN
        (an empty product of 1 would claim certainty nobody measured).
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
    scored = ~torch.isnan(vals)
    zeros = torch.zeros(n_claims, dtype=torch.float32, device=device)
    total = zeros.index_add(0, owner, torch.where(scored, vals, torch.zeros_like(vals)))
    n_scored = zeros.index_add(0, owner, scored.float())
    return torch.where(n_scored > 0, total.exp(), torch.full_like(total, float("nan")))
