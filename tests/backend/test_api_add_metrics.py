"""Adding metric families to stored uploads (``POST /uploads/{id}/metrics``) on a real loopback
server with the tiny random Llama: values as if scored with the family from the start, base rows
untouched, idempotence, refusals, cancel and resume, and the duplicate-upload 409."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.backend.api_helpers import url, wait_job
from tests.conftest import start_backend_thread
from tests.unit.test_logprobs_formats import chat_completion
from tokenprism.backend.settings import Settings

CCP_SEQUENCE = ("ccp_uncertainty", "ccp_mean_log", "claim_ccp_min", "claim_ccp_mean")


def _chat(*turns: tuple[str, str]) -> str:
    messages = []
    for user, assistant in turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return json.dumps({"messages": messages})


# two multi-turn conversations (one pass each, a shared context run) and a lone pair
TRANSCRIPT = "\n".join(
    [
        _chat(
            ("What is the capital of Australia?", "Canberra is the capital. Sydney is bigger."),
            ("And of France?", "Paris. It lies on the Seine."),
        ),
        json.dumps({"prompt": "Name a colour.", "response": "Blue is a colour. So is red."}),
        _chat(
            ("Count to three.", "One, two, three."),
            ("Now backwards.", "Three, two, one. Done!"),
        ),
    ]
)


class WatchedLock:
    """The service's model lock, telling when the worker starts waiting for it."""

    def __init__(self, inner: threading.Lock) -> None:
        self.inner = inner
        self.wanted = threading.Event()

    def __enter__(self) -> WatchedLock:
        self.wanted.set()
        self.inner.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.inner.release()


@pytest.fixture(scope="module")
def server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Any]]:
    """``(base url, service)`` of a live backend; every conversation is a batch of its own."""
    settings = Settings(
        home=tmp_path_factory.mktemp("add-metrics") / "home",
        default_model=str(tiny_model_dir),
        device="cpu",
        allowed_model_dirs=[tiny_model_dir.parent],
        batch_tokens=1,
    )
    base, uv, thread = start_backend_thread(settings)
    try:
        yield base, uv.config.app.state.service  # type: ignore[attr-defined]
    finally:
        uv.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=30)  # type: ignore[attr-defined]


def _post_upload(base: str, name: str, data: bytes, **form: str) -> httpx.Response:
    return httpx.post(
        base + url("/uploads"), files={"file": (name, data)}, data=form or None, timeout=60
    )


def _uploaded(base: str, name: str, data: bytes, **form: str) -> str:
    resp = _post_upload(base, name, data, **form)
    assert resp.status_code == 202, resp.text
    job = wait_job(base, resp.json()["job_id"])
    assert job["status"] == "done", job
    return str(resp.json()["upload_id"])


def _add(base: str, upload_id: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(base + url(f"/uploads/{upload_id}/metrics"), json=body, timeout=60)


def _sql(base: str, query: str) -> list[list[Any]]:
    resp = httpx.post(base + url("/sql"), json={"query": query}, timeout=60)
    assert resp.status_code == 200, resp.text
    rows: list[list[Any]] = resp.json()["rows"]
    return rows


def _of(upload_id: str) -> str:
    return f"SELECT run_id FROM runs WHERE upload_id = '{upload_id}'"


def _keyed(base: str, upload_id: str, query: str) -> dict[tuple[Any, ...], float | None]:
    """``{(item, turn, key...): value}`` of a query whose last column is the value."""
    return {tuple(r[:-1]): r[-1] for r in _sql(base, query.format(of=_of(upload_id)))}


TOKEN_CCP = (
    "SELECT r.item_index, r.turn_index, t.position, t.value FROM token_metrics t "
    "JOIN runs r USING (run_id) WHERE t.run_id IN ({of}) AND t.metric = 'ccp'"
)
SEQUENCE_CCP = (
    "SELECT r.item_index, r.turn_index, s.metric, s.value FROM sequence_metrics s "
    "JOIN runs r USING (run_id) WHERE s.run_id IN ({of}) AND s.metric IN "
    f"({', '.join(repr(m) for m in CCP_SEQUENCE)})"
)
CLAIM_CCP = (
    "SELECT r.item_index, r.turn_index, c.claim_index, c.value FROM claim_metrics c "
    "JOIN runs r USING (run_id) WHERE c.run_id IN ({of}) AND c.metric = 'ccp'"
)


def _base_rows(base: str, upload_id: str) -> list[list[list[Any]]]:
    """Every stored row of the upload but the CCP family's, in a fixed order."""
    of = _of(upload_id)
    names = ", ".join(repr(m) for m in CCP_SEQUENCE)
    return [
        _sql(base, f"SELECT * EXCLUDE (top_k) FROM tokens WHERE run_id IN ({of}) ORDER BY ALL"),
        _sql(
            base,
            f"SELECT * FROM token_metrics WHERE run_id IN ({of}) AND metric <> 'ccp' ORDER BY ALL",
        ),
        _sql(
            base,
            f"SELECT * FROM sequence_metrics WHERE run_id IN ({of}) "
            f"AND metric NOT IN ({names}) ORDER BY ALL",
        ),
        _sql(base, f"SELECT * FROM claims WHERE run_id IN ({of}) ORDER BY ALL"),
        _sql(
            base,
            f"SELECT * FROM claim_metrics WHERE run_id IN ({of}) AND metric <> 'ccp' ORDER BY ALL",
        ),
        _sql(base, f"SELECT * FROM alternatives WHERE run_id IN ({of}) ORDER BY ALL"),
    ]


def _close(a: dict[Any, float | None], b: dict[Any, float | None], what: str) -> None:
    assert a.keys() == b.keys() and a, what
    for key in a:
        x, y = a[key], b[key]
        assert (x is None) == (y is None), (what, key, x, y)
        if x is not None and y is not None:
            assert abs(x - y) <= 1e-5, (what, key, x, y)


@pytest.fixture(scope="module")
def plain(server: tuple[str, Any]) -> str:
    """The transcript uploaded without extras (one pass per conversation)."""
    return _uploaded(server[0], "chats.jsonl", TRANSCRIPT.encode())


def test_ccp_added_equals_ccp_scored_from_the_start(server: tuple[str, Any], plain: str) -> None:
    base = server[0]
    assert (
        _sql(base, f"SELECT count(*) FROM runs WHERE upload_id = '{plain}' AND kind = 'context'")[
            0
        ][0]
        == 2
    )  # the two conversations were scored in one pass each
    before = _base_rows(base, plain)
    resp = _add(base, plain, {"metrics": ["ccp"]})
    assert resp.status_code == 202, resp.text
    reply = resp.json()
    assert reply["to_add"] == reply["turns"] == 5 and reply["already_present"] == {"ccp": 0}
    job = wait_job(base, reply["job_id"])
    assert job["status"] == "done", job
    assert job["result"]["added"] == 5 and job["result"]["already_present"] == 0
    assert _base_rows(base, plain) == before  # nothing of the base scoring changed
    # the same turns scored with CCP from the start (one byte more: not a duplicate)
    fresh = _uploaded(base, "chats-ccp.jsonl", (TRANSCRIPT + "\n").encode(), metrics="ccp")
    for query, what in ((TOKEN_CCP, "token"), (SEQUENCE_CCP, "sequence"), (CLAIM_CCP, "claim")):
        _close(_keyed(base, plain, query), _keyed(base, fresh, query), what)
    # what produced them is in the provenance
    run_id = _sql(
        base, f"SELECT run_id FROM runs WHERE upload_id = '{plain}' AND kind <> 'context' LIMIT 1"
    )[0][0]
    run = httpx.get(base + url(f"/runs/{run_id}"), timeout=30).json()
    added = run["provenance"]["extras"]["added"]["ccp"]
    assert added["job_id"] == reply["job_id"] and added["ccp"]["judge"].startswith("fallback")
    assert any(t.get("ccp") is not None for t in run["tokens"] if not t["is_prompt"])


def test_asking_twice_adds_nothing(server: tuple[str, Any], plain: str) -> None:
    base = server[0]
    first = _add(base, plain, {"metrics": ["ccp"]})
    if first.status_code == 202:  # this test alone: the first time adds
        assert wait_job(base, first.json()["job_id"])["status"] == "done"
    rows = _sql(base, TOKEN_CCP.format(of=_of(plain)))
    jobs = _sql(base, "SELECT count(*) FROM jobs")[0][0]
    again = _add(base, plain, {"metrics": ["ccp"]})
    assert again.status_code == 200, again.text
    body = again.json()
    assert body["job_id"] is None and body["to_add"] == 0 and "already" in body["message"]
    assert body["already_present"] == {"ccp": 5}
    assert _sql(base, TOKEN_CCP.format(of=_of(plain))) == rows
    assert _sql(base, "SELECT count(*) FROM jobs")[0][0] == jobs
    dup = _sql(
        base,
        f"SELECT count(*) FROM (SELECT run_id, position FROM token_metrics WHERE run_id IN "
        f"({_of(plain)}) AND metric = 'ccp' GROUP BY ALL HAVING count(*) > 1)",
    )
    assert dup == [[0]]


def test_bad_requests_are_refused_and_store_nothing(server: tuple[str, Any], plain: str) -> None:
    base = server[0]
    jobs = _sql(base, "SELECT count(*) FROM jobs")[0][0]
    cases: list[tuple[str, dict[str, Any], int | None, str | None, str]] = [
        ("nope", {"metrics": ["nope"]}, 404, "not_found", "nope"),
        (plain, {"metrics": ["ccp", "magic"]}, 422, "invalid_request", "magic"),
        (plain, {"metrics": []}, 422, None, "metrics"),
        (plain, {"metrics": ["ccp"], "colour": "red"}, 422, None, "colour"),
        (plain, {"metrics": ["ccp"], "run_ids": ["not-a-run"]}, 400, None, "not-a-run"),
        (plain, {"metrics": ["probe"], "probe": "no-such-probe"}, None, None, "no-such-probe"),
    ]
    for upload_id, body, status, code, needle in cases:
        resp = _add(base, upload_id, body)
        if status is None:
            assert 400 <= resp.status_code < 500, resp.text
        else:
            assert resp.status_code == status, resp.text
        error = resp.json()["error"]
        assert code is None or error["code"] == code, error
        assert needle in json.dumps(error), error
    assert _sql(base, "SELECT count(*) FROM jobs")[0][0] == jobs


def test_runs_from_api_logprobs_are_refused_with_the_reason(server: tuple[str, Any]) -> None:
    base = server[0]
    upload_id = _uploaded(base, "resp.json", json.dumps(chat_completion()).encode())
    resp = _add(base, upload_id, {"metrics": ["ccp", "probe"]})
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["code"] == "family_unavailable"
    assert "API logprobs" in error["message"] and "hidden states" in error["message"]
    # the same logprobs file again: the one duplicate reply of every upload path
    again = _post_upload(base, "resp-again.json", json.dumps(chat_completion()).encode())
    assert again.status_code == 409, again.text
    dup = again.json()["error"]
    assert dup["code"] == "duplicate_upload" and dup["upload_id"] == upload_id


def test_a_duplicate_upload_is_a_409_pointing_to_the_new_route(
    server: tuple[str, Any], plain: str
) -> None:
    base = server[0]
    resp = _post_upload(base, "again.jsonl", TRANSCRIPT.encode(), metrics="ccp")
    assert resp.status_code == 409, resp.text
    error = resp.json()["error"]
    assert error["code"] == "duplicate_upload" and error["upload_id"] == plain
    assert error["links"]["add_metrics"].endswith(f"/uploads/{plain}/metrics")
    assert "nothing was re-scored" in error["message"] and "/metrics" in error["message"]


def test_ranking_by_a_missing_family_says_how_to_add_it(
    server: tuple[str, Any], plain: str
) -> None:
    base = server[0]
    summary = httpx.get(
        base + url(f"/uploads/{plain}"), params={"metric": "probe_max"}, timeout=30
    ).json()
    assert summary["n_with_metric"] == 0 and summary["metric_family"] == "probe"
    assert "probe" in summary["metric_hint"] and "Add metrics" in summary["metric_hint"]
    ranked = httpx.get(base + url(f"/uploads/{plain}"), timeout=30).json()
    assert ranked["metric_hint"] is None and ranked["n_with_metric"] == 5


def test_cancel_then_resume_adds_each_row_once(server: tuple[str, Any]) -> None:
    base, service = server
    upload_id = _uploaded(base, "cancel.jsonl", (TRANSCRIPT + "\n\n").encode())
    lock: threading.Lock = service.model_lock
    watched = WatchedLock(lock)
    service.jobs.model_lock = watched
    assert lock.acquire(timeout=10)
    try:
        resp = _add(base, upload_id, {"metrics": ["sar", "ccp"]})
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["job_id"]
        assert watched.wanted.wait(30)  # batch 1 waits for the model
        resp = httpx.post(base + url(f"/jobs/{job_id}/cancel"), timeout=30)
        assert resp.status_code == 200, resp.text
    finally:
        lock.release()
        service.jobs.model_lock = lock
    cancelled = wait_job(base, job_id)
    assert cancelled["status"] == "cancelled" and 0 < cancelled["done"] < 5, cancelled
    marked = (
        f"SELECT count(*) FROM runs WHERE upload_id = '{upload_id}' AND "
        "json_extract(provenance, '$.extras.added.ccp') IS NOT NULL"
    )
    assert _sql(base, marked)[0][0] == cancelled["done"]
    assert httpx.post(base + url(f"/jobs/{job_id}/resume"), timeout=30).status_code == 200
    done = wait_job(base, job_id)
    assert done["status"] == "done" and done["done"] == 5, done
    assert done["result"]["already_present"] == cancelled["done"]
    assert _sql(base, marked)[0][0] == 5
    dup = _sql(
        base,
        f"SELECT count(*) FROM (SELECT run_id, position, metric FROM token_metrics WHERE run_id "
        f"IN ({_of(upload_id)}) GROUP BY ALL HAVING count(*) > 1)",
    )
    assert dup == [[0]]
    sar = _sql(
        base,
        f"SELECT count(DISTINCT run_id) FROM sequence_metrics WHERE run_id IN ({_of(upload_id)}) "
        "AND metric = 'token_sar'",
    )
    assert sar == [[5]]
