"""Load test of `autofhe serve`: honest clients among disconnecting, trickling and junk ones.

    .venv/bin/python benchmarks/serve_load.py                      # 16 x 10 among 20 / 5 / 5
    .venv/bin/python benchmarks/serve_load.py --clients 20 --predictions 2 --max-memory 2GB
    .venv/bin/python benchmarks/serve_load.py --short              # what CI runs (a minute)

A circles model with table lookups is exported and served by a real `autofhe serve` process
on loopback. Each honest client has its own keys (generated before the clock starts), uploads
them and runs encrypted predictions one row at a time, retrying a 503 as the client does and
uploading its keys again when the server evicted them; each prediction is checked against the
bundle's clear program. Hostile clients loop until the honest ones are done: they disconnect
before or after the reply (or reset), trickle key uploads a byte every few seconds, or send
junk. Printed: throughput, p50 / p99 latency per prediction, errors, wrong predictions, 503s
retried, the server's peak RSS (sampled every 0.2 s) against --max-memory, and whether the
server is still up. Exit status 1 when the server died, a prediction was wrong or an honest
request went unanswered.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from autofhe import NeuralNetClassifier
from autofhe.errors import AutofheError
from autofhe.fhe.deploy import predict_bundle
from autofhe.fhe.remote import HttpClient
from autofhe.units import megabytes, parse_size

from protocol import split, table

AUTOFHE = str(Path(sys.executable).with_name("autofhe"))


def export_model(folder: Path, hidden: float) -> Path:
    """A 2-feature circles network with table lookups, saved as a bundle."""
    Xtr, _, ytr, _ = split("circles")
    model = NeuralNetClassifier(
        module__n_layers=2,
        module__n_hidden_neurons_multiplier=hidden,
        n_w_bits=3,
        n_a_bits=3,
        module__lookup_bits=5,
        max_epochs=30,
        random_state=0,
    ).fit(Xtr, ytr)
    path = folder / "model"
    model.compile(Xtr).save(path)
    report = model.fhe_report()
    print(
        f"model: circles, {report['lookups_per_layer']} lookups at "
        f"{report['lookup_bits_per_layer']} bits, {megabytes(report['evaluation_keys_bytes'])} "
        "of keys to upload"
    )
    return path


def start_server(bundle: Path, max_memory: str | None, log: Path) -> tuple[subprocess.Popen, str]:
    args = [AUTOFHE, "serve", "--model", str(bundle), "--port", "0", "--quiet"]
    if max_memory:
        args += ["--max-memory", max_memory]
    with open(log, "w") as err:  # a file: a pipe nobody reads would block the server's logging
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, text=True)
    line = proc.stdout.readline()
    if "serving" not in line:
        sys.exit(f"the server did not start: {line}{log.read_text()}")
    print(line.strip())
    return proc, line.split(" on ")[1].split()[0]


def rss_sampler(pid: int, peak: list[int], stop: threading.Event) -> None:
    while not stop.wait(0.2):
        try:
            with open(f"/proc/{pid}/status") as f:
                rss = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmRSS:"))
            peak[0] = max(peak[0], rss)
        except (OSError, StopIteration):
            return


# -- hostile clients -----------------------------------------------------------------------------


def _connect(address) -> socket.socket:
    return socket.create_connection(address, timeout=10)


def disconnecting(address, key_bytes: int, stop: threading.Event, rng: random.Random) -> None:
    """Sends a request, then goes away: before reading the reply, after it, or with a reset."""
    while not stop.is_set():
        try:
            with _connect(address) as s:
                kind = rng.randrange(4)
                if kind == 0:  # a key upload of the wrong size, closed unread
                    s.sendall(b"POST /keys HTTP/1.1\r\nHost: x\r\nContent-Length: 64\r\n\r\n")
                    s.sendall(b"k" * 64)
                elif kind == 1:  # half a key upload, then gone
                    head = f"POST /keys HTTP/1.1\r\nHost: x\r\nContent-Length: {key_bytes}\r\n\r\n"
                    s.sendall(head.encode() + b"k" * 1000)
                elif kind == 2:  # reset after the request
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    s.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
                else:  # read the reply, then close mid-keep-alive
                    s.sendall(b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n")
                    s.recv(100)
        except OSError:
            pass
        stop.wait(0.05)


def trickling(address, key_bytes: int, stop: threading.Event, rng: random.Random) -> None:
    """A key upload sent one byte every 3 seconds, started again whenever it is dropped."""
    while not stop.is_set():
        try:
            with _connect(address) as s:
                head = f"POST /keys HTTP/1.1\r\nHost: x\r\nContent-Length: {key_bytes}\r\n\r\n"
                s.sendall(head.encode())
                s.settimeout(3.0)
                while not stop.is_set():
                    try:
                        if s.recv(4096) == b"":
                            break
                    except TimeoutError:
                        s.sendall(b"k")
                    else:
                        break  # answered (408 / 503): start over
        except OSError:
            pass


JUNK = [
    b"GARBAGE\r\n\r\n",
    b"\x00\xff\x13\x37" * 100,
    b"GET /info HTTP/9.9\r\n\r\n",
    b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
    b"POST /predict/abc HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\n\r\n",
    b"POST /keys HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET /info HTTP/1.1\r\n" + b"X-Junk: y\r\n" * 5000 + b"\r\n",
]


def junk(address, key_bytes: int, stop: threading.Event, rng: random.Random) -> None:
    while not stop.is_set():
        try:
            with _connect(address) as s:
                s.sendall(rng.choice(JUNK) if rng.random() < 0.7 else rng.randbytes(512))
                s.settimeout(2.0)
                s.recv(4096)
        except OSError:
            pass
        stop.wait(0.05)


# -- honest clients ------------------------------------------------------------------------------


def honest(client: HttpClient, rows: np.ndarray, expected: np.ndarray, out: dict) -> None:
    try:
        client.identify()
        client.register()
        for i, row in enumerate(rows):
            start = time.perf_counter()
            got = client.predict(row[None, :])[0]
            out["latencies"].append(time.perf_counter() - start)
            out["wrong"] += int(got != expected[i])
    except AutofheError as exc:
        out["errors"].append(str(exc))


SIZES = ("clients", "predictions", "disconnecting", "trickling", "junk", "hidden")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=None, help="honest clients (16)")
    parser.add_argument("--predictions", type=int, default=None, help="rows per client (10)")
    parser.add_argument("--disconnecting", type=int, default=None, help="(20)")
    parser.add_argument("--trickling", type=int, default=None, help="(5)")
    parser.add_argument("--junk", type=int, default=None, help="(5)")
    parser.add_argument("--hidden", type=float, default=None, help="hidden neurons per feature")
    parser.add_argument("--max-memory", default=None, help="the server's --max-memory")
    parser.add_argument("--short", action="store_true", help="a one-minute version (CI)")
    parser.add_argument("--server-log", default=None, help="keep the server's stderr here")
    args = parser.parse_args()
    defaults = (3, 2, 4, 2, 2, 2.0) if args.short else (16, 10, 20, 5, 5, 5.0)
    for name, value in zip(SIZES, defaults):
        if getattr(args, name) is None:
            setattr(args, name, value)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = export_model(Path(tmp), args.hidden)
        X = split("circles")[1]
        rows = X[: args.predictions]
        expected, _ = predict_bundle(bundle, rows, fhe="disable", progress=False)
        log = Path(args.server_log or Path(tmp) / "serve.log")
        proc, url = start_server(bundle, args.max_memory, log)
        try:
            code = run(args, bundle, url, proc, rows, expected)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        lines = log.read_text().splitlines()
        print(
            f"server log: {len(lines)} lines on stderr" + (f", last: {lines[-1]}" if lines else "")
        )
        return code


def run(args, bundle: Path, url: str, proc, rows, expected) -> int:
    host, port = url.removeprefix("http://").split(":")
    address = (host, int(port))
    t0 = time.perf_counter()
    clients = []
    for _ in range(args.clients):  # keys before the clock: each client its own
        client = HttpClient(url, bundle / "client", timeout=300)
        client.client.keygen()
        clients.append(client)
    keygen_s = time.perf_counter() - t0
    key_bytes = len(clients[0].client.evaluation_keys())
    print(f"{args.clients} clients generated their keys in {keygen_s:.1f} s")
    peak, stop_rss = [0], threading.Event()
    threading.Thread(target=rss_sampler, args=(proc.pid, peak, stop_rss), daemon=True).start()
    stop, hostile = threading.Event(), []
    for kind, count in ((disconnecting, args.disconnecting), (trickling, args.trickling)):
        for _ in range(count):
            rng = random.Random(len(hostile))
            hostile.append(threading.Thread(target=kind, args=(address, key_bytes, stop, rng)))
    for i in range(args.junk):
        rng = random.Random(1000 + i)
        hostile.append(threading.Thread(target=junk, args=(address, key_bytes, stop, rng)))
    for t in hostile:
        t.start()
    out = {"latencies": [], "wrong": 0, "errors": []}
    start = time.perf_counter()
    threads = [
        threading.Thread(target=honest, args=(c, rows, expected, out), daemon=True) for c in clients
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    stop.set()
    for t in hostile:
        t.join(timeout=10)
    alive = proc.poll() is None
    stop_rss.set()
    done = len(out["latencies"])
    lat = np.array(out["latencies"]) if done else np.array([np.nan])
    retried = sum(c.busy_retries for c in clients)
    cap = parse_size(args.max_memory) if args.max_memory else None
    row = {
        "honest": f"{args.clients} x {args.predictions}",
        "hostile (disc/trickle/junk)": f"{args.disconnecting}/{args.trickling}/{args.junk}",
        "answered": f"{done}/{args.clients * args.predictions}",
        "throughput /s": f"{done / elapsed:.2f}",
        "p50 s": f"{np.percentile(lat, 50):.2f}",
        "p99 s": f"{np.percentile(lat, 99):.2f}",
        "wrong": out["wrong"],
        "errors": len(out["errors"]),
        "503 retried": retried,
        "peak RSS": megabytes(peak[0]),
        "cap": megabytes(int(cap)) if cap else "-",
        "server up": alive,
    }
    print(table([row], list(row)))
    for error in out["errors"][:5]:
        print(f"error: {error}")
    failed = (
        not alive
        or out["wrong"]
        or out["errors"]
        or done != args.clients * args.predictions
        or (cap is not None and peak[0] > cap)
    )
    print("verdict:", "FAILED" if failed else "ok")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
