"""Limits every generation obeys: the model's context, and a cancel flag checked every token.

Cancellation is thread-scoped: the job worker (and a request thread that generates) enters
:func:`cancel_scope` with its events; every token of every generation in that thread then
calls :func:`check_cancelled` (``transformers`` generation through :func:`stopping_criteria`,
the hand-written decoding loops directly), which raises :class:`JobCancelled` as soon as one
event is set. A cancelled sweep therefore stops within one forward pass, not at the end of its
current generation, and so does a server told to stop (SIGTERM).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from tokenprism.backend.errors import InputTooLong

if TYPE_CHECKING:
    from tokenprism.backend.models.loader import LoadedModel

_scope = threading.local()


class JobCancelled(Exception):
    """Raised inside a job (or a generating request) when its cancel flag is set."""


@contextmanager
def cancel_scope(*events: threading.Event) -> Iterator[None]:
    """Make every generation in this thread stop (raise :class:`JobCancelled`) once any of
    ``events`` is set. Scopes nest; the inner one adds its events to the outer ones."""
    previous: tuple[threading.Event, ...] = getattr(_scope, "events", ())
    _scope.events = previous + events
    try:
        yield
    finally:
        _scope.events = previous


def cancelled() -> bool:
    """Whether a cancel event of this thread's scope is set."""
    return any(e.is_set() for e in getattr(_scope, "events", ()))


def check_cancelled() -> None:
    """Raise :class:`JobCancelled` when this thread's work was cancelled."""
    if cancelled():
        raise JobCancelled


def stopping_criteria() -> Any:
    """A ``StoppingCriteriaList`` for ``generate`` that checks the cancel flag every token."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Cancel(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: Any, **_: Any) -> torch.Tensor:  # noqa: ARG002
            check_cancelled()  # raising leaves generate at once; a False mask only pauses it
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_Cancel()])


def check_context(lm: LoadedModel, prompt_tokens: int, max_new_tokens: int = 0) -> None:
    """Refuse (422) a prompt that, with ``max_new_tokens`` generated after it, does not fit the
    model's context; called before the model sees the prompt."""
    context = int(lm.context_length)
    if prompt_tokens >= context:
        raise InputTooLong(
            f"prompt is {prompt_tokens:,} tokens; this model's context is {context:,}"
        )
    if prompt_tokens + max_new_tokens > context:
        raise InputTooLong(
            f"prompt is {prompt_tokens:,} tokens and max_new_tokens is {max_new_tokens:,}; "
            f"together they exceed this model's context of {context:,} tokens (lower "
            f"max_new_tokens to {context - prompt_tokens:,} or shorten the prompt)"
        )


def check_prompts_fit(
    lm: LoadedModel,
    prompts: Sequence[str],
    max_new_tokens: int,
    *,
    system: str | None = None,
) -> None:
    """:func:`check_context` for each prompt as it will be generated from (chat template
    when the model has one)."""
    from tokenprism.backend.sampling.types import prompt_ids

    for prompt in prompts:
        ids, _ = prompt_ids(lm, prompt, system)
        check_context(lm, len(ids), max_new_tokens)
