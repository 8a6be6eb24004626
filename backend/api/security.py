"""What keeps the HTTP API local and bounded: Host / Origin checks, body limits, one model gate.

* **Host**: the server answers only the names it serves (127.0.0.1, localhost, [::1] and
  ``TOKENPRISM_ALLOWED_HOSTS``); any other ``Host`` is a 421. A web page that rebinds its own
  DNS name to 127.0.0.1 therefore reaches nothing (DNS rebinding).
* **Origin**: a state-changing request (POST, PUT, PATCH, DELETE) whose ``Origin`` is not the
  server's own, or whose ``Sec-Fetch-Site`` is ``cross-site`` / ``same-site``, is a 403 whether
  a token is set or not: a form a foreign page submits (multipart needs no CORS preflight)
  must not train probes or start Ray. Clients that are not browsers send neither header.
* **The UI's own pages**: Explore's live view opens the token stream from the browser, whose
  origin is the UI's (another port). Origins listed in ``TOKENPRISM_UI_ORIGINS`` (``up`` adds
  its UI's) pass the Origin check and get CORS answers on :data:`BROWSER_PATHS` only; every
  other origin, and those origins on every other path, are refused as above. The token is
  still required.
* **Body size**: the bytes of a request body are counted as they arrive, whatever the transfer
  encoding (``Content-Length`` or chunked); past the limit the answer is 413 and the rest is
  never read.
* **Model names**: :func:`gate_model_name` is the one check every user-named model goes
  through (the run's model, NLI judges, the switch rule's models, every ``NAME@...`` variant
  and the adapter paths they name):
  local paths only inside ``TOKENPRISM_ALLOWED_MODEL_DIRS``, hub ids only with
  ``TOKENPRISM_ALLOW_HUB_MODELS``. Its refusal reads the same whether or not a path exists.

The middleware is plain ASGI (no ``BaseHTTPMiddleware``) so that it sees the body as a stream.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tokenprism.backend.errors import UserError
from tokenprism.backend.models.loader import DEFAULT_MODEL
from tokenprism.backend.settings import Settings
from tokenprism.backend.store.text import repair_text, unencodable  # noqa: F401 - re-exported

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# routes a browser page may read without a token when none is set: nothing here changes state
_DOCS_PATHS = ("/docs", "/redoc", "/openapi.json")
# the routes a page of the UI calls from the browser (the live stream and its Stop button)
BROWSER_PATHS = re.compile(r"^/api/v1/generate/stream(/[A-Za-z0-9_-]{1,64}/cancel)?$")


class ModelNotAllowed(UserError):
    """A model name the server may not load for an API client (403)."""


def _host_name(value: str) -> str:
    """``Host`` header or URL netloc without the port, lower-cased (IPv6 keeps brackets)."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[: end + 1] if end > 0 else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def allowed_host(host: str, settings: Settings) -> bool:
    """Whether the server answers ``Host: host`` (see the module docstring)."""
    name = _host_name(host)
    extra = [h.strip().lower() for h in settings.allowed_hosts]
    if "*" in extra and settings.api_token:
        return True
    return bool(name) and (name in LOOPBACK_HOSTS or name in extra)


def cross_site(method: str, headers: dict[str, str]) -> str | None:
    """Why a state-changing request comes from another site, or None when it does not."""
    if method not in STATE_CHANGING:
        return None
    fetch_site = headers.get("sec-fetch-site", "").strip().lower()
    if fetch_site in ("cross-site", "same-site"):
        return f"Sec-Fetch-Site is {fetch_site}"
    origin = headers.get("origin")
    if origin is None:
        return None
    parts = urlsplit(origin.strip())
    own = headers.get("host", "").strip().lower()
    if origin.strip().lower() == "null" or parts.netloc.lower() != own:
        return f"Origin {origin.strip()[:100]!r} is not this server"
    return None


def ui_origin(path: str, headers: dict[str, str], settings: Settings) -> str | None:
    """The request's ``Origin`` when it is one of the UI's and ``path`` a browser path."""
    origin = headers.get("origin")
    if origin is None or not BROWSER_PATHS.fullmatch(path):
        return None
    clean = origin.strip().lower().rstrip("/")
    return clean if clean in settings.ui_origins else None


def _cors_headers(origin: str) -> list[tuple[bytes, bytes]]:
    return [(b"access-control-allow-origin", origin.encode()), (b"vary", b"Origin")]


async def _preflight(origin: str, send: Send) -> None:
    """The answer to a CORS preflight from the UI's origin on a browser path."""
    headers = [
        *_cors_headers(origin),
        (b"access-control-allow-methods", b"POST"),
        (b"access-control-allow-headers", b"authorization, content-type"),
        (b"access-control-max-age", b"600"),
        (b"content-length", b"0"),
    ]
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


def _with_cors(send: Send, origin: str) -> Send:
    async def send_cors(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *_cors_headers(origin)]}
        await send(message)

    return send_cors


def _reply(status: int, code: str, message: str, headers: list[tuple[bytes, bytes]] | None = None):  # type: ignore[no-untyped-def]
    body = json.dumps({"error": {"code": code, "message": message}}).encode()

    async def send_it(send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *(headers or []),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return send_it


class GuardMiddleware:
    """Host, Origin and body-size checks in front of every route (see the module docstring).

    ``body_limit(path)`` gives the byte limit of a path's request body. The body is read here,
    counted chunk by chunk, and handed on whole: the routes read it in full anyway, and a body
    that passes is at most the limit.
    """

    def __init__(self, app: ASGIApp, settings: Settings, body_limit: Callable[[str], int]) -> None:
        self.app, self.settings, self.body_limit = app, settings, body_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if not allowed_host(host, self.settings):
            reply = _reply(
                421,
                "misdirected_request",
                f"this server does not answer to Host {host[:100]!r}; "
                "add the name to TOKENPRISM_ALLOWED_HOSTS if it is yours",
            )
            await reply(send)
            return
        origin = ui_origin(scope["path"], headers, self.settings)
        if origin is not None:  # the UI's own page on a browser path: CORS, no Origin refusal
            if scope["method"] == "OPTIONS":
                await _preflight(origin, send)
                return
            send = _with_cors(send, origin)
        elif (why := cross_site(scope["method"], headers)) is not None:
            message = f"refused a state-changing request from another site ({why})"
            await _reply(403, "cross_site", message)(send)
            return
        limit = self.body_limit(scope["path"])
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            await _too_large(limit)(send)
            return
        if scope["method"] in STATE_CHANGING:
            body = await _read_body(receive, send, limit)
            if body is None:
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)


async def _read_body(receive: Receive, send: Send, limit: int) -> bytes | None:
    """The whole body, counted chunk by chunk; None once answered 413 (or the client left)."""
    chunks, total = [], 0
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            return None
        chunk = event.get("body", b"")
        total += len(chunk)
        if total > limit:
            await _too_large(limit)(send)
            return None
        chunks.append(chunk)
        if not event.get("more_body", False):
            return b"".join(chunks)


def _too_large(limit: int):  # type: ignore[no-untyped-def]
    return _reply(413, "too_large", f"request body over the limit of {limit} bytes")


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later: the disconnect message

    return replay


def token_ok(authorization: str, token: str | None) -> bool:
    """Whether an ``Authorization`` header carries the bearer ``token`` (always, when unset)."""
    import hmac

    if not token:
        return True
    scheme, _, given = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), token.encode())


# ---- the one model gate ------------------------------------------------------------------------


def _refused(name: str) -> ModelNotAllowed:
    # The same words whether or not `name` exists on disk: the reply reveals nothing about the
    # file system outside the allowed directories.
    return ModelNotAllowed(
        f"model {name[:200]!r} is not available on this server: local models must be inside "
        "TOKENPRISM_ALLOWED_MODEL_DIRS and Hugging Face Hub ids need TOKENPRISM_ALLOW_HUB_MODELS=1"
    )


def gate_model_name(
    name: str, settings: Settings, *, trusted: tuple[str, ...] = (), variants: bool = True
) -> str:
    """The name a client asked for, resolved and authorised, or :class:`ModelNotAllowed`.

    ``default`` and the server's default model, and the names in ``trusted`` (settings the
    operator chose, e.g. the NLI judge), pass unchanged. A variant (``NAME@int8``,
    ``NAME@layers=n``, ``NAME@adapter=PATH``, ... see :mod:`backend.models.variants`) gates
    ``NAME``, and an adapter's PATH must resolve inside an allowed directory or the home's
    ``adapters/`` (where cDPO adapters are saved). A path (anything that looks like one, or
    exists) must resolve inside an allowed directory; anything else is a hub id and needs the
    hub opt-in. With ``variants=False`` (names no variant applies to, e.g. NLI judges) the
    whole name is gated as a plain one.
    """
    from tokenprism.backend.models.variants import join_spec, split_spec, variant_paths

    if name in (DEFAULT_MODEL, settings.default_model, *trusted):
        return name
    if "\x00" in name or len(name) > 1000:
        raise _refused(name)
    if not variants:
        return _gate_plain(name, settings)
    base, suffixes = split_spec(name)  # an unknown or malformed suffix: a 400 naming it
    if not suffixes:
        return _gate_plain(name, settings)
    adapter_roots = [*_allowed_dirs(settings), (settings.home / "adapters").resolve()]
    for path in variant_paths(suffixes):
        if not any(path.is_relative_to(d) for d in adapter_roots):
            raise _refused(name)
    try:
        gated = gate_model_name(base, settings, trusted=trusted)
    except ModelNotAllowed:
        raise _refused(name) from None  # the name as written, suffixes included
    return join_spec(gated, suffixes)


def _allowed_dirs(settings: Settings) -> list[Path]:
    return [Path(d).expanduser().resolve() for d in settings.allowed_model_dirs]


def _gate_plain(name: str, settings: Settings) -> str:
    """:func:`gate_model_name` of a name without variants."""
    path = Path(name).expanduser()
    looks_local = name.startswith((".", "/", "~")) or name.endswith(".gguf") or name.count("/") > 1
    try:
        exists = path.exists()
    except OSError:
        exists = False
    if looks_local or exists:
        resolved = path.resolve()
        if any(resolved.is_relative_to(d) for d in _allowed_dirs(settings)):
            return str(resolved)
        raise _refused(name)
    if not settings.allow_hub_models:
        raise _refused(name)
    return name


def gate_judge(name: str | None, settings: Settings) -> str | None:
    """A client-named CCP judge through the model gate (``fallback`` and the setting pass)."""
    if name is None:
        return None
    return gate_model_name(name, settings, trusted=("fallback", settings.nli_model), variants=False)


# ---- text at the boundary ----------------------------------------------------------------------


# ---- wiring into the app -----------------------------------------------------------------------


def body_limit_for(settings: Settings) -> Callable[[str], int]:
    """The request-body byte limit of each path: uploads get the upload limit (plus room for
    the multipart envelope), everything else ``max_body_bytes``."""
    upload_paths = ("/api/v1/uploads",)

    def limit(path: str) -> int:
        if path in upload_paths:
            return settings.upload_max_bytes + 1024 * 1024
        return settings.max_body_bytes

    return limit


def install(app: Any, settings: Settings) -> None:
    """Add the guard middleware and the status codes of the errors defined for hardening."""
    from fastapi.responses import JSONResponse

    from tokenprism.backend.errors import LimitExceeded, NameTaken, QueryLimit, QueueFull

    app.add_middleware(GuardMiddleware, settings=settings, body_limit=body_limit_for(settings))

    def handler(status: int, code: str, headers: dict[str, str] | None = None) -> Any:
        async def handle(_: Any, err: Exception) -> JSONResponse:
            content = {"error": {"code": code, "message": str(err)}}
            return JSONResponse(status_code=status, content=content, headers=headers)

        return handle

    retry = str(QueueFull.retry_after_s)
    app.add_exception_handler(QueueFull, handler(429, "queue_full", {"Retry-After": retry}))
    app.add_exception_handler(ModelNotAllowed, handler(403, "model_not_allowed"))
    app.add_exception_handler(NameTaken, handler(409, "name_taken"))
    app.add_exception_handler(LimitExceeded, handler(422, "limit_exceeded"))
    app.add_exception_handler(QueryLimit, handler(400, "query_limit"))


def public_health(full: dict[str, Any], settings: Settings, authorization: str) -> dict[str, Any]:
    """``/health`` as a caller may see it: with a token set and not given, status and version
    only (paths, models and queue say too much about the machine)."""
    if settings.api_token and not token_ok(authorization, settings.api_token):
        return {"status": full["status"], "version": full["version"], "auth": True}
    return full


def check_engine_allowed(engine: str, settings: Settings) -> None:
    """``engine=ray`` from the API only when the operator enabled it (Ray has no auth)."""
    if engine == "ray" and not settings.allow_ray:
        raise ModelNotAllowed(
            "engine=ray is disabled on this server: Ray clusters have no authentication, so "
            "the operator must enable it (TOKENPRISM_ALLOW_RAY=1)"
        )


def check_probe_training(name: str, n_items: int, settings: Settings) -> None:
    """A probe-training request: not a shipped name, not more items than the cap."""
    from tokenprism.backend.errors import LimitExceeded
    from tokenprism.backend.probes.storage import check_not_shipped

    check_not_shipped(name, settings)
    if n_items > settings.probe_max_items:
        raise LimitExceeded(
            f"the labelled file has {n_items:,} items; the limit is {settings.probe_max_items:,} "
            "(TOKENPRISM_PROBE_MAX_ITEMS)"
        )


def gate_experiment_models(kind: str, params: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The switch rule's ``large_model`` / ``small_model`` through :func:`gate_model_name`."""
    if kind != "decode":
        return params
    out = dict(params)
    for key in ("large_model", "small_model"):
        if isinstance(out.get(key), str) and out[key]:
            out[key] = gate_model_name(out[key], settings)
    return out
