"""``tokenprism experiment refusal-sweep | east-sweep | grains-sweep | decode``: the steering and
decoding lab."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from tokenprism.backend.cli.common import out
from tokenprism.backend.errors import UserError

experiment_app = typer.Typer(
    no_args_is_help=True,
    help="Steering and decoding experiments (every output is stored as a run).",
)

PromptOpt = typer.Option(None, "--prompt", "-p", help="a prompt (repeat; default: shipped set)")
ModelOpt = typer.Option(None, "--model", "-m")
JsonOpt = typer.Option(False, "--json", help="print the experiment as JSON")


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{option} takes comma-separated numbers, not {text!r}") from None


def _run(kind: str, params: dict[str, Any], model: str | None, as_json: bool) -> None:
    from tqdm import tqdm

    from tokenprism.backend.groups.core import json_safe
    from tokenprism.backend.lab.experiments import get_experiment
    from tokenprism.backend.lab.jobs import check_experiment, run_experiment
    from tokenprism.backend.models.variants import get_model
    from tokenprism.backend.settings import get_settings
    from tokenprism.backend.store import Store

    check_experiment(kind, params)
    settings = get_settings()
    store = Store(settings.db_path)
    lm = get_model(model or settings.default_model, settings)
    with store, tqdm(desc=kind, file=sys.stderr) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        experiment_id = run_experiment(lm, store, settings, kind, params, progress=progress)
        result = get_experiment(store, experiment_id)
    if as_json:
        sys.stdout.write(json.dumps(json_safe(result), ensure_ascii=False) + "\n")
        return
    _print(result)


def _print(result: dict[str, Any]) -> None:
    summary = result["summary"] or {}
    curves = summary.get("curves") or {}
    out.print(f"experiment {result['experiment_id']} ({result['kind']})")
    if result["kind"] == "refusal-sweep":
        table = Table("value", "refusal rate", "mean P(refusal)", "should-refuse", "benign")
        groups = summary.get("refusal_rate_by_group", {})
        for i, value in enumerate(curves.get("value", [])):
            table.add_row(
                f"{value:g}",
                f"{curves['refusal_rate'][i]:.2f}",
                f"{curves['p_refusal'][i]:.3f}",
                _fmt(groups.get("should_refuse", [None] * (i + 1))[i]),
                _fmt(groups.get("benign", [None] * (i + 1))[i]),
            )
        out.print(table)
    elif result["kind"] == "east-sweep":
        table = Table(
            "beta", "next-token entropy", "output entropy", title=f"layer {summary.get('layer')}"
        )
        for i, beta in enumerate(curves.get("beta", [])):
            table.add_row(
                f"{beta:g}",
                _fmt(curves["next_token_entropy"][i]),
                _fmt(curves["output_entropy"][i]),
            )
        out.print(table)
    elif result["kind"] == "grains-sweep":
        table = Table(
            "beta", "preference margin", "output entropy", title=f"layer {summary.get('layer')}"
        )
        for i, beta in enumerate(curves.get("beta", [])):
            table.add_row(
                f"{beta:g}", _fmt(curves["preference_margin"][i]), _fmt(curves["output_entropy"][i])
            )
        out.print(table)
    else:
        out.print(json.dumps({k: v for k, v in summary.items() if k != "per_prompt"}, indent=1))
    out.print(f"{len(result['outputs'])} outputs stored as runs")


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@experiment_app.command("refusal-sweep")
def refusal_sweep(
    prompt: list[str] | None = PromptOpt,
    values: str = typer.Option("-4,-2,0,2,4,8", help="logit biases (or thresholds in token mode)"),
    mode: str = typer.Option("auto", help="auto, marker or tokens"),
    detector: str = typer.Option("marker", help="marker or regex:PATTERN"),
    max_new_tokens: int = typer.Option(40),
    model: str | None = ModelOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Bias the refusal marker (or threshold refusal tokens) at the first response position."""
    params: dict[str, Any] = {
        "values": _floats(values, "--values"),
        "mode": mode,
        "detector": detector,
        "max_new_tokens": max_new_tokens,
    }
    if prompt:
        params["prompts"] = [{"prompt": p} for p in prompt]
    _run("refusal-sweep", params, model, as_json)


@experiment_app.command("east-sweep")
def east_sweep(
    prompt: list[str] | None = PromptOpt,
    betas: str = typer.Option("-8,-4,0,4,8", help="steering coefficients"),
    layer: int | None = typer.Option(None, help="decoder block (default: the middle one)"),
    vector: str | None = typer.Option(None, help="apply a saved vector instead"),
    save_as: str | None = typer.Option(None, help="save the computed vector under this name"),
    positions: str = typer.Option("all", help="all or response"),
    max_new_tokens: int = typer.Option(32),
    model: str | None = ModelOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Entropic activation steering: sweep beta, measure entropy, store the outputs."""
    params: dict[str, Any] = {
        "betas": _floats(betas, "--betas"),
        "layer": layer,
        "vector": vector,
        "save_as": save_as,
        "positions": positions,
        "max_new_tokens": max_new_tokens,
    }
    if prompt:
        params["prompts"] = list(prompt)
    _run("east-sweep", params, model, as_json)


def _examples(
    path: Path | None, prompts: list[str], preferred: list[str], dispreferred: list[str]
) -> list[dict[str, str]]:
    """Examples from a JSON / JSON-lines file and from the repeated triple options, in order."""
    if not len(prompts) == len(preferred) == len(dispreferred):
        raise UserError(
            "give --example-prompt, --preferred and --dispreferred the same number of times "
            f"(got {len(prompts)}, {len(preferred)}, {len(dispreferred)})"
        )
    examples: list[dict[str, str]] = []
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise UserError(f"cannot read {path}: {e.strerror}") from None
        try:
            loaded = (
                json.loads(text)
                if text.lstrip().startswith("[")
                else [json.loads(line) for line in text.splitlines() if line.strip()]
            )
        except ValueError as e:
            raise UserError(f"{path} is not JSON or JSON lines: {e}") from None
        examples.extend(loaded)
    examples += [
        {"prompt": p, "preferred": a, "dispreferred": b}
        for p, a, b in zip(prompts, preferred, dispreferred, strict=True)
    ]
    if not examples:
        raise UserError(
            "give examples: --examples FILE or --example-prompt/--preferred/--dispreferred"
        )
    return examples


@experiment_app.command("grains-sweep")
def grains_sweep(
    examples: Path | None = typer.Option(
        None,
        "--examples",
        help='JSON list or JSON lines of {"prompt", "preferred", "dispreferred"}',
    ),
    example_prompt: list[str] | None = typer.Option(
        None, "--example-prompt", help="an example's prompt (repeat, with the two below)"
    ),
    preferred: list[str] | None = typer.Option(None, "--preferred", help="its preferred reply"),
    dispreferred: list[str] | None = typer.Option(
        None, "--dispreferred", help="its dispreferred reply"
    ),
    prompt: list[str] | None = typer.Option(
        None, "--prompt", "-p", help="a prompt to generate from (repeat; default: the examples')"
    ),
    betas: str = typer.Option("-8,-4,0,4,8", help="steering coefficients (unit vector)"),
    layer: int | None = typer.Option(None, help="decoder block (default: the middle one)"),
    top_k: int = typer.Option(3, "--top-k", help="attributed prompt tokens kept on each side"),
    steps: int = typer.Option(32, help="Integrated-Gradients points per example"),
    save_as: str | None = typer.Option(None, help="save the vector under this name"),
    max_new_tokens: int = typer.Option(32),
    temperature: float = typer.Option(0.0, help="0 = greedy"),
    seed: int = typer.Option(0),
    model: str | None = ModelOpt,
    as_json: bool = JsonOpt,
) -> None:
    """GrAInS-style steering: a vector from contrastive IG of preferred vs dispreferred replies
    (the top-k attributed prompt tokens' hidden states), swept in strength; outputs stored."""
    params: dict[str, Any] = {
        "examples": _examples(examples, example_prompt or [], preferred or [], dispreferred or []),
        "betas": _floats(betas, "--betas"),
        "layer": layer,
        "top_k": top_k,
        "steps": steps,
        "save_as": save_as,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "seed": seed,
    }
    if prompt:
        params["prompts"] = list(prompt)
    _run("grains-sweep", params, model, as_json)


@experiment_app.command("decode")
def decode(
    rule: str = typer.Option(..., "--rule", help="ead, cntp, switch or latr"),
    prompt: list[str] | None = PromptOpt,
    param: list[str] | None = typer.Option(
        None, "--param", help="a rule parameter NAME=VALUE (repeat), e.g. tau_max=1.2"
    ),
    large_model: str | None = typer.Option(None, help="switch: the large model"),
    small_model: str | None = typer.Option(None, help="switch: the small model (default@layers=8)"),
    seed: int = typer.Option(0),
    model: str | None = ModelOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Generate with a decoding rule; every output gets the full token metrics."""
    from tokenprism.backend.lab.experiments import shipped_refusal_prompts

    rule_params: dict[str, Any] = {}
    for item in param or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--param takes NAME=VALUE, not {item!r}")
        try:
            rule_params[name.strip()] = json.loads(value)
        except ValueError:
            rule_params[name.strip()] = value
    prompts = list(prompt) if prompt else [p["prompt"] for p in shipped_refusal_prompts()[:3]]
    params: dict[str, Any] = {"rule": rule, "prompts": prompts, "params": rule_params, "seed": seed}
    if large_model:
        params["large_model"] = large_model
    if small_model:
        params["small_model"] = small_model
    _run("decode", params, model, as_json)
