"""Logit lens (analysis.lens) against a naive per-layer, per-position numpy loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokenprism.analysis.lens import decided_layer, lens


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * 1.5


def _naive(resid: np.ndarray, targets: np.ndarray, w: np.ndarray, b: np.ndarray, k: int) -> dict:
    n_layers, n_pos, _ = resid.shape
    out = {n: np.zeros((n_layers, n_pos)) for n in ("rank", "prob", "kl")}
    out["top"] = np.zeros((n_layers, n_pos, k), dtype=np.int64)
    out["top_p"] = np.zeros((n_layers, n_pos, k))
    for t in range(n_pos):
        dists = []
        for layer in range(n_layers):
            h = resid[layer, t] / np.sqrt((resid[layer, t] ** 2).mean() + 1e-6) * 1.5
            logits = w @ h + b
            p = np.exp(logits - logits.max())
            p /= p.sum()
            dists.append(p)
            out["rank"][layer, t] = 1 + sum(1 for v in logits if v > logits[targets[t]])
            out["prob"][layer, t] = p[targets[t]]
            order = sorted(range(len(p)), key=lambda i: -p[i])[:k]
            out["top"][layer, t] = order
            out["top_p"][layer, t] = p[order]
        for layer in range(n_layers):
            final = dists[-1]
            out["kl"][layer, t] = float(np.sum(final * (np.log(final) - np.log(dists[layer]))))
    return out


@pytest.mark.parametrize(("pos_chunk", "vocab_chunk"), [(2, 7), (100, 1000), (1, 1)])
def test_lens_matches_naive_loop(pos_chunk: int, vocab_chunk: int) -> None:
    gen = torch.Generator().manual_seed(3)
    resid = torch.randn(4, 9, 6, generator=gen, dtype=torch.float64) * 2
    w = torch.randn(23, 6, generator=gen, dtype=torch.float64)
    b = torch.randn(23, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, 23, (9,), generator=gen)
    got = lens(
        resid, targets, _rms, w, b, top_k=3, position_chunk=pos_chunk, vocab_chunk=vocab_chunk
    )
    want = _naive(resid.numpy(), targets.numpy(), w.numpy(), b.numpy(), 3)
    np.testing.assert_array_equal(got.rank.numpy(), want["rank"])
    np.testing.assert_allclose(got.prob.numpy(), want["prob"], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(got.top_ids.numpy(), want["top"])
    np.testing.assert_allclose(got.top_probs.numpy(), want["top_p"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.kl_final.numpy(), want["kl"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got.layer_kl.numpy(), want["kl"].mean(1), rtol=1e-4, atol=1e-5)
    assert float(got.kl_final[-1].abs().max()) < 1e-5


def test_decided_layer_hand_built() -> None:
    # identity head over 3 tokens: each layer's top-1 is the argmax of its stream
    streams = {
        # target 0: top-1 at layers 1, 3, 4 -> stays top-1 from layer 3
        0: [[0, 1, 0], [2, 0, 0], [0, 0, 3], [3, 1, 0], [5, 0, 0]],
        # target 1: top-1 everywhere -> decided at the embedding layer
        1: [[0, 2, 0], [0, 3, 1], [1, 4, 0], [0, 5, 0], [0, 6, 0]],
        # target 2: never top-1 at the last layer -> -1
        2: [[0, 0, 9], [0, 0, 9], [0, 0, 9], [0, 0, 9], [9, 0, 0]],
    }
    resid = torch.tensor([[streams[t][layer] for t in range(3)] for layer in range(5)])
    result = lens(resid.double(), torch.tensor([0, 1, 2]), lambda x: x, torch.eye(3).double())
    assert result.decided_layer.tolist() == [3, 0, -1]


def test_decided_layer_ties_count_for_the_target() -> None:
    rank = torch.tensor([[1, 2], [1, 1], [1, 1]])
    assert decided_layer(rank).tolist() == [0, 1]


def test_empty_positions() -> None:
    out = lens(torch.zeros(3, 0, 4), torch.zeros(0, dtype=torch.long), lambda x: x, torch.eye(4))
    assert out.rank.shape == (3, 0) and out.top_ids.shape == (3, 0, 4)


def test_attribution_markup_escapes_token_text() -> None:
    # token text is model output: a <script> or an onerror attribute must arrive inert
    from html.parser import HTMLParser

    from tokenprism.app.components.lens import _label, attribution_html

    evil = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'
    result = {
        "attributions": [
            {"position": 0, "text": evil, "value": 1.5},
            {"position": 1, "text": " ok", "value": -0.5},
        ],
        "target_text": evil,
    }
    markup = attribution_html(result)
    tags: list[str] = []

    class Tags(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            tags.append(tag)
            assert not any(name.startswith("on") for name, _ in attrs), attrs

    Tags().feed(markup)
    assert "script" not in tags and "img" not in tags
    assert "&lt;script&gt;" in markup
    assert "<script" not in _label(3, evil) and "<img" not in _label(3, evil)
