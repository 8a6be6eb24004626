"""Audits score each conversation in one pass and store its context once (tiny model)."""

from __future__ import annotations

import math

import numpy as np

from tests.integration.test_one_pass_tiny import CHAT
from tokenprism.backend.audit.conversation import OnePassCounts
from tokenprism.backend.audit.ingest import WorkItem
from tokenprism.backend.audit.upload import score_items
from tokenprism.backend.store import Store, schema


def _items() -> list[WorkItem]:
    other = [
        {"role": "user", "content": "Hello there!"},
        {"role": "assistant", "content": "How can I help you today?"},
        {"role": "user", "content": "The quick brown fox?"},
        {"role": "assistant", "content": "It jumps over the lazy dog."},
    ]
    items, index = [], 0
    for conv, chat in ((1, CHAT), (2, other)):
        turns = [i for i, m in enumerate(chat) if m["role"] == "assistant"]
        for t, end in enumerate(turns):
            items.append(WorkItem(index, index + 1, conv, t, messages=chat[: end + 1]))
            index += 1
    items.append(WorkItem(index, index + 1, 3, 0, text="A plain text to score as it is."))
    return items


def test_one_pass_audit_equals_per_turn_audit(tiny_lm, tmp_path) -> None:  # type: ignore[no-untyped-def]
    items = _items()
    with Store(tmp_path / "a.duckdb") as one, Store(tmp_path / "b.duckdb") as per:
        counts = OnePassCounts()
        ids_one = score_items(
            tiny_lm, one, items, source="t", upload_id="u", job_id="j", counts=counts
        )
        ids_per = score_items(
            tiny_lm, per, items, source="t", upload_id="u", job_id="j", one_pass=False
        )
        assert counts.one_pass_turns == 5 and counts.fallback_turns == 0
        assert counts.conversations == 2
        assert len(ids_one) == len(ids_per) == len(items)
        # every turn run is listed, the context runs are not
        assert one.count_runs(upload_id="u") == len(items)
        by_item_one = {r["item_index"]: r for r in one.list_runs(upload_id="u", limit=50)}
        by_item_per = {r["item_index"]: r for r in per.list_runs(upload_id="u", limit=50)}
        rendered = sum(
            max(
                r["n_tokens"]
                for r in by_item_per.values()
                if items[r["item_index"]].conversation == c
            )
            for c in (1, 2, 3)
        )
        assert one.count("tokens") == rendered  # each token row once
        assert per.count("tokens") > rendered
        for index in by_item_one:
            a = one.get_run(by_item_one[index]["run_id"])
            b = per.get_run(by_item_per[index]["run_id"])
            assert a["text"] == b["text"]
            assert len(a["tokens"]) == len(b["tokens"])
            for ta, tb in zip(a["tokens"], b["tokens"], strict=True):
                assert ta["token_id"] == tb["token_id"] and ta["is_prompt"] == tb["is_prompt"]
                assert set(ta) == set(tb)
                for key, va in ta.items():
                    vb = tb[key]
                    if key == "top_k":
                        assert [x["token_id"] for x in va] == [x["token_id"] for x in vb]
                        np.testing.assert_allclose(
                            [x["prob"] for x in va], [x["prob"] for x in vb], rtol=1e-4, atol=1e-4
                        )
                    elif isinstance(va, float) or isinstance(vb, float):
                        assert va is not None and vb is not None, (key, ta["position"])
                        assert math.isclose(va, vb, rel_tol=1e-4, abs_tol=1e-4), key
                    else:
                        assert va == vb, (key, ta["position"])
            for name, value in a["sequence"].items():
                other = b["sequence"][name]
                if value is None or other is None:
                    assert value == other
                else:
                    assert math.isclose(value, other, rel_tol=1e-4, abs_tol=1e-4), name
            assert [x["effective_rank"] for x in a["layers"]] == [
                x["effective_rank"] for x in b["layers"]
            ] or np.allclose(
                [x["effective_rank"] for x in a["layers"]],
                [x["effective_rank"] for x in b["layers"]],
                rtol=1e-4,
            )
        with one.engine.connect() as conn:
            kinds = [
                r[0]
                for r in conn.execute(schema.runs.select().with_only_columns(schema.runs.c.kind))
            ]
        assert kinds.count("context") == 2
