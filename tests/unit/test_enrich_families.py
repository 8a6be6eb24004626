"""What adding a family may write, the ranking hint, and conversation-whole batches."""

from __future__ import annotations

from tokenprism.analysis.registry import get_metric
from tokenprism.backend.audit.upload import metric_coverage
from tokenprism.backend.enrich.add import conversation_batches
from tokenprism.backend.enrich.stored import TurnMeta
from tokenprism.backend.scoring.extras import EXTRA_METRICS, FAMILY_METRICS, family_of


def test_every_family_name_is_registered_at_its_level() -> None:
    assert set(FAMILY_METRICS) == set(EXTRA_METRICS)
    for names in FAMILY_METRICS.values():
        assert all(get_metric(n).level == "token" for n in names.token)
        assert all(get_metric(n).level == "sequence" for n in names.sequence)
        assert set(names.claim) <= set(names.token)  # claim values aggregate token values


def test_family_of_names_the_family_or_none() -> None:
    assert family_of("probe_max") == "probe" and family_of("ccp") == "ccp"
    assert family_of("sentence_sar") == "selfcheck" and family_of("token_sar") == "sar"
    assert family_of("mean_entropy") is None and family_of("entropy") is None


def _turns(*risks: float | None) -> list[dict[str, object]]:
    return [{"risk": r} for r in risks]


def test_the_hint_appears_only_when_a_family_metric_is_missing() -> None:
    missing = metric_coverage("probe_max", _turns(None, None), "u1")
    assert missing["n_with_metric"] == 0 and missing["metric_family"] == "probe"
    assert "2 of 2 turns have no probe_max" in missing["metric_hint"]
    assert "/api/v1/uploads/u1/metrics" in missing["metric_hint"]
    partial = metric_coverage("ccp_mean_log", _turns(-0.2, float("nan")), "u1")
    assert partial["n_with_metric"] == 1 and "1 of 2" in partial["metric_hint"]
    assert metric_coverage("ccp_mean_log", _turns(-0.2), "u1")["metric_hint"] is None
    # a base metric is always there: no family, no hint
    base = metric_coverage("mean_entropy", _turns(None), "u1")
    assert base["metric_family"] is None and base["metric_hint"] is None


def test_batches_keep_each_conversation_whole() -> None:
    metas = [
        TurnMeta("a1", 30, "ctx-a", 0),
        TurnMeta("a2", 50, "ctx-a", 1),
        TurnMeta("b", 20, None, 2),
        TurnMeta("c1", 10, "ctx-c", 3),
        TurnMeta("c2", 40, "ctx-c", 4),
    ]
    batches = conversation_batches(metas, batch_tokens=100)
    assert sorted(m.run_id for b in batches for m in b) == ["a1", "a2", "b", "c1", "c2"]
    for batch in batches:
        contexts = {m.context_run_id for m in batch if m.context_run_id}
        for ctx in contexts:  # every turn of a conversation in the batch that holds one
            assert {m.run_id for m in metas if m.context_run_id == ctx} <= {m.run_id for m in batch}
        widest = max(max(m.n_tokens for m in metas if (m.context_run_id or m.run_id) == key)
                     for key in {m.context_run_id or m.run_id for m in batch})  # fmt: skip
        units = len({m.context_run_id or m.run_id for m in batch})
        assert units == 1 or widest * units <= 100
    assert len(conversation_batches(metas, batch_tokens=1)) == 3  # one per conversation
