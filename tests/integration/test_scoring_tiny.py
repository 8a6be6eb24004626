"""Scoring on a tiny random Llama loaded through the real local-directory path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tokenprism.backend.errors import InputTooLong, ModelNotFound, UnsafeWeights, UserError
from tokenprism.backend.models.loader import load_model
from tokenprism.backend.scoring.encoding import encode_chat, encode_pair, encode_text
from tokenprism.backend.scoring.runner import score_batch, score_one
from tokenprism.backend.settings import Settings


def _plain_forward(lm, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        logits = lm.model(torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    target = torch.tensor(ids[1:])
    lp = logp[:-1].gather(-1, target[:, None]).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1)[:-1]
    return lp, ent


def test_raw_text_matches_a_plain_forward_pass(tiny_lm) -> None:  # type: ignore[no-untyped-def]
    text = "The capital of France is Paris.\n\nThe answer is 42."
    enc = encode_text(tiny_lm.tokenizer, text, context_length=tiny_lm.context_length)
    assert "".join(enc.token_texts) == text
    assert not any(enc.is_prompt)
    scored = score_one(tiny_lm, enc).scores
    lp, ent = _plain_forward(tiny_lm, enc.input_ids)
    assert torch.isnan(scored.token["logprob"][0])
    torch.testing.assert_close(scored.token["logprob"][1:].double(), lp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scored.token["entropy"][1:].double(), ent, atol=1e-5, rtol=1e-5)
    assert scored.sequence["n_tokens"] == len(enc.input_ids) - 1
    expected_gm = float(lp.mean().exp())
    assert scored.sequence["geometric_mean_confidence"] == pytest.approx(expected_gm, rel=1e-5)
    # one effective rank per hidden-state tensor: embeddings + 2 blocks
    assert scored.layers["effective_rank"].shape == (3,)
    # the step onset after the blank line is the token that starts "The answer"
    steps = torch.nonzero(~torch.isnan(scored.token["step_first_surprisal"])).flatten().tolist()
    second = text.index("The answer")
    assert any(enc.offsets[p][0] <= second < enc.offsets[p][1] for p in steps)


def test_chat_template_marks_prompt_and_response(tiny_lm) -> None:  # type: ignore[no-untyped-def]
    enc = encode_pair(
        tiny_lm.tokenizer,
        "What is the capital of France?",
        "It is Paris.",
        context_length=tiny_lm.context_length,
    )
    response_text = "".join(t for t, p in zip(enc.token_texts, enc.is_prompt, strict=True) if not p)
    assert response_text == "It is Paris.<|im_end|>"
    prompt_text = "".join(t for t, p in zip(enc.token_texts, enc.is_prompt, strict=True) if p)
    assert "What is the capital of France?" in prompt_text
    assert prompt_text.startswith("<|im_start|>system\nYou are a tiny test model.")
    assert enc.text.endswith("It is Paris.<|im_end|>")  # trailing template newline is cut
    scored = score_one(tiny_lm, enc)
    assert scored.scores.sequence["n_tokens"] == sum(not p for p in enc.is_prompt)
    assert scored.provenance["chat_template"] == tiny_lm.tokenizer.chat_template
    assert scored.provenance["rendered_text"] == enc.text


def test_multi_turn_chat_scores_the_last_assistant_turn(tiny_lm) -> None:  # type: ignore[no-untyped-def]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hello there!"},
        {"role": "user", "content": "Capital of Italy?"},
        {"role": "assistant", "content": "Rome."},
    ]
    enc = encode_chat(tiny_lm.tokenizer, messages, context_length=tiny_lm.context_length)
    response = "".join(t for t, p in zip(enc.token_texts, enc.is_prompt, strict=True) if not p)
    assert response == "Rome.<|im_end|>"
    assert "Hello there!" in enc.text and "Be brief." in enc.text


def test_pair_without_template_is_the_plain_concatenation(tiny_lm) -> None:  # type: ignore[no-untyped-def]
    enc = encode_pair(
        tiny_lm.tokenizer,
        "The capital of Italy is",
        " Rome.",
        context_length=tiny_lm.context_length,
        template=False,
    )
    assert enc.text == "The capital of Italy is Rome."
    response = "".join(t for t, p in zip(enc.token_texts, enc.is_prompt, strict=True) if not p)
    assert response == " Rome."


def test_batch_scoring_equals_one_by_one(tiny_lm) -> None:  # type: ignore[no-untyped-def]
    texts = [
        "The quick brown fox jumps over the lazy dog.",
        "Hello there!",
        "Seven pens cost 21 dollars.\n\nThe answer is 21.",
    ]
    encs = [encode_text(tiny_lm.tokenizer, t, context_length=tiny_lm.context_length) for t in texts]
    together = score_batch(tiny_lm, encs)
    for enc, batched in zip(encs, together, strict=True):
        alone = score_one(tiny_lm, enc).scores
        for name in ("logprob", "entropy", "kurtosis", "margin", "window_entropy"):
            torch.testing.assert_close(
                batched.scores.token[name], alone.token[name], atol=1e-4, rtol=1e-4, equal_nan=True
            )
        assert torch.equal(batched.scores.token["rank"], alone.token["rank"])
        for key, value in alone.sequence.items():
            assert batched.scores.sequence[key] == pytest.approx(
                value, rel=1e-4, abs=1e-5, nan_ok=True
            )


def test_text_over_the_context_is_refused_naming_the_limit(tiny_lm) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputTooLong, match="context is 256 tokens"):
        encode_text(tiny_lm.tokenizer, "Paris " * 400, context_length=tiny_lm.context_length)


@pytest.mark.parametrize("text", ["", "   \n "])
def test_empty_text_is_refused(tiny_lm, text: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UserError, match="empty"):
        encode_text(tiny_lm.tokenizer, text, context_length=tiny_lm.context_length)


def test_pickle_only_directory_is_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    bad = tmp_path / "pickled"
    bad.mkdir()
    (bad / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    (bad / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(UnsafeWeights, match="pickle"):
        load_model(str(bad), Settings(home=tmp_path / "h", device="cpu"))


def test_missing_paths_and_empty_dirs_are_clear_errors(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "h", device="cpu")
    with pytest.raises(ModelNotFound, match="does not exist"):
        load_model(str(tmp_path / "nope"), settings)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFound, match="no model weights"):
        load_model(str(tmp_path / "empty"), settings)


def test_local_model_provenance_has_a_weight_hash(tiny_lm, tiny_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    prov = tiny_lm.provenance()
    assert prov["model"] == str(tiny_model_dir)
    assert prov["source"] == "local"
    assert prov["revision"].startswith("sha256:") and len(prov["revision"]) == 71
    assert prov["dtype"] == "float32" and prov["device"] == "cpu"
    assert prov["context_length"] == 256
