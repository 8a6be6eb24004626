"""Write tests/data/sharegpt_array.json (a ShareGPT-style JSON array export) and its JSONL twin.

Deterministic (seeded); run from the repository root to regenerate:
``python tests/data/make_sharegpt.py``. The mix is what real exports hold: about a third of the
conversations start with an assistant turn, empty values, U+2028/U+2029/U+0085 inside strings,
roles from several tools, OpenAI records with content-part lists, LMSYS/WildChat and Alpaca
records in the same array, tool messages, a conversation without any assistant turn, and one
conversation (number 50) far longer than the tiny test model's 256-token context.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SENTENCES = [
    "The capital of France is Paris.",
    "Seven pens cost 21 dollars.",
    "Let me think step by step.",
    "The quick brown fox jumps over the lazy dog.",
    "Hello there! How can I help you today?",
    "It is Canberra, not Sydney.",
    "First, add the numbers.\n\nThe answer is 42.",
    "Paris\u2028is a city;\u2029Rome\u0085is another.",  # separators legal inside JSON strings
    "Café, naïve, 東京, emoji 🙂.",
]
ASSISTANTS = ["gpt", "gpt", "gpt", "chatgpt", "bing", "bard", "assistant"]
USERS = ["human", "human", "user"]


def _text(rng: random.Random, n: int = 2) -> str:
    return " ".join(rng.choice(SENTENCES) for _ in range(rng.randint(1, n)))


def _sharegpt(rng: random.Random, number: int) -> dict[str, Any]:
    turns: list[dict[str, str]] = []
    if number % 7 == 0:
        turns.append({"from": "system", "value": "You are a terse assistant."})
    assistant_first = number % 3 == 0  # a third start mid-conversation with the assistant
    n_pairs = rng.randint(1, 4)
    for pair in range(n_pairs):
        if not (assistant_first and pair == 0):
            turns.append({"from": rng.choice(USERS), "value": _text(rng)})
        turns.append({"from": rng.choice(ASSISTANTS), "value": _text(rng, 3)})
    if number % 5 == 0:
        turns.insert(len(turns) - 1, {"from": "human", "value": ""})  # empty user turn
    if number % 8 == 0:
        turns.append({"from": "human", "value": "And?"})
        turns.append({"from": "gpt", "value": ""})  # empty assistant turn: skipped, counted
    if number % 11 == 0:
        turns.insert(1, {"from": "observation", "value": '{"temperature": 21}'})
    return {"id": f"sg-{number}", "conversations": turns}


def _openai(rng: random.Random, number: int) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": _text(rng)},
                    {"type": "image_url", "image_url": {"url": "https://example.invalid/x.png"}},
                ],
            },
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
            {"role": "assistant", "content": [{"type": "text", "text": _text(rng)}]},
        ],
        "id": f"oa-{number}",
    }


def conversations() -> list[dict[str, Any]]:
    rng = random.Random(14)
    out: list[dict[str, Any]] = []
    for number in range(1, 55):
        if number in (10, 20, 30):
            out.append(_openai(rng, number))
        elif number in (12, 24):
            out.append(
                {
                    "conversation_id": f"lmsys-{number}",
                    "model": "vicuna-13b",
                    "conversation": [
                        {"role": "user", "content": _text(rng), "language": "English"},
                        {"role": "assistant", "content": _text(rng), "toxic": False},
                    ],
                    "turn": 1,
                }
            )
        elif number == 35:
            out.append({"instruction": "Name a capital.", "input": "France", "output": "Paris."})
        elif number == 40:
            out.append({"id": "sg-40", "conversations": [{"from": "human", "value": "Hi?"}]})
        elif number == 50:
            long_user = " ".join(SENTENCES[:7]) * 8  # far past 256 tiny-model tokens
            out.append(
                {
                    "id": "sg-50-long",
                    "conversations": [
                        {"from": "human", "value": long_user},
                        {"from": "gpt", "value": "A short answer after a long question."},
                    ],
                }
            )
        else:
            out.append(_sharegpt(rng, number))
    return out


def main() -> None:
    records = conversations()
    (HERE / "sharegpt_array.json").write_text(
        json.dumps(records, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
    )
    (HERE / "sharegpt_array.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
    )


if __name__ == "__main__":
    main()
