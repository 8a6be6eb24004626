"""Issue 16 (and issue 14's SQL limits): every request bounded, loopback really local.

Most findings are checked against a real ``tokenprism serve`` on loopback (where they were
live); pure rules (regex estimate, CSV cells, tokens, LRU) are checked directly.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.backend.api_helpers import wait_job
from tests.backend.test_server import API, server
from tokenprism.analysis.verifiers import compile_user_regex, repeat_expansion
from tokenprism.backend.audit.upload import csv_safe
from tokenprism.backend.models.loader import remember
from tokenprism.backend.settings import Settings

BOMB = "regex:(((a{100}){100}){100})"
SWEEP_PROMPTS = [{"prompt": f"Tell me about topic number {i}."} for i in range(200)]
LONG_SWEEP = {
    "kind": "refusal-sweep",
    "params": {"prompts": SWEEP_PROMPTS, "values": [0.0] * 32, "max_new_tokens": 150},
}


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def live(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Any]]:
    home = tmp_path_factory.mktemp("hardening-home")
    env = {
        "TOKENPRISM_SQL_TIMEOUT_S": "1",
        "TOKENPRISM_MAX_QUEUED_JOBS": "1",
        "TOKENPRISM_PROBE_MAX_ITEMS": "3",
        "TOKENPRISM_ALLOWED_MODEL_DIRS": json.dumps([str(tiny_model_dir.parent)]),
    }
    with server(home, tiny_model_dir, **env) as (url, proc):
        yield url + API, proc


def _error(reply: httpx.Response, status: int) -> str:
    assert reply.status_code == status, reply.text
    return str(reply.json()["error"]["message"])


# ---- 1. regex ---------------------------------------------------------------------------------


def test_regex_bomb_is_4xx_and_memory_stays_flat(live: tuple[str, Any]) -> None:
    url, proc = live
    before = _rss_kb(proc.pid)
    for verifier in (BOMB, "regex:" + "(" * 5 + "a{100}" + "){100}" * 5):
        body = {"prompt": "Say a.", "verifier": verifier, "n": 2, "max_new_tokens": 4}
        message = _error(httpx.post(url + "/groups", json=body, timeout=30), 400)
        assert "nested repeats" in message and "limit is 10,000" in message
    detector = {"kind": "refusal-sweep", "params": {"detector": BOMB, "max_new_tokens": 4}}
    message = _error(httpx.post(url + "/experiments", json=detector, timeout=30), 400)
    assert "refusal detector regex" in message and "nested repeats" in message
    assert _rss_kb(proc.pid) - before < 50_000  # the bomb grew it by ~1 GB before


def test_user_regex_rules() -> None:
    assert repeat_expansion("(((a{100}){100}){100})") == 1_000_000
    assert repeat_expansion(r"\d{1,3}") == 3 and repeat_expansion("(ab){3}") == 6
    with pytest.raises(ValueError, match="limit is 500"):
        compile_user_regex("a" * 501)
    with pytest.raises(ValueError, match="invalid regex"):
        compile_user_regex("(?<=a)b")  # RE2 has no lookbehind: named, not a crash
    # (a|aa)+$ is exponential on a backtracking engine; on RE2 it is linear
    assert compile_user_regex("(a|aa)+$").search("a" * 100_000 + "b") is None


# ---- 2. context, cancel, queue ----------------------------------------------------------------


def test_prompt_over_the_context_is_4xx_before_generation(live: tuple[str, Any]) -> None:
    url, _ = live
    prompt = "word " * 300_000  # ~300k tokens; the tiny model's context is 256
    message = _error(httpx.post(url + "/generate", json={"prompt": prompt}, timeout=60), 422)
    assert "tokens; this model's context is 256" in message and message.startswith("prompt is ")
    group = {"prompt": "word " * 1000, "verifier": "regex:a", "n": 2}
    assert "context is 256" in _error(httpx.post(url + "/groups", json=group, timeout=30), 422)
    fits_not = {"prompt": "Hi", "max_new_tokens": 1000}
    assert "max_new_tokens is 1,000" in _error(
        httpx.post(url + "/generate", json=fits_not, timeout=30), 422
    )
    for kind, params in (
        ("refusal-sweep", {"prompts": [{"prompt": "word " * 1000}], "max_new_tokens": 4}),
        ("east-sweep", {"prompts": ["word " * 1000, "b"], "max_new_tokens": 4}),
        ("decode", {"rule": "ead", "prompts": ["word " * 1000], "params": {}}),
    ):
        body = {"kind": kind, "params": params}
        reply = httpx.post(url + "/experiments", json=body, timeout=30)
        assert "context is 256" in _error(reply, 422), kind
    vector = {"name": "v", "prompts": ["word " * 1000, "b"]}
    assert "context is 256" in _error(httpx.post(url + "/vectors", json=vector, timeout=30), 422)
    assert httpx.get(url + "/health").status_code == 200


def test_cancelled_sweep_stops_at_once_and_the_queue_is_bounded(live: tuple[str, Any]) -> None:
    url, _ = live
    job_id = httpx.post(url + "/experiments", json=LONG_SWEEP, timeout=30).json()["job_id"]
    wait_job(url.removesuffix(API), job_id, until=("running",), poll=0.2)
    queued = httpx.post(url + "/experiments", json=LONG_SWEEP, timeout=30)
    assert queued.status_code == 202
    full = httpx.post(url + "/experiments", json=LONG_SWEEP, timeout=30)
    assert "queue is full" in _error(full, 429) and full.headers["retry-after"].isdigit()
    httpx.post(f"{url}/jobs/{queued.json()['job_id']}/cancel", timeout=30)
    time.sleep(0.5)  # let it generate
    start = time.monotonic()
    assert httpx.post(f"{url}/jobs/{job_id}/cancel", timeout=30).status_code == 200
    job = wait_job(url.removesuffix(API), job_id, until=("cancelled", "done", "failed"), poll=0.2)
    assert job["status"] == "cancelled"
    # checked every token: a generation of 150 tokens no longer runs to its end first
    assert time.monotonic() - start < 5.0


# ---- 3. SQL -----------------------------------------------------------------------------------


def test_runaway_sql_is_stopped_and_health_answers(live: tuple[str, Any]) -> None:
    url, _ = live
    cross = "select count(*) from range(1000000000::BIGINT) a, range(1000000000::BIGINT) b"
    result: dict[str, httpx.Response] = {}
    thread = threading.Thread(
        target=lambda: result.update(r=httpx.post(url + "/sql", json={"query": cross}, timeout=60))
    )
    thread.start()
    time.sleep(0.3)
    assert httpx.get(url + "/health", timeout=10).status_code == 200  # responsive meanwhile
    thread.join()
    reply = result["r"]
    assert reply.json()["error"]["code"] == "query_limit"
    assert "query took longer than 1 s" in _error(reply, 400)
    # the issue's spelling: a 4xx either way (DuckDB 2 refuses range(DOUBLE))
    issue = "select count(*) from range(1e9) a, range(1e9) b"
    assert 400 <= httpx.post(url + "/sql", json={"query": issue}, timeout=30).status_code < 500


# ---- 5. loopback really local -----------------------------------------------------------------


def test_host_and_origin_checks(live: tuple[str, Any], tiny_model_dir: Path) -> None:
    url, _ = live
    evil_host = httpx.get(url + "/health", headers={"Host": "evil.example"})
    assert "evil.example" in _error(evil_host, 421)
    for host in ("localhost", "127.0.0.1", "[::1]"):
        port = url.split(":")[2].split("/")[0]
        assert httpx.get(url + "/health", headers={"Host": f"{host}:{port}"}).status_code == 200
    labelled = b'{"text": "Paris is in France.", "spans": []}\n'
    for headers in (
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
    ):
        reply = httpx.post(
            url + "/probes",
            files={"file": ("x.jsonl", labelled)},
            data={"name": "smollm2-135m-facts"},
            headers=headers,
        )
        assert "another site" in _error(reply, 403)
    same = url.removesuffix(API)
    ok = httpx.post(url + "/sql", json={"query": "select 1"}, headers={"Origin": same})
    assert ok.status_code == 200
    # a shipped probe name cannot be taken, even from the same origin
    shipped = httpx.post(
        url + "/probes",
        files={
            "file": (
                "x.jsonl",
                b'{"text": "Paris.", "spans": [{"start": 0, "end": 5, "label": 1}]}\n',
            )
        },
        data={"name": "smollm2-135m-facts", "model": str(tiny_model_dir)},
    )
    assert "shipped probe" in _error(shipped, 409)


def test_chunked_oversize_body_is_413(live: tuple[str, Any]) -> None:
    url, _ = live

    def chunks(total: int) -> Iterator[bytes]:
        yield b'{"query": "select 1 -- '
        for _ in range(total // 65536):
            yield b"x" * 65536
        yield b'"}'

    for size in (5 * 1024 * 1024, 100 * 1024 * 1024):
        reply = httpx.post(url + "/sql", content=chunks(size), timeout=60)
        assert "over the limit" in _error(reply, 413)
    assert httpx.get(url + "/health").status_code == 200


# ---- 6. one model gate ------------------------------------------------------------------------


def test_every_model_name_goes_through_the_gate(live: tuple[str, Any]) -> None:
    url, _ = live
    messages = set()
    # outside the allowed root (the tiny model's parent): exists or not, the same words
    for path in ("/etc", "/no/such/dir", "/tmp", "someorg/somemodel"):
        switch: dict[str, Any] = {
            "kind": "decode",
            "params": {"rule": "switch", "prompts": ["Hi"], "large_model": path},
        }
        reply = httpx.post(url + "/experiments", json=switch, timeout=30)
        messages.add(_error(reply, 403).replace(repr(path), "P"))
        small = {**switch, "params": {**switch["params"], "large_model": None}}
        small["params"]["small_model"] = f"{path}@layers=1"
        assert reply.json()["error"]["code"] == "model_not_allowed"
        assert httpx.post(url + "/experiments", json=small, timeout=30).status_code == 403
        judge = {"text": "Paris.", "metrics": ["ccp"], "judge": path}
        messages.add(
            _error(httpx.post(url + "/runs", json=judge, timeout=30), 403).replace(repr(path), "P")
        )
    assert len(messages) == 1  # nothing says whether a path exists outside the allowed roots


# ---- 7. bounds --------------------------------------------------------------------------------


def test_experiment_parameters_have_the_generate_caps(live: tuple[str, Any]) -> None:
    url, _ = live
    for params, needle in (
        ({"max_new_tokens": 10**9}, "max_new_tokens is 1,000,000,000"),
        ({"values": [0.0] * 100}, "values is 100 items"),
        ({"prompts": [{"prompt": "a"}] * 500}, "prompts is 500 items"),
    ):
        body: dict[str, Any] = {"kind": "refusal-sweep", "params": params}
        assert needle in _error(httpx.post(url + "/experiments", json=body, timeout=30), 400)
    for rule_params, needle in (
        ({"max_branches": 10**6}, "params.max_branches is 1,000,000"),
        ({"max_new_tokens": 10**9}, "params.max_new_tokens"),
    ):
        decode: dict[str, Any] = {
            "kind": "decode",
            "params": {"rule": "latr", "prompts": ["a"], "params": rule_params},
        }
        assert needle in _error(httpx.post(url + "/experiments", json=decode, timeout=30), 400)


def test_probe_items_are_capped(live: tuple[str, Any]) -> None:
    url, _ = live
    data = b"".join(
        b'{"text": "Paris is nice.", "spans": [{"start": 0, "end": 5, "label": 1}]}\n'
        for _ in range(4)
    )
    reply = httpx.post(url + "/probes", files={"file": ("x.jsonl", data)}, data={"name": "p1"})
    assert "limit is 3" in _error(reply, 422)


def test_lone_surrogates_are_422_everywhere(live: tuple[str, Any]) -> None:
    url, _ = live
    bodies = {
        "/runs": '{"text": "a\\ud800b"}',
        "/generate": '{"prompt": "\\udfff"}',
        "/groups": '{"prompt": "x\\ud800", "verifier": "regex:a"}',
        "/experiments": '{"kind": "refusal-sweep", "params": {"prompts": [{"prompt": "\\ud800"}]}}',
        "/vectors": '{"name": "v", "prompts": ["\\ud800", "b"]}',
        "/sql": '{"query": "select \'\\ud800\'"}',
        "/diffs": '{"against": "default", "text": "x\\ud800"}',
    }
    for route, raw in bodies.items():
        reply = httpx.post(url + route, content=raw, headers={"content-type": "application/json"})
        assert "lone surrogate" in _error(reply, 422), route
    nan = httpx.post(
        url + "/groups",
        content='{"prompt": "x", "verifier": "regex:a", "thr_beta": NaN}',
        headers={"content-type": "application/json"},
    )
    assert nan.status_code == 422
    assert httpx.get(url + "/jobs").status_code == 200


def test_stored_surrogate_job_rows_are_repaired(tmp_path: Path, tiny_model_dir: Path) -> None:
    from tokenprism.backend.jobs.worker import JobManager
    from tokenprism.backend.store import Store
    from tokenprism.backend.store.records import create_job, get_job

    store = Store(tmp_path / "db.duckdb")
    job_id = create_job(store, "experiment", {"params": {"prompt": "a\ud800b"}}, 1)
    settings = Settings(home=tmp_path, default_model=str(tiny_model_dir))
    manager = JobManager(store, lambda _: None, settings, threading.Lock())  # type: ignore[arg-type,return-value]
    assert manager.repaired == 1
    job = get_job(store, job_id)
    assert job is not None and job["params"]["params"]["prompt"] == "a\ufffdb"
    json.dumps(job).encode("utf-8")  # what made GET /jobs a 500
    store.close()


def test_lru_of_models_and_variants() -> None:
    cache: OrderedDict[str, int] = OrderedDict()
    for i, key in enumerate("abcab"):
        remember(cache, key, i, 2)
    assert list(cache) == ["a", "b"] and cache["b"] == 4


# ---- 8. quiet public surface -------------------------------------------------------------------


def test_docs_are_served_without_a_cdn(live: tuple[str, Any]) -> None:
    url, _ = live
    base = url.removesuffix(API)
    for page in ("/docs", "/redoc"):
        html = httpx.get(base + page).text
        assert "cdn." not in html and "/static-offline-docs/" in html
    assert httpx.get(base + "/static-offline-docs/swagger-ui-bundle.js").status_code == 200


def test_tokens_csv_cells_and_report_note() -> None:
    assert Settings(api_token="   ").api_token is None
    assert Settings(api_token=" " + "k" * 16 + " ").api_token == "k" * 16
    with pytest.raises(ValueError, match="at least 16 characters"):
        Settings(api_token="short")
    assert [csv_safe(v) for v in ("=1+1", "+x", "-2", "@a", "ok", -2.5)] == [
        "'=1+1",
        "'+x",
        "'-2",
        "'@a",
        "ok",
        -2.5,
    ]
    from tokenprism.backend.audit.report import render_audit_report

    html = render_audit_report({"turns": [], "tokens": [], "cut_note": "shows 1 of 9"}, {})
    assert "shows 1 of 9" in html


# ---- 2 / 3. SIGTERM ---------------------------------------------------------------------------


def test_sigterm_ends_the_server_during_a_job_and_a_query(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from tokenprism.backend.store import Store
    from tokenprism.backend.store.records import get_job

    home = tmp_path / "home"
    with server(home, tiny_model_dir, TOKENPRISM_SQL_TIMEOUT_S="300") as (url, proc):
        job_id = httpx.post(url + API + "/experiments", json=LONG_SWEEP, timeout=30).json()[
            "job_id"
        ]
        wait_job(url, job_id, until=("running",), poll=0.2)
        cross = "select count(*) from range(1000000000::BIGINT) a, range(1000000000::BIGINT) b"

        def query() -> None:
            try:
                httpx.post(url + API + "/sql", json={"query": cross}, timeout=60)
            except httpx.HTTPError:
                pass  # the server went away: expected

        thread = threading.Thread(target=query, daemon=True)
        thread.start()
        time.sleep(0.5)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert time.monotonic() - start < 10.0
    with Store(home / "tokenprism.duckdb") as store:
        job = get_job(store, job_id)
    assert job is not None and job["status"] == "interrupted"  # resumable


# ---- 4. Ray -----------------------------------------------------------------------------------


def test_engine_ray_needs_the_operator(live: tuple[str, Any]) -> None:
    url, _ = live
    data = b'{"prompt": "Hi", "response": "Hello."}\n'
    reply = httpx.post(url + "/uploads", files={"file": ("a.jsonl", data)}, data={"engine": "ray"})
    assert "TOKENPRISM_ALLOW_RAY" in _error(reply, 403)


def _listeners(proc: str = "/proc/self") -> dict[int, str]:
    """inode -> local address of every listening TCP socket in ``proc``'s network namespace."""
    out = {}
    for name in ("net/tcp", "net/tcp6"):
        for line in Path(proc, name).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":
                out[int(fields[9])] = fields[1]
    return out


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().name
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


# /proc/net/tcp{,6} addresses (little-endian hex words): 127.0.0.1, ::1, ::ffff:127.0.0.1
LOOPBACK = ("0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F")
WILDCARD = ("00000000", "00000000000000000000000000000000")


def _ray_family(worker_pid: int) -> list[Any]:
    """The Ray child (found from one of its actors) and every process under it."""
    import psutil

    from tokenprism.backend.audit.ray_local import CHILD_MODULE

    parents = psutil.Process(worker_pid).parents()
    child = next(p for p in parents if CHILD_MODULE in " ".join(p.cmdline()))
    return [child, *child.children(recursive=True)]


def _ray_listeners(worker_pid: int) -> dict[str, Any]:
    """Each Ray process's network namespace, its interfaces and listening sockets."""
    namespaces, interfaces, bound = set(), set(), {}
    for process in _ray_family(worker_pid):
        try:
            proc = f"/proc/{process.pid}"
            namespaces.add(os.readlink(f"{proc}/ns/net"))
            dev = Path(proc, "net/dev").read_text().splitlines()[2:]
            interfaces |= {line.split(":")[0].strip() for line in dev}
            table = _listeners(proc)
            bound |= {i: table[i] for i in _socket_inodes(process.pid) if i in table}
        except (OSError, ProcessLookupError):
            continue  # a process that ended meanwhile
    return {"namespaces": namespaces, "interfaces": interfaces, "bound": bound}


def test_local_ray_listens_on_loopback_only(tiny_lm: Any, tmp_path: Path) -> None:
    """A local cluster runs in a network namespace whose only interface is loopback; none of
    its listening sockets is in the host's tables, and its ports are not open off loopback."""
    pytest.importorskip("ray")
    from tokenprism.backend.audit.ingest import parse_transcript
    from tokenprism.backend.audit.ray_engine import RayOptions, score_items_ray
    from tokenprism.backend.audit.ray_local import namespace_refusal
    from tokenprism.backend.store import Store
    from tokenprism.backend.store.records import create_job

    refusal = namespace_refusal()
    if refusal is not None:
        pytest.skip(f"no private network namespace on this machine: {refusal}")
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}]
    items = parse_transcript(json.dumps({"messages": chat}), "jsonl", "one.jsonl")
    store = Store(tmp_path / "ray.duckdb")
    job_id = create_job(store, "audit", {}, len(items))
    seen: dict[str, Any] = {}

    def inspect(shard: int, worker_pid: int) -> None:  # noqa: ARG001
        # the child waits for this callback's return before it goes on: its cluster is up
        seen.update(_ray_listeners(worker_pid), host=_listeners("/proc/self"))

    options = RayOptions(workers=1, object_store_mb=80)
    settings = Settings(home=tmp_path, device="cpu")
    score_items_ray(
        tiny_lm,
        store,
        items,
        settings=settings,
        source="one",
        job_id=job_id,
        options=options,
        on_shard=inspect,
    )
    store.close()
    assert seen["bound"], "no Ray listener found"
    assert os.readlink("/proc/self/ns/net") not in seen["namespaces"]
    assert seen["interfaces"] == {"lo"}  # so a wildcard bind there reaches loopback only
    addresses = {addr.split(":")[0] for addr in seen["bound"].values()}
    assert addresses <= set(LOOPBACK + WILDCARD), seen["bound"]
    assert not set(seen["bound"]) & set(seen["host"])  # not one of them is a host socket
    ports = {addr.split(":")[1] for addr in seen["bound"].values()}
    open_off_loopback = {
        addr
        for addr in seen["host"].values()
        if addr.split(":")[1] in ports and addr.split(":")[0] not in LOOPBACK
    }
    assert not open_off_loopback, open_off_loopback


def test_cli_sql_has_the_same_time_limit(tmp_path: Path) -> None:
    from tests.conftest import run_cli
    from tokenprism.backend.store import Store

    Store(tmp_path / "tokenprism.duckdb").close()
    cross = "select count(*) from range(1000000000::BIGINT) a, range(1000000000::BIGINT) b"
    proc = run_cli("sql", cross, home=tmp_path, env={"TOKENPRISM_SQL_TIMEOUT_S": "1"})
    assert proc.returncode == 2, proc.stderr
    assert "query took longer than 1 s" in proc.stderr and "Traceback" not in proc.stderr
