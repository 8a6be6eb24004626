"""Parsing transcript files into conversations to score, validating everything first.

Accepted now (JSON Lines, one object per line, blank lines ignored):

* OpenAI-style chats: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``
* ShareGPT: ``{"conversations": [{"from": "system"|"human"|"gpt", "value": str}, ...]}``
* prompt / response pairs: ``{"prompt": str, "response": str}``

Every assistant turn becomes one item scored in the context of the turns before it. The whole
file is validated before anything is scored or stored; errors name the line and the problem.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.errors import UserError

_ROLES = {"system", "user", "assistant"}
_SHAREGPT = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
}
MAX_ERRORS = 10


@dataclass(frozen=True)
class TurnItem:
    """One assistant turn to score: the messages up to and including it."""

    line: int
    conversation: int
    turn_index: int
    messages: list[dict[str, str]]


class TranscriptError(UserError):
    """A transcript failed validation; ``problems`` lists ``(line, message)``."""

    def __init__(self, source: str, problems: list[tuple[int, str]]) -> None:
        self.problems = problems
        shown = "; ".join(f"line {line}: {msg}" for line, msg in problems[:MAX_ERRORS])
        more = f" (and {len(problems) - MAX_ERRORS} more)" if len(problems) > MAX_ERRORS else ""
        super().__init__(f"{source} is not a valid transcript: {shown}{more}")


def read_text_file(path: Path) -> str:
    """A file's text, refusing non-UTF-8 and binary content with a clear message."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory, not a file") from None
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    if b"\x00" in data[:8192]:
        raise UserError(f"{path} looks like a binary file, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(
            f"{path} is not UTF-8 text (invalid byte 0x{data[err.start]:02x} at offset {err.start})"
        ) from None


def _messages(obj: dict[str, Any]) -> list[dict[str, str]]:
    if "messages" in obj:
        raw, role_key, text_key, roles = obj["messages"], "role", "content", {r: r for r in _ROLES}
    elif "conversations" in obj:
        raw, role_key, text_key, roles = obj["conversations"], "from", "value", _SHAREGPT
    elif "prompt" in obj and "response" in obj:
        if not isinstance(obj["prompt"], str) or not isinstance(obj["response"], str):
            raise ValueError("'prompt' and 'response' must be strings")
        messages = [
            {"role": "user", "content": obj["prompt"]},
            {"role": "assistant", "content": obj["response"]},
        ]
        if isinstance(obj.get("system"), str):
            messages.insert(0, {"role": "system", "content": obj["system"]})
        return messages
    else:
        raise ValueError(
            "expected a 'messages' list, a 'conversations' list, or 'prompt' and 'response' fields"
        )
    if not isinstance(raw, list) or not raw:
        raise ValueError("the message list is empty or not a list")
    out = []
    for i, msg in enumerate(raw, 1):
        if not isinstance(msg, dict):
            raise ValueError(f"message {i} is not an object")
        role, text = msg.get(role_key), msg.get(text_key)
        if role not in roles:
            raise ValueError(f"message {i} has unknown {role_key} {role!r}")
        if not isinstance(text, str):
            raise ValueError(f"message {i} has no string {text_key!r}")
        out.append({"role": roles[role], "content": text})
    return out


def parse_jsonl(text: str, source: str = "transcript") -> list[TurnItem]:
    """Validate the whole JSONL text and return its assistant turns, in file order."""
    items: list[TurnItem] = []
    problems: list[tuple[int, str]] = []
    conversation = 0
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append((line_no, f"invalid JSON ({err.msg} at column {err.colno})"))
            continue
        if not isinstance(obj, dict):
            problems.append((line_no, "expected a JSON object"))
            continue
        try:
            messages = _messages(obj)
        except ValueError as err:
            problems.append((line_no, str(err)))
            continue
        turns = [
            i for i, m in enumerate(messages) if m["role"] == "assistant" and m["content"].strip()
        ]
        if not turns:
            problems.append((line_no, "no non-empty assistant message to score"))
            continue
        conversation += 1
        for turn, idx in enumerate(turns):
            items.append(TurnItem(line_no, conversation, turn, messages[: idx + 1]))
    if problems:
        raise TranscriptError(source, problems)
    if not items:
        raise UserError(f"{source} holds no conversations")
    return items
