"""The Ray driver of a local cluster, run by :mod:`backend.audit.ray_local` inside a private
network namespace: ``python -m tokenprism.backend.audit.ray_child``.

Reads its job as one JSON line on stdin, starts a local cluster (inside the namespace, so its
servers reach loopback only), scores the shards with the Ray engine's own code, writes each
one to the shard directory and prints ``{"shard": N, "pid": P}``, then waits for one line on
stdin (the parent has stored the shard; EOF = stop). A failure is one ``{"error": "..."}``
line and exit code 1. The child never touches the DuckDB store: the parent owns it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
import sys
from pathlib import Path
from typing import Any, TextIO

SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def loopback_up() -> None:
    """Bring ``lo`` up (a new network namespace starts with it down; ``ip`` may be missing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        if not flags & IFF_UP:
            fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | IFF_UP, b""))


def _protocol_streams() -> tuple[TextIO, TextIO]:
    """Private copies of stdin/stdout for the JSON lines; fd 0 becomes /dev/null and fd 1 a
    copy of stderr, so nothing Ray prints can corrupt the protocol and the cluster's processes
    (which inherit fds 0-2) never hold the parent's pipes open after this process exits."""
    reader = os.fdopen(os.dup(0), "r")  # os.dup: not inherited by Ray's processes
    writer = os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    return reader, writer


def _say(out: TextIO, message: dict[str, Any]) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


def run(job: dict[str, Any], reader: TextIO, out: TextIO) -> None:
    """Score the job's shards, announcing each as it is written; stop when the parent does."""
    from tokenprism.backend.audit.ingest import WorkItem
    from tokenprism.backend.audit.ray_engine import (
        RayOptions,
        ShardJob,
        ShardPlan,
        _scored_shards,
        require_ray,
        shard_path,
        write_shard,
    )
    from tokenprism.backend.settings import Settings

    shard_job = ShardJob(
        model=job["model"],
        record=job["record"],
        settings=Settings(**job["settings"]),
        options=RayOptions(**job["options"]),
        extras=job["extras"],
        params=job["params"],
        upload_id=job["upload_id"],
        job_id=job["job_id"],
        shard_dir=Path(job["shard_dir"]),
    )
    by_index: dict[int, WorkItem] = {}
    todo: list[ShardPlan] = []
    for shard in job["shards"]:
        items = [WorkItem(**payload) for payload in shard["items"]]
        by_index.update((item.index, item) for item in items)
        todo.append(ShardPlan(int(shard["shard"]), tuple(item.index for item in items)))
    scored = _scored_shards(require_ray(), shard_job, todo, by_index)
    try:
        for plan, parquet, pid in scored:
            path = shard_path(shard_job.shard_dir, plan.shard)
            write_shard(path, shard_job.manifest(plan, pid), parquet)
            _say(out, {"shard": plan.shard, "pid": pid})
            if not reader.readline():  # the parent stopped (cancelled, failed)
                return
    finally:
        scored.close()  # shuts the cluster down


def main() -> int:
    from tokenprism.backend.errors import UserError

    reader, out = _protocol_streams()
    try:
        loopback_up()
        run(json.loads(reader.readline()), reader, out)
    except UserError as err:
        _say(out, {"error": str(err)})
        return 1
    except Exception as err:  # the parent shows the message; the traceback stays here
        _say(out, {"error": f"{type(err).__name__}: {err}"})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
