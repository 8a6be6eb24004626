"""The uncertainty and hallucination family on top of one scoring pass: CCP, probes, SAR and
sampling consistency, plus the claims (sentences) of every response.

:func:`plan_extras` resolves what a request needs once (NLI judge, probe, sentence encoder), so
a job of thousands of texts loads each model once. :meth:`ExtraPlan.apply` then adds token
metrics (``ccp``, ``probe``, ``sar``, ``selfcheck_embed``, ``selfcheck_ngram``), sequence
metrics and claim-level values to the scored texts of a batch. What produced each value (the
judge's name, the probe and its layer, the encoder, the samples) goes into the run's
provenance under ``extras``.

CCP and probes need nothing beyond the forward pass (top-k alternatives and hidden states are
already there); SAR needs n+1 sentence embeddings per response; sampling consistency samples N
responses and scores them teacher-forced.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from tokenprism.analysis.ccp import (
    DEFAULT_CCP_PRESET,
    CcpParams,
    alternatives_with_target,
    ccp_params,
    ccp_preset_name,
    claim_ccp,
    label_alternatives,
    sequence_ccp,
)
from tokenprism.analysis.ccp import token_ccp as compute_token_ccp
from tokenprism.analysis.claims import Claim, claim_token_positions, get_splitter
from tokenprism.analysis.sar import sar as sar_from_token_sars
from tokenprism.analysis.sar import sentence_sar, token_sar_contributions
from tokenprism.analysis.scoring import ScoredSequence
from tokenprism.analysis.selfcheck import (
    broadcast_to_tokens,
    embedding_inconsistency,
    ngram_inconsistency,
)
from tokenprism.backend.errors import UserError
from tokenprism.backend.models.embeddings import SentenceEncoder, get_encoder
from tokenprism.backend.models.loader import LoadedModel
from tokenprism.backend.models.nli import FallbackJudge, HfNliJudge, get_judge
from tokenprism.backend.probes.storage import StoredProbe, probe_for
from tokenprism.backend.scoring.encoding import EncodedText
from tokenprism.backend.settings import Settings

EXTRA_METRICS = ("ccp", "probe", "sar", "selfcheck")


class _Rescored(Protocol):
    encoded: EncodedText
    scores: ScoredSequence


# scores texts in one pass (the runner's ``score_batch``): sampled answers of sampling consistency
Rescore = Callable[[LoadedModel, list[EncodedText]], Sequence[_Rescored]]
SarScope = Literal["auto", "response", "sentence"]


def parse_metrics(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"ccp,probe"`` or a list → validated names in canonical order; ``all`` selects all."""
    if spec is None:
        return ()
    names = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    names = [n for n in names if n]
    if "all" in names:
        return EXTRA_METRICS
    unknown = sorted(set(names) - set(EXTRA_METRICS))
    if unknown:
        raise UserError(
            f"unknown metric family {', '.join(map(repr, unknown))}; choose from "
            f"{', '.join(EXTRA_METRICS)} (or all); the one-pass metrics are always computed"
        )
    return tuple(n for n in EXTRA_METRICS if n in names)


@dataclass(frozen=True)
class ExtraRequest:
    """What to compute beyond the one-pass metrics; stored with every run it produced.

    Attributes:
        metrics: families from :data:`EXTRA_METRICS`.
        judge: CCP's NLI judge (``fallback`` or an NLI model id / path); None = the setting.
        probe: probe name; None = the newest probe trained for the model.
        ccp: CCP parameters (alternatives, short-circuits, context mode); the default is the
            ``lm-polygraph`` preset, :func:`extra_request` builds one from a preset name.
        claim_splitter: how responses are cut into claims (``sentences`` or ``lines``).
        sar_scope: what TokenSAR removes a token from: the question + whole response (the
            paper), or only the token's sentence; ``auto`` uses the response while it fits the
            encoder's 256 word pieces (beyond that the encoder would truncate it and every
            later token would look irrelevant), else the sentence.
        samples: responses sampled for sampling consistency and sentence-level SAR.
        sample_max_new_tokens: length limit of each sample.
        sample_temperature: sampling temperature (SelfCheckGPT: 1.0).
        seed: sampling seed (None = nondeterministic).
    """

    metrics: tuple[str, ...] = ()
    judge: str | None = None
    probe: str | None = None
    ccp: CcpParams = field(default_factory=CcpParams)
    claim_splitter: str = "sentences"
    sar_scope: SarScope = "auto"
    samples: int = 5
    sample_max_new_tokens: int = 96
    sample_temperature: float = 1.0
    seed: int | None = 0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["metrics"] = list(self.metrics)
        return out


def extra_request(
    metrics: tuple[str, ...], *, ccp_preset: str | None = None, **fields: Any
) -> ExtraRequest:
    """An :class:`ExtraRequest` with CCP parameters from a preset name (None: the default,
    ``lm-polygraph``); an unknown preset is a :class:`UserError` naming the known ones."""
    try:
        params = ccp_params(ccp_preset or DEFAULT_CCP_PRESET)
    except ValueError as err:
        raise UserError(str(err)) from None
    return ExtraRequest(metrics=metrics, ccp=params, **fields)


def request_from_dict(raw: dict[str, Any]) -> ExtraRequest:
    """Rebuild a stored :meth:`ExtraRequest.as_dict` (job parameters)."""
    values = dict(raw)
    values["metrics"] = parse_metrics(values.get("metrics") or [])
    stored = dict(values.get("ccp", {}))
    if stored and "aggregation" not in stored:  # stored before the presets: our conventions
        stored.update(strip="tokenprism", aggregation="tokenprism")
    values["ccp"] = CcpParams(**stored)
    return ExtraRequest(**values)


@dataclass
class ClaimScore:
    """One claim of a response with its token positions and claim-level metrics."""

    claim: Claim
    positions: list[int]
    metrics: dict[str, float]


@dataclass
class ExtraPlan:
    """A request with its models resolved; apply it to every batch of a job."""

    request: ExtraRequest
    settings: Settings
    judge: HfNliJudge | FallbackJudge | None = None
    probe: StoredProbe | None = None
    encoder: SentenceEncoder | None = None

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.request.metrics

    def provenance(self) -> dict[str, Any]:
        out: dict[str, Any] = {"request": self.request.as_dict()}
        if self.judge is not None:
            out["ccp"] = {
                **self.judge.provenance(),
                "preset": ccp_preset_name(self.request.ccp),
                "params": self.request.ccp.as_dict(),
            }
        if self.probe is not None:
            out["probe"] = self.probe.provenance()
        if self.encoder is not None:
            out["encoder"] = self.encoder.provenance()
        return out

    def probe_values(self, hidden_states: tuple[Tensor, ...] | None) -> Tensor | None:
        """``[batch, T]`` probe probabilities from the forward pass (None if not requested)."""
        if self.probe is None or hidden_states is None:
            return None
        return self.probe.apply(hidden_states).cpu()

    def apply(
        self,
        lm: LoadedModel,
        encoded: Sequence[EncodedText],
        scored: Sequence[ScoredSequence],
        probe_values: Tensor | None,
        rescore: Rescore,
    ) -> list[tuple[list[ClaimScore], dict[str, Any]]]:
        """Add the requested metrics to ``scored`` in place; return claims + provenance per row.

        ``rescore`` scores the sampled answers of sampling consistency; the runner passes its
        own batch scorer (this module sits below the runner, which imports it).
        """
        out = []
        for row, (enc, sc) in enumerate(zip(encoded, scored, strict=True)):
            extras: dict[str, Any] = {}
            claims = claims_of(enc, sc, self.request.claim_splitter)
            if probe_values is not None:
                _add_probe(sc, probe_values[row, : sc.length])
            if self.judge is not None:
                _add_ccp(lm, enc, sc, claims, self.judge, self.request.ccp)
            if self.encoder is not None and "sar" in self.metrics:
                extras["sar"] = _add_token_sar(enc, sc, claims, self.encoder, self.request)
            if self.encoder is not None and "selfcheck" in self.metrics:
                extras["samples"] = _add_sampling(lm, enc, sc, claims, self.encoder, self, rescore)
            claim_scores = claim_metrics(sc, claims, self.request.ccp)
            out.append((claim_scores, extras))
        return out


def plan_extras(lm: LoadedModel, request: ExtraRequest, settings: Settings) -> ExtraPlan:
    """Resolve judge / probe / encoder for ``request`` (each loaded once per process)."""
    get_splitter(request.claim_splitter)  # fail early on a bad name
    if request.samples < 2 and "selfcheck" in request.metrics:
        raise UserError("sampling consistency needs at least 2 samples")
    plan = ExtraPlan(request=request, settings=settings)
    if "ccp" in request.metrics:
        plan.judge = get_judge(request.judge or settings.nli_model, settings)
    if "probe" in request.metrics:
        plan.probe = probe_for(lm, settings, request.probe)
    if "sar" in request.metrics or "selfcheck" in request.metrics:
        plan.encoder = get_encoder(settings.embedding_model, settings)
    return plan


# ---- claims ---------------------------------------------------------------------------------


def _offsets(enc: EncodedText) -> Tensor:
    return torch.tensor(enc.offsets, dtype=torch.long).reshape(-1, 2)


def claims_of(
    enc: EncodedText, sc: ScoredSequence, splitter: str = "sentences"
) -> list[tuple[Claim, Tensor]]:
    """The response's claims with the positions of their scored response tokens."""
    start = enc.response_span[0]
    end = start + len(enc.response)  # the end-of-turn marker is not part of any claim
    claims = get_splitter(splitter)(enc.text, start, end)
    positions = claim_token_positions(claims, _offsets(enc), sc.response_mask)
    return list(zip(claims, positions, strict=True))


def claim_metrics(
    sc: ScoredSequence,
    claims: Sequence[tuple[Claim, Tensor]],
    ccp: CcpParams | None = None,
) -> list[ClaimScore]:
    """Claim-level values of every token metric present: CCP multiplies, the probe and
    1 - prob take the maximum (the weakest token decides), SAR sums, the rest average.

    CCP follows ``ccp.aggregation`` (default: the ``lm-polygraph`` preset's), under which a
    claim without tokens has CCP 1, the empty product; every other metric is absent there.
    """
    out = []
    prob = sc.token["prob"]
    aggregation = (ccp or CcpParams()).aggregation
    for claim, pos in claims:
        values: dict[str, float] = {}
        if not len(pos) and "ccp" in sc.token and aggregation == "lm-polygraph":
            values["ccp"] = 1.0
        if len(pos):
            values["entropy"] = _nanmean(sc.token["entropy"][pos])
            values["one_minus_prob"] = _nanmax(1.0 - prob[pos])
            if "probe" in sc.token:
                values["probe"] = _nanmax(sc.token["probe"][pos])
            if "ccp" in sc.token:
                values["ccp"] = float(claim_ccp(sc.token["ccp"], [pos], aggregation)[0])
            if "sar" in sc.token:
                values["sar"] = float(torch.nansum(sc.token["sar"][pos]))
            for name in ("selfcheck_embed", "selfcheck_ngram"):
                if name in sc.token:
                    values[name] = _nanmax(sc.token[name][pos])
        out.append(ClaimScore(claim, [int(p) for p in pos.tolist()], values))
    return out


def _nanmean(x: Tensor) -> float:
    x = x[~torch.isnan(x)]
    return float(x.mean()) if len(x) else math.nan


def _nanmax(x: Tensor) -> float:
    x = x[~torch.isnan(x)]
    return float(x.max()) if len(x) else math.nan


# ---- probe ----------------------------------------------------------------------------------


def _add_probe(sc: ScoredSequence, values: Tensor) -> None:
    # the scored response tokens only, as apply_probe_to_run stores them: position 0 of a
    # raw-text run has no prediction and is part of no claim
    token = torch.where(sc.response_mask, values.float(), torch.nan)
    sc.token["probe"] = token
    counted = token[sc.response_mask]
    sc.sequence["probe_max"] = _nanmax(counted)
    sc.sequence["probe_mean"] = _nanmean(counted)


# ---- CCP ------------------------------------------------------------------------------------


def _add_ccp(
    lm: LoadedModel,
    enc: EncodedText,
    sc: ScoredSequence,
    claims: Sequence[tuple[Claim, Tensor]],
    judge: HfNliJudge | FallbackJudge,
    params: CcpParams,
) -> None:
    rows = sc.response_mask.nonzero().squeeze(-1)
    ccp = torch.full((sc.length,), float("nan"))
    if len(rows):
        k = min(params.n_alternatives, sc.top_ids.shape[1])
        top_ids = sc.top_ids[rows, :k]
        top_lp = sc.top_probs[rows, :k].float().clamp_min(1e-30).log()
        targets = torch.tensor(enc.input_ids)[rows]
        ids, logprobs = alternatives_with_target(
            top_ids, top_lp, targets, sc.token["logprob"][rows].float()
        )
        vocab = lm.vocab_array
        ids_np = ids.numpy()
        alt_texts = [[str(t) for t in vocab[np.clip(r, 0, None)]] for r in ids_np]
        # decoded text, as LM-Polygraph's tokenizer.decode([alt]) gives it
        original = [str(vocab[int(t)]) for t in targets.tolist()]
        prefixes = _claim_prefixes(enc, claims, rows) if params.context == "prefix" else None
        labels = label_alternatives(original, alt_texts, judge, params, prefixes)
        valid = (ids >= 0).all(-1) | (ids[:, 0] >= 0)
        ccp[rows] = compute_token_ccp(logprobs, labels, valid)
    sc.token["ccp"] = ccp
    # LM-Polygraph's sequence CCP is the product over every response token (NaN propagates,
    # no token gives 1); the tokenprism preset skips NaN tokens (no scored token: NaN)
    sc.sequence["ccp_uncertainty"] = 1.0 - sequence_ccp(ccp[sc.response_mask], params.aggregation)
    positions = [pos for _, pos in claims]
    per_claim = claim_ccp(ccp, positions, params.aggregation) if claims else torch.tensor([])
    # length-normalised form: 1 - prod CCP tends to 1 with length, the mean log does not
    counted = ccp[sc.response_mask]
    counted = counted[~torch.isnan(counted)]
    sc.sequence["ccp_mean_log"] = (
        float(counted.double().clamp_min(1e-30).log().mean()) if len(counted) else math.nan
    )
    # the minimum over claims is ours (no LM-Polygraph counterpart): undefined claims are skipped
    per_claim = per_claim[~torch.isnan(per_claim)]
    sc.sequence["claim_ccp_min"] = float(per_claim.min()) if len(per_claim) else math.nan
    sc.sequence["claim_ccp_mean"] = float(per_claim.mean()) if len(per_claim) else math.nan


def _claim_prefixes(
    enc: EncodedText, claims: Sequence[tuple[Claim, Tensor]], rows: Tensor
) -> list[str]:
    """For CCP's prefix context: the claim's text before each token ('' outside claims)."""
    owner: dict[int, Claim] = {}
    for claim, pos in claims:
        for p in pos.tolist():
            owner.setdefault(int(p), claim)
    out = []
    for p in rows.tolist():
        found = owner.get(int(p))
        start = enc.offsets[int(p)][0]
        prefix = enc.text[found.char_start : max(found.char_start, start)] if found else ""
        # the word is compared without its leading space, so the prefix supplies one
        out.append(prefix.rstrip() + " " if prefix.strip() else "")
    return out


# ---- SAR ------------------------------------------------------------------------------------


def _without_token(text: str, span: tuple[int, int], token: tuple[int, int]) -> str:
    """``text[span]`` with the token's characters cut out."""
    a, b = max(token[0], span[0]), min(token[1], span[1])
    if b <= a:
        return text[span[0] : span[1]]
    return text[span[0] : a] + text[b : span[1]]


def _token_similarities(
    enc: EncodedText,
    positions: list[int],
    claims: Sequence[tuple[Claim, Tensor]],
    encoder: SentenceEncoder,
    scope: SarScope,
) -> tuple[Tensor, str]:
    """g(x⊕s, x⊕s∖z_i) for each response token; tokens with no characters in the response
    (template markup such as the end-of-turn marker) get similarity 1: relevance 0."""
    start = enc.response_span[0]
    span = (start, start + len(enc.response))
    question = (enc.prompt or "").strip()
    whole = (question + " " + enc.text[span[0] : span[1]]).strip()
    if scope == "auto":
        fits = encoder.n_tokens(whole) <= encoder.max_length
        scope = "response" if fits else "sentence"
    sims = torch.ones(len(positions))
    originals: list[str] = []
    variants: list[str] = []
    where: list[int] = []
    owner: dict[int, Claim] = {}
    for claim, pos in claims:
        for p in pos.tolist():
            owner.setdefault(int(p), claim)
    for i, p in enumerate(positions):
        tok = enc.offsets[p]
        if min(tok[1], span[1]) <= max(tok[0], span[0]):
            continue
        if scope == "response":
            originals.append(whole)
            variants.append((question + " " + _without_token(enc.text, span, tok)).strip())
        else:
            found = owner.get(p)
            if found is None:
                continue
            cspan = (found.char_start, found.char_end)
            originals.append(enc.text[cspan[0] : cspan[1]])
            variants.append(_without_token(enc.text, cspan, tok))
        where.append(i)
    if where:
        unique = sorted(set(originals))
        emb_orig = encoder.encode(unique)
        lookup = {t: emb_orig[j] for j, t in enumerate(unique)}
        emb_var = encoder.encode(variants)
        base = torch.stack([lookup[t] for t in originals])
        sims[torch.tensor(where)] = (base * emb_var).sum(-1).clamp(0.0, 1.0)
    return sims, scope


def _add_token_sar(
    enc: EncodedText,
    sc: ScoredSequence,
    claims: Sequence[tuple[Claim, Tensor]],
    encoder: SentenceEncoder,
    request: ExtraRequest,
) -> dict[str, Any]:
    positions = [int(p) for p in sc.response_mask.nonzero().squeeze(-1).tolist()]
    sar = torch.full((sc.length,), float("nan"))
    total = math.nan
    scope: str = request.sar_scope
    if positions:
        sims, scope = _token_similarities(enc, positions, claims, encoder, request.sar_scope)
        nll = -sc.token["logprob"][torch.tensor(positions)].float()
        contributions = token_sar_contributions(nll, sims)
        sar[torch.tensor(positions)] = contributions
        total = float(contributions.sum())
    sc.token["sar"] = sar
    sc.sequence["token_sar"] = total
    return {"scope": scope}


# ---- sampling consistency and sentence-level SAR -------------------------------------------


def _add_sampling(
    lm: LoadedModel,
    enc: EncodedText,
    sc: ScoredSequence,
    claims: Sequence[tuple[Claim, Tensor]],
    encoder: SentenceEncoder,
    plan: ExtraPlan,
    rescore: Rescore,
) -> dict[str, Any]:
    from tokenprism.backend.sampling.generation import sample_responses

    request = plan.request
    if not enc.prompt:
        return {"skipped": "sampling consistency needs a prompt to sample from"}
    samples = sample_responses(
        lm,
        enc.prompt,
        system=enc.system_prompt,
        n=request.samples,
        max_new_tokens=request.sample_max_new_tokens,
        temperature=request.sample_temperature,
        seed=request.seed,
    )
    sample_texts = [s.response for s in samples]
    splitter = get_splitter(request.claim_splitter)
    claim_texts = [c.text for c, _ in claims]
    if claim_texts:
        sample_sentences = [[c.text for c in splitter(t, 0, len(t))] for t in sample_texts]
        embed = embedding_inconsistency(
            encoder.encode(claim_texts), [encoder.encode(s) for s in sample_sentences]
        )
        ngram = ngram_inconsistency(claim_texts, sample_texts)
        positions = [pos for _, pos in claims]
        sc.token["selfcheck_embed"] = broadcast_to_tokens(embed, positions, sc.length)
        sc.token["selfcheck_ngram"] = broadcast_to_tokens(
            torch.tensor(ngram.avg, dtype=torch.float32), positions, sc.length
        )
        sc.sequence["selfcheck_embed_mean"] = _nanmean(embed)
        sc.sequence["selfcheck_ngram_mean"] = ngram.doc_avg
    # sentence-level SAR over the response and its samples (K = 1 + N answers)
    scored_samples = rescore(lm, samples) if samples else []
    nonempty = [s for s in scored_samples if bool(s.scores.response_mask.any())]
    if nonempty:
        question = (enc.prompt or "").strip()
        answers = [enc.response] + [s.encoded.response for s in nonempty]
        emb = encoder.encode([(question + " " + a).strip() for a in answers])
        similarity = (emb @ emb.T).clamp(0.0, 1.0)
        logliks = [float(sc.token["logprob"][sc.response_mask].double().sum())]
        token_sars = [sc.sequence.get("token_sar", math.nan)]
        for s in nonempty:
            logliks.append(float(s.scores.token["logprob"][s.scores.response_mask].double().sum()))
            if "sar" in request.metrics:
                sample_claims = claims_of(s.encoded, s.scores, request.claim_splitter)
                _add_token_sar(s.encoded, s.scores, sample_claims, encoder, request)
                token_sars.append(s.scores.sequence["token_sar"])
        _, sc.sequence["sentence_sar"] = sentence_sar(
            torch.tensor(logliks, dtype=torch.float64), similarity.double()
        )
        if "sar" in request.metrics and not any(math.isnan(v) for v in token_sars):
            _, sc.sequence["sar_uncertainty"] = sar_from_token_sars(
                torch.tensor(token_sars, dtype=torch.float64), similarity.double()
            )
    return {"n": len(sample_texts), "texts": sample_texts}
