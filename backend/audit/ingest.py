"""Parsing uploaded transcripts into items to score, validating the whole file first.

Formats (detected from the content, then the file name; see :func:`detect_format`):

* ``json``: one JSON document: an **array** of conversation records (how ShareGPT dumps,
  LMSYS/WildChat exports and most "export chats" buttons write them), an array of messages (one
  chat), or a single record object. Elements are decoded one at a time with
  ``JSONDecoder.raw_decode`` over the text, so a large array is never held twice as a parse tree.
* ``jsonl``: one record per line. Lines are split on ``"\\n"`` (and ``"\\r\\n"``) only, never with
  ``str.splitlines()``: U+2028, U+2029 and U+0085 are legal inside JSON strings and occur in chat
  text. Blank lines are ignored.
* ``csv``: a header row with ``prompt`` and ``response`` columns (optional ``system``);
* ``text``: plain text, scored as one raw text.

A record is any of: OpenAI ``{"messages": [{"role", "content"}]}`` (content a string, null or a
list of parts ``[{"type": "text", "text"}]``: text parts are kept, joined with a newline, and
other parts are counted as skipped), ShareGPT ``{"conversations": [{"from", "value"}]}``,
LMSYS-Chat-1M / WildChat ``{"conversation": [{"role", "content"}]}``, Alpaca
``{"instruction", "input", "output"}`` (prompt = instruction, plus the input on a new line when
non-empty), a pair ``{"prompt", "response"|"completion"}`` (optional ``"system"``), or a bare list
of messages. Roles as found in the wild map to system / user / assistant; ``tool``, ``function``
and ``observation`` become ``tool`` (the encoder maps it to the template's tool role, or to user
text, see :func:`backend.encoding.encode_chat`).

Conversations are taken as they are: every non-empty assistant message becomes one item, scored
in the context of the non-empty messages before it (possibly none). Empty messages are skipped
and counted; a conversation without an assistant message is skipped with its reason. By default
nothing is scored or stored unless every record is valid (problems name the line); with
``skip_invalid`` the invalid records are skipped and listed instead.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenprism.backend.errors import UserError

ROLES = {
    "system": "system",
    "developer": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "model": "assistant",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
}
MAX_ERRORS = 10  # problems spelled out in the error message
MAX_LISTED = 1000  # problems / skipped turns listed in full (the rest are counted)
MAX_INT_DIGITS = 100  # longer integers are refused: no real transcript field needs them
FORMATS = ("json", "jsonl", "csv", "text")
_TEXT_PARTS = ("text", "input_text", "output_text")
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # the only way JSON text makes one
_WS = re.compile(r"[ \t\n\r]*")


@dataclass(frozen=True)
class WorkItem:
    """One thing to score: a chat ending in an assistant turn, or a raw text.

    Attributes:
        index: position of the item among the file's items (0-based), stable across
            re-parses; resumable jobs use it to skip items already stored.
        line: 1-based line of the file where the item's record starts.
        conversation: 1-based number of the record in the file (invalid records count too, so
            the numbers match the file whether or not some were skipped).
        turn_index: 0-based number of the assistant message within its conversation (empty
            assistant messages count, so a skipped one leaves a gap).
        messages: the non-empty chat messages up to and including the assistant turn (None for
            raw text).
        text: the raw text (None for chats).
        message_index: 0-based position of the assistant message in the record's list.
    """

    index: int
    line: int
    conversation: int
    turn_index: int
    messages: list[dict[str, str]] | None = field(default=None, hash=False)
    text: str | None = None
    message_index: int = 0


@dataclass
class IngestReport:
    """What parsing found in a file: counts, and every skipped record or turn with its reason.

    Attributes:
        format: the format parsed.
        conversations: records found (valid or not).
        invalid: ``(line, reason)`` of each invalid record (refused, or skipped with
            ``skip_invalid``).
        assistant_turns: assistant messages found in the valid records, empty ones included.
        to_score: items produced (the non-empty assistant turns).
        empty_messages: messages of any role skipped because their text is empty.
        skipped: ``{"line", "conversation", "turn_index", "reason"}`` of every valid record or
            assistant turn that gives nothing to score (empty turn, no assistant message).
        notes: counts of things dropped on the way (non-text content parts, ...).
    """

    format: str
    conversations: int = 0
    invalid: list[tuple[int, str]] = field(default_factory=list)
    assistant_turns: int = 0
    to_score: int = 0
    empty_messages: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)
    notes: Counter[str] = field(default_factory=Counter)

    def skip(self, line: int, conversation: int, turn_index: int | None, reason: str) -> None:
        self.notes[f"skipped: {reason}"] += 1
        if len(self.skipped) < MAX_LISTED:
            self.skipped.append(
                {"line": line, "conversation": conversation, "turn_index": turn_index,
                 "reason": reason}
            )  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe summary; ``skipped`` lists invalid records first, then empty turns."""
        invalid = [
            {"line": line, "conversation": None, "turn_index": None, "reason": reason}
            for line, reason in self.invalid[:MAX_LISTED]
        ]
        return {
            "format": self.format,
            "conversations": self.conversations,
            "conversations_valid": self.conversations - len(self.invalid),
            "conversations_invalid": len(self.invalid),
            "assistant_turns": self.assistant_turns,
            "to_score": self.to_score,
            "empty_messages": self.empty_messages,
            "skipped_count": len(self.invalid)
            + sum(n for k, n in self.notes.items() if k.startswith("skipped: ")),
            "skipped": (invalid + self.skipped)[:MAX_LISTED],
            "notes": dict(self.notes),
        }


class TranscriptError(UserError):
    """A transcript failed validation; ``problems`` lists ``(line, message)``.

    ``valid`` and ``invalid`` count the conversations that were fine and those with problems,
    so a client can offer to audit the valid ones (``skip_invalid``).
    """

    def __init__(
        self, source: str, problems: list[tuple[int, str]], *, valid: int = 0, invalid: int = 0
    ) -> None:
        self.problems = problems[:MAX_LISTED]
        self.valid, self.invalid = valid, invalid or len(problems)
        shown = "; ".join(f"line {line}: {msg}" for line, msg in problems[:MAX_ERRORS])
        more = f" (and {len(problems) - MAX_ERRORS} more)" if len(problems) > MAX_ERRORS else ""
        super().__init__(f"{source} is not a valid transcript: {shown}{more}")

    @property
    def details(self) -> dict[str, Any]:
        """Extra fields of the API's error body."""
        return {
            "problems": [{"line": ln, "message": m} for ln, m in self.problems],
            "conversations_valid": self.valid,
            "conversations_invalid": self.invalid,
        }


# ---- bytes to text ------------------------------------------------------------------------

_BOMS = [
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
]


def decode_text(data: bytes, source: str) -> str:
    """Bytes to text, refusing binary and non-UTF-8 content with the offending line.

    A leading UTF-8 byte-order mark is dropped; UTF-16/32 files are refused by their BOM.
    """
    for bom, name in _BOMS:
        if data.startswith(bom):
            raise UserError(
                f"{source} is {name} text (line 1 starts with a {name} byte-order mark); "
                "save it as UTF-8"
            )
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
    """The format of a file: ``.txt``/``.md`` and ``.csv``/``.tsv`` names are taken at their
    word; otherwise the content decides (a leading ``[`` is a JSON array, a leading ``{`` is
    JSONL), then a ``.json``/``.jsonl`` name (JSONL, so the error names the line), else text."""
    suffix = Path(filename).suffix.lower()
    if suffix in (".txt", ".md", ".text"):
        return "text"
    if suffix in (".csv", ".tsv"):
        return "csv"
    head = text[:4096].lstrip(" \t\r\n\ufeff")
    if head.startswith("["):
        return "json"
    if head.startswith("{") or suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    return "text"


# ---- JSON values --------------------------------------------------------------------------


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"duplicate key {dup!r} in an object")
    return obj


def _int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"a number with {len(digits)} digits is too large")
    return int(digits)


_DECODER = json.JSONDecoder(object_pairs_hook=_pairs, parse_int=_int)


def _decode_at(text: str, pos: int) -> tuple[Any, int]:
    """One JSON value starting at ``pos``; its end. Every failure is a ValueError whose message
    says what is wrong (JSONDecodeError keeps its position for the line number)."""
    try:
        return _DECODER.raw_decode(text, pos)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except ValueError as err:  # duplicate keys, huge numbers
        raise ValueError(str(err)) from None


def _json_problem(err: ValueError) -> str:
    if isinstance(err, json.JSONDecodeError):
        return f"invalid JSON ({err.msg} at column {err.colno})"
    return str(err)


# ---- records to chats ---------------------------------------------------------------------


def _text_of(content: Any, where: int | str, notes: Counter[str], check: bool = True) -> str:
    """A message's text: a string, null (empty), or the text parts of a list of parts.

    ``where`` is the message number (or a field name) for the error; ``check`` looks for lone
    surrogates (only possible when the document has ``\\uD8xx``-style escapes).
    """
    if type(content) is str:
        text = content
    elif content is None:
        return ""
    elif isinstance(content, list):
        text = _parts_text(content, where, notes)
    else:
        raise ValueError(f"{_where(where)} has content of type {type(content).__name__}, not text")
    if check and _SURROGATE.search(text):
        raise ValueError(f"{_where(where)} contains an invalid (lone) surrogate character")
    return text


def _where(where: int | str) -> str:
    return f"message {where}" if isinstance(where, int) else where


def _parts_text(content: list[Any], where: int | str, notes: Counter[str]) -> str:
    texts = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and part.get("type", "text") in _TEXT_PARTS:
            if not isinstance(part.get("text"), str):
                raise ValueError(f"{_where(where)} has a text part without a string 'text'")
            texts.append(part["text"])
        elif isinstance(part, dict):
            notes[f"non-text content part skipped ({str(part.get('type'))[:40]})"] += 1
        else:
            raise ValueError(f"{_where(where)} has a content part that is not an object")
    return "\n".join(texts)


def _messages(raw: Any, notes: Counter[str], check: bool = True) -> list[dict[str, str]]:
    if not isinstance(raw, list):
        raise ValueError("the message list is not a list")
    if not raw:
        raise ValueError("the message list is empty")
    out = []
    for i, msg in enumerate(raw, 1):
        if not isinstance(msg, dict):
            raise ValueError(f"message {i} is not an object")
        role_key = "from" if "from" in msg else "role"
        role = msg.get(role_key)
        mapped = ROLES.get(role) if type(role) is str else None
        if mapped is None:
            mapped = ROLES.get(role.strip().lower()) if isinstance(role, str) else None
        if mapped is None:
            known = ", ".join(sorted(ROLES))
            raise ValueError(f"message {i} has unknown {role_key} {role!r} (known: {known})")
        if "value" in msg:
            content = msg["value"]
        else:
            content = msg["content"] if "content" in msg else msg.get("text")
        out.append({"role": mapped, "content": _text_of(content, i, notes, check)})
    return out


def _pair(
    prompt: Any, response: Any, system: Any = None, check: bool = True
) -> list[dict[str, str]]:
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise ValueError("'prompt' and 'response' must be strings")
    for value in (prompt, response, system):
        if check and isinstance(value, str) and _SURROGATE.search(value):
            raise ValueError("a field contains an invalid (lone) surrogate character")
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    if isinstance(system, str) and system:
        messages.insert(0, {"role": "system", "content": system})
    return messages


def chat_of_record(
    record: Any, notes: Counter[str], *, check_surrogates: bool = True
) -> list[dict[str, str]]:
    """The messages of one record in any supported shape; ValueError names what is wrong.

    ``check_surrogates=False`` skips the lone-surrogate scan (for a document that has no
    surrogate escapes, where none can occur).
    """
    check = check_surrogates
    if isinstance(record, list):
        return _messages(record, notes, check)
    if not isinstance(record, dict):
        raise ValueError(f"expected a conversation object, found a {_kind(record)}")
    for key in ("messages", "conversations", "conversation"):
        if key in record:
            messages = _messages(record[key], notes, check)
            system = record.get("system")
            if isinstance(system, str) and system and messages[0]["role"] != "system":
                text = _text_of(system, "the system field", notes, check)
                messages.insert(0, {"role": "system", "content": text})
            return messages
    if "instruction" in record and "output" in record:
        extra = record.get("input")
        prompt = record["instruction"]
        if isinstance(prompt, str) and isinstance(extra, str) and extra.strip():
            prompt = f"{prompt}\n{extra}"
        return _pair(prompt, record["output"], record.get("system"), check)
    if "prompt" in record and ("response" in record or "completion" in record):
        response = record["response"] if "response" in record else record["completion"]
        return _pair(record["prompt"], response, record.get("system"), check)
    keys = ", ".join(repr(k) for k in list(record)[:8]) or "none"
    raise ValueError(
        "expected 'messages', 'conversations' or 'conversation' lists, 'instruction' and "
        f"'output', or 'prompt' and 'response' fields (keys found: {keys})"
    )


def _kind(value: Any) -> str:
    names = {str: "string", int: "number", float: "number", bool: "boolean", list: "list"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


# ---- containers ---------------------------------------------------------------------------


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` split on "\\n" only (a trailing "\\r" dropped), without a copy
    of the whole text as a list."""
    pos, number, size = 0, 1, len(text)
    while pos <= size:
        end = text.find("\n", pos)
        if end < 0:
            end = size
        line = text[pos:end]
        yield number, line[:-1] if line.endswith("\r") else line
        pos, number = end + 1, number + 1


def _jsonl_records(text: str) -> Iterator[tuple[int, Any | ValueError]]:
    for line_no, line in _lines(text):
        stripped = line.strip(" \t")
        if not stripped:
            continue
        if stripped.startswith("\ufeff"):
            yield (
                line_no,
                ValueError(
                    "the line starts with a byte-order mark (U+FEFF); "
                    "save the file as UTF-8 without BOMs"
                ),
            )
            continue
        try:
            value, end = _decode_at(stripped, 0)
            if stripped[end:].strip(" \t"):
                raise ValueError(f"extra data after the JSON value at column {end + 1}")
        except ValueError as err:
            yield line_no, ValueError(_json_problem(err))
            continue
        if not isinstance(value, dict):
            yield line_no, ValueError(f"expected a JSON object, found a {_kind(value)}")
            continue
        yield line_no, value


class _Fatal(Exception):
    """The file cannot be read past this point (a syntax error inside a JSON document)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line, self.message = line, message


def _json_records(text: str) -> Iterator[tuple[int, Any | ValueError]]:
    """The records of one JSON document: an array's elements (or the messages of a single chat
    given as one array of messages), or a single object."""
    pos = _skip_ws(text, 0)
    if text.startswith("\ufeff", pos):
        raise _Fatal(1, "the file starts with two byte-order marks")
    if not text.startswith("[", pos):
        try:
            value, end = _decode_at(text, pos)
        except ValueError as err:
            raise _Fatal(_line_at(err), _json_problem(err)) from None
        _expect_end(text, end)
        if not isinstance(value, dict):
            raise _Fatal(
                1,
                f"the file is JSON but a {_kind(value)}, neither an array of conversations nor "
                "one object per line",
            )
        yield text.count("\n", 0, pos) + 1, value
        return
    yield from _array_elements(text, pos)


def _array_elements(text: str, pos: int) -> Iterator[tuple[int, Any | ValueError]]:
    array_start = pos
    line, counted = 1 + text.count("\n", 0, pos), pos
    pos = _skip_ws(text, pos + 1)
    first = True
    while True:
        line, counted = line + text.count("\n", counted, pos), pos
        if text.startswith("]", pos):
            _expect_end(text, pos + 1)
            return
        if not first:
            if not text.startswith(",", pos):
                raise _Fatal(line, "invalid JSON (expected ',' or ']' between array elements)")
            pos = _skip_ws(text, pos + 1)
            line, counted = line + text.count("\n", counted, pos), pos
        try:
            value, end = _decode_at(text, pos)
        except ValueError as err:
            raise _Fatal(
                _line_at(err, line), _json_problem(err) + "; the rest cannot be read"
            ) from None
        if first and isinstance(value, dict) and _is_message(value):
            # one chat exported as a bare array of messages: the whole array is the record
            try:
                whole, end = _decode_at(text, array_start)
            except ValueError as err:
                raise _Fatal(_line_at(err, line), _json_problem(err)) from None
            yield 1 + text.count("\n", 0, array_start), whole
            _expect_end(text, end)
            return
        yield line, value
        first = False
        pos = _skip_ws(text, end)


def _is_message(value: dict[str, Any]) -> bool:
    return ("role" in value or "from" in value) and not any(
        k in value for k in ("messages", "conversations", "conversation")
    )


def _skip_ws(text: str, pos: int) -> int:
    match = _WS.match(text, pos)
    return match.end() if match else pos


def _expect_end(text: str, pos: int) -> None:
    rest = _skip_ws(text, pos)
    if rest < len(text):
        raise _Fatal(
            text.count("\n", 0, rest) + 1, "invalid JSON (extra data after the top-level value)"
        )


def _line_at(err: ValueError, default: int = 1) -> int:
    if isinstance(err, json.JSONDecodeError):
        return err.lineno
    return default


def _csv_records(text: str) -> Iterator[tuple[int, Any | ValueError]]:
    dialect = "excel-tab" if text.split("\n", 1)[0].count("\t") > 0 else "excel"
    reader = csv.DictReader(io.StringIO(text, newline=""), dialect=dialect)
    fields = {f.strip().lower(): f for f in (reader.fieldnames or [])}
    if "prompt" not in fields or "response" not in fields:
        raise _Fatal(1, "the header needs 'prompt' and 'response' columns")
    try:
        for row in reader:
            if None in row:
                yield reader.line_num, ValueError("more fields than the header has")
                continue
            prompt, response = row.get(fields["prompt"]), row.get(fields["response"])
            if prompt is None or response is None:
                yield reader.line_num, ValueError("missing prompt or response field")
                continue
            yield reader.line_num, {
                "prompt": prompt, "response": response,
                "system": row.get(fields.get("system", "")),
            }  # fmt: skip
    except csv.Error as err:
        raise _Fatal(reader.line_num, f"malformed CSV ({err})") from None


# ---- items --------------------------------------------------------------------------------


def _items_of(
    messages: list[dict[str, str]],
    line: int,
    conversation: int,
    items: list[WorkItem],
    report: IngestReport,
) -> None:
    """Append the conversation's items: one per non-empty assistant message."""
    kept: list[dict[str, str]] = []
    turn = -1
    found = False
    for position, msg in enumerate(messages):
        is_assistant = msg["role"] == "assistant"
        turn += is_assistant
        found |= is_assistant
        if not msg["content"].strip():
            report.empty_messages += 1
            if is_assistant:
                report.assistant_turns += 1
                report.skip(line, conversation, turn, "empty assistant message")
            continue
        kept.append(msg)
        if is_assistant:
            report.assistant_turns += 1
            items.append(
                WorkItem(
                    len(items), line, conversation, turn, messages=list(kept),
                    message_index=position,
                )
            )  # fmt: skip
    if not found:
        report.skip(line, conversation, None, "no assistant message")


def parse_with_report(
    text: str,
    fmt: str,
    source: str = "transcript",
    *,
    max_items: int | None = None,
    skip_invalid: bool = False,
) -> tuple[list[WorkItem], IngestReport]:
    """Validate the whole text; its items in file order and what was found and skipped.

    Raises:
        TranscriptError: a record is invalid (unless ``skip_invalid``), or the file cannot be
            read past a syntax error (always), with the line of each problem.
        UserError: nothing to score, too many items, or an unknown format.
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    report = IngestReport(format=fmt)
    if fmt == "text":
        if not text.strip():
            raise UserError(f"{source} is empty")
        report.conversations = report.to_score = 1
        return [WorkItem(index=0, line=1, conversation=1, turn_index=0, text=text)], report
    records = {"json": _json_records, "jsonl": _jsonl_records, "csv": _csv_records}[fmt](text)
    # lone surrogates come from \uD8xx escapes (or a str built in Python): scan strings only then
    check = bool(_SURROGATE_ESCAPE.search(text) or _SURROGATE.search(text))
    items: list[WorkItem] = []
    try:
        for line, record in records:
            report.conversations += 1
            try:
                if isinstance(record, ValueError):
                    raise record
                messages = chat_of_record(record, report.notes, check_surrogates=check)
            except ValueError as err:
                report.invalid.append((line, str(err)))
                continue
            _items_of(messages, line, report.conversations, items, report)
    except _Fatal as fatal:
        problems = [*report.invalid, (fatal.line, fatal.message)]
        raise TranscriptError(
            source, problems, valid=0, invalid=max(report.conversations, 1)
        ) from None
    report.to_score = len(items)
    _check(report, items, source, max_items, skip_invalid)
    return items, report


def _check(
    report: IngestReport,
    items: list[WorkItem],
    source: str,
    max_items: int | None,
    skip_invalid: bool,
) -> None:
    valid = report.conversations - len(report.invalid)
    if report.invalid and not skip_invalid:
        raise TranscriptError(source, report.invalid, valid=valid, invalid=len(report.invalid))
    if not items:
        if report.conversations == 0:
            raise UserError(f"{source} holds no conversations")
        reasons = Counter(s["reason"] for s in report.skipped)
        reasons.update(reason for _, reason in report.invalid)
        why = ", ".join(f"{n} × {r}" for r, n in reasons.most_common(5))
        raise UserError(f"{source} holds no non-empty assistant turn to score ({why})")
    if max_items is not None and len(items) > max_items:
        raise UserError(
            f"{source} has {len(items)} turns to score; the limit is {max_items} "
            "(TOKENPRISM_UPLOAD_MAX_ITEMS)"
        )


def parse_transcript(
    text: str,
    fmt: str,
    source: str = "transcript",
    *,
    max_items: int | None = None,
    skip_invalid: bool = False,
) -> list[WorkItem]:
    """Validate the whole text and return its items, in file order (see
    :func:`parse_with_report`)."""
    items, _ = parse_with_report(text, fmt, source, max_items=max_items, skip_invalid=skip_invalid)
    return items


def parse_jsonl(text: str, source: str = "transcript") -> list[WorkItem]:
    """JSONL shortcut of :func:`parse_transcript`."""
    return parse_transcript(text, "jsonl", source)
