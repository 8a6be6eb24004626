"""cDPO contrastive estimation: LoRA adapters trained on a group's correct and incorrect
responses, and the per-token score p_CE = softmax((1+b) z_pos - b z_neg)[y_t].

Lin et al. fine-tune a positive and a negative model on correct / incorrect trajectories;
tokens of an incorrect response with a low p_CE are the ones the negative model likes much more
than the positive one: critical tokens. Here both are LoRA adapters (peft) on the group's
model, trained with next-token loss on the response tokens of the group's own responses: small
models on a CPU are the intended use (the model is copied once so the served one is untouched).
The adapters are saved as safetensors with their provenance under
``<home>/adapters/<group_id>/``; every response gets the token metric ``ce_score``.
"""

from __future__ import annotations

import copy
import json
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from tokenprism.analysis.critical import ce_scores
from tokenprism.backend.errors import UserError
from tokenprism.backend.groups.core import get_group, update_group_json
from tokenprism.backend.models.loader import LoadedModel
from tokenprism.backend.settings import Settings
from tokenprism.backend.store import Store


@dataclass(frozen=True)
class ContrastiveRequest:
    """Parameters of the adapter training; stored with the adapters.

    Attributes:
        group_id: the group whose responses train the adapters.
        steps: optimiser steps per adapter (one response per step, cycling).
        lr: AdamW learning rate (the paper's CE models: 3e-4).
        rank, alpha: LoRA rank and scale (the paper's CE models: r = 8 on gate/up/down).
        target_modules: projections that get adapters.
        beta: beta_ce of the contrastive score (the paper's code: 1, i.e. 2 z_p - z_n).
        seed: initialisation and order.
    """

    group_id: str
    steps: int = 30
    lr: float = 3e-4
    rank: int = 8
    alpha: int = 16
    target_modules: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")
    beta: float = 1.0
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["target_modules"] = list(self.target_modules)
        return out


def _examples(store: Store, run_ids: list[str]) -> list[tuple[list[int], int]]:
    out = []
    for run_id in run_ids:
        tokens = store.get_run(run_id, metrics=[])["tokens"]
        ids = [int(t["token_id"]) for t in tokens]
        start = next(i for i, t in enumerate(tokens) if not t["is_prompt"])
        out.append((ids, start))
    return out


def _train_adapter(
    model: Any,
    name: str,
    examples: list[tuple[list[int], int]],
    request: ContrastiveRequest,
    device: torch.device,
    tick: Callable[[], None],
) -> list[float]:
    model.set_adapter(name)
    params = [p for n, p in model.named_parameters() if p.requires_grad and f".{name}." in n]
    if not params:
        raise UserError(f"no trainable parameters found for adapter {name!r}")
    optimiser = torch.optim.AdamW(params, lr=request.lr)
    order = random.Random(request.seed).sample(range(len(examples)), len(examples))
    losses = []
    model.train()
    for step in range(request.steps):
        ids, start = examples[order[step % len(order)]]
        input_ids = torch.tensor([ids], device=device)
        labels = input_ids.clone()
        labels[0, :start] = -100  # learn the response only
        loss = model(input_ids=input_ids, labels=labels).loss
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        losses.append(loss.item())
        tick()
    model.eval()
    return losses


def train_contrastive(
    lm: LoadedModel,
    store: Store,
    settings: Settings,
    request: ContrastiveRequest,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Train the positive / negative adapters, save them, store ``ce_score`` for every response."""
    from peft import LoraConfig, get_peft_model

    group = get_group(store, request.group_id, tokens=False)
    if group["model"]["revision"] != lm.revision:
        raise UserError("the group was sampled with another model revision than the one loaded")
    correct = [r["run_id"] for r in group["responses"] if r["reward"]]
    wrong = [r["run_id"] for r in group["responses"] if not r["reward"]]
    if not correct or not wrong:
        raise UserError(
            f"contrastive estimation needs correct and incorrect responses; this group has "
            f"{len(correct)} correct and {len(wrong)} incorrect"
        )
    total = 2 * request.steps + len(group["responses"])
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    torch.manual_seed(request.seed)
    base = copy.deepcopy(lm.model)  # the served model stays untouched
    config = LoraConfig(
        r=request.rank,
        lora_alpha=request.alpha,
        target_modules=list(request.target_modules),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config, adapter_name="positive")
    model.add_adapter("negative", config)
    losses = {
        "positive": _train_adapter(
            model, "positive", _examples(store, correct), request, lm.device, tick
        ),
        "negative": _train_adapter(
            model, "negative", _examples(store, wrong), request, lm.device, tick
        ),
    }
    directory = settings.home / "adapters" / request.group_id
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory), safe_serialization=True)
    provenance = {
        "group_id": request.group_id,
        "model": lm.name,
        "model_revision": lm.revision,
        "params": request.as_dict(),
        "n_positive": len(correct),
        "n_negative": len(wrong),
        "final_loss": {k: v[-1] for k, v in losses.items()},
        "directory": str(directory),
        "created_at": datetime.now(UTC).isoformat(),
    }
    (directory / "tokenprism-provenance.json").write_text(json.dumps(provenance, indent=2))
    scores: dict[str, dict[str, Any]] = {}
    for response in group["responses"]:
        ids, start = _examples(store, [response["run_id"]])[0]
        ce = _ce_for(model, ids, start, request.beta, lm.device)
        full = [math.nan] * len(ids)
        full[start:] = ce
        values = [v for v in ce if not math.isnan(v)]
        sequence = {"ce_min": min(values) if values else math.nan}
        store.replace_metrics(
            response["run_id"],
            token={"ce_score": torch.tensor(full, dtype=torch.float64).numpy()},
            sequence=sequence,
            claims={},
            provenance_key="contrastive",
            provenance={k: provenance[k] for k in ("group_id", "params", "directory")},
        )
        scores[response["run_id"]] = sequence
        tick()
    summary = {**provenance, "losses": losses, "ce_min": scores}
    update_group_json(store, request.group_id, "contrastive", None, summary)
    return summary


def _ce_for(
    model: Any, ids: list[int], start: int, beta: float, device: torch.device
) -> list[float]:
    """p_CE of tokens ``ids[start:]`` (each predicted at the position before it)."""
    input_ids = torch.tensor([ids], device=device)
    with torch.inference_mode():
        model.set_adapter("positive")
        z_pos = model(input_ids=input_ids).logits[0]
        model.set_adapter("negative")
        z_neg = model(input_ids=input_ids).logits[0]
    first = max(start, 1)
    predicting = torch.arange(first - 1, len(ids) - 1, device=z_pos.device)
    targets = torch.tensor(ids[first:], device=z_pos.device)
    ce = ce_scores(z_pos[predicting], z_neg[predicting], targets, beta=beta).tolist()
    return [math.nan] * (first - start) + ce


def adapters_dir(settings: Settings, group_id: str) -> Path:
    return settings.home / "adapters" / group_id
