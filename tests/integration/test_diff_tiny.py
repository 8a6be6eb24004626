"""Model diff on tiny models: self-diff is exactly 0, values match an independent computation,
stored rows are queryable, upload diffs resume, and different tokenizers are aligned."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tokenprism.backend.diff import service
from tokenprism.backend.models.variants import get_model
from tokenprism.backend.scoring.encoding import encode_text
from tokenprism.backend.scoring.runner import score_batch
from tokenprism.backend.store import Store
from tokenprism.backend.store.migrations import LATEST

TEXT = "The capital of France is Paris. Seven pens cost 21 dollars."


def _diff(store: Store, a, b, source):  # type: ignore[no-untyped-def]
    diff_id = service.start_diff(store, a, b, source)
    service.run_diff(store, a, b, diff_id, source)
    return service.diff_result(store, diff_id)


def _logp(lm, ids: list[int]) -> torch.Tensor:  # type: ignore[no-untyped-def]
    with torch.inference_mode():
        return torch.log_softmax(lm.model(input_ids=torch.tensor([ids])).logits[0].double(), -1)


def test_self_diff_is_exactly_zero_and_queryable(tiny_model_dir: Path, settings) -> None:  # type: ignore[no-untyped-def]
    a = get_model(str(tiny_model_dir), settings)
    with Store(settings.db_path) as store:
        assert store.schema_version == LATEST
        result = _diff(store, a, a, {"kind": "text", "text": TEXT})
        tokens = result["runs"][0]["tokens"]
        compared = [t for t in tokens if t["kl"] is not None]
        assert len(compared) == len(tokens) - 1 and tokens[0]["reason"]
        assert all(t["kl"] == 0 and t["js"] == 0 and t["top1_agree"] == 1 for t in compared)
        assert result["summary"]["kl_max"] == 0 and result["summary"]["top1_agree"] == 1
        rows = store.query_read_only(
            "SELECT count(*) AS n FROM diff_token_metrics WHERE metric = 'kl'"
        )
        assert rows[1][0][0] == len(compared)
        # the run's own metrics are untouched by the diff (separate table)
        own = store.query_read_only("SELECT DISTINCT metric FROM token_metrics")
        assert "kl" not in {r[0] for r in own[1]}


def test_variant_diff_matches_independent_computation(tiny_model_dir: Path, settings) -> None:  # type: ignore[no-untyped-def]
    a = get_model(str(tiny_model_dir), settings)
    b = get_model(str(tiny_model_dir) + "@bf16", settings)
    with Store(settings.db_path) as store:
        result = _diff(store, a, b, {"kind": "text", "text": TEXT})
    tokens = result["runs"][0]["tokens"]
    ids = encode_text(a.tokenizer, TEXT, context_length=a.context_length).input_ids
    la, lb = _logp(a, ids), _logp(b, ids)
    for t in tokens[1:]:
        i = t["position"]
        pa, pb = la[i - 1].exp().numpy(), lb[i - 1].exp().numpy()
        kl = float(np.sum(pa * (np.log(pa) - np.log(pb))))
        assert t["kl"] == pytest.approx(kl, abs=1e-4)
        assert t["delta_logprob"] == pytest.approx(
            float(lb[i - 1, ids[i]] - la[i - 1, ids[i]]), abs=1e-3
        )
        assert t["prob_a"] == pytest.approx(math.exp(float(la[i - 1, ids[i]])), rel=1e-4)
    s = result["summary"]
    assert s["kl_mean"] > 0 and 0 <= s["top1_agree"] <= 1
    assert s["most_moved"][0]["kl"] == s["kl_max"]


def test_upload_diff_resumes(tiny_model_dir: Path, settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    a = get_model(str(tiny_model_dir), settings)
    b = get_model(str(tiny_model_dir) + "@layers=1", settings)
    texts = ["Hello there! How can I help?", "The quick brown fox.", "The answer is 42."]
    encoded = [encode_text(a.tokenizer, t, context_length=a.context_length) for t in texts]
    monkeypatch.setattr(service, "BATCH_ROWS", 1)
    with Store(settings.db_path) as store:
        store.save_runs(a, score_batch(a, encoded), upload_id="u1", item_indices=[0, 1, 2])
        source = {"kind": "upload", "upload_id": "u1"}
        diff_id = service.start_diff(store, a, b, source)
        calls = []

        def stop() -> bool:
            calls.append(1)
            return len(calls) > 1  # stop before the second batch

        with pytest.raises(service.Cancelled):
            service.run_diff(store, a, b, diff_id, source, should_stop=stop)
        assert len(service.diff_result(store, diff_id)["runs"]) == 1
        seen = []
        service.run_diff(store, a, b, diff_id, source, progress=lambda d, t: seen.append((d, t)))
        result = service.diff_result(store, diff_id)
        assert seen[-1] == (3, 3) and len(result["runs"]) == 3
        n = store.query_read_only(f"SELECT count(*) FROM diff_runs WHERE diff_id = '{diff_id}'")[1][
            0
        ][0]
        assert n == 3
        assert result["summary"]["n_compared"] == sum(len(e.input_ids) - 1 for e in encoded)


def test_upload_diff_reads_one_pass_turns_whole(tiny_model_dir: Path, settings) -> None:  # type: ignore[no-untyped-def]
    """A turn audited in its conversation's one pass stores only its response tokens (the
    context once, in a context run): its diff still covers every token, with the same values
    as the diff of the same upload audited turn by turn."""
    from tests.integration.test_one_pass_audit import _items
    from tokenprism.backend.audit.upload import score_items

    a = get_model(str(tiny_model_dir), settings)
    b = get_model(str(tiny_model_dir) + "@layers=1", settings)
    items = _items()
    results = []
    for one_pass in (True, False):
        with Store(settings.home / f"one_pass_{one_pass}.duckdb") as store:
            score_items(a, store, items, source="t", upload_id="u", job_id="j", one_pass=one_pass)
            results.append(_diff(store, a, b, {"kind": "upload", "upload_id": "u"}))
    one, per = results
    assert len(one["runs"]) == len(per["runs"]) == len(items)  # context runs are not diffed
    for run_one, run_per in zip(one["runs"], per["runs"], strict=True):
        assert run_one["n_tokens"] == run_per["n_tokens"] == len(run_one["tokens"])
        for x, y in zip(run_one["tokens"], run_per["tokens"], strict=True):
            assert (x["position"], x["text"], x["is_prompt"]) == (
                y["position"],
                y["text"],
                y["is_prompt"],
            )
            if y["kl"] is None:
                assert x["kl"] is None
            else:
                assert x["kl"] == pytest.approx(y["kl"], abs=1e-5)
    assert one["summary"]["n_compared"] == per["summary"]["n_compared"]
    assert one["summary"]["kl_mean"] == pytest.approx(per["summary"]["kl_mean"], rel=1e-5)


def test_different_tokenizers_align_by_characters(  # type: ignore[no-untyped-def]
    tiny_model_dir: Path, settings, tmp_path: Path
) -> None:
    from tests.tiny import build_tiny_model

    other = build_tiny_model(tmp_path / "other", vocab_size=300, seed=1)
    a = get_model(str(tiny_model_dir), settings)
    b = get_model(str(other), settings)
    with Store(settings.db_path) as store:
        result = _diff(store, a, b, {"kind": "text", "text": TEXT})
    assert result["runs"][0]["same_tokens"] is False
    tokens = result["runs"][0]["tokens"]
    enc_a = encode_text(a.tokenizer, TEXT, context_length=a.context_length)
    enc = b.tokenizer(enc_a.text, add_special_tokens=False, return_offsets_mapping=True)
    ids_b, offs_b = enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]
    la, lb = _logp(a, enc_a.input_ids), _logp(b, ids_b)
    with_kl = [t for t in tokens if t["kl"] is not None]
    delta_only = [t for t in tokens if t["kl"] is None and t["delta_logprob"] is not None]
    assert with_kl and delta_only  # the segmentations agree on some tokens and not others
    assert all(t["reason"] for t in tokens if t["kl"] is None)
    for t in delta_only + with_kl:
        i = t["position"]
        start, end = enc_a.offsets[i]
        # independent: B's tokens inside the segment ending at A's token end, A's tokens likewise
        seg_start = (
            next(s for s, _ in enc_a.offsets[: i + 1][::-1] if any(o[0] == s for o in offs_b))
            if t["reason"] is None
            else start
        )
        covered = [j for j, (s, e) in enumerate(offs_b) if s >= seg_start and e <= end and e > s]
        a_tok = [
            k for k, (s, e) in enumerate(enc_a.offsets) if s >= seg_start and e <= end and e > s
        ]
        want = sum(float(lb[j - 1, ids_b[j]]) for j in covered) - sum(
            float(la[k - 1, enc_a.input_ids[k]]) for k in a_tok
        )
        assert t["delta_logprob"] == pytest.approx(want, abs=1e-4), t
    for t in with_kl:
        assert t["kl"] >= 0 and 0 <= t["js"] <= math.log(2) + 1e-6
