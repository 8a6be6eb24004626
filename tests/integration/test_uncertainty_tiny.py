"""CCP, SAR, probes and claims on the tiny random Llama, checked against independent computations.

The expected values here are recomputed from what a run stores (its top-k alternatives, token
offsets, log-probs) or from a plain forward pass, not through the code under test.
"""

from __future__ import annotations

import json
import math
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import torch
from safetensors.torch import load_file

from tokenprism.analysis.ccp import CONTRA, ENGLISH_STOPWORDS, ENTAIL, ccp_params
from tokenprism.analysis.probe import LabelledSpan, ProbeTrainParams
from tokenprism.backend.audit.ingest import TranscriptError
from tokenprism.backend.models.loader import LoadedModel
from tokenprism.backend.probes.apply import apply_probe_to_run
from tokenprism.backend.probes.storage import list_probes, load_probe, probe_for, save_probe
from tokenprism.backend.probes.training import (
    encode_labelled,
    labels_of,
    parse_labelled,
    train_and_evaluate,
)
from tokenprism.backend.scoring.encoding import EncodedText, encode_pair, encode_text
from tokenprism.backend.scoring.extras import ExtraPlan, ExtraRequest
from tokenprism.backend.scoring.runner import score_one
from tokenprism.backend.settings import Settings
from tokenprism.backend.store import Store
from tokenprism.backend.store.migrations import LATEST, migrate

PROMPT = "What is the capital of Australia?"
RESPONSE = "Canberra is the capital. Sydney is big.\nThe answer is 42!"
SENTENCES = ["Canberra is the capital.", "Sydney is big.", "The answer is 42!"]
_STRIP = string.punctuation + " \n\t\r" + "▁ĠĊ"  # the tokenprism preset's
_STRIP_LMP = string.punctuation + " \n"  # LM-Polygraph's


class ContraJudge:
    """Every pair contradicts unless premise and hypothesis are the same string."""

    name = "stub-contra"

    def __init__(self) -> None:
        self.pairs: list[tuple[str, str]] = []

    def __call__(self, pairs: Sequence[tuple[str, str]]) -> list[int]:
        self.pairs += pairs
        return [ENTAIL if p == h else CONTRA for p, h in pairs]

    def provenance(self) -> dict[str, Any]:
        return {"judge": self.name, "kind": "stub"}


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from tokenprism.backend.models.embeddings import get_encoder

    return get_encoder("default", Settings(home=tmp_path_factory.mktemp("enc"), device="cpu"))


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    with Store(tmp_path / "u.duckdb") as s:
        yield s


def _encode(lm, prompt: str = PROMPT, response: str = RESPONSE) -> EncodedText:  # type: ignore[no-untyped-def]
    return encode_pair(lm.tokenizer, prompt, response, context_length=lm.context_length)


def _scored_response(tok: dict[str, Any]) -> bool:
    """Tokens that CCP / SAR / claims consider: response tokens with a prediction."""
    return not tok["is_prompt"] and tok["position"] > 0


# ---- CCP and claims -----------------------------------------------------------------------


def _expected_token_ccp(tok: dict[str, Any], decode: Any, preset: str = "tokenprism") -> float:
    """CCP_t from the stored top-k with :class:`ContraJudge`, following the preset's rules."""
    if preset == "lm-polygraph":
        return _expected_lm_polygraph_ccp(tok, decode)
    word = decode(tok["token_id"]).strip(_STRIP)
    if not word or word.lower() in ENGLISH_STOPWORDS:
        return 1.0  # empty word: every alternative neutral; stopword: all entail
    # the target goes first; without it in the top-k, the least probable alternative drops
    others = [a for a in tok["top_k"] if a["token_id"] != tok["token_id"]][: len(tok["top_k"]) - 1]
    entail, contra = tok["prob"], 0.0
    for alt in others:
        text = alt["text"].strip(_STRIP)
        if not text:
            continue  # neutral: dropped from both sums
        if text.casefold() == word.casefold():
            entail += alt["prob"]
        else:
            contra += alt["prob"]
    return entail / (entail + contra)


def _expected_lm_polygraph_ccp(tok: dict[str, Any], decode: Any) -> float:
    """LM-Polygraph's rules: every alternative goes to the judge as its word stripped of
    punctuation, spaces and newlines (the empty word included); ContraJudge entails only the
    identical word, both directions then agree."""
    word = decode(tok["token_id"]).strip(_STRIP_LMP)
    others = [a for a in tok["top_k"] if a["token_id"] != tok["token_id"]][: len(tok["top_k"]) - 1]
    entail, contra = tok["prob"], 0.0
    for alt in others:
        if alt["text"].strip(_STRIP_LMP) == word:
            entail += alt["prob"]
        else:
            contra += alt["prob"]
    return entail / (entail + contra)


def _claim_positions(run: dict[str, Any], start: int, end: int) -> list[int]:
    return [
        t["position"]
        for t in run["tokens"]
        if _scored_response(t)
        and t["char_end"] > t["char_start"]
        and t["char_start"] < end
        and t["char_end"] > start
    ]


@pytest.mark.parametrize("preset", ["lm-polygraph", "tokenprism"])
def test_ccp_and_claims_match_an_independent_computation(
    tiny_lm: LoadedModel, store: Store, preset: str
) -> None:
    judge = ContraJudge()
    settings = Settings(home=Path("/nonexistent-home"), device="cpu")
    request = ExtraRequest(metrics=("ccp",), ccp=ccp_params(preset))
    plan = ExtraPlan(request=request, settings=settings, judge=judge)  # type: ignore[arg-type]
    enc = _encode(tiny_lm)
    scored = score_one(tiny_lm, enc, extras=plan)
    assert judge.pairs, "the judge was never asked"
    if preset == "tokenprism":
        assert all(p != h for p, h in judge.pairs)  # identical words never reach the judge
    else:
        assert any("" in pair for pair in judge.pairs)  # "." and "!" are judged as ""
    run_id = store.save_runs(tiny_lm, [scored])[0]
    run = store.get_run(run_id)

    decode = tiny_lm.tokenizer.decode
    expected: dict[int, float] = {}
    for tok in run["tokens"]:
        if not _scored_response(tok):
            assert tok["ccp"] is None, tok
            continue
        expected[tok["position"]] = _expected_token_ccp(tok, lambda i: decode([i]), preset)
        assert tok["ccp"] == pytest.approx(expected[tok["position"]], rel=1e-4, abs=1e-6)
    assert len(expected) == sum(not p for p in enc.is_prompt)
    assert any(v < 0.999 for v in expected.values()), "every token trivially certain"
    if preset == "tokenprism":
        assert any(v == 1.0 for v in expected.values()), "no stopword / short-circuited token"

    # claims: the response's sentences, with their offsets into the full text
    base = enc.text.index(RESPONSE)
    assert [c["text"] for c in run["claims"]] == SENTENCES
    claim_ccps = []
    for i, (claim, sentence) in enumerate(zip(run["claims"], SENTENCES, strict=True)):
        start = base + RESPONSE.index(sentence)
        assert claim["index"] == i
        assert (claim["char_start"], claim["char_end"]) == (start, start + len(sentence))
        assert run["text"][claim["char_start"] : claim["char_end"]] == sentence
        positions = _claim_positions(run, claim["char_start"], claim["char_end"])
        assert claim["n_tokens"] == len(positions)
        assert (claim["position_start"], claim["position_end"]) == (positions[0], positions[-1])
        product = math.prod(expected[p] for p in positions)
        claim_ccps.append(product)
        assert claim["metrics"]["ccp"] == pytest.approx(product, rel=1e-4)
        toks = [run["tokens"][p] for p in positions]
        assert claim["metrics"]["entropy"] == pytest.approx(
            sum(t["entropy"] for t in toks) / len(toks), rel=1e-5
        )
        assert claim["metrics"]["one_minus_prob"] == pytest.approx(
            max(1 - t["prob"] for t in toks), rel=1e-5
        )
    seq = run["sequence"]
    assert seq["ccp_uncertainty"] == pytest.approx(1 - math.prod(expected.values()), rel=1e-4)
    assert seq["claim_ccp_min"] == pytest.approx(min(claim_ccps), rel=1e-4)
    # length-normalised aggregates, by a naive loop over the independently computed CCPs
    assert seq["claim_ccp_mean"] == pytest.approx(sum(claim_ccps) / len(claim_ccps), rel=1e-4)
    logs = [math.log(v) for v in expected.values()]
    assert seq["ccp_mean_log"] == pytest.approx(sum(logs) / len(logs), rel=1e-4, abs=1e-6)
    prov = run["provenance"]["extras"]
    assert prov["ccp"]["judge"] == "stub-contra"
    assert prov["ccp"]["preset"] == preset and prov["ccp"]["params"]["aggregation"] == preset
    assert prov["ccp"]["params"]["n_alternatives"] == 10
    assert prov["request"]["metrics"] == ["ccp"]


def test_claims_are_stored_without_extra_metrics(tiny_lm, store: Store) -> None:  # type: ignore[no-untyped-def]
    run_id = store.save_runs(tiny_lm, [score_one(tiny_lm, _encode(tiny_lm))])[0]
    run = store.get_run(run_id)
    assert [c["text"] for c in run["claims"]] == SENTENCES
    for claim in run["claims"]:
        assert set(claim["metrics"]) == {"entropy", "one_minus_prob"}
    assert "extras" not in run["provenance"]
    assert all("ccp" not in t for t in run["tokens"])


# ---- SAR ----------------------------------------------------------------------------------


def test_token_sar_matches_the_relevance_weighted_nll(tiny_lm, encoder) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(home=Path("/nonexistent-home"), device="cpu")
    plan = ExtraPlan(request=ExtraRequest(metrics=("sar",)), settings=settings, encoder=encoder)
    enc = _encode(tiny_lm)
    scored = score_one(tiny_lm, enc, extras=plan)
    sar = scored.scores.token["sar"]
    positions = [p for p in range(enc.n_tokens) if not enc.is_prompt[p] and p > 0]
    values = sar[positions]
    assert not torch.isnan(values).any() and bool((values >= 0).all())
    assert torch.isnan(sar[[p for p in range(enc.n_tokens) if p not in positions]]).all()
    total = scored.scores.sequence["token_sar"]
    assert float(values.sum()) == pytest.approx(total, rel=1e-5)
    assert scored.provenance["extras"]["sar"] == {"scope": "response"}
    assert scored.provenance["extras"]["encoder"]["encoder"] == encoder.name

    # independently: R_i = 1 - g(x+s, x+s without z_i); E_T = sum R_i / sum R * NLL_i
    start = enc.text.index(RESPONSE)
    end = start + len(RESPONSE)
    whole = PROMPT + " " + RESPONSE
    variants, where = [], []
    for i, p in enumerate(positions):
        a, b = max(enc.offsets[p][0], start), min(enc.offsets[p][1], end)
        if b <= a:
            continue  # the end-of-turn marker: nothing of the response to remove
        variants.append((PROMPT + " " + enc.text[start:a] + enc.text[b:end]).strip())
        where.append(i)
    emb = encoder.encode([whole, *variants])
    sims = torch.ones(len(positions))
    sims[where] = (emb[1:] @ emb[0]).clamp(0, 1)
    relevance = 1 - sims
    nll = -scored.scores.token["logprob"][positions].double()
    want = (relevance / relevance.sum()).double() * nll
    torch.testing.assert_close(values.double(), want, atol=2e-4, rtol=2e-3)
    assert total == pytest.approx(float(want.sum()), rel=1e-3)
    assert total <= float(nll.max()) + 1e-4  # a weighted mean of the NLLs
    # claims sum their tokens' contributions
    for claim in scored.claims:
        assert claim.metrics["sar"] == pytest.approx(float(sar[claim.positions].sum()), rel=1e-5)


# ---- probes -------------------------------------------------------------------------------

COUNTRIES = [("France", "Paris"), ("Italy", "Rome"), ("Australia", "Canberra")]
WRONG = {"France": "Rome", "Italy": "Paris", "Australia": "Sydney"}


def _labelled_rows(n: int = 40) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        country, city = COUNTRIES[i % 3]
        hallucinated = i % 3 == 1 or i % 5 == 0
        answer = WRONG[country] if hallucinated else city
        response = f"The capital of {country} is {answer}."
        start = response.rindex(answer)
        rows.append(
            {
                "prompt": f"Question {i}: what is the capital of {country}?",
                "response": response,
                "spans": [{"start": start, "end": start + len(answer), "label": int(hallucinated)}],
                "split": "test" if i % 4 == 0 else "train",
            }
        )
    return rows


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _auc(scores: list[float], labels: list[int]) -> float:
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def _probe_by_hand(lm, ids: list[int], path: Path, layer: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """sigmoid(h @ w + b) on hidden_states[layer + 1] of a plain forward pass."""
    tensors = load_file(str(path / "probe.safetensors"))
    with torch.no_grad():
        out = lm.model(torch.tensor([ids]), output_hidden_states=True)
    h = out.hidden_states[layer + 1][0].double()
    return torch.sigmoid(h @ tensors["weight"].double() + tensors["bias"].double())


@pytest.fixture(scope="module")
def trained(tiny_lm, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    data = _jsonl(_labelled_rows())
    probe, layer, report = train_and_evaluate(
        tiny_lm,
        data,
        "capitals.jsonl",
        layer=0,
        params=ProbeTrainParams(epochs=3),
        ccp_plan=None,
    )
    directory = tmp_path_factory.mktemp("probes")
    path = save_probe(
        probe,
        "tiny-capitals",
        tiny_lm,
        layer,
        directory,
        config={"description": "test"},
        report=report,
    )
    return {"probe": probe, "layer": layer, "report": report, "dir": directory, "path": path}


def test_probe_training_report(tiny_lm, trained) -> None:  # type: ignore[no-untyped-def]
    report = trained["report"]
    assert trained["layer"] == 0 and report["layer"] == 0
    held = report["held_out"]
    assert set(held["token_auc"]) == {"probe", "entropy", "one_minus_prob"}
    assert set(held["span_max_auc"]) == {"probe", "entropy", "one_minus_prob"}
    assert report["ccp_judge"] is None
    assert report["data"]["n_examples"] == 40
    assert report["train"]["n_examples"] == 30 and held["n_examples"] == 10
    assert report["train"]["steps"] == 3 * 2  # 30 sequences in batches of 16, 3 epochs

    # the held-out token AUC of the probe, recomputed by hand: every response token counts,
    # labelled 1 where it overlaps the hallucinated answer
    test_rows = [r for r in _labelled_rows() if r["split"] == "test"]
    scores: list[float] = []
    labels: list[int] = []
    for row in test_rows:
        enc = _encode(tiny_lm, row["prompt"], row["response"])
        base = enc.text.index(row["response"])
        (span,) = row["spans"]
        probs = _probe_by_hand(tiny_lm, enc.input_ids, trained["path"], 0)
        for p in range(enc.n_tokens):
            if enc.is_prompt[p]:
                continue
            a, b = enc.offsets[p]
            inside = b > a and a < base + span["end"] and b > base + span["start"]
            scores.append(float(probs[p]))
            labels.append(int(inside and span["label"] == 1))
    assert 0 < sum(labels) < len(labels)
    assert held["n_tokens"] == len(labels)
    assert held["n_positive_tokens"] == sum(labels)
    assert held["token_auc"]["probe"] == pytest.approx(_auc(scores, labels), abs=1e-3)


def test_probe_apply_to_a_stored_run_matches_a_forward_pass(  # type: ignore[no-untyped-def]
    tiny_lm, trained, store: Store, tmp_path: Path
) -> None:
    settings = Settings(home=tmp_path / "home", device="cpu", probe_dirs=[trained["dir"]])
    assert "tiny-capitals" in [p.name for p in list_probes(settings)]
    assert probe_for(tiny_lm, settings).name == "tiny-capitals"  # the newest matching one
    enc = _encode(tiny_lm)
    run_id = store.save_runs(tiny_lm, [score_one(tiny_lm, enc)])[0]
    assert all("probe" not in t for t in store.get_run(run_id)["tokens"])

    summary = apply_probe_to_run(store, run_id, "tiny-capitals", settings)
    run = store.get_run(run_id)
    want = _probe_by_hand(tiny_lm, enc.input_ids, trained["path"], trained["layer"])
    got = []
    for tok in run["tokens"]:
        if _scored_response(tok):
            assert tok["probe"] == pytest.approx(float(want[tok["position"]]), abs=1e-5)
            got.append(float(want[tok["position"]]))
        else:
            assert tok["probe"] is None
    assert run["sequence"]["probe_max"] == pytest.approx(max(got), abs=1e-5)
    assert run["sequence"]["probe_mean"] == pytest.approx(sum(got) / len(got), abs=1e-5)
    assert summary["probe"] == "tiny-capitals" and summary["claims"] == len(SENTENCES)
    for claim in run["claims"]:
        span = range(claim["position_start"], claim["position_end"] + 1)
        assert claim["metrics"]["probe"] == pytest.approx(max(float(want[p]) for p in span), 1e-5)
    assert run["provenance"]["extras"]["probe"]["probe"] == "tiny-capitals"
    assert run["provenance"]["extras"]["probe"]["layer"] == trained["layer"]

    # the same values come out of the scoring pass itself (batched, right-padded)
    plan = ExtraPlan(
        request=ExtraRequest(metrics=("probe",), probe="tiny-capitals"),
        settings=settings,
        probe=load_probe("tiny-capitals", settings),
    )
    other = _encode(tiny_lm, "Capital of Italy?", "Rome.")
    scored = score_one(tiny_lm, enc, extras=plan)
    positions = [p for p in range(enc.n_tokens) if not enc.is_prompt[p]]
    torch.testing.assert_close(
        scored.scores.token["probe"][positions].double(), want[positions], atol=1e-5, rtol=1e-5
    )
    from tokenprism.backend.scoring.runner import score_batch

    both = score_batch(tiny_lm, [other, enc], extras=plan)
    torch.testing.assert_close(
        both[1].scores.token["probe"][positions].double(), want[positions], atol=1e-4, rtol=1e-4
    )


def test_scoring_with_a_probe_stores_what_applying_it_later_stores(  # type: ignore[no-untyped-def]
    tiny_lm, trained, store: Store, tmp_path: Path
) -> None:
    """Both paths agree on every token of a raw-text run, position 0 included."""
    settings = Settings(home=tmp_path / "home", device="cpu", probe_dirs=[trained["dir"]])
    enc = encode_text(tiny_lm.tokenizer, RESPONSE, context_length=tiny_lm.context_length)
    assert not any(enc.is_prompt)
    plan = ExtraPlan(
        request=ExtraRequest(metrics=("probe",)),
        settings=settings,
        probe=load_probe("tiny-capitals", settings),
    )
    during = store.save_runs(tiny_lm, [score_one(tiny_lm, enc, extras=plan)])[0]
    later = store.save_runs(tiny_lm, [score_one(tiny_lm, enc)])[0]
    apply_probe_to_run(store, later, "tiny-capitals", settings)
    a, b = store.get_run(during), store.get_run(later)
    assert a["tokens"][0]["probe"] is None and b["tokens"][0]["probe"] is None
    assert [t["probe"] for t in a["tokens"][1:]] == pytest.approx(
        [t["probe"] for t in b["tokens"][1:]], abs=1e-5
    )
    assert all(t["probe"] is not None for t in a["tokens"][1:])
    for name in ("probe_max", "probe_mean"):
        assert a["sequence"][name] == pytest.approx(b["sequence"][name], abs=1e-5)
    assert [c["metrics"]["probe"] for c in a["claims"]] == pytest.approx(
        [c["metrics"]["probe"] for c in b["claims"]], abs=1e-5
    )


def test_a_probe_of_another_model_revision_is_refused(tiny_lm, trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tokenprism.backend.errors import UserError

    copy = tmp_path / "probes"
    copy.mkdir()
    (copy / "foreign").mkdir()
    config = json.loads((trained["path"] / "probe.json").read_text())
    config["model_revision"] = "sha256:" + "0" * 64
    (copy / "foreign" / "probe.json").write_text(json.dumps(config))
    (copy / "foreign" / "probe.safetensors").write_bytes(
        (trained["path"] / "probe.safetensors").read_bytes()
    )
    settings = Settings(home=tmp_path / "home", device="cpu", probe_dirs=[copy])
    with pytest.raises(UserError, match="was trained on"):
        probe_for(tiny_lm, settings, "foreign")
    with pytest.raises(UserError, match="no probe has been trained"):
        probe_for(tiny_lm, settings)


# ---- labelled data ------------------------------------------------------------------------


def test_labelled_data_errors_name_their_lines(tiny_lm, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    good = _labelled_rows(1)[0]
    lines = [
        json.dumps(good),
        '{"prompt": "Hi", "response": "Hello", "spans": [',  # not JSON
        json.dumps({**good, "spans": [{"start": 3, "end": 500, "label": 1}]}),
        json.dumps({**good, "spans": [{"start": 0, "end": 3, "label": "maybe"}]}),
        "",
        json.dumps(good),
        json.dumps({**good, "spans": [{"span": "Berlin", "label": 1}]}),
    ]
    with pytest.raises(TranscriptError) as info:
        parse_labelled("\n".join(lines), "bad.jsonl")
    assert [line for line, _ in info.value.problems] == [2, 3, 4, 7]
    message = str(info.value)
    assert message.startswith("bad.jsonl is not a valid transcript")
    for number in (2, 3, 4, 7):
        assert f"line {number}:" in message
    assert "line 1:" not in message and "line 6:" not in message
    assert "outside the text" in message and "'maybe'" in message and "'Berlin'" in message

    # training validates everything before any forward pass
    import tokenprism.backend.probes.training as training

    def no_model_work(*_: Any, **__: Any) -> None:
        raise AssertionError("features were collected from invalid data")

    monkeypatch.setattr(training, "collect", no_model_work)
    with pytest.raises(TranscriptError):
        train_and_evaluate(tiny_lm, "\n".join(lines), "bad.jsonl", layer=0)


def _expected_labels(enc: EncodedText, spans: list[tuple[int, int, int]]) -> list[float]:
    """-100 on prompt tokens; 1 / 0 by character overlap; 0 outside every span."""
    out = []
    for (a, b), prompt in zip(enc.offsets, enc.is_prompt, strict=True):
        if prompt:
            out.append(-100.0)
            continue
        hits = [lab for s, e, lab in spans if b > a and a < e and b > s]
        out.append(1.0 if 1 in hits else 0.0)
    return out


def test_spans_starting_mid_token_claim_that_token(tiny_lm) -> None:  # type: ignore[no-untyped-def]
    response = "Canberra is the capital. Sydney is big."
    rows = [
        {  # "anberra" starts inside "Can"; "Sydney" starts after the space inside " S"
            "prompt": PROMPT,
            "response": response,
            "spans": [
                {"start": 1, "end": 8, "label": "hallucinated"},
                {"span": "Sydney", "label": "supported"},
                {"span": "big", "label": "N/A"},
            ],
        },
        {"text": response, "spans": [{"start": 27, "end": 29, "label": True}]},  # "dn" of Sydney
    ]
    items = parse_labelled(_jsonl(rows), "tricky.jsonl")
    assert items[0].spans == [LabelledSpan(1, 8, 1), LabelledSpan(25, 31, 0)]  # N/A dropped
    assert items[1].prompt is None
    (enc_chat, spans_chat), (enc_text, spans_text) = encode_labelled(tiny_lm, items, "t")

    base = enc_chat.text.index(response)
    assert spans_chat == [
        LabelledSpan(base + 1, base + 8, 1),
        LabelledSpan(base + 25, base + 31, 0),
    ]
    assert spans_text == [LabelledSpan(27, 29, 1)]
    # the spans really do start inside tokens
    starts = {a for a, _ in enc_chat.offsets}
    assert base + 1 not in starts and base + 25 not in starts
    assert 27 not in {a for a, _ in enc_text.offsets}

    for enc, spans in ((enc_chat, spans_chat), (enc_text, spans_text)):
        labels = labels_of(enc, spans).labels.tolist()
        want = _expected_labels(enc, [(s.start, s.end, s.label) for s in spans])
        assert labels == want
    chat_labels = labels_of(enc_chat, spans_chat).labels
    first = next(i for i, (a, b) in enumerate(enc_chat.offsets) if a <= base + 1 < b)
    assert enc_chat.offsets[first][0] == base  # the token holding "C" is labelled too
    assert chat_labels[first] == 1.0
    assert int((chat_labels == 1).sum()) >= 2


# ---- migration ----------------------------------------------------------------------------


def test_a_version_2_database_gains_the_claims_tables(tmp_path: Path, tiny_lm) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "v2.duckdb"
    engine = sa.create_engine(f"duckdb:///{path}")
    assert migrate(engine, target=2) == 2
    with engine.begin() as conn:
        tables = {r[0] for r in conn.exec_driver_sql("SHOW TABLES")}
        assert "uploads" in tables and "claims" not in tables and "claim_metrics" not in tables
        conn.exec_driver_sql(
            "INSERT INTO models VALUES ('m1', 'old', 'local', 'sha256:x', NULL, NULL, 8, now())"
        )
        conn.exec_driver_sql(
            "INSERT INTO runs VALUES ('r1', 'm1', 'text', NULL, 'ab', 'ab', NULL, NULL, 2, 2, "
            "NULL, NULL, NULL, NULL, '{}', now(), NULL)"
        )
        conn.exec_driver_sql(
            "INSERT INTO tokens VALUES ('r1', 0, 5, 'a', 'a', 0, 1, false, NULL, NULL, NULL, "
            "NULL, NULL), ('r1', 1, 6, 'b', 'b', 1, 2, false, -0.5, 0.6, 1, 1.2, NULL)"
        )
    engine.dispose()

    with Store(path) as store:
        assert store.schema_version == LATEST >= 3
        with store.engine.connect() as conn:
            versions = [r[0] for r in conn.exec_driver_sql("SELECT version FROM schema_version")]
            claim_cols = [r[0] for r in conn.exec_driver_sql("DESCRIBE claims")]
            metric_cols = [r[0] for r in conn.exec_driver_sql("DESCRIBE claim_metrics")]
        assert sorted(versions) == list(range(1, LATEST + 1))
        assert claim_cols[:3] == ["run_id", "claim_index", "text"]
        assert metric_cols == ["run_id", "claim_index", "metric", "value"]
        old = store.get_run("r1")
        assert old["claims"] == [] and [t["token_id"] for t in old["tokens"]] == [5, 6]
        run_id = store.save_runs(tiny_lm, [score_one(tiny_lm, _encode(tiny_lm))])[0]
        assert [c["text"] for c in store.get_run(run_id)["claims"]] == SENTENCES
    with Store(path) as again:  # opening again applies nothing twice
        assert again.count("schema_version") == LATEST
