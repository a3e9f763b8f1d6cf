"""`autofhe serve` under hostile clients: stalled uploads, undeclared methods, malformed
requests. A tiny linear model (no bootstrap key: the key-size probe takes milliseconds) served
in this process with a 1 s socket timeout; no real keys are uploaded."""

from __future__ import annotations

import json
import socket
import threading
import time

import numpy as np
import pytest

from autofhe import NeuralNetClassifier
from autofhe.fhe.serve import make_server

TIMEOUT = 1.0


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    bundle = tmp_path_factory.mktemp("serve") / "model"
    model = NeuralNetClassifier(module__n_layers=1, max_epochs=1, random_state=0).fit(X, y)
    model.compile(X).save(bundle)
    httpd = make_server(bundle, port=0, timeout=TIMEOUT)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _raw(httpd, data: bytes, wait: float = 10.0) -> tuple[int, dict, bytes]:
    """Send ``data`` as is; the status, headers and body of the answer."""
    with socket.create_connection(httpd.server_address[:2], timeout=wait) as s:
        s.sendall(data)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def _request(httpd, method: str, path: str, body: bytes = b"") -> tuple[int, dict, bytes]:
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    return _raw(httpd, head.encode() + body)


def test_stalled_uploads_do_not_block_other_key_uploads(served):
    size = served.evaluation_keys_bytes
    assert size > 10
    head = f"POST /keys HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode()
    stalled = []
    for _ in range(2):  # as many as there are upload slots, each sending a partial body
        s = socket.create_connection(served.server_address[:2], timeout=10)
        s.sendall(head + b"k" * 10)
        stalled.append(s)
    try:
        time.sleep(0.2)  # both now hold an upload slot
        start = time.monotonic()
        status, _, body = _request(served, "POST", "/keys", b"x" * size)
        elapsed = time.monotonic() - start
        # it got a slot and its body was read: refused as not keys, not 503 "too many uploads"
        assert status == 400, body
        assert json.loads(body) == {"error": "body is not serialized evaluation keys"}
        assert elapsed < 3 * TIMEOUT, elapsed
        for s in stalled:  # each stalled client was told why, then dropped
            answer = b""
            while chunk := s.recv(65536):  # to the end: closed by the server
                answer += chunk
            assert answer.startswith(b"HTTP/1.0 408 "), answer
            assert b'"error": "request body not received in time (10 of' in answer
    finally:
        for s in stalled:
            s.close()


def test_a_trickling_upload_is_dropped_at_its_deadline(served):
    """One byte every 0.3 s never trips the 1 s socket timeout; the upload deadline (timeout
    + size / minimum rate) still ends it, so it cannot hold an upload slot for long."""
    size = served.evaluation_keys_bytes
    head = f"POST /keys HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode()
    with socket.create_connection(served.server_address[:2], timeout=10) as s:
        s.sendall(head)
        start, sent = time.monotonic(), 0
        s.setblocking(False)
        answer = b""
        while sent < size - 1 and time.monotonic() - start < 5 * TIMEOUT:
            try:
                answer = s.recv(65536)
                break
            except BlockingIOError:
                s.send(b"k")
                sent += 1
                time.sleep(0.3)
        elapsed = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.0 408 "), (answer, sent, elapsed)
    assert elapsed < 3 * TIMEOUT and sent < size, (elapsed, sent)


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "HEAD"])
def test_undeclared_methods_get_json_405_with_allow(served, method):
    status, headers, body = _request(served, method, "/keys")
    assert (status, headers["allow"]) == (405, "POST")
    assert headers["content-type"] == "application/json"
    if method != "HEAD":
        assert json.loads(body) == {"error": f"{method} is not allowed on /keys; use POST"}
    status, headers, _ = _request(served, method, "/info")
    assert (status, headers["allow"]) == (405, "GET")


def test_wrong_method_and_unknown_route_are_json(served):
    status, headers, body = _request(served, "GET", "/predict/abc")
    assert (status, headers["allow"], json.loads(body)["error"]) == (
        405,
        "POST",
        "GET is not allowed on /predict/abc; use POST",
    )
    status, headers, body = _request(served, "POST", "/info", b"x")
    assert (status, headers["allow"]) == (405, "GET")
    status, _, body = _request(served, "BREW", "/pot")
    assert (status, json.loads(body)) == (404, {"error": "no route /pot"})
    status, headers, body = _request(served, "OPTIONS", "/keys")
    assert (status, headers["allow"], body) == (204, "POST, OPTIONS", b"")


@pytest.mark.parametrize(
    ("request_line", "error"),
    [
        (b"GARBAGE\r\n\r\n", "Bad request syntax ('GARBAGE')"),
        (b"GET /info\r\n\r\n", "HTTP/0.9 requests are not supported"),
        (b"GET /info HTTP/x.y\r\n\r\n", "Bad request version ('HTTP/x.y')"),
        (b"POST /keys HTTP/1.1\r\nContent-Length: ten\r\n\r\n", "Content-Length 'ten' is invalid"),
    ],
)
def test_malformed_requests_get_json_400(served, request_line, error):
    status, headers, body = _raw(served, request_line)
    assert (status, headers["content-type"]) == (400, "application/json")
    assert json.loads(body) == {"error": error}


def test_an_unexpected_failure_is_a_json_500(served, monkeypatch):
    def broken(info):
        raise KeyError("boom")

    monkeypatch.setattr("autofhe.fhe.serve.openapi", broken)
    status, headers, body = _request(served, "GET", "/openapi.json")
    assert (status, headers["content-type"]) == (500, "application/json")
    assert json.loads(body) == {"error": "internal error (KeyError); the server keeps serving"}


def test_server_still_serves_after_all_of_the_above(served):
    status, _, body = _request(served, "GET", "/info")
    assert status == 200 and json.loads(body)["n_features"] == 3
