"""Model variants (@int8, @bf16, @fp16, @layers=K, @adapter=PATH, @steer=V:B:L), tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tokenprism.backend.errors import UserError
from tokenprism.backend.models import variants as V
from tokenprism.backend.settings import Settings


def _logits(lm, ids: list[int]) -> torch.Tensor:  # type: ignore[no-untyped-def]
    with torch.inference_mode():
        return lm.model(input_ids=torch.tensor([ids])).logits.float()


@pytest.fixture
def tiny_settings(tmp_path: Path, tiny_model_dir: Path) -> Settings:
    return Settings(home=tmp_path / "home", device="cpu", allowed_model_dirs=[tiny_model_dir])


IDS = [5, 40, 77, 120, 9, 300, 33]


def test_split_spec() -> None:
    assert V.split_spec("default") == ("default", [])
    base, vs = V.split_spec("default@int8@steer=east:4.5:3")
    assert base == "default" and vs == [V.Variant("int8"), V.Variant("steer", "east:4.5:3")]
    assert V.join_spec(base, vs) == "default@int8@steer=east:4.5:3"
    for bad, match in [
        ("default@int9", "unknown model variant"),
        ("default@layers", "must be written"),
        ("default@int8=3", "must be written"),
        ("default@layers=0", "positive integer"),
        ("default@steer=east", "VECTOR:BETA"),
        ("@int8", "no model before"),
    ]:
        with pytest.raises(UserError, match=match):
            V.split_spec(bad)


def test_cast_and_int8(tiny_model_dir: Path, tiny_settings: Settings) -> None:
    name = str(tiny_model_dir)
    base = V.get_model(name, tiny_settings)
    ref = _logits(base, IDS)
    for suffix, dtype, tol in [("@bf16", torch.bfloat16, 0.5), ("@int8", torch.float32, 1.0)]:
        lm = V.get_model(name + suffix, tiny_settings)
        tag = suffix if suffix != "@int8" else "@int8:w8-per-channel"  # the scheme, exactly
        assert lm.name == name + suffix and lm.revision == base.revision + tag
        assert lm.dtype == dtype and lm.provenance()["variants"][0]["suffix"] == suffix
        out = _logits(lm, IDS)
        diff = (out - ref).abs().max().item()
        assert 0 < diff < tol, (suffix, diff)  # changed, but still the same model
        assert V.get_model(name + suffix, tiny_settings) is lm  # cached
    from tokenprism.backend.models.quantize import Int8WeightLinear

    up = lm.model.model.layers[0].mlp.up_proj
    assert isinstance(up, Int8WeightLinear) and up.qweight.dtype == torch.int8
    # the dequantised weight is within half a step of the float one, row by row
    w = base.model.model.layers[0].mlp.up_proj.weight.float()
    err = (up.qweight.float() * up.scale[:, None] - w).abs()
    assert err.max() > 0 and bool((err <= up.scale[:, None] / 2 + 1e-7).all())
    info = lm.provenance()["variants"][0]
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in base.model.modules())
    assert info["kept_float"] == ["lm_head"] and info["quantized_linear_layers"] == n_linear - 1
    assert isinstance(lm.model.lm_head, torch.nn.Linear)  # the head stays float
    assert lm.model.lm_head.weight.dtype == torch.float32
    assert lm.model.get_input_embeddings().weight.dtype == torch.float32
    assert torch.equal(_logits(base, IDS), ref)  # the base is untouched


def test_layers_adapter_and_steer(
    tiny_model_dir: Path, tiny_settings: Settings, tmp_path: Path
) -> None:
    from peft import LoraConfig, get_peft_model

    from tokenprism.backend.lab.steering import SteeringVector, save_vector

    name = str(tiny_model_dir)
    base = V.get_model(name, tiny_settings)
    ref = _logits(base, IDS)
    early = V.get_model(name + "@layers=1", tiny_settings)
    assert len(early.model.model.layers) == 1 and len(base.model.model.layers) == 2

    # a LoRA adapter with non-zero B so it changes the output, saved as safetensors
    import copy

    peft_model = get_peft_model(
        copy.deepcopy(base.model), LoraConfig(r=2, target_modules=["q_proj", "v_proj"])
    )
    for n, p in peft_model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)
    adir = tmp_path / "adapter"
    peft_model.save_pretrained(str(adir), safe_serialization=True)
    with_adapter = V.get_model(f"{name}@adapter={adir}", tiny_settings)
    with torch.inference_mode():
        want = peft_model(input_ids=torch.tensor([IDS])).logits.float()
    assert torch.allclose(_logits(with_adapter, IDS), want, atol=1e-4)
    assert with_adapter.provenance()["variants"][0]["adapter_sha256"]
    assert V.variant_paths(V.split_spec(f"{name}@adapter={adir}")[1]) == [adir.resolve()]

    vector = torch.randn(32)
    save_vector(SteeringVector("v1", vector, {"layer": 0}), tiny_settings)
    steered = V.get_model(f"{name}@steer=v1:3:0", tiny_settings)
    with torch.inference_mode():
        out = steered.model(input_ids=torch.tensor([IDS]), output_hidden_states=True)
        clean = base.model(input_ids=torch.tensor([IDS]), output_hidden_states=True)
    # block 0 output (hidden_states[1]; the last one is after the norm) moved by exactly 3 v
    delta = out.hidden_states[1] - clean.hidden_states[1]
    assert torch.allclose(delta, (3 * vector).expand_as(delta), atol=1e-5)
    assert torch.equal(_logits(base, IDS), ref)  # hook gone, base forward clean
    assert type(steered.model).__name__ == type(base.model).__name__
    info = steered.provenance()["variants"][0]
    assert info["vector"] == "v1" and info["beta"] == 3.0 and info["layer"] == 0
    with pytest.raises(UserError, match="no steering vector"):
        V.get_model(f"{name}@steer=nope:1", tiny_settings)


def test_variants_are_bounded_like_loaded_models(tiny_model_dir: Path, tmp_path: Path) -> None:
    """At most ``max_loaded_models`` variants are kept (least recently used dropped)."""
    settings = Settings(
        home=tmp_path / "home",
        device="cpu",
        allowed_model_dirs=[tiny_model_dir],
        max_loaded_models=2,
    )
    name = str(tiny_model_dir)
    first = V.get_model(name + "@layers=1", settings)
    assert V.get_model(name + "@layers=1", settings) is first
    V.get_model(name + "@fp16", settings)
    V.get_model(name + "@bf16", settings)  # the third: @layers=1 is the least recently used
    assert V.get_model(name + "@layers=1", settings) is not first
