"""``tokenprism group``, ``rollouts`` and ``contrastive``: groups of sampled responses."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.table import Table

from tokenprism.backend.cli.common import load_settings, out
from tokenprism.backend.errors import UserError


def _stage_bars() -> tuple[Any, Any]:
    """A tqdm bar per stage name and a function closing them all."""
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, file=sys.stderr)
        bar.update(done - bar.n)

    def close() -> None:
        for bar in bars.values():
            bar.close()

    return progress, close


def _print_group(group_id: str, result: dict[str, Any]) -> None:
    """The responses as a table, then what THR was computed over and its top tokens."""
    table = Table("#", "reward", "advantage", "answer", "response", title=f"group {group_id}")
    for r in result["responses"]:
        table.add_row(
            str(r["index"]),
            f"{r['reward']:.0f}",
            f"{r['advantage']:+.2f}",
            str(r["extracted"]),
            r["text"][:80].replace("\n", " "),
        )
    out.print(table)
    summary = result["summary"]
    if summary["thr_reason"]:
        out.print(f"THR: not available: {summary['thr_reason']}")
    else:
        out.print(
            f"THR over the {summary['thr_vocab']} vocabulary ({summary['thr_vocab_size']} ids)"
        )
        agreement = summary.get("thr_group_agreement") or {}
        if "spearman" in agreement:
            out.print(
                f"  vs the full vocabulary: Spearman {agreement['spearman']:.3f}, "
                f"same sign {agreement['sign_agreement']:.1%} of {agreement['n_tokens']} tokens"
            )
        out.print(f"THR tau {summary['thr_tau']:.3g} ({summary['thr_tau_definition']})")
        if summary.get("thr_tau_note"):
            out.print(f"  {summary['thr_tau_note']}")
        out.print("top positive THR tokens:")
        for resp, pos, value in summary["top_positive_thr"][:5]:
            token = result["responses"][resp]["tokens"][pos]
            out.print(f"  response {resp} token {token['text']!r}: {value:+.3g}")


def group(
    prompt: str | None = typer.Option(
        None, "--prompt", "-p", help="the prompt every response answers"
    ),
    verifier: str | None = typer.Option(
        None, "--verifier", help="number:42, number:42@0.5, exact:Paris, regex:PATTERN, choice:B"
    ),
    shipped: str | None = typer.Option(
        None, "--shipped", help="id of a prompt in data/prompts/verifiable.jsonl (sets both)"
    ),
    n: int = typer.Option(8, "--n", min=2, help="responses to sample (at least 2)"),
    temperature: float = typer.Option(1.0, help="sampling temperature"),
    top_p: float = typer.Option(1.0, help="nucleus sampling"),
    max_new_tokens: int = typer.Option(96, help="length limit of each response"),
    seed: int = typer.Option(0, help="sampling seed"),
    thr_p: float = typer.Option(0.1, help="THR reweighting knob p (>0 exploit, <0 explore)"),
    thr_vocab: str = typer.Option(
        "full",
        "--thr-vocab",
        help="THR vocabulary: full (exact, default) or group (NTHR's V* cost shortcut)",
    ),
    sampler: str = typer.Option(
        "hf", "--sampler", help="hf (transformers generate) or vllm (pip install vllm; GPU)"
    ),
    model: str | None = typer.Option(None, "--model", "-m"),
    as_json: bool = typer.Option(False, "--json", help="print the group as JSON"),
) -> None:
    """Sample N responses, verify, score each token (THR, TEMPO, LATR, CURE), build the tree."""
    from tokenprism.backend.groups.core import (
        GroupRequest,
        get_group,
        json_safe,
        run_group,
        shipped_prompts,
    )
    from tokenprism.backend.models.variants import get_model
    from tokenprism.backend.store import Store

    if shipped:
        known = {p["id"]: p for p in shipped_prompts()}
        if shipped not in known:
            raise UserError(f"no shipped prompt {shipped!r}; known: {', '.join(known)}")
        prompt = prompt or known[shipped]["prompt"]
        verifier = verifier or known[shipped]["verifier"]
    if not prompt or not verifier:
        raise UserError("give --prompt and --verifier (or --shipped ID)")
    request = GroupRequest(
        prompt=prompt,
        verifier=verifier,
        n=n,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        seed=seed,
        thr_p=thr_p,
        thr_vocab=thr_vocab,
        sampler=sampler,
    )
    from tokenprism.backend.groups.core import check_request

    check_request(request)
    settings = load_settings()
    store = Store(settings.db_path)
    lm = get_model(model or settings.default_model, settings)
    progress, close = _stage_bars()
    with store:
        try:
            group_id = run_group(lm, store, request, progress=progress)
        finally:
            close()
        result = get_group(store, group_id)
    if as_json:
        sys.stdout.write(json.dumps(json_safe(result), ensure_ascii=False) + "\n")
        return
    _print_group(group_id, result)
    out.print(f"prefix tree: {len(result['tree']['nodes'])} nodes")


def rollouts(
    group_id: str,
    run: str | None = typer.Option(None, "--run", help="response run id (default: first wrong)"),
    k: int = typer.Option(8, help="continuations per prefix"),
    budget: int = typer.Option(12, help="prefixes evaluated first"),
    refine: int = typer.Option(8, help="extra prefixes to pin the critical token down"),
    max_new_tokens: int = typer.Option(64),
    counterfactuals: int = typer.Option(4, help="alternatives tried at the critical token"),
    seed: int = typer.Option(0),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Find an incorrect response's critical token by verified rollouts."""
    from tokenprism.backend.groups.core import json_safe
    from tokenprism.backend.groups.rollouts import RolloutRequest, run_rollouts
    from tokenprism.backend.models.variants import get_model
    from tokenprism.backend.store import Store

    settings = load_settings()
    request = RolloutRequest(
        group_id=group_id,
        run_id=run,
        k=k,
        budget=budget,
        refine=refine,
        max_new_tokens=max_new_tokens,
        counterfactuals=counterfactuals,
        seed=seed,
    )
    with Store(settings.db_path) as store:
        from tokenprism.backend.groups.core import get_group

        lm = get_model(get_group(store, group_id, tokens=False)["model"]["id"], settings)
        progress, close = _stage_bars()
        try:
            result = run_rollouts(
                lm, store, request, progress=lambda d, t: progress("rollouts", d, t)
            )
        finally:
            close()
    if as_json:
        sys.stdout.write(json.dumps(json_safe(result), ensure_ascii=False) + "\n")
        return
    out.print(f"run {result['run_id']}: baseline c = {result['baseline']:.2f}")
    for pos, rate in zip(result["positions"], result["correct_rate"], strict=True):
        out.print(f"  c after token {pos}: {rate:.2f}")
    if result["critical_position"] is None:
        out.print("no critical token: c never reached 0")
    else:
        out.print(f"critical token at {result['critical_position']}: {result['critical_token']!r}")
        for cf in result["counterfactuals"]:
            out.print(
                f"  instead {cf['text']!r} (p={cf['prob']:.3f}): c = {cf['correct_rate']:.2f}"
            )


def contrastive(
    group_id: str,
    steps: int = typer.Option(30, help="optimiser steps per adapter"),
    lr: float = typer.Option(3e-4),
    rank: int = typer.Option(8, help="LoRA rank"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Train cDPO positive / negative LoRA adapters on a group; store p_CE per token."""
    from tokenprism.backend.groups.contrastive import ContrastiveRequest, train_contrastive
    from tokenprism.backend.groups.core import get_group, json_safe
    from tokenprism.backend.models.variants import get_model
    from tokenprism.backend.store import Store

    settings = load_settings()
    with Store(settings.db_path) as store:
        lm = get_model(get_group(store, group_id, tokens=False)["model"]["id"], settings)
        progress, close = _stage_bars()
        try:
            summary = train_contrastive(
                lm,
                store,
                settings,
                ContrastiveRequest(group_id=group_id, steps=steps, lr=lr, rank=rank),
                progress=lambda d, t: progress("training", d, t),
            )
        finally:
            close()
    if as_json:
        sys.stdout.write(json.dumps(json_safe(summary), ensure_ascii=False) + "\n")
        return
    out.print(
        f"adapters saved to {summary['directory']}; final loss positive "
        f"{summary['final_loss']['positive']:.3f}, negative {summary['final_loss']['negative']:.3f}"
    )
