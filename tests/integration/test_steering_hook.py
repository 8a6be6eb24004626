"""The steering hook, the first-step logit bias and steering vectors on the tiny random Llama.

The hook must add exactly ``beta * v`` to the residual stream after one decoder block at the
chosen positions and nowhere else, show up in ``hidden_states``, steer each cached generation
step, and always be removed. Vectors are checked against an independent computation from the
model's hidden states.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tokenprism.analysis.decoding import biased_probability, marker_mass
from tokenprism.analysis.steering import SteeringVectorParams
from tokenprism.backend.errors import UserError
from tokenprism.backend.lab.experiments import (
    REFUSAL_PHRASES,
    _FirstStepBias,
    _generate,
    _PrefixBias,
    marker_token_ids,
)
from tokenprism.backend.lab.steering import (
    caa_vector,
    decoder_layers,
    east_vector,
    list_vectors,
    load_vector,
    prompt_tensor,
    save_vector,
    steer,
)
from tokenprism.backend.settings import Settings

PROMPT = "What is the capital of France?"
PROMPTS = [
    "What is the capital of France?",
    "Write a four-line poem about the sea.",
    "How do I reverse a list in Python?",
    "Seven pens cost how much?",
]
LAYER = 0  # the tiny model has blocks 0 and 1; steering block 0 leaves block 1 downstream
BETA = 3.0


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """Many tiny forwards: intra-op threads only add overhead on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ids(tiny_lm: Any) -> torch.Tensor:
    return prompt_tensor(tiny_lm, PROMPT)


@pytest.fixture(scope="module")
def vector(tiny_lm: Any) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(int(tiny_lm.model.config.hidden_size), generator=gen)
    return v / v.norm()


def _forward(lm: Any, ids: torch.Tensor) -> Any:
    with torch.inference_mode():
        return lm.model(input_ids=ids, output_hidden_states=True, use_cache=False)


def _steering_hooks(block: Any) -> list[Any]:
    return [h for h in block._forward_hooks.values() if "steer.<locals>" in h.__qualname__]


def _no_hooks(lm: Any) -> None:
    """No steering hook is left. (Transformers keeps one output-capturing hook per block
    for ``output_hidden_states`` once it has been used; that one is not ours.)"""
    for block in decoder_layers(lm.model):
        assert _steering_hooks(block) == [], block._forward_hooks
        assert all("output_capturing" in h.__qualname__ for h in block._forward_hooks.values())


# ---- the hook ---------------------------------------------------------------------------------


@pytest.mark.parametrize("start", [None, 0, 5, "last"])
def test_the_hook_adds_exactly_beta_v_at_the_chosen_layer_and_positions(
    tiny_lm: Any, ids: torch.Tensor, vector: torch.Tensor, start: Any
) -> None:
    n = ids.shape[1]
    start = n - 1 if start == "last" else start
    first = 0 if start is None else start
    plain = _forward(tiny_lm, ids)
    assert len(plain.hidden_states) == len(decoder_layers(tiny_lm.model)) + 1
    with steer(tiny_lm.model, LAYER, vector, BETA, start=start) as state:
        steered = _forward(tiny_lm, ids)
    assert (state.seen, state.calls) == (n, 1)
    _no_hooks(tiny_lm)

    # blocks before the steered one (here: the embeddings) are bitwise unchanged
    for i in range(LAYER + 1):
        assert torch.equal(steered.hidden_states[i], plain.hidden_states[i])
    after, before = steered.hidden_states[LAYER + 1][0], plain.hidden_states[LAYER + 1][0]
    # positions before ``start`` are bitwise unchanged at the steered block ...
    assert torch.equal(after[:first], before[:first])
    # ... and exactly beta * v is added from ``start`` on (one float32 rounding of the sum)
    delta = (after[first:] - before[first:]).double()
    expected = (BETA * vector).double().expand_as(delta)
    scale = float(before.abs().max()) + BETA
    assert torch.allclose(delta, expected, rtol=0, atol=4 * scale * torch.finfo().eps)
    # later blocks change at the steered positions (and, causally, not before them)
    later, later_plain = steered.hidden_states[LAYER + 2][0], plain.hidden_states[LAYER + 2][0]
    assert torch.allclose(later[:first], later_plain[:first], rtol=0, atol=1e-6)
    assert bool(((later[first:] - later_plain[first:]).abs().amax(-1) > 1e-3).all())
    assert not torch.allclose(steered.logits[0, first:], plain.logits[0, first:])


def test_hidden_states_show_the_steered_stream(
    tiny_lm: Any, ids: torch.Tensor, vector: torch.Tensor
) -> None:
    """The steering hook is prepended, so any later hook (the output recorder of
    ``output_hidden_states`` or one of ours) sees the steered block output."""
    seen: list[torch.Tensor] = []
    block = decoder_layers(tiny_lm.model)[LAYER]
    handle = block.register_forward_hook(
        lambda _m, _i, out: seen.append((out[0] if isinstance(out, tuple) else out).clone())
    )
    try:
        with steer(tiny_lm.model, LAYER, vector, BETA):
            steered = _forward(tiny_lm, ids)
        # registered after the recorder above, the steering hook still runs first
        with steer(tiny_lm.model, LAYER, vector, BETA):
            hooks = list(block._forward_hooks.values())
            assert hooks[0] in _steering_hooks(block) and len(_steering_hooks(block)) == 1
    finally:
        handle.remove()
    assert len(seen) == 1
    assert torch.equal(seen[0], steered.hidden_states[LAYER + 1])
    # the recorded stream is the one the rest of the model consumed: running the remaining
    # block and head on it reproduces the steered logits
    plain = _forward(tiny_lm, ids)
    assert not torch.equal(steered.hidden_states[LAYER + 1], plain.hidden_states[LAYER + 1])
    with torch.inference_mode():
        inner = tiny_lm.model.model
        hidden = steered.hidden_states[LAYER + 1]
        positions = torch.arange(ids.shape[1]).unsqueeze(0)
        emb = inner.rotary_emb(hidden, positions)
        mask = torch.full((ids.shape[1], ids.shape[1]), float("-inf")).triu(1)[None, None]
        for later_block in inner.layers[LAYER + 1 :]:
            hidden = later_block(hidden, attention_mask=mask, position_embeddings=emb)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        logits = tiny_lm.model.lm_head(inner.norm(hidden))
    assert torch.allclose(logits, steered.logits, atol=1e-4)


def test_the_hook_is_removed_after_the_context(
    tiny_lm: Any, ids: torch.Tensor, vector: torch.Tensor
) -> None:
    plain = _forward(tiny_lm, ids)
    before = dict(decoder_layers(tiny_lm.model)[LAYER]._forward_hooks)
    with steer(tiny_lm.model, LAYER, vector, BETA):
        assert len(_steering_hooks(decoder_layers(tiny_lm.model)[LAYER])) == 1
        _forward(tiny_lm, ids)
    assert decoder_layers(tiny_lm.model)[LAYER]._forward_hooks == before
    _no_hooks(tiny_lm)
    again = _forward(tiny_lm, ids)
    assert torch.equal(again.logits, plain.logits)
    for a, b in zip(again.hidden_states, plain.hidden_states, strict=True):
        assert torch.equal(a, b)


def test_the_hook_is_removed_when_a_later_hook_raises(
    tiny_lm: Any, ids: torch.Tensor, vector: torch.Tensor
) -> None:
    plain = _forward(tiny_lm, ids)
    block = decoder_layers(tiny_lm.model)[LAYER]

    def boom(*_args: Any) -> None:
        raise RuntimeError("boom in a later hook")

    handle = block.register_forward_hook(boom)
    try:
        with (
            pytest.raises(RuntimeError, match="boom in a later hook"),
            steer(tiny_lm.model, LAYER, vector, BETA) as state,
        ):
            _forward(tiny_lm, ids)
    finally:
        handle.remove()
    assert state.calls == 1  # the steering hook ran (first), then the forward raised
    _no_hooks(tiny_lm)
    assert torch.equal(_forward(tiny_lm, ids).logits, plain.logits)


def test_the_hook_is_removed_when_the_model_rejects_the_input(
    tiny_lm: Any, ids: torch.Tensor, vector: torch.Tensor
) -> None:
    plain = _forward(tiny_lm, ids)
    bad = torch.tensor([[int(tiny_lm.model.config.vocab_size) + 5]])
    with pytest.raises(IndexError), steer(tiny_lm.model, LAYER, vector, BETA) as state:
        _forward(tiny_lm, bad)  # the embedding lookup raises before the block runs
    assert state.calls == 0
    _no_hooks(tiny_lm)
    assert torch.equal(_forward(tiny_lm, ids).logits, plain.logits)


def test_an_exception_in_the_body_removes_the_hook(
    tiny_lm: Any, ids: torch.Tensor, vector: torch.Tensor
) -> None:
    with pytest.raises(KeyError), steer(tiny_lm.model, LAYER, vector, BETA):
        _forward(tiny_lm, ids)
        raise KeyError("after a forward")
    _no_hooks(tiny_lm)


def test_an_out_of_range_layer_is_refused_without_a_hook(
    tiny_lm: Any, vector: torch.Tensor
) -> None:
    n = len(decoder_layers(tiny_lm.model))
    for layer in (-1, n):
        message = rf"layer {layer} is out of range.*0\.\.{n - 1}"
        with pytest.raises(UserError, match=message), steer(tiny_lm.model, layer, vector, BETA):
            pass
    _no_hooks(tiny_lm)


def test_cached_generation_steers_each_generated_step_but_not_the_prefill(
    tiny_lm: Any, ids: torch.Tensor, vector: torch.Tensor
) -> None:
    """``start = prompt length``: the prefill is plain, each cached step is steered; the
    generation's logits equal teacher-forced recomputations without a cache."""
    n_new, beta = 6, 6.0
    tok = tiny_lm.tokenizer
    n = ids.shape[1]
    with steer(tiny_lm.model, LAYER, vector, beta, start=n) as state, torch.inference_mode():
        out = tiny_lm.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=n_new,
            min_new_tokens=n_new,
            pad_token_id=tok.pad_token_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
    _no_hooks(tiny_lm)
    generated = out.sequences[0, n:].tolist()
    assert len(generated) == n_new and len(out.logits) == n_new
    # one prefill call over the prompt, then one call per new position
    assert state.calls == n_new and state.seen == n + n_new - 1

    # the first step's logits come from the unsteered prefill
    plain_first = _forward(tiny_lm, ids).logits[0, -1]
    assert torch.allclose(out.logits[0][0], plain_first, atol=1e-5)
    # every step, recomputed without a cache under a fresh hook (positions >= n steered)
    seq = ids
    unsteered_differs = False
    for step in range(n_new):
        with steer(tiny_lm.model, LAYER, vector, beta, start=n):
            logits = _forward(tiny_lm, seq).logits[0, -1]
        assert torch.allclose(out.logits[step][0], logits, atol=1e-4), step
        assert int(logits.argmax()) == generated[step]
        if step > 0:
            unsteered = _forward(tiny_lm, seq).logits[0, -1]
            unsteered_differs |= not torch.allclose(unsteered, logits, atol=1e-3)
        seq = torch.cat([seq, torch.tensor([[generated[step]]])], dim=1)
    assert unsteered_differs, "steering the generated positions changed no logits"


def test_a_zero_beta_changes_nothing(tiny_lm: Any, ids: torch.Tensor, vector: torch.Tensor) -> None:
    plain = _forward(tiny_lm, ids)
    with steer(tiny_lm.model, LAYER, vector, 0.0):
        same = _forward(tiny_lm, ids)
    assert torch.equal(same.logits, plain.logits)


# ---- the first-step logit bias ------------------------------------------------------------------


def test_the_first_step_bias_changes_only_the_marker_logits_at_the_first_step() -> None:
    gen = torch.Generator().manual_seed(1)
    vocab, prompt_len, markers, bias = 50, 7, [3, 11, 42], 2.5
    scores = torch.randn(2, vocab, generator=gen)
    original = scores.clone()
    processor = _FirstStepBias(prompt_len, markers, bias)

    first = processor(torch.zeros(2, prompt_len, dtype=torch.long), scores)
    assert torch.equal(scores, original), "the input scores were modified in place"
    others = [i for i in range(vocab) if i not in markers]
    assert torch.equal(first[:, others], original[:, others])
    assert torch.equal(first[:, markers], original[:, markers] + bias)
    # the probability of the marker set moves exactly as biased_probability says
    probs = torch.softmax(original.double(), -1)
    mass = marker_mass(probs, torch.tensor(markers))
    after = torch.softmax(first.double(), -1)[:, markers].sum(-1)
    assert torch.allclose(after, biased_probability(mass, bias).double(), atol=1e-6)

    # later steps and a zero bias leave the scores alone
    for length in (prompt_len + 1, prompt_len + 5):
        assert torch.equal(processor(torch.zeros(2, length, dtype=torch.long), scores), original)
    zero = _FirstStepBias(prompt_len, markers, 0.0)
    assert torch.equal(zero(torch.zeros(2, prompt_len, dtype=torch.long), scores), original)


def test_the_prefix_bias_follows_the_phrases_the_output_is_still_on() -> None:
    """``bias_scope="prefix"``: step k biases token k of every phrase whose first k tokens the
    output has produced; step 0 is the first-step bias of the phrases' first tokens."""
    gen = torch.Generator().manual_seed(2)
    prompt_len, bias = 3, 1.5
    phrases = [[5, 6, 7], [5, 8], [9]]
    processor = _PrefixBias(prompt_len, phrases, bias)
    scores = torch.randn(1, 12, generator=gen)
    original = scores.clone()

    def changed(*generated: int) -> set[int]:
        ids = torch.tensor([[0] * prompt_len + list(generated)])
        out = processor(ids, scores)
        assert torch.equal(scores, original), "the input scores were modified in place"
        diff = (out - original)[0]
        cols = {int(i) for i in torch.nonzero(diff).flatten()}
        assert all(float(diff[c]) == pytest.approx(bias) for c in cols)
        return cols

    first = _FirstStepBias(prompt_len, [5, 9], bias)
    assert torch.equal(
        processor(torch.zeros(1, prompt_len, dtype=torch.long), scores),
        first(torch.zeros(1, prompt_len, dtype=torch.long), scores),
    )
    assert changed() == {5, 9}
    assert changed(5) == {6, 8}
    assert changed(5, 6) == {7}
    assert changed(9) == set() and changed(4) == set() and changed(5, 8) == set()
    assert changed(5, 6, 7) == set() and changed(4, 6) == set()
    # rows of a batch follow their own prefixes
    batch = torch.tensor([[0] * prompt_len + [5], [0] * prompt_len + [4]])
    out = processor(batch, original.expand(2, -1))
    assert {int(i) for i in torch.nonzero(out[0] - original[0]).flatten()} == {6, 8}
    assert torch.equal(out[1], original[0])
    zero = _PrefixBias(prompt_len, phrases, 0.0)
    assert torch.equal(zero(torch.zeros(1, prompt_len, dtype=torch.long), scores), original)


def test_a_large_marker_bias_forces_a_marker_only_as_the_first_token(
    tiny_lm: Any, ids: torch.Tensor
) -> None:
    markers = marker_token_ids(tiny_lm, REFUSAL_PHRASES)
    assert markers
    plain = tiny_lm.tokenizer(_generate(tiny_lm, ids, max_new_tokens=4), add_special_tokens=False)[
        "input_ids"
    ]
    assert plain[0] not in markers, "pick a prompt whose greedy output avoids the markers"
    processor = _FirstStepBias(ids.shape[1], markers, 1e4)
    steps: list[tuple[torch.Tensor, torch.Tensor]] = []

    def spy(input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        out = processor(input_ids, scores)
        steps.append((scores.clone(), out))
        return out

    text = _generate(tiny_lm, ids, max_new_tokens=4, processors=[spy])
    assert len(steps) == 4
    scores, out = steps[0]
    assert int(out.argmax()) in markers
    others = [i for i in range(scores.shape[-1]) if i not in markers]
    assert torch.equal(out[:, others], scores[:, others])
    # from the second step on the bias is gone: the scores pass through untouched
    for scores, out in steps[1:]:
        assert torch.equal(out, scores)
    assert text  # the generation went on after the forced marker


# ---- vectors ------------------------------------------------------------------------------------


def _reference_states(lm: Any, prompts: list[str], layer: int) -> tuple[np.ndarray, np.ndarray]:
    reps, entropies = [], []
    for prompt in prompts:
        out = _forward(lm, prompt_tensor(lm, prompt))
        reps.append(out.hidden_states[layer + 1][0, -1].double().numpy())
        p = torch.softmax(out.logits[0, -1].double(), -1).numpy()
        entropies.append(float(-(p * np.log(p)).sum()))
    return np.stack(reps), np.array(entropies)


@pytest.mark.parametrize("layer", [0, 1])
def test_east_vector_equals_an_independent_computation(tiny_lm: Any, layer: int) -> None:
    reps, entropies = _reference_states(tiny_lm, PROMPTS, layer)
    centred = reps - reps.mean(0)
    u = (entropies[:, None] * centred).sum(0) / entropies.sum()
    expected = u / np.linalg.norm(u)

    vec = east_vector(tiny_lm, PROMPTS, layer)
    assert vec.vector.dtype == torch.float32 and vec.vector.shape == (reps.shape[1],)
    np.testing.assert_allclose(vec.vector.double().numpy(), expected, atol=1e-5)
    assert float(vec.vector.norm()) == pytest.approx(1.0, abs=1e-6)
    assert vec.layer == layer and vec.config["kind"] == "east"
    np.testing.assert_allclose(vec.config["entropies"], entropies, rtol=1e-5)
    assert vec.config["n_prompts"] == len(PROMPTS) and vec.config["prompts"] == PROMPTS
    assert vec.config["model_revision"] == tiny_lm.revision

    raw = east_vector(tiny_lm, PROMPTS, layer, SteeringVectorParams(normalize="none"))
    np.testing.assert_allclose(raw.vector.double().numpy(), u, atol=1e-5)
    scaled = east_vector(tiny_lm, PROMPTS, layer, SteeringVectorParams(normalize="mean_norm"))
    mean_norm = np.linalg.norm(reps, axis=1).mean()
    np.testing.assert_allclose(
        scaled.vector.double().numpy(), expected * mean_norm, rtol=0, atol=1e-5 * mean_norm
    )


def test_caa_vector_equals_an_independent_computation(tiny_lm: Any) -> None:
    positive, negative = PROMPTS[:2], PROMPTS[2:]
    pos, _ = _reference_states(tiny_lm, positive, LAYER)
    neg, _ = _reference_states(tiny_lm, negative, LAYER)
    diff = pos.mean(0) - neg.mean(0)
    vec = caa_vector(tiny_lm, positive, negative, LAYER)
    np.testing.assert_allclose(vec.vector.double().numpy(), diff / np.linalg.norm(diff), atol=1e-5)
    assert vec.config["kind"] == "caa" and vec.config["n_positive"] == 2
    raw = caa_vector(tiny_lm, positive, negative, LAYER, normalize="none")
    np.testing.assert_allclose(raw.vector.double().numpy(), diff, atol=1e-5)
    with pytest.raises(UserError, match="needs prompts in both sets"):
        caa_vector(tiny_lm, positive, [], LAYER)
    with pytest.raises(UserError, match="zero"):
        caa_vector(tiny_lm, positive, positive, LAYER)


def test_a_single_prompt_east_vector_is_refused_with_a_clear_message(tiny_lm: Any) -> None:
    for params in (SteeringVectorParams(), SteeringVectorParams(normalize="none")):
        with pytest.raises(UserError) as info:
            east_vector(tiny_lm, PROMPTS[:1], LAYER, params)
        message = str(info.value)
        assert "at least two prompts" in message and "1" in message, message
    with pytest.raises(UserError, match="at least one prompt"):
        east_vector(tiny_lm, [], LAYER)
    # without centring one prompt is a direction (its own representation)
    reps, _ = _reference_states(tiny_lm, PROMPTS[:1], LAYER)
    one = east_vector(tiny_lm, PROMPTS[:1], LAYER, SteeringVectorParams(center=False))
    np.testing.assert_allclose(
        one.vector.double().numpy(), reps[0] / np.linalg.norm(reps[0]), atol=1e-5
    )


def test_vectors_save_load_and_list(tiny_lm: Any, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", device="cpu")
    assert list_vectors(settings) == []
    east = east_vector(tiny_lm, PROMPTS, 1, name="east-1")
    caa = caa_vector(tiny_lm, PROMPTS[:2], PROMPTS[2:], 0, name="caa.0")
    path = save_vector(east, settings)
    assert path == settings.home / "vectors" / "east-1"
    assert (path / "vector.safetensors").is_file() and (path / "vector.json").is_file()
    save_vector(caa, settings)

    loaded = load_vector("east-1", settings)
    assert loaded.name == "east-1"
    assert torch.equal(loaded.vector, east.vector)
    assert loaded.config == {"name": "east-1", **east.config}
    assert loaded.summary() == east.summary()
    assert [v.name for v in list_vectors(settings)] == ["caa.0", "east-1"]

    # overwriting replaces the vector; no temporary directories are left behind
    again = east_vector(tiny_lm, PROMPTS[:3], 1, name="east-1")
    save_vector(again, settings)
    assert torch.equal(load_vector("east-1", settings).vector, again.vector)
    assert sorted(p.name for p in (settings.home / "vectors").iterdir()) == ["caa.0", "east-1"]

    with pytest.raises(UserError, match=r"no steering vector named 'nope'; known: caa\.0, east-1"):
        load_vector("nope", settings)
    with pytest.raises(UserError, match="no steering vector named"):
        load_vector("../east-1", settings)
    bad = east_vector(tiny_lm, PROMPTS, 0, name="bad/name")
    with pytest.raises(UserError, match="must be letters, digits"):
        save_vector(bad, settings)

    # a loaded vector steers exactly like the one it was saved from
    ids = prompt_tensor(tiny_lm, PROMPT)
    with steer(tiny_lm.model, 1, east.vector, BETA):
        a = _forward(tiny_lm, ids).logits
    with steer(tiny_lm.model, 1, load_vector("caa.0", settings).vector, BETA):
        b = _forward(tiny_lm, ids).logits
    with steer(tiny_lm.model, 1, caa.vector, BETA):
        c = _forward(tiny_lm, ids).logits
    assert torch.equal(b, c) and not torch.equal(a, b)
