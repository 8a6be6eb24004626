"""GrAInS-style steering: a vector from contrastive attributions of preferred vs dispreferred
outputs, swept in strength like EAST, every output stored as a run.

GrAInS (Nguyen et al., 2025) attributes the preference score ``log p(y+ | x) - log p(y- | x)``
to the input tokens with Integrated Gradients, keeps the k tokens that most raise it and the k
that most lower it, and steers with the difference of the hidden states at those tokens. Here,
per example: IG over the prompt's embeddings (pad baseline, adaptive points as for
``tokenprism attribute``, :mod:`analysis.attribution`), the
top-k positive and top-k negative tokens among the user prompt's own tokens (the chat template
around it is context, not content), the residual stream after block ``layer`` at those
positions, ``mean(h[top+]) - mean(h[top-])``. The vector is the mean over examples, unit
normalised, so beta is in residual-stream units as for EAST. The paper takes a principal
direction over examples and renormalises the steered stream; the mean and the plain additive
hook (:func:`backend.lab.steering.steer`) are our simplifications.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tokenprism.analysis.attribution import adaptive_integrated_gradients
from tokenprism.backend.errors import UserError
from tokenprism.backend.lab.experiments import (
    Progress,
    _encode_output,
    _generate_output,
    _mean,
    _store_outputs,
    create_experiment,
    finish_experiment,
)
from tokenprism.backend.lab.steering import (
    SteeringVector,
    _config,
    prompt_tensor,
    save_vector,
    steer,
)
from tokenprism.backend.lens.compute import baseline_embeddings
from tokenprism.backend.limits import check_cancelled, check_context, check_prompts_fit
from tokenprism.backend.models.loader import LoadedModel
from tokenprism.backend.scoring.encoding import encode_pair
from tokenprism.backend.scoring.runner import score_batch
from tokenprism.backend.settings import Settings
from tokenprism.backend.store import Store

MAX_TOP_K = 16
MAX_IG_STEPS = 128
EXAMPLE_KEYS = ("prompt", "preferred", "dispreferred")


@dataclass(frozen=True)
class GrainsSweep:
    """Parameters of a GrAInS steering sweep.

    Attributes:
        examples: ``{"prompt", "preferred", "dispreferred"}`` triples the vector is built from.
        prompts: prompts the sweep generates from (empty = the examples' prompts).
        betas: steering coefficients (the vector has unit norm).
        layer: decoder block whose output is read and steered (None = the middle block).
        top_k: attributed tokens kept on each side (raising / lowering the preference).
        steps: Integrated-Gradients points per example.
        save_as: save the vector under this name (then usable by ``east-sweep``'s ``vector``).
        max_new_tokens, temperature, seed: generation (temperature 0 = greedy).
    """

    examples: tuple[dict[str, str], ...] = ()
    prompts: tuple[str, ...] = ()
    betas: tuple[float, ...] = (-8.0, -4.0, 0.0, 4.0, 8.0)
    layer: int | None = None
    top_k: int = 3
    steps: int = 32
    save_as: str | None = None
    max_new_tokens: int = 32
    temperature: float = 0.0
    seed: int | None = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "examples": [dict(e) for e in self.examples],
            "prompts": list(self.prompts),
            "betas": list(self.betas),
            "layer": self.layer,
            "top_k": self.top_k,
            "steps": self.steps,
            "save_as": self.save_as,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "seed": self.seed,
        }

    def sweep_prompts(self) -> list[str]:
        return list(self.prompts) or [e["prompt"] for e in self.examples]


# ---- one example: ids, preference score, attribution ----------------------------------------


@dataclass
class PairIds:
    """A prompt with its two responses as token ids (the prompt shared by both)."""

    prompt: list[int]
    preferred: list[int]
    dispreferred: list[int]
    content: list[int]  # positions of the user prompt's own tokens within ``prompt``


def pair_ids(lm: LoadedModel, example: dict[str, str]) -> PairIds:
    """Encode ``example`` as the scorer does (chat template when the model has one)."""
    template = bool(getattr(lm.tokenizer, "chat_template", None))
    encs = [
        encode_pair(
            lm.tokenizer,
            example["prompt"],
            example[key],
            context_length=lm.context_length,
            template=template,
        )
        for key in ("preferred", "dispreferred")
    ]
    prompts = [[i for i, p in zip(e.input_ids, e.is_prompt, strict=True) if p] for e in encs]
    if prompts[0] != prompts[1]:
        raise UserError(
            "the preferred and dispreferred responses change the prompt's tokens at their "
            "boundary; start both responses with a space or a new word"
        )
    enc = encs[0]
    start = enc.text.rfind(example["prompt"], 0, enc.response_span[0])
    end = start + len(example["prompt"])
    content = [
        i
        for i, (a, b) in enumerate(enc.offsets[: len(prompts[0])])
        if start >= 0 and a < end and b > start
    ]
    responses = [[i for i, p in zip(e.input_ids, e.is_prompt, strict=True) if not p] for e in encs]
    return PairIds(prompts[0], responses[0], responses[1], content or list(range(len(prompts[0]))))


def preference_score(lm: LoadedModel, pair: PairIds) -> Any:
    """``f: [B, P, d] -> [B]``: ``log p(preferred | x) - log p(dispreferred | x)`` as a function
    of the prompt embeddings ``x`` (the responses' embeddings fixed)."""
    emb = lm.model.get_input_embeddings()
    n = len(pair.prompt)
    sides = []
    for ids in (pair.preferred, pair.dispreferred):
        target = torch.tensor(ids, device=lm.device)
        with torch.no_grad():
            sides.append((target, emb(target).detach()))

    def f(embeds: Tensor) -> Tensor:
        total = torch.zeros(len(embeds), device=embeds.device)
        for sign, (target, tail) in zip((1.0, -1.0), sides, strict=True):
            full = torch.cat([embeds, tail.expand(len(embeds), -1, -1).to(embeds.dtype)], dim=1)
            with lm.autocast_context():
                logits = lm.model(inputs_embeds=full, use_cache=False).logits
            logp = torch.log_softmax(logits[:, n - 1 : n - 1 + len(target)].float(), dim=-1)
            picked = logp.gather(-1, target[None, :, None].expand(len(embeds), -1, 1))[..., 0]
            total = total + sign * picked.sum(dim=-1)
        return total

    return f


@dataclass
class ExampleAttribution:
    """One example's IG attributions over its prompt and the tokens chosen from them."""

    values: Tensor  # [P]
    positive: list[int]  # positions raising the preference, largest first
    negative: list[int]  # positions lowering it, most negative first
    margin: float  # f(x): log p(preferred) - log p(dispreferred), unsteered
    completeness_error: float


def top_attributed(values: Tensor, candidates: Sequence[int], k: int) -> tuple[list, list]:
    """The ``k`` candidates with the largest attributions and the ``k`` with the smallest
    (a side keeps only tokens of its sign, so a side may hold fewer than ``k``)."""
    chosen = torch.tensor(list(candidates), dtype=torch.long)
    vals = values[chosen]
    order = torch.argsort(vals, descending=True).tolist()
    positive = [int(chosen[i]) for i in order if vals[i] > 0][:k]
    negative = [int(chosen[i]) for i in reversed(order) if vals[i] < 0][:k]
    return positive, negative


def attribute_example(
    lm: LoadedModel, pair: PairIds, *, top_k: int, steps: int
) -> ExampleAttribution:
    """Contrastive IG of the example's preference over its prompt tokens (pad baseline)."""
    emb = lm.model.get_input_embeddings()
    with torch.no_grad():
        x = emb(torch.tensor(pair.prompt, device=lm.device)).detach()
    base = baseline_embeddings(lm, x, "pad")
    f = preference_score(lm, pair)
    result = adaptive_integrated_gradients(f, x, base, steps=steps, batch_size=8)
    positive, negative = top_attributed(result.values.cpu(), pair.content, top_k)
    return ExampleAttribution(
        result.values.cpu(), positive, negative, result.f_x, result.completeness_error
    )


def hidden_at(lm: LoadedModel, ids: Sequence[int], layer: int) -> Tensor:
    """Residual stream ``[T, d]`` (float32) after block ``layer`` for ``ids``."""
    check_context(lm, len(ids))
    check_cancelled()
    with torch.inference_mode():
        out = lm.model(
            input_ids=torch.tensor([list(ids)], device=lm.device),
            output_hidden_states=True,
            use_cache=False,
        )
    return out.hidden_states[layer + 1][0].float().cpu()


def grains_vector(
    lm: LoadedModel,
    examples: Sequence[dict[str, str]],
    layer: int,
    *,
    top_k: int = 3,
    steps: int = 32,
    name: str = "grains",
) -> tuple[SteeringVector, list[dict[str, Any]]]:
    """The unit GrAInS vector at ``layer`` and, per example, what it was built from."""
    deltas, details = [], []
    for example in examples:
        pair = pair_ids(lm, example)
        attr = attribute_example(lm, pair, top_k=top_k, steps=steps)
        if not attr.positive or not attr.negative:
            raise UserError(
                f"the prompt {example['prompt'][:60]!r} has no token that lowers (or raises) "
                "the preference; add words or another example"
            )
        hidden = hidden_at(lm, pair.prompt, layer)
        deltas.append(hidden[attr.positive].mean(0) - hidden[attr.negative].mean(0))
        details.append(
            {
                "positive": attr.positive,
                "negative": attr.negative,
                "margin": attr.margin,
                "completeness_error": attr.completeness_error,
            }
        )
    direction = torch.stack(deltas).mean(0)
    norm = float(direction.norm())
    if not math.isfinite(norm) or norm == 0.0:
        raise UserError("the GrAInS direction is zero: the examples' contrasts cancel out")
    prompts = [e["prompt"] for e in examples]
    config = _config(lm, "grains", layer, prompts, {"top_k": top_k, "steps": steps}, tokens=details)
    return SteeringVector(name, direction / norm, config), details


def steered_margin(
    lm: LoadedModel, pair: PairIds, layer: int, vector: Tensor, beta: float
) -> float:
    """``log p(preferred) - log p(dispreferred)`` given the prompt, with the vector applied."""
    total = 0.0
    for sign, response in ((1.0, pair.preferred), (-1.0, pair.dispreferred)):
        ids = pair.prompt + response
        check_context(lm, len(ids))
        with torch.inference_mode(), steer(lm.model, layer, vector, beta):
            logits = lm.model(input_ids=torch.tensor([ids], device=lm.device)).logits[0]
        logp = torch.log_softmax(logits[len(pair.prompt) - 1 : len(ids) - 1].float(), dim=-1)
        target = torch.tensor(response, device=logp.device)
        total += sign * float(logp.gather(-1, target[:, None]).sum())
    return total


# ---- the sweep ------------------------------------------------------------------------------


def _steered_output(
    lm: LoadedModel, sweep: GrainsSweep, index: int, vec: SteeringVector, beta: float
) -> Any:
    """Generate from prompt ``index`` with the vector applied, then score the output steered
    too (as the EAST sweep does)."""
    prompt = sweep.sweep_prompts()[index]
    ids = prompt_tensor(lm, prompt)
    with steer(lm.model, vec.layer, vec.vector, beta):
        output, ended = _generate_output(
            lm,
            ids,
            max_new_tokens=sweep.max_new_tokens,
            temperature=sweep.temperature,
            seed=None if sweep.seed is None else sweep.seed + index,
        )
    enc = _encode_output(lm, prompt, output, ended)
    with steer(lm.model, vec.layer, vec.vector, beta):
        return score_batch(lm, [enc])[0]


def run_grains_sweep(
    lm: LoadedModel,
    store: Store,
    settings: Settings,
    sweep: GrainsSweep,
    *,
    job_id: str | None = None,
    progress: Progress | None = None,
) -> str:
    """Build the vector, sweep ``betas`` over the prompts, store every output as a run."""
    n_layers = int(lm.model.config.num_hidden_layers)
    layer = n_layers // 2 if sweep.layer is None else sweep.layer
    if not 0 <= layer < n_layers:
        raise UserError(f"layer must be in 0..{n_layers - 1}")
    sweep = dataclasses.replace(sweep, layer=layer)
    vec, details = grains_vector(
        lm, sweep.examples, layer, top_k=sweep.top_k, steps=sweep.steps, name=sweep.save_as or "g"
    )
    if sweep.save_as:
        save_vector(vec, settings)
    experiment_id = create_experiment(store, "grains-sweep", lm, sweep.as_dict(), job_id)
    pairs = [pair_ids(lm, e) for e in sweep.examples]
    prompts = sweep.sweep_prompts()
    curves: dict[str, list[float]] = {"beta": [], "preference_margin": [], "output_entropy": []}
    done = 0
    # a margin belongs to its example's own prompt; other sweep prompts have none
    own = not sweep.prompts
    for beta in sweep.betas:
        margins = [steered_margin(lm, p, layer, vec.vector, beta) for p in pairs]
        scored, conditions = [], []
        for i in range(len(prompts)):
            scored.append(_steered_output(lm, sweep, i, vec, beta))
            conditions.append(
                {
                    "kind": "grains-sweep",
                    "beta": beta,
                    "layer": layer,
                    "prompt_index": i,
                    "preference_margin": margins[i] if own else None,
                    "steered_scoring": True,
                }
            )
            done += 1
            if progress:
                progress(done, len(prompts) * len(sweep.betas))
        _store_outputs(store, lm, experiment_id, scored, conditions, done - len(prompts))
        entropies = [s.scores.sequence.get("mean_entropy", math.nan) for s in scored]
        curves["beta"].append(beta)
        curves["preference_margin"].append(_mean(margins))
        curves["output_entropy"].append(_mean([e for e in entropies if e == e]))
    summary = {"layer": layer, "vector": vec.summary(), "examples": details, "curves": curves}
    finish_experiment(store, experiment_id, summary)
    return experiment_id


# ---- checks (the experiment-kind registry calls these) ---------------------------------------


def check_grains(spec: GrainsSweep) -> None:
    """Types and ranges, so bad parameters fail at submission with a clear message."""
    examples = spec.examples
    ok = isinstance(examples, tuple | list) and all(
        isinstance(e, dict)
        and set(e) == set(EXAMPLE_KEYS)
        and all(isinstance(e[k], str) and e[k].strip() for k in EXAMPLE_KEYS)
        for e in examples
    )
    if not ok or not examples:
        raise UserError(
            'examples must be a non-empty list of {"prompt", "preferred", "dispreferred"} '
            "with non-empty texts"
        )
    if any(e["preferred"] == e["dispreferred"] for e in examples):
        raise UserError("an example's preferred and dispreferred responses are the same")
    for name, value, low, high in (
        ("top_k", spec.top_k, 1, MAX_TOP_K),
        ("steps", spec.steps, 2, MAX_IG_STEPS),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise UserError(f"{name} must be an integer from {low} to {high}, not {value!r}")
    if spec.save_as is not None and not isinstance(spec.save_as, str):
        raise UserError("save_as must be a name")


def grains_fits(lm: LoadedModel, spec: GrainsSweep) -> None:
    """Every sweep prompt (with ``max_new_tokens``) and every example fits the context."""
    check_prompts_fit(lm, spec.sweep_prompts(), spec.max_new_tokens)
    for example in spec.examples:
        longest = max(example["preferred"], example["dispreferred"], key=len)
        check_prompts_fit(lm, [example["prompt"]], 4 + len(longest))
