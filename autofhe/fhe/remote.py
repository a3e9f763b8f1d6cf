"""The client of ``autofhe serve``: keys, encryption and decryption here, the model there.

:class:`HttpClient` identifies the server first (``GET /info``: an autofhe server whose circuit
takes the keys this bundle's client part makes) before it generates or uploads anything,
uploads its evaluation keys only when the server does not hold them already, and again when
the server evicted them; every call has a connect and a read timeout, a busy server (503) is
retried after its ``Retry-After``, and every failure is one :class:`~autofhe.errors.HttpError`.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from autofhe.errors import HttpError, ParameterError
from autofhe.fhe.bundle import read_json, read_part
from autofhe.fhe.deploy import FheClient, count_samples
from autofhe.fhe.progress import Progress
from autofhe.fhe.service import specs_digest
from autofhe.units import megabytes

__all__ = ["DEFAULT_TIMEOUT_S", "HttpClient", "check_url"]

#: Seconds to wait for a connection, and for each answer (--timeout).
CONNECT_TIMEOUT_S = 10.0
DEFAULT_TIMEOUT_S = 120.0
#: How long a busy server (503) is asked again, the longest wait between two tries, and how
#: often a lost connection is (key uploads: until BUSY_WAIT_S).
BUSY_WAIT_S = 600.0
MAX_RETRY_WAIT_S = 10.0
LOST_RETRIES = 2
UPLOAD_BLOCK = 1 << 20
#: Uploads of the same keys for one prediction before giving up (the server evicted them).
EVICTED_RETRIES = 5


def check_url(url: str) -> str:
    """``url`` when it is an http(s) URL with a host (and a valid port), else a ParameterError;
    without a trailing slash."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port  # raises on a port that is not a number in range
    except ValueError as exc:
        raise ParameterError(f"--url {url!r} is not a valid URL ({exc}).") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ParameterError(
            f"--url {url!r} is not an http(s) URL of a server; pass e.g. http://127.0.0.1:8000."
        )
    if parts.query or parts.fragment:
        raise ParameterError(f"--url {url!r} has a query or fragment; pass the server's base URL.")
    del port
    return url.strip().rstrip("/")


class HttpClient:
    """Encrypted predictions through a server at ``url``.

    Parameters
    ----------
    url : the server's base URL (http or https).
    client : a bundle or its ``client/`` part.
    key_dir : where keys live (default: in memory, gone with this process).
    digest : the pinned digest of ``client``.
    progress : where key generation, the upload and predictions are reported.
    timeout : seconds to wait for each answer (connecting: at most CONNECT_TIMEOUT_S).
    """

    def __init__(
        self,
        url: str,
        client: str | Path,
        key_dir: str | Path | None = None,
        digest: str | None = None,
        progress: Progress | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ):
        import httpx

        self.url = check_url(url)
        if not timeout > 0:
            raise ParameterError(f"--timeout {timeout!r}: pass a positive number of seconds.")
        self.timeout = timeout
        self.progress = progress or Progress(quiet=True)
        self.client = FheClient(client, key_dir, digest, progress=self.progress)
        self._specs = specs_digest(read_json(read_part(client, "client") / "client.specs.json"))
        self.http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT_S)),
            follow_redirects=False,
        )
        self.key_id: str | None = None
        self.server: dict | None = None
        #: requests asked again because the server was busy (503)
        self.busy_retries = 0

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- HTTP ----------------------------------------------------------------------------------
    def _call(self, method: str, path: str, content=None, headers=None, ok=(200,), upload=False):
        """One request; the response, whose status must be in ``ok``.

        A busy server (503) is asked again after its ``Retry-After`` for up to
        :data:`BUSY_WAIT_S`. A connection lost before the answer is asked again too (every
        route is idempotent): a keep-alive connection the server had just closed, or, for an
        ``upload``, a busy server's refusal sent before it read the body (which then arrives
        as a reset).
        """
        import httpx

        deadline, lost = time.monotonic() + BUSY_WAIT_S, 0
        for attempt in itertools.count():
            try:
                body = content() if callable(content) else content
                response = self.http.request(method, self.url + path, content=body, headers=headers)
            except (httpx.WriteError, httpx.ReadError, httpx.RemoteProtocolError) as exc:
                lost += 1
                if (lost > LOST_RETRIES and not upload) or time.monotonic() > deadline:
                    raise HttpError(f"{self.url}{path}: connection lost: {_reason(exc)}") from None
                self.busy_retries += 1
                time.sleep(min(0.5 * 2**attempt, MAX_RETRY_WAIT_S))
                continue
            except httpx.TimeoutException:
                raise HttpError(
                    f"{self.url}{path}: no answer within {self.timeout:g} s; the server is down "
                    "or overloaded (raise --timeout for slow models)."
                ) from None
            except httpx.HTTPError as exc:
                raise HttpError(f"cannot reach {self.url}: {_reason(exc)}") from None
            if response.status_code == 503 and time.monotonic() < deadline:
                self.busy_retries += 1
                time.sleep(_retry_after(response, attempt))
                continue
            if response.status_code in ok:
                return response
            raise HttpError(
                f"{self.url}{path} answered {response.status_code}: {_detail(response)}"
            )
        raise AssertionError("unreachable")

    def identify(self) -> dict:
        """``GET /info``: refuses a server that is not autofhe, or serves another model."""
        response = self._call("GET", "/info")
        try:
            info = response.json()
        except ValueError:
            info = None
        if not isinstance(info, dict) or info.get("service") != "autofhe":
            kind = response.headers.get("content-type", "no content type")
            raise HttpError(
                f"{self.url} is not an autofhe server (GET /info answered {kind}, not autofhe's "
                "JSON); check --url."
            )
        if info.get("client_specs_sha256") != self._specs:
            raise HttpError(
                f"{self.url} serves another model ({info.get('model')}, client specs "
                f"{str(info.get('client_specs_sha256'))[:12]}, this client part's are "
                f"{self._specs[:12]}): keys made here would not fit it. Use that model's client "
                "part, or point --url at the server of this one."
            )
        self.server = info
        return info

    def register(self) -> str:
        """Generate (or load) keys and upload the evaluation keys unless the server holds them;
        returns the key id."""
        if self.server is None:
            self.identify()
        keys = self.client.evaluation_keys()
        key_id = hashlib.sha256(keys).hexdigest()
        if self._call("GET", f"/keys/{key_id}", ok=(200, 404)).status_code == 200:
            self.progress.say(f"{self.url} holds these evaluation keys already ({key_id[:12]})")
        else:
            self._upload(keys)
        self.key_id = key_id
        return key_id

    def _upload(self, keys: bytes) -> None:
        self.progress.say(f"uploading {megabytes(len(keys))} of evaluation keys to {self.url}")
        start = time.perf_counter()

        def blocks() -> Iterator[bytes]:
            for i in range(0, len(keys), UPLOAD_BLOCK):
                yield keys[i : i + UPLOAD_BLOCK]
                done = min(i + UPLOAD_BLOCK, len(keys))
                line = self.progress.rate_line(
                    "evaluation keys uploaded", done, len(keys), time.perf_counter() - start
                )
                self.progress.count(line, final=done == len(keys))

        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(keys))}
        answer = self._call("POST", "/keys", blocks, headers, upload=True).json()
        if answer.get("key_id") != hashlib.sha256(keys).hexdigest():
            raise HttpError(f"{self.url} registered the keys under another id: {answer}")

    def _run(self, row: bytes) -> bytes:
        """One encrypted input through the server; keys uploaded again if it evicted them."""
        headers = {"Content-Type": "application/octet-stream"}
        path = f"/predict/{self.key_id}"
        for _ in range(EVICTED_RETRIES):
            response = self._call("POST", path, row, headers, ok=(200, 404))
            if response.status_code == 200:
                return response.content
            # evicted for other clients' keys: send them again (the server keeps a fresh key
            # set until its first prediction, so this converges)
            self.progress.say(f"{self.url} no longer holds our keys; uploading them again")
            self._upload(self.client.evaluation_keys())
        raise HttpError(
            f"{self.url} evicted our keys {EVICTED_RETRIES} times in a row; it holds too few "
            "key sets for its clients (its --max-memory): retry later."
        )

    def predict(self, X, proba: bool = False) -> np.ndarray:
        """Predictions (or class probabilities) of rows ``X``, computed by the server."""
        x_int = self.client.quantize(X)  # bad input is refused before anything is sent
        if self.server is None:
            self.identify()
        if self.key_id is None:
            self.register()
        outputs, start = [], time.perf_counter()
        for i, row in enumerate(x_int):
            outputs.append(self._run(self.client.encrypt_row(row)))
            count_samples(self.progress, "encrypted predictions", i + 1, len(x_int), start)
        try:
            real = self.client.decrypt(outputs)
        except (RuntimeError, ValueError) as exc:
            raise HttpError(
                f"{self.url} answered something that is not this model's encrypted output "
                f"({exc}); is it the server of this bundle?"
            ) from None
        return self.client.predict_proba(real) if proba else self.client.predict(real)


def _retry_after(response, attempt: int) -> float:
    try:
        wait = float(response.headers.get("retry-after", ""))
    except ValueError:
        wait = 0.5 * 2**attempt
    return min(max(wait, 0.1), MAX_RETRY_WAIT_S)


def _detail(response) -> str:
    """The server's error message, or the first line of whatever else it sent."""
    try:
        answer = response.json()
        if isinstance(answer, dict) and isinstance(answer.get("error"), str):
            return answer["error"]
    except ValueError:
        pass
    text = response.text.strip().splitlines()
    return (text[0][:200] if text else "(empty body)") + " (not an autofhe server?)"


def _reason(exc) -> str:
    cause = exc
    while cause.__cause__ is not None or cause.__context__ is not None:
        cause = cause.__cause__ or cause.__context__
    text = str(cause) or type(cause).__name__
    return text.splitlines()[0]
