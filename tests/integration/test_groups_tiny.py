"""Groups, rollouts and cDPO adapters on the tiny random Llama, checked independently.

The expected values are recomputed from what a group stores (its runs' token ids, rewards,
entropies, top-k) or from a plain forward pass of the model, not through the code under test:
THR by the literal double sum (:func:`analysis.thr.thr_naive`), prefix-tree values and TD terms
by prefix matching, p_CE by reloading the saved adapters with peft.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import torch
from safetensors.torch import load_file

from tokenprism.analysis.critical import critical_position
from tokenprism.analysis.thr import NO_ANCHOR_REASON, ResponseFeatures, thr_naive, thr_scores
from tokenprism.analysis.verifiers import parse_verifier
from tokenprism.backend.errors import UserError
from tokenprism.backend.groups.contrastive import ContrastiveRequest, train_contrastive
from tokenprism.backend.groups.core import (
    GroupRequest,
    get_group,
    json_safe,
    list_groups,
    run_group,
)
from tokenprism.backend.groups.rollouts import RolloutRequest, run_rollouts
from tokenprism.backend.models.loader import LoadedModel
from tokenprism.backend.settings import Settings
from tokenprism.backend.store import Store
from tokenprism.backend.store.migrations import LATEST, migrate

PROMPT = "What is 2+2?"
# On the tiny model (built with seed 0) these sample 2 correct and 2 incorrect responses
# (asserted below, so a change of the tiny model shows up as a clear failure).
MIXED = GroupRequest(prompt=PROMPT, verifier="regex:e", n=4, max_new_tokens=8, seed=1)
# the same group (same seed, same samples) with NTHR's V* shortcut instead of the full vocabulary
MIXED_V_STAR = dataclasses.replace(MIXED, thr_vocab="group")
ALL_CORRECT = GroupRequest(prompt=PROMPT, verifier="regex:(?s).", n=3, max_new_tokens=8, seed=0)
NONE_CORRECT = GroupRequest(
    prompt=PROMPT, verifier="exact:no random model writes this", n=3, max_new_tokens=8, seed=0
)
EPS = 1e-6  # the advantages' std guard


# ---- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    with Store(tmp_path_factory.mktemp("groups") / "groups.duckdb") as s:
        yield s


@pytest.fixture(scope="module")
def mixed(tiny_lm: LoadedModel, store: Store) -> dict[str, Any]:
    group = get_group(store, run_group(tiny_lm, store, MIXED))
    rewards = [r["reward"] for r in group["responses"]]
    assert 1.0 in rewards and 0.0 in rewards, f"the mixed group is not mixed: {rewards}"
    return group


@pytest.fixture(scope="module")
def mixed_v_star(tiny_lm: LoadedModel, store: Store) -> dict[str, Any]:
    return get_group(store, run_group(tiny_lm, store, MIXED_V_STAR))


@pytest.fixture(scope="module")
def all_correct(tiny_lm: LoadedModel, store: Store) -> dict[str, Any]:
    group = get_group(store, run_group(tiny_lm, store, ALL_CORRECT))
    assert all(r["reward"] == 1.0 for r in group["responses"])
    return group


def response_tokens(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The response tokens that have a prediction (every group metric lives on these)."""
    assert [t["position"] for t in run["tokens"]] == list(range(len(run["tokens"])))
    return [t for t in run["tokens"] if not t["is_prompt"] and t["position"] > 0]


def runs_of(store: Store, group: dict[str, Any]) -> list[dict[str, Any]]:
    return [store.get_run(r["run_id"]) for r in group["responses"]]


def response_ids(runs: list[dict[str, Any]]) -> list[list[int]]:
    return [[int(t["token_id"]) for t in response_tokens(run)] for run in runs]


def prefix_members(responses: list[list[int]], prefix: list[int]) -> list[int]:
    """D(s): the responses that start with ``prefix``."""
    return [i for i, ids in enumerate(responses) if ids[: len(prefix)] == prefix]


def value_of(responses: list[list[int]], rewards: list[float], prefix: list[int]) -> float:
    members = prefix_members(responses, prefix)
    return sum(rewards[i] for i in members) / len(members)


def plain_features(
    lm: LoadedModel, run: dict[str, Any], vocab: torch.Tensor, reward: float
) -> ResponseFeatures:
    """THR's inputs from an unbatched forward pass: the decoder's final (normed) hidden state
    and the LM head applied to it, at each response token's predicting position."""
    ids = torch.tensor([[int(t["token_id"]) for t in run["tokens"]]])
    with torch.no_grad():
        hidden = lm.model.model(input_ids=ids).last_hidden_state[0].double()
        logits = lm.model.lm_head(hidden.to(lm.dtype)).double()
    tokens = response_tokens(run)
    predicting = torch.tensor([t["position"] for t in tokens]) - 1
    probs = torch.softmax(logits[predicting], dim=-1)[:, vocab]  # not renormalised
    return ResponseFeatures(
        token_ids=torch.tensor([int(t["token_id"]) for t in tokens]),
        probs=probs,
        hidden=hidden[predicting],
        reward=reward,
    )


# ---- THR -----------------------------------------------------------------------------------


def autograd_thr(
    lm: LoadedModel, runs: list[dict[str, Any]], rewards: list[float]
) -> list[torch.Tensor]:
    """THR from its definition, by torch.autograd: the first-order change of the correct
    responses' length-normalised log-likelihood ``L+ = sum_{i in P} (1/|y_i|) sum_k log pi``
    under a gradient step on one token's ``log pi`` with respect to the LM head weight W,
    ``(2 r_j - 1) <grad_W log pi(y_{j,k'}), grad_W L+>``, in float64. The hidden states are the
    decoder's final (normed) output of a plain unbatched forward pass, held fixed."""
    weight = lm.model.lm_head.weight.detach().double().clone().requires_grad_(True)
    inputs = []
    for run in runs:
        ids = torch.tensor([[int(t["token_id"]) for t in run["tokens"]]])
        with torch.no_grad():
            hidden = lm.model.model(input_ids=ids).last_hidden_state[0].double()
        tokens = response_tokens(run)
        predicting = torch.tensor([t["position"] for t in tokens]) - 1
        inputs.append((hidden[predicting], torch.tensor([int(t["token_id"]) for t in tokens])))

    def token_logprobs(hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(hidden @ weight.T, dim=-1)[torch.arange(len(targets)), targets]

    anchors = torch.stack(
        [
            token_logprobs(h, y).sum() / len(y)
            for (h, y), r in zip(inputs, rewards, strict=True)
            if r == 1 and len(y)
        ]
    ).sum()
    (grad_plus,) = torch.autograd.grad(anchors, weight)
    out = []
    for (h, y), r in zip(inputs, rewards, strict=True):
        values = []
        for k in range(len(y)):
            (grad,) = torch.autograd.grad(token_logprobs(h[k : k + 1], y[k : k + 1])[0], weight)
            values.append((2 * r - 1) * float((grad * grad_plus).sum()))
        out.append(torch.tensor(values, dtype=torch.float64))
    return out


def test_stored_thr_is_the_full_vocabulary_first_order_influence(
    tiny_lm: LoadedModel, store: Store, mixed: dict[str, Any]
) -> None:
    """The default THR equals the autograd definition over the full vocabulary."""
    runs = runs_of(store, mixed)
    rewards = [r["reward"] for r in mixed["responses"]]
    expected = autograd_thr(tiny_lm, runs, rewards)
    scale = max(float(e.abs().max()) for e in expected)
    assert scale > 0
    worst = 0.0
    for run, exp in zip(runs, expected, strict=True):
        got = torch.tensor([t["thr"] for t in response_tokens(run)], dtype=torch.float64)
        worst = max(worst, float((got - exp).abs().max()) / scale)
    print(f"thr_full_vs_autograd_max_rel={worst:.3g}")
    assert worst < 2e-6  # float32 scoring and storage against a float64 reference
    summary = mixed["summary"]
    assert summary["thr_vocab"] == "full"
    assert summary["thr_vocab_size"] == tiny_lm.model.lm_head.weight.shape[0]
    assert summary["thr_group_agreement"] is None
    assert "length-normalised" in summary["thr_tau_definition"]
    tau = min(float(e.mean()) for e, r in zip(expected, rewards, strict=True) if r == 1)
    assert summary["thr_tau"] == pytest.approx(tau, rel=1e-5, abs=1e-6 * scale)
    assert (summary["thr_tau_note"] is not None) == (tau < 0)
    assert all(run["provenance"]["group"]["thr_vocab"] == "full" for run in runs)


def test_v_star_shortcut_reports_its_agreement_with_the_full_value(
    mixed: dict[str, Any], mixed_v_star: dict[str, Any]
) -> None:
    from scipy.stats import spearmanr

    full = [[t["thr"] for t in r["tokens"] if t["position"] > 0] for r in mixed["responses"]]
    short = [
        [t["thr"] for t in r["tokens"] if t["position"] > 0] for r in mixed_v_star["responses"]
    ]
    assert [r["text"] for r in mixed["responses"]] == [r["text"] for r in mixed_v_star["responses"]]
    a = [v for row in full for v in row]
    b = [v for row in short for v in row]
    summary = mixed_v_star["summary"]
    assert summary["thr_vocab"] == "group"
    assert summary["thr_vocab_size"] == summary["vocabulary_size"]
    agreement = summary["thr_group_agreement"]
    assert agreement["n_tokens"] == len(a)
    assert agreement["spearman"] == pytest.approx(spearmanr(a, b).statistic, abs=1e-4)
    signs = sum((x > 0) == (y > 0) for x, y in zip(a, b, strict=True)) / len(a)
    assert agreement["sign_agreement"] == pytest.approx(signs, abs=1e-9)
    print(
        f"thr_v_star_spearman={agreement['spearman']:.4f} "
        f"thr_v_star_sign_agreement={agreement['sign_agreement']:.4f}"
    )


def test_stored_v_star_thr_equals_the_naive_double_sum(
    tiny_lm: LoadedModel, store: Store, mixed_v_star: dict[str, Any]
) -> None:
    """``thr_vocab="group"`` (NTHR's V* shortcut) keeps today's values."""
    mixed = mixed_v_star
    runs = runs_of(store, mixed)
    rewards = [r["reward"] for r in mixed["responses"]]
    responses = response_ids(runs)
    vocab = torch.tensor(sorted({i for ids in responses for i in ids}))
    assert mixed["summary"]["vocabulary_size"] == vocab.numel()
    features = [
        plain_features(tiny_lm, run, vocab, reward)
        for run, reward in zip(runs, rewards, strict=True)
    ]
    expected = thr_naive(features, vocab)
    scale = max(float(e.abs().max()) for e in expected)
    assert scale > 0
    for run, exp in zip(runs, expected, strict=True):
        got = torch.tensor([t["thr"] for t in response_tokens(run)], dtype=torch.float64)
        torch.testing.assert_close(got, exp, rtol=1e-3, atol=1e-4 * scale)
    # the efficient form on the same (float64) features agrees to rounding
    efficient, reason = thr_scores(features, vocab)
    assert reason is None
    for eff, exp in zip(efficient, expected, strict=True):
        torch.testing.assert_close(eff.double(), exp, rtol=1e-4, atol=1e-6 * scale)

    # tau, the reweighted advantages and the top tokens follow from those scores
    summary = mixed["summary"]
    tau = min(float(e.mean()) for e, r in zip(expected, rewards, strict=True) if r == 1)
    assert summary["thr_reason"] is None
    assert summary["thr_tau"] == pytest.approx(tau, rel=1e-3, abs=1e-4 * scale)
    p = MIXED.thr_p
    for run, response, exp in zip(runs, mixed["responses"], expected, strict=True):
        for tok, thr in zip(response_tokens(run), exp.tolist(), strict=True):
            if abs(abs(thr) - summary["thr_tau"]) < 1e-3 * scale:
                continue  # too close to the threshold to call from float32 storage
            kept = abs(thr) > summary["thr_tau"]
            want = (1 + math.copysign(p, thr)) * response["advantage"] if kept else 0.0
            assert tok["thr_advantage"] == pytest.approx(want, abs=1e-5)
    best = max((v, i, k) for i, e in enumerate(expected) for k, v in enumerate(e.tolist()))
    worst = min((v, i, k) for i, e in enumerate(expected) for k, v in enumerate(e.tolist()))
    assert summary["top_positive_thr"][0][:2] == [best[1], best[2]]
    assert summary["top_negative_thr"][0][:2] == [worst[1], worst[2]]
    # the group JSON carries the same values
    for response, run in zip(mixed["responses"], runs, strict=True):
        assert [t["thr"] for t in response["tokens"] if t["position"] > 0] == [
            t["thr"] for t in response_tokens(run)
        ]


def test_a_group_without_a_correct_response_has_no_thr(tiny_lm: LoadedModel, store: Store) -> None:
    group = get_group(store, run_group(tiny_lm, store, NONE_CORRECT))
    summary = group["summary"]
    assert [r["reward"] for r in group["responses"]] == [0.0] * NONE_CORRECT.n
    assert summary["n_correct"] == 0
    assert summary["thr_reason"] == NO_ANCHOR_REASON
    assert "no correct response" in summary["thr_reason"]
    assert summary["thr_tau"] is None
    assert summary["top_positive_thr"] == [] and summary["top_negative_thr"] == []
    for response in group["responses"]:
        assert response["advantage"] == 0.0
        assert response["reason"]  # the verifier says why it is wrong
        tokens = [t for t in response["tokens"] if t["position"] > 0]
        assert tokens and all(t["thr"] is None for t in tokens)
        assert all(t["thr_advantage"] is None for t in tokens)
        # equal rewards: no token splits the outcome, so every TD term is exactly 0
        assert all(t["tempo_td"] == 0.0 and t["tempo_advantage"] == 0.0 for t in tokens)
    tree = group["tree"]["nodes"]
    assert tree[0]["count"] == NONE_CORRECT.n and tree[0]["value"] == 0.0
    # nothing in it breaks strict JSON
    json.dumps(json_safe(group), allow_nan=False)


# ---- prefix tree, TEMPO, LATR, CURE --------------------------------------------------------


def test_stored_prefix_tree_and_tempo_terms_match_prefix_matching(
    tiny_lm: LoadedModel, store: Store, mixed: dict[str, Any]
) -> None:
    runs = runs_of(store, mixed)
    rewards = [float(r["reward"]) for r in mixed["responses"]]
    responses = response_ids(runs)
    nodes = mixed["tree"]["nodes"]
    assert [n["id"] for n in nodes] == list(range(len(nodes)))
    root = nodes[0]
    assert root["parent"] is None and root["token_ids"] == [] and root["text"] == ""
    assert root["count"] == MIXED.n and root["responses"] == list(range(MIXED.n))
    assert root["value"] == pytest.approx(statistics.mean(rewards))

    def prefix(node: dict[str, Any]) -> list[int]:
        chain: list[int] = []
        while node["parent"] is not None:
            chain = node["token_ids"] + chain
            node = nodes[node["parent"]]
        return chain

    prefixes = []
    for node in nodes:
        full = prefix(node)
        prefixes.append(tuple(full))
        members = prefix_members(responses, full)
        assert node["count"] == len(members) and node["responses"] == members, node["id"]
        assert node["value"] == pytest.approx(value_of(responses, rewards, full), abs=1e-12)
        assert node["depth"] == len(full)
        assert node["text"] == tiny_lm.tokenizer.decode(node["token_ids"])
        children = [n["id"] for n in nodes if n["parent"] == node["id"]]
        assert node["children"] == children
        # siblings start with different tokens
        firsts = [nodes[c]["token_ids"][0] for c in children]
        assert len(set(firsts)) == len(firsts)
        if node["parent"] is None:
            continue
        parent = nodes[node["parent"]]
        assert node["token_ids"], "only the root has an empty edge"
        assert node["td"] == pytest.approx(node["value"] - parent["value"], abs=1e-12)
        # compacted: a single-child chain only continues past a node where a response ends
        if len(children) == 1:
            assert nodes[children[0]]["count"] < node["count"]
        # the edge's entropy: where the first edge token was chosen, mean over D(s)
        depth = len(prefix(parent))
        entropies = [response_tokens(runs[i])[depth]["entropy"] for i in members]
        assert node["entropy"] == pytest.approx(statistics.mean(entropies), rel=1e-5)
    assert len(set(prefixes)) == len(prefixes)
    for ids in responses:
        assert tuple(ids) in prefixes, "every response ends at a node"

    mu, sigma = statistics.mean(rewards), statistics.stdev(rewards)
    for i, (run, response) in enumerate(zip(runs, mixed["responses"], strict=True)):
        assert response["advantage"] == pytest.approx((rewards[i] - mu) / (sigma + EPS))
        ids = responses[i]
        for t, tok in enumerate(response_tokens(run)):
            td = value_of(responses, rewards, ids[: t + 1]) - value_of(responses, rewards, ids[:t])
            assert tok["tempo_td"] == pytest.approx(td, abs=1e-6), (i, t)
            want = (rewards[i] - mu + td) / (sigma + EPS)
            assert tok["tempo_advantage"] == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert sum(r["advantage"] for r in mixed["responses"]) == pytest.approx(0.0, abs=1e-9)
    # some token splits the group (the responses differ and so do the rewards)
    assert any(t["tempo_td"] != 0.0 for run in runs for t in response_tokens(run))


def test_latr_and_cure_follow_the_stored_distributions(
    tiny_lm: LoadedModel, store: Store, mixed: dict[str, Any]
) -> None:
    special = set(tiny_lm.tokenizer.all_special_ids)
    for run in runs_of(store, mixed):
        tokens = response_tokens(run)
        for tok in tokens:
            p1, p2 = tok["top_k"][0]["prob"], tok["top_k"][1]["prob"]
            if abs(p2 - MIXED.latr_tau_abs) < 1e-6 or abs(p1 - p2 - MIXED.latr_tau_rel) < 1e-6:
                continue
            fires = p2 > MIXED.latr_tau_abs and p1 - p2 < MIXED.latr_tau_rel
            assert tok["latr_branch"] == float(fires)
        ranked = sorted(
            (t for t in tokens if t.get("cure_rank") is not None), key=lambda t: t["cure_rank"]
        )
        assert [t.get("cure_rank") for t in ranked] == list(range(1, len(ranked) + 1))
        candidates = [
            t
            for t in tokens[1:]  # CURE skips the first response token
            if t["token_id"] not in special and len(t["text"].strip()) > 1
        ]
        assert len(ranked) == min(MIXED.cure_k, len(candidates))
        entropies = [t["entropy"] for t in ranked]
        assert entropies == sorted(entropies, reverse=True)
        if ranked:
            assert min(entropies) >= max(
                (t["entropy"] for t in candidates if t.get("cure_rank") is None), default=-1.0
            )


# ---- rollouts ------------------------------------------------------------------------------


def _curve(run: dict[str, Any]) -> list[float]:
    return [
        math.nan if t["rollout_correct"] is None else t["rollout_correct"] for t in run["tokens"]
    ]


def test_rollouts_store_a_curve_consistent_with_the_critical_rule(
    tiny_lm: LoadedModel, store: Store, mixed: dict[str, Any]
) -> None:
    wrong = next(r for r in mixed["responses"] if r["reward"] == 0.0)
    verifier = parse_verifier(MIXED.verifier)
    special = set(tiny_lm.tokenizer.all_special_ids)
    found_any = False
    # seed 2 finds a critical token on the tiny model; the others are a fallback should the
    # sampling differ, since the refine / counterfactual branch must run at least once
    for seed in (2, 0, 1, 3, 4, 5):
        request = RolloutRequest(
            group_id=mixed["group_id"],
            k=2,
            budget=3,
            max_new_tokens=6,
            counterfactuals=2,
            seed=seed,
        )
        result = run_rollouts(tiny_lm, store, request)
        assert result["run_id"] == wrong["run_id"], "defaults to the first incorrect response"
        run = store.get_run(wrong["run_id"])
        start = next(t["position"] for t in run["tokens"] if not t["is_prompt"])
        positions = result["positions"]
        assert positions == sorted(set(positions))
        assert 1 <= len(positions) <= request.budget + request.refine
        assert len(positions) == min(request.budget, len(positions)) + result["refined"]
        assert all(p >= start and run["tokens"][p]["token_id"] not in special for p in positions)
        assert all(c in (0.0, 0.5, 1.0) for c in result["correct_rate"])  # k = 2
        assert result["baseline"] in (0.0, 0.5, 1.0)
        curve = _curve(run)
        assert [p for p, c in enumerate(curve) if not math.isnan(c)] == positions
        assert [curve[p] for p in positions] == result["correct_rate"]
        assert result["critical_position"] == critical_position(curve)
        seq = run["sequence"]
        assert seq["rollout_baseline"] == result["baseline"]
        if result["critical_position"] is None:
            assert seq.get("critical_position") is None
            assert result["critical_token"] is None and result["counterfactuals"] == []
            continue
        found_any = True
        pos = result["critical_position"]
        assert seq["critical_position"] == pos
        assert curve[pos] == 0.0
        assert result["critical_token"] == run["tokens"][pos]["text"]
        alternatives = result["counterfactuals"]
        assert 1 <= len(alternatives) <= request.counterfactuals
        for alt in alternatives:
            assert alt["token_id"] != run["tokens"][pos]["token_id"]
            assert 0.0 <= alt["prob"] <= 1.0 and alt["correct_rate"] in (0.0, 0.5, 1.0)
        # the samples are real continuations of the prefix, verified with the group's verifier
        for p, texts in result["samples"].items():
            for text in texts:
                assert verifier(text).reward in (0.0, 1.0)
            assert int(p) in positions
        stored = get_group(store, mixed["group_id"], tokens=False)["rollouts"][wrong["run_id"]]
        assert stored["critical_position"] == pos and stored["positions"] == positions
        assert run["provenance"]["extras"]["rollouts"]["critical_position"] == pos
        break
    assert found_any, "no rollout seed found a critical token"

    # a second analysis of the same response replaces the stored curve, not merges into it
    again = run_rollouts(
        tiny_lm,
        store,
        RolloutRequest(
            group_id=mixed["group_id"], k=1, budget=2, refine=0, max_new_tokens=2,
            counterfactuals=0, seed=0,
        ),
    )  # fmt: skip
    curve = _curve(store.get_run(wrong["run_id"]))
    assert [p for p, c in enumerate(curve) if not math.isnan(c)] == again["positions"]
    assert len(again["positions"]) == 2 and again["refined"] == 0
    assert again["counterfactuals"] == []


def test_rollouts_need_an_incorrect_response(
    tiny_lm: LoadedModel, store: Store, all_correct: dict[str, Any]
) -> None:
    with pytest.raises(UserError, match="every response of this group is correct"):
        run_rollouts(
            tiny_lm, store, RolloutRequest(group_id=all_correct["group_id"], k=1, budget=1)
        )
    with pytest.raises(UserError, match="no group with id"):
        run_rollouts(tiny_lm, store, RolloutRequest(group_id="nope"))


# ---- contrastive estimation ----------------------------------------------------------------


def test_contrastive_adapters_are_saved_and_score_every_response(
    tiny_lm: LoadedModel, store: Store, mixed: dict[str, Any], tmp_path: Path
) -> None:
    from peft import PeftModel

    settings = Settings(home=tmp_path / "home", device="cpu")
    before = {k: v.clone() for k, v in tiny_lm.model.state_dict().items()}
    request = ContrastiveRequest(group_id=mixed["group_id"], steps=2)
    summary = train_contrastive(tiny_lm, store, settings, request)

    directory = settings.home / "adapters" / mixed["group_id"]
    assert Path(summary["directory"]) == directory
    for name in ("positive", "negative"):
        weights = load_file(directory / name / "adapter_model.safetensors")
        lora_b = [v for k, v in weights.items() if "lora_B" in k]
        assert lora_b and any("lora_A" in k for k in weights)
        # LoRA B starts at zero: a non-zero B means this adapter was trained, not just created
        assert any(bool(v.abs().max() > 0) for v in lora_b), f"{name} was not trained"
        assert not list((directory / name).glob("*.bin")), "safetensors only"
    provenance = json.loads((directory / "tokenprism-provenance.json").read_text())
    assert provenance["group_id"] == mixed["group_id"]
    assert provenance["model_revision"] == tiny_lm.revision
    assert provenance["params"]["steps"] == 2
    n_correct = sum(1 for r in mixed["responses"] if r["reward"])
    assert provenance["n_positive"] == n_correct
    assert provenance["n_negative"] == MIXED.n - n_correct
    assert all(len(summary["losses"][k]) == 2 for k in ("positive", "negative"))
    # the served model is untouched (training ran on a copy)
    after = tiny_lm.model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())

    # p_CE recomputed from the saved adapters: softmax(2 z_pos - z_neg)[y_t]
    model = PeftModel.from_pretrained(
        copy.deepcopy(tiny_lm.model), str(directory / "positive"), adapter_name="positive"
    )
    model.load_adapter(str(directory / "negative"), adapter_name="negative")
    model.eval()
    group = get_group(store, mixed["group_id"])
    assert group["contrastive"]["final_loss"] == summary["final_loss"]
    for response in group["responses"]:
        run = store.get_run(response["run_id"])
        ids = torch.tensor([[t["token_id"] for t in run["tokens"]]])
        with torch.no_grad():
            model.set_adapter("positive")
            z_pos = model(input_ids=ids).logits[0].double()
            model.set_adapter("negative")
            z_neg = model(input_ids=ids).logits[0].double()
        scores = []
        for tok in run["tokens"]:
            if tok["is_prompt"]:
                assert tok["ce_score"] is None
                continue
            p = tok["position"]
            want = torch.softmax(2 * z_pos[p - 1] - z_neg[p - 1], -1)[tok["token_id"]]
            assert 0.0 < tok["ce_score"] < 1.0
            assert tok["ce_score"] == pytest.approx(float(want), rel=1e-3, abs=1e-6)
            scores.append(tok["ce_score"])
        assert scores
        assert run["sequence"]["ce_min"] == pytest.approx(min(scores))
        assert [t["ce_score"] for t in response["tokens"]] == [
            t["ce_score"] for t in run["tokens"] if not t["is_prompt"]
        ]


def test_contrastive_needs_both_outcomes(
    tiny_lm: LoadedModel, store: Store, all_correct: dict[str, Any], tmp_path: Path
) -> None:
    settings = Settings(home=tmp_path / "home", device="cpu")
    request = ContrastiveRequest(group_id=all_correct["group_id"], steps=1)
    with pytest.raises(UserError) as err:
        train_contrastive(tiny_lm, store, settings, request)
    message = str(err.value)
    assert "needs correct and incorrect responses" in message
    assert f"{ALL_CORRECT.n} correct and 0 incorrect" in message
    assert not (settings.home / "adapters").exists()


# ---- bad input, migration, CLI -------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("nonsense", "kind:argument"),
        ("maths:4", "unknown verifier kind"),
        ("number:four", "not a number"),
        ("number:4@-1", "tolerance"),
        ("regex:(", "invalid regex"),
        ("regex:" + "a" * 600, "limit is 500"),
        ("choice:Z", "one letter A-J"),
        ("exact:   ", "empty argument"),
    ],
)
def test_a_bad_verifier_fails_before_sampling(
    tiny_lm: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str, needle: str
) -> None:
    import tokenprism.backend.groups.core

    def no_sampling(*_: Any, **__: Any) -> None:
        raise AssertionError("sampled although the verifier is bad")

    monkeypatch.setattr(tokenprism.backend.groups.core, "sample_responses", no_sampling)
    with Store(tmp_path / "bad.duckdb") as store:
        with pytest.raises(UserError, match="bad verifier") as err:
            run_group(tiny_lm, store, GroupRequest(prompt=PROMPT, verifier=spec, n=2))
        assert needle in str(err.value)
        assert list_groups(store) == []
        assert store.count("runs") == 0


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"prompt": "  "}, "prompt is empty"),
        ({"n": 0}, "n must be"),
        ({"thr_vocab": "vstar"}, "unknown THR vocabulary 'vstar'"),
        ({"thr_beta": -0.5}, "thr_beta must be a finite number >= 0"),
    ],
)
def test_bad_group_parameters_are_user_errors(
    tiny_lm: LoadedModel, tmp_path: Path, changes: dict[str, Any], needle: str
) -> None:
    request = GroupRequest(**{**MIXED.as_dict(), **changes})
    with Store(tmp_path / "bad.duckdb") as store, pytest.raises(UserError, match=needle):
        run_group(tiny_lm, store, request)


def test_a_version_3_database_gains_the_groups_table(tmp_path: Path) -> None:
    path = tmp_path / "v3.duckdb"
    engine = sa.create_engine(f"duckdb:///{path}")
    assert migrate(engine, target=3) == 3
    with engine.begin() as conn:
        tables = {r[0] for r in conn.exec_driver_sql("SHOW TABLES")}
        assert "claims" in tables and "groups" not in tables
        conn.exec_driver_sql(
            "INSERT INTO models VALUES ('m1', 'old', 'local', 'sha256:x', NULL, NULL, 8, now())"
        )
        conn.exec_driver_sql(
            "INSERT INTO runs VALUES ('r1', 'm1', 'text', NULL, 'ab', 'ab', NULL, NULL, 2, 2, "
            "NULL, NULL, NULL, NULL, '{}', now(), NULL)"
        )
    engine.dispose()

    with Store(path) as store:
        assert LATEST >= 4 and store.schema_version == LATEST
        with store.engine.connect() as conn:
            versions = sorted(
                r[0] for r in conn.exec_driver_sql("SELECT version FROM schema_version")
            )
            columns = [r[0] for r in conn.exec_driver_sql("DESCRIBE groups")]
        assert versions == list(range(1, LATEST + 1))
        assert columns == [
            "group_id",
            "job_id",
            "model",
            "model_revision",
            "prompt",
            "verifier",
            "params",
            "n",
            "tree",
            "summary",
            "rollouts",
            "contrastive",
            "created_at",
        ]
        assert list_groups(store) == []
        assert store.get_run("r1")["response"] == "ab"


def test_group_rollouts_and_contrastive_commands(home: Path, tiny_model_dir: Path) -> None:
    """The three commands in-process (the console script itself is run by the e2e test)."""
    from typer.testing import CliRunner

    from tokenprism.backend.cli.main import app

    runner = CliRunner()

    def invoke(*args: str) -> Any:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, (result.output, result.exception)
        return json.loads(result.stdout)

    group = invoke(
        "group", "--prompt", MIXED.prompt, "--verifier", MIXED.verifier, "--n", str(MIXED.n),
        "--max-new-tokens", str(MIXED.max_new_tokens), "--seed", str(MIXED.seed),
        "--model", str(tiny_model_dir), "--thr-vocab", "group", "--json",
    )  # fmt: skip
    assert len(group["responses"]) == MIXED.n
    assert group["params"]["thr_vocab"] == "group" and group["summary"]["thr_vocab"] == "group"
    assert 0.0 <= group["summary"]["thr_group_agreement"]["sign_agreement"] <= 1.0
    assert {"group_id", "responses", "tree", "summary", "params"} <= set(group)
    assert group["params"]["verifier"] == MIXED.verifier
    verifier = parse_verifier(MIXED.verifier)
    for r in group["responses"]:
        assert r["reward"] == verifier(r["text"]).reward
        assert {"token_id", "text", "thr", "tempo_td"} <= set(r["tokens"][0])
    assert group["tree"]["nodes"][0]["count"] == MIXED.n

    result = invoke(
        "rollouts", group["group_id"], "--k", "2", "--budget", "2", "--max-new-tokens", "4",
        "--counterfactuals", "1", "--json",
    )  # fmt: skip
    assert result["run_id"] == next(r["run_id"] for r in group["responses"] if not r["reward"])
    summary = invoke("contrastive", group["group_id"], "--steps", "1", "--json")
    assert Path(summary["directory"]) == home / "adapters" / group["group_id"]
    assert (Path(summary["directory"]) / "negative" / "adapter_model.safetensors").is_file()

    bad = runner.invoke(app, ["group", "--prompt", "x", "--verifier", "number:four"])
    assert isinstance(bad.exception, UserError)
    assert "bad verifier 'number:four'" in str(bad.exception)
