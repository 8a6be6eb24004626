"""A generation cut at ``max_new_tokens`` ends with its last real token, never a fabricated EOS."""

from __future__ import annotations

import torch

from tokenprism.backend.lab.experiments import _encode_output, _generate_output
from tokenprism.backend.sampling.generation import sample_responses
from tokenprism.backend.sampling.types import eos_ids, prompt_ids
from tokenprism.backend.scoring.runner import score_one


class _ForceEos:
    """Logits processor: the EOS after ``after`` generated tokens, anything but EOS before."""

    def __init__(self, prompt_len: int, eos: int, after: int) -> None:
        self.prompt_len, self.eos, self.after = prompt_len, eos, after

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        out = scores.clone()
        if input_ids.shape[1] - self.prompt_len >= self.after:
            out[:] = -1e9
            out[:, self.eos] = 0.0
        else:
            out[:, self.eos] = -1e9
        return out


def _response(enc) -> list[str]:  # type: ignore[no-untyped-def]
    return [t for t, p in zip(enc.token_texts, enc.is_prompt, strict=True) if not p]


def test_cut_generation_scores_no_end_token(tiny_lm) -> None:  # type: ignore[no-untyped-def]
    ids, _ = prompt_ids(tiny_lm, "Tell me a story.")
    prompt = torch.tensor([ids])
    eos = tiny_lm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert eos in eos_ids(tiny_lm)
    never = _ForceEos(len(ids), eos, after=10**6)
    text, ended = _generate_output(tiny_lm, prompt, max_new_tokens=4, processors=[never])
    assert not ended
    enc = _encode_output(tiny_lm, "Tell me a story.", text, ended)
    assert enc.truncated
    assert "<|im_end|>" not in "".join(_response(enc))
    assert enc.text.endswith(text)
    scored = score_one(tiny_lm, enc)
    assert scored.provenance["truncated"] is True
    # every scored response token is one the tokenizer gives for the generated text itself
    n_response = sum(not p for p in enc.is_prompt)
    assert scored.scores.sequence["n_tokens"] == n_response
    assert n_response == len(tiny_lm.tokenizer(text, add_special_tokens=False)["input_ids"])


def test_sampled_end_token_is_kept(tiny_lm) -> None:  # type: ignore[no-untyped-def]
    ids, _ = prompt_ids(tiny_lm, "Tell me a story.")
    eos = tiny_lm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    stop = _ForceEos(len(ids), eos, after=2)
    text, ended = _generate_output(
        tiny_lm, torch.tensor([ids]), max_new_tokens=8, processors=[stop]
    )
    assert ended
    enc = _encode_output(tiny_lm, "Tell me a story.", text, ended)
    assert not enc.truncated
    assert _response(enc)[-1] == "<|im_end|>"
    assert score_one(tiny_lm, enc).provenance["truncated"] is False


def test_sample_responses_flags_cut_outputs(tiny_lm) -> None:  # type: ignore[no-untyped-def]
    encoded = sample_responses(
        tiny_lm, "Tell me a story.", n=6, max_new_tokens=3, temperature=1.0, seed=3
    )
    assert encoded
    for enc in encoded:
        tail = "".join(_response(enc))
        # an output either ended with the sampled end token or is flagged and has none
        assert enc.truncated != tail.endswith("<|im_end|>")
