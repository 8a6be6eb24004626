"""Logit lens, attribution and direct logit attribution on the tiny local model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokenprism.backend.lens.compute import (
    Target,
    attribute,
    baseline_embeddings,
    block_contributions,
    residual_streams,
    run_lens,
    score_fn,
    top_alternative,
)
from tokenprism.backend.models.adapter import adapter_for
from tokenprism.backend.scoring.encoding import encode_pair


def _ids(lm) -> torch.Tensor:  # type: ignore[no-untyped-def]
    enc = encode_pair(
        lm.tokenizer, "What is the capital of Australia?", "It is Canberra.", context_length=256
    )
    return torch.tensor(enc.input_ids)


def test_last_layer_reproduces_model_logits(tiny_lm) -> None:  # type: ignore[no-untyped-def]
    ids = _ids(tiny_lm)
    adapter = adapter_for(tiny_lm.model)
    resid, logits = residual_streams(tiny_lm, ids)
    assert resid.shape[0] == adapter.n_layers + 1
    with torch.no_grad():
        readout = adapter.head(adapter.final_norm(resid[-1])).float()
    assert float((readout - logits).abs().max()) < 1e-4
    result = run_lens(tiny_lm, ids)
    logp = torch.log_softmax(logits[:-1], -1)
    want = logp.gather(-1, ids[1:, None])[:, 0].exp()
    assert float((result.prob[-1] - want).abs().max()) < 1e-4
    want_rank = 1 + (logits[:-1] > logits[:-1].gather(-1, ids[1:, None])).sum(-1)
    assert torch.equal(result.rank[-1], want_rank)
    assert torch.equal(result.top_ids[-1, :, 0], logits[:-1].argmax(-1))
    assert float(result.kl_final[-1].abs().max()) < 1e-5


def test_ig_completeness_on_tiny_model(tiny_lm) -> None:  # type: ignore[no-untyped-def]
    ids = _ids(tiny_lm)
    pos = len(ids) - 3
    few = attribute(tiny_lm, ids, Target(pos, pos), method="ig", steps=4)
    many = attribute(tiny_lm, ids, Target(pos, pos), method="ig", steps=64, batch_size=16)
    assert many.completeness_error < 0.05 < few.completeness_error
    assert many.values.shape == (pos,)
    # the end points are the real scores: f(x) is the run's log-probability of the token
    f = score_fn(tiny_lm, ids, Target(pos, pos))
    emb = tiny_lm.model.get_input_embeddings()(ids[:pos])
    with torch.no_grad():
        assert many.f_x == pytest.approx(float(f(emb[None])[0]), abs=1e-5)
        base = baseline_embeddings(tiny_lm, emb, "pad")
        assert many.f_baseline == pytest.approx(float(f(base[None])[0]), abs=1e-5)


def test_contrastive_and_span(tiny_lm) -> None:  # type: ignore[no-untyped-def]
    ids = _ids(tiny_lm)
    pos = len(ids) - 3
    foil = top_alternative(tiny_lm, ids, pos)
    assert foil != int(ids[pos])
    res = attribute(tiny_lm, ids, Target(pos, pos, foil), method="contrastive", steps=48)
    with torch.no_grad():
        logits = tiny_lm.model(input_ids=ids[None, :pos]).logits[0, -1]
    assert res.f_x == pytest.approx(float(logits[ids[pos]] - logits[foil]), abs=1e-4)
    assert res.completeness_error < 0.05
    span = attribute(tiny_lm, ids, Target(pos - 2, pos), method="ig", steps=48, baseline="pad")
    assert span.values.shape == (pos,) and span.completeness_error < 0.05


def test_grad_x_input_on_model_matches_autograd(tiny_lm) -> None:  # type: ignore[no-untyped-def]
    ids = _ids(tiny_lm)
    pos = len(ids) - 2
    got = attribute(tiny_lm, ids, Target(pos, pos), method="grad_x_input")
    emb = tiny_lm.model.get_input_embeddings()(ids[None, :pos]).detach().requires_grad_(True)
    logp = torch.log_softmax(tiny_lm.model(inputs_embeds=emb).logits[0, -1], -1)
    logp[ids[pos]].backward()
    want = (emb.grad[0] * emb[0]).sum(-1).detach()
    np.testing.assert_allclose(got.values.numpy(), want.numpy(), rtol=1e-4, atol=1e-6)


def test_block_contributions_sum_to_logit(tiny_lm) -> None:  # type: ignore[no-untyped-def]
    ids = _ids(tiny_lm)
    pos = len(ids) - 2
    rows = block_contributions(tiny_lm, ids, pos)
    total = next(r["value"] for r in rows if r["component"] == "logit")
    parts = sum(r["value"] for r in rows if r["component"] != "logit")
    assert parts == pytest.approx(total, abs=1e-4)
    blocks = {(r["block"], r["layer"]) for r in rows}
    assert ("attn", 1) in blocks and ("mlp", 0) in blocks and ("embed", None) in blocks


def test_ig_equals_captum(tiny_lm) -> None:  # type: ignore[no-untyped-def]
    captum_attr = pytest.importorskip("captum.attr", reason="captum is not installed")
    ids = _ids(tiny_lm)
    pos = len(ids) - 3
    ours = attribute(
        tiny_lm, ids, Target(pos, pos), method="ig", steps=20, batch_size=20, rule="even"
    )
    f = score_fn(tiny_lm, ids, Target(pos, pos))
    x = tiny_lm.model.get_input_embeddings()(ids[None, :pos]).detach()
    ig = captum_attr.IntegratedGradients(f)
    theirs = ig.attribute(
        x,
        baselines=baseline_embeddings(tiny_lm, x[0], "pad")[None],
        n_steps=20,
        method="riemann_trapezoid",
    )[0].sum(-1)
    # Captum's trapezoid step sizes are 1/n (ends halved), summing to (n-1)/n instead of 1;
    # the points are the same, so its attributions are ours times (n-1)/n
    want = theirs.detach().numpy() * 20 / 19
    np.testing.assert_allclose(ours.values.numpy(), want, rtol=1e-3, atol=1e-5)


@pytest.mark.slow
def test_ig_completeness_on_the_default_model(default_lm) -> None:  # type: ignore[no-untyped-def]
    # the demo's " Sydney": the straight path is rough on SmolLM2 (the even grid gives 0.23 at
    # 33 points and 1.66 at 129); 32 adaptive points measured 0.033
    enc = encode_pair(
        default_lm.tokenizer,
        "What is the capital of Australia?",
        "The capital of Australia is Sydney, the largest city on the east coast.",
        context_length=default_lm.context_length,
    )
    ids = torch.tensor(enc.input_ids)
    pos = next(i for i, t in enumerate(enc.token_texts) if t == " Sydney")
    # the defaults `tokenprism attribute` documents and uses: 32 adaptive points, pad baseline
    res = attribute(default_lm, ids, Target(pos, pos), method="ig")
    assert res.steps == 32 and res.completeness_error < 0.05
