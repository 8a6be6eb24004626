"""Turning prompts, responses, chats and raw text into token ids with character offsets.

Every encoded text knows which of its tokens are the analysed part (the response) and which
are context (system prompt, user turn, template markup). Token texts come from the character
offsets of the exact string that was tokenised, so concatenating them gives that string back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from tokenprism.backend.errors import InputTooLong, UserError


@dataclass
class EncodedText:
    """A tokenised text and its prompt/response split.

    Attributes:
        kind: ``chat`` (chat template applied), ``pair`` (prompt + response, raw) or ``text``.
        text: the exact string that was tokenised (the rendered template in ``chat`` mode).
        input_ids: token ids of ``text`` (plus special tokens the tokenizer adds in raw mode).
        offsets: ``(start, end)`` character span of each token in ``text``.
        token_texts: each token's text; concatenated they give ``text`` back.
        is_prompt: True for context tokens, False for the analysed response tokens.
        response_span: character span ``[start, end)`` of the response content in ``text``.
        prompt: the user prompt (or None for raw text).
        response: the response content as given.
        system_prompt: system prompt given explicitly, if any.
        messages: the chat messages for ``chat`` mode.
        template: the chat template source when one was applied.
        rendering: how the text was built: ``template`` (the chat template), ``raw_continuation``
            (the messages' texts concatenated, when the template cannot render the chat),
            ``text`` (raw text) or ``pair`` (prompt + response, raw).
        truncated_tokens: tokens dropped from the left to fit the model's context (0 if none).
        notes: how the input was adapted (tool messages rendered as user text, the reason for
            a raw continuation, ...).
        truncated: the response was cut off (generation stopped at ``max_new_tokens``), so no
            end-of-turn token was produced and none is scored.
    """

    kind: str
    text: str
    input_ids: list[int]
    offsets: list[tuple[int, int]]
    token_texts: list[str]
    is_prompt: list[bool]
    response_span: tuple[int, int]
    prompt: str | None
    response: str
    system_prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    template: str | None = None
    rendering: str = "template"
    truncated_tokens: int = 0
    notes: list[str] = field(default_factory=list)
    truncated: bool = False

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)


def _tokenize(
    tokenizer: Any, text: str, *, add_special_tokens: bool
) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def _left_truncate(
    ids: list[int],
    offsets: list[tuple[int, int]],
    keep: int,
    special: set[int],
) -> tuple[list[int], list[tuple[int, int]], int, int]:
    """Keep the last ``keep`` tokens (and a leading added special token such as BOS).

    Returns ``(ids, offsets, cut, dropped)``: the kept ids, their spans shifted to
    ``text[cut:]``, the character where the kept text starts and the number of dropped tokens.
    Ids are sliced, not re-tokenised, so the kept tokens are exactly those of the full text.
    """
    lead = 1 if keep > 1 and ids[0] in special and offsets[0][1] <= offsets[0][0] else 0
    dropped = len(ids) - keep
    kept_ids = ids[:lead] + ids[lead + dropped :]
    kept = offsets[lead + dropped :]
    cut = kept[0][0]
    shifted = [(max(s - cut, 0), max(e - cut, 0)) for s, e in kept]
    return kept_ids, [(0, 0)] * lead + shifted, cut, dropped


def _build(
    tokenizer: Any,
    kind: str,
    text: str,
    span: tuple[int, int],
    *,
    add_special: bool,
    context_length: int,
    truncate: bool = False,
    **fields: Any,
) -> EncodedText:
    ids, offsets = _tokenize(tokenizer, text, add_special_tokens=add_special)
    if not ids:
        raise UserError("nothing to score: the text is empty")
    special = set(getattr(tokenizer, "all_special_ids", []))
    dropped = 0
    if len(ids) > context_length:
        if not truncate:
            raise InputTooLong(
                f"the text is {len(ids)} tokens long; this model's context is {context_length} "
                "tokens: shorten the text or score it in parts"
            )
        ids, offsets, cut, dropped = _left_truncate(ids, offsets, context_length, special)
        text = text[cut:]
        if cut > span[0]:  # the response itself was too long: its last window is scored
            fields["response"] = fields["response"][cut - span[0] :]
        span = (max(span[0] - cut, 0), span[1] - cut)
    texts: list[str] = []
    is_prompt: list[bool] = []
    covered = 0
    for tid, (start, end) in zip(ids, offsets, strict=True):
        if end <= start and tid in special:
            # Added special tokens (BOS) have an empty span: show their name, count as context.
            texts.append(tokenizer.convert_ids_to_tokens(tid))
            is_prompt.append(True)
            continue
        # Byte-level BPE can split one character over several tokens with overlapping spans;
        # the first token gets the character so the texts still concatenate to ``text``.
        texts.append(text[max(start, covered) : end])
        covered = max(covered, end)
        is_prompt.append(not (end > span[0] and start < span[1]))
    return EncodedText(
        kind=kind,
        text=text,
        input_ids=ids,
        offsets=offsets,
        token_texts=texts,
        is_prompt=is_prompt,
        response_span=span,
        truncated_tokens=dropped,
        **fields,
    )


def encode_text(
    tokenizer: Any, text: str, *, context_length: int, truncate: bool = False
) -> EncodedText:
    """Raw text scored exactly as given (the tokenizer's own special tokens, e.g. BOS, added).

    With ``truncate`` a text longer than the context is scored on its last window (the dropped
    token count is in ``truncated_tokens``); without, it is refused.
    """
    if not text.strip():
        raise UserError("nothing to score: the text is empty")
    return _build(
        tokenizer,
        "text",
        text,
        (0, len(text)),
        add_special=True,
        context_length=context_length,
        truncate=truncate,
        prompt=None,
        response=text,
        rendering="text",
    )


def encode_pair(
    tokenizer: Any,
    prompt: str,
    response: str,
    *,
    context_length: int,
    template: bool = True,
    system_prompt: str | None = None,
    end_of_turn: bool = True,
) -> EncodedText:
    """A prompt and its response; with ``template`` through the model's chat template.

    Without a template the two strings are concatenated as given and the prompt tokens are
    marked as context. ``end_of_turn=False`` is for a generation cut at ``max_new_tokens``: the
    model never produced an end-of-turn token, so none is appended (scoring one would add a
    near-zero probability the model never chose) and the text is marked ``truncated``.
    """
    if not response.strip():
        raise UserError("nothing to score: the response is empty")
    if template:
        messages = []
        if system_prompt is not None:
            messages.append({"role": "system", "content": system_prompt})
        messages += [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": response},
        ]
        return encode_chat(
            tokenizer, messages, context_length=context_length, end_of_turn=end_of_turn
        )
    text = prompt + response
    return _build(
        tokenizer,
        "pair",
        text,
        (len(prompt), len(text)),
        add_special=True,
        context_length=context_length,
        prompt=prompt,
        response=response,
        system_prompt=system_prompt,
        rendering="pair",
        truncated=not end_of_turn,
    )


RAW_SEPARATOR = "\n\n"
_TOOL_ROLE = re.compile(r"""['"]tool['"]""")


def template_roles(
    template: str, messages: list[dict[str, str]]
) -> tuple[list[dict[str, str]], list[str]]:
    """``tool`` messages kept when the template names a tool role, else rendered as user text.

    A template "has" a tool role when its source mentions ``'tool'`` (as Qwen2.5, Llama 3.1 and
    Mistral's do); generic ChatML templates would print any role name but the model was never
    trained on it, so the text goes in as the user's, and a note says so.
    """
    tools = sum(m.get("role") == "tool" for m in messages)
    if not tools or _TOOL_ROLE.search(template):
        return messages, []
    mapped = [{**m, "role": "user"} if m.get("role") == "tool" else m for m in messages]
    return mapped, [
        f"{tools} tool message(s) rendered as user text (the template has no tool role)"
    ]


def _render_template(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, int] | str:
    """``(rendered chat, start of the last message's content)``, or why the template failed.

    Templates are arbitrary Jinja: any exception they raise (strict role alternation, no
    system role, an empty conversation) means "this chat cannot be rendered".
    """
    content = messages[-1]["content"]
    try:
        full = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception as err:  # noqa: BLE001 - see the docstring
        return f"the chat template cannot render this chat ({type(err).__name__}: {err})"[:300]
    prefix = None
    if len(messages) > 1:  # templates raise on an empty conversation
        try:
            prefix = tokenizer.apply_chat_template(
                messages[:-1], tokenize=False, add_generation_prompt=True
            )
        except Exception:  # noqa: BLE001 - the full chat rendered; locate the content instead
            prefix = None
    start = len(prefix) if prefix and full.startswith(prefix) else full.rfind(content)
    found = full.find(content, start) if start >= 0 else -1
    if found < 0:
        return "the chat template does not render the assistant message verbatim"
    return full, found


def _end_marker(tokenizer: Any, full: str, end: int) -> int:
    """``end`` moved past the end-of-turn special token written right after the content."""
    suffix = full[end:]
    for marker in sorted(getattr(tokenizer, "all_special_tokens", []), key=len, reverse=True):
        if marker and suffix.startswith(marker):
            return end + len(marker)
    return end


def encode_chat(
    tokenizer: Any,
    messages: list[dict[str, str]],
    *,
    context_length: int,
    truncate: bool = False,
    fallback: bool = False,
    raw_separator: str = RAW_SEPARATOR,
    end_of_turn: bool = True,
) -> EncodedText:
    """Score the last message (an assistant turn) in the context of the ones before it.

    The conversation is rendered with the model's chat template; the analysed span is the
    assistant content plus the end-of-turn token right after it (the model's decision to stop),
    and the rendered text is cut there so trailing template markup is not scored. The turn may
    have no user message before it (a system message or nothing at all).

    Args:
        tokenizer: the model's tokenizer.
        messages: the chat, ending with the assistant message to score.
        context_length: the model's context in tokens.
        truncate: when the rendered chat is longer than the context, drop history from the
            left so it fits (the turn kept whole; a turn longer than the context alone is
            scored on its last window) instead of raising :class:`InputTooLong`.
        fallback: when the model has no template or the template cannot render this chat,
            score a raw-text continuation instead of raising: the earlier messages' texts, each
            followed by ``raw_separator``, then the assistant text, with the tokenizer's own
            special tokens (BOS) and no role labels or markup (``rendering="raw_continuation"``).
        raw_separator: what follows each earlier message in a raw continuation.
        end_of_turn: False for a cut-off generation: the span stops at the content's last
            character (no end-of-turn token the model never produced is appended).
    """
    if not messages or messages[-1].get("role") != "assistant":
        raise UserError("a chat to score must end with an assistant message")
    content = messages[-1].get("content", "")
    if not content.strip():
        raise UserError("nothing to score: the assistant message is empty")
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        if not fallback:
            raise UserError("this model has no chat template; score with --no-template instead")
        return _raw_chat(tokenizer, messages, context_length, truncate, raw_separator,
                         ["the model has no chat template"])  # fmt: skip
    rendered_messages, notes = template_roles(template, messages)
    rendered = _render_template(tokenizer, rendered_messages)
    if isinstance(rendered, str):
        if not fallback:
            raise UserError(rendered)
        return _raw_chat(tokenizer, messages, context_length, truncate, raw_separator,
                         [*notes, rendered])  # fmt: skip
    full, found = rendered
    end = (
        _end_marker(tokenizer, full, found + len(content)) if end_of_turn else found + len(content)
    )
    return _build(
        tokenizer,
        "chat",
        full[:end],
        (found, end),
        add_special=False,
        context_length=context_length,
        truncate=truncate,
        **_chat_fields(messages),
        template=template,
        rendering="template",
        notes=notes,
        truncated=not end_of_turn,
    )


def _chat_fields(messages: list[dict[str, str]]) -> dict[str, Any]:
    system = next((m["content"] for m in messages if m.get("role") == "system"), None)
    prompt = next((m["content"] for m in reversed(messages[:-1]) if m.get("role") == "user"), "")
    return {
        "prompt": prompt,
        "response": messages[-1]["content"],
        "system_prompt": system,
        "messages": messages,
    }


def _raw_chat(
    tokenizer: Any,
    messages: list[dict[str, str]],
    context_length: int,
    truncate: bool,
    separator: str,
    notes: list[str],
) -> EncodedText:
    """The chat as a raw-text continuation (see :func:`encode_chat`)."""
    before = "".join(m["content"] + separator for m in messages[:-1])
    text = before + messages[-1]["content"]
    return _build(
        tokenizer,
        "chat",
        text,
        (len(before), len(text)),
        add_special=True,
        context_length=context_length,
        truncate=truncate,
        **_chat_fields(messages),
        rendering="raw_continuation",
        notes=notes,
    )


def encode_turn(
    tokenizer: Any, messages: list[dict[str, str]], *, context_length: int
) -> EncodedText:
    """A chat turn as audits score it: never refused for its length or its shape
    (:func:`encode_chat` with ``truncate`` and ``fallback``)."""
    return encode_chat(
        tokenizer, messages, context_length=context_length, truncate=True, fallback=True
    )
