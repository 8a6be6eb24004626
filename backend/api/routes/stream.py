"""``POST /generate/stream``: sample token by token and answer with server-sent events.

Events: ``start`` (the ``stream_id`` that ``POST /generate/stream/{id}/cancel`` stops),
``queued`` (``position``, while another stream holds the model), ``token`` (one per generated
token, see :class:`sampling.stream.TokenStream`), then one ``done`` (the stored ``run_id``, the
stop reason, what the rules did, timings) or one ``error``.

Limits are those of ``POST /generate``: the same body (caps, UTF-8-only strings), the context
checked before the model sees the prompt (422 naming the prompt's tokens and the context),
the cancel flag (:func:`limits.cancel_scope`, with the server's own stop) read before every
token. Streams waiting for the model are capped like queued jobs (429).

Threads: the model loop runs in a worker thread holding the model lock and hands events over a
bounded queue; the event loop only relays them. A client gone (disconnect), too slow (its
buffer stays full for ``_SLOW_CLIENT_S``) or a cancel request sets the cancel flag, so the
model is freed within one token; a cancelled stream still stores what it generated.
"""

from __future__ import annotations

import asyncio
import json
import math
import queue
import secrets
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tokenprism.analysis.stream_rules import StreamRule
from tokenprism.backend.api.schemas import GenerateRequest
from tokenprism.backend.api.service import (
    NotFound,
    Service,
    ServiceDep,
    metric_families,
    protected_router,
)
from tokenprism.backend.errors import QueueFull
from tokenprism.backend.limits import cancel_scope, check_context
from tokenprism.backend.models.loader import LoadedModel
from tokenprism.backend.probes.storage import probe_for
from tokenprism.backend.sampling.stream import StreamParams, TokenStream, encode_ids
from tokenprism.backend.sampling.types import prompt_ids
from tokenprism.backend.scoring.extras import ExtraPlan, extra_request, plan_extras
from tokenprism.backend.scoring.runner import score_batch

router = protected_router()

_BUFFER = 64  # events held for a slow client before the model waits on it
_SLOW_CLIENT_S = 30.0  # a client that reads nothing for this long is dropped
_POLL_S = 0.02


class RuleBody(BaseModel):
    """One stop/mark/branch rule (see :class:`analysis.stream_rules.StreamRule`)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    metric: Literal["entropy", "logprob", "surprisal", "window_entropy", "probe"]
    op: Literal[">", "<"] = ">"
    threshold: float
    patience: int = Field(1, ge=1, le=1024)
    action: Literal["stop", "mark", "branch"] = "stop"
    branches: int = Field(4, ge=2, le=16)

    @field_validator("threshold")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("threshold must be a finite number")
        return value

    def rule(self) -> StreamRule:
        return StreamRule(
            self.metric, self.threshold, self.op == ">", self.patience, self.action, self.branches
        )


class StreamRequest(GenerateRequest):
    """The body of ``POST /generate`` (one sample) plus rules and a probe."""

    n: int = Field(1, ge=1, le=1, description="a stream is one sample")
    stop_when: list[RuleBody] = Field(default_factory=list, max_length=8)
    probe: str | None = Field(
        None, max_length=64, description="probe name, or 'auto' for the newest matching one"
    )


@dataclass
class _Job:
    """Everything the worker thread needs, checked before the stream starts."""

    lm: LoadedModel
    body: StreamRequest
    ids: list[int]
    chat: bool
    params: StreamParams
    plan: ExtraPlan | None
    began: float


class _Streams:
    """The streams of one app: a FIFO of those waiting for the model (a stream's position is
    its place + 1) and every open stream's cancel flag by its id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tickets: list[object] = []
        self.cancels: dict[str, threading.Event] = {}

    def open(self, limit: int) -> tuple[str, threading.Event]:
        """Register a new stream (429 when ``limit`` streams already wait for the model)."""
        with self._lock:
            if len(self._tickets) >= limit:
                raise QueueFull(
                    f"{limit} streams are already waiting for the model; try again later "
                    "(TOKENPRISM_MAX_QUEUED_JOBS sets the limit)"
                )
            stream_id = secrets.token_urlsafe(12)
            self.cancels[stream_id] = threading.Event()
            return stream_id, self.cancels[stream_id]

    def close(self, stream_id: str) -> None:
        with self._lock:
            self.cancels.pop(stream_id, None)

    def join(self, ticket: object) -> None:
        with self._lock:
            self._tickets.append(ticket)

    def leave(self, ticket: object) -> None:
        with self._lock:
            if ticket in self._tickets:
                self._tickets.remove(ticket)

    def position(self, ticket: object) -> int:
        with self._lock:
            return self._tickets.index(ticket) + 1


def _streams(request: Request) -> _Streams:
    state = request.app.state
    with _STATE_LOCK:
        if not hasattr(state, "streams"):
            state.streams = _Streams()
    streams: _Streams = state.streams
    return streams


_STATE_LOCK = threading.Lock()


def sse(event: str, data: dict[str, Any]) -> str:
    """One server-sent event (NaN/inf never reach JSON: the sampler sends them as null)."""
    return f"event: {event}\ndata: {json.dumps(data, allow_nan=False)}\n\n"


@router.post(
    "/generate/stream",
    summary="Sample token by token with live metrics and rules (server-sent events)",
    response_class=StreamingResponse,
)
async def generate_stream(
    body: StreamRequest, request: Request, svc: ServiceDep
) -> StreamingResponse:
    began = time.perf_counter()
    job = await asyncio.to_thread(_prepare, svc, body, began)
    streams = _streams(request)
    stream_id, cancel = streams.open(svc.settings.max_queued_jobs)
    return StreamingResponse(
        _events(svc, job, streams, stream_id, cancel),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post(
    "/generate/stream/{stream_id}/cancel",
    status_code=202,
    summary="Stop a stream: it ends within one token and stores what it generated",
)
def cancel_stream(stream_id: str, request: Request) -> dict[str, Any]:
    cancel = _streams(request).cancels.get(stream_id)
    if cancel is None:
        raise NotFound(f"no open stream with id {stream_id[:40]!r}")
    cancel.set()
    return {"stream_id": stream_id, "cancelled": True}


def _prepare(svc: Service, body: StreamRequest, began: float) -> _Job:
    """Check everything that can be wrong (4xx) before any event is sent."""
    lm = svc.model(svc.model_name(body.model))
    extras = metric_families(body.metrics)
    request = extra_request(extras, ccp_preset=body.ccp_preset)
    ids, chat = prompt_ids(lm, body.prompt, body.system)
    check_context(lm, len(ids), body.max_new_tokens)  # as POST /generate: before the model
    rules = [r.rule() for r in body.stop_when]
    wants_probe = body.probe is not None or any(r.metric == "probe" for r in rules)
    name = None if body.probe in (None, "auto") else body.probe
    probe = probe_for(lm, svc.settings, name) if wants_probe else None
    plan = plan_extras(lm, request, svc.settings) if extras else None
    params = StreamParams(
        max_new_tokens=body.max_new_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        rules=rules,
        probe=probe,
    )
    return _Job(lm, body, ids, chat, params, plan, began)


async def _wait_for_model(
    svc: Service, streams: _Streams, cancel: threading.Event
) -> AsyncIterator[str]:
    """``queued`` events until this stream holds the model lock (or is cancelled)."""
    ticket = object()
    streams.join(ticket)
    try:
        last = 0
        while not cancel.is_set():
            position = streams.position(ticket)
            if position == 1 and svc.model_lock.acquire(blocking=False):
                return
            if position != last:
                yield sse("queued", {"position": position})
                last = position
            await asyncio.sleep(_POLL_S)
    finally:
        streams.leave(ticket)


async def _events(
    svc: Service, job: _Job, streams: _Streams, stream_id: str, cancel: threading.Event
) -> AsyncIterator[str]:
    gone = threading.Event()
    try:
        yield sse("start", {"stream_id": stream_id})
        async for event in _wait_for_model(svc, streams, cancel):
            yield event
        if cancel.is_set():  # cancelled while waiting: the lock was never taken
            yield sse("done", {"run_id": None, "stop_reason": "cancelled", "n_tokens": 0})
            return
        queued_s = time.perf_counter() - job.began
        events: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue(maxsize=_BUFFER)
        worker = threading.Thread(
            target=_work,
            args=(svc, job, events, _Flags(cancel, gone), queued_s),
            daemon=True,
            name="stream",
        )
        try:
            worker.start()
        except BaseException:
            svc.model_lock.release()
            raise
        while True:
            item = await asyncio.to_thread(events.get)
            if item is None:
                break
            yield sse(*item)
    finally:
        gone.set()  # the client left (or the stream ended): free the model at the next token
        streams.close(stream_id)


@dataclass
class _Flags:
    """``cancel``: stop generating (asked for; the client still gets ``done``); ``gone``: the
    client left or stalled (stop generating, deliver nothing more)."""

    cancel: threading.Event
    gone: threading.Event


def _put(
    events: queue.Queue[tuple[str, dict[str, Any]] | None],
    item: tuple[str, dict[str, Any]] | None,
    gone: threading.Event,
) -> None:
    """Hand an event to the client side; give up on a gone or stalled client."""
    deadline = time.monotonic() + _SLOW_CLIENT_S
    while not gone.is_set():
        try:
            events.put(item, timeout=0.2)
            return
        except queue.Full:
            if time.monotonic() > deadline:
                gone.set()


def _work(
    svc: Service,
    job: _Job,
    events: queue.Queue[tuple[str, dict[str, Any]] | None],
    flags: _Flags,
    queued_s: float,
) -> None:
    """The model loop (holding the lock the caller acquired), scoring, storing, ``done``."""
    lm, body = job.lm, job.body
    try:
        try:
            stream = TokenStream(lm, job.ids, job.params)
            # the client's flag and the server's stop, read before every token
            with cancel_scope(flags.cancel, flags.gone, svc.jobs.stopping):
                for event in stream:
                    _put(events, ("token", event), flags.gone)
            result = stream.result
            scored, score_s = None, 0.0
            if result.token_ids:
                t0 = time.perf_counter()
                enc = encode_ids(lm, result, chat=job.chat, prompt=body.prompt, system=body.system)
                scored = score_batch(lm, [enc], extras=job.plan)
                score_s = time.perf_counter() - t0
        finally:
            svc.model_lock.release()
        run_id = None
        if scored is not None:
            scored[0].provenance["stream"] = _record(job, result)
            run_id = svc.store.save_runs(lm, scored)[0]
        first = result.first_token_s
        done = {
            "run_id": run_id,
            "stop_reason": result.stop_reason,
            "n_tokens": len(result.token_ids),
            "text": "".join(result.texts),
            **_record(job, result),
            "timings": {
                "queued_ms": round(queued_s * 1000, 2),
                "first_token_ms": None if first is None else round((queued_s + first) * 1000, 2),
                "generate_ms": round(result.generate_s * 1000, 2),
                "score_ms": round(score_s * 1000, 2),
                "total_ms": round((time.perf_counter() - job.began) * 1000, 2),
            },
        }
        _put(events, ("done", done), flags.gone)
    except Exception as err:  # noqa: BLE001 - the client gets an error event, the log the rest
        import logging

        logging.getLogger(__name__).exception("stream failed", exc_info=err)
        _put(events, ("error", {"code": "internal", "message": "generation failed"}), flags.gone)
    finally:
        _finish(events)


def _finish(events: queue.Queue[tuple[str, dict[str, Any]] | None]) -> None:
    """Always deliver the end marker, dropping unread events if the buffer is full, so the
    relay waiting on the queue (even one whose client left) is released."""
    while True:
        try:
            events.put_nowait(None)
            return
        except queue.Full:
            try:
                events.get_nowait()
            except queue.Empty:
                pass


def _record(job: _Job, result: Any) -> dict[str, Any]:
    """What the rules did, as stored in the run's provenance and sent in ``done``."""
    return {
        "rules": [r.describe() for r in job.params.rules],
        "fired": result.fired,
        "marks": result.marks,
        "branches": result.branches,
        "stop_reason": result.stop_reason,
        "probe": job.params.probe.name if job.params.probe is not None else None,
        "sampling": {
            "max_new_tokens": job.params.max_new_tokens,
            "temperature": job.params.temperature,
            "top_p": job.params.top_p,
            "seed": job.params.seed,
        },
    }
