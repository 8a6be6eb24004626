"""Claims and CCP of runs from API logprobs: the writing model's own top-k are the alternatives.

CCP (:mod:`analysis.ccp`) needs, per token, its alternatives' texts and log-probabilities and an
NLI judge; no language model. A file with ``top_logprobs`` gives the alternatives, so a server
started with ``--no-model`` computes CCP for it whenever the judge loads (the ``fallback``
judge needs only the packaged sentence encoder).

How the alternatives are built, exactly as the local path builds them from its top-k ids
(:func:`analysis.ccp.alternatives_with_target`):

* the position's listed alternatives, most probable first, cut to the first
  ``K = min(n_alternatives, k)``;
* the sampled token goes first: if it is among those K (matched by bytes) it moves to column 0,
  otherwise it enters at column 0 with its own ``logprob`` and the least probable of the K is
  dropped;
* each alternative's text is its bytes decoded (the API's token string), as the local path
  decodes each alternative id;
* the log-probabilities are the API's own, *not* renormalised over the K: CCP_t is a ratio of
  two sums over the same alternatives, so a common normaliser cancels. The local path uses its
  full-vocabulary log-probabilities the same way, so neither renormalises.

Difference from the local path: the local top-K comes from the full vocabulary (K =
``n_alternatives``, 10 by default); here K is capped by the k the API returned (OpenAI returns
at most 20, many files 5). With k < ``n_alternatives`` the alternatives ranked k+1..10 are
unknown and left out of both sums, so the value equals the local CCP at ``n_alternatives = k``
of the model that wrote the text (with its own, not a local model's, probabilities). A position
that lists fewer alternatives than others uses what it lists; the missing columns are neutral
(dropped), and a position listing none gets CCP 1 (only the token itself). A file whose turns
list fewer than 2 alternatives anywhere is refused for CCP: every value would be 1.

Claims (sentences by default) are cut from the response as for local runs and stored for every
logprobs run, with the claim metrics :func:`backend.scoring.extras.claim_metrics` gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tokenprism.analysis.ccp import (
    NEUTRAL,
    CcpParams,
    alternatives_with_target,
    label_alternatives,
    token_ccp,
)
from tokenprism.analysis.claims import Claim, claim_token_positions, get_splitter
from tokenprism.analysis.scoring import ScoredSequence
from tokenprism.backend.audit.logprobs import LogprobItem
from tokenprism.backend.errors import UserError
from tokenprism.backend.scoring.extras import (
    EXTRA_METRICS,
    ClaimScore,
    ExtraPlan,
    ExtraRequest,
    ccp_sequence_metrics,
    claim_metrics,
    claim_prefixes,
    extra_request,
    parse_metrics,
    request_from_dict,
)
from tokenprism.backend.settings import Settings

# Extra metric families a logprobs run can have: the rest need hidden states or a local model.
LOGPROB_FAMILIES = ("ccp",)
# Column id of the sampled token when the API did not list it (-1 marks padding).
_OUTSIDE = -2


def logprob_extra_request(
    metrics: str | Sequence[str] | None,
    *,
    judge: str | None = None,
    ccp_preset: str | None = None,
) -> ExtraRequest | None:
    """The extras of a logprobs audit (``source=logprobs`` or ``both``): CCP or nothing.

    Raises:
        UserError: an unknown family, a family that needs a local model, or a judge named
            without CCP.
    """
    names = parse_metrics(metrics)
    others = [n for n in names if n not in LOGPROB_FAMILIES]
    if others:
        raise UserError(
            f"{', '.join(others)} need a local model (hidden states or sampling); an audit from "
            f"API logprobs computes only {', '.join(LOGPROB_FAMILIES)} (use source=model for "
            f"{', '.join(n for n in EXTRA_METRICS if n not in LOGPROB_FAMILIES)})"
        )
    if not names:
        if judge:
            raise UserError("a CCP judge needs metrics=ccp")
        return None
    return extra_request(names, judge=judge, ccp_preset=ccp_preset)


def logprob_ccp_plan(request: ExtraRequest | dict[str, Any] | None, settings: Settings) -> Any:
    """The :class:`ExtraPlan` of a logprobs audit: the judge only (no LM), or None.

    Loads the judge (once per process); one that cannot be loaded raises
    :class:`~backend.errors.ModelNotFound`, a 4xx at upload time.
    """
    from tokenprism.backend.models.nli import get_judge

    if isinstance(request, dict):
        request = request_from_dict(request)
    if request is None or "ccp" not in request.metrics:
        return None
    judge = get_judge(request.judge or settings.nli_model, settings)
    return ExtraPlan(request=request, settings=settings, judge=judge)


def check_ccp_alternatives(items: Sequence[LogprobItem]) -> None:
    """CCP needs at least 2 listed alternatives somewhere, else every value is 1."""
    k = max((it.k for it in items), default=0)
    if k < 2:
        raise UserError(
            f"CCP needs the top alternatives of each token (top_logprobs of at least 2); "
            f"this file lists at most {k}"
        )


def topk_alternatives(item: LogprobItem, n_alternatives: int) -> tuple[list[list[str]], Tensor]:
    """Each token's CCP alternatives from its API top-k, the token first (module docstring).

    Args:
        item: one turn with its ``[n, k]`` top-k (NaN-padded) and ``target_col``.
        n_alternatives: K, the most alternatives per token, the token included.

    Returns:
        ``(texts, logprobs)``: per token the alternatives' texts (ragged: listed ones only, the
        token at 0) and ``[n, max(1, min(K, k))]`` float64 log-probabilities, ``-inf`` where a
        row has fewer alternatives.
    """
    n = len(item.tokens)
    width = min(n_alternatives, item.k)
    top = item.top_logprobs[:, :width]
    listed = ~np.isnan(top)
    cols = np.broadcast_to(np.arange(width), (n, width))
    ids = torch.from_numpy(np.where(listed, cols, -1).astype(np.int64))
    lps = torch.from_numpy(np.where(listed, top, -np.inf).astype(np.float64))
    if width == 0:  # nothing listed: the token alone
        ids, lps = torch.full((n, 1), -1), torch.full((n, 1), -np.inf, dtype=torch.float64)
    target = torch.from_numpy(np.where(item.target_col >= 0, item.target_col, _OUTSIDE))
    out_ids, out_lps = alternatives_with_target(
        ids, lps, target.long(), torch.from_numpy(item.logprob.astype(np.float64))
    )
    texts: list[list[str]] = []
    for i, row in enumerate(out_ids.tolist()):
        alts = [item.tokens[i]]
        alts += [item.top_tokens[i][c] for c in row[1:] if c >= 0]
        texts.append(alts)
    return texts, out_lps


def item_claims(item: LogprobItem, splitter: str = "sentences") -> list[tuple[Claim, Tensor]]:
    """The response's claims with their token positions (every API token is a response token)."""
    claims = get_splitter(splitter)(item.response, 0, len(item.response))
    offsets = torch.tensor(item.offsets, dtype=torch.long).reshape(-1, 2)
    eligible = torch.ones(len(item.tokens), dtype=torch.bool)
    return list(zip(claims, claim_token_positions(claims, offsets, eligible), strict=True))


def item_token_ccp(
    item: LogprobItem,
    claims: Sequence[tuple[Claim, Tensor]],
    judge: Any,
    params: CcpParams,
) -> Tensor:
    """``[n]`` CCP_t of every token of ``item`` from its top-k alternatives (float32)."""
    texts, logprobs = topk_alternatives(item, params.n_alternatives)
    n = len(item.tokens)
    prefixes = (
        claim_prefixes(item.response, item.offsets, claims, range(n))
        if params.context == "prefix"
        else None
    )
    labels = label_alternatives(item.tokens, texts, judge, params, prefixes)
    # the labels are as wide as the longest row; columns beyond it are padding: neutral
    full = torch.full(logprobs.shape, NEUTRAL, dtype=torch.long)
    full[:, : labels.shape[1]] = labels
    return token_ccp(logprobs, full)


def _as_scored(tok: dict[str, np.ndarray]) -> ScoredSequence:
    """The token metrics of a logprobs run in the shape claim_metrics reads."""
    n = len(tok["prob"])
    return ScoredSequence(
        length=n,
        response_mask=torch.ones(n, dtype=torch.bool),
        token={k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in tok.items()},
        top_ids=torch.empty(n, 0, dtype=torch.long),
        top_probs=torch.empty(n, 0),
        sequence={},
        layers={},
    )


def annotate_item(
    item: LogprobItem, tok: dict[str, np.ndarray], plan: ExtraPlan | None
) -> tuple[list[ClaimScore], dict[str, float]]:
    """Claims of ``item`` with their metrics, and CCP when ``plan`` asks for it.

    Adds ``tok["ccp"]`` (``[n]`` float64) in place when CCP is computed; returns the claims and
    the CCP sequence aggregates (empty without CCP).
    """
    splitter = plan.request.claim_splitter if plan is not None else "sentences"
    claims = item_claims(item, splitter)
    params = plan.request.ccp if plan is not None else None
    sequence: dict[str, float] = {}
    if plan is not None and plan.judge is not None and params is not None:
        ccp = item_token_ccp(item, claims, plan.judge, params)
        tok["ccp"] = ccp.double().numpy()
        mask = torch.ones(len(item.tokens), dtype=torch.bool)
        sequence = ccp_sequence_metrics(ccp, mask, claims, params.aggregation)
    return claim_metrics(_as_scored(tok), claims, params), sequence
