"""Work items of an audit encoded for the model, and length batches: what both engines share.

The local engine (:mod:`.upload`) and the Ray engine (:mod:`.ray_engine`) import this module;
neither imports the other for it.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenprism.backend.audit.ingest import WorkItem
from tokenprism.backend.errors import UserError
from tokenprism.backend.models.loader import LoadedModel
from tokenprism.backend.scoring.encoding import EncodedText, encode_text, encode_turn


def encode_item(lm: LoadedModel, item: WorkItem) -> EncodedText:
    """An item as audits score it: a turn too long for the context is left-truncated and a
    chat the template cannot render becomes a raw continuation (see ``encode_turn``)."""
    if item.messages is not None:
        return encode_turn(lm.tokenizer, item.messages, context_length=lm.context_length)
    assert item.text is not None
    return encode_text(lm.tokenizer, item.text, context_length=lm.context_length, truncate=True)


def encode_items(lm: LoadedModel, items: Sequence[WorkItem], source: str) -> list[EncodedText]:
    """Encode every item up front, so a too-long or empty turn fails before anything is stored."""
    encoded, problems = [], []
    for item in items:
        try:
            encoded.append(encode_item(lm, item))
        except UserError as err:
            problems.append((item.line, str(err)))
    if problems:
        from tokenprism.backend.audit.ingest import TranscriptError

        raise TranscriptError(source, problems)
    return encoded


def length_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Group indices into batches of similar length with at most ``batch_tokens`` padded tokens.

    Sorting by length first keeps the padding of right-padded batches small.
    """
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda j: lengths[j]):
        current = batches[-1] if batches else None
        if current and lengths[i] * (len(current) + 1) <= batch_tokens:
            current.append(i)
        else:
            batches.append([i])
    return batches
