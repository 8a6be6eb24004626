"""Uploads of hostile files, fuzzed bodies, ``skip_invalid`` and over-long chats, on the tiny
model through the API: every bad file is a 4xx naming the problem and stores nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenprism.backend.api.app import API, create_app
from tokenprism.backend.settings import Settings

HOSTILE = Path(__file__).resolve().parents[1] / "data" / "hostile"
TERMINAL = ("done", "failed", "cancelled", "interrupted")

# file -> (status, error code, line named or None, text the message must contain)
EXPECTED: dict[str, tuple[int, str, int | None, str]] = {
    "huge_number.json": (422, "invalid_transcript", 1, "5000 digits is too large"),
    "lone_surrogate.jsonl": (422, "invalid_transcript", 2, "surrogate"),
    "surrogate_bytes.jsonl": (400, "bad_request", None, "not UTF-8 text (line 1"),
    "duplicate_keys.jsonl": (422, "invalid_transcript", 1, "duplicate key 'role'"),
    "duplicate_keys_array.json": (422, "invalid_transcript", 2, "duplicate key 'prompt'"),
    "bom_mid_file.jsonl": (422, "invalid_transcript", 2, "byte-order mark"),
    "double_bom.json": (422, "invalid_transcript", 1, "byte-order mark"),
    "utf16_bom.json": (400, "bad_request", None, "UTF-16"),
    "scalar_number.json": (422, "invalid_transcript", 1, "found a number"),
    "scalar_string.json": (422, "invalid_transcript", 1, "found a string"),
    "null.json": (422, "invalid_transcript", 1, "found a null"),
    "array_of_numbers.json": (422, "invalid_transcript", 1, "found a number"),
    "array_of_strings.json": (422, "invalid_transcript", 1, "found a string"),
    "truncated_array.json": (422, "invalid_transcript", 2, "invalid JSON"),
    "missing_comma.json": (422, "invalid_transcript", 2, "expected ','"),
    "trailing_garbage.json": (422, "invalid_transcript", 1, "extra data"),
    "unknown_role.json": (422, "invalid_transcript", 1, "'wizard'"),
    "content_object.jsonl": (422, "invalid_transcript", 1, "content of type dict"),
    "messages_not_list.jsonl": (422, "invalid_transcript", 1, "not a list"),
    "no_known_fields.json": (422, "invalid_transcript", 1, "keys found: 'question', 'answer'"),
    "empty_array.json": (400, "bad_request", None, "holds no conversations"),
    "nested_in_object.jsonl": (422, "invalid_transcript", 1, "message 1 is not an object"),
    "part_without_text.jsonl": (422, "invalid_transcript", 1, "text part"),
    "nul_bytes.jsonl": (400, "bad_request", None, "binary"),
    "bad_csv_header.csv": (422, "invalid_transcript", 1, "'prompt' and 'response' columns"),
}
GENERATED: dict[str, bytes] = {
    "deep_array.json": b"[" * 100_000 + b"]" * 100_000,
    "deep_line.jsonl": b'{"prompt": "a", "response": "b"}\n{"x": '
    + b"[" * 100_000
    + b"]" * 100_000
    + b"}\n",
    "deep_object.json": b'[{"a": ' * 50_000 + b"1" + b"}]" * 50_000,
}
GENERATED_EXPECTED = {
    "deep_array.json": (422, "invalid_transcript", 1, "nested too deeply"),
    "deep_line.jsonl": (422, "invalid_transcript", 2, "nested too deeply"),
    "deep_object.json": (422, "invalid_transcript", 1, "nested too deeply"),
}


def url(path: str) -> str:
    return f"{API}{path}"


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    home = tmp_path_factory.mktemp("ingest-home")
    settings_ = Settings(
        home=home / "home",
        default_model=str(tiny_model_dir),
        device="cpu",
        allowed_model_dirs=[tiny_model_dir.parent],
    )
    with TestClient(
        create_app(settings_), raise_server_exceptions=False, base_url="http://127.0.0.1"
    ) as c:
        yield c


def table_counts(client: TestClient) -> dict[str, int]:
    """Row count of every table of the database."""
    resp = client.post(
        url("/sql"),
        json={"query": "SELECT table_name FROM information_schema.tables ORDER BY 1"},
    )
    assert resp.status_code == 200, resp.text
    names = [row[0] for row in resp.json()["rows"]]
    assert {"uploads", "runs", "tokens", "jobs"} <= set(names)
    query = "SELECT " + ", ".join(f'(SELECT count(*) FROM "{n}")' for n in names)
    resp = client.post(url("/sql"), json={"query": query})
    assert resp.status_code == 200, resp.text
    return dict(zip(names, resp.json()["rows"][0], strict=True))


def wait_job(client: TestClient, job_id: str) -> dict[str, Any]:
    for _ in range(600):
        job: dict[str, Any] = client.get(url(f"/jobs/{job_id}")).json()
        if job["status"] in TERMINAL:
            return job
        time.sleep(0.05)
    pytest.fail(f"job {job_id} did not finish")


def post(client: TestClient, name: str, data: bytes, **form: str) -> Any:
    return client.post(url("/uploads"), files={"file": (name, data)}, data=form or None)


def check_refused(
    client: TestClient, name: str, data: bytes, expected: tuple[int, str, int | None, str]
) -> None:
    status, code, line, needle = expected
    before = table_counts(client)
    resp = post(client, name, data)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["code"] == code and needle in err["message"], err
    if line is not None:
        assert f"line {line}" in err["message"], err
        assert any(p["line"] == line and needle in p["message"] for p in err["problems"]), err
    assert table_counts(client) == before


def test_the_corpus_is_complete() -> None:
    assert sorted(p.name for p in HOSTILE.iterdir()) == sorted(EXPECTED)
    assert all(p.stat().st_size < 64 * 1024 for p in HOSTILE.iterdir())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hostile_file_is_a_4xx_and_stores_nothing(client: TestClient, name: str) -> None:
    check_refused(client, name, (HOSTILE / name).read_bytes(), EXPECTED[name])


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_deep_nesting_is_a_4xx_and_stores_nothing(client: TestClient, name: str) -> None:
    check_refused(client, name, GENERATED[name], GENERATED_EXPECTED[name])


def test_strict_refusal_counts_then_skip_invalid_audits_the_rest(client: TestClient) -> None:
    good = [{"prompt": f"Question {i}?", "response": f"Answer number {i}."} for i in range(3)]
    records: list[Any] = [good[0], {"messages": [{"role": "oracle", "content": "?"}]}, good[1]]
    records += [7, good[2]]
    data = ("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n").encode()
    before = table_counts(client)
    resp = post(client, "mixed.json", data)
    assert resp.status_code == 422, resp.text
    err = resp.json()["error"]
    assert (err["conversations_valid"], err["conversations_invalid"]) == (3, 2)
    assert [p["line"] for p in err["problems"]] == [3, 5]
    assert table_counts(client) == before

    resp = post(client, "mixed.json", data, skip_invalid="true")
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["format"] == "json" and body["n_items"] == 3
    assert body["ingest"]["conversations_invalid"] == 2
    assert wait_job(client, body["job_id"])["status"] == "done"
    summary = client.get(url(f"/uploads/{body['upload_id']}")).json()
    ingest = summary["ingest"]
    assert ingest["scored"] == 3 and ingest["conversations"] == 5
    assert [(s["line"], s["reason"][:25]) for s in ingest["skipped"]] == [
        (3, "message 1 has unknown rol"),
        (5, "expected a conversation o"),
    ]
    turns = sorted((t["conversation"], t["line"], t["response"]) for t in summary["turns"])
    assert turns == [
        (1, 2, "Answer number 0."),
        (3, 4, "Answer number 1."),
        (5, 6, "Answer number 2."),
    ]


def test_an_over_long_chat_is_truncated_not_refused(client: TestClient) -> None:
    long_prompt = {"prompt": "Tell me. " + "Paris is nice. " * 80, "response": "Yes."}
    data = (json.dumps({"prompt": "a", "response": "b"}) + "\n" + json.dumps(long_prompt)).encode()
    resp = post(client, "long.jsonl", data)
    assert resp.status_code == 202, resp.text
    assert wait_job(client, resp.json()["job_id"])["status"] == "done"
    summary = client.get(url(f"/uploads/{resp.json()['upload_id']}")).json()
    by_line = {t["line"]: t for t in summary["turns"]}
    assert by_line[1]["truncated_tokens"] == 0 and by_line[2]["truncated_tokens"] > 0
    assert summary["ingest"]["truncated"] == 1
    assert summary["ingest"]["truncated_tokens"] == by_line[2]["truncated_tokens"]
    assert summary["ingest"]["rendering"] == {"template": 2}
    run = client.get(url(f"/runs/{by_line[2]['run_id']}")).json()
    assert run["provenance"]["truncated_tokens"] == by_line[2]["truncated_tokens"]
    assert len(run["tokens"]) == 256 and run["response"] == "Yes."
    assert run["text"].endswith("Yes.<|im_end|>") and "Tell me." not in run["text"]
    html = client.get(url(f"/uploads/{resp.json()['upload_id']}/export")).text
    assert f"{by_line[2]['truncated_tokens']} tokens of history dropped" in html


# ---- fuzzing ------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
MESSAGE = st.fixed_dictionaries(
    {
        "from": st.sampled_from(["human", "gpt", "system", "tool", "wizard", ""]),
        "value": st.text(max_size=30) | st.none() | st.integers(),
    }
)
RECORD = st.fixed_dictionaries({"conversations": st.lists(MESSAGE, max_size=4)}) | JSON_VALUES


def _serialise(records: list[Any], as_array: bool) -> bytes:
    if as_array:
        return json.dumps(records, ensure_ascii=False).encode("utf-8", "surrogatepass")
    lines = "\n".join(json.dumps(r, ensure_ascii=False) for r in records)
    return lines.encode("utf-8", "surrogatepass")


BODIES = (
    st.builds(_serialise, st.lists(RECORD, max_size=5), st.booleans())
    | st.binary(max_size=200)
    | st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass"))
)


@settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    body=BODIES,
    name=st.sampled_from(["f.json", "f.jsonl", "f.csv", "f.txt", "f"]),
    lenient=st.booleans(),
)
def test_fuzzed_uploads_never_5xx(
    client: TestClient, body: bytes, name: str, lenient: bool
) -> None:
    before = table_counts(client)
    resp = post(client, name, body, **({"skip_invalid": "true"} if lenient else {}))
    assert resp.status_code < 500, resp.text
    if resp.status_code >= 400:
        err = resp.json()["error"]
        assert err["code"] and err["message"]
        assert table_counts(client) == before
    elif resp.status_code == 202:
        assert wait_job(client, resp.json()["job_id"])["status"] == "done"
