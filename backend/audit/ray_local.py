"""A local Ray cluster that cannot be reached from the network.

Ray 2.60's gcs_server, raylet and core workers bind the wildcard address whatever
``_node_ip_address`` says, and no Ray setting changes that. So when TokenPrism starts a cluster
of its own, the Ray driver and its whole cluster run in a child process
(:mod:`backend.audit.ray_child`) inside a private user + network namespace whose only interface
is loopback: "every interface" is then 127.0.0.1 / ::1 of that namespace, invisible from the
host and the network.

The child gets its job as one JSON line on stdin, writes each scored shard to the shard
directory and prints ``{"shard": N, "pid": P}``; the parent (which owns the DuckDB store)
ingests the shard and answers one line so the child goes on (EOF: stop). An error is one
``{"error": "..."}`` line and a non-zero exit.

Where the namespace cannot be made (no ``unshare``, user namespaces refused) a local cluster is
refused unless the operator sets ``TOKENPRISM_RAY_ALLOW_WILDCARD=1``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Generator, Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, TypeVar

from tokenprism.backend.errors import UserError
from tokenprism.backend.settings import Settings

P = TypeVar("P")  # a shard plan
log = logging.getLogger(__name__)

CHILD_MODULE = "tokenprism.backend.audit.ray_child"
UNSHARE = ("--user", "--map-root-user", "--net")
WAY_OUT = (
    "start a Ray cluster yourself (bound where you choose) and set TOKENPRISM_RAY_ADDRESS, "
    "or set TOKENPRISM_RAY_ALLOW_WILDCARD=1 to start one whose servers listen on every interface"
)


@lru_cache(maxsize=1)
def namespace_refusal() -> str | None:
    """Why a private network namespace cannot be made here (None: it can); probed once."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return "the unshare command (util-linux) is not installed"
    try:
        probe = subprocess.run(
            [unshare, *UNSHARE, "true"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unshare failed: {err}"
    if probe.returncode != 0:
        reason = probe.stderr.strip().splitlines()[-1:] or [f"exit code {probe.returncode}"]
        return f"user namespaces are refused here ({reason[0]})"
    return None


def wildcard_allowed(settings: Settings) -> bool:
    """True: start the local cluster in-process (its servers on every interface), which only
    the operator may choose where no namespace can be made; False: use the namespace."""
    refusal = namespace_refusal()
    if refusal is None:
        return False
    if not settings.ray_allow_wildcard:
        raise UserError(
            f"refusing to start a local Ray cluster: its servers would listen on every network "
            f"interface and no private network namespace can be made ({refusal}); {WAY_OUT}"
        )
    log.warning(
        "starting a local Ray cluster whose servers listen on every interface "
        "(TOKENPRISM_RAY_ALLOW_WILDCARD=1; no network namespace: %s)",
        refusal,
    )
    return True


def child_command() -> list[str]:
    """``unshare`` running the child with loopback up (the child brings it up itself where
    ``ip`` is missing)."""
    unshare = shutil.which("unshare") or "unshare"
    child = [sys.executable, "-m", CHILD_MODULE]
    if shutil.which("ip") is None:
        return [unshare, *UNSHARE, *child]
    # the interpreter goes in as $0, so its path needs no shell quoting
    script = 'ip link set lo up && exec "$0" -m ' + CHILD_MODULE
    return [unshare, *UNSHARE, "sh", "-c", script, sys.executable]


def namespaced_shards(
    job_line: str, plans: Mapping[int, P], path_of: Callable[[int], Path]
) -> Generator[tuple[P, Path, int], None, None]:
    """Run the child on ``job_line`` (its JSON job); yield each shard it wrote as
    ``(plan, path, worker pid)``. The child's process group is killed when the iteration
    ends, whatever ends it (done, cancelled, failed)."""
    with tempfile.TemporaryFile(mode="w+") as stderr:
        proc = subprocess.Popen(
            child_command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,  # a file: Ray's chatter can never fill a pipe and block the child
            text=True,
            start_new_session=True,  # its own process group, killed as one
            env={**os.environ, "RAY_AUTH_MODE": "token"},
        )
        try:
            assert proc.stdin is not None and proc.stdout is not None
            _send(proc.stdin, job_line)
            for message in _messages(proc, stderr):
                shard = int(message["shard"])
                yield plans[shard], path_of(shard), int(message["pid"])
                _send(proc.stdin, "next")  # ingested: the child may go on
        finally:
            stop_child(proc)


def _send(stream: IO[str], line: str) -> None:
    try:
        stream.write(line + "\n")
        stream.flush()
    except BrokenPipeError:
        pass  # the child is gone; reading its output reports how it ended


def _messages(proc: subprocess.Popen[str], stderr: IO[str]) -> Iterator[dict[str, Any]]:
    """The child's JSON lines until it exits; its error as a UserError (no traceback)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            continue  # not a protocol line (the child keeps its output off this pipe)
        if "error" in message:
            proc.wait()
            raise UserError(f"the Ray engine failed: {message['error']}")
        yield message
    code = proc.wait()
    if code != 0:
        stderr.seek(0)
        tail = stderr.read().strip().splitlines()[-1:] or ["no message"]
        raise UserError(f"the Ray engine's process ended with code {code}: {tail[0]}")


def _kill(kill: Any, pid: int) -> None:
    try:
        kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # gone already


def stop_child(proc: subprocess.Popen[str]) -> None:
    """Kill the child, its cluster and every process they started."""
    try:
        import psutil

        # Ray may put its servers in sessions of their own: collect them by parentage first
        family = psutil.Process(proc.pid).children(recursive=True)
    except Exception:  # psutil missing or the child already gone
        family = []
    _kill(os.killpg, proc.pid)  # the child's group (start_new_session: pgid = its pid)
    for process in family:
        _kill(os.kill, process.pid)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()
    proc.wait()
