"""Verifiable rewards for sampled responses: parse a spec once, score each response.

A verifier turns one response into a :class:`Verdict` (reward 1.0 or 0.0, the answer it found,
and a one-line reason). Specs are strings so that they fit in a CLI flag or a form field:

* ``number:42`` - the extracted number equals 42 within ``1e-6`` absolute + ``1e-6`` relative
  (``|x - 42| <= 1e-6 + 1e-6 * 42``); ``number:42@0.01`` sets an absolute tolerance of 0.01 and
  no relative one. The target may use the same notations as answers (``1,234``, ``-5``, ``3/4``).
* ``exact:Paris`` - the extracted answer equals ``Paris`` after normalisation on both sides
  (case-folded, runs of whitespace collapsed to one space, surrounding punctuation stripped).
  Responses with no answer marker are compared by their last non-empty line, because short
  answers ("Paris.") usually come without one.
* ``regex:PATTERN`` - ``PATTERN`` is found anywhere in the response. User patterns run on RE2
  (``google-re2``), whose matching is linear in the text and whose compiled program is bounded
  in memory, so no pattern can hang or bloat the process (backtracking engines - the stdlib
  ``re``, ``regex`` - can, and their timeouts do not cover compilation: ``(((a{100}){100}){100})``
  grew a server by 1 GB). RE2 syntax is Perl's without backreferences and lookaround.
  Patterns are limited to 500 characters and to :data:`MAX_REPEAT_EXPANSION` once counted
  repeats are expanded (:func:`repeat_expansion`); both refusals name the problem.
* ``choice:B`` - a multiple-choice letter A-J (see :func:`extract_choice`).

Nothing is ever evaluated as code.

Answer extraction (:func:`extract_answer`) tries, in priority order: the last GSM8K ``#### X``
line, the last complete ``\\boxed{...}`` (nested braces allowed), the last "answer is X" /
"Answer: X" phrase, and - for numeric answers only - the last number in the text. A span holding
``=`` keeps what follows the last one ("x = 3 + 4 = 7" -> "7"); inside the chosen span
:func:`parse_number` reads the *first* number, since the span starts at the answer ("answer is
12 apples for 3 people" -> 12). So a response with several numbers is scored by its
marked answer if it has one, else by its last number.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import re2

MAX_PATTERN_LEN = 500
MAX_REPEAT_EXPANSION = 10_000
REGEX_MAX_MEM = 8 << 20  # bytes RE2 may use for one compiled pattern
DEFAULT_TOL = 1e-6
CHOICE_LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class Verdict:
    """Outcome of one verification.

    Attributes:
        reward: 1.0 when the response is correct, else 0.0.
        extracted: the answer found in the response; None when none was found.
        reason: short human-readable explanation, e.g. ``"answer 42 == 42"``.
    """

    reward: float
    extracted: str | None
    reason: str


class Verifier(Protocol):
    """Scores a response; ``spec`` is the string it was parsed from."""

    @property
    def spec(self) -> str: ...

    def __call__(self, response: str) -> Verdict: ...


# --- numbers -------------------------------------------------------------------------------

_UNSIGNED = r"(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?"
# The sign is only a sign where it cannot be a binary minus ("5-3" is 5 and 3, not 5 and -3),
# hence the look-behind; U+2212 is the minus sign models and LaTeX renderers emit.
_NUMBER = re.compile(
    rf"(?<![\w.)\]])(?P<sign>[-+\u2212])?(?P<num>{_UNSIGNED})"
    rf"(?:\s*/\s*(?P<den>{_UNSIGNED}))?(?P<pct>\s?%)?"
)
_FRAC = re.compile(
    r"(?P<sign>[-\u2212])?\s*\\[dt]?frac\s*\{\s*(?P<num>[^{}]*?)\s*\}\s*\{\s*(?P<den>[^{}]*?)\s*\}"
)
_PLAIN = re.compile(rf"(?P<sign>[-+\u2212])?(?P<num>{_UNSIGNED})")


def _latex_to_plain(text: str) -> str:
    # LaTeX spellings of thousands separators, thin spaces and percent signs.
    for old, new in (("{,}", ","), ("\\!", ""), ("\\,", ""), ("\\%", "%"), ("\\$", "$")):
        text = text.replace(old, new)
    return text


def _to_float(num: str, sign: str | None) -> float:
    value = float(num.replace(",", ""))
    return -value if sign in ("-", "\u2212") else value


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else _finite(num / den)


def _finite(x: float) -> float | None:
    # float("1e999") is inf rather than an error; an infinite answer matches nothing sensibly.
    return x if math.isfinite(x) else None


def _first_number(text: str) -> tuple[float | None, int, int] | None:
    """The first number in ``text`` as ``(value, start, end)``; value None if malformed."""
    plain = _NUMBER.search(text)
    frac = _FRAC.search(text)
    if frac is not None and (plain is None or frac.start() <= plain.start()):
        num, den = _PLAIN.fullmatch(frac["num"]), _PLAIN.fullmatch(frac["den"])
        if num is None or den is None:
            return None, frac.start(), frac.end()
        sign = -1.0 if frac["sign"] else 1.0
        ratio = _ratio(_to_float(num["num"], num["sign"]), _to_float(den["num"], den["sign"]))
        return (None if ratio is None else sign * ratio), frac.start(), frac.end()
    if plain is None:
        return None
    value = _to_float(plain["num"], plain["sign"])
    if plain["den"] is None:
        return _finite(value), plain.start(), plain.end()
    return _ratio(value, _to_float(plain["den"], None)), plain.start(), plain.end()


def parse_number(text: str) -> float | None:
    """The first number written in ``text``, or None.

    Understands thousands separators (``1,234``), decimals (``3.5``, ``.5``), exponents
    (``1e-3``), signs including the unicode minus (``-5``, ``\u22125``), fractions (``3/4``,
    ``\\frac{3}{4}``), percentages (``50%`` reads as 50) and a trailing period (``42.``).
    A fraction with a zero denominator, or a value that overflows a float, is not a number.
    """
    found = _first_number(_latex_to_plain(text))
    return None if found is None else found[0]


def _parse_target(text: str) -> float:
    """A spec's target: the whole string must be one number."""
    plain = _latex_to_plain(text.strip()).rstrip(".").strip()
    found = _first_number(plain)
    if found is None or found[0] is None or found[1] != 0 or found[2] != len(plain):
        raise ValueError(f"number target {text!r} is not a number")
    return found[0]


def _last_number_span(text: str) -> str | None:
    plain = _latex_to_plain(text)
    spans = [m for m in _NUMBER.finditer(plain) if parse_number(m[0]) is not None]
    return spans[-1][0] if spans else None


# --- answer extraction -----------------------------------------------------------------------

_GSM8K = re.compile(r"^[ \t]*####[ \t]*(?P<ans>[^\n]*)", re.MULTILINE)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
# The answer runs to the end of its sentence (., ! or ? before whitespace; "3.5" does not end
# one) or line, lazily, so that a later "answer is" on the same line is a match of its own.
_ANSWER = re.compile(
    r"(?i:\banswer\b)(?:[ \t]+(?i:is)\b[ \t]*:?|[ \t]*:)\s*(?P<ans>.*?)(?:[.!?](?=\s|$)|$)",
    re.MULTILINE,
)
_LATEX_WRAPPER = re.compile(r"^\\(?:text|textbf|mathrm|mathbf|mbox)\s*\{(?P<inner>.*)\}$", re.S)


# Extraction strips only sentence punctuation, quotes and markdown/LaTeX delimiters: signs,
# brackets, backslashes and percent signs are part of answers like "-5", "\\frac{1}{2}", "50%".
_EXTRACT_EDGES = frozenset(".,;:!?\"'`*_$\u201c\u201d\u2018\u2019\u00ab\u00bb")


def _is_extract_edge(ch: str) -> bool:
    return ch.isspace() or ch in _EXTRACT_EDGES


def _is_normalise_edge(ch: str) -> bool:
    # Any unicode punctuation except dashes, so that "exact:-5" does not accept "5".
    cat = unicodedata.category(ch)
    return ch.isspace() or (cat.startswith("P") and cat != "Pd") or ch in "$`^~|"


def _strip_edges(text: str, is_edge: Callable[[str], bool] = _is_extract_edge) -> str:
    start, end = 0, len(text)
    while start < end and is_edge(text[start]):
        start += 1
    while end > start and is_edge(text[end - 1]):
        end -= 1
    return text[start:end]


def _boxed_contents(text: str) -> list[str]:
    """Contents of every complete ``\\boxed{...}``, in order; truncated ones are skipped."""
    out: list[str] = []
    for m in _BOXED.finditer(text):
        depth = 1
        for i in range(m.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                out.append(text[m.end() : i])
                break
    return out


def _unwrap_latex(text: str) -> str:
    m = _LATEX_WRAPPER.match(text.strip())
    return m["inner"] if m else text


def extract_answer(text: str, *, numeric: bool = False) -> str | None:
    """The final answer written in ``text`` (stripped of surrounding punctuation), or None.

    Priority: the last ``#### X`` line (GSM8K), the last complete ``\\boxed{...}`` (nested
    braces allowed; an outer ``\\text{}`` is unwrapped), the last "answer is X" / "Answer: X"
    (up to the end of its sentence or line). A candidate holding ``=`` keeps what follows the last
    one ("x = 5" -> "5"). With ``numeric=True`` a candidate only counts if it
    contains a number (so "the answer is as follows: ..." does not hide a later result), and when
    none does the last number in the text is returned.
    """
    tiers: list[list[str]] = [
        [m["ans"] for m in _GSM8K.finditer(text)],
        [_unwrap_latex(b) for b in _boxed_contents(text)],
        [m["ans"] for m in _ANSWER.finditer(text)],
    ]
    for tier in tiers:
        for candidate in reversed(tier):
            # "answer is 3 + 4 = 7": the result follows the last "=".
            answer = _strip_edges(candidate.rpartition("=")[2])
            if answer and (not numeric or parse_number(answer) is not None):
                return answer
    return _last_number_span(text) if numeric else None


_CHOICE_MARKER = re.compile(
    r"(?i:\banswer\b)(?:[ \t]+(?i:is)\b[ \t]*:?|[ \t]*:)[\s*_]*"
    r"(?:(?i:option|choice)[ \t]*)?\(?(?P<letter>[A-J])\)?(?![A-Za-z0-9])"
)
_CHOICE_OPTIONS = (
    re.compile(r"\((?P<letter>[A-J])\)"),
    re.compile(r"(?<![A-Za-z0-9(])(?P<letter>[A-J])\)"),
    re.compile(r"(?<![A-Za-z0-9])(?P<letter>[A-J])[\s.*_]*\Z"),
)


def extract_choice(text: str) -> str | None:
    """The multiple-choice letter (A-J) a response picks, or None.

    The first explicit marker wins ("answer is (B)", "Answer: B", "The answer is option C");
    a marker not followed by a letter ("the answer is not obvious") does not count. Without one,
    the last standalone option wins: ``(B)``, ``B)``, or a lone capital letter ending the text.
    Only capitals count, so the article "a" is never read as option A.
    """
    marker = _CHOICE_MARKER.search(text)
    if marker is not None:
        return marker["letter"]
    hits = [m for p in _CHOICE_OPTIONS for m in p.finditer(text)]
    return max(hits, key=lambda m: m.start())["letter"] if hits else None


# --- verifiers -----------------------------------------------------------------------------


def _fmt(x: float) -> str:
    return f"{x:.12g}"


@dataclass(frozen=True)
class NumberVerifier:
    """Numeric answer within ``atol + rtol * |target|``."""

    spec: str
    target: float
    atol: float = DEFAULT_TOL
    rtol: float = DEFAULT_TOL

    def __call__(self, response: str) -> Verdict:
        answer = extract_answer(response, numeric=True)
        if answer is None:
            return Verdict(0.0, None, "no number found")
        value = parse_number(answer)
        if value is None:  # unreachable with numeric=True, kept for safety
            return Verdict(0.0, answer, f"answer {answer!r} is not a number")
        ok = abs(value - self.target) <= self.atol + self.rtol * abs(self.target)
        op = "==" if ok else "!="
        return Verdict(float(ok), answer, f"answer {_fmt(value)} {op} {_fmt(self.target)}")


def normalise_text(text: str) -> str:
    """Case-folded, whitespace-collapsed, surrounding punctuation stripped (``exact:``)."""
    return _strip_edges(" ".join(text.casefold().split()), _is_normalise_edge)


@dataclass(frozen=True)
class ExactVerifier:
    """Normalised string equality with the extracted answer (see :func:`normalise_text`)."""

    spec: str
    target: str

    def __call__(self, response: str) -> Verdict:
        answer = extract_answer(response)
        if answer is None:
            lines = [line for line in response.splitlines() if _strip_edges(line)]
            answer = _strip_edges(lines[-1]) if lines else None
        if answer is None:
            return Verdict(0.0, None, "no answer found")
        got = normalise_text(answer)
        op = "==" if got == self.target else "!="
        return Verdict(float(got == self.target), answer, f"answer {got!r} {op} {self.target!r}")


def _class_end(pattern: str, i: int) -> int:
    """Index just past the character class opening at ``pattern[i] == "["``."""
    n, j = len(pattern), i + 1
    if j < n and pattern[j] == "^":
        j += 1
    if j < n and pattern[j] == "]":
        j += 1
    while j < n and pattern[j] != "]":
        j += 2 if pattern[j] == "\\" else 1
    return j + 1


def _counted_repeat(pattern: str, i: int) -> tuple[int, int] | None:
    """``(times, index past "}")`` for a counted repeat opening at ``pattern[i] == "{"``; None
    when the brace is a literal. ``{m}`` -> m copies, ``{m,n}`` -> n, ``{m,}`` -> m + 1 (m and a
    star)."""
    close = pattern.find("}", i)
    body = pattern[i + 1 : close] if close > 0 else ""
    low, comma, high = body.partition(",")
    if close > 0 and low.strip().isdigit() and (not high.strip() or high.strip().isdigit()):
        times = int(high) if high.strip() else int(low) + (1 if comma else 0)
        return times, close + 1
    return None


def repeat_expansion(pattern: str) -> int:
    """About how many atoms ``pattern`` holds once every counted repeat ``{m,n}`` is written
    out (``(a{100}){100}`` -> 10,000): nested counted repeats multiply. An upper-bound estimate
    (alternatives add up, ``*``/``+``/``?`` count once, a class or an escape is one atom).
    """
    frames: list[list[int]] = [[0, 0]]  # per open group: [total size, size of the last item]
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            i += 2
            frames[-1][0] += 1
            frames[-1][1] = 1
            continue
        if c == "[":
            i = _class_end(pattern, i)
            frames[-1][0] += 1
            frames[-1][1] = 1
            continue
        if c == "(":
            frames.append([0, 0])
        elif c == ")" and len(frames) > 1:
            size = max(frames.pop()[0], 1)
            frames[-1][0] += size
            frames[-1][1] = size
        elif c == "{" and (repeat := _counted_repeat(pattern, i)) is not None:
            times, i = repeat
            frames[-1][0] += frames[-1][1] * max(times - 1, 0)
            frames[-1][1] *= max(times, 1)
            continue
        elif c not in "*+?|^$":
            frames[-1][0] += 1
            frames[-1][1] = 1
        i += 1
    while len(frames) > 1:  # unclosed groups: RE2 refuses them anyway
        size = frames.pop()[0]
        frames[-1][0] += size
    return frames[0][0]


def compile_user_regex(pattern: str, what: str = "regex") -> re2._Regexp:
    """Compile a user-supplied pattern on RE2 within the limits above, or ``ValueError`` naming
    the problem (too long, repeats that expand too far, syntax RE2 does not have)."""
    if len(pattern) > MAX_PATTERN_LEN:
        raise ValueError(
            f"{what} pattern is {len(pattern)} characters; the limit is {MAX_PATTERN_LEN}"
        )
    size = repeat_expansion(pattern)
    if size > MAX_REPEAT_EXPANSION:
        raise ValueError(
            f"{what} pattern expands to about {size:,} atoms once its counted repeats are "
            f"written out (nested repeats multiply); the limit is {MAX_REPEAT_EXPANSION:,}"
        )
    options = re2.Options()
    options.max_mem = REGEX_MAX_MEM
    options.log_errors = False
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise ValueError(f"invalid {what} {pattern!r}: {detail}") from None


@dataclass(frozen=True)
class RegexVerifier:
    """``pattern`` (an RE2 pattern, linear-time) found anywhere in the response."""

    spec: str
    pattern: re2._Regexp

    def __call__(self, response: str) -> Verdict:
        m = self.pattern.search(response)
        if m is None:
            return Verdict(0.0, None, "pattern not found")
        shown = m[0] if len(m[0]) <= 60 else m[0][:57] + "..."
        return Verdict(1.0, m[0], f"pattern matched {shown!r}")


@dataclass(frozen=True)
class ChoiceVerifier:
    """Multiple-choice letter (see :func:`extract_choice`)."""

    spec: str
    letter: str

    def __call__(self, response: str) -> Verdict:
        got = extract_choice(response)
        if got is None:
            return Verdict(0.0, None, "no choice letter found")
        op = "==" if got == self.letter else "!="
        return Verdict(float(got == self.letter), got, f"answer {got} {op} {self.letter}")


def _number(spec: str, arg: str) -> Verifier:
    target_text, at, tol_text = arg.rpartition("@") if "@" in arg else (arg, "", "")
    target = _parse_target(target_text)
    if not at:
        return NumberVerifier(spec, target)
    try:
        tol = float(tol_text)
    except ValueError:
        raise ValueError(f"tolerance {tol_text!r} in {spec!r} is not a number") from None
    if not math.isfinite(tol) or tol < 0:
        raise ValueError(f"tolerance in {spec!r} must be a finite number >= 0")
    return NumberVerifier(spec, target, atol=tol, rtol=0.0)


def _exact(spec: str, arg: str) -> Verifier:
    target = normalise_text(arg)
    if not target:
        raise ValueError(f"exact target in {spec!r} is empty after normalisation")
    return ExactVerifier(spec, target)


def _regex(spec: str, arg: str) -> Verifier:
    return RegexVerifier(spec, compile_user_regex(arg))


def _choice(spec: str, arg: str) -> Verifier:
    letter = arg.strip().upper()
    if len(letter) != 1 or letter not in CHOICE_LETTERS:
        raise ValueError(f"choice target {arg!r} must be one letter A-J")
    return ChoiceVerifier(spec, letter)


@dataclass(frozen=True)
class VerifierKind:
    """One ``kind:`` of verifier spec.

    Attributes:
        name: the spec prefix (``number`` in ``number:42``).
        build: ``(spec, argument) -> Verifier``; raises ValueError on a bad argument.
        example: a spec of this kind, for help texts and the registry test.
        verbatim: pass the argument unstripped (a regex's spaces are part of the pattern).
    """

    name: str
    build: Callable[[str, str], Verifier]
    example: str
    verbatim: bool = False


_KINDS: dict[str, VerifierKind] = {
    k.name: k
    for k in (
        VerifierKind("number", _number, "number:42"),
        VerifierKind("exact", _exact, "exact:Paris"),
        VerifierKind("regex", _regex, r"regex:\bParis\b", verbatim=True),
        VerifierKind("choice", _choice, "choice:B"),
    )
}


def verifier_kinds() -> list[VerifierKind]:
    """Every verifier kind, in the order help texts list them."""
    return list(_KINDS.values())


def parse_verifier(spec: str) -> Verifier:
    """Build a verifier from ``kind:argument``; ValueError says what is wrong with a bad spec.

    Kinds: ``number:42``, ``number:42@0.01``, ``exact:Paris``, ``regex:PATTERN``, ``choice:B``.
    The regex argument is used verbatim (spaces included); the others are stripped.
    """
    name, colon, arg = spec.partition(":")
    name = name.strip().lower()
    if not colon:
        raise ValueError(f"verifier spec {spec!r} needs the form kind:argument, e.g. number:42")
    if name not in _KINDS:
        known = ", ".join(_KINDS)
        raise ValueError(f"unknown verifier kind {name!r} in {spec!r}; known kinds: {known}")
    kind = _KINDS[name]
    argument = arg if kind.verbatim else arg.strip()
    if not argument:
        raise ValueError(f"verifier spec {spec!r} has an empty argument")
    return kind.build(spec, argument)
