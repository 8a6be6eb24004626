"""The ShareGPT-style array export and its JSONL twin audited on the tiny model through the API:
every non-empty assistant turn stored exactly once with its conversation and turn numbers, the
over-long conversation truncated, the upload summary counting what was found and skipped."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tokenprism.backend.api.app import API, create_app
from tokenprism.backend.settings import Settings

DATA = Path(__file__).resolve().parents[1] / "data"
ASSISTANT = {"gpt", "chatgpt", "bing", "bard", "assistant", "model"}


def _naive_messages(record: dict[str, Any]) -> list[dict[str, str]]:
    if "instruction" in record:
        prompt = record["instruction"] + ("\n" + record["input"] if record.get("input") else "")
        return [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": record["output"]},
        ]
    raw = record.get("conversations") or record.get("conversation") or record["messages"]
    out = []
    for msg in raw:
        role = msg.get("from", msg.get("role"))
        content = msg.get("value", msg.get("content"))
        if isinstance(content, list):
            content = "\n".join(p["text"] for p in content if p.get("type") == "text")
        role = "assistant" if role in ASSISTANT else "system" if role == "system" else "user"
        out.append({"role": role, "content": content or ""})
    return out


def expected_turns(records: list[Any]) -> dict[tuple[int, int], list[dict[str, str]]]:
    """``(conversation, assistant-turn number) -> chat up to that turn`` of every non-empty
    assistant turn, computed naively from the decoded records (not with ``backend.ingest``):
    empty messages dropped, tool messages as user text (the tiny template has no tool role)."""
    out: dict[tuple[int, int], list[dict[str, str]]] = {}
    for number, record in enumerate(records, 1):
        kept: list[dict[str, str]] = []
        turn = 0
        for msg in _naive_messages(record):
            if msg["content"].strip():
                kept.append(msg)
                if msg["role"] == "assistant":
                    out[(number, turn)] = list(kept)
            turn += msg["role"] == "assistant"
    return out


def dropped_tokens(tokenizer: Any, messages: list[dict[str, str]], context: int) -> int:
    """Tokens over the context of the chat rendered up to the turn's end-of-turn marker."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text.endswith("<|im_end|>\n")
    n = len(tokenizer(text[:-1], add_special_tokens=False)["input_ids"])
    return max(0, n - context)


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    home = tmp_path_factory.mktemp("ingest-tiny")
    settings = Settings(
        home=home / "home",
        default_model=str(tiny_model_dir),
        device="cpu",
        allowed_model_dirs=[tiny_model_dir.parent],
    )
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as c:
        yield c


def audit(client: TestClient, name: str) -> dict[str, Any]:
    resp = client.post(f"{API}/uploads", files={"file": (name, (DATA / name).read_bytes())})
    assert resp.status_code in (200, 202), resp.text  # 200: the same file again (duplicate)
    body = resp.json()
    for _ in range(1200):
        job = client.get(f"{API}/jobs/{body['job_id']}").json()
        if job["status"] in ("done", "failed", "cancelled", "interrupted"):
            break
        time.sleep(0.05)
    assert job["status"] == "done", job
    summary: dict[str, Any] = client.get(
        f"{API}/uploads/{body['upload_id']}", params={"top": 5}
    ).json()
    return {**summary, "posted": body}


@pytest.mark.parametrize(("name", "fmt"), [("sharegpt_array.json", "json"),
                                           ("sharegpt_array.jsonl", "jsonl")])  # fmt: skip
def test_every_non_empty_assistant_turn_is_stored_once(
    client: TestClient, tiny_lm: Any, name: str, fmt: str
) -> None:
    records = json.loads((DATA / "sharegpt_array.json").read_text(encoding="utf-8"))
    assert len(records) >= 50
    chats = expected_turns(records)
    expected = {key: chat[-1]["content"] for key, chat in chats.items()}
    summary = audit(client, name)
    assert summary["posted"]["format"] == fmt
    turns = summary["turns"]
    got = {(t["conversation"], t["turn_index"]): t["response"] for t in turns}
    assert len(got) == len(turns) == len(expected)  # each stored exactly once
    assert got == expected
    assert sorted(t["item_index"] for t in turns) == list(range(len(expected)))
    assert any("\u2028" in text for text in got.values())

    assistant_first = [
        n for n, r in enumerate(records, 1)
        if r.get("conversations") and r["conversations"][0]["from"] != "human"
        and r["conversations"][0]["from"] != "system"
    ]  # fmt: skip
    assert len(assistant_first) >= 15
    assert all((n, 0) in got for n in assistant_first)

    long_number = next(n for n, r in enumerate(records, 1) if r.get("id") == "sg-50-long")
    by_key = {(t["conversation"], t["turn_index"]): t for t in turns}
    assert by_key[(long_number, 0)]["truncated_tokens"] > 0
    dropped = {key: dropped_tokens(tiny_lm.tokenizer, chat, 256) for key, chat in chats.items()}
    assert {key: t["truncated_tokens"] for key, t in by_key.items()} == dropped

    ingest = summary["ingest"]
    assert ingest["conversations"] == len(records) and ingest["conversations_invalid"] == 0
    assert ingest["to_score"] == ingest["scored"] == len(expected)
    assert ingest["truncated"] == sum(n > 0 for n in dropped.values()) >= 1
    assert ingest["truncated_tokens"] == sum(dropped.values())
    assert ingest["rendering"] == {"template": len(expected)}
    reasons = [s["reason"] for s in ingest["skipped"]]
    assert reasons.count("no assistant message") == 1
    empty = ingest["assistant_turns"] - len(expected)
    assert reasons.count("empty assistant message") == empty > 0
    assert ingest["skipped_count"] == empty + 1


def test_the_twins_give_the_same_runs(client: TestClient) -> None:
    array = audit(client, "sharegpt_array.json")  # a duplicate now: the summary is the same
    twin = audit(client, "sharegpt_array.jsonl")
    a = {
        (t["conversation"], t["turn_index"]): t["sequence"]["mean_entropy"] for t in array["turns"]
    }
    b = {(t["conversation"], t["turn_index"]): t["sequence"]["mean_entropy"] for t in twin["turns"]}
    assert a.keys() == b.keys()
    assert all(a[k] == pytest.approx(b[k], rel=1e-5) for k in a)


STRICT = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' and (loop.first or messages[loop.index0 - 1]['role'] "
    "!= 'user') %}{{ raise_exception('Conversation roles must alternate') }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_a_refusing_template_gives_raw_continuations_in_provenance(
    tiny_lm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tokenprism.backend.audit.ingest import parse_transcript
    from tokenprism.backend.audit.upload import score_items
    from tokenprism.backend.store import Store

    monkeypatch.setattr(tiny_lm.tokenizer, "chat_template", STRICT)
    text = (DATA / "sharegpt_array.json").read_text(encoding="utf-8")
    items = parse_transcript(text, "json")
    with Store(tmp_path / "t.duckdb") as store:
        run_ids = score_items(tiny_lm, store, items, source="export.json")
        assert len(run_ids) == len(items)
        by_item = {
            r["item_index"]: store.get_run(r["run_id"])
            for r in store.list_runs(limit=len(items) + 1)
        }
    for item in items:
        assert item.messages is not None
        # the strict template renders a chat iff every assistant message follows a user one
        # (tool messages go in as user text: the template has no tool role)
        roles = ["user" if m["role"] == "tool" else m["role"] for m in item.messages]
        renders = all(
            i > 0 and roles[i - 1] == "user" for i, r in enumerate(roles) if r == "assistant"
        )
        run = by_item[item.index]
        assert run["provenance"]["rendering"] == ("template" if renders else "raw_continuation")
        if not renders:
            assert run["kind"] == "chat" and run["provenance"]["chat_template"] is None
            assert "Conversation roles must alternate" in run["provenance"]["rendering_notes"][-1]
            assert run["text"].endswith(item.messages[-1]["content"][-20:])
            assert "<|im_start|>" not in run["text"]
    renderings = [by_item[i.index]["provenance"]["rendering"] for i in items]
    assert renderings.count("raw_continuation") >= 15 and renderings.count("template") >= 15
