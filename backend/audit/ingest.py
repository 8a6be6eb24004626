"""Parsing uploaded transcripts into items to score, validating the whole file first.

Formats (detected from the file name, then the content):

* ``jsonl``: one JSON object per line, blank lines ignored, each either an OpenAI-style chat
  ``{"messages": [{"role", "content"}, ...]}``, a ShareGPT chat
  ``{"conversations": [{"from", "value"}, ...]}`` or a pair ``{"prompt", "response"}``
  (optional ``"system"``);
* ``csv``: a header row with ``prompt`` and ``response`` columns (optional ``system``);
* ``text``: plain text, scored as one raw text.

Every assistant turn of a chat becomes one item, scored in the context of the turns before it.
Nothing is scored or stored unless the whole file is valid; problems name the line.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenprism.backend.errors import UserError

_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}
_SHAREGPT = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "model": "assistant",
}
MAX_ERRORS = 10
FORMATS = ("jsonl", "csv", "text")


@dataclass(frozen=True)
class WorkItem:
    """One thing to score: a chat ending in an assistant turn, or a raw text.

    Attributes:
        index: position of the item in the file (0-based), stable across re-parses; resumable
            jobs use it to skip items already stored.
        line: 1-based line of the file the item comes from.
        conversation: 1-based conversation number.
        turn_index: 0-based assistant-turn number within its conversation.
        messages: the chat up to and including the assistant turn (None for raw text).
        text: the raw text (None for chats).
    """

    index: int
    line: int
    conversation: int
    turn_index: int
    messages: list[dict[str, str]] | None = field(default=None, hash=False)
    text: str | None = None


class TranscriptError(UserError):
    """A transcript failed validation; ``problems`` lists ``(line, message)``."""

    def __init__(self, source: str, problems: list[tuple[int, str]]) -> None:
        self.problems = problems
        shown = "; ".join(f"line {line}: {msg}" for line, msg in problems[:MAX_ERRORS])
        more = f" (and {len(problems) - MAX_ERRORS} more)" if len(problems) > MAX_ERRORS else ""
        super().__init__(f"{source} is not a valid transcript: {shown}{more}")


def decode_text(data: bytes, source: str) -> str:
    """Bytes to text, refusing binary and non-UTF-8 content with the offending line."""
    if b"\x00" in data[:65536]:
        raise UserError(f"{source} looks like a binary file, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise UserError(
            f"{source} is not UTF-8 text (line {line}: invalid byte 0x{data[err.start]:02x} "
            f"at offset {err.start})"
        ) from None


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
    return decode_text(data, str(path))


def detect_format(filename: str, text: str) -> str:
    """``jsonl``, ``csv`` or ``text`` from the extension, else from the first character."""
    suffix = Path(filename).suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".txt", ".md", ".text"):
        return "text"
    return "jsonl" if text.lstrip().startswith("{") else "text"


def _chat_from_json(obj: dict[str, Any]) -> list[dict[str, str]]:
    if "messages" in obj:
        raw, role_key, text_key, roles = obj["messages"], "role", "content", _ROLES
    elif "conversations" in obj:
        raw, role_key, text_key, roles = obj["conversations"], "from", "value", _SHAREGPT
    elif "prompt" in obj and "response" in obj:
        return _pair(obj.get("prompt"), obj.get("response"), obj.get("system"))
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


def _pair(prompt: Any, response: Any, system: Any = None) -> list[dict[str, str]]:
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise ValueError("'prompt' and 'response' must be strings")
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    if isinstance(system, str) and system:
        messages.insert(0, {"role": "system", "content": system})
    return messages


def _turns(messages: list[dict[str, str]]) -> list[int]:
    return [i for i, m in enumerate(messages) if m["role"] == "assistant" and m["content"].strip()]


def _jsonl_chats(text: str) -> tuple[list[tuple[int, list[dict[str, str]]]], list[tuple[int, str]]]:
    chats, problems = [], []
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
            chats.append((line_no, _chat_from_json(obj)))
        except ValueError as err:
            problems.append((line_no, str(err)))
    return chats, problems


def _csv_chats(text: str) -> tuple[list[tuple[int, list[dict[str, str]]]], list[tuple[int, str]]]:
    dialect = "excel-tab" if text.split("\n", 1)[0].count("\t") > 0 else "excel"
    reader = csv.DictReader(io.StringIO(text, newline=""), dialect=dialect)
    fields = {f.strip().lower(): f for f in (reader.fieldnames or [])}
    if "prompt" not in fields or "response" not in fields:
        return [], [(1, "the header needs 'prompt' and 'response' columns")]
    chats, problems = [], []
    try:
        for row in reader:
            line_no = reader.line_num
            if None in row:
                problems.append((line_no, "more fields than the header has"))
                continue
            try:
                chats.append(
                    (
                        line_no,
                        _pair(
                            row.get(fields["prompt"]),
                            row.get(fields["response"]),
                            row.get(fields.get("system", "")),
                        ),
                    )
                )
            except ValueError:
                problems.append((line_no, "missing prompt or response field"))
    except csv.Error as err:
        problems.append((reader.line_num, f"malformed CSV ({err})"))
    return chats, problems


def parse_transcript(
    text: str, fmt: str, source: str = "transcript", *, max_items: int | None = None
) -> list[WorkItem]:
    """Validate the whole text and return its items, in file order."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "text":
        if not text.strip():
            raise UserError(f"{source} is empty")
        return [WorkItem(index=0, line=1, conversation=1, turn_index=0, text=text)]
    chats, problems = _jsonl_chats(text) if fmt == "jsonl" else _csv_chats(text)
    items: list[WorkItem] = []
    for conversation, (line_no, messages) in enumerate(chats, 1):
        turns = _turns(messages)
        if not turns:
            problems.append((line_no, "no non-empty assistant message to score"))
            continue
        for turn, idx in enumerate(turns):
            items.append(
                WorkItem(len(items), line_no, conversation, turn, messages=messages[: idx + 1])
            )
    if problems:
        raise TranscriptError(source, sorted(problems))
    if not items:
        raise UserError(f"{source} holds no conversations")
    if max_items is not None and len(items) > max_items:
        raise UserError(
            f"{source} has {len(items)} turns to score; the limit is {max_items} "
            "(TOKENPRISM_UPLOAD_MAX_ITEMS)"
        )
    return items


def parse_jsonl(text: str, source: str = "transcript") -> list[WorkItem]:
    """JSONL shortcut of :func:`parse_transcript`."""
    return parse_transcript(text, "jsonl", source)
