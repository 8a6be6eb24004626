"""The GPU path's precision handling, emulated on CPU with the tiny random Llama.

On a GPU, TokenPrism runs the model in bfloat16 (bf16 weights, or fp32 weights under
``torch.autocast``) and must still compute every metric in float32. torch 2.13 runs bf16 and
fp16 autocast on CPU too, so the same code paths are exercised here:

* the metric math is float32: scores agree with a float64 recomputation from the *same*
  half-precision logits to 1e-3 (measured ~1e-6), while doing the softmax / entropy in bf16
  would be off by ~3e-2 and in fp16 by ~5e-3, so this check fails if an upcast goes missing;
* the metrics are close to the float32 model. The tolerance follows from how far the logits
  moved: log-softmax is 2-Lipschitz in the max norm, so ``|d logprob| <= 2 |dz|_inf`` exactly;
  the entropy's gradient is ``-p_j (z_j - E_p z)``, so to first order
  ``|dH| <= |dz|_inf * sd_p(log p)``, allowed twice over for the second-order terms (measured
  ratios <= 0.5 of each bound on this model and on SmolLM2). bf16 keeps 8 significant bits
  (~2.4 decimal digits: a logit of 8 is rounded by up to 0.016 per operation), and the logits
  of this model move by ~0.25 in bf16 and ~0.04 in fp16; aggregates over a response (means,
  perplexity, effective rank) average these errors out and get fixed tolerances well above the
  measured deviations (<= 0.003 nats for the mean entropy, <= 0.4 % for perplexity, <= 0.02
  for effective ranks).
"""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import ValidationError
from typer.testing import CliRunner

import tokenprism.backend.sampling.vllm as vllm_sampler
from tokenprism.backend.api.schemas import GroupBody
from tokenprism.backend.errors import UserError
from tokenprism.backend.groups.core import GroupRequest, get_group, run_group
from tokenprism.backend.models.loader import (
    LoadedModel,
    check_autocast,
    load_model,
    resolve_autocast,
    resolve_dtype,
)
from tokenprism.backend.sampling.generation import prompt_ids, sample_responses
from tokenprism.backend.scoring.encoding import EncodedText, encode_pair, encode_text
from tokenprism.backend.scoring.runner import ScoredText, forward_batch, score_batch
from tokenprism.backend.settings import Settings
from tokenprism.backend.store import Store

TEXTS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Let me think step by step.\n\nFirst, add the numbers.\n\nThe answer is 42. " * 2,
]
FLOAT_METRICS = ("logprob", "prob", "entropy", "surprisal_bits", "margin", "window_entropy")
VARIANTS = {  # (dtype, autocast) -> the dtype the matmuls run in
    ("bfloat16", "none"): torch.bfloat16,
    ("float32", "bfloat16"): torch.bfloat16,
    ("float32", "float16"): torch.float16,
}
NO_VLLM = "pip install vllm"


def _load(directory: Path, home: Path, dtype: str, autocast: str) -> LoadedModel:
    settings = Settings.model_validate(
        {"home": home, "device": "cpu", "dtype": dtype, "autocast": autocast}
    )
    return load_model(str(directory), settings)


@pytest.fixture(scope="module")
def models(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[str, str], LoadedModel]:
    home = tmp_path_factory.mktemp("gpu-path-home")
    keys = [("float32", "none"), *VARIANTS]
    return {key: _load(tiny_model_dir, home, *key) for key in keys}


@pytest.fixture(scope="module")
def encoded(models: dict[tuple[str, str], LoadedModel]) -> list[EncodedText]:
    lm = models[("float32", "none")]
    return [encode_text(lm.tokenizer, t, context_length=lm.context_length) for t in TEXTS]


@pytest.fixture(scope="module")
def reference(
    models: dict[tuple[str, str], LoadedModel], encoded: list[EncodedText]
) -> list[ScoredText]:
    return score_batch(models[("float32", "none")], encoded)


def _logits(lm: LoadedModel, enc: EncodedText) -> torch.Tensor:
    """Raw next-token logits of one text ``[T-1, V]`` in float64, under the model's autocast."""
    with torch.inference_mode(), lm.autocast_context():
        logits = lm.model(torch.tensor([enc.input_ids])).logits[0, :-1]
    return logits.double()


# ---- (a, b, d) half-precision runs give float32 metrics close to the float32 model ---------


@pytest.mark.parametrize("key", list(VARIANTS), ids=lambda k: f"{k[0]}-autocast-{k[1]}")
def test_forward_runs_in_the_requested_precision(
    models: dict[tuple[str, str], LoadedModel], encoded: list[EncodedText], key: tuple[str, str]
) -> None:
    lm = models[key]
    assert lm.compute_dtype == VARIANTS[key]
    out, _, _ = forward_batch(lm, encoded)
    # the logits come out of a half-precision matmul: autocast (or the weights) took effect
    assert out.logits.dtype == VARIANTS[key]
    assert next(lm.model.parameters()).dtype == getattr(torch, key[0])


@pytest.mark.parametrize("key", list(VARIANTS), ids=lambda k: f"{k[0]}-autocast-{k[1]}")
def test_metrics_are_float32_finite_and_computed_in_float32(
    models: dict[tuple[str, str], LoadedModel], encoded: list[EncodedText], key: tuple[str, str]
) -> None:
    lm = models[key]
    for enc, st in zip(encoded, score_batch(lm, encoded), strict=True):
        sc = st.scores
        for name in FLOAT_METRICS:
            assert sc.token[name].dtype == torch.float32, name
        assert sc.top_probs.dtype == torch.float32
        assert sc.layers["effective_rank"].dtype == torch.float32
        assert torch.isnan(sc.token["logprob"][0])  # the first token has no prediction
        for name in ("logprob", "prob", "entropy", "margin"):
            assert torch.isfinite(sc.token[name][1:]).all(), name
        # the default scores the final layer's effective rank (the others are NaN by design)
        assert torch.isfinite(sc.layers["effective_rank"][-1])
        assert all(math.isfinite(sc.sequence[k]) for k in ("perplexity", "mean_entropy", "erv"))
        # float64 math on the same half-precision logits: only float32 rounding may differ
        logp = torch.log_softmax(_logits(lm, enc), -1)
        target = torch.tensor(enc.input_ids[1:])
        expected_lp = logp.gather(-1, target[:, None]).squeeze(-1)
        expected_h = -(logp.exp() * logp).sum(-1)
        torch.testing.assert_close(sc.token["logprob"][1:].double(), expected_lp, atol=1e-3, rtol=0)
        torch.testing.assert_close(sc.token["entropy"][1:].double(), expected_h, atol=1e-3, rtol=0)


@pytest.mark.parametrize("key", list(VARIANTS), ids=lambda k: f"{k[0]}-autocast-{k[1]}")
def test_metrics_stay_within_the_precision_bound_of_the_float32_model(
    models: dict[tuple[str, str], LoadedModel],
    encoded: list[EncodedText],
    reference: list[ScoredText],
    key: tuple[str, str],
) -> None:
    lm, ref_lm = models[key], models[("float32", "none")]
    for enc, ref, st in zip(encoded, reference, score_batch(lm, encoded), strict=True):
        z_ref, z = _logits(ref_lm, enc), _logits(lm, enc)
        dz = (z - z_ref).abs().amax(-1)  # [T-1] how far half precision moved each row
        assert 0 < float(dz.max()) < 1.0  # it did move, and not wildly
        logp = torch.log_softmax(z_ref, -1)
        entropy = -(logp.exp() * logp).sum(-1)
        sd = (logp.exp() * (logp + entropy[:, None]).square()).sum(-1).sqrt()
        a, b = ref.scores, st.scores
        d_lp = (a.token["logprob"][1:] - b.token["logprob"][1:]).abs().double()
        d_h = (a.token["entropy"][1:] - b.token["entropy"][1:]).abs().double()
        assert (d_lp <= 2 * dz + 1e-4).all(), float((d_lp - 2 * dz).max())
        assert (d_h <= 2 * dz * sd + 1e-4).all(), float((d_h - 2 * dz * sd).max())
        seq_a, seq_b = a.sequence, b.sequence
        assert seq_b["mean_entropy"] == pytest.approx(seq_a["mean_entropy"], abs=0.02)
        assert seq_b["perplexity"] == pytest.approx(seq_a["perplexity"], rel=0.02)
        assert seq_b["geometric_mean_confidence"] == pytest.approx(
            seq_a["geometric_mean_confidence"], rel=0.02
        )
        torch.testing.assert_close(
            b.layers["effective_rank"], a.layers["effective_rank"], atol=0.1, rtol=0, equal_nan=True
        )


def test_spectra_stay_float32_inside_an_autocast_region() -> None:
    from tokenprism.analysis.geometry import effective_rank, singular_values

    torch.manual_seed(0)
    hidden = torch.randn(3, 40, 32) * torch.logspace(0, -3, 32)  # small singular values matter
    expected = effective_rank(hidden)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = effective_rank(hidden)  # a bf16 Gram product moves it by ~3e-3
        values = singular_values(hidden.bfloat16())
    # the spectrum is solved in float64 (issue 22: exact on near-low-rank input), the rank is
    # reported in float32
    assert got.dtype == torch.float32 and values.dtype == torch.float64
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


# ---- (c) provenance ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "dtype", "autocast"),
    [
        (("float32", "none"), "float32", "none"),
        (("bfloat16", "none"), "bfloat16", "none"),
        (("float32", "bfloat16"), "float32", "bfloat16"),
        (("float32", "float16"), "float32", "float16"),
    ],
)
def test_provenance_records_dtype_and_autocast(
    models: dict[tuple[str, str], LoadedModel],
    encoded: list[EncodedText],
    key: tuple[str, str],
    dtype: str,
    autocast: str,
) -> None:
    lm = models[key]
    assert lm.provenance()["dtype"] == dtype and lm.provenance()["autocast"] == autocast
    prov = score_batch(lm, encoded[:1])[0].provenance
    assert (prov["dtype"], prov["autocast"], prov["device"]) == (dtype, autocast, "cpu")


# ---- (d) float16 on CPU: accepted where torch supports it, refused where it would not run ---


def test_cpu_autocast_support_is_checked_against_torch() -> None:
    cpu = torch.device("cpu")
    # torch 2.13 runs both on CPU (the float16 variant above scores fine)
    check_autocast(cpu, torch.bfloat16)
    check_autocast(cpu, torch.float16)
    check_autocast(cpu, None)
    # a dtype CPU autocast does not support: torch would only warn and run in float32
    with pytest.raises(UserError, match="float32 autocast on cpu is not supported"):
        check_autocast(cpu, torch.float32)
    with pytest.raises(UserError, match="autocast is not available on device 'meta'"):
        check_autocast(torch.device("meta"), torch.bfloat16)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_cuda_autocast_without_cuda_is_refused() -> None:
    with pytest.raises(UserError, match="TOKENPRISM_AUTOCAST"):
        check_autocast(torch.device("cuda"), torch.bfloat16)


def test_float16_overflow_is_a_clear_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    lm = _load(tiny_model_dir, tmp_path, "float32", "float16")
    enc = encode_text(lm.tokenizer, TEXTS[0], context_length=lm.context_length)
    with torch.no_grad():
        lm.model.lm_head.weight.mul_(1e5)  # logits past float16's 65504
    with pytest.raises(UserError, match="float16 overflowed"):
        score_batch(lm, [enc])
    lm.autocast = torch.bfloat16  # bfloat16 has float32's range: the same logits are finite
    assert torch.isfinite(score_batch(lm, [enc])[0].scores.token["logprob"][1:]).all()


# ---- (e) what 'auto' resolves to ----------------------------------------------------------


def test_auto_autocast_is_bfloat16_only_on_cuda_with_float32_weights() -> None:
    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # no CUDA needed: pure resolution
    assert resolve_autocast("auto", cuda, torch.float32) is torch.bfloat16
    assert resolve_autocast("auto", cuda, torch.bfloat16) is None  # bf16 weights: no need
    assert resolve_autocast("auto", cuda, torch.float16) is None
    assert resolve_autocast("auto", cpu, torch.float32) is None
    assert resolve_autocast("none", cuda, torch.float32) is None
    assert resolve_autocast("float16", cpu, torch.float32) is torch.float16
    assert resolve_autocast("bfloat16", cuda, torch.bfloat16) is torch.bfloat16
    with pytest.raises(UserError, match="unknown autocast 'fp8'"):
        resolve_autocast("fp8", cuda, torch.float32)


def test_settings_defaults_resolve_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKENPRISM_AUTOCAST", raising=False)
    monkeypatch.delenv("TOKENPRISM_DTYPE", raising=False)
    settings = Settings()
    assert (settings.dtype, settings.autocast) == ("auto", "auto")
    for device, weights, autocast in (
        ("cuda", torch.bfloat16, None),  # the default GPU path: bf16 weights, no autocast
        ("cpu", torch.float32, None),
    ):
        dtype = resolve_dtype(settings.dtype, torch.device(device))
        assert dtype is weights
        assert resolve_autocast(settings.autocast, torch.device(device), dtype) is autocast
    fp32 = Settings(dtype="float32")  # fp32 weights on a GPU: bf16 autocast
    cuda = torch.device("cuda")
    assert resolve_autocast(fp32.autocast, cuda, resolve_dtype(fp32.dtype, cuda)) is torch.bfloat16
    monkeypatch.setenv("TOKENPRISM_AUTOCAST", "float16")
    assert Settings().autocast == "float16"
    monkeypatch.setenv("TOKENPRISM_AUTOCAST", "int8")
    with pytest.raises(ValidationError):
        Settings()


# ---- sampling under autocast -----------------------------------------------------------------


def test_sampling_runs_under_the_model_autocast(
    models: dict[tuple[str, str], LoadedModel],
) -> None:
    lm = models[("float32", "bfloat16")]
    seen: list[torch.dtype] = []
    handle = lm.model.lm_head.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    try:
        samples = sample_responses(lm, "What is 2+2?", n=2, max_new_tokens=4, seed=0)
    finally:
        handle.remove()
    assert len(samples) == 2 and seen and set(seen) == {torch.bfloat16}


# ---- the optional vLLM sampler ---------------------------------------------------------------


def test_vllm_sampler_without_vllm_is_a_clear_error(
    tiny_lm: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # not importable, even where installed
    request = GroupRequest(prompt="What is 2+2?", verifier="number:4", n=2, sampler="vllm")
    with Store(tmp_path / "g.duckdb") as store, pytest.raises(UserError, match=NO_VLLM):
        run_group(tiny_lm, store, request)
    with pytest.raises(UserError, match=NO_VLLM):
        sample_responses(tiny_lm, "What is 2+2?", n=2, sampler="vllm")
    with pytest.raises(UserError, match="unknown sampler 'sglang'"):
        sample_responses(tiny_lm, "What is 2+2?", sampler="sglang")


def test_api_and_cli_refuse_vllm_when_missing(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tokenprism.backend.api.app import API, create_app
    from tokenprism.backend.cli.main import app

    monkeypatch.setitem(sys.modules, "vllm", None)
    body = {"prompt": "What is 2+2?", "verifier": "number:4", "n": 2}
    assert GroupBody.model_validate(body).sampler == "hf"
    with pytest.raises(ValidationError):
        GroupBody.model_validate({**body, "sampler": "sglang"})
    settings = Settings(home=tmp_path / "home", default_model=str(tiny_model_dir), device="cpu")
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        resp = client.post(f"{API}/groups", json={**body, "sampler": "vllm"})
        assert resp.status_code == 400, resp.text
        assert NO_VLLM in resp.json()["error"]["message"]
        jobs = client.post(f"{API}/sql", json={"query": "SELECT count(*) FROM jobs"})
        assert jobs.json()["rows"][0][0] == 0
    monkeypatch.setenv("TOKENPRISM_HOME", str(tmp_path / "cli-home"))
    from tokenprism.backend.settings import get_settings

    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(
            app, ["group", "-p", "What is 2+2?", "--verifier", "number:4", "--sampler", "vllm"]
        )
    finally:
        get_settings.cache_clear()
    assert isinstance(result.exception, UserError) and NO_VLLM in str(result.exception)


class _FakeVllm:
    """Stands in for the ``vllm`` package with the public API the sampler uses."""

    def __init__(self, responses: list[list[int]]) -> None:
        self.responses = responses
        self.engines: list[dict[str, Any]] = []
        self.calls: list[tuple[Any, dict[str, Any], dict[str, Any]]] = []
        fake = self

        class SamplingParams:
            def __init__(self, **kwargs: Any) -> None:
                self.kwargs = kwargs

        class LLM:
            def __init__(self, **kwargs: Any) -> None:
                fake.engines.append(kwargs)

            def generate(self, prompts: Any, params: Any, **kwargs: Any) -> list[Any]:
                fake.calls.append((prompts, params.kwargs, kwargs))
                n = params.kwargs["n"]
                outputs = [
                    types.SimpleNamespace(text="(not used)", token_ids=tuple(fake.responses[i]))
                    for i in range(n)
                ]
                return [types.SimpleNamespace(outputs=outputs)]

        self.module = types.ModuleType("vllm")
        self.module.LLM = LLM  # type: ignore[attr-defined]
        self.module.SamplingParams = SamplingParams  # type: ignore[attr-defined]


def test_vllm_samples_go_through_the_same_scoring(
    tiny_lm: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tok = tiny_lm.tokenizer
    texts = ["The answer is 42.", "It is Paris.", "Seven pens cost 21 dollars."]
    # vLLM returns ids up to the end-of-turn token; anything after it must be ignored
    responses = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
    responses[1] += tok("junk", add_special_tokens=False)["input_ids"]
    fake = _FakeVllm(responses)
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    monkeypatch.setattr(vllm_sampler, "_ENGINES", {})
    request = GroupRequest(
        prompt="What is 6*7?", verifier="number:42", n=3, temperature=0.7, top_p=0.9,
        max_new_tokens=12, seed=5, sampler="vllm",
    )  # fmt: skip
    with Store(tmp_path / "v.duckdb") as store:
        group = get_group(store, run_group(tiny_lm, store, request))
        run_group(tiny_lm, store, request)  # the engine is built once per model
        run = store.get_run(group["responses"][0]["run_id"])
    assert len(fake.engines) == 1
    assert fake.engines[0]["model"] == str(tiny_lm.path)
    assert fake.engines[0]["dtype"] == "float32" and fake.engines[0]["seed"] == 0
    prompts, params, options = fake.calls[0]
    assert prompts == [{"prompt_token_ids": prompt_ids(tiny_lm, request.prompt)[0]}]
    assert params == {"n": 3, "temperature": 0.7, "top_p": 0.9, "max_tokens": 12, "seed": 5}
    assert options == {"use_tqdm": False}
    assert [r["text"] for r in group["responses"]] == texts
    assert [r["reward"] for r in group["responses"]] == [1.0, 0.0, 0.0]
    assert group["params"]["sampler"] == "vllm"
    assert run["provenance"]["group"]["sampler"] == "vllm"
    # downstream is the HF teacher-forced pass: same values as scoring the text directly
    enc = encode_pair(tok, request.prompt, texts[0], context_length=tiny_lm.context_length)
    direct = score_batch(tiny_lm, [enc])[0].scores
    stored = torch.tensor([t["logprob"] for t in run["tokens"]][1:], dtype=torch.float32)
    torch.testing.assert_close(stored, direct.token["logprob"][1:], atol=1e-6, rtol=0)
    assert "erv" in run["sequence"] and run["layers"]  # hidden-state metrics from the HF pass
    tokens = group["responses"][0]["tokens"]
    assert any(t["thr"] is not None for t in tokens)  # THR from the HF pass's hidden states


@pytest.mark.slow
def test_default_model_in_bfloat16_stays_within_the_bound(
    default_lm: LoadedModel, tmp_path: Path
) -> None:
    from tests.conftest import SHARED_MODEL_CACHE

    bf16 = load_model(
        "default",
        Settings(home=tmp_path, model_cache=SHARED_MODEL_CACHE, device="cpu", dtype="bfloat16"),
    )
    enc = encode_pair(
        default_lm.tokenizer, "What is the capital of France?", "The capital of France is Paris.",
        context_length=default_lm.context_length,
    )  # fmt: skip
    a, b = score_batch(default_lm, [enc])[0].scores, score_batch(bf16, [enc])[0].scores
    dz = (_logits(bf16, enc) - _logits(default_lm, enc)).abs().amax(-1)
    d_lp = (a.token["logprob"][1:] - b.token["logprob"][1:]).abs().double()
    assert b.token["logprob"].dtype == torch.float32
    assert (d_lp <= 2 * dz + 1e-4).all()
    assert b.sequence["mean_entropy"] == pytest.approx(a.sequence["mean_entropy"], abs=0.05)
