"""Turning experiment parameters (API / CLI / job JSON) into experiment runs."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from tokenprism.backend.errors import UserError
from tokenprism.backend.lab import decoding, experiments
from tokenprism.backend.lab.experiments import Progress
from tokenprism.backend.limits import check_prompts_fit
from tokenprism.backend.models.loader import LoadedModel
from tokenprism.backend.settings import Settings
from tokenprism.backend.store import Store

_TUPLES = {"prompts", "values", "phrases", "betas"}

# The same ceilings as POST /generate and /groups, so that no experiment parameter asks for
# unbounded work (a sweep is prompts x values generations of max_new_tokens each).
MAX_NEW_TOKENS = 1024
MAX_PROMPTS = 200
MAX_PROMPT_CHARS = 20_000
MAX_VALUES = 32
MAX_PHRASES = 64
MAX_DETECTOR_CHARS = 600
# integer parameters of the decoding rules and their ceilings (max_new_tokens as above)
DECODE_CAPS = {
    "max_new_tokens": MAX_NEW_TOKENS,
    "max_branches": 16,
    "max_trials": 16,
    "max_trial_tokens": 256,
    "lookahead": 64,
    "window": 256,
    "warmup": 1024,
}


def _build(cls: Any, params: dict[str, Any]) -> Any:
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise UserError(
            f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}"
        )
    values = {k: tuple(v) if k in _TUPLES and isinstance(v, list) else v for k, v in params.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise UserError(f"bad experiment parameters: {err}") from None


def _numbers(name: str, values: Any) -> None:
    ok = isinstance(values, tuple | list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values
    )
    if not ok or not values:
        raise UserError(f"{name} must be a non-empty list of finite numbers, not {values!r}")


def _integer(name: str, value: Any, low: int, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        bound = f" >= {low}" if low > -(2**63) else ""
        raise UserError(f"{name} must be an integer{bound}, not {value!r}")


def _at_most(name: str, value: Any, high: int) -> None:
    """``value`` (an int or a sized collection) is at most ``high`` (the caps above)."""
    size = len(value) if isinstance(value, tuple | list | dict | str) else value
    if isinstance(size, int) and not isinstance(size, bool) and size > high:
        what = "items" if isinstance(value, tuple | list | dict) else ""
        raise UserError(f"{name} is {size:,} {what}; the limit is {high:,}".replace("  ", " "))


def _check_prompt_caps(prompts: Any) -> None:
    """Every kind: how many prompts, how long each."""
    _at_most("prompts", prompts, MAX_PROMPTS)
    for prompt in prompts if isinstance(prompts, tuple | list) else ():
        text = prompt.get("prompt") if isinstance(prompt, dict) else prompt
        if isinstance(text, str):
            _at_most("a prompt", text, MAX_PROMPT_CHARS)


def _check_decode_caps(params: dict[str, Any]) -> None:
    for name, value in params.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"params.{name} must be a finite number, not {value!r}")
        if name in DECODE_CAPS:
            if not isinstance(value, int) or value < 1:
                raise UserError(f"params.{name} must be a positive integer, not {value!r}")
            _at_most(f"params.{name}", value, DECODE_CAPS[name])


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"{name} must be one of {', '.join(choices)}, not {value!r}")


def _texts(name: str, values: Any) -> None:
    if not isinstance(values, tuple | list) or not all(
        isinstance(v, str) and v.strip() for v in values
    ):
        raise UserError(f"{name} must be a list of non-empty strings")


def _check_refusal_sweep(spec: experiments.RefusalSweep) -> None:
    prompts = spec.prompts
    if not isinstance(prompts, tuple | list) or not all(
        isinstance(p, dict) and isinstance(p.get("prompt"), str) and p["prompt"].strip()
        for p in prompts
    ):
        raise UserError('prompts must be a list of {"prompt": "...", "should_refuse": bool}')
    _numbers("values", spec.values)
    _at_most("values", spec.values, MAX_VALUES)
    _at_most("phrases", spec.phrases, MAX_PHRASES)
    _integer("max_new_tokens", spec.max_new_tokens, 1)
    _at_most("max_new_tokens", spec.max_new_tokens, MAX_NEW_TOKENS)
    if isinstance(spec.detector, str):
        _at_most("detector", spec.detector, MAX_DETECTOR_CHARS)
    _choice("mode", spec.mode, ("auto", "marker", "tokens"))
    _texts("phrases", spec.phrases)
    if not spec.phrases:
        raise UserError("give at least one refusal phrase")
    if not isinstance(spec.detector, str):
        raise UserError("detector must be 'marker' or 'regex:PATTERN'")
    experiments.refusal_detector(spec.detector, spec.phrases)
    if hasattr(spec, "bias_scope"):
        _choice("bias_scope", spec.bias_scope, ("first", "prefix"))


def _check_east_sweep(spec: experiments.EastSweep) -> None:
    _texts("prompts", spec.prompts)
    _numbers("betas", spec.betas)
    _at_most("betas", spec.betas, MAX_VALUES)
    _integer("layer", spec.layer, 0, optional=True)
    _integer("max_new_tokens", spec.max_new_tokens, 1)
    _at_most("max_new_tokens", spec.max_new_tokens, MAX_NEW_TOKENS)
    _integer("seed", spec.seed, -(2**63), optional=True)
    _choice("positions", spec.positions, ("all", "response"))
    _choice("normalize", spec.normalize, ("none", "unit", "mean_norm"))
    if not isinstance(spec.center, bool):
        raise UserError(f"center must be true or false, not {spec.center!r}")
    t = spec.temperature
    if isinstance(t, bool) or not isinstance(t, int | float) or not 0 <= t <= 5:
        raise UserError(f"temperature must be a number from 0 to 5, not {t!r}")
    if 0 < t < 0.01:
        raise UserError("temperature must be 0 (greedy) or at least 0.01")
    for name in ("vector", "save_as"):
        if getattr(spec, name) is not None and not isinstance(getattr(spec, name), str):
            raise UserError(f"{name} must be a name")
    if spec.vector is None and spec.center and len(spec.prompts) == 1:
        raise UserError(
            "EAST needs at least two prompts to mean-centre their representations "
            "(got 1); add prompts or set center to false"
        )


def _check_decode(spec: experiments.DecodeExperiment) -> None:
    _choice("rule", spec.rule, tuple(decoding.DECODING_RULES))
    _texts("prompts", spec.prompts)
    if not spec.prompts:
        raise UserError("give at least one prompt")
    if not isinstance(spec.params, dict):
        raise UserError("params must be an object of the rule's parameters")
    _check_decode_caps(spec.params)
    experiments._decode_params(spec)  # unknown rule parameters
    _integer("seed", spec.seed, -(2**63))
    if not decoding.DECODING_RULES[spec.rule].pair and (spec.large_model or spec.small_model):
        raise UserError("large_model / small_model apply to the 'switch' rule only")


def _refusal_fits(lm: LoadedModel, spec: experiments.RefusalSweep) -> None:
    check_prompts_fit(lm, [str(p["prompt"]) for p in spec.prompts], spec.max_new_tokens)


def _east_fits(lm: LoadedModel, spec: experiments.EastSweep) -> None:
    check_prompts_fit(lm, list(spec.prompts), spec.max_new_tokens)


def _decode_fits(lm: LoadedModel, spec: experiments.DecodeExperiment) -> None:
    tokens = experiments._decode_params(spec)["max_new_tokens"]
    check_prompts_fit(lm, list(spec.prompts), int(tokens))


class Runner(Protocol):
    """Runs one experiment of a kind from its checked parameters; returns the experiment id."""

    def __call__(
        self,
        lm: LoadedModel,
        store: Store,
        settings: Settings,
        spec: Any,
        /,
        *,
        job_id: str | None,
        progress: Progress | None,
    ) -> str: ...


def _run_refusal_sweep(
    lm: LoadedModel,
    store: Store,
    _settings: Settings,
    spec: experiments.RefusalSweep,
    /,
    *,
    job_id: str | None,
    progress: Progress | None,
) -> str:
    # the only kind that needs no settings (no saved vectors, no other models)
    return experiments.run_refusal_sweep(lm, store, spec, job_id=job_id, progress=progress)


@dataclass(frozen=True)
class ExperimentKind:
    """An experiment kind as the API, the CLI and the job worker run it by name.

    Attributes:
        name: the kind (``kind`` of ``POST /experiments``, the CLI's experiment argument).
        params: the parameter dataclass a request's ``params`` build.
        check: types and ranges the dataclass does not check, so that bad parameters fail at
            submission with a clear message instead of in the job (or with a TypeError there).
        run: runs the experiment.
        fits: every prompt with the kind's ``max_new_tokens`` fits the model's context (a 4xx
            before anything is generated).
    """

    name: str
    params: type[Any]
    check: Callable[[Any], None]
    run: Runner
    fits: Callable[[LoadedModel, Any], None]


EXPERIMENT_KINDS: dict[str, ExperimentKind] = {
    kind.name: kind
    for kind in (
        ExperimentKind(
            "refusal-sweep",
            experiments.RefusalSweep,
            _check_refusal_sweep,
            _run_refusal_sweep,
            _refusal_fits,
        ),
        ExperimentKind(
            "east-sweep",
            experiments.EastSweep,
            _check_east_sweep,
            experiments.run_east_sweep,
            _east_fits,
        ),
        ExperimentKind(
            "decode",
            experiments.DecodeExperiment,
            _check_decode,
            experiments.run_decode,
            _decode_fits,
        ),
    )
}


def get_kind(kind: str) -> ExperimentKind:
    """The experiment kind registered as ``kind``; UserError lists the kinds."""
    try:
        return EXPERIMENT_KINDS[kind]
    except KeyError:
        choices = ", ".join(EXPERIMENT_KINDS)
        raise UserError(f"unknown experiment kind {kind!r}; choose from {choices}") from None


def check_experiment(kind: str, params: dict[str, Any]) -> Any:
    """Validate ``params`` for ``kind``; return the experiment dataclass."""
    spec = get_kind(kind)
    experiment = _build(spec.params, params)
    _check_prompt_caps(getattr(experiment, "prompts", ()))
    spec.check(experiment)
    return experiment


def check_experiment_fits(lm: LoadedModel, kind: str, experiment: Any) -> None:
    """Every prompt of the experiment, with its ``max_new_tokens``, fits ``lm``'s context."""
    get_kind(kind).fits(lm, experiment)


def run_experiment(
    lm: LoadedModel,
    store: Store,
    settings: Settings,
    kind: str,
    params: dict[str, Any],
    *,
    job_id: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> str:
    """Run an experiment of ``kind``; return its id."""
    experiment = check_experiment(kind, params)
    check_experiment_fits(lm, kind, experiment)
    return get_kind(kind).run(lm, store, settings, experiment, job_id=job_id, progress=progress)
