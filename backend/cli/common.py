"""What the command modules share: the consoles, common options and lazy loaders.

Heavy imports (torch, transformers, duckdb) stay inside the functions so that
``tokenprism --help`` does not pay for them.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console

from tokenprism.backend.errors import UserError

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

ModelOpt = typer.Option(
    None, "--model", "-m", help="'default', a Hugging Face id, a local directory or a .gguf file"
)
MetricsOpt = typer.Option(
    None,
    "--metrics",
    help="extra metric families, comma-separated: ccp, probe, sar, selfcheck (or all)",
)
JudgeOpt = typer.Option(
    None, "--judge", help="CCP judge: 'fallback' or an NLI model id / path (default: setting)"
)
CcpPresetOpt = typer.Option(
    None, "--ccp-preset", help="CCP conventions: lm-polygraph (default) or tokenprism (shortcuts)"
)
ProbeOpt = typer.Option(None, "--probe", help="probe name (default: newest for the model)")
SamplesOpt = typer.Option(5, "--samples", help="responses sampled for selfcheck / sentence SAR")


def load_settings() -> Any:
    from tokenprism.backend.settings import get_settings

    return get_settings()


def open_store() -> Any:
    from tokenprism.backend.store import Store

    return Store(load_settings().db_path)


def load_model(model: str | None) -> Any:
    """The named model or variant (``NAME@int8``, ...), or the configured default."""
    from tokenprism.backend.models.variants import get_model

    settings = load_settings()
    return get_model(model or settings.default_model, settings)


def extras_plan(
    lm: Any,
    metrics: str | None,
    judge: str | None,
    probe: str | None,
    samples: int,
    preset: str | None = None,
) -> Any:
    """Resolve --metrics and friends into an ExtraPlan (None when no extras were asked for)."""
    from tokenprism.backend.scoring.extras import extra_request, parse_metrics, plan_extras

    names = parse_metrics(metrics)
    if not names:
        if judge or probe or preset:
            raise UserError("--judge / --ccp-preset / --probe need --metrics ccp / probe")
        return None
    request = extra_request(names, judge=judge, probe=probe, samples=samples, ccp_preset=preset)
    return plan_extras(lm, request, load_settings())


def emit_run(run: dict[str, Any], as_json: bool) -> None:
    """Print a stored run as one JSON line or as the rich token view."""
    if as_json:
        sys.stdout.write(json.dumps(run, ensure_ascii=False) + "\n")
    else:
        from tokenprism.backend.cli.render import print_run

        print_run(out, run)
