"""Encrypted inference over HTTP: a server holding only the server part, and its client.

Protocol (bodies are raw bytes, ``application/octet-stream``):

- ``POST /keys``: serialized evaluation keys -> ``{"key_id": "<sha256>"}`` (register once);
- ``POST /predict/<key_id>``: one serialized encrypted input -> the serialized encrypted output;
- ``GET /info``: model metadata (task, features, versions); ``GET /openapi.json``.

Every error is JSON ``{"error": "..."}`` with its status: 400 malformed request or payload,
404 unknown route or key, 405 (with ``Allow``) another method, 408 body not sent in time, 413
too large, 503 no upload slot free. None stops the server. Each connection has a socket
timeout, and a key upload must also finish within a deadline set by its size, so a client that
stalls is dropped and cannot hold one of the few upload slots for long.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import urllib.error
import urllib.request
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from autofhe.errors import HttpError, ParameterError
from autofhe.fhe.bundle import read_manifest
from autofhe.fhe.deploy import FheClient, FheServer, count_samples
from autofhe.fhe.openapi import openapi
from autofhe.fhe.progress import Progress, megabytes

__all__ = ["HttpClient", "make_server", "openapi"]

MAX_INPUT_BYTES = 64 * 1024**2
#: Key sets kept in memory (oldest dropped first) and key uploads read at once.
MAX_REGISTERED_KEYS = 8
MAX_CONCURRENT_UPLOADS = 2
#: Seconds a connection may stay silent (``AUTOFHE_SERVE_TIMEOUT`` overrides it), and the
#: slowest upload rate accepted: a body must arrive within timeout + size / rate.
DEFAULT_TIMEOUT_S = 30.0
MIN_UPLOAD_BYTES_PER_S = 256 * 1024
#: The methods of each route, for 405 answers and their ``Allow`` header.
ROUTES = {"/info": "GET", "/openapi.json": "GET", "/keys": "POST", "/predict/": "POST"}


def _allowed(path: str) -> str | None:
    """The methods of the route ``path`` belongs to, or None for no route."""
    for route, methods in ROUTES.items():
        if path == route or (route.endswith("/") and path.startswith(route)):
            return methods
    return None


def _timeout(timeout: float | None) -> float:
    if timeout is None:
        raw = os.environ.get("AUTOFHE_SERVE_TIMEOUT", str(DEFAULT_TIMEOUT_S))
        try:
            timeout = float(raw)
        except ValueError:
            timeout = -1.0
    if not timeout > 0:  # also refuses NaN
        raise ParameterError(
            f"serve timeout {timeout!r} (or $AUTOFHE_SERVE_TIMEOUT) is not a positive number "
            "of seconds; pass e.g. 30."
        )
    return timeout


def _evaluation_keys_size(server: FheServer, manifest: dict) -> int:
    """Serialized size of this circuit's evaluation keys (fixed by its crypto parameters),
    learned from a throwaway key set: keys of any other size belong to another circuit, and
    concrete aborts the whole process when it runs a circuit with foreign keys."""
    from concrete import fhe

    from autofhe.fhe.compile import check_key_memory

    check_key_memory(manifest["fhe_report"])
    probe = fhe.Client(server.client_specs)
    probe.keygen()
    return len(probe.evaluation_keys.serialize())


def make_server(
    bundle: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    digest: str | None = None,
    progress: Progress | None = None,
    timeout: float | None = None,
):
    """An HTTP server for a bundle directory (``model.json`` + ``server/``).

    ``digest``: the bundle's pinned digest; any other bundle is refused before it is read.
    The circuit is compiled from the bundle's integer program (see :class:`FheServer`).
    ``progress``: reports compilation, the key-size probe and each key registration. The
    server's ``evaluation_keys_bytes`` attribute is the size of the keys a client uploads.
    ``timeout``: seconds a connection may stay silent before it is dropped (default
    ``$AUTOFHE_SERVE_TIMEOUT`` or 30); also how long a key upload waits for a free slot.
    """
    from concrete import fhe

    timeout = _timeout(timeout)
    progress = progress or Progress(quiet=True)
    manifest = read_manifest(bundle, digest)
    server = FheServer(bundle, digest, progress=progress)
    with progress.step("measuring this circuit's evaluation-key size (a throwaway keygen)") as r:
        keys_size = _evaluation_keys_size(server, manifest)
        r["detail"] = megabytes(keys_size)
    public = {k: manifest[k] for k in ("task", "n_features", "concrete_python", "autofhe")}
    public["evaluation_keys_bytes"] = keys_size
    keys: dict[str, object] = {}
    lock = threading.Lock()
    uploads = threading.BoundedSemaphore(MAX_CONCURRENT_UPLOADS)

    class Handler(BaseHTTPRequestHandler):
        server_version = "autofhe"

        def log_message(self, fmt, *args):  # quiet: one line per request on stderr is noise
            return

        def setup(self):
            self.timeout = timeout  # StreamRequestHandler applies it to the socket
            super().setup()

        def handle_one_request(self):
            try:
                super().handle_one_request()
            except OSError:  # the client went away (reset, broken pipe): nobody to answer
                self.close_connection = True
            except Exception as exc:  # a bug of ours: still a JSON answer, and serving goes on
                self.close_connection = True
                message = f"internal error ({type(exc).__name__}); the server keeps serving"
                try:
                    self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": message})
                except OSError:
                    pass

        def __getattr__(self, name: str):
            # http.server answers a method without a do_<METHOD> with an HTML 501 page; every
            # method this server does not declare gets a JSON 405 (404 off the routes) instead
            if name.startswith("do_"):
                return self._not_allowed
            raise AttributeError(name)

        def _not_allowed(self) -> None:
            allowed = _allowed(self.path)
            if allowed is None:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path}"})
            elif self.command == "OPTIONS":
                self.send_response(HTTPStatus.NO_CONTENT)
                self.send_header("Allow", f"{allowed}, OPTIONS")
                self.end_headers()
            else:
                message = f"{self.command} is not allowed on {self.path}; use {allowed}"
                self._json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": message}, allow=allowed)

        def parse_request(self) -> bool:
            if not super().parse_request():
                return False
            if self.request_version == "HTTP/0.9":  # its answers have no status line
                self.send_error(HTTPStatus.BAD_REQUEST, "HTTP/0.9 requests are not supported")
                return False
            return True

        def send_error(self, code, message=None, explain=None):
            # http.server's own errors (bad request line, headers too long...) as JSON too;
            # before the request line is parsed the version is unknown: answer in HTTP/1.0
            if getattr(self, "request_version", "") in ("", "HTTP/0.9"):
                self.request_version = "HTTP/1.0"
            short = self.responses.get(code, ("error",))[0]
            self._json(code, {"error": message or short})

        def _send(self, status: int, body: bytes, ctype: str, allow: str | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            if allow:
                self.send_header("Allow", allow)
            if status >= 400:  # an unread body would be parsed as the next request
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, payload: dict, allow: str | None = None) -> None:
            self._send(status, json.dumps(payload).encode(), "application/json", allow)

        def _read(self, length: int) -> bytes | None:
            """``length`` body bytes, or None (and a 408) on a stall or past the deadline."""
            deadline = time.monotonic() + timeout + length / MIN_UPLOAD_BYTES_PER_S
            blocks, received = [], 0
            try:
                while received < length:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError
                    self.connection.settimeout(min(timeout, left))
                    block = self.rfile.read1(min(length - received, 1 << 20))
                    if not block:  # the client closed the connection mid-body
                        self.close_connection = True
                        return None
                    blocks.append(block)
                    received += len(block)
            except TimeoutError:
                message = f"request body not received in time ({received} of {length} bytes)"
                try:
                    self._json(HTTPStatus.REQUEST_TIMEOUT, {"error": message})
                except OSError:
                    self.close_connection = True
                return None
            finally:
                self.connection.settimeout(timeout)
            return b"".join(blocks)

        def _body(self, limit: int) -> bytes | None:
            raw = self.headers.get("Content-Length")
            if raw is None:
                self._json(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length is required"})
                return None
            try:
                length = int(raw)
            except ValueError:
                self._json(HTTPStatus.BAD_REQUEST, {"error": f"Content-Length {raw!r} is invalid"})
                return None
            if length <= 0:
                self._json(HTTPStatus.BAD_REQUEST, {"error": "empty body"})
                return None
            if length > limit:
                self._json(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    {"error": f"body of {length} bytes is over the {limit}-byte limit"},
                )
                return None
            return self._read(length)

        def do_GET(self):
            if self.path == "/info":
                self._json(HTTPStatus.OK, public)
            elif self.path == "/openapi.json":
                self._json(HTTPStatus.OK, openapi(public))
            else:
                self._not_allowed()

        def do_POST(self):
            if self.path == "/keys":
                # a stalled upload is dropped within `timeout`, so waiting that long for a
                # slot gets one unless every slot holds a live (slow) upload
                if not uploads.acquire(timeout=timeout):
                    self._json(
                        HTTPStatus.SERVICE_UNAVAILABLE,
                        {"error": "too many key uploads at once; retry shortly"},
                    )
                    return
                try:
                    body = self._body(keys_size)
                finally:
                    uploads.release()
                if body is None:
                    return
                if len(body) != keys_size:
                    message = (
                        f"evaluation keys of {len(body)} bytes do not belong to this model "
                        f"({keys_size} bytes); generate keys from this bundle's client part"
                    )
                    self._json(HTTPStatus.BAD_REQUEST, {"error": message})
                    return
                try:
                    evaluation_keys = fhe.EvaluationKeys.deserialize(body)
                except Exception:
                    self._json(
                        HTTPStatus.BAD_REQUEST, {"error": "body is not serialized evaluation keys"}
                    )
                    return
                key_id = hashlib.sha256(body).hexdigest()
                with lock:
                    if len(keys) >= MAX_REGISTERED_KEYS and key_id not in keys:
                        keys.pop(next(iter(keys)))  # oldest first
                    keys[key_id] = evaluation_keys
                progress.say(f"evaluation keys {key_id[:12]} registered ({megabytes(len(body))})")
                self._json(HTTPStatus.OK, {"key_id": key_id})
            elif self.path.startswith("/predict/"):
                key_id = self.path.removeprefix("/predict/")
                with lock:
                    evaluation_keys = keys.get(key_id)
                if evaluation_keys is None:
                    self._json(
                        HTTPStatus.NOT_FOUND,
                        {"error": f"unknown key_id {key_id!r}; POST /keys first"},
                    )
                    return
                body = self._body(MAX_INPUT_BYTES)
                if body is None:
                    return
                try:
                    value = fhe.Value.deserialize(body)
                except Exception:
                    self._json(
                        HTTPStatus.BAD_REQUEST,
                        {"error": "body is not a serialized encrypted input"},
                    )
                    return
                try:
                    result = server.run_value(value, evaluation_keys)
                except Exception as exc:  # e.g. an input of another circuit's shape
                    self._json(
                        HTTPStatus.BAD_REQUEST,
                        {"error": f"the input does not fit this model: {exc}"},
                    )
                    return
                self._send(HTTPStatus.OK, result.serialize(), "application/octet-stream")
            else:
                self._not_allowed()

    try:
        httpd = ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:
        raise HttpError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port."
        ) from None
    httpd.evaluation_keys_bytes = keys_size
    return httpd


class _Upload:
    """A request body read in blocks by http.client, reporting bytes sent and the rate."""

    def __init__(self, body: bytes, progress: Progress, what: str):
        self._view, self._sent = memoryview(body), 0
        self._progress, self._what = progress, what
        self._start = time.perf_counter()

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else self._sent + size
        block = self._view[self._sent : end].tobytes()
        if block:
            self._sent += len(block)
            total = len(self._view)
            elapsed = time.perf_counter() - self._start
            line = self._progress.rate_line(self._what, self._sent, total, elapsed)
            self._progress.count(line, final=self._sent == total)
        return block


class HttpClient:
    """Keys, encryption and decryption here; the model runs on the server at ``url``."""

    def __init__(
        self,
        url: str,
        client: str | Path,
        key_dir: str | Path | None = None,
        digest: str | None = None,
        progress: Progress | None = None,
    ):
        self.url = url.rstrip("/")
        self.progress = progress or Progress(quiet=True)
        self.client = FheClient(client, key_dir, digest, progress=self.progress)
        self.key_id: str | None = None

    def _post(self, path: str, body: bytes, upload: str | None = None) -> bytes:
        """POST ``body``; with ``upload`` (a label), its progress is reported as it is sent."""
        headers = {"Content-Type": "application/octet-stream"}
        data: bytes | _Upload = body
        if upload:  # http.client then sends it in blocks, each one reported
            data = _Upload(body, self.progress, upload)
            headers["Content-Length"] = str(len(body))
        request = urllib.request.Request(self.url + path, data=data, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=3600) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise HttpError(f"{self.url}{path} answered {exc.code}: {detail}") from None
        except urllib.error.URLError as exc:
            raise HttpError(f"cannot reach {self.url}: {exc.reason}") from None

    def register(self) -> str:
        """Generate (or load) keys and upload the evaluation keys; returns the key id."""
        keys = self.client.evaluation_keys()
        self.progress.say(f"uploading {megabytes(len(keys))} of evaluation keys to {self.url}")
        answer = self._post("/keys", keys, upload="evaluation keys uploaded")
        self.key_id = json.loads(answer)["key_id"]
        return self.key_id

    def predict(self, X, proba: bool = False) -> np.ndarray:
        x_int = self.client.quantize(X)  # bad input is refused before keys are made
        if self.key_id is None:
            self.register()
        outputs, start = [], time.perf_counter()
        for i, row in enumerate(x_int):
            outputs.append(self._post(f"/predict/{self.key_id}", self.client.encrypt_row(row)))
            count_samples(self.progress, "encrypted predictions", i + 1, len(x_int), start)
        real = self.client.decrypt(outputs)
        return self.client.predict_proba(real) if proba else self.client.predict(real)
