"""Turning prompts, responses, chats and raw text into token ids with character offsets.

Every encoded text knows which of its tokens are the analysed part (the response) and which
are context (system prompt, user turn, template markup). Token texts come from the character
offsets of the exact string that was tokenised, so concatenating them gives that string back.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    truncated: bool = False

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)


def _tokenize(
    tokenizer: Any, text: str, *, add_special_tokens: bool
) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def _build(
    tokenizer: Any,
    kind: str,
    text: str,
    span: tuple[int, int],
    *,
    add_special: bool,
    context_length: int,
    **fields: Any,
) -> EncodedText:
    ids, offsets = _tokenize(tokenizer, text, add_special_tokens=add_special)
    if not ids:
        raise UserError("nothing to score: the text is empty")
    if len(ids) > context_length:
        raise InputTooLong(
            f"the text is {len(ids)} tokens long; this model's context is {context_length} "
            "tokens: shorten the text or score it in parts"
        )
    special = set(getattr(tokenizer, "all_special_ids", []))
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
        **fields,
    )


def encode_text(tokenizer: Any, text: str, *, context_length: int) -> EncodedText:
    """Raw text scored exactly as given (the tokenizer's own special tokens, e.g. BOS, added)."""
    if not text.strip():
        raise UserError("nothing to score: the text is empty")
    return _build(
        tokenizer,
        "text",
        text,
        (0, len(text)),
        add_special=True,
        context_length=context_length,
        prompt=None,
        response=text,
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
        truncated=not end_of_turn,
    )


def encode_chat(
    tokenizer: Any,
    messages: list[dict[str, str]],
    *,
    context_length: int,
    end_of_turn: bool = True,
) -> EncodedText:
    """Score the last message (an assistant turn) in the context of the ones before it.

    The conversation is rendered with the model's chat template; the analysed span is the
    assistant content plus the end-of-turn token right after it (the model's decision to stop),
    and the rendered text is cut there so trailing template markup is not scored. With
    ``end_of_turn=False`` (a cut-off generation) the span stops at the content's last character.
    """
    if not messages or messages[-1].get("role") != "assistant":
        raise UserError("a chat to score must end with an assistant message")
    content = messages[-1].get("content", "")
    if not content.strip():
        raise UserError("nothing to score: the assistant message is empty")
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("this model has no chat template; score with --no-template instead")
    prefix = tokenizer.apply_chat_template(
        messages[:-1], tokenize=False, add_generation_prompt=True
    )
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    start = len(prefix) if full.startswith(prefix) else full.rfind(content)
    found = full.find(content, start)
    if start < 0 or found < 0:
        raise UserError("the chat template does not render the assistant message verbatim")
    end = found + len(content)
    suffix = full[end:] if end_of_turn else ""
    for marker in sorted(getattr(tokenizer, "all_special_tokens", []), key=len, reverse=True):
        if marker and suffix.startswith(marker):
            end += len(marker)
            break
    text = full[:end]
    system = next((m["content"] for m in messages if m.get("role") == "system"), None)
    prompt = next((m["content"] for m in reversed(messages[:-1]) if m.get("role") == "user"), "")
    return _build(
        tokenizer,
        "chat",
        text,
        (found, end),
        add_special=False,
        context_length=context_length,
        prompt=prompt,
        response=content,
        system_prompt=system,
        messages=messages,
        template=tokenizer.chat_template,
        truncated=not end_of_turn,
    )
