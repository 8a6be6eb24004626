"""A name-keyed registry describing every metric TokenPrism computes.

The registry holds descriptions, not code paths: the scoring pipeline computes all metrics of
one forward pass together (``analysis.scoring``), and the registry tells the store, the CLI and
the UI what each stored name means, its unit, its level and which direction means "uncertain".
Later metric families (CCP, probes, THR, ...) register their names here as they arrive.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

Level = Literal["token", "sequence", "layer"]
Direction = Literal["uncertain", "confident", "neutral"]


@dataclass(frozen=True)
class MetricSpec:
    """What a stored metric name means.

    Attributes:
        name: snake_case key, as stored in the database and shown in JSON.
        level: ``token`` (one value per scored token), ``sequence`` (one per run) or ``layer``
            (one per hidden-state layer of a run).
        unit: human-readable unit (``nats``, ``bits``, ``probability``, ``rank``, ...).
        higher_means: what a larger value says about the model: ``uncertain``, ``confident`` or
            ``neutral`` (no uncertainty reading). Views use it to orient colour scales.
        description: one sentence, including the convention chosen where papers differ.
        inputs: forward-pass products the metric needs (``logits``, ``hidden_states``, ...).
        signed: values are meaningful on both sides of 0 (THR, TD, advantages, deltas): views
            use a diverging colour scale centred on 0 instead of a sequential one.
        natural_range: ``(low, high)`` of the "fixed" colour scale (the range the metric's
            values usually fall in), or None when it has none (views then use the data's).
    """

    name: str
    level: Level
    unit: str
    higher_means: Direction
    description: str
    inputs: tuple[str, ...] = ("logits",)
    signed: bool = False
    natural_range: tuple[float, float] | None = None


_REGISTRY: dict[str, MetricSpec] = {}


def register_metric(spec: MetricSpec) -> MetricSpec:
    """Add ``spec`` to the registry (with its colour-scale facts); a name is registered once."""
    spec = _with_scale(spec)
    if spec.name in _REGISTRY and _REGISTRY[spec.name] != spec:
        raise ValueError(f"metric {spec.name!r} is already registered with another definition")
    _REGISTRY[spec.name] = spec
    return spec


def get_metric(name: str) -> MetricSpec:
    """Return the spec registered under ``name``; ``KeyError`` names the known metrics."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise KeyError(f"unknown metric {name!r}; known metrics: {known}") from None


def list_metrics(level: Level | None = None) -> list[MetricSpec]:
    """All registered specs, optionally of one level, sorted by name."""
    return sorted(
        (s for s in _REGISTRY.values() if level is None or s.level == level),
        key=lambda s: s.name,
    )


# Colour-scale facts, kept apart from the long spec lists: signed metrics get a diverging scale
# centred on 0, and the natural range is the "fixed" scale's domain.
SIGNED_METRICS = frozenset({"thr", "thr_advantage", "tempo_td", "tempo_advantage"})
SIGNED_SUFFIXES = ("_delta", "_diff")
NATURAL_RANGES: dict[str, tuple[float, float]] = {
    "entropy": (0.0, 4.0),
    "window_entropy": (0.0, 4.0),
    "surprisal_bits": (0.0, 12.0),
    "prob": (0.0, 1.0),
    "margin": (0.0, 1.0),
    "logprob": (-10.0, 0.0),
    "rank": (1.0, 100.0),
    "gltr_bucket": (0.0, 3.0),
    "ccp": (0.0, 1.0),
    "probe": (0.0, 1.0),
    "ce_score": (0.0, 1.0),
    "rollout_correct": (0.0, 1.0),
    "selfcheck_embed": (0.0, 1.0),
    "thr_advantage": (-2.0, 2.0),
    "tempo_advantage": (-2.0, 2.0),
}


def _with_scale(spec: MetricSpec) -> MetricSpec:
    signed = spec.signed or spec.name in SIGNED_METRICS or spec.name.endswith(SIGNED_SUFFIXES)
    natural = spec.natural_range or NATURAL_RANGES.get(spec.name)
    if spec.unit in ("probability", "fraction", "flag") and natural is None:
        natural = (0.0, 1.0)
    if (signed, natural) == (spec.signed, spec.natural_range):
        return spec
    return replace(spec, signed=signed, natural_range=natural)


_BUILTIN = [
    MetricSpec(
        "logprob",
        "token",
        "nats",
        "confident",
        "Natural log of the probability the model gave the token at its position.",
    ),
    MetricSpec(
        "prob",
        "token",
        "probability",
        "confident",
        "Probability the model gave the token at its position.",
    ),
    MetricSpec("surprisal_bits", "token", "bits", "uncertain", "Surprisal -log2 p(token)."),
    MetricSpec(
        "rank",
        "token",
        "rank",
        "uncertain",
        "1 + number of vocabulary entries with a strictly larger logit (1 = argmax).",
    ),
    MetricSpec(
        "entropy",
        "token",
        "nats",
        "uncertain",
        "Shannon entropy of the full predictive distribution that predicted the token; for "
        "runs from API logprobs (provenance source=logprobs) the entropy of the top-k "
        "renormalised to sum 1, which is neither bound: see entropy_lower / entropy_upper.",
    ),
    MetricSpec(
        "margin",
        "token",
        "probability",
        "confident",
        "p1 - p2: gap between the two most probable next tokens.",
    ),
    MetricSpec(
        "kurtosis",
        "token",
        "ratio",
        "confident",
        "Kurtosis of the predictive probability vector over the vocabulary "
        "(Pearson m4/m2^2 by default; excess when configured).",
    ),
    MetricSpec(
        "window_entropy",
        "token",
        "nats",
        "uncertain",
        "ARES window entropy: mean token entropy over a window of w response tokens "
        "starting at the token (paper convention by default).",
    ),
    MetricSpec(
        "gltr_bucket",
        "token",
        "bucket",
        "uncertain",
        "GLTR rank bucket: 0 = top 10, 1 = top 100, 2 = top 1000, 3 = rest.",
    ),
    MetricSpec(
        "step_first_surprisal",
        "token",
        "nats",
        "uncertain",
        "ASAP first-token surprisal, present only at the first token of each reasoning "
        "step (steps split on blank lines).",
    ),
    MetricSpec(
        "geometric_mean_confidence",
        "sequence",
        "probability",
        "confident",
        "exp(mean logprob) over response tokens = 1 / perplexity.",
    ),
    MetricSpec(
        "mean_prob",
        "sequence",
        "probability",
        "confident",
        "Arithmetic mean of token probabilities over response tokens.",
    ),
    MetricSpec(
        "perplexity", "sequence", "ratio", "uncertain", "exp(-mean logprob) over response tokens."
    ),
    MetricSpec(
        "mean_entropy", "sequence", "nats", "uncertain", "Mean token entropy over response tokens."
    ),
    MetricSpec(
        "mean_kurtosis",
        "sequence",
        "ratio",
        "confident",
        "Mean token kurtosis over response tokens.",
    ),
    MetricSpec(
        "gltr_top10",
        "sequence",
        "fraction",
        "confident",
        "Fraction of response tokens ranked in the top 10.",
    ),
    MetricSpec(
        "gltr_top100",
        "sequence",
        "fraction",
        "neutral",
        "Fraction of response tokens ranked 11-100.",
    ),
    MetricSpec(
        "gltr_top1000",
        "sequence",
        "fraction",
        "neutral",
        "Fraction of response tokens ranked 101-1000.",
    ),
    MetricSpec(
        "gltr_rest",
        "sequence",
        "fraction",
        "uncertain",
        "Fraction of response tokens ranked below 1000.",
    ),
    MetricSpec(
        "n_tokens",
        "sequence",
        "count",
        "neutral",
        "Number of scored response tokens (tokens with a prediction).",
    ),
    MetricSpec(
        "n_steps",
        "sequence",
        "count",
        "neutral",
        "Number of reasoning steps (response split on blank lines).",
    ),
    MetricSpec(
        "mean_step_first_surprisal",
        "sequence",
        "nats",
        "uncertain",
        "Mean ASAP first-token surprisal over the response's steps.",
    ),
    MetricSpec(
        "erv",
        "sequence",
        "rank",
        "neutral",
        "Effective-rank velocity over growing prefixes of the final layer (VERL).",
        ("hidden_states",),
    ),
    MetricSpec(
        "era",
        "sequence",
        "rank",
        "neutral",
        "Effective-rank acceleration over growing prefixes of the final layer (VERL).",
        ("hidden_states",),
    ),
    MetricSpec(
        "effective_rank",
        "layer",
        "rank",
        "neutral",
        "Roy-Vetterli effective rank of the mean-centred response hidden states.",
        ("hidden_states",),
    ),
]
# The uncertainty / hallucination family (computed on request: ``--metrics``).
_EXTRAS = [
    MetricSpec(
        "ccp",
        "token",
        "probability",
        "confident",
        "Claim-Conditioned Probability: p(entailing alternatives) / p(entailing + "
        "contradicting alternatives) among the top-K, labelled by an NLI judge (see "
        "provenance.extras.ccp.judge); conventions of provenance.extras.ccp.preset "
        "(lm-polygraph by default, tokenprism = our shortcuts).",
        ("logits", "nli_judge"),
    ),
    MetricSpec(
        "probe",
        "token",
        "probability",
        "uncertain",
        "Hallucination probability of a linear probe on one layer's residual stream "
        "(Obeso et al. 2025).",
        ("hidden_states", "probe"),
    ),
    MetricSpec(
        "sar",
        "token",
        "nats",
        "uncertain",
        "TokenSAR contribution: relevance-weighted surprisal R~(z_i) * -log p(z_i); relevance "
        "from sentence-embedding similarity without the token.",
        ("logits", "sentence_encoder"),
    ),
    MetricSpec(
        "selfcheck_embed",
        "token",
        "score",
        "uncertain",
        "Sampling inconsistency of the token's sentence: 1 - mean over samples of the best "
        "embedding similarity to a sampled sentence (SelfCheckGPT, embedding variant).",
        ("samples", "sentence_encoder"),
    ),
    MetricSpec(
        "selfcheck_ngram",
        "token",
        "nats",
        "uncertain",
        "Sampling inconsistency of the token's sentence: mean unigram surprisal under a model "
        "fit on the response and the samples (SelfCheckGPT, n-gram variant).",
        ("samples",),
    ),
    MetricSpec(
        "ccp_uncertainty",
        "sequence",
        "probability",
        "uncertain",
        "1 - product of token CCP over the response (lm-polygraph preset: every token, NaN "
        "propagates; tokenprism: NaN tokens skipped). Saturates towards 1 with length: "
        "comparable only across responses of similar length (rank by ccp_mean_log instead).",
        ("logits", "nli_judge"),
    ),
    MetricSpec(
        "claim_ccp_min",
        "sequence",
        "probability",
        "confident",
        "CCP of the weakest claim (product of its tokens' CCP). Comparable across responses "
        "with claims of similar length; falls as the number of claims grows.",
        ("logits", "nli_judge"),
    ),
    MetricSpec(
        "claim_ccp_mean",
        "sequence",
        "probability",
        "confident",
        "Mean claim CCP over the response's claims (each the product of its tokens' CCP). "
        "Comparable across responses of different lengths with claims of similar length.",
        ("logits", "nli_judge"),
    ),
    MetricSpec(
        "ccp_mean_log",
        "sequence",
        "nats",
        "confident",
        "Mean log CCP per response token (log of the geometric-mean token CCP; 0 = every "
        "token certain). Length-normalised: comparable across responses of any length.",
        ("logits", "nli_judge"),
    ),
    MetricSpec(
        "probe_max",
        "sequence",
        "probability",
        "uncertain",
        "Highest probe probability over response tokens.",
        ("hidden_states", "probe"),
    ),
    MetricSpec(
        "probe_mean",
        "sequence",
        "probability",
        "uncertain",
        "Mean probe probability over response tokens.",
        ("hidden_states", "probe"),
    ),
    MetricSpec(
        "token_sar",
        "sequence",
        "nats",
        "uncertain",
        "TokenSAR: relevance-weighted sum of token surprisals (Duan et al.).",
        ("logits", "sentence_encoder"),
    ),
    MetricSpec(
        "sentence_sar",
        "sequence",
        "nats",
        "uncertain",
        "SentenceSAR over the response and its samples (mean of -log(p_j + R_j / t)).",
        ("samples", "sentence_encoder"),
    ),
    MetricSpec(
        "sar_uncertainty",
        "sequence",
        "nats",
        "uncertain",
        "SAR: SentenceSAR with token-shifted likelihoods exp(-TokenSAR).",
        ("samples", "sentence_encoder"),
    ),
    MetricSpec(
        "selfcheck_embed_mean",
        "sequence",
        "score",
        "uncertain",
        "Mean embedding inconsistency over the response's sentences.",
        ("samples", "sentence_encoder"),
    ),
    MetricSpec(
        "selfcheck_ngram_mean",
        "sequence",
        "nats",
        "uncertain",
        "Mean unigram surprisal of the response's words (SelfCheckGPT n-gram, document Avg).",
        ("samples",),
    ),
]
# Group metrics (a group of sampled responses scored by a verifier).
_GROUPS = [
    MetricSpec(
        "thr",
        "token",
        "score",
        "neutral",
        "Token Hidden Reward: first-order influence of the token's GRPO update on the "
        "likelihood of the group's correct responses (> 0 exploitation, < 0 exploration); "
        "over the full vocabulary by default, over the group's tokens V* with "
        "thr_vocab=group (see the group summary).",
        ("logits", "hidden_states", "group"),
    ),
    MetricSpec(
        "thr_advantage",
        "token",
        "advantage",
        "neutral",
        "THR-reweighted advantage 1[|THR| > tau] (1 + sign(THR) p) A for the group's p.",
        ("logits", "hidden_states", "group"),
    ),
    MetricSpec(
        "tempo_td",
        "token",
        "reward",
        "neutral",
        "Prefix-tree TD term V(s_t+1) - V(s_t): non-zero where the token splits the group.",
        ("group",),
    ),
    MetricSpec(
        "tempo_advantage",
        "token",
        "advantage",
        "neutral",
        "TEMPO token advantage (r - mean + TD) / (std + eps).",
        ("group",),
    ),
    MetricSpec(
        "latr_branch",
        "token",
        "flag",
        "uncertain",
        "LATR branching indicator: 1 where p2 > tau_abs and p1 - p2 < tau_rel.",
    ),
    MetricSpec(
        "cure_rank",
        "token",
        "rank",
        "neutral",
        "Rank among CURE's top-K high-entropy critical-token candidates (1 = highest).",
    ),
    MetricSpec(
        "rollout_correct",
        "token",
        "fraction",
        "confident",
        "Share of sampled continuations from the prefix ending at the token whose answer "
        "verifies (critical-token rollouts).",
        ("group", "rollouts"),
    ),
    MetricSpec(
        "ce_score",
        "token",
        "probability",
        "confident",
        "cDPO contrastive estimation p_CE = softmax((1+b) z_pos - b z_neg)[token]; low = "
        "critical (the negative adapter prefers the token).",
        ("group", "adapters"),
    ),
    MetricSpec("reward", "sequence", "reward", "confident", "Verifier reward (1 correct)."),
    MetricSpec(
        "advantage",
        "sequence",
        "advantage",
        "confident",
        "GRPO advantage (reward - group mean) / (group std + eps).",
    ),
    MetricSpec(
        "rollout_baseline",
        "sequence",
        "fraction",
        "confident",
        "Share of continuations from the bare prompt that verify.",
        ("group", "rollouts"),
    ),
    MetricSpec(
        "critical_position",
        "sequence",
        "position",
        "neutral",
        "Position of the critical token found by rollouts.",
        ("group", "rollouts"),
    ),
    MetricSpec(
        "ce_min",
        "sequence",
        "probability",
        "confident",
        "Lowest p_CE over the response.",
        ("group", "adapters"),
    ),
]
# Signals of decoding experiments (per generated token; "_mean" variants per output).
_DECODING: list[tuple[str, str, Direction, str]] = [
    ("ead_temperature", "temperature", "neutral", "EAD: the annealed sampling temperature."),
    ("ead_logprob", "nats", "confident", "EAD: log-probability of the sampled token."),
    ("cntp_trials", "count", "uncertain", "CNTP: trials run at the start of the chunk."),
    ("cntp_entropy", "nats", "uncertain", "CNTP: entropy of the warped distribution."),
    ("cntp_ppl", "ratio", "uncertain", "CNTP: perplexity of the kept trial."),
    ("large_model", "flag", "uncertain", "Entropy-adaptive switching: 1 = the large model."),
    ("switch_entropy_bits", "bits", "uncertain", "Switching: entropy of the model in use."),
    ("switch_mean_bits", "bits", "uncertain", "Switching: rolling mean of that entropy."),
    ("latr_fired", "flag", "uncertain", "LATR generation: the branching rule fired here."),
]
for _name, _unit, _direction, _text in _DECODING:
    _spec_token = MetricSpec(_name, "token", _unit, _direction, _text, ("generation",))
    if _name not in _REGISTRY:
        register_metric(_spec_token)
    register_metric(
        MetricSpec(f"{_name}_mean", "sequence", _unit, _direction, f"Mean over the output: {_text}")
    )
# Runs audited from API top-k logprobs (analysis.topk): what the top-k determines or bounds.
_TOPK_INPUTS = ("top_logprobs",)
_TOPK = [
    MetricSpec(
        "rank_gt",
        "token",
        "rank",
        "uncertain",
        "API logprobs: the sampled token is outside its top-k, so its rank exceeds this k "
        "(rank is NULL there).",
        _TOPK_INPUTS,
    ),
    MetricSpec(
        "topk_mass",
        "token",
        "probability",
        "confident",
        "API logprobs: probability the returned top-k alternatives cover.",
        _TOPK_INPUTS,
    ),
    MetricSpec(
        "entropy_lower",
        "token",
        "nats",
        "uncertain",
        "API logprobs: lower bound on the full-vocabulary entropy (residual mass packed into "
        "as few tokens as the <= p_k cap allows; holds for any vocabulary size).",
        _TOPK_INPUTS,
    ),
    MetricSpec(
        "entropy_upper",
        "token",
        "nats",
        "uncertain",
        "API logprobs: upper bound on the full-vocabulary entropy (residual mass spread evenly "
        "over the other V - k tokens; V in provenance.vocab_size).",
        _TOPK_INPUTS,
    ),
    MetricSpec(
        "window_entropy_lower",
        "token",
        "nats",
        "uncertain",
        "API logprobs: ARES inclusive window mean of entropy_lower (bounds the window entropy).",
        _TOPK_INPUTS,
    ),
    MetricSpec(
        "window_entropy_upper",
        "token",
        "nats",
        "uncertain",
        "API logprobs: ARES inclusive window mean of entropy_upper (bounds the window entropy).",
        _TOPK_INPUTS,
    ),
    MetricSpec(
        "logprob_disagreement",
        "token",
        "nats",
        "neutral",
        "source=both: local re-score logprob minus the API logprob of the same token "
        "(> 0: the local model finds the token likelier than the model that wrote it).",
        ("logits", "top_logprobs"),
    ),
    MetricSpec(
        "mean_entropy_lower",
        "sequence",
        "nats",
        "uncertain",
        "API logprobs: mean of entropy_lower (a lower bound on the mean entropy).",
        _TOPK_INPUTS,
    ),
    MetricSpec(
        "mean_entropy_upper",
        "sequence",
        "nats",
        "uncertain",
        "API logprobs: mean of entropy_upper (an upper bound on the mean entropy).",
        _TOPK_INPUTS,
    ),
    MetricSpec(
        "mean_topk_mass",
        "sequence",
        "probability",
        "confident",
        "API logprobs: mean probability covered by the top-k.",
        _TOPK_INPUTS,
    ),
    MetricSpec(
        "mean_logprob_disagreement",
        "sequence",
        "nats",
        "neutral",
        "source=both: mean of logprob_disagreement over the response tokens.",
        ("logits", "top_logprobs"),
    ),
]
# Logit lens (backend/lens, on demand): layers index hidden states (0 = embeddings).
_LENS = [
    MetricSpec(
        "decided_layer",
        "token",
        "layer",
        "uncertain",
        "Logit lens: first layer from which the token stays top-1 through the last layer "
        "(absent when the last layer does not rank it first).",
        ("hidden_states",),
    ),
    MetricSpec(
        "lens_kl_final",
        "layer",
        "nats",
        "neutral",
        "Logit lens: mean over positions of KL(final || layer), the final distribution's "
        "divergence from the layer's reading through the final norm and head.",
        ("hidden_states",),
    ),
]
_BUILTIN = [_with_scale(s) for s in _BUILTIN]
_EXTRAS = [_with_scale(s) for s in _EXTRAS]
_GROUPS = [_with_scale(s) for s in _GROUPS]
_TOPK = [_with_scale(s) for s in _TOPK]
for _spec in _BUILTIN + _EXTRAS + _GROUPS + _TOPK + _LENS:
    register_metric(_spec)

# Model diff (analysis.divergence): per-token values of model B against model A on A's tokens,
# stored in diff_token_metrics keyed by (diff_id, run_id, position, metric).
_DIFF: list[tuple[str, str, str, Direction, str]] = [
    ("kl", "token", "nats", "uncertain", "KL(P_A || P_B) over the full vocabulary (model diff)."),
    ("kl_rev", "token", "nats", "uncertain", "KL(P_B || P_A) over the full vocabulary."),
    ("js", "token", "nats", "uncertain", "Jensen-Shannon divergence of P_A and P_B (<= ln 2)."),
    (
        "delta_logprob",
        "token",
        "nats",
        "neutral",
        "log p_B(token) - log p_A(token); across tokenizers, B's log-probs summed over the span.",
    ),
    ("top1_agree", "token", "flag", "confident", "1 when A's and B's argmax tokens agree."),
    ("rank_b", "token", "rank", "uncertain", "1-based rank of the token under model B."),
    ("logprob_b", "token", "nats", "confident", "log p_B(token) (model diff)."),
    ("kl_mean", "sequence", "nats", "uncertain", "Mean per-token KL(P_A || P_B) of a diff."),
    ("kl_p90", "sequence", "nats", "uncertain", "90th percentile of per-token KL of a diff."),
    ("kl_p99", "sequence", "nats", "uncertain", "99th percentile of per-token KL of a diff."),
    ("kl_max", "sequence", "nats", "uncertain", "Largest per-token KL of a diff."),
    ("top1_agreement", "sequence", "fraction", "confident", "Share of tokens with top1_agree."),
]
for _name, _level, _unit, _direction, _text in _DIFF:
    _spec = MetricSpec(_name, _level, _unit, _direction, _text, ("logits", "model_b"))  # type: ignore[arg-type]
    # delta_logprob is signed (B above or below A): a diverging scale centred on 0
    register_metric(_with_scale(replace(_spec, signed=_name == "delta_logprob")))
