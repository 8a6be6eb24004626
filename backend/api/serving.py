"""``tokenprism serve``: uvicorn with a shutdown that does not wait on running work.

On SIGTERM (or Ctrl-C) the server at once sets the job manager's stopping flag (every
generation raises at its next token; the running job is recorded ``interrupted``, so it
resumes) and interrupts every running SQL query; uvicorn then gives open requests
``shutdown_grace_s`` seconds before it closes them. The process ends well within 10 s
whatever was running.
"""

from __future__ import annotations

import logging
from typing import Any

from tokenprism.backend.settings import Settings

log = logging.getLogger(__name__)


def stop_work(app: Any) -> None:
    """Make the running job and queries stop now (called from the signal handler)."""
    service = getattr(app.state, "service", None)
    if service is None:
        return
    service.jobs.stopping.set()
    service.store.stop_queries()


def run_server(app: Any, settings: Settings, host: str, port: int) -> None:
    """Serve ``app`` until SIGTERM / SIGINT; see the module docstring."""
    import uvicorn

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            stop_work(app)
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        workers=1,
        log_level="warning",
        timeout_graceful_shutdown=max(1, int(settings.shutdown_grace_s)),
    )
    _Server(config).run()
