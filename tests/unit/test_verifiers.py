"""Verifiable rewards: answer extraction, number parsing and each spec kind, on hand cases."""

from __future__ import annotations

import pytest

from tokenprism.analysis.verifiers import (
    Verdict,
    extract_answer,
    extract_choice,
    normalise_text,
    parse_number,
    parse_verifier,
    verifier_kinds,
)

# --- parse_number ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("42", 42.0),
        ("1,234", 1234.0),
        ("1,234,567.5", 1234567.5),
        ("3.25", 3.25),
        (".5", 0.5),
        ("\u22125", -5.0),  # unicode minus
        ("-5", -5.0),
        ("+7", 7.0),
        ("3/4", 0.75),
        ("-3/4", -0.75),
        ("50%", 50.0),
        ("42.", 42.0),
        ("1e-3", 0.001),
        ("\\frac{3}{4}", 0.75),
        ("-\\dfrac{1}{2}", -0.5),
        ("\\frac{-6}{4}", -1.5),
        ("1{,}000", 1000.0),
        ("$1,234", 1234.0),
        ("x = -2", -2.0),
        ("12 apples for 3 people", 12.0),  # the first number
        ("5-3", 5.0),  # a binary minus is not a sign: 5, then 3
        ("12,34", 12.0),  # not a thousands group
    ],
)
def test_parse_number(text: str, expected: float) -> None:
    assert parse_number(text) == pytest.approx(expected, rel=1e-12, abs=0)


@pytest.mark.parametrize("text", ["", "no digits here", "3/0", "\\frac{1}{0}", "v2", "1e999"])
def test_parse_number_none(text: str) -> None:
    assert parse_number(text) is None


# --- extract_answer --------------------------------------------------------------------------


def test_gsm8k_marker_takes_precedence_over_everything() -> None:
    text = "The answer is 5. Also \\boxed{6}.\n#### 1,234\nThe answer is 7."
    assert extract_answer(text) == "1,234"
    assert extract_answer(text, numeric=True) == "1,234"


def test_last_boxed_with_nested_braces() -> None:
    text = "First \\boxed{1}, then \\boxed{\\frac{3}{\\sqrt{16}}} so the answer is 9."
    assert extract_answer(text) == "\\frac{3}{\\sqrt{16}}"
    assert parse_verifier("number:0.75")(text).reward == 0.0  # \sqrt is not a plain number
    text = "so \\boxed{\\frac{1}{4}} and finally \\boxed{\\text{Paris}}"
    assert extract_answer(text) == "Paris"


def test_truncated_boxed_is_skipped() -> None:
    assert extract_answer("\\boxed{12} then \\boxed{13") == "12"


def test_answer_phrase_last_occurrence_up_to_sentence_end() -> None:
    text = "The answer is 4. Wait, no: the answer is 5. Done."
    assert extract_answer(text) == "5"
    assert extract_answer("Final Answer: Paris.\nThanks") == "Paris"
    assert extract_answer("Answer:\n42") == "42"
    assert extract_answer("The answer is 3.5.") == "3.5"
    assert extract_answer("So the answer is x = 3 + 4 = 7") == "7"


def test_number_fallback_is_the_last_number() -> None:
    text = "We have 12 apples, eat 3, buy 1,000 more and end with 1,009"
    assert extract_answer(text) is None
    assert extract_answer(text, numeric=True) == "1,009"
    # a marker without a number does not hide the result
    text = "The answer is as follows:\n2 + 2 = 4"
    assert extract_answer(text, numeric=True) == "4"


def test_no_answer() -> None:
    assert extract_answer("") is None
    assert extract_answer("I do not know.", numeric=True) is None


# --- number: --------------------------------------------------------------------------------


def test_number_verifier_hand_cases() -> None:
    v = parse_verifier("number:42")
    assert v.spec == "number:42"
    assert v("#### 42") == Verdict(1.0, "42", "answer 42 == 42")
    assert v("The answer is 41.") == Verdict(0.0, "41", "answer 41 != 42")
    assert v("no digits at all") == Verdict(0.0, None, "no number found")
    assert v("") == Verdict(0.0, None, "no number found")


def test_number_verifier_several_numbers() -> None:
    v = parse_verifier("number:42")
    assert v("40 + 2 = 42").reward == 1.0  # last number
    assert v("42 is wrong; I get 41").reward == 0.0
    assert v("The answer is 42 apples for 3 people.").reward == 1.0  # marker, first number
    assert v("The answer is 42. Check: 42 - 2 = 40").reward == 1.0  # marker beats last number


def test_number_verifier_unicode_minus_and_formats() -> None:
    assert parse_verifier("number:-5")("so x = \u22125").reward == 1.0
    assert parse_verifier("number:\u22125")("#### -5").reward == 1.0
    assert parse_verifier("number:1234")("It costs $1,234.").reward == 1.0
    assert parse_verifier("number:0.75")("\\boxed{3/4}").reward == 1.0
    assert parse_verifier("number:3/4")("\\boxed{\\frac{3}{4}}").reward == 1.0
    assert parse_verifier("number:50")("a rise of 50%").reward == 1.0


def test_number_tolerance() -> None:
    default = parse_verifier("number:1000")
    assert default("1000.0009").reward == 1.0  # within 1e-6 + 1e-6 * 1000
    assert default("1000.0011").reward == 0.0
    assert parse_verifier("number:0")("1e-7").reward == 1.0
    loose = parse_verifier("number:42@0.01")
    assert loose("42.009").reward == 1.0
    assert loose("41.99").reward == 1.0
    assert loose("42.02").reward == 0.0
    assert parse_verifier("number:42@0")("42.0000001").reward == 0.0


# --- exact: ---------------------------------------------------------------------------------


def test_normalise_text() -> None:
    assert normalise_text("  **The   Eiffel\tTower!** ") == "the eiffel tower"
    assert normalise_text("U.S.A.") == "u.s.a"
    assert normalise_text("$Paris$") == "paris"


def test_exact_verifier() -> None:
    v = parse_verifier("exact:  Paris ")
    assert v("The answer is PARIS.") == Verdict(1.0, "PARIS", "answer 'paris' == 'paris'")
    assert v("\\boxed{\\text{paris}}").reward == 1.0
    assert v("Paris!").reward == 1.0  # no marker: the last non-empty line
    assert v("Let me think.\n\n  Paris  \n\n").reward == 1.0
    assert v("The capital of France is Paris.").reward == 0.0  # exact means exact
    assert v("The answer is Lyon.") == Verdict(0.0, "Lyon", "answer 'lyon' != 'paris'")
    assert v("") == Verdict(0.0, None, "no answer found")
    assert v(" ... \n") == Verdict(0.0, None, "no answer found")


# --- regex: ---------------------------------------------------------------------------------


def test_regex_verifier() -> None:
    v = parse_verifier(r"regex:\bx\s*=\s*(\d+)")
    verdict = v("so x = 17, done")
    assert verdict.reward == 1.0 and verdict.extracted == "x = 17"
    assert v("no assignment") == Verdict(0.0, None, "pattern not found")
    # the argument is used verbatim, spaces included
    assert parse_verifier("regex: a")("ba").reward == 0.0
    assert parse_verifier("regex: a")("b a").reward == 1.0


def test_regex_catastrophic_patterns_are_linear() -> None:
    # RE2 matches in time linear in the text: the backtracking killers just answer
    for pattern in ("(a+)+$", "(a|aa)+$"):
        verdict = parse_verifier("regex:" + pattern)("a" * 50_000 + "b")
        assert verdict == Verdict(0.0, None, "pattern not found")
    # and a pattern whose counted repeats explode is refused before compiling
    with pytest.raises(ValueError, match="nested repeats multiply"):
        parse_verifier("regex:(((a{100}){100}){100})")


# --- choice: --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("The answer is (B).", "B"),
        ("The answer is B", "B"),
        ("Answer: B", "B"),
        ("**Answer:** B", "B"),
        ("The answer is option C.", "C"),
        ("I would go with (B)", "B"),
        ("Looking at the options, B) fits", "B"),
        ("Therefore J", "J"),
        ("Therefore: D.", "D"),
        # the first explicit marker wins, even over later options
        ("Answer: A. Although (C) is tempting, the answer is D", "A"),
        # a marker with no letter does not count; then the last standalone option wins
        ("The answer is not obvious: (A) fails, (C) works", "C"),
        ("(A) 1 (B) 2 (C) 3\nso B", "B"),
        ("Answer: Because (D)", "D"),
    ],
)
def test_extract_choice(text: str, letter: str) -> None:
    assert extract_choice(text) == letter


@pytest.mark.parametrize("text", ["", "no options here", "a lowercase a", "option K)"])
def test_extract_choice_none(text: str) -> None:
    assert extract_choice(text) is None


def test_choice_verifier() -> None:
    v = parse_verifier("choice:b")
    assert v("The answer is (B).") == Verdict(1.0, "B", "answer B == B")
    assert v("Answer: C") == Verdict(0.0, "C", "answer C != B")
    assert v("hmm") == Verdict(0.0, None, "no choice letter found")


# --- bad specs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("42", "kind:argument"),
        ("numbr:42", "unknown verifier kind"),
        ("number:", "empty argument"),
        ("number:  ", "empty argument"),
        ("number:forty-two", "not a number"),
        ("number:42 apples", "not a number"),
        ("number:1/0", "not a number"),
        ("number:1e999", "not a number"),
        ("number:42@x", "tolerance"),
        ("number:42@-1", "tolerance"),
        ("number:42@inf", "tolerance"),
        ("exact:...", "empty after normalisation"),
        ("regex:(unclosed", "invalid regex"),
        ("regex:" + "a" * 501, "limit is 500"),
        ("choice:K", "one letter A-J"),
        ("choice:AB", "one letter A-J"),
    ],
)
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_verifier(spec)


def test_spec_kind_is_case_insensitive_and_regex_at_limit_is_fine() -> None:
    assert parse_verifier("NUMBER: 7")("7").reward == 1.0
    assert parse_verifier("regex:" + "a" * 500)("a" * 500).reward == 1.0


def test_every_verifier_kind_is_reachable_by_its_example() -> None:
    """Each registered kind builds from its own example spec and the unknown-kind error lists
    every kind, so a new kind cannot be registered unreachable or left out of the message."""
    kinds = verifier_kinds()
    assert [k.name for k in kinds] == ["number", "exact", "regex", "choice"]
    for kind in kinds:
        assert kind.example.startswith(f"{kind.name}:")
        assert parse_verifier(kind.example).spec == kind.example
    with pytest.raises(ValueError, match="known kinds: number, exact, regex, choice"):
        parse_verifier("beam:1")
