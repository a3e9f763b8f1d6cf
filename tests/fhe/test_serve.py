"""`autofhe serve` and `remote-predict` against real and hostile clients and servers.

One server process for the module: a 2-feature model with 4 table lookups (20 MB of keys,
1 s of key generation), served from its `server/` part alone, with a 1 s timeout, 2 upload
slots and room for 1 key set (so that a second client evicts the first).
"""

from __future__ import annotations

import http.server
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import make_circles

from autofhe import NeuralNetClassifier
from autofhe.errors import HttpError, ParameterError
from autofhe.fhe.deploy import predict_bundle
from autofhe.fhe.progress import Progress
from autofhe.fhe.remote import HttpClient
from autofhe.fhe.serve import BODY_GRACE_S
from autofhe.fhe.service import KeyStore

AUTOFHE = str(Path(sys.executable).with_name("autofhe"))
TIMEOUT = 1.0
pytestmark = pytest.mark.execute


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    X, y = make_circles(200, noise=0.2, factor=0.5, random_state=0)
    X = X.astype(np.float32)
    model = NeuralNetClassifier(
        module__n_layers=2,
        module__n_hidden_neurons_multiplier=2,
        n_w_bits=2,
        n_a_bits=2,
        module__lookup_bits=4,
        max_epochs=5,
        random_state=0,
    ).fit(X, y)
    path = tmp_path_factory.mktemp("serve") / "model"
    model.compile(X).save(path)
    np.save(path.parent / "X.npy", X[:3])
    return path


def _start(args: list[str], cwd=None) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [AUTOFHE, "serve", *args, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
    )
    line = proc.stdout.readline()  # printed once the server listens
    assert "serving" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc, line.split(" on ")[1].split()[0]


@pytest.fixture(scope="module")
def server(bundle):
    args = ["--model", str(bundle / "server"), "--timeout", str(TIMEOUT)]
    proc, url = _start([*args, "--max-uploads", "2", "--max-key-sets", "1"])
    yield proc, url
    proc.terminate()
    proc.wait(timeout=20)


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _raw(url: str, data: bytes, read: bool = True, wait: float = 10.0):
    """Send ``data`` as is; (status, headers, body) of the answer, or None unread."""
    with socket.create_connection(_address(url), timeout=wait) as s:
        s.sendall(data)
        if not read:
            return None
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def _request(url: str, method: str, path: str, body: bytes = b"", extra: str = ""):
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}"
    return _raw(url, f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)


def _alive(proc, url: str) -> dict:
    assert proc.poll() is None, proc.stderr.read()
    status, _, body = _request(url, "GET", "/info")
    assert status == 200
    return json.loads(body)


def test_info_names_the_service_and_the_model_and_openapi_comes_from_the_routes(server, bundle):
    proc, url = server
    info = _alive(proc, url)
    assert info["service"] == "autofhe" and info["n_features"] == 2
    assert info["task"] is None  # served from server/ alone: it does not know the task
    assert len(info["digest"]) == 64 and len(info["client_specs_sha256"]) == 64
    assert 10e6 < info["evaluation_keys_bytes"] < 30e6  # compressed (uncompressed: ~100 MB)
    status, _, body = _request(url, "GET", "/openapi.json")
    paths = json.loads(body)["paths"]
    assert status == 200 and {"/info", "/keys", "/keys/{key_id}", "/predict/{key_id}"} <= set(paths)
    assert "application/octet-stream" in paths["/keys"]["post"]["requestBody"]["content"]


def test_predictions_then_100_clients_that_disconnect_leave_it_serving(server, bundle):
    """The concrete runtime takes SIGPIPE over on its first run: before the fix, one client
    that closed its socket before reading the answer killed the server (exit 139)."""
    proc, url = server
    X = np.load(bundle.parent / "X.npy")
    clear, _ = predict_bundle(bundle, X, fhe="disable")
    with HttpClient(url, bundle / "client") as client:
        np.testing.assert_array_equal(client.predict(X[:2]), clear[:2])
        head = b"POST /keys HTTP/1.1\r\nHost: x\r\nContent-Length: 64\r\n\r\n"
        for _ in range(100):  # disconnect after sending, never reading the reply
            _raw(url, head + b"k" * 64, read=False)
        for _ in range(20):  # reset: RST instead of FIN
            with socket.create_connection(_address(url)) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.5)
        _alive(proc, url)
        np.testing.assert_array_equal(client.predict(X), clear)


def test_evicted_keys_are_uploaded_again_and_held_keys_are_not(server, bundle, tmp_path):
    proc, url = server
    X = np.load(bundle.parent / "X.npy")
    clear, _ = predict_bundle(bundle, X, fhe="disable")
    out = {name: Progress(stream=(tmp_path / f"{name}.log").open("w")) for name in "abc"}
    a = HttpClient(url, bundle / "client", tmp_path / "keys-a", progress=out["a"])
    b = HttpClient(url, bundle / "client", tmp_path / "keys-b", progress=out["b"])
    again = HttpClient(url, bundle / "client", tmp_path / "keys-a", progress=out["c"])
    with a, b, again:
        np.testing.assert_array_equal(a.predict(X[:1]), clear[:1])
        np.testing.assert_array_equal(again.predict(X[1:2]), clear[1:2])  # same keys: held
        np.testing.assert_array_equal(b.predict(X[:1]), clear[:1])  # the server holds 1 set
        np.testing.assert_array_equal(a.predict(X), clear)  # evicted: sent again, right
    for stream in out.values():
        stream.stream.close()
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in "abc"}
    assert "no longer holds our keys; uploading them again" in logs["a"]
    assert logs["a"].count(" of evaluation keys to ") == 2
    assert "holds these evaluation keys already" in logs["c"] and "uploading" not in logs["c"]
    _alive(proc, url)


def test_trickling_uploads_get_408_and_never_keep_another_upload_waiting(server):
    """Before: three clients trickling key uploads (a byte every few seconds) held the two
    upload slots, a normal upload got no answer for 10 s and the tricklers theirs at 60 s."""
    proc, url = server
    size = _alive(proc, url)["evaluation_keys_bytes"]
    time.sleep(KeyStore(1).idle_s + 0.5)  # the last test's keys may go: uploads are taken
    head = f"POST /keys HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode()
    tricklers = []
    for _ in range(3):
        s = socket.create_connection(_address(url), timeout=30)
        s.sendall(head + b"k")
        tricklers.append(s)
    answers: list[tuple[float, bytes]] = []

    def trickle(s):
        start, answer = time.monotonic(), b""
        s.settimeout(0.4)
        while time.monotonic() - start < 20:
            try:
                chunk = s.recv(65536)
                if not chunk:
                    break
                answer += chunk
            except TimeoutError:
                try:
                    s.send(b"k")
                except OSError:
                    break
        answers.append((time.monotonic() - start, answer))

    threads = [threading.Thread(target=trickle, args=(s,)) for s in tricklers]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        start = time.monotonic()
        status, headers, body = _request(url, "POST", "/keys", b"x" * 64)
        waited = time.monotonic() - start
        # refused at once: the wrong size (400), or every slot busy (503, retry)
        assert status in (400, 503) and waited < 3, (status, waited, body)
        if status == 503:
            assert headers["retry-after"] == "1"
        else:
            assert "do not belong to this model" in json.loads(body)["error"]
    finally:
        for t in threads:
            t.join()
        for s in tricklers:
            s.close()
    statuses = sorted(answer[9:12] for _, answer in answers)
    assert statuses in ([b"408"] * 3, [b"408", b"408", b"503"]), answers  # 2 slots
    for elapsed, answer in answers:
        if answer.startswith(b"HTTP/1.1 408 "):
            assert b"request body not received in time" in answer
        assert elapsed < BODY_GRACE_S + 3, elapsed
    _alive(proc, url)


def test_silent_connections_and_trickled_heads_are_closed(server):
    proc, url = server
    with socket.create_connection(_address(url), timeout=10) as silent:
        start = time.monotonic()
        assert silent.recv(100) == b""  # closed by the server
        assert time.monotonic() - start < TIMEOUT + 2
    with socket.create_connection(_address(url), timeout=10) as slow:
        slow.settimeout(0.3)
        start, closed = time.monotonic(), False
        for byte in b"GET /info HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 100:
            try:
                slow.send(bytes([byte]))
                if slow.recv(100) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
        assert closed and time.monotonic() - start < TIMEOUT + 2
    _alive(proc, url)


def test_every_refusal_is_json_and_the_server_keeps_serving(server, bundle):
    proc, url = server
    size = _alive(proc, url)["evaluation_keys_bytes"]
    status, headers, body = _request(url, "PUT", "/keys")
    assert (status, headers["allow"]) == (405, "POST")
    assert json.loads(body) == {"error": "PUT is not allowed on /keys; use POST"}
    status, _, body = _request(url, "BREW", "/pot")
    assert status in (404, 405) and "error" in json.loads(body)
    status, _, body = _request(url, "GET", "/nowhere")
    assert (status, json.loads(body)) == (404, {"error": "no route /nowhere"})
    status, _, body = _request(url, "POST", "/predict/deadbeef", b"x")
    assert status == 404 and "unknown key_id" in json.loads(body)["error"]
    status, _, body = _raw(url, b"POST /keys HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (status, json.loads(body)) == (411, {"error": "Content-Length is required"})
    status, _, body = _request(url, "POST", "/keys", b"k" * size)  # right size, not keys
    assert (status, json.loads(body)) == (400, {"error": "body is not serialized evaluation keys"})
    with HttpClient(url, bundle / "client") as client:
        key_id = client.register()
    status, _, body = _request(url, "POST", f"/predict/{key_id}", b"garbage")
    assert status == 400 and "does not fit this model" in json.loads(body)["error"]
    big = "Content-Length: 999999999999\r\n"
    status, _, body = _raw(url, f"POST /predict/{key_id} HTTP/1.1\r\nHost: x\r\n{big}\r\n".encode())
    assert status == 413 and "over the" in json.loads(body)["error"]
    for junk in (b"GARBAGE\r\n\r\n", b"\x00\xff" * 50 + b"\r\n\r\n", b"GET /info HTTP/9\r\n\r\n"):
        assert _raw(url, junk)[0] == 400
    _alive(proc, url)


def test_remote_predict_gives_up_on_a_server_that_never_answers(bundle, tmp_path):
    """Before: it waited for ever (killed at 200 s); keys were generated before any check."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True)
    thread.start()
    start = time.monotonic()
    with pytest.raises(HttpError, match="no answer within 1 s"):
        with HttpClient(
            f"http://127.0.0.1:{port}", bundle / "client", tmp_path / "keys", timeout=1
        ) as client:
            client.predict(np.load(bundle.parent / "X.npy"))
    assert time.monotonic() - start < 5
    assert not (tmp_path / "keys").exists()  # the server is identified before keys are made
    listener.close()


def _remote(url: str, bundle: Path) -> list[str]:
    return [AUTOFHE, "remote-predict", "--url", url, "--model", str(bundle / "client")]


def test_remote_predict_refuses_a_web_server_that_is_not_autofhe(bundle, tmp_path):
    keys = str(tmp_path / "keys")

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<html><body>" + b"hello " * 200 + b"</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        result = subprocess.run(
            [*_remote(url, bundle), "--data", str(bundle.parent / "X.npy"), "--keys", keys],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        httpd.shutdown()
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"autofhe: error: {url} is not an autofhe server (GET /info answered text/html, not "
        "autofhe's JSON); check --url."
    ]
    assert not (tmp_path / "keys").exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "is not an http(s) URL"),
        ("ftp://127.0.0.1/x", "is not an http(s) URL"),
        ("http://127.0.0.1:99999", "is not a valid URL"),
        ("http://127.0.0.1:8000/?q=1", "has a query or fragment"),
    ],
)
def test_remote_predict_checks_the_url_before_anything_else(bundle, tmp_path, url, message):
    with pytest.raises(ParameterError, match=message.replace("(", r"\(").replace(")", r"\)")):
        HttpClient(url, bundle / "client")
    result = subprocess.run(
        [*_remote(url, bundle), "--data", "missing.npy", "--keys", str(tmp_path / "keys")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr and not (tmp_path / "keys").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "99999"], "--port 99999 is not a TCP port"),
        (["--host", "256.1.1.1"], "--host '256.1.1.1' is not an IP address"),
        (["--host", "192.0.2.1"], "is not an address of this machine"),
        (["--max-memory", "lots"], "size 'lots' is not understood"),
        (["--timeout", "nan"], "--timeout nan is not a number of seconds"),
    ],
)
def test_serve_checks_its_address_and_limits_before_compiling(bundle, args, message):
    start = time.monotonic()
    result = subprocess.run(
        [AUTOFHE, "serve", "--model", str(bundle), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr and "compiling" not in result.stderr
    assert time.monotonic() - start < 15


def test_serve_refuses_a_busy_port_before_compiling(bundle):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = subprocess.run(
            [AUTOFHE, "serve", "--model", str(bundle), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2 and "compiling" not in result.stderr
    assert f"port {port} is in use: pick another --port" in result.stderr


def test_a_memory_cap_too_small_for_one_key_set_is_refused(bundle):
    result = subprocess.run(
        [AUTOFHE, "serve", "--model", str(bundle), "--max-memory", "100MB", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "--max-memory 100.0 MB leaves no room for one key set" in result.stderr


@pytest.mark.slow
def test_the_short_load_test_passes():
    """`benchmarks/serve_load.py --short`: honest clients among disconnecting, trickling and
    junk ones; it exits 1 on a dead server, a wrong prediction or an unanswered request."""
    bench = Path(__file__).parents[2] / "benchmarks"
    result = subprocess.run(
        [sys.executable, "serve_load.py", "--short"],
        cwd=bench,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "verdict: ok" in result.stdout
