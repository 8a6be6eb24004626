"""`tokenprism up`'s supervisor: restarts a crashed backend, stops cleanly on Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO
from tokenprism.backend.cli.serve import supervise


def _proc(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code])


def test_a_crashed_backend_is_restarted_until_the_ui_stops() -> None:
    started: list[subprocess.Popen[bytes]] = []

    def restart() -> subprocess.Popen[bytes]:
        started.append(_proc("import time; time.sleep(60)"))
        return started[-1]

    backend = _proc("raise SystemExit(3)")  # crashes at once
    ui = _proc("import time; time.sleep(3)")  # the UI stops after a while
    procs = [backend, ui]
    try:
        supervise(procs, restart, poll=0.1)
        assert len(started) == 1  # restarted once, then kept running
        assert procs[0] is started[0] and procs[0].poll() is None
    finally:
        for p in [*procs, *started]:
            if p.poll() is None:
                p.kill()


def test_ctrl_c_is_a_clean_stop_with_exit_0(tmp_path: Path) -> None:
    script = tmp_path / "up.py"
    script.write_text(
        "import subprocess, sys\n"
        "from tokenprism.backend.cli.serve import run_supervised\n"
        "sleep = [sys.executable, '-c', 'import time; time.sleep(60)']\n"
        "procs = [subprocess.Popen(sleep), subprocess.Popen(sleep)]\n"
        "print('ready', flush=True)\n"
        "run_supervised(procs, lambda: subprocess.Popen(sleep))\n",
        encoding="utf-8",
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # as from a terminal: a suite started as a background job (`make test &`) ignores
        # SIGINT, and a child inherits that, so the Ctrl-C below would never arrive
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr.decode()
    assert b"stopping TokenPrism" in stderr
    assert b"Traceback" not in stderr
