"""``tokenprism probe ...``: build fact data, train, list and apply hallucination probes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from tokenprism.backend.cli.common import err, load_model, load_settings, out
from tokenprism.backend.errors import UserError

probe_app = typer.Typer(
    no_args_is_help=True, help="Hallucination probes: build data, train, list, apply."
)


@probe_app.command("build-facts")
def build_facts(
    output: Path = typer.Argument(..., help="JSONL file to write"),
    model: str | None = typer.Option(None, "--model", "-m"),
    test_fraction: float = typer.Option(0.3, help="share of questions held out"),
    limit: int | None = typer.Option(None, help="use only the first N questions"),
) -> None:
    """Ask the fact-table questions, label each answer's entity, write labelled JSONL."""
    from tqdm import tqdm

    from tokenprism.backend.probes.factbank import build_examples, questions

    lm = load_model(model)
    qs = questions()[:limit] if limit else questions()
    with tqdm(total=len(qs), desc="answering", unit="question", file=sys.stderr) as bar:
        rows, summary = build_examples(
            lm, qs, test_fraction=test_fraction, progress=lambda n, _: bar.update(n - bar.n)
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    err.print(json.dumps(summary))
    err.print(f"wrote {len(rows)} labelled answers to {output}")


@probe_app.command("train")
def train(
    data: Path = typer.Argument(..., help="span-labelled JSONL"),
    name: str = typer.Option(..., "--name", help="probe name"),
    model: str | None = typer.Option(None, "--model", "-m"),
    layer: str | None = typer.Option(
        None, "--layer", help="block index, 'auto' (chosen on the training split), default n-2"
    ),
    epochs: int = typer.Option(20, help="passes over the training split"),
    lr: float = typer.Option(1e-3, help="learning rate"),
    test_fraction: float = typer.Option(0.3, help="held-out share for lines without 'split'"),
    judge: str | None = typer.Option(None, "--judge", help="CCP judge for the CCP baseline"),
    no_ccp: bool = typer.Option(False, "--no-ccp", help="skip the CCP baseline"),
    output_dir: Path | None = typer.Option(
        None, "--out", help="directory to write the probe into (default: the home's probes)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Train a linear probe on one layer, evaluate it on the held-out split, save both."""
    from tqdm import tqdm

    from tokenprism.analysis.probe import ProbeTrainParams
    from tokenprism.backend.audit.ingest import decode_text
    from tokenprism.backend.probes.storage import check_probe_name, save_probe
    from tokenprism.backend.probes.training import ccp_baseline_plan, train_and_evaluate

    check_probe_name(name)
    if not data.is_file():
        raise UserError(f"no such file: {data}")
    text = decode_text(data.read_bytes(), str(data))
    lm = load_model(model)
    settings = load_settings()
    chosen: int | str | None = None
    if layer is not None:
        chosen = layer if layer == "auto" else _int(layer, "--layer")
    plan = None if no_ccp else ccp_baseline_plan(lm, judge, settings)
    bars: dict[str, Any] = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, file=sys.stderr)
        bar.update(done - bar.n)

    try:
        probe, used, report = train_and_evaluate(
            lm,
            text,
            str(data),
            layer=chosen,
            params=ProbeTrainParams(epochs=epochs, lr=lr),
            test_fraction=test_fraction,
            ccp_plan=plan,
            progress=progress,
        )
    finally:
        for bar in bars.values():
            bar.close()
    config = {"description": f"trained on {data.name}", "train_params": report["params"]}
    path = save_probe(
        probe,
        name,
        lm,
        used,
        output_dir or settings.probes_dir,
        config=config,
        report=report,
    )
    if as_json:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        _print_report(report)
    err.print(f"saved probe {name!r} (layer {used}) to {path}")


def _int(value: str, option: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{option} must be an integer or 'auto', not {value!r}") from None


def _print_report(report: dict[str, Any]) -> None:
    held = report["held_out"]
    table = Table("score", "token AUC", "span-max AUC", title="held-out split")
    for name, auc in held["token_auc"].items():
        span = held["span_max_auc"].get(name)
        table.add_row(name, _fmt(auc), _fmt(span))
    out.print(table)
    out.print(
        f"held-out: {held['n_examples']} examples, {held['n_tokens']} tokens "
        f"({held['n_positive_tokens']} hallucinated), {held['n_spans']} spans "
        f"({held['n_positive_spans']} hallucinated); train: {report['train']['n_examples']} "
        f"examples"
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@probe_app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json")) -> None:
    """Probes this installation knows (shipped and trained)."""
    from tokenprism.backend.probes.storage import list_probes

    probes = [p.summary() for p in list_probes(load_settings())]
    if as_json:
        sys.stdout.write(json.dumps(probes) + "\n")
        return
    table = Table("name", "model", "layer", "token AUC (held out)", "shipped")
    for p in probes:
        auc = ((p.get("held_out") or {}).get("token_auc") or {}).get("probe")
        table.add_row(p["name"], str(p["model"]), str(p["layer"]), _fmt(auc), str(p["shipped"]))
    out.print(table)


@probe_app.command("apply")
def apply(
    run_id: str,
    probe: str | None = typer.Option(None, "--probe", help="probe name (default: newest match)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Score a stored run with a probe (adds the ``probe`` token metric)."""
    from tokenprism.backend.probes.apply import apply_probe_to_run
    from tokenprism.backend.store import Store

    settings = load_settings()
    with Store(settings.db_path) as store:
        summary = apply_probe_to_run(store, run_id, probe, settings)
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        out.print(
            f"run {run_id}: probe {summary['probe']} max {_fmt(summary['probe_max'])}, "
            f"mean {_fmt(summary['probe_mean'])}"
        )
