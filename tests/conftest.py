"""Shared fixtures: a tiny local model, isolated data homes, the real default model."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# One converted default model per checkout: make run and every test share it.
SHARED_MODEL_CACHE = Path(
    os.environ.get("TOKENPRISM_MODEL_CACHE", REPO / "data" / "home" / "models")
)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty data home for this test, with the shared model cache."""
    monkeypatch.setenv("TOKENPRISM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TOKENPRISM_MODEL_CACHE", str(SHARED_MODEL_CACHE))
    monkeypatch.delenv("TOKENPRISM_DB", raising=False)
    from tokenprism.backend.settings import get_settings

    get_settings.cache_clear()
    yield tmp_path / "home"
    get_settings.cache_clear()


@pytest.fixture
def settings(home: Path):  # type: ignore[no-untyped-def]
    from tokenprism.backend.settings import get_settings

    settings = get_settings()
    assert settings.home == home
    return settings


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from tokenprism.backend.models.loader import load_model
    from tokenprism.backend.settings import Settings

    return load_model(
        str(tiny_model_dir), Settings(home=tmp_path_factory.mktemp("tiny-home"), device="cpu")
    )


@pytest.fixture(scope="session")
def default_lm(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from tokenprism.backend.models.loader import load_model
    from tokenprism.backend.settings import Settings

    return load_model(
        "default",
        Settings(
            home=tmp_path_factory.mktemp("default-home"),
            model_cache=SHARED_MODEL_CACHE,
            device="cpu",
        ),
    )


def run_cli(
    *args: str,
    home: Path,
    stdin: str | None = None,
    timeout: float = 300,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real ``tokenprism`` console script in a subprocess."""
    base = {k: v for k, v in os.environ.items() if k != "TOKENPRISM_DB"}
    env = {
        **base,
        "TOKENPRISM_HOME": str(home),
        "TOKENPRISM_MODEL_CACHE": str(SHARED_MODEL_CACHE),
        "COLUMNS": "200",
        **(env or {}),
    }
    # the code under test (PYTHONPATH / the checkout), whatever console script the venv holds
    exe = [sys.executable, "-m", "tokenprism.backend.cli.main"]
    return subprocess.run(
        [*exe, *args],
        capture_output=True,
        text=True,
        env=env,
        input=stdin,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def db_lock_holder(tmp_path: Path) -> Iterator[Path]:
    """A second process holding the write lock on a DuckDB file."""
    path = tmp_path / "locked.duckdb"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('ready', flush=True); "
            "sys.stdin.read()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    try:
        yield path
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)


UNIT_TIER = REPO / "tests" / "unit"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The folder is the tier: every test under tests/unit gets the ``unit`` mark.

    ``pytest -m unit`` (``make test-fast``) then selects the fast tier however the tests were
    collected, and a test cannot land in it without living in tests/unit.
    """
    for item in items:
        if UNIT_TIER in item.path.parents:
            item.add_marker(pytest.mark.unit)


_EXIT_STATUS = 0


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:  # noqa: ARG001
    global _EXIT_STATUS
    _EXIT_STATUS = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:  # noqa: ARG001
    # duckdb 2.0's nanobind bindings print screens of cosmetic "leaked instance" warnings at
    # interpreter finalisation when torch is loaded too; the report is complete by now, so end
    # the process with pytest's own exit status and skip finalisation (as the CLI does).
    if os.environ.get("TOKENPRISM_TEST_FINALIZE"):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_EXIT_STATUS)


def start_backend_thread(settings: object) -> tuple[str, object, object]:
    """Serve ``create_app(settings)`` with uvicorn in a thread on a free loopback port.

    Returns ``(base url, uvicorn server, thread)``; stop with ``server.should_exit = True``.
    """
    import socket
    import threading
    import time

    import httpx
    import uvicorn

    from tokenprism.backend.api.app import create_app

    app = create_app(settings, preload=True)  # type: ignore[arg-type]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(url + "/api/v1/health", timeout=2).status_code == 200:
                return url, server, thread
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the test backend did not start")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def live_backend(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real backend (tiny model, fresh database) on loopback for UI tests."""
    from tokenprism.backend.settings import Settings

    settings = Settings(
        home=tmp_path_factory.mktemp("ui-backend-home"),
        default_model=str(tiny_model_dir),
        device="cpu",
    )
    url, server, thread = start_backend_thread(settings)
    try:
        yield url
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=30)  # type: ignore[attr-defined]
