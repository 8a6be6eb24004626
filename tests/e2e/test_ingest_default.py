"""A ShareGPT-style JSON array export audited through the real API on the default model
(SmolLM2-135M-Instruct): assistant-first conversations, U+2028 inside strings, empty turns."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import SHARED_MODEL_CACHE, start_backend_thread

pytestmark = pytest.mark.slow

SEP = "\u2028"
EXPORT: list[dict[str, Any]] = [
    {"id": "1", "conversations": [
        {"from": "gpt", "value": "…and that is why the sky looks blue."},
        {"from": "human", "value": "Thanks! And sunsets?"},
        {"from": "gpt", "value": f"Sunsets are red{SEP}because light travels further."}]},
    {"id": "2", "conversations": [
        {"from": "human", "value": "What is the capital of France?"},
        {"from": "gpt", "value": "The capital of France is Paris."}]},
    {"id": "3", "conversations": [
        {"from": "system", "value": "You are terse."},
        {"from": "chatgpt", "value": "Ready."},
        {"from": "human", "value": ""},
        {"from": "human", "value": "2+2?"},
        {"from": "gpt", "value": "4."}]},
    {"id": "4", "conversations": [
        {"from": "human", "value": f"Line one{SEP}line two{SEP}: count them."},
        {"from": "bard", "value": "Two lines."},
        {"from": "human", "value": "Sure?"},
        {"from": "gpt", "value": ""}]},
    {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "Name a colour."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Blue."}]}]},
    {"conversation": [
        {"role": "user", "content": "Say hello in Spanish.", "language": "English"},
        {"role": "assistant", "content": "Hola."}]},
    {"instruction": "Translate to French.", "input": "cat", "output": "chat"},
    {"id": "8", "conversations": [{"from": "bing", "value": "Here are some results."}]},
]  # fmt: skip
# (conversation, assistant-turn number) -> text of every non-empty assistant turn
EXPECTED = {
    (1, 0): "…and that is why the sky looks blue.",
    (1, 1): f"Sunsets are red{SEP}because light travels further.",
    (2, 0): "The capital of France is Paris.",
    (3, 0): "Ready.",
    (3, 1): "4.",
    (4, 0): "Two lines.",
    (5, 0): "Blue.",
    (6, 0): "Hola.",
    (7, 0): "chat",
    (8, 0): "Here are some results.",
}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from tokenprism.backend.settings import Settings

    settings = Settings(
        home=tmp_path_factory.mktemp("ingest-default"),
        default_model="default",
        model_cache=SHARED_MODEL_CACHE,
        device="cpu",
    )
    url, server, thread = start_backend_thread(settings)
    try:
        yield url + "/api/v1"
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=30)  # type: ignore[attr-defined]


def test_array_export_every_assistant_turn_once(api: str) -> None:
    data = json.dumps(EXPORT, ensure_ascii=False, indent=1).encode()
    resp = httpx.post(f"{api}/uploads", files={"file": ("export.json", data)}, timeout=120)
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["format"] == "json" and body["n_items"] == len(EXPECTED)
    for _ in range(1200):
        job = httpx.get(f"{api}/jobs/{body['job_id']}").json()
        if job["status"] in ("done", "failed", "cancelled", "interrupted"):
            break
        time.sleep(0.25)
    assert job["status"] == "done", job
    summary = httpx.get(f"{api}/uploads/{body['upload_id']}").json()
    turns = summary["turns"]
    got = {(t["conversation"], t["turn_index"]): t["response"] for t in turns}
    assert len(turns) == len(got) == len(EXPECTED) and got == EXPECTED
    assert all(t["truncated_tokens"] == 0 for t in turns)
    ingest = summary["ingest"]
    assert ingest["rendering"] == {"template": len(EXPECTED)}  # SmolLM2 renders them all
    assert ingest["conversations"] == 8 and ingest["scored"] == len(EXPECTED)
    assert [s["reason"] for s in ingest["skipped"]] == ["empty assistant message"]
    first = next(t for t in turns if (t["conversation"], t["turn_index"]) == (1, 0))
    run = httpx.get(f"{api}/runs/{first['run_id']}").json()
    # the assistant-first turn: the template's default system prompt, then the turn itself
    assert run["text"].startswith("<|im_start|>system\n")
    assert run["text"].endswith(f"<|im_start|>assistant\n{EXPECTED[(1, 0)]}<|im_end|>")
    scored = "".join(t["text"] for t in run["tokens"] if not t["is_prompt"])
    assert scored == EXPECTED[(1, 0)] + "<|im_end|>"
    second = next(t for t in turns if (t["conversation"], t["turn_index"]) == (1, 1))
    run = httpx.get(f"{api}/runs/{second['run_id']}").json()
    assert SEP in run["response"] and EXPECTED[(1, 0)] in run["text"]
