"""Decoding rules that change what is generated, one output per call (batch 1).

Each rule runs its own loop under ``torch.inference_mode`` and returns a
:class:`DecodedOutput`: the generated text and token ids plus per-generated-token *signals*
(``name -> list[float]``, one value per generated token, NaN where a signal does not apply),
which :func:`backend.experiments.run_decode` stores as token metrics of the teacher-forced run.
Randomness comes only from a ``torch.Generator`` seeded with the ``seed`` argument, so a rule
with the same inputs and seed gives the same output.

* :func:`ead_decode`: Exploratory Annealed Decoding (metric-definitions §20).
* :func:`cntp_decode`: Cautious Next Token Prediction (§19).
* :func:`switch_decode` and :func:`early_exit_model`: Entropy Adaptive Decoding (§21).
* :func:`latr_decode`: LATR-style lookahead branching (§14), every surviving branch.

Implementation choices (the sections leave them open):

* EAD, CNTP and LATR use their own loop over a ``DynamicCache`` (``past_key_values``), one
  new token per forward. EAD is not an HF ``LogitsProcessor`` so that the temperature, the
  sampled token's log-probability and the generator are under our control.
* CNTP clones the cache of the current state with ``copy.deepcopy`` for every trial (correctness
  first; the model appends to a ``DynamicCache`` in place) and adopts the chosen trial's cache.
* Entropy Adaptive Decoding keeps no cache: every step runs a full forward of the current
  sequence on the model it needs (outputs are short; no cache bookkeeping across switches).
* Sampling is ``torch.multinomial`` on float32 probabilities with the rule's generator; top-p
  follows Hugging Face's ``TopPLogitsWarper`` (applied after the temperature).
* EOS is the tokenizer's ``eos_token_id`` plus the generation config's; generation stops after
  an EOS token (which is kept in ``token_ids`` and has signal values) or at ``max_new_tokens``
  (clamped to the context length). ``text`` is the decoded ids with special tokens skipped and
  is not stripped, so re-encoding it normally gives the generated ids back.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from tokenprism.analysis.critical import latr_branching
from tokenprism.analysis.decoding import (
    cntp_trials,
    ead_temperature,
    entropy_bits,
    perplexity,
    rolling_mean,
)
from tokenprism.backend.errors import UserError
from tokenprism.backend.limits import check_cancelled
from tokenprism.backend.models.loader import LoadedModel
from tokenprism.backend.models.variants import Variant, build_variant
from tokenprism.backend.models.variants import get_model as get_variant_model
from tokenprism.backend.sampling.types import eos_ids
from tokenprism.backend.settings import Settings

CNTP_PUNCTUATION = (".", ",", "\n", "?", "!", ":", ";", ")", "]", "}")


@dataclass
class DecodedOutput:
    """One generated output of a decoding rule.

    Attributes:
        text: the generated ids decoded with special tokens skipped (not stripped).
        token_ids: the generated ids (an EOS that ended generation included).
        signals: per generated token, ``name -> [len(token_ids)]`` floats (NaN = not applicable).
        info: sequence-level facts of the rule (e.g. ``large_share``, ``mean_temperature``).
        debug: details for tests and inspection (CNTP chunks and trial PPLs, LATR tree).
        stop_reason: ``eos`` or ``length``.
        branch_id: LATR branch id in creation order (0 = main branch; 0 for other rules).
        branch_of: LATR parent branch id (None for the main branch and other rules).
        branch_position: index into ``token_ids`` of the runner-up token where the branch left
            its parent (None for the main branch and other rules).
    """

    text: str
    token_ids: list[int]
    signals: dict[str, list[float]]
    info: dict[str, Any] = field(default_factory=dict)
    debug: dict[str, Any] = field(default_factory=dict)
    stop_reason: str = "length"
    branch_id: int = 0
    branch_of: int | None = None
    branch_position: int | None = None


# ---- shared helpers ---------------------------------------------------------------------------


def _check_prompt(lm: LoadedModel, prompt_ids: Tensor, max_new_tokens: int) -> tuple[Tensor, int]:
    """Validate a ``[1, T]`` prompt; return it on the model's device and the token budget."""
    if prompt_ids.dim() != 2 or prompt_ids.shape[0] != 1 or prompt_ids.shape[1] == 0:
        raise UserError(f"decoding rules take one prompt [1, T], got {tuple(prompt_ids.shape)}")
    if max_new_tokens < 1:
        raise UserError("max_new_tokens must be >= 1")
    room = lm.context_length - int(prompt_ids.shape[1])
    if room < 1:
        raise UserError(
            f"the prompt is {prompt_ids.shape[1]} tokens long; this model's context is "
            f"{lm.context_length} tokens, which leaves no room to generate"
        )
    return prompt_ids.to(lm.device), min(max_new_tokens, room)


def _generator(lm: LoadedModel, seed: int) -> torch.Generator:
    gen = torch.Generator(device=lm.device)
    gen.manual_seed(int(seed))
    return gen


def _forward(model: Any, ids: Tensor, cache: Any) -> tuple[Tensor, Any]:
    """Feed ``ids [1, n]`` after ``cache``; return the last position's float32 logits and the
    (updated in place) cache."""
    check_cancelled()  # every token of every rule passes here
    out = model(input_ids=ids, past_key_values=cache, use_cache=True)
    return out.logits[0, -1].float(), out.past_key_values


def _token(token: int, device: torch.device) -> Tensor:
    return torch.tensor([[token]], dtype=torch.long, device=device)


def top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """Hugging Face ``TopPLogitsWarper`` on a ``[V]`` vector (at least one token kept).

    Tokens are sorted ascending; those whose cumulative probability is ``<= 1 - top_p`` are
    set to ``-inf``. ``top_p >= 1`` returns the logits unchanged.
    """
    if not 0.0 < top_p <= 1.0:
        raise UserError(f"top_p must be in (0, 1], got {top_p}")
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=False)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    remove_sorted = cumulative <= (1.0 - top_p)
    remove_sorted[-1] = False
    remove = torch.zeros_like(remove_sorted).scatter(0, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def _sample(probs: Tensor, gen: torch.Generator) -> int:
    return int(torch.multinomial(probs, 1, generator=gen).item())


def _decode(lm: LoadedModel, ids: list[int]) -> str:
    return str(lm.tokenizer.decode(ids, skip_special_tokens=True))


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


# ---- EAD --------------------------------------------------------------------------------------


def ead_decode(
    lm: LoadedModel,
    prompt_ids: Tensor,
    *,
    max_new_tokens: int,
    tau_max: float = 1.2,
    tau_min: float = 0.1,
    d: float = 200.0,
    warmup: int = 10,
    top_p: float = 1.0,
    seed: int = 0,
) -> DecodedOutput:
    """Exploratory Annealed Decoding: token t (1-based) is sampled from ``softmax(z_t / τ_t)``.

    ``τ_t = analysis.decoding.ead_temperature(t, tau_max, tau_min, d, warmup)`` (the paper's
    form; defaults are its 1.5B setting with ``d = d_0``), then top-p. Own loop with a KV cache.

    Signals: ``ead_temperature`` (τ_t) and ``ead_logprob`` (log-probability of the sampled token
    under the annealed, top-p-filtered distribution it was drawn from).
    """
    ids, budget = _check_prompt(lm, prompt_ids, max_new_tokens)
    try:
        temps = ead_temperature(
            torch.arange(1, budget + 1), tau_max=tau_max, tau_min=tau_min, d=d, warmup=warmup
        )
    except ValueError as err:
        raise UserError(f"bad EAD parameters: {err}") from None
    top_p_filter(torch.zeros(1), top_p)  # validates top_p before any forward pass
    eos = eos_ids(lm)
    gen = _generator(lm, seed)
    tokens: list[int] = []
    temperatures: list[float] = []
    logprobs: list[float] = []
    stop = "length"
    with torch.inference_mode():
        logits, cache = _forward(lm.model, ids, None)
        for t in range(budget):
            tau = temps[t].to(logits.device)
            z = top_p_filter(logits / tau, top_p)
            logp = torch.log_softmax(z, -1)
            token = _sample(logp.exp(), gen)
            tokens.append(token)
            temperatures.append(float(temps[t]))
            logprobs.append(float(logp[token]))
            if token in eos:
                stop = "eos"
                break
            if t + 1 < budget:
                logits, cache = _forward(lm.model, _token(token, lm.device), cache)
    return DecodedOutput(
        text=_decode(lm, tokens),
        token_ids=tokens,
        signals={"ead_temperature": temperatures, "ead_logprob": logprobs},
        info={"mean_temperature": _mean(temperatures)},
        stop_reason=stop,
    )


# ---- CNTP -------------------------------------------------------------------------------------


def punctuation_ids(lm: LoadedModel) -> set[int]:
    """CNTP's stop set: the first id of encoding each of ``. , \\n ? ! : ; ) ] }``."""
    ids: set[int] = set()
    for mark in CNTP_PUNCTUATION:
        encoded = lm.tokenizer(mark, add_special_tokens=False)["input_ids"]
        if encoded:
            ids.add(int(encoded[0]))
    return ids


@dataclass
class _Trial:
    tokens: list[int]
    logprobs: list[float]
    entropies: list[float]
    logits: Tensor | None  # next-token logits after the trial (None when it ended with EOS)
    cache: Any
    eos: bool

    @property
    def ppl(self) -> float:
        return float(perplexity(torch.tensor(self.logprobs)))


def _warped_logits(logits: Tensor, temperature: float, top_p: float) -> Tensor:
    return top_p_filter(logits / temperature, top_p)


def _warped_entropy(logp: Tensor) -> float:
    """Entropy in nats of the warped distribution, CNTP's way: ``-Σ p log(p + 1e-10)``."""
    p = logp.exp()
    return float(-(p * torch.log(p + 1e-10)).sum())


def _cntp_trial(
    lm: LoadedModel,
    logits: Tensor,
    cache: Any,
    *,
    limit: int,
    remaining: int,
    stop_ids: set[int],
    eos: set[int],
    temperature: float,
    top_p: float,
    gen: torch.Generator,
) -> _Trial:
    """Sample up to ``limit`` tokens from the warped distribution, stopping after a token in
    ``stop_ids`` or EOS. Each token is fed to the model so the returned cache and logits
    continue after the trial, except an EOS and a token that spends the whole ``remaining``
    budget (nothing follows them)."""
    trial = _Trial([], [], [], logits, cache, False)
    for i in range(limit):
        assert trial.logits is not None
        logp = torch.log_softmax(_warped_logits(trial.logits, temperature, top_p), -1)
        token = _sample(logp.exp(), gen)
        trial.tokens.append(token)
        trial.logprobs.append(float(logp[token]))
        trial.entropies.append(_warped_entropy(logp))
        if token in eos:
            trial.eos, trial.logits = True, None
            break
        if i + 1 == remaining:
            trial.logits = None
            break
        trial.logits, trial.cache = _forward(lm.model, _token(token, lm.device), trial.cache)
        if token in stop_ids:
            break
    return trial


def cntp_decode(
    lm: LoadedModel,
    prompt_ids: Tensor,
    *,
    max_new_tokens: int,
    max_trials: int = 10,
    h_low: float = 0.01,
    h_high: float = 1.5,
    temperature: float = 0.8,
    top_p: float = 0.95,
    max_trial_tokens: int = 32,
    seed: int = 0,
) -> DecodedOutput:
    """Cautious Next Token Prediction (§19), batch 1.

    At each step the entropy H (nats) of the processed distribution ``top_p(z / temperature)``
    gives ``N = analysis.decoding.cntp_trials(H)``. ``N <= 1``: one sampled token. Otherwise N
    independent trials run from the current state, each on a ``copy.deepcopy`` of the KV cache,
    each sampling (its first token included) until a punctuation token (:func:`punctuation_ids`),
    EOS, ``max_trial_tokens`` or the remaining budget; the trial with the lowest
    ``PPL = exp(-mean log p)`` under the warped probabilities of its own tokens is kept (first on
    ties) and all its tokens are appended. ``max_trial_tokens`` bounds a trial that never meets
    punctuation (the reference runs it to a stopping criterion).

    Signals: ``cntp_trials`` (N at the first token of each chunk, NaN on its other tokens),
    ``cntp_entropy`` (warped entropy of the distribution each token was drawn from; at a chunk's
    first token it is the H that set N), ``cntp_ppl`` (the kept trial's PPL, at the chunk's first
    token). ``debug["chunks"]`` lists every chunk with its trials' PPLs and the chosen index.
    """
    ids, budget = _check_prompt(lm, prompt_ids, max_new_tokens)
    _check_cntp_params(temperature, top_p, max_trials, h_low, h_high, max_trial_tokens)
    eos, stop_ids = eos_ids(lm), punctuation_ids(lm)
    run_trial = functools.partial(
        _cntp_trial,
        lm,
        stop_ids=stop_ids,
        eos=eos,
        temperature=temperature,
        top_p=top_p,
        gen=_generator(lm, seed),
    )
    tokens: list[int] = []
    sig: dict[str, list[float]] = {"cntp_trials": [], "cntp_entropy": [], "cntp_ppl": []}
    chunks: list[dict[str, Any]] = []
    stop = "length"
    with torch.inference_mode():
        logits, cache = _forward(lm.model, ids, None)
        while len(tokens) < budget:
            logp = torch.log_softmax(_warped_logits(logits, temperature, top_p), -1)
            h = _warped_entropy(logp)
            n = int(cntp_trials(torch.tensor(h), max_trials=max_trials, h_low=h_low, h_high=h_high))
            best, chunk = _cntp_chunk(
                run_trial,
                logits,
                cache,
                n=n,
                remaining=budget - len(tokens),
                max_trial_tokens=max_trial_tokens,
            )
            chunks.append(
                {"start": len(tokens), "length": len(best.tokens), "trials": n, "entropy": h}
                | chunk
            )
            tokens += best.tokens
            _append_cntp_signals(sig, n, best, chunk["trial_ppls"][chunk["chosen"]])
            if best.eos:
                stop = "eos"
                break
            if best.logits is None:  # the budget is spent
                break
            logits, cache = best.logits, best.cache
    trial_counts = [float(c["trials"]) for c in chunks]
    return DecodedOutput(
        text=_decode(lm, tokens),
        token_ids=tokens,
        signals=sig,
        info={
            "chunks": len(chunks),
            "mean_trials": _mean(trial_counts),
            "multi_trial_chunks": sum(1 for c in chunks if c["trials"] > 1),
        },
        debug={"chunks": chunks, "punctuation_ids": sorted(stop_ids)},
        stop_reason=stop,
    )


def _check_cntp_params(
    temperature: float,
    top_p: float,
    max_trials: int,
    h_low: float,
    h_high: float,
    max_trial_tokens: int,
) -> None:
    """Refuse bad CNTP parameters before any forward pass."""
    if not temperature > 0:
        raise UserError("CNTP samples its trials: temperature must be > 0")
    if max_trial_tokens < 1:
        raise UserError("max_trial_tokens must be >= 1")
    try:
        cntp_trials(torch.zeros(1), max_trials=max_trials, h_low=h_low, h_high=h_high)
    except ValueError as err:
        raise UserError(f"bad CNTP parameters: {err}") from None
    top_p_filter(torch.zeros(1), top_p)


def _cntp_chunk(
    run_trial: Callable[..., _Trial],
    logits: Tensor,
    cache: Any,
    *,
    n: int,
    remaining: int,
    max_trial_tokens: int,
) -> tuple[_Trial, dict[str, Any]]:
    """Run the ``n`` trials of one chunk from ``(logits, cache)``; return the kept trial (lowest
    PPL, first on ties) and the chunk's record (the trials' PPLs and lengths, the choice)."""
    if n <= 1:  # one ordinary sampling step, on the main cache
        trials = [run_trial(logits, cache, limit=1, remaining=remaining)]
    else:  # N trials, each on its own copy of the cache
        limit = min(max_trial_tokens, remaining)
        trials = [
            run_trial(logits, copy.deepcopy(cache), limit=limit, remaining=remaining)
            for _ in range(n)
        ]
    ppls = [t.ppl for t in trials]
    chosen = min(range(len(trials)), key=lambda i: ppls[i])
    best = trials[chosen]
    record = {
        "trial_ppls": ppls,
        "trial_lengths": [len(t.tokens) for t in trials],
        "chosen": chosen,
        "eos": best.eos,
    }
    return best, record


def _append_cntp_signals(sig: dict[str, list[float]], n: int, best: _Trial, ppl: float) -> None:
    """A chunk's signals: N and the kept PPL at its first token (NaN after), entropy on all."""
    pad = [math.nan] * (len(best.tokens) - 1)
    sig["cntp_trials"] += [float(n), *pad]
    sig["cntp_entropy"] += best.entropies
    sig["cntp_ppl"] += [ppl, *pad]


# ---- Entropy Adaptive Decoding ----------------------------------------------------------------


def check_shared_tokenizer(small: LoadedModel, large: LoadedModel) -> None:
    """Both models must use one vocabulary (same token -> id map and output size)."""
    small_vocab = int(getattr(small.model.config, "vocab_size", 0) or 0)
    large_vocab = int(getattr(large.model.config, "vocab_size", 0) or 0)
    if small_vocab != large_vocab:
        raise UserError(
            f"models {small.name!r} and {large.name!r} have different vocabulary sizes "
            f"({small_vocab} vs {large_vocab}); entropy adaptive decoding needs a shared tokenizer"
        )
    if small.tokenizer is large.tokenizer:
        return
    if small.tokenizer.get_vocab() != large.tokenizer.get_vocab():
        raise UserError(
            f"models {small.name!r} and {large.name!r} do not share a tokenizer; entropy "
            "adaptive decoding needs one vocabulary"
        )


def switch_decode(
    small: LoadedModel,
    large: LoadedModel,
    prompt_ids: Tensor,
    *,
    max_new_tokens: int,
    threshold_bits: float = 2.0,
    window: int = 5,
    temperature: float = 0.0,
    seed: int = 0,
) -> DecodedOutput:
    """Entropy Adaptive Decoding (§21): the small model, or the large one when it is uncertain.

    Step t (1-based): the model *in use* is the one that produced token t-1 (the small model at
    t = 1). Its next-token entropy in bits before temperature, ``H_t``
    (``analysis.decoding.entropy_bits``), joins the rolling mean over the last ``window`` steps
    (``rolling_mean``, partial window at the start); token t comes from the large model when that
    mean is ``> threshold_bits``, else from the small one (switching models costs one more
    forward pass at that step). So ``large_model == switch_indicator(H, threshold, window)``
    step for step. The paper leaves open whose entropy is used; here it is always the model in
    use, and its "stability condition" is not modelled. No KV cache: each step is a full forward
    of the current sequence. ``temperature`` 0 is greedy, else sampling from
    ``softmax(z / temperature)`` of the chosen model.

    Signals: ``large_model`` (1/0), ``switch_entropy_bits`` (H_t) and ``switch_mean_bits``
    (the rolling mean that decided). ``info["large_share"]``: share of tokens from the large
    model.
    """
    check_shared_tokenizer(small, large)
    if window < 1:
        raise UserError("window must be >= 1")
    if temperature < 0:
        raise UserError("temperature must be >= 0")
    context = min(small.context_length, large.context_length)
    ids, budget = _check_prompt(replace(large, context_length=context), prompt_ids, max_new_tokens)
    if small.device != large.device:
        raise UserError("the small and the large model must be on the same device")
    eos = eos_ids(large) | eos_ids(small)
    gen = _generator(large, seed)
    models = {False: small, True: large}
    tokens: list[int] = []
    entropies: list[float] = []
    means: list[float] = []
    use_large: list[float] = []
    stop = "length"
    in_use = False  # start with the small model
    with torch.inference_mode():
        seq = ids
        for _ in range(budget):
            check_cancelled()
            logits = models[in_use].model(input_ids=seq, use_cache=False).logits[0, -1].float()
            entropies.append(float(entropy_bits(logits)))
            mean = float(rolling_mean(torch.tensor(entropies), window)[-1])
            chosen = mean > threshold_bits
            if chosen != in_use:
                logits = models[chosen].model(input_ids=seq, use_cache=False).logits[0, -1].float()
                in_use = chosen
            if temperature > 0:
                token = _sample(torch.softmax(logits / temperature, -1), gen)
            else:
                token = int(logits.argmax())
            tokens.append(token)
            means.append(mean)
            use_large.append(1.0 if chosen else 0.0)
            if token in eos:
                stop = "eos"
                break
            seq = torch.cat([seq, _token(token, seq.device)], dim=1)
    share = sum(use_large) / len(use_large) if use_large else math.nan
    return DecodedOutput(
        text=_decode(large, tokens),
        token_ids=tokens,
        signals={
            "large_model": use_large,
            "switch_entropy_bits": entropies,
            "switch_mean_bits": means,
        },
        info={"large_share": share, "small_model": small.name, "large_model": large.name},
        stop_reason=stop,
    )


def early_exit_model(lm: LoadedModel, n_layers: int) -> LoadedModel:
    """``lm@layers=n_layers``: the first ``n_layers`` decoder blocks with the final norm and LM
    head, sharing the tokenizer (the ``@layers`` variant of :mod:`backend.models.variants`).

    This is how entropy adaptive decoding gets a small/large pair from a single model (e.g. the
    embedded default: ``default@layers=8``). Name, label and revision get ``@layers=n``.
    """
    return build_variant(lm, Variant("layers", str(n_layers)), Settings())


def resolve_model_spec(
    spec: str, settings: Settings, base: LoadedModel | None = None
) -> LoadedModel:
    """A model name or variant spec (``NAME@layers=n``, ``NAME@int8``, ...).

    ``base`` is used instead of loading when its name is NAME (the model a job already holds).
    Variants are cached per process by :func:`backend.models.variants.get_model`.
    """
    return get_variant_model(spec, settings, base=base)


# ---- LATR -------------------------------------------------------------------------------------


def token_edit_distance(a: list[int], b: list[int]) -> int:
    """Levenshtein distance between two token-id sequences (unit costs)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def normalized_edit_distance(a: list[int], b: list[int]) -> float:
    """``ED(a, b) / max(len a, len b)`` (LATR's ``ED / r`` for two r-token segments); 0 if both
    are empty."""
    longest = max(len(a), len(b))
    return token_edit_distance(a, b) / longest if longest else 0.0


@dataclass
class _Branch:
    branch_id: int
    parent: int | None
    position: int | None
    tokens: list[int]
    logits: Tensor | None
    cache: Any
    branch: list[float]
    fired: list[float]
    finished: bool = False
    stop_reason: str = "length"
    pruned: bool = False
    decided: bool = False
    distance: float | None = None
    pruned_at: int | None = None


def latr_decode(
    lm: LoadedModel,
    prompt_ids: Tensor,
    *,
    max_new_tokens: int,
    tau_abs: float = 0.25,
    tau_rel: float = 0.15,
    max_branches: int = 4,
    lookahead: int = 8,
    tau_ed: float = 0.4,
) -> list[DecodedOutput]:
    """LATR-style branching generation (§14), deterministic (greedy).

    All live branches advance in lockstep, each with its own KV cache and its argmax token. At
    a step where ``analysis.critical.latr_branching`` fires on a live branch's raw (T = 1)
    top-2 probabilities, a child branch is spawned (a ``copy.deepcopy`` of the cache) that
    takes the runner-up token and then continues greedily. At most ``max_branches`` children
    are spawned in total (pruned ones count; the main branch does not), earliest step first and
    within a step in branch-creation order.

    Pruning: a child born at generated index ``b`` is compared with its parent on the segments
    ``tokens[b : b + lookahead]`` (starting at the divergence token) once both are complete; a
    branch that stopped earlier (EOS or the length limit) is compared on what it has. The child
    and its descendants are pruned (and stop generating) if the normalised token edit distance
    ``ED / max(len)`` is ``< tau_ed``. The reference skips the decision when a segment contains
    EOS; deciding on the shorter segments instead gives every child a decision. Since the
    divergence tokens differ, the distance is ``>= 1 / lookahead`` (``tau_ed = 0`` prunes none,
    ``tau_ed > 1`` prunes every child).

    Returns:
        the surviving branches, main first, then by creation; ``branch_id``, ``branch_of`` and
        ``branch_position`` say where each left its parent. Signals: ``latr_branch`` (1 where the
        branch's token was a runner-up choice, inherited prefix included) and ``latr_fired``
        (1 where the branch rule fired on that branch's distribution). The main output's
        ``info`` has the tree counts and ``debug["tree"]`` every branch, pruned ones included.
    """
    ids, budget = _check_prompt(lm, prompt_ids, max_new_tokens)
    if max_branches < 0 or lookahead < 1:
        raise UserError("max_branches must be >= 0 and lookahead >= 1")
    grow = _LatrGrowth(lm, eos_ids(lm), budget, tau_abs, tau_rel, max_branches)
    with torch.inference_mode():
        logits, cache = _forward(lm.model, ids, None)
        branches = [_Branch(0, None, None, [], logits, cache, [], [])]
        for _ in range(budget):
            active = [b for b in branches if not b.finished and not b.pruned]
            if not active:
                break
            grow.step(branches, active)
            _latr_prune(branches, lookahead, tau_ed)
        for br in branches:
            br.finished, br.logits, br.cache = True, None, None
        _latr_prune(branches, lookahead, tau_ed)
    return _latr_outputs(lm, branches, grow.spawned)


@dataclass
class _LatrGrowth:
    """LATR's generation step: every live branch takes its argmax token, and where the rule
    fires (while the spawn budget lasts) a child takes the runner-up."""

    lm: LoadedModel
    eos: set[int]
    budget: int
    tau_abs: float
    tau_rel: float
    max_branches: int
    spawned: int = 0

    def step(self, branches: list[_Branch], active: list[_Branch]) -> None:
        """Advance ``active`` (the live branches at the start of the step) by one token each;
        children spawned here join ``branches`` with their first token and wait a step."""
        for br in active:
            assert br.logits is not None
            top = torch.topk(torch.softmax(br.logits, -1), 2)
            fired = bool(latr_branching(top.values, tau_abs=self.tau_abs, tau_rel=self.tau_rel))
            if fired and self.spawned < self.max_branches:
                self.spawned += 1
                child = _Branch(
                    len(branches),
                    br.branch_id,
                    len(br.tokens),
                    list(br.tokens),
                    br.logits,
                    copy.deepcopy(br.cache),
                    list(br.branch),
                    list(br.fired),
                )
                branches.append(child)
                self.advance(child, int(top.indices[1]), True, fired)
            self.advance(br, int(top.indices[0]), False, fired)

    def advance(self, br: _Branch, token: int, is_branch: bool, fired: bool) -> None:
        """Append ``token`` to ``br``; feed it to the model unless it ends the branch."""
        br.tokens.append(token)
        br.branch.append(1.0 if is_branch else 0.0)
        br.fired.append(1.0 if fired else 0.0)
        if token in self.eos:
            br.finished, br.stop_reason, br.logits, br.cache = True, "eos", None, None
        elif len(br.tokens) >= self.budget:
            br.finished, br.logits, br.cache = True, None, None
        else:
            br.logits, br.cache = _forward(self.lm.model, _token(token, self.lm.device), br.cache)


def _latr_outputs(lm: LoadedModel, branches: list[_Branch], spawned: int) -> list[DecodedOutput]:
    """The surviving branches as outputs, main first; the main one carries the whole tree."""
    tree = [
        {
            "branch_id": b.branch_id,
            "branch_of": b.parent,
            "branch_position": b.position,
            "n_tokens": len(b.tokens),
            "pruned": b.pruned,
            "pruned_at": b.pruned_at,
            "distance": b.distance,
        }
        for b in branches
    ]
    survivors = [b for b in branches if not b.pruned]
    counts = {
        "branches_spawned": spawned,
        "branches_pruned": sum(1 for b in branches if b.pruned),
        "branches_returned": len(survivors),
    }
    return [
        DecodedOutput(
            text=_decode(lm, b.tokens),
            token_ids=list(b.tokens),
            signals={"latr_branch": b.branch, "latr_fired": b.fired},
            info={**counts, "distance": b.distance} if b.branch_id else dict(counts),
            debug={"tree": tree} if b.branch_id == 0 else {},
            stop_reason=b.stop_reason,
            branch_id=b.branch_id,
            branch_of=b.parent,
            branch_position=b.position,
        )
        for b in survivors
    ]


def _latr_prune(branches: list[_Branch], lookahead: int, tau_ed: float) -> None:
    """Decide every undecided live child whose lookahead segments (or stopped branches) allow."""
    by_id = {b.branch_id: b for b in branches}
    for child in branches:
        if child.parent is None or child.decided or child.pruned:
            continue
        parent = by_id[child.parent]
        assert child.position is not None
        start, end = child.position, child.position + lookahead
        seg_c, seg_p = child.tokens[start:end], parent.tokens[start:end]
        ready_c = len(seg_c) == lookahead or child.finished
        ready_p = len(seg_p) == lookahead or parent.finished
        if not (ready_c and ready_p):
            continue
        child.decided = True
        child.distance = normalized_edit_distance(seg_c, seg_p)
        if child.distance < tau_ed:
            _prune(branches, child.branch_id, len(child.tokens))


def _prune(branches: list[_Branch], branch_id: int, step: int) -> None:
    for b in branches:
        if b.branch_id == branch_id and not b.pruned:
            b.pruned, b.pruned_at, b.logits, b.cache = True, step, None, None
    for b in branches:
        if b.parent == branch_id and not b.pruned:
            _prune(branches, b.branch_id, step)


# ---- the rules by name ------------------------------------------------------------------------

_LATR_COUNTS = ("branches_spawned", "branches_pruned", "branches_returned")
_CNTP_COUNTS = ("chunks", "mean_trials", "multi_trial_chunks")
PromptSummary = Callable[[DecodedOutput], dict[str, Any]]
RuleTotals = Callable[[Sequence[dict[str, Any]], dict[str, list[float]]], dict[str, Any]]


@dataclass(frozen=True)
class DecodingRule:
    """A decoding rule as a ``decode`` experiment runs and summarises it.

    Attributes:
        name: the rule's name (``DecodeExperiment.rule``, the CLI's ``--rule``).
        decode: the rule function; its keyword-only parameters, ``seed`` excepted, are the
            parameters a user may set.
        pair: ``decode`` takes a ``(small, large)`` pair of models instead of one.
        seeded: ``decode`` samples and takes ``seed`` (LATR is greedy and does not).
        branching: ``decode`` returns every surviving branch (a list), not one output.
        prompt_summary: the rule's facts of one prompt, read from its main output.
        totals: the rule's experiment-level facts, from the per-prompt rows and every signal
            value of the experiment.
    """

    name: str
    decode: Callable[..., Any]
    prompt_summary: PromptSummary
    totals: RuleTotals
    pair: bool = False
    seeded: bool = True
    branching: bool = False

    def parameters(self) -> set[str]:
        """The keyword parameters a user may pass (``seed`` is set per prompt instead)."""
        return {
            name
            for name, p in inspect.signature(self.decode).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "seed"
        }

    def run(
        self,
        models: Sequence[LoadedModel],
        prompt_ids: Tensor,
        *,
        seed: int,
        params: dict[str, Any],
    ) -> list[DecodedOutput]:
        """Decode ``prompt_ids`` with ``models`` (one, or ``(small, large)`` for a pair rule)."""
        kwargs = {**params, "seed": seed} if self.seeded else dict(params)
        result = self.decode(*models, prompt_ids, **kwargs)
        return list(result) if self.branching else [result]


def _ead_totals(_rows: Sequence[dict[str, Any]], signals: dict[str, list[float]]) -> dict[str, Any]:
    # the temperatures are a schedule, never NaN: the NaN-skipping mean is the plain mean
    return {"mean_temperature": _mean(signals.get("ead_temperature", []))}


def _cntp_totals(rows: Sequence[dict[str, Any]], signals: dict[str, list[float]]) -> dict[str, Any]:
    return {
        "mean_trials": _mean(signals.get("cntp_trials", [])),  # NaN after a chunk's first token
        "chunks": sum(int(p["chunks"]) for p in rows),
        "multi_trial_chunks": sum(int(p["multi_trial_chunks"]) for p in rows),
    }


def _switch_prompt(out: DecodedOutput) -> dict[str, Any]:
    return {
        "large_share": out.info["large_share"],
        "large_tokens": int(sum(out.signals["large_model"])),
    }


def _switch_totals(
    rows: Sequence[dict[str, Any]], signals: dict[str, list[float]]
) -> dict[str, Any]:
    # large_model is 1/0 on every token, never NaN: the NaN-skipping mean is the plain mean
    return {
        "large_share": _mean(signals.get("large_model", [])),
        "large_share_per_prompt": [p["large_share"] for p in rows],
    }


def _latr_totals(
    rows: Sequence[dict[str, Any]], _signals: dict[str, list[float]]
) -> dict[str, Any]:
    return {k: sum(int(p[k]) for p in rows) for k in _LATR_COUNTS}


def _info(keys: tuple[str, ...]) -> PromptSummary:
    """A prompt summary that copies ``keys`` from the main output's ``info``."""
    return lambda out: {k: out.info[k] for k in keys}


DECODING_RULES: dict[str, DecodingRule] = {
    rule.name: rule
    for rule in (
        DecodingRule("ead", ead_decode, _info(("mean_temperature",)), _ead_totals),
        DecodingRule("cntp", cntp_decode, _info(_CNTP_COUNTS), _cntp_totals),
        DecodingRule("switch", switch_decode, _switch_prompt, _switch_totals, pair=True),
        DecodingRule(
            "latr", latr_decode, _info(_LATR_COUNTS), _latr_totals, seeded=False, branching=True
        ),
    )
}


def get_rule(name: str) -> DecodingRule:
    """The rule registered under ``name``; UserError names the known rules."""
    try:
        return DECODING_RULES[name]
    except KeyError:
        raise UserError(
            f"unknown decoding rule {name!r}; use {', '.join(DECODING_RULES)}"
        ) from None
