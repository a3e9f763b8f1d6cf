"""``autofhe serve``: encrypted inference over HTTP, on FastAPI and uvicorn.

Protocol (bodies are raw bytes, ``application/octet-stream``; OpenAPI at ``/openapi.json``):

- ``GET /info``: the service and its versions, the served model's digest, the digest of the
  client specs a client's keys must have, and the size of those keys;
- ``GET /keys/{key_id}``: 200 while the server holds that key set, else 404;
- ``POST /keys``: serialized evaluation keys -> ``{"key_id": "<sha256 of the body>"}``;
- ``POST /predict/{key_id}``: one serialized encrypted input -> its encrypted output.

Every error is JSON ``{"error": "..."}`` with its status: 400 malformed, 404 unknown route or
key set, 405 (with ``Allow``), 408 body too slow, 411, 413, 503 busy (with ``Retry-After``).
What clients can hold is configured (:class:`~autofhe.fhe.service.ServeLimits`): a request
head must arrive within ``timeout`` (uvicorn's h11 protocol with a deadline added), a body
must keep up :data:`MIN_BODY_RATE` after :data:`BODY_GRACE_S`, at most ``max_uploads`` key
sets are received at once, and at most ``max_queue`` predictions wait for one of
``max_runs`` encrypted runs, which run in threads (concrete releases the GIL).
"""

from __future__ import annotations

import asyncio
import socket
import time

import anyio
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from autofhe.fhe.progress import Progress
from autofhe.fhe.service import KeysFull, ServeLimits, Service, UnknownKeys
from autofhe.units import megabytes

__all__ = ["make_app", "run_server"]

#: Largest encrypted input accepted (an uncompressed 64-feature 8-bit row is about 2 MB).
MAX_INPUT_BYTES = 64 * 1024**2
#: After BODY_GRACE_S seconds a body must keep arriving at MIN_BODY_RATE bytes per second: a
#: client trickling a few bytes now and then is answered 408 within seconds.
MIN_BODY_RATE = 256 * 1024
BODY_GRACE_S = 3.0
#: Seconds a client is told to wait before it retries a 503.
RETRY_AFTER_S = 1
#: How long a key upload waits for a free upload slot before it is told to retry.
SLOT_WAIT_S = 1.0
OCTETS = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


class _Refused(Exception):
    """An answer other than 200, raised inside a route: ``status``, ``message``, headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


async def _read_body(request, limit: int, timeout: float) -> bytes:
    """The request body, refused when its length is missing, wrong or over ``limit``, or when it
    does not arrive in time (silent for ``timeout``, or slower than MIN_BODY_RATE)."""
    raw = request.headers.get("content-length")
    if raw is None:
        raise _Refused(411, "Content-Length is required")
    try:
        length = int(raw)
    except ValueError:
        raise _Refused(400, f"Content-Length {raw!r} is invalid") from None
    if length <= 0:
        raise _Refused(400, "empty body")
    if length > limit:
        raise _Refused(413, f"body of {length} bytes is over the {limit}-byte limit")
    # filled in place: growing a buffer of tens of MB would copy it over and over
    body, received, start = bytearray(length), 0, time.monotonic()
    chunks = request.stream().__aiter__()
    while received < length:
        # due: the grace, then as many seconds as the bytes so far need at the minimum rate
        due = start + BODY_GRACE_S + received / MIN_BODY_RATE
        wait = min(timeout, max(due - time.monotonic(), 0.0))
        try:
            chunk = await asyncio.wait_for(chunks.__anext__(), wait)
        except TimeoutError:
            raise _Refused(
                408, f"request body not received in time ({received} of {length} bytes)"
            ) from None
        except StopAsyncIteration:
            break
        except ClientDisconnect:  # gone mid-body: nobody reads the answer, nothing to log
            raise _Refused(400, "the client went away mid-body") from None
        if received + len(chunk) > length:
            raise _Refused(400, f"body longer than the {length} bytes announced")
        body[received : received + len(chunk)] = chunk
        received += len(chunk)
    if received != length:
        raise _Refused(400, f"body of {received} bytes, not the {length} announced")
    return bytes(body)


def make_app(service: Service, progress: Progress | None = None):
    """The FastAPI application of ``service`` (routes, errors as JSON, limits)."""
    progress = progress or Progress(quiet=True)
    limits = service.limits
    app = FastAPI(
        title="autofhe encrypted inference",
        version=service.info["autofhe"],
        docs_url=None,
        redoc_url=None,
        description="Register evaluation keys once, then post encrypted inputs.",
    )
    state = {"uploads": asyncio.Semaphore(limits.max_uploads), "waiting": 0}
    keys_full = (
        f"the server holds {service.capacity} key sets, each in use or awaiting its first "
        "prediction; retry shortly"
    )
    runs = anyio.CapacityLimiter(limits.max_runs)

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        # an unread body would be parsed as the next request: every refusal ends the connection
        return JSONResponse({"error": message}, status, {**(headers or {}), "Connection": "close"})

    @app.exception_handler(_Refused)
    async def refused(request: Request, exc: _Refused):
        return error(exc.status, exc.message, exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        headers = dict(exc.headers or {})
        if exc.status_code == 404:
            message = f"no route {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}; use " + (
                headers.get("allow") or headers.get("Allow", "another method")
            )
        else:
            message = str(exc.detail)
        return error(exc.status_code, message, headers)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        message = f"internal error ({type(exc).__name__}); the server keeps serving"
        return error(500, message)

    key_id_json = {"application/json": {"schema": {"properties": {"key_id": {"type": "string"}}}}}

    @app.get("/info", summary="The service, its versions and the served model")
    async def info() -> dict:
        return {**service.info, "key_sets_held": len(service.keys)}

    @app.get(
        "/keys/{key_id}",
        summary="Whether the server holds this key set",
        responses={404: {"description": "not held (never sent, or evicted): POST /keys"}},
    )
    async def has_keys(key_id: str) -> dict:
        if key_id not in service.keys:
            raise _Refused(404, f"unknown key_id {key_id!r}; POST /keys first")
        return {"key_id": key_id}

    @app.post(
        "/keys",
        summary="Register serialized evaluation keys",
        openapi_extra={"requestBody": {"required": True, "content": OCTETS}},
        responses={200: {"content": key_id_json}, 503: {"description": "busy: retry"}},
    )
    async def register(request: Request) -> dict:
        try:
            await asyncio.wait_for(state["uploads"].acquire(), SLOT_WAIT_S)
        except TimeoutError:
            raise _Refused(
                503,
                f"{limits.max_uploads} key uploads are in progress; retry shortly",
                {"Retry-After": str(RETRY_AFTER_S)},
            ) from None
        try:
            if service.keys.full():  # before the body is read: it would be thrown away
                raise _Refused(503, keys_full, {"Retry-After": str(RETRY_AFTER_S)})
            size = service.key_bytes
            announced = request.headers.get("content-length")
            if announced is not None and announced.isdigit() and int(announced) != size:
                raise _Refused(
                    400,
                    f"evaluation keys of {announced} bytes do not belong to this model "
                    f"({size} bytes); generate keys from this bundle's client part",
                )
            body = await _read_body(request, size, limits.timeout)
            try:
                key_id = await anyio.to_thread.run_sync(service.register, body)
            except ValueError as exc:
                raise _Refused(400, str(exc)) from None
            except KeysFull:
                raise _Refused(503, keys_full, {"Retry-After": str(RETRY_AFTER_S)}) from None
        finally:
            state["uploads"].release()
        progress.say(f"evaluation keys {key_id[:12]} registered ({megabytes(size)})")
        return {"key_id": key_id}

    @app.post(
        "/predict/{key_id}",
        summary="Run one serialized encrypted input",
        response_class=Response,
        openapi_extra={"requestBody": {"required": True, "content": OCTETS}},
        responses={
            200: {"content": OCTETS, "description": "the serialized encrypted output"},
            404: {"description": "unknown key_id (never sent, or evicted): POST /keys again"},
            503: {"description": "busy: retry after Retry-After seconds"},
        },
    )
    async def predict(key_id: str, request: Request) -> Response:
        unknown = _Refused(404, f"unknown key_id {key_id!r}; POST /keys first")
        if key_id not in service.keys:
            raise unknown
        body = await _read_body(request, MAX_INPUT_BYTES, limits.timeout)
        if state["waiting"] >= limits.max_queue + limits.max_runs:
            raise _Refused(
                503,
                f"{state['waiting']} predictions in progress; retry shortly",
                {"Retry-After": str(RETRY_AFTER_S)},
            )
        state["waiting"] += 1
        try:
            output = await anyio.to_thread.run_sync(service.run, key_id, body, limiter=runs)
        except UnknownKeys:  # evicted while the body arrived
            raise unknown from None
        except ValueError as exc:  # e.g. an input of another circuit's shape
            raise _Refused(400, str(exc)) from None
        finally:
            state["waiting"] -= 1
        return Response(output, media_type="application/octet-stream")

    return app


def _protocol(head_timeout: float):
    """uvicorn's h11 protocol, with a deadline on every request head: a connection that opens
    and stays silent, or trickles its head, is closed after ``head_timeout`` seconds (uvicorn
    itself only times out idle keep-alive connections)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadDeadline(H11Protocol):
        _deadline = None

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(head_timeout, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def handle_events(self) -> None:
            cycle = self.cycle
            super().handle_events()
            if self.cycle is not cycle:  # a request head arrived
                self._disarm()

        def on_response_complete(self) -> None:
            self._arm()  # for the next request's head (disarmed again if it is pipelined)
            super().on_response_complete()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeadDeadline


def run_server(app, sock: socket.socket, limits: ServeLimits) -> None:
    """Serve ``app`` on the bound ``sock`` until SIGINT or SIGTERM (uvicorn's handlers)."""
    import uvicorn

    config = uvicorn.Config(
        app,
        http=_protocol(limits.timeout),
        lifespan="off",
        access_log=False,
        log_level="error",  # not a line per malformed request a hostile client sends
        limit_concurrency=limits.max_connections,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=5,
        h11_max_incomplete_event_size=16 * 1024,
        server_header=False,
    )
    uvicorn.Server(config).run(sockets=[sock])
