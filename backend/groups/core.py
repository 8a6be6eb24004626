"""Groups of sampled responses: sample, verify, score, and the group-level token signals.

A group is N responses sampled for one prompt and scored by a verifier (``number:42``,
``exact:Paris``, ``regex:...``, ``choice:B``). Every response is scored teacher-forced like any
run (one forward pass each batch) and stored as a run of the group; the same pass gives what
the group metrics need:

* GRPO advantages (group-normalised rewards) and the P2T / TEMPO prefix tree: values V(s),
  TD terms at branch points, entropy at the branching position;
* THR (Token Hidden Reward): by default exact over the full vocabulary (the distributions are
  recomputed in float32 from the final hidden states through the LM head, after checking that
  this reproduces the forward pass's logits); ``thr_vocab="group"`` selects NTHR's V* shortcut,
  and the summary then reports its agreement with the full value (Spearman, sign agreement).
  Also the dominant-token threshold tau and the THR-reweighted advantage for a chosen p;
* LATR's branching indicator and CURE's top-entropy critical-token candidates.

Token metrics stored per run: ``thr``, ``thr_advantage``, ``tempo_td``, ``tempo_advantage``,
``latr_branch`` (1 where the indicator fires), ``cure_rank`` (1..K among CURE's candidates).
Sequence metrics: ``reward``, ``advantage``. The tree and the group summary go to ``groups``.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
import torch

from tokenprism.analysis.critical import cure_critical_positions, latr_branching
from tokenprism.analysis.prefix_tree import (
    build_tree,
    compact,
    grpo_advantages,
    tempo_advantages,
    token_td,
)
from tokenprism.analysis.thr import (
    NEGATIVE_TAU_NOTE,
    TAU_DEFINITION,
    THR_VOCABULARIES,
    ResponseFeatures,
    group_vocabulary,
    reweighted_advantages,
    thr_agreement,
    thr_full_vocab,
    thr_scores,
    thr_threshold,
    top_thr_tokens,
)
from tokenprism.analysis.verifiers import Verdict, parse_verifier
from tokenprism.backend.errors import UserError
from tokenprism.backend.models.loader import LoadedModel
from tokenprism.backend.resources import shipped
from tokenprism.backend.sampling.generation import check_sampler, sample_responses
from tokenprism.backend.scoring.encoding import EncodedText
from tokenprism.backend.scoring.runner import ScoredText, score_batch
from tokenprism.backend.store import Store, schema

SHIPPED_PROMPTS = shipped("prompts", "verifiable.jsonl")


@dataclass(frozen=True)
class GroupRequest:
    """Everything that defines a group; stored with it.

    Attributes:
        prompt: the user prompt every response answers.
        verifier: verifier spec (``number:42``, ``number:42@0.5``, ``exact:Paris``,
            ``regex:PATTERN``, ``choice:B``).
        n: responses to sample (GRPO's G).
        temperature, top_p, max_new_tokens, seed: sampling parameters.
        system: optional system prompt.
        thr_p: the THR reweighting knob p (> 0 exploitation, < 0 exploration).
        thr_beta: beta of the dominant-token threshold tau (>= 0).
        thr_vocab: ``full`` (exact, the default) or ``group`` (NTHR's V* shortcut), see
            :data:`analysis.thr.THR_VOCABULARIES`.
        latr_tau_abs, latr_tau_rel: LATR branching thresholds (the paper's Countdown values).
        cure_k: how many top-entropy candidates CURE keeps per response.
        sampler: ``hf`` (transformers ``generate``) or ``vllm`` (optional package, for large
            groups on a GPU); the samples are scored by the same HF forward pass either way.
    """

    prompt: str
    verifier: str
    n: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 96
    seed: int | None = 0
    system: str | None = None
    thr_p: float = 0.1
    thr_beta: float = 1.0
    thr_vocab: str = "full"
    latr_tau_abs: float = 0.25
    latr_tau_rel: float = 0.15
    cure_k: int = 20
    sampler: str = "hf"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def shipped_prompts() -> list[dict[str, str]]:
    """The verifiable prompts in ``data/prompts/verifiable.jsonl``."""
    return [json.loads(line) for line in SHIPPED_PROMPTS.read_text().splitlines() if line.strip()]


def check_request(request: GroupRequest) -> None:
    """Fail early (before any sampling) on a bad verifier or parameters."""
    try:
        parse_verifier(request.verifier)
    except ValueError as err:
        raise UserError(f"bad verifier {request.verifier!r}: {err}") from None
    if not request.prompt.strip():
        raise UserError("the prompt is empty")
    if not 1 <= request.n <= 64:
        raise UserError("n must be between 1 and 64")
    check_sampler(request.sampler)
    if request.thr_vocab not in THR_VOCABULARIES:
        raise UserError(
            f"unknown THR vocabulary {request.thr_vocab!r}; choose from "
            f"{', '.join(THR_VOCABULARIES)}"
        )
    if not math.isfinite(request.thr_beta) or request.thr_beta < 0:
        raise UserError(
            f"thr_beta must be a finite number >= 0, got {request.thr_beta!r} (NTHR's "
            "'keep every token' ablation is beta = 0)"
        )


@dataclass
class _Captured:
    """What THR needs from the forward pass of each response, gathered while scoring.

    ``probs`` (over V*) are only kept for ``thr_vocab="group"``; the full-vocabulary THR
    recomputes the distributions from ``hidden`` and keeps ``lse``, the logsumexp of the
    recomputed logits, which the head check computes anyway. ``head_error`` is the largest
    relative gap between the logits of the forward pass and the LM head applied to ``hidden``.
    """

    probs: list[torch.Tensor]
    hidden: list[torch.Tensor]
    lse: list[torch.Tensor]
    head_error: float = 0.0


def lm_head(lm: LoadedModel) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The LM head's ``[V, d]`` weight and ``[V]`` bias (or None), as used by the model."""
    head = lm.model.get_output_embeddings()
    weight = getattr(head, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise UserError(
            f"{lm.name} has no linear LM head to recompute the full-vocabulary THR from; "
            "use thr_vocab='group'"
        )
    bias = getattr(head, "bias", None)
    return weight.detach(), bias.detach() if isinstance(bias, torch.Tensor) else None


def head_tolerance(lm: LoadedModel) -> float:
    """How far (relative to the largest logit) the recomputed logits may be from the forward's:
    float32 rounding in float32, the half-precision rounding of the forward otherwise."""
    return 1e-4 if lm.compute_dtype == torch.float32 else 3e-2


def _response_positions(enc: EncodedText) -> list[int]:
    """Positions of the response tokens that have a prediction."""
    return [i for i, p in enumerate(enc.is_prompt) if not p and i > 0]


def _capture(
    lm: LoadedModel,
    encoded: Sequence[EncodedText],
    rows: Sequence[int],
    vocab: torch.Tensor | None,
    into: _Captured,
) -> Callable[[Any, torch.Tensor, torch.Tensor], None]:
    weight, bias = lm_head(lm)

    def hook(out: Any, _ids: torch.Tensor, _mask: torch.Tensor) -> None:
        final = out.hidden_states[-1]  # post final norm, as THR's derivation uses
        device = out.logits.device
        probs, hidden, lse = [], [], []
        for row, i in enumerate(rows):
            pos = torch.tensor(_response_positions(encoded[i]), dtype=torch.long)
            predicting = (pos - 1).to(device)
            logits = out.logits[row, predicting].float()  # float32 whatever the model dtype
            h = final[row, predicting].float()
            again = h @ weight.float().T + (bias.float() if bias is not None else 0.0)
            if len(pos):
                gap = float((again - logits).abs().max()) / max(1.0, float(logits.abs().max()))
                into.head_error = max(into.head_error, gap)
            lse.append(torch.logsumexp(again, dim=-1))
            if vocab is not None:
                # over the group vocabulary, not renormalised (NTHR App. 7.4)
                probs.append(torch.softmax(logits, dim=-1)[:, vocab.to(device)])
            hidden.append(h)
        # one device-to-host copy per batch for each of the two, not one per response
        for i, h, z in zip(rows, _to_host(hidden), _to_host(lse), strict=True):
            into.hidden[i], into.lse[i] = h, z
        if vocab is not None:
            for i, p in zip(rows, _to_host(probs), strict=True):
                into.probs[i] = p

    return hook


def _to_host(parts: list[torch.Tensor]) -> list[torch.Tensor]:
    """``[t.cpu() for t in parts]`` in one transfer (the parts share their trailing dims)."""
    if not parts:
        return []
    sizes = [t.shape[0] for t in parts]
    return [t.clone() for t in torch.cat(parts).cpu().split(sizes)]


def _nan(length: int) -> torch.Tensor:
    return torch.full((length,), float("nan"))


def run_group(
    lm: LoadedModel,
    store: Store,
    request: GroupRequest,
    *,
    job_id: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> str:
    """Sample, verify, score and store a group; return its id."""
    check_request(request)
    verifier = parse_verifier(request.verifier)
    report = progress or (lambda *_: None)
    report("sampling", 0, request.n)
    encoded = sample_responses(
        lm,
        request.prompt,
        system=request.system,
        n=request.n,
        max_new_tokens=request.max_new_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        seed=request.seed,
        skip_empty=True,
        sampler=request.sampler,
    )
    if not encoded:
        raise UserError("every sampled response was empty: nothing to verify or score")
    report("sampling", request.n, request.n)
    verdicts: list[Verdict] = [verifier(e.response) for e in encoded]
    rewards = [v.reward for v in verdicts]
    responses = [
        [e.input_ids[p] for p in _response_positions(e)] for e in encoded
    ]  # aligned: the template renders the same prompt for every response
    vocab = group_vocabulary([torch.tensor(r, dtype=torch.long) for r in responses if r])
    empty = [torch.zeros(0)] * len(encoded)
    captured = _Captured(list(empty), list(empty), list(empty))
    scored: list[ScoredText] = []
    batch = 4
    for start in range(0, len(encoded), batch):
        rows = list(range(start, min(start + batch, len(encoded))))
        scored += score_batch(
            lm,
            [encoded[i] for i in rows],
            on_forward=_capture(
                lm, encoded, rows, vocab if request.thr_vocab == "group" else None, captured
            ),
        )
        report("scoring", rows[-1] + 1, len(encoded))
    summary = _group_metrics(lm, request, encoded, scored, responses, rewards, vocab, captured)
    summary["n_empty_dropped"] = request.n - len(encoded)
    group_id = uuid.uuid4().hex
    for i, (st, verdict) in enumerate(zip(scored, verdicts, strict=True)):
        st.provenance["group"] = {
            "group_id": group_id,
            "response_index": i,
            "verifier": request.verifier,
            "verdict": asdict(verdict),
            "sampler": request.sampler,
            "thr_vocab": request.thr_vocab,
        }
    run_ids = store.save_runs(lm, scored, group_id=group_id, item_indices=list(range(len(scored))))
    tree = _tree_json(lm, responses, rewards, scored)
    with store.writing() as conn:
        conn.execute(
            schema.groups.insert().values(
                group_id=group_id,
                job_id=job_id,
                model=lm.name,
                model_revision=lm.revision,
                prompt=request.prompt,
                verifier=request.verifier,
                params=json.dumps(request.as_dict()),
                n=len(scored),
                tree=json.dumps(tree),
                summary=json.dumps({**summary, "run_ids": run_ids}),
                created_at=datetime.now(UTC),
            )
        )
    return group_id


def _group_metrics(
    lm: LoadedModel,
    request: GroupRequest,
    encoded: Sequence[EncodedText],
    scored: Sequence[ScoredText],
    responses: Sequence[Sequence[int]],
    rewards: Sequence[float],
    vocab: torch.Tensor,
    captured: _Captured,
) -> dict[str, Any]:
    """Attach THR, TEMPO, LATR and CURE token metrics to ``scored``; return the summary."""
    advantages = grpo_advantages(rewards)
    tempo = tempo_advantages(responses, rewards)
    td = token_td(responses, rewards)
    thr, reason, thr_info = _thr(lm, request, responses, rewards, vocab, captured)
    tau = thr_threshold(thr, rewards, beta=request.thr_beta) if reason is None else math.nan
    reweighted = reweighted_advantages(thr, advantages, tau, request.thr_p)
    for i, st in enumerate(scored):
        sc, enc = st.scores, encoded[i]
        positions = torch.tensor(_response_positions(enc), dtype=torch.long)
        for name, values in (
            ("thr", thr[i]),
            ("thr_advantage", reweighted[i]),
            ("tempo_td", torch.tensor(td[i], dtype=torch.float32)),
            ("tempo_advantage", torch.tensor(tempo[i], dtype=torch.float32)),
        ):
            full = _nan(sc.length)
            if len(positions):
                full[positions] = values.float()
            sc.token[name] = full
        branch = latr_branching(
            sc.top_probs[positions].float().nan_to_num(0.0),
            tau_abs=request.latr_tau_abs,
            tau_rel=request.latr_tau_rel,
        )
        latr = _nan(sc.length)
        latr[positions] = branch.float()
        sc.token["latr_branch"] = latr
        eligible = torch.zeros(sc.length, dtype=torch.bool)
        eligible[positions] = True
        special = set(lm.tokenizer.all_special_ids)
        cure = cure_critical_positions(
            sc.token["entropy"],
            enc.token_texts,
            eligible,
            k=request.cure_k,
            special=[t in special for t in enc.input_ids],
        )
        ranks = _nan(sc.length)
        for rank, pos in enumerate(cure, start=1):
            ranks[pos] = float(rank)
        sc.token["cure_rank"] = ranks
        sc.sequence["reward"] = float(rewards[i])
        sc.sequence["advantage"] = float(advantages[i])
    positive, negative = top_thr_tokens(thr, 10)
    return {
        "rewards": list(rewards),
        "advantages": advantages,
        "n_correct": int(sum(1 for r in rewards if r > 0)),
        "thr_reason": reason,
        "thr_tau": None if math.isnan(tau) else tau,
        "thr_tau_definition": TAU_DEFINITION,
        "thr_tau_note": NEGATIVE_TAU_NOTE if tau < 0 else None,
        "thr_p": request.thr_p,
        **thr_info,
        "vocabulary_size": int(vocab.numel()),
        "top_positive_thr": [list(t) for t in positive],
        "top_negative_thr": [list(t) for t in negative],
    }


def _thr(
    lm: LoadedModel,
    request: GroupRequest,
    responses: Sequence[Sequence[int]],
    rewards: Sequence[float],
    vocab: torch.Tensor,
    captured: _Captured,
) -> tuple[list[torch.Tensor], str | None, dict[str, Any]]:
    """THR on the requested vocabulary; with ``group``, its agreement with the full value."""
    ids = [torch.tensor(r, dtype=torch.long) for r in responses]
    head_ok = captured.head_error <= head_tolerance(lm)
    full: list[torch.Tensor] | None = None
    reason: str | None = None
    if head_ok:
        weight, bias = lm_head(lm)
        scores, reason = thr_full_vocab(
            ids, captured.hidden, rewards, weight, bias, log_normaliser=captured.lse
        )
        full = [t.float().cpu() for t in scores]
    elif request.thr_vocab == "full":
        raise UserError(
            f"{lm.name}: the LM head applied to the final hidden states does not reproduce the "
            f"model's logits (relative gap {captured.head_error:.2g}; a logit soft-cap or "
            "scale?), so the full-vocabulary THR cannot be computed; use thr_vocab='group'"
        )
    info: dict[str, Any] = {
        "thr_vocab": request.thr_vocab,
        "thr_vocab_size": int(vocab.numel()),
        "thr_group_agreement": None,
    }
    if request.thr_vocab == "full" and full is not None:
        info["thr_vocab_size"] = int(lm_head(lm)[0].shape[0])
        return full, reason, info
    features = [
        ResponseFeatures(ids[i], captured.probs[i], captured.hidden[i], rewards[i])
        for i in range(len(ids))
    ]
    thr, reason = thr_scores(features, vocab)
    if full is not None and reason is None:
        info["thr_group_agreement"] = thr_agreement(full, thr)
    else:
        info["thr_group_agreement"] = {"unavailable": "no full-vocabulary value to compare with"}
    return thr, reason, info


def _tree_json(
    lm: LoadedModel,
    responses: Sequence[Sequence[int]],
    rewards: Sequence[float],
    scored: Sequence[ScoredText],
) -> dict[str, Any]:
    entropies = []
    for st in scored:
        pos = [i for i, p in enumerate(st.encoded.is_prompt) if not p and i > 0]
        entropies.append([float(st.scores.token["entropy"][p]) for p in pos])
    nodes = compact(build_tree(responses, rewards, entropies))
    return {
        "nodes": [
            {
                "id": n.id,
                "parent": n.parent,
                "token_ids": n.token_ids,
                "text": lm.tokenizer.decode(n.token_ids) if n.token_ids else "",
                "depth": n.depth,
                "count": n.count,
                "value": n.value,
                "td": n.td,
                "entropy": None if n.entropy is None or math.isnan(n.entropy) else n.entropy,
                "responses": n.responses,
                "children": n.children,
            }
            for n in nodes
        ]
    }


def json_safe(value: Any) -> Any:
    """JSON-ready: NaN and infinities become null (``json.dumps`` would write bare NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _group_row(store: Store, group_id: str) -> dict[str, Any]:
    g = schema.groups
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(g).where(g.c.group_id == group_id)).mappings().first()
    if row is None:
        raise UserError(f"no group with id {group_id!r}")
    return dict(row)


RESPONSE_TOKEN_KEYS = (
    "position",
    "token_id",
    "text",
    "display",
    "is_prompt",
    "logprob",
    "prob",
    "entropy",
    "thr",
    "thr_advantage",
    "tempo_td",
    "tempo_advantage",
    "latr_branch",
    "cure_rank",
    "rollout_correct",
    "ce_score",
)


def get_group(store: Store, group_id: str, *, tokens: bool = True) -> dict[str, Any]:
    """A group in the ``group --json`` shape."""
    row = _group_row(store, group_id)
    summary = json.loads(row["summary"])
    responses = []
    for index, run_id in enumerate(summary["run_ids"]):
        run = store.get_run(run_id)
        verdict = run["provenance"].get("group", {}).get("verdict", {})
        entry: dict[str, Any] = {
            "index": index,
            "run_id": run_id,
            "text": run["response"],
            "reward": run["sequence"].get("reward"),
            "advantage": run["sequence"].get("advantage"),
            "extracted": verdict.get("extracted"),
            "reason": verdict.get("reason"),
            "sequence": run["sequence"],
        }
        if tokens:
            entry["tokens"] = [
                {k: t.get(k) for k in RESPONSE_TOKEN_KEYS}
                for t in run["tokens"]
                if not t["is_prompt"]
            ]
        responses.append(entry)
    return {
        "group_id": group_id,
        "job_id": row["job_id"],
        "model": {"id": row["model"], "revision": row["model_revision"]},
        "prompt": row["prompt"],
        "verifier": row["verifier"],
        "params": json.loads(row["params"]),
        "created_at": row["created_at"].isoformat(),
        "summary": {k: v for k, v in summary.items() if k != "run_ids"},
        "responses": responses,
        "tree": json.loads(row["tree"]),
        "rollouts": json.loads(row["rollouts"]) if row.get("rollouts") else {},
        "contrastive": json.loads(row["contrastive"]) if row.get("contrastive") else None,
    }


def list_groups(store: Store, limit: int = 50) -> list[dict[str, Any]]:
    g = schema.groups
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                g.c.group_id,
                g.c.prompt,
                g.c.verifier,
                g.c.n,
                g.c.model,
                g.c.created_at,
                g.c.summary,
            )
            .order_by(g.c.created_at.desc())
            .limit(limit)
        ).mappings()
        out = []
        for r in rows:
            summary = json.loads(r["summary"])
            out.append(
                {
                    "group_id": r["group_id"],
                    "prompt": r["prompt"],
                    "verifier": r["verifier"],
                    "n": r["n"],
                    "n_correct": summary.get("n_correct"),
                    "model": r["model"],
                    "created_at": r["created_at"].isoformat(),
                }
            )
    return out


def update_group_json(
    store: Store, group_id: str, column: str, key: str | None, value: Any
) -> None:
    """Set ``groups.<column>`` (JSON) or one key of it, in one transaction."""
    g = schema.groups
    with store.writing() as conn:
        current = conn.execute(sa.select(g.c[column]).where(g.c.group_id == group_id)).scalar()
        if key is None:
            data = value
        else:
            data = json.loads(current) if current else {}
            data[key] = value
        conn.execute(g.update().where(g.c.group_id == group_id).values({column: json.dumps(data)}))
