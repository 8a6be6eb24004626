"""CCP's NLI judges: label mapping, the fallback's rules, and a tiny local NLI model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tokenprism.analysis.ccp import CONTRA, ENTAIL, NEUTRAL
from tokenprism.backend.errors import ModelNotFound, UserError
from tokenprism.backend.models.nli import FallbackJudge, label_codes_from_config, load_nli_judge
from tokenprism.backend.settings import Settings

E, C, N = ENTAIL, CONTRA, NEUTRAL


# ---- label mapping ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("id2label", "codes"),
    [
        # microsoft/deberta-large-mnli
        ({0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"}, [C, N, E]),
        # roberta-large-mnli style lower-case names, another order
        ({0: "entailment", 1: "neutral", 2: "contradiction"}, [E, N, C]),
        ({0: "neutral", 1: "entailment", 2: "contradiction"}, [N, E, C]),
        # config.json read as JSON has string keys
        ({"0": "Entailment", "1": "Contradiction", "2": "Neutral"}, [E, C, N]),
        # two-class heads
        ({0: "entailment", 1: "not_entailment"}, [E, C]),
        ({0: "NOT_ENTAILMENT", 1: "ENTAILMENT"}, [C, E]),
    ],
)
def test_label_codes_follow_the_names_not_the_order(
    id2label: dict[Any, str], codes: list[int]
) -> None:
    assert label_codes_from_config(id2label) == codes


def test_an_unknown_label_name_is_a_user_error() -> None:
    with pytest.raises(UserError, match="'label_1'.*id2label"):
        label_codes_from_config({0: "entailment", 1: "LABEL_1", 2: "contradiction"})


def test_a_head_without_entailment_is_refused() -> None:
    with pytest.raises(UserError, match="no entailment class"):
        label_codes_from_config({0: "contradiction", 1: "neutral"})


# ---- the fallback judge -------------------------------------------------------------------


class NoEncoder:
    """An encoder that must not be asked: the rules decide these pairs."""

    def similarity(self, a: list[str], b: list[str]) -> torch.Tensor:
        raise AssertionError(f"the encoder was asked about {list(zip(a, b, strict=True))}")

    def provenance(self) -> dict[str, Any]:
        return {}


@pytest.mark.parametrize(
    ("premise", "hypothesis", "label"),
    [
        ("Paris", "paris", E),  # identity after casefold
        (" PARIS ", "Paris", E),
        ("the", "Paris", N),  # stopword on either side
        ("Paris", "The", N),
        ("", "Paris", N),  # empty
        ("Paris", "   ", N),
        ("7", "seven", E),  # numbers: digits and words
        ("Twelve", "12", E),
        ("1969", "1970", C),
        ("3", "4", C),
        ("1,5", "1.5", E),
        ("19", "1969", C),  # numbers are ruled before prefixes
        ("Par", "Paris", N),  # a prefix may continue into the same word
        ("Canberra", "Can", N),
    ],
)
def test_fallback_rules(premise: str, hypothesis: str, label: int) -> None:
    judge = FallbackJudge(NoEncoder())  # type: ignore[arg-type]
    assert judge([(premise, hypothesis)]) == [label]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from tokenprism.backend.models.embeddings import get_encoder

    return get_encoder("default", Settings(home=tmp_path_factory.mktemp("enc"), device="cpu"))


def test_fallback_thresholds_on_the_real_encoder(encoder) -> None:  # type: ignore[no-untyped-def]
    judge = FallbackJudge(encoder)
    pairs = [("big", "large"), ("Paris", "London"), ("Paris", "beautiful")]
    sims = encoder.similarity([p for p, _ in pairs], [h for _, h in pairs]).tolist()
    # the documented similarities put the three pairs in the three bands
    assert sims[0] >= judge.entail_at
    assert judge.neutral_below <= sims[1] < judge.entail_at
    assert sims[2] < judge.neutral_below
    assert judge(pairs) == [E, C, N]
    assert judge.name.startswith("fallback:minilm")
    prov = judge.provenance()
    assert prov["judge"] == judge.name and prov["kind"] == "fallback"
    assert prov["encoder"] == encoder.name


def test_fallback_cache_spares_the_encoder(
    encoder,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    real = encoder.similarity

    def counting(a: list[str], b: list[str]) -> torch.Tensor:
        calls.append(len(a))
        return real(a, b)

    monkeypatch.setattr(encoder, "similarity", counting)
    judge = FallbackJudge(encoder)  # a fresh cache
    pairs = [("big", "large"), ("Paris", "London"), ("7", "seven"), ("Paris", "beautiful")]
    first = judge(pairs)
    assert calls == [3]  # the number pair is ruled, the others embedded in one call
    second = judge(list(reversed(pairs)))
    assert second == list(reversed(first))
    assert calls == [3]  # all cached: no second encoder call
    # a new pair alone goes to the encoder; the cached ones still do not
    judge([("Paris", "London"), ("huge", "enormous")])
    assert calls == [3, 1]


# ---- a Hugging Face NLI model -------------------------------------------------------------

WORDS = (
    "the a is of in paris london rome city capital france italy big large small old new "
    "seven 7 beautiful river cat dog sleeps runs"
).split()
ID2LABEL = {0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"}


def _bert_tokenizer() -> Any:
    """A BERT-style WordPiece fast tokenizer over a small vocabulary, built offline."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    core = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def _bert_nli(path: Path) -> Any:
    from transformers import BertConfig, BertForSequenceClassification

    tok = _bert_tokenizer()
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=3,
        id2label=ID2LABEL,
        label2id={v: k for k, v in ID2LABEL.items()},
        initializer_range=0.5,  # spread the logits so the argmax varies between pairs
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return model, tok


PAIRS = [
    ("paris", "london"),
    ("big", "large"),
    ("the cat sleeps", "the dog runs"),
    ("seven", "7"),
    ("rome is the capital of italy", "paris is a city"),
    ("old", "new"),
    ("small", "big"),
    ("france", "river"),
    ("paris", "paris"),
    ("beautiful city", "a city"),
]


def test_hf_judge_labels_are_the_argmax_mapped_through_the_config(tmp_path: Path) -> None:
    path = tmp_path / "tiny-nli"
    model, tok = _bert_nli(path)
    judge = load_nli_judge(str(path), Settings(home=tmp_path / "h", device="cpu"))
    assert judge.label_codes == [C, N, E]
    assert judge.name == f"nli:{path}"
    assert judge.provenance() == {"judge": judge.name, "kind": "nli-model"}

    expected = []
    for premise, hypothesis in PAIRS:  # one pair at a time, no padding
        batch = tok(premise, hypothesis, return_tensors="pt")
        assert int(batch["input_ids"][0].eq(tok.unk_token_id).sum()) == 0
        with torch.no_grad():
            logits = model(**batch).logits[0]
        name = ID2LABEL[int(logits.argmax())]
        expected.append({"CONTRADICTION": C, "NEUTRAL": N, "ENTAILMENT": E}[name])
    assert len(set(expected)) > 1, "the random head should not give one label for everything"

    judge.batch_size = 4  # several padded batches
    assert judge(PAIRS) == expected
    # answers come from the cache now, in the order asked
    judge.model = None
    assert judge(list(reversed(PAIRS))) == list(reversed(expected))


def test_hf_judge_refuses_pickle_only_weights(tmp_path: Path) -> None:
    model, _ = _bert_nli(tmp_path / "src")
    bad = tmp_path / "pickled"
    bad.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (bad / name).write_bytes((tmp_path / "src" / name).read_bytes())
    torch.save(model.state_dict(), bad / "pytorch_model.bin")
    with pytest.raises((ModelNotFound, UserError), match="cannot load NLI model"):
        load_nli_judge(str(bad), Settings(home=tmp_path / "h", device="cpu"))


def test_hf_judge_missing_path_is_model_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="does not exist"):
        load_nli_judge(str(tmp_path / "nope"), Settings(home=tmp_path / "h", device="cpu"))
