"""Transcripts that carry the writing model's own log-probabilities (hosted APIs, vLLM, llama.cpp).

Formats, detected from the content (one JSON document, a JSON array, or JSONL):

* a Chat Completions response ``{"choices": [{"message": {"content"}, "logprobs": {"content":
  [{"token", "logprob", "bytes", "top_logprobs": [...]}]}}]}``, alone or logged with its request
  ``{"request": {"messages": [...]}, "response": {...}}``;
* Batch API output lines ``{"custom_id", "response": {"status_code", "body": <response>}}``,
  joined by ``custom_id`` with the batch input file (``{"custom_id", "body": {"messages"}}``)
  when it is given, else with an empty prompt;
* legacy completions ``choices[i] = {"text", "logprobs": {"tokens", "token_logprobs",
  "top_logprobs": [{token: logprob}], "text_offset"}}``;
* chats ``{"messages": [...]}`` whose assistant messages carry a ``logprobs`` field (either
  shape above, or a bare list of token entries).

Tokens come as strings and bytes, not ids: the response text is rebuilt from each token's
``bytes`` (its string when bytes are absent), must equal the message content, and every token
gets the character span its bytes fall in (a multi-byte character split over tokens gives each
piece that character's span). Every problem names its line; nothing is returned unless the
whole file is valid.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tokenprism.analysis.topk import MASS_TOLERANCE
from tokenprism.backend.audit.ingest import TranscriptError, WorkItem
from tokenprism.backend.errors import UserError

FORMAT = "logprobs"
MAX_TOP_K = 100  # APIs return at most 20; vLLM allows more, this bounds memory per token
# A log-probability may exceed 0 by float rounding on some servers; more is invalid input.
LOGPROB_TOLERANCE = 1e-6


@dataclass(frozen=True)
class LogprobItem:
    """One assistant turn with the writing model's per-token log-probabilities.

    Attributes:
        index, line, conversation, turn_index: as :class:`~backend.audit.ingest.WorkItem`.
        messages: the prompt messages followed by the assistant message (the prompt may be
            empty: a batch output uploaded without its input).
        model: the model name the file gives (None when absent).
        kind: ``chat``, ``batch``, ``completions`` or ``messages``.
        tokens: display text of each token (its bytes decoded, invalid pieces replaced).
        offsets: ``(char_start, char_end)`` of each token in the response.
        logprob: ``[n]`` the sampled tokens' log-probabilities.
        top_logprobs: ``[n, k]`` each position's alternatives, most probable first, NaN-padded.
        top_tokens: each position's alternatives' texts, same order.
        in_topk: ``[n]`` True where the sampled token is one of its alternatives.
    """

    index: int
    line: int
    conversation: int
    turn_index: int
    messages: list[dict[str, str]] = field(hash=False)
    model: str | None
    kind: str
    tokens: list[str] = field(hash=False)
    offsets: list[tuple[int, int]] = field(hash=False)
    logprob: np.ndarray = field(hash=False)
    top_logprobs: np.ndarray = field(hash=False)
    top_tokens: list[list[str]] = field(hash=False)
    in_topk: np.ndarray = field(hash=False)

    @property
    def response(self) -> str:
        return self.messages[-1]["content"]

    @property
    def k(self) -> int:
        """The most alternatives any position lists."""
        return int(self.top_logprobs.shape[1])

    def work_item(self) -> WorkItem:
        """The same turn as a plain chat, for a local re-score (``source=model``)."""
        return WorkItem(self.index, self.line, self.conversation, self.turn_index, self.messages)


@dataclass
class _Tokens:
    """Tokens of one turn while parsing."""

    raw: list[bytes] = field(default_factory=list)
    logprob: list[float] = field(default_factory=list)
    top: list[list[tuple[bytes, float]]] = field(default_factory=list)


# ---- records ------------------------------------------------------------------------------


def _loads(text: str) -> Any:
    """``json.loads`` whose hostile-input failures (nesting past the recursion limit, numbers
    past the digit limit) are JSON errors like any other, never a crash of the request."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("invalid JSON (nested too deeply)") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"invalid JSON ({err.msg} at column {err.colno})") from None
    except ValueError as err:  # e.g. an integer over sys.get_int_max_str_digits() digits
        raise ValueError(f"invalid JSON ({err})") from None


def _records(text: str) -> list[tuple[int, Any]]:
    """``(line, record)`` pairs: one JSON document (object or array), else JSONL lines.

    Lines are split on ``\n`` only: U+2028 and the other separators ``str.splitlines`` honours
    are legal inside JSON strings.
    """
    stripped = text.strip()
    if stripped.startswith(("{", "[")):
        try:
            doc = _loads(stripped)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            return [(1, doc)]
        if isinstance(doc, list):
            return [(i, rec) for i, rec in enumerate(doc, 1)]
    out: list[tuple[int, Any]] = []
    for line_no, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                out.append((line_no, _loads(line.removesuffix("\r"))))
            except ValueError as err:
                out.append((line_no, err))
    return out


def _has_logprobs(choice: Any) -> bool:
    return isinstance(choice, dict) and choice.get("logprobs") not in (None, {}, [])


def record_kind(obj: Any) -> str | None:
    """Which logprob format a record is, or None when it carries no logprobs."""
    if not isinstance(obj, dict):
        return None
    if "custom_id" in obj and isinstance(obj.get("response"), dict):
        return "batch"
    if "custom_id" in obj and isinstance(obj.get("body"), dict):
        return "batch_input"
    response = obj.get("response") if "request" in obj else obj
    choices = response.get("choices") if isinstance(response, dict) else None
    if isinstance(choices, list) and choices and all(_has_logprobs(c) for c in choices):
        first = choices[0]
        return "completions" if "text" in first and "message" not in first else "chat"
    messages = obj.get("messages")
    if isinstance(messages, list) and any(
        isinstance(m, dict) and m.get("role") == "assistant" and _has_logprobs(m) for m in messages
    ):
        return "messages"
    return None


def detect_logprobs(text: str) -> bool:
    """True when the file's first record carries logprobs (the rest are validated later)."""
    for _, rec in _records(text)[:1]:
        return record_kind(rec) not in (None, "batch_input")
    return False


def every_turn_has_logprobs(text: str) -> bool:
    """True when every assistant turn of the file has logprobs (``source=logprobs`` default)."""
    recs = _records(text)
    if not recs:
        return False
    for _, rec in recs:
        kind = record_kind(rec)
        if kind is None or kind == "batch_input":
            return False
        if kind == "messages" and not all(
            _has_logprobs(m) for m in rec["messages"] if m.get("role") == "assistant"
        ):
            return False
    return True


# ---- token lists ----------------------------------------------------------------------------


def _logprob(value: Any, what: str) -> float:
    """A finite log-probability <= 0 (a rounding excess over 0 is clipped)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} is not a number")
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"{what} is {x} (not finite)")
    if x > LOGPROB_TOLERANCE:
        raise ValueError(f"{what} is positive ({x}); a log-probability is at most 0")
    return min(x, 0.0)


def _bytes_of(entry: dict[str, Any], what: str) -> bytes:
    """The token's bytes (``bytes`` field when present, else its string as UTF-8)."""
    raw = entry.get("bytes")
    token = entry.get("token")
    if raw is None:
        if not isinstance(token, str):
            raise ValueError(f"{what} has no string 'token' and no 'bytes'")
        return token.encode("utf-8", "surrogatepass")
    if not isinstance(raw, list) or not all(
        isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in raw
    ):
        raise ValueError(f"{what} has 'bytes' that are not a list of integers 0-255")
    return bytes(raw)


def _chat_tokens(content: Any, where: str) -> _Tokens:
    """Tokens of a Chat Completions ``logprobs.content`` list."""
    if not isinstance(content, list):
        raise ValueError(f"{where}: 'logprobs.content' is not a list")
    out = _Tokens()
    for i, entry in enumerate(content, 1):
        what = f"{where} token {i}"
        if not isinstance(entry, dict):
            raise ValueError(f"{what} is not an object")
        out.raw.append(_bytes_of(entry, what))
        out.logprob.append(_logprob(entry.get("logprob"), f"{what} logprob"))
        top = entry.get("top_logprobs") or []
        if not isinstance(top, list) or len(top) > MAX_TOP_K:
            raise ValueError(f"{what}: 'top_logprobs' is not a list of at most {MAX_TOP_K}")
        alts = []
        for j, alt in enumerate(top, 1):
            if not isinstance(alt, dict):
                raise ValueError(f"{what} alternative {j} is not an object")
            alt_what = f"{what} alternative {j}"
            alts.append((_bytes_of(alt, alt_what), _logprob(alt.get("logprob"), alt_what)))
        out.top.append(alts)
    return out


def _legacy_lists(lp: Any, where: str) -> tuple[list[Any], list[Any], list[Any] | None]:
    """``tokens``, ``token_logprobs`` and ``top_logprobs`` of a legacy object, equal lengths."""
    if not isinstance(lp, dict):
        raise ValueError(f"{where}: 'logprobs' is not an object")
    tokens, values, top = lp.get("tokens"), lp.get("token_logprobs"), lp.get("top_logprobs")
    if not isinstance(tokens, list) or not isinstance(values, list):
        raise ValueError(f"{where}: 'tokens' and 'token_logprobs' must be lists")
    if top is not None and not isinstance(top, list):
        raise ValueError(f"{where}: 'top_logprobs' is not a list")
    lengths = {"tokens": len(tokens), "token_logprobs": len(values)}
    if top is not None:
        lengths["top_logprobs"] = len(top)
    offsets = lp.get("text_offset")
    if offsets is not None:
        lengths["text_offset"] = len(offsets) if isinstance(offsets, list) else -1
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{k} {v}" for k, v in lengths.items())
        raise ValueError(f"{where}: the logprob lists have unequal lengths ({shown})")
    return tokens, values, top


def _legacy_tokens(lp: Any, where: str) -> _Tokens:
    """Tokens of a legacy completions ``logprobs`` object (parallel lists)."""
    tokens, values, top = _legacy_lists(lp, where)
    offsets = lp.get("text_offset")
    out = _Tokens()
    for i, token in enumerate(tokens):
        what = f"{where} token {i + 1}"
        if not isinstance(token, str):
            raise ValueError(f"{what} is not a string")
        if values[i] is None:
            raise ValueError(f"{what} has a null logprob (echoed prompts are not supported)")
        out.raw.append(token.encode("utf-8", "surrogatepass"))
        out.logprob.append(_logprob(values[i], f"{what} logprob"))
        alts = (top[i] if top is not None else None) or {}
        if not isinstance(alts, dict) or len(alts) > MAX_TOP_K:
            raise ValueError(f"{what}: top_logprobs entry is not an object of at most {MAX_TOP_K}")
        out.top.append(
            [
                (t.encode("utf-8", "surrogatepass"), _logprob(v, f"{what} alternative {t!r}"))
                for t, v in alts.items()
            ]
        )
    if isinstance(offsets, list):
        _check_offsets(offsets, out.raw, where)
    return out


def _check_offsets(offsets: list[Any], raw: list[bytes], where: str) -> None:
    """``text_offset`` must step by each token's length in characters."""
    if not offsets:
        return
    pos = offsets[0]
    for i, (off, piece) in enumerate(zip(offsets, raw, strict=True), 1):
        if not isinstance(off, int) or off != pos:
            raise ValueError(f"{where} token {i}: text_offset {off!r} does not follow the tokens")
        pos += len(piece.decode("utf-8", "replace"))


def _char_spans(raw: list[bytes]) -> list[tuple[int, int]]:
    """Character span of each token's bytes in the decoded concatenation (valid UTF-8)."""
    full = b"".join(raw)
    char_of = np.zeros(len(full) + 1, dtype=np.int64)
    chars = 0
    for b_index, byte in enumerate(full):
        char_of[b_index] = chars - (1 if (byte & 0xC0) == 0x80 else 0)
        if (byte & 0xC0) != 0x80:
            chars += 1
    char_of[len(full)] = chars
    spans, pos = [], 0
    for piece in raw:
        if piece:
            spans.append((int(char_of[pos]), int(char_of[pos + len(piece) - 1]) + 1))
        else:
            spans.append((int(char_of[pos]), int(char_of[pos])))
        pos += len(piece)
    return spans


def _turn_arrays(toks: _Tokens, content: str, where: str) -> dict[str, Any]:
    """Validate one turn's tokens against its content; the arrays a :class:`LogprobItem` holds."""
    full = b"".join(toks.raw)
    try:
        rebuilt = full.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{where}: the token bytes are not UTF-8 at byte {err.start}") from None
    if rebuilt != content:
        at = next(
            (i for i, (a, b) in enumerate(zip(rebuilt, content, strict=False)) if a != b),
            min(len(rebuilt), len(content)),
        )
        raise ValueError(
            f"{where}: the tokens do not rebuild the message content (they differ at character "
            f"{at}: {rebuilt[at : at + 12]!r} vs {content[at : at + 12]!r})"
        )
    if not toks.raw:
        raise ValueError(f"{where}: no tokens")
    n = len(toks.raw)
    k = max((len(t) for t in toks.top), default=0)
    top = np.full((n, k), np.nan)
    texts: list[list[str]] = []
    inside = np.zeros(n, dtype=bool)
    for i, alts in enumerate(toks.top):
        alts = sorted(alts, key=lambda a: -a[1])
        top[i, : len(alts)] = [a[1] for a in alts]
        texts.append([a[0].decode("utf-8", "replace") for a in alts])
        inside[i] = any(a[0] == toks.raw[i] for a in alts)
        _check_mass(alts, toks.raw[i], toks.logprob[i], bool(inside[i]), f"{where} token {i + 1}")
    return {
        "tokens": [t.decode("utf-8", "replace") for t in toks.raw],
        "offsets": _char_spans(toks.raw),
        "logprob": np.asarray(toks.logprob, dtype=np.float64),
        "top_logprobs": top,
        "top_tokens": texts,
        "in_topk": inside,
    }


def _check_mass(
    alts: list[tuple[bytes, float]], raw: bytes, logprob: float, inside: bool, what: str
) -> None:
    """The listed probabilities must fit in 1, and an unlisted token must not beat the k-th."""
    mass = sum(math.exp(a[1]) for a in alts) + (0.0 if inside else math.exp(logprob))
    if mass > 1.0 + MASS_TOLERANCE:
        raise ValueError(f"{what}: the top-k probabilities sum to {mass:.4f}, above 1")
    if inside:
        listed = next(a[1] for a in alts if a[0] == raw)
        if abs(listed - logprob) > 1e-3 + 1e-3 * abs(logprob):
            raise ValueError(
                f"{what}: logprob {logprob} differs from its own top-k entry ({listed})"
            )
    elif alts and logprob > alts[-1][1] + 1e-3:
        raise ValueError(
            f"{what}: the token is outside its top-k yet more probable than the k-th entry"
        )


# ---- records to turns ---------------------------------------------------------------------

_Turn = tuple[
    list[dict[str, str]], str, _Tokens, str | None, str
]  # prompt, content, tokens, model, kind


def _prompt_messages(raw: Any, where: str) -> list[dict[str, str]]:
    """Role/content messages of a request (text parts of list contents joined)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ValueError(f"{where}: 'messages' is not a list")
    out = []
    for i, msg in enumerate(raw, 1):
        if not isinstance(msg, dict) or msg.get("role") not in ("system", "user", "assistant"):
            if isinstance(msg, dict) and msg.get("role") in ("tool", "developer"):
                continue
            raise ValueError(f"{where}: message {i} has no known role")
        content = msg.get("content")
        if isinstance(content, list):
            content = "".join(
                p.get("text", "") for p in content if isinstance(p, dict) and "text" in p
            )
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise ValueError(f"{where}: message {i} has no string content")
        out.append({"role": msg["role"], "content": content})
    return out


def _response_turns(
    response: Any, prompt: list[dict[str, str]], where: str, kind: str
) -> list[_Turn]:
    """Turns of a Chat Completions or legacy completions response, one per choice."""
    if not isinstance(response, dict) or not isinstance(response.get("choices"), list):
        raise ValueError(f"{where}: the response has no 'choices' list")
    model = response.get("model") if isinstance(response.get("model"), str) else None
    turns: list[_Turn] = []
    for c, choice in enumerate(response["choices"], 1):
        at = f"{where} choice {c}"
        if not isinstance(choice, dict) or not _has_logprobs(choice):
            raise ValueError(f"{at} has no logprobs")
        if isinstance(choice.get("message"), dict):
            content = choice["message"].get("content")
            if not isinstance(content, str):
                raise ValueError(f"{at}: message content is not a string")
            lp = choice["logprobs"]
            toks = _chat_tokens(lp.get("content") if isinstance(lp, dict) else lp, at)
            turns.append((prompt, content, toks, model, kind))
        elif isinstance(choice.get("text"), str):
            text_prompt = prompt
            toks = _legacy_tokens(choice["logprobs"], at)
            turns.append((text_prompt, choice["text"], toks, model, "completions"))
        else:
            raise ValueError(f"{at} has neither 'message' nor 'text'")
    return turns


def _message_turns(obj: dict[str, Any], where: str) -> list[_Turn]:
    """Assistant messages of a ``messages`` chat that carry ``logprobs``."""
    turns: list[_Turn] = []
    history: list[dict[str, str]] = []
    model = obj.get("model") if isinstance(obj.get("model"), str) else None
    for i, msg in enumerate(obj["messages"], 1):
        current = _prompt_messages([msg], f"{where} message {i}")
        if not current:
            continue
        if msg.get("role") == "assistant":
            if not _has_logprobs(msg):
                raise ValueError(f"{where} message {i}: an assistant message without logprobs")
            lp = msg["logprobs"]
            at = f"{where} message {i}"
            if isinstance(lp, dict) and "tokens" in lp:
                toks = _legacy_tokens(lp, at)
            else:
                toks = _chat_tokens(lp.get("content") if isinstance(lp, dict) else lp, at)
            turns.append((list(history), current[0]["content"], toks, model, "messages"))
        history += current
    return turns


def _batch_inputs(text: str, source: str) -> dict[str, list[dict[str, str]]]:
    """``custom_id -> prompt messages`` of a Batch API input file."""
    prompts: dict[str, list[dict[str, str]]] = {}
    problems: list[tuple[int, str]] = []
    for line, rec in _records(text):
        try:
            if isinstance(rec, ValueError):
                raise rec
            if record_kind(rec) != "batch_input" or not isinstance(rec["custom_id"], str):
                raise ValueError("expected a batch input line {custom_id, body: {messages}}")
            if rec["custom_id"] in prompts:
                raise ValueError(f"custom_id {rec['custom_id']!r} appears twice")
            prompts[rec["custom_id"]] = _prompt_messages(rec["body"].get("messages"), "body")
        except ValueError as err:
            problems.append((line, str(err)))
    if problems:
        raise TranscriptError(f"{source} (batch input)", problems)
    return prompts


def _record_turns(rec: Any, prompts: dict[str, list[dict[str, str]]] | None) -> list[_Turn]:
    """Turns of one record; ``prompts`` is the batch input by custom_id when one was given."""
    if isinstance(rec, ValueError):
        raise rec
    kind = record_kind(rec)
    if kind == "batch":
        response = rec["response"]
        status = response.get("status_code")
        if status != 200 or rec.get("error"):
            raise ValueError(f"batch request failed (status {status}, error {rec.get('error')!r})")
        cid = rec.get("custom_id")
        if prompts is not None and cid not in prompts:
            raise ValueError(f"custom_id {cid!r} is not in the uploaded batch input file")
        prompt = prompts[cid] if prompts is not None else []
        return _response_turns(response.get("body"), prompt, "batch body", "batch")
    if kind in ("chat", "completions"):
        if "request" in rec:
            request = rec["request"] if isinstance(rec["request"], dict) else {}
            prompt = _prompt_messages(request.get("messages"), "request")
            if not prompt and isinstance(request.get("prompt"), str):
                prompt = [{"role": "user", "content": request["prompt"]}]
            return _response_turns(rec["response"], prompt, "response", kind)
        return _response_turns(rec, [], "response", kind)
    if kind == "messages":
        return _message_turns(rec, "chat")
    if kind == "batch_input":
        raise ValueError("a batch input line; upload it with its batch output (batch_input)")
    raise ValueError(
        "no logprobs: expected a chat completion, batch output line, legacy "
        "completion or messages with logprobs"
    )


def parse_logprobs(
    text: str,
    source: str = "transcript",
    *,
    batch_input: str | None = None,
    max_items: int | None = None,
) -> list[LogprobItem]:
    """Validate the whole file and return its turns with their logprobs, in file order."""
    prompts = _batch_inputs(batch_input, source) if batch_input is not None else None
    items: list[LogprobItem] = []
    problems: list[tuple[int, str]] = []
    for conversation, (line, rec) in enumerate(_records(text), 1):
        try:
            turns = _record_turns(rec, prompts)
            built = [(t, _turn_arrays(t[2], t[1], f"turn {j + 1}")) for j, t in enumerate(turns)]
        except ValueError as err:
            problems.append((line, str(err)))
            continue
        for turn_index, (turn, arrays) in enumerate(built):
            prompt, content, _, model, kind = turn
            items.append(
                LogprobItem(
                    index=len(items),
                    line=line,
                    conversation=conversation,
                    turn_index=turn_index,
                    messages=[*prompt, {"role": "assistant", "content": content}],
                    model=model,
                    kind=kind,
                    **arrays,
                )
            )
    if problems:
        raise TranscriptError(source, problems)
    if not items:
        raise UserError(f"{source} holds no turns with logprobs")
    if max_items is not None and len(items) > max_items:
        raise UserError(
            f"{source} has {len(items)} turns; the limit is {max_items} "
            "(TOKENPRISM_UPLOAD_MAX_ITEMS)"
        )
    return items
