"""SelfCheckGPT-style sampling consistency (Manakul et al. 2023): higher = more likely hallucinated.

A response R, split into sentences ``r_1 .. r_I`` by the caller, is checked against N stochastic
samples ``S^1 .. S^N`` of the same prompt. Two variants:

* **embedding** (:func:`embedding_inconsistency`) stands in for SelfCheckGPT's BERTScore variant:
  instead of token-level BERTScore between sentences it uses the cosine similarity of sentence
  embeddings. With ``s^n_k`` the sentences of sample n,
  ``B_i^n = max_k cos(e(r_i), e(s^n_k))`` and ``score(i) = 1 - (1/N) sum_n B_i^n``. A sample with
  no sentences supports nothing and contributes ``B = 0``. Cosines are not clamped, so scores lie
  in ``[0, 2]``; they are in ``[0, 1]`` when all cosines are non-negative.
* **n-gram** (:func:`ngram_inconsistency`, default n = 1 as in the library): an n-gram LM with
  add-k smoothing is fitted on the response sentences plus all samples, and each sentence is
  scored by the mean (``avg``) and the maximum (``max``) of its words' ``-log p``. Words absent
  from the samples are rare in the pool and so score high.

:func:`broadcast_to_tokens` copies sentence scores onto the response tokens for storage.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# Decimals first so "3.14" stays one token; \w is Unicode-aware for str patterns.
_WORD = re.compile(r"\d+(?:\.\d+)+|\w+")
PAD = "<s>"


def embedding_inconsistency(sentence_emb: Tensor, sample_sentence_embs: Sequence[Tensor]) -> Tensor:
    """Embedding-similarity inconsistency of each response sentence.

    Args:
        sentence_emb: ``[I, d]`` embeddings of the response sentences (any norm).
        sample_sentence_embs: N tensors ``[J_n, d]``, the sentence embeddings of each sample (any
            norm; ``J_n = 0`` allowed and contributes ``B = 0``).

    Returns:
        ``[I]`` float32 ``1 - mean_n max_k cos(e(r_i), e(s^n_k))``; NaN when N = 0.
    """
    r = F.normalize(sentence_emb.float(), dim=-1)
    if len(sample_sentence_embs) == 0:
        return torch.full((r.shape[0],), math.nan, dtype=torch.float32, device=r.device)
    support = torch.zeros(r.shape[0], dtype=torch.float32, device=r.device)
    for sample in sample_sentence_embs:
        if sample.shape[0] == 0:
            continue
        s = F.normalize(sample.float().to(r.device), dim=-1)
        support += (r @ s.T).amax(dim=1)
    return 1.0 - support / len(sample_sentence_embs)


def words(text: str) -> list[str]:
    """Lowercase word tokens: Unicode ``\\w+`` runs, except that decimal numbers such as
    ``3.14`` (and dotted digit runs such as ``1.2.3``) stay one token. Punctuation is dropped;
    underscores count as word characters (as in ``\\w``); a period after a number is not part of
    it (``"3."`` -> ``["3"]``)."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class NgramScores:
    """n-gram inconsistency of a response.

    Attributes:
        avg: per sentence, ``-mean_j log p(w_j | context)``; NaN for a sentence with no words.
        max: per sentence, ``-min_j log p(w_j | context)``; NaN for a sentence with no words.
        doc_avg: mean ``-log p`` over all words of all sentences.
        doc_max: mean of the per-sentence ``max`` over sentences with words.
    """

    avg: list[float]
    max: list[float]
    doc_avg: float
    doc_max: float


def _ngrams(tokens: list[str], n: int) -> list[tuple[tuple[str, ...], str]]:
    padded = [PAD] * (n - 1) + tokens
    return [(tuple(padded[i : i + n - 1]), padded[i + n - 1]) for i in range(len(tokens))]


def ngram_inconsistency(
    sentences: Sequence[str], samples: Sequence[str], n: int = 1, k: float = 0.0
) -> NgramScores:
    """SelfCheckGPT n-gram scores of the response sentences.

    The LM is fitted on every response sentence and every sample, each a separate text left-padded
    with ``n - 1`` ``"<s>"`` (so a sentence is scored with exactly the contexts it contributed and,
    with k = 0, no scored n-gram is unseen). ``|V|`` is the number of distinct words in the pool
    (``"<s>"`` is never predicted and is not counted).

    * n = 1: ``p(w) = (count(w) + k) / (total + k |V|)``;
    * n >= 2: ``p(w | ctx) = (count(ctx, w) + k) / (count(ctx) + k |V|)``, where ``count(ctx)``
      counts the context's occurrences followed by a word, so that ``p(. | ctx)`` sums to 1.

    Args:
        sentences: the response sentences ``r_1 .. r_I``.
        samples: the N sampled responses (whole texts).
        n: n-gram order, >= 1.
        k: add-k smoothing constant, >= 0.

    Returns:
        :class:`NgramScores`; document scores are NaN when no sentence has words.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    if k < 0:
        raise ValueError("k must be >= 0")
    sentence_words = [words(s) for s in sentences]
    texts = sentence_words + [words(s) for s in samples]
    grams: Counter[tuple[tuple[str, ...], str]] = Counter()
    contexts: Counter[tuple[str, ...]] = Counter()
    vocab: set[str] = set()
    for toks in texts:
        vocab.update(toks)
        for ctx, w in _ngrams(toks, n):
            grams[ctx, w] += 1
            contexts[ctx] += 1
    smooth = k * len(vocab)

    avg: list[float] = []
    mx: list[float] = []
    all_nll: list[float] = []
    for toks in sentence_words:
        if not toks:
            avg.append(math.nan)
            mx.append(math.nan)
            continue
        # float64 via Python floats; counts are exact integers
        nll = [
            -math.log((grams[ctx, w] + k) / (contexts[ctx] + smooth)) for ctx, w in _ngrams(toks, n)
        ]
        avg.append(sum(nll) / len(nll))
        mx.append(max(nll))
        all_nll.extend(nll)
    scored = [m for m in mx if not math.isnan(m)]
    doc_avg = sum(all_nll) / len(all_nll) if all_nll else math.nan
    doc_max = sum(scored) / len(scored) if scored else math.nan
    return NgramScores(avg=avg, max=mx, doc_avg=doc_avg, doc_max=doc_max)


def broadcast_to_tokens(values: Tensor, positions: Sequence[Tensor], length: int) -> Tensor:
    """Copy each sentence score onto its token positions.

    Args:
        values: ``[I]`` per-sentence scores.
        positions: I integer tensors ``[m_i]`` of token indices in ``[0, length)`` covered by
            sentence i (may be empty).
        length: T, the number of token positions.

    Returns:
        ``[T]`` float32; a token covered by several sentences gets the largest of their non-NaN
        scores; tokens covered by none (or only by NaN scores) are NaN.
    """
    if len(positions) != values.shape[0]:
        raise ValueError(f"{values.shape[0]} values but {len(positions)} position tensors")
    vals = values.float()
    out = torch.full((length,), -math.inf, dtype=torch.float32, device=vals.device)
    covered = torch.zeros(length, dtype=torch.bool, device=vals.device)
    if len(positions) == 0:
        return out.fill_(math.nan)
    idx = torch.cat([p.reshape(-1).long().to(vals.device) for p in positions])
    if idx.numel() and (idx.min() < 0 or idx.max() >= length):
        raise ValueError(f"token positions must lie in [0, {length})")
    counts = torch.tensor([p.numel() for p in positions], device=vals.device)
    src = vals.repeat_interleave(counts)
    finite = ~torch.isnan(src)
    # NaN would win amax; -inf loses to every score and `covered` tells real -inf apart
    out.scatter_reduce_(0, idx, torch.where(finite, src, -math.inf), reduce="amax")
    covered.scatter_(0, idx[finite], True)
    return torch.where(covered, out, torch.full_like(out, math.nan))
