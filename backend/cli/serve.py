"""Processes: ``serve`` (the HTTP API), ``ui`` (Streamlit) and ``up`` (both, on loopback)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from tokenprism.backend.cli.common import err, load_settings, open_store, out
from tokenprism.backend.errors import UserError

# `up` starts the API with this module path, so `python -m` of it must stay runnable
CLI_MODULE = "tokenprism.backend.cli.main"


def serve(
    host: str = typer.Option("127.0.0.1", help="address to bind (loopback by default)"),
    port: int = typer.Option(8000, help="TCP port"),
    model: str | None = typer.Option(None, "--model", "-m", help="model to load at start-up"),
    no_model: bool = typer.Option(
        False, "--no-model", help="load no model: only audits from API logprobs files work"
    ),
) -> None:
    """Run the HTTP API (one process: the only owner of the model and the database)."""
    from tokenprism.backend.api.app import create_app
    from tokenprism.backend.api.serving import run_server
    from tokenprism.backend.settings import get_settings

    settings = get_settings()
    if model:
        settings.default_model = model
    settings.no_model = settings.no_model or no_model
    if not _is_loopback(host) and not settings.api_token:
        raise UserError(
            f"refusing to listen on {host} without TOKENPRISM_API_TOKEN: anyone who can reach "
            "the port could use the model and read the database"
        )
    open_store().close()  # a locked or unreadable database fails here, with one line
    err.print(
        f"TokenPrism API on http://{host}:{port}/api/v1 (docs at /docs), "
        f"model {'none (--no-model)' if settings.no_model else settings.default_model}, "
        f"database {settings.db_path}"
    )
    run_server(
        create_app(settings, preload=not settings.no_model), settings, host, port
    )  # SIGTERM: < 10 s


def _streamlit_command(port: int) -> list[str]:
    import tokenprism.app

    script = Path(tokenprism.app.__file__).parent / "streamlit_app.py"
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(script),
        "--server.address",
        "127.0.0.1",
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.maxUploadSize",
        "50",
    ]


def ui(
    port: int = typer.Option(8501, "--port", help="UI port (loopback)"),
    api_url: str = typer.Option("http://127.0.0.1:8000", help="backend URL"),
) -> None:
    """Run the Streamlit UI against a running backend."""
    import subprocess

    env = {**os.environ, "TOKENPRISM_API_URL": api_url}
    err.print(f"TokenPrism UI on http://127.0.0.1:{port} (backend {api_url})")
    raise SystemExit(subprocess.call(_streamlit_command(port), env=env))


def up(
    api_port: int = typer.Option(8000, help="API port (loopback)"),
    ui_port: int = typer.Option(8501, help="UI port (loopback)"),
    model: str | None = typer.Option(None, "--model", "-m", help="model to serve"),
    demo: bool = typer.Option(True, help="load the sample transcripts on first start"),
) -> None:
    """Start the backend and the UI on loopback (what `make run` does); Ctrl-C stops both."""
    import subprocess
    import time as _time

    import httpx

    from tokenprism.backend.resources import shipped

    exe = [sys.executable, "-m", CLI_MODULE]
    api = f"http://127.0.0.1:{api_port}"
    serve_cmd = [*exe, "serve", "--port", str(api_port), *(["--model", model] if model else [])]
    procs = [subprocess.Popen(serve_cmd)]
    try:
        err.print("starting the backend (the first start converts the embedded model)…")
        deadline = _time.monotonic() + 600
        while True:
            if procs[0].poll() is not None:
                raise UserError("the backend stopped during start-up (see the lines above)")
            try:
                health = httpx.get(f"{api}/api/v1/health", timeout=2).json()
                break
            except httpx.HTTPError:
                if _time.monotonic() > deadline:
                    raise UserError("the backend did not answer within 10 minutes") from None
                _time.sleep(0.5)
        headers = (
            {"Authorization": f"Bearer {load_settings().api_token}"}
            if load_settings().api_token
            else {}
        )
        sample = shipped("samples", "chats.jsonl")
        if demo and sample.is_file():
            uploads = httpx.get(f"{api}/api/v1/uploads", headers=headers, timeout=30).json()
            if not uploads.get("uploads"):
                httpx.post(
                    f"{api}/api/v1/uploads",
                    headers=headers,
                    timeout=120,
                    files={"file": (sample.name, sample.read_bytes())},
                )
                err.print("loaded the demo transcripts (data/samples/chats.jsonl)")
        env = {**os.environ, "TOKENPRISM_API_URL": api}
        procs.append(
            subprocess.Popen(_streamlit_command(ui_port), env=env, stdout=subprocess.DEVNULL)
        )
        out.print(
            f"[bold green]TokenPrism is up:[/] http://127.0.0.1:{ui_port}  "
            f"(API {api}/api/v1, model {health['default_model']}). Ctrl-C stops both."
        )
        while all(p.poll() is None for p in procs):
            _time.sleep(0.5)
        raise UserError("a TokenPrism process stopped; shutting down")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
