"""Stored turns read back for adding metrics (backend.enrich) on the tiny random Llama: the
rebuilt encodings equal a fresh encoding of the same turns, and the probe read from one pass
per conversation equals a pass over each turn alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tokenprism.backend.audit.ingest import parse_transcript
from tokenprism.backend.audit.items import encode_item
from tokenprism.backend.audit.upload import score_items
from tokenprism.backend.enrich.add import apply_families, metric_tables, probe_values, upload_turns
from tokenprism.backend.enrich.stored import load_turns, turn_metas
from tokenprism.backend.probes.storage import StoredProbe
from tokenprism.backend.scoring.extras import ExtraPlan, ExtraRequest
from tokenprism.backend.settings import Settings
from tokenprism.backend.store import Store

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def stored(tiny_lm: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The sample export (long histories cut to the tiny context, multi-turn chats) scored in
    one pass per conversation, with its items and the turns read back."""
    items = parse_transcript((DATA / "sharegpt_array.json").read_text(encoding="utf-8"), "json")
    with Store(tmp_path_factory.mktemp("enrich") / "e.duckdb") as store:
        score_items(tiny_lm, store, items, source="export.json", upload_id="u1")
        ids = upload_turns(store, "u1")
        turns = load_turns(store, turn_metas(store, ids), k=10)
        yield items, turns


def test_stored_turns_read_back_as_their_fresh_encoding(tiny_lm: Any, stored: Any) -> None:
    items, turns = stored
    by_index = {it.index: it for it in items}
    assert len(turns) == len(items)
    shared = [t for t in turns if t.meta.context_run_id]
    assert len(shared) >= 4  # the one-pass path stored context runs: their tokens are read too
    assert any(by_index[t.meta.item_index].turn_index > 0 for t in shared)
    for t in turns:
        fresh = encode_item(tiny_lm, by_index[t.meta.item_index])
        enc = t.encoded
        assert enc.input_ids == fresh.input_ids
        assert enc.offsets == [tuple(o) for o in fresh.offsets]
        assert enc.is_prompt == fresh.is_prompt
        assert enc.token_texts == fresh.token_texts
        assert enc.text == fresh.text and enc.response == fresh.response
        assert enc.response_span[0] == fresh.response_span[0]
        assert (enc.prompt, enc.system_prompt) == (fresh.prompt, fresh.system_prompt)
        mask = t.scores.response_mask
        assert mask.tolist() == [not p and i > 0 for i, p in enumerate(fresh.is_prompt)]
        assert bool(torch.isfinite(t.scores.token["logprob"][mask]).all())
        assert bool((t.scores.top_ids[mask][:, 0] >= 0).all())


def test_probe_from_one_pass_per_conversation_equals_a_pass_per_turn(
    tiny_lm: Any, stored: Any
) -> None:
    _, every = stored
    # two one-pass conversations (all their turns) and two lone turns keep the check small
    contexts = list(dict.fromkeys(t.meta.context_run_id for t in every if t.meta.context_run_id))
    turns = [t for t in every if t.meta.context_run_id in contexts[:2]]
    turns += [t for t in every if t.meta.context_run_id is None][:2]
    assert len(turns) >= 6
    hidden = int(tiny_lm.model.config.hidden_size)
    gen = torch.Generator().manual_seed(0)
    probe = StoredProbe(
        name="random",
        path=Path("random"),
        config={"layer": 0},
        weight=torch.randn(hidden, generator=gen),
        bias=torch.tensor(0.1),
        report=None,
    )
    got = probe_values(tiny_lm, probe, turns)
    expected_max = {}
    for t in turns:
        ids = torch.tensor([t.encoded.input_ids])
        with torch.inference_mode():
            states = tiny_lm.model(input_ids=ids, output_hidden_states=True).hidden_states
        h = states[1][0].double()  # layer 0's output, as StoredProbe reads it
        expected = torch.sigmoid(h @ probe.weight.double() + 0.1)
        assert got[t.meta.run_id].shape == expected.shape
        assert torch.allclose(got[t.meta.run_id].double(), expected, atol=1e-5)
        counted = expected[t.scores.response_mask]
        expected_max[t.meta.run_id] = float(counted.max()) if len(counted) else None
    # the family applied through the plan: response tokens only, and its sequence values
    plan = ExtraPlan(ExtraRequest(metrics=("probe",)), Settings(device="cpu"), probe=probe)
    chosen = turns[:6]
    results = apply_families(tiny_lm, plan, chosen, {t.meta.run_id: ("probe",) for t in chosen})
    rows = metric_tables(results)
    assert set(rows["token_metrics"].column("metric").to_pylist()) == {"probe"}
    for t, _, _, _ in results:
        values = t.scores.token["probe"]
        assert bool(torch.isnan(values[~t.scores.response_mask]).all())
        want = expected_max[t.meta.run_id]
        assert want is not None and abs(t.scores.sequence["probe_max"] - want) < 1e-5
    assert rows["token_metrics"].num_rows == sum(int(t.scores.response_mask.sum()) for t in chosen)
