"""Decoding rules (EAD, CNTP, entropy adaptive decoding, LATR) and ``run_decode`` on the tiny
model: every rule's recorded signals are checked against the formulas of ``analysis``."""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from tokenprism.analysis.critical import latr_branching
from tokenprism.analysis.decoding import cntp_trials, ead_temperature, perplexity, switch_indicator
from tokenprism.backend.errors import UserError
from tokenprism.backend.lab import decoding as rules
from tokenprism.backend.lab.experiments import (
    DecodeExperiment,
    get_experiment,
    run_decode,
)
from tokenprism.backend.lab.steering import prompt_tensor
from tokenprism.backend.sampling.types import eos_ids
from tokenprism.backend.settings import Settings
from tokenprism.backend.store import Store

PROMPT = "What is the capital of France?"


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """The loops run thousands of tiny forwards; intra-op threads only add overhead (and
    stall on a busy machine). Restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ids(tiny_lm: Any) -> torch.Tensor:
    return prompt_tensor(tiny_lm, PROMPT)


@pytest.fixture(scope="module")
def small(tiny_lm: Any) -> Any:
    return rules.early_exit_model(tiny_lm, 1)


def _greedy(model: Any, ids: torch.Tensor, n: int, eos: set[int]) -> list[int]:
    """Reference greedy decoding without a cache."""
    out: list[int] = []
    seq = ids
    with torch.inference_mode():
        for _ in range(n):
            token = int(model(input_ids=seq, use_cache=False).logits[0, -1].argmax())
            out.append(token)
            if token in eos:
                break
            seq = torch.cat([seq, torch.tensor([[token]])], dim=1)
    return out


# ---- EAD ---------------------------------------------------------------------------------------


def test_ead_temperature_follows_the_schedule(tiny_lm: Any, ids: torch.Tensor) -> None:
    params = {"tau_max": 1.2, "tau_min": 0.3, "d": 6.0, "warmup": 4}
    out = rules.ead_decode(tiny_lm, ids, max_new_tokens=14, seed=3, **params)
    temps = out.signals["ead_temperature"]
    assert len(temps) == len(out.token_ids) == len(out.signals["ead_logprob"])
    assert out.stop_reason == "eos" or len(out.token_ids) == 14
    for t, tau in enumerate(temps, start=1):
        assert tau == float(ead_temperature(t, **params))
    assert temps[:3] == [1.0, 1.0, 1.0]
    if len(temps) >= 14:
        assert temps[-1] == pytest.approx(0.3)  # 1 + 1.2 - e^(14/6) < 0.3: the floor
    again = rules.ead_decode(tiny_lm, ids, max_new_tokens=14, seed=3, **params)
    assert again.token_ids == out.token_ids  # the seed fixes the output
    assert out.text == tiny_lm.tokenizer.decode(out.token_ids, skip_special_tokens=True)


def test_ead_at_unit_temperature_is_plain_sampling(tiny_lm: Any, ids: torch.Tensor) -> None:
    # tau_max = 0, tau_min = 1: max(1 - e^(t/d), 1) = 1 at every t
    out = rules.ead_decode(tiny_lm, ids, max_new_tokens=10, tau_max=0.0, tau_min=1.0, seed=11)
    assert out.signals["ead_temperature"] == [1.0] * len(out.token_ids)
    gen = torch.Generator().manual_seed(11)
    reference: list[int] = []
    seq = ids
    eos = eos_ids(tiny_lm)
    with torch.inference_mode():
        for _ in range(10):
            logits = tiny_lm.model(input_ids=seq, use_cache=False).logits[0, -1].float()
            token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
            reference.append(token)
            if token in eos:
                break
            seq = torch.cat([seq, torch.tensor([[token]])], dim=1)
    assert out.token_ids == reference


# ---- CNTP --------------------------------------------------------------------------------------


def test_cntp_trials_chunks_and_perplexity(tiny_lm: Any, ids: torch.Tensor) -> None:
    params = {"max_trials": 3, "h_low": 3.0, "h_high": 4.0, "temperature": 0.8, "top_p": 0.95}
    budget, max_trial_tokens = 16, 4
    out = rules.cntp_decode(
        tiny_lm, ids, max_new_tokens=budget, max_trial_tokens=max_trial_tokens, seed=0, **params
    )
    n = len(out.token_ids)
    chunks = out.debug["chunks"]
    punct = set(out.debug["punctuation_ids"])
    assert punct == rules.punctuation_ids(tiny_lm) and len(punct) >= 9
    assert [c["start"] for c in chunks] == [0, *[c["start"] + c["length"] for c in chunks][:-1]]
    assert chunks[-1]["start"] + chunks[-1]["length"] == n
    assert any(c["trials"] > 1 for c in chunks) and any(c["trials"] == 1 for c in chunks)
    trials, entropy, ppl = (out.signals[k] for k in ("cntp_trials", "cntp_entropy", "cntp_ppl"))
    for c in chunks:
        s, length = c["start"], c["length"]
        expected = int(
            cntp_trials(
                torch.tensor(c["entropy"]),
                max_trials=params["max_trials"],
                h_low=params["h_low"],
                h_high=params["h_high"],
            )
        )
        assert c["trials"] == expected == trials[s]
        assert entropy[s] == c["entropy"]
        assert all(math.isnan(v) for v in trials[s + 1 : s + length])
        assert len(c["trial_ppls"]) == c["trials"]
        assert c["chosen"] == min(range(c["trials"]), key=lambda i: c["trial_ppls"][i])
        assert ppl[s] == min(c["trial_ppls"])
        last = out.token_ids[s + length - 1]
        if c["trials"] == 1:
            assert length == 1
        else:  # a chunk ends at punctuation, EOS, the trial cap or the budget
            assert (
                last in punct
                or last in eos_ids(tiny_lm)
                or length == max_trial_tokens
                or s + length == budget
            )
            assert all(t not in punct for t in out.token_ids[s : s + length - 1])
    # the kept trial's PPL is that of its own tokens under the warped distribution
    full = torch.cat([ids, torch.tensor([out.token_ids])], dim=1)
    with torch.inference_mode():
        logits = tiny_lm.model(input_ids=full, use_cache=False).logits[0].float()
    start = ids.shape[1] - 1
    for c in chunks:
        logps = []
        for k in range(c["start"], c["start"] + c["length"]):
            warped = rules.top_p_filter(logits[start + k] / params["temperature"], params["top_p"])
            logps.append(torch.log_softmax(warped, -1)[out.token_ids[k]])
        assert float(perplexity(torch.stack(logps))) == pytest.approx(ppl[c["start"]], rel=1e-4)


# ---- entropy adaptive decoding -----------------------------------------------------------------


def test_early_exit_model_keeps_n_layers_and_the_tokenizer(tiny_lm: Any, small: Any) -> None:
    assert len(small.model.model.layers) == 1 and small.model.config.num_hidden_layers == 1
    assert len(tiny_lm.model.model.layers) == 2  # the original is untouched
    assert small.tokenizer is tiny_lm.tokenizer
    assert small.name == tiny_lm.name + "@layers=1"
    assert small.revision.endswith("@layers=1") and small.label.endswith("@layers=1")
    assert small.model.lm_head is not tiny_lm.model.lm_head
    assert torch.equal(small.model.lm_head.weight, tiny_lm.model.lm_head.weight)
    with pytest.raises(UserError):
        rules.early_exit_model(tiny_lm, 3)
    settings = Settings(home=Path("/nonexistent-home"), device="cpu")
    spec = rules.resolve_model_spec(f"{tiny_lm.name}@layers=1", settings, base=tiny_lm)
    assert spec.model.config.num_hidden_layers == 1
    assert rules.resolve_model_spec(f"{tiny_lm.name}@layers=1", settings, base=tiny_lm) is spec


def test_switch_thresholds_share_and_rule(tiny_lm: Any, small: Any, ids: torch.Tensor) -> None:
    eos = eos_ids(tiny_lm)
    large_only = rules.switch_decode(small, tiny_lm, ids, max_new_tokens=6, threshold_bits=-1.0)
    assert large_only.signals["large_model"] == [1.0] * len(large_only.token_ids)
    assert large_only.info["large_share"] == 1.0
    assert large_only.token_ids == _greedy(tiny_lm.model, ids, 6, eos)
    small_only = rules.switch_decode(small, tiny_lm, ids, max_new_tokens=6, threshold_bits=1e6)
    assert small_only.signals["large_model"] == [0.0] * len(small_only.token_ids)
    assert small_only.info["large_share"] == 0.0
    assert small_only.token_ids == _greedy(small.model, ids, 6, eos)
    # in between: the decision is switch_indicator over the recorded entropies
    h = small_only.signals["switch_entropy_bits"]
    threshold = sorted(h)[len(h) // 2]
    mixed = rules.switch_decode(
        small, tiny_lm, ids, max_new_tokens=6, threshold_bits=threshold, window=2
    )
    indicator = switch_indicator(torch.tensor(mixed.signals["switch_entropy_bits"]), threshold, 2)
    assert mixed.signals["large_model"] == [float(x) for x in indicator.tolist()]
    used = mixed.signals["large_model"]
    assert mixed.info["large_share"] == pytest.approx(sum(used) / len(used))


def test_switch_refuses_models_without_a_shared_tokenizer(tiny_lm: Any, ids: torch.Tensor) -> None:
    other_tok = copy.deepcopy(tiny_lm.tokenizer)
    other_tok.add_tokens(["<extra-token>"])
    other = replace(tiny_lm, name="other", tokenizer=other_tok)
    with pytest.raises(UserError, match="tokenizer"):
        rules.switch_decode(other, tiny_lm, ids, max_new_tokens=2)
    wider = replace(
        tiny_lm, name="wider", model=SimpleNamespace(config=SimpleNamespace(vocab_size=999))
    )
    with pytest.raises(UserError, match="vocabulary sizes"):
        rules.switch_decode(wider, tiny_lm, ids, max_new_tokens=2)


# ---- LATR --------------------------------------------------------------------------------------


def test_edit_distance() -> None:
    assert rules.token_edit_distance([1, 2, 3], [1, 2, 3]) == 0
    assert rules.token_edit_distance([1, 2, 3, 4], [2, 3, 4]) == 1
    assert rules.token_edit_distance([5, 1, 2], [1, 2, 6, 7]) == 3
    assert rules.normalized_edit_distance([1, 2], [3, 4]) == 1.0
    assert rules.normalized_edit_distance([], []) == 0.0


def test_latr_branches_and_pruning(tiny_lm: Any, ids: torch.Tensor) -> None:
    eos = eos_ids(tiny_lm)
    # tau_abs = 0, tau_rel = 1: the rule fires at every step of every branch
    kept = rules.latr_decode(
        tiny_lm,
        ids,
        max_new_tokens=7,
        tau_abs=0.0,
        tau_rel=1.0,
        max_branches=3,
        lookahead=3,
        tau_ed=0.0,
    )
    main, children = kept[0], kept[1:]
    assert main.branch_id == 0 and main.branch_of is None and main.branch_position is None
    assert main.token_ids == _greedy(tiny_lm.model, ids, 7, eos)
    assert main.info["branches_spawned"] == 3 == len(children) and main.info["branches_pruned"] == 0
    assert all(v == 1.0 for v in main.signals["latr_fired"])
    assert main.signals["latr_branch"] == [0.0] * len(main.token_ids)
    # earliest first: one child at step 0 (only the main branch is live), two at step 1
    assert [(c.branch_of, c.branch_position) for c in children] == [(0, 0), (0, 1), (1, 1)]
    by_id = {o.branch_id: o for o in kept}
    for child in children:
        assert child.branch_of is not None and child.branch_position is not None
        parent, b = by_id[child.branch_of], child.branch_position
        assert child.token_ids[:b] == parent.token_ids[:b]
        assert child.token_ids[b] != parent.token_ids[b]
        assert child.signals["latr_branch"][b] == 1.0
        assert child.signals["latr_branch"][:b] == parent.signals["latr_branch"][:b]
        assert sum(child.signals["latr_branch"]) == sum(parent.signals["latr_branch"][:b]) + 1
        with torch.inference_mode():
            probs = torch.softmax(
                tiny_lm.model(
                    input_ids=torch.cat(
                        [ids, torch.tensor([child.token_ids[:b]], dtype=torch.long)], dim=1
                    ),
                    use_cache=False,
                )
                .logits[0, -1]
                .float(),
                -1,
            )
        top = torch.topk(probs, 2)
        assert bool(latr_branching(top.values, tau_abs=0.0, tau_rel=1.0))
        assert child.token_ids[b] == int(top.indices[1])  # the runner-up
    # after the branch point a child continues greedily
    first = children[0]
    seq = torch.cat([ids, torch.tensor([first.token_ids[:1]])], dim=1)
    assert first.token_ids[1:] == _greedy(tiny_lm.model, seq, len(first.token_ids) - 1, eos)

    pruned = rules.latr_decode(
        tiny_lm,
        ids,
        max_new_tokens=7,
        tau_abs=0.0,
        tau_rel=1.0,
        max_branches=3,
        lookahead=3,
        tau_ed=1.01,
    )
    assert [o.branch_id for o in pruned] == [0]
    assert pruned[0].token_ids == main.token_ids
    assert pruned[0].info["branches_spawned"] == 3 and pruned[0].info["branches_pruned"] == 3
    tree = pruned[0].debug["tree"]
    assert [b["pruned"] for b in tree] == [False, True, True, True]
    # child 1 is judged (and pruned); child 3 is pruned with its parent, maybe before its turn
    assert tree[1]["distance"] is not None and tree[1]["distance"] <= 1.0
    assert tree[2]["distance"] is not None and tree[2]["distance"] <= 1.0


# ---- run_decode --------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Any:
    with Store(tmp_path / "decode.duckdb") as s:
        yield s


def _runs(store: Store, experiment_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    exp = get_experiment(store, experiment_id)
    return exp, [store.get_run(o["run_id"]) for o in exp["outputs"]]


def test_run_decode_stores_signals_as_token_metrics(
    tiny_lm: Any, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rule whose output re-encodes to its own ids: every signal lands on its token."""
    tok = tiny_lm.tokenizer
    body = tok("The capital of France is Paris.", add_special_tokens=False)["input_ids"]
    generated = [*body, tok.eos_token_id]
    values = [0.5 + i for i in range(len(generated))]
    sparse = [math.nan if i % 2 else float(i) for i in range(len(generated))]

    def fake(_lm: Any, _ids: torch.Tensor, *, max_new_tokens: int, seed: int) -> Any:
        assert max_new_tokens == 48 and seed == 7
        return rules.DecodedOutput(
            text=tok.decode(generated, skip_special_tokens=True),
            token_ids=generated,
            signals={"ead_temperature": values, "ead_logprob": sparse},
            info={"mean_temperature": sum(values) / len(values)},
            stop_reason="eos",
        )

    ead = rules.DECODING_RULES["ead"]
    monkeypatch.setitem(rules.DECODING_RULES, "ead", replace(ead, decode=fake))
    settings = Settings(home=tmp_path / "home", device="cpu")
    eid = run_decode(tiny_lm, store, settings, DecodeExperiment("ead", (PROMPT,), seed=7))
    exp, [run] = _runs(store, eid)
    assert exp["kind"] == "decode" and exp["summary"]["n_signals_sequence_only"] == 0
    condition = run["provenance"]["experiment"]
    assert condition["signal_alignment"] == "token" and condition["rule"] == "ead"
    response = [t for t in run["tokens"] if not t["is_prompt"]]
    assert [t["token_id"] for t in response] == generated  # EOS = the end-of-turn marker
    assert [t["ead_temperature"] for t in response] == values
    assert [t["ead_logprob"] for t in response] == [None if math.isnan(v) else v for v in sparse]
    assert all(t["ead_temperature"] is None for t in run["tokens"] if t["is_prompt"])
    assert run["sequence"]["ead_temperature_mean"] == pytest.approx(sum(values) / len(values))


END_TO_END = [
    ("ead", {"max_new_tokens": 5}, {}),
    ("cntp", {"max_new_tokens": 5, "max_trials": 2, "max_trial_tokens": 3}, {}),
    ("switch", {"max_new_tokens": 5, "threshold_bits": 6.0}, {"small_model": "@layers=1"}),
    (
        "latr",
        {"max_new_tokens": 5, "tau_abs": 0.0, "tau_rel": 1.0, "max_branches": 1, "tau_ed": 0.0},
        {},
    ),
]


def test_every_registered_rule_runs_end_to_end() -> None:
    """A rule added to the registry must be added to the end-to-end run below."""
    assert [rule for rule, _, _ in END_TO_END] == list(rules.DECODING_RULES)


@pytest.mark.parametrize(("rule", "params", "models"), END_TO_END)
def test_run_decode_end_to_end(
    tiny_lm: Any,
    store: Store,
    tmp_path: Path,
    rule: str,
    params: dict[str, Any],
    models: dict[str, str],
) -> None:
    settings = Settings(home=tmp_path / "home", device="cpu")
    models = {k: tiny_lm.name + v for k, v in models.items()}
    seen: list[tuple[int, int]] = []
    experiment = DecodeExperiment(rule, (PROMPT, "Hello there!"), params, **models)  # type: ignore[arg-type]
    eid = run_decode(
        tiny_lm, store, settings, experiment, progress=lambda d, t: seen.append((d, t))
    )
    assert seen == [(1, 2), (2, 2)]
    exp, runs = _runs(store, eid)
    summary = exp["summary"]
    assert summary["rule"] == rule and summary["n_prompts"] == 2
    assert summary["n_outputs"] == len(runs) == (4 if rule == "latr" else 2)
    signal_names = {
        "ead": {"ead_temperature", "ead_logprob"},
        "cntp": {"cntp_trials", "cntp_entropy", "cntp_ppl"},
        "switch": {"large_model", "switch_entropy_bits", "switch_mean_bits"},
        "latr": {"latr_branch", "latr_fired"},
    }[rule]
    for run in runs:
        condition = run["provenance"]["experiment"]
        assert condition["experiment_id"] == eid and set(condition["signals"]) == signal_names
        assert all(f"{name}_mean" in run["sequence"] for name in signal_names)
        stored = {
            k for t in run["tokens"] for k, v in t.items() if k in signal_names and v is not None
        }
        if condition["signal_alignment"] == "token":
            assert stored == signal_names
            response = [t for t in run["tokens"] if not t["is_prompt"]]
            generated = condition["generated_token_ids"]
            assert [t["token_id"] for t in response[: len(generated)]] == generated
        else:
            assert stored == set() and condition["signal_alignment_note"]
    if rule == "ead":
        assert 0 < summary["mean_temperature"] <= 1.2
    elif rule == "cntp":
        assert summary["chunks"] >= 2 and 1 <= summary["mean_trials"] <= 2
    elif rule == "switch":
        shares = summary["large_share_per_prompt"]
        assert len(shares) == 2 and all(0.0 <= s <= 1.0 for s in shares)
        assert summary["small_model"] == tiny_lm.name + "@layers=1"
        tokens = [p["n_tokens"] for p in summary["per_prompt"]]
        large = [p["large_tokens"] for p in summary["per_prompt"]]
        assert summary["large_share"] == pytest.approx(sum(large) / sum(tokens))
    else:
        assert summary["branches_spawned"] == 2 and summary["branches_returned"] == 4
        assert {r["provenance"]["experiment"]["branch_of"] for r in runs} == {None, 0}


def test_run_decode_refuses_bad_requests(tiny_lm: Any, store: Store, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", device="cpu")
    with pytest.raises(UserError, match="unknown parameter"):
        run_decode(tiny_lm, store, settings, DecodeExperiment("ead", (PROMPT,), {"beam": 2}))
    with pytest.raises(UserError, match="switch"):
        run_decode(tiny_lm, store, settings, DecodeExperiment("latr", (PROMPT,), large_model="x"))
    with pytest.raises(UserError, match="prompt"):
        run_decode(tiny_lm, store, settings, DecodeExperiment("ead", ()))
