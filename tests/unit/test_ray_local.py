"""The namespaced local Ray cluster's plumbing, without a cluster: the refusal where no
namespace can be made, the operator's way out, and the child's error and exit reports."""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from tokenprism.backend.audit import ray_local
from tokenprism.backend.errors import UserError
from tokenprism.backend.settings import Settings


@pytest.fixture
def no_unshare(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """A PATH without unshare (a machine without util-linux), probed afresh."""
    monkeypatch.setenv("PATH", str(tmp_path))
    ray_local.namespace_refusal.cache_clear()
    yield
    ray_local.namespace_refusal.cache_clear()


@pytest.mark.usefixtures("no_unshare")
def test_without_a_namespace_a_local_cluster_is_refused_with_the_way_out(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        ray_local.wildcard_allowed(Settings(home=tmp_path))
    message = str(err.value)
    assert "unshare command" in message and "TOKENPRISM_RAY_ADDRESS" in message
    assert "TOKENPRISM_RAY_ALLOW_WILDCARD=1" in message


@pytest.mark.usefixtures("no_unshare")
def test_the_operator_may_allow_a_wildcard_cluster(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger=ray_local.__name__):
        assert ray_local.wildcard_allowed(Settings(home=tmp_path, ray_allow_wildcard=True))
    assert "every interface" in caplog.text


def _child(script: str) -> tuple[subprocess.Popen[str], IO[str]]:
    stderr = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        start_new_session=True,
    )
    return proc, stderr


def test_a_child_error_line_is_a_user_error_with_its_message() -> None:
    script = "import json; print('ray noise'); print(json.dumps({'error': 'no such model'}))"
    proc, stderr = _child(script + "; raise SystemExit(1)")
    with stderr, pytest.raises(UserError, match="the Ray engine failed: no such model"):
        list(ray_local._messages(proc, stderr))
    ray_local.stop_child(proc)


def test_a_child_that_dies_silently_is_reported_with_its_last_stderr_line() -> None:
    proc, stderr = _child(
        "import json, sys; print(json.dumps({'shard': 0, 'pid': 1}), flush=True); "
        "sys.stderr.write('Traceback...\\nMemoryError\\n'); raise SystemExit(3)"
    )
    with stderr, pytest.raises(UserError, match="ended with code 3: MemoryError") as err:
        assert next(ray_local._messages(proc, stderr)) == {"shard": 0, "pid": 1}
        next(ray_local._messages(proc, stderr))
    assert "Traceback" not in str(err.value)
    ray_local.stop_child(proc)
