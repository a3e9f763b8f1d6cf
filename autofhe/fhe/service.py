"""The model side of ``autofhe serve`` (HTTP is serve.py): key sets and encrypted runs.

A :class:`Service` compiles the served circuit, learns what one client's key set costs (bytes
uploaded, memory held once decompressed) and holds at most as many key sets as
``ServeLimits.max_memory`` allows, least recently used evicted first (:class:`KeyStore`).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autofhe.errors import ParameterError, ResourceError
from autofhe.fhe.bundle import bundle_digest, read_json, read_part
from autofhe.fhe.compile import available_memory, evaluation_key_bytes
from autofhe.fhe.deploy import FheServer
from autofhe.fhe.progress import Progress
from autofhe.fhe.runtime import concrete_fhe
from autofhe.machine import available_cores
from autofhe.units import megabytes

__all__ = ["KeyStore", "KeysFull", "ServeLimits", "Service", "UnknownKeys", "specs_digest"]


@dataclass
class ServeLimits:
    """What one client, or many, may hold of the server.

    timeout : seconds for a request head to arrive, and of silence inside a body.
    max_uploads : key uploads received at once (each holds its body in memory).
    max_runs : encrypted runs at once (default: the machine's cores).
    max_queue : predictions waiting for a run before new ones get 503.
    max_memory : bytes the server process may use; key sets beyond it are evicted least
        recently used first (default: half the memory available at start).
    max_connections : open connections; the next request gets uvicorn's 503.
    max_key_sets : key sets held at most, whatever the memory allows (default: no such cap).
    """

    timeout: float = 30.0
    max_uploads: int = 4
    max_runs: int = 0
    max_queue: int = 64
    max_memory: float | None = None
    max_connections: int = 256
    max_key_sets: int | None = None

    def checked(self) -> ServeLimits:
        if not self.timeout > 0 or self.timeout > 3600:  # also refuses NaN
            raise ParameterError(
                f"--timeout {self.timeout!r} is not a number of seconds in (0, 3600]; pass e.g. 30."
            )
        for name in ("max_uploads", "max_queue", "max_connections"):
            value = getattr(self, name)
            if not 1 <= value <= 100_000:
                raise ParameterError(f"{name} {value!r}: pass a number from 1 to 100000.")
        if self.max_key_sets is not None and not 1 <= self.max_key_sets <= 100_000:
            raise ParameterError(f"--max-key-sets {self.max_key_sets!r}: pass 1 to 100000.")
        if self.max_memory is not None and not self.max_memory > 0:
            raise ParameterError(f"--max-memory {self.max_memory!r}: pass e.g. 2GB.")
        self.max_runs = self.max_runs or available_cores()
        return self


def specs_digest(specs: dict) -> str:
    """sha256 of a circuit's client specs (canonical JSON): a client compares it with its own
    bundle's before it generates keys for a server."""
    return hashlib.sha256(json.dumps(specs, sort_keys=True).encode()).hexdigest()


def _rss() -> int:
    """This process's resident memory in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: the allocator's own policy stands
        return None


def _trim() -> None:
    """Give freed key memory back to the system (glibc keeps it in its arenas otherwise)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _few_arenas() -> None:
    """At most two malloc arenas: glibc gives each thread that allocates its own (up to 8 per
    core), and freed key memory scattered over many arenas stays resident."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(-8, 2)  # M_ARENA_MAX


class KeysFull(Exception):
    """Every held key set is in use by a running prediction: a new one must wait."""


class UnknownKeys(KeyError):
    """No key set of that id is held (never sent, or evicted)."""


class KeyStore:
    """Key sets by id: at most ``capacity`` held; when one more comes, the least recently used
    among those that may go is evicted. A key set may not go while a prediction uses it (its
    memory stays taken until the run ends), within ``fresh_s`` of its upload until its first
    prediction, nor within ``idle_s`` of its last one (a client predicting row after row keeps
    its keys). Otherwise, with more clients than room, each upload would evict the one before
    it ahead of its predictions and nobody would get an answer; with these rules clients take
    turns, the others told to retry (:class:`KeysFull`)."""

    def __init__(self, capacity: int, fresh_s: float = 60.0, idle_s: float = 2.0):
        self.capacity = capacity
        self.fresh_s, self.idle_s = fresh_s, idle_s
        self._keys: OrderedDict[str, object] = OrderedDict()
        self._users: dict[str, int] = {}
        self._kept: dict[str, float] = {}  # key id -> the time before which it may not go
        self._lock = threading.Lock()
        self.evictions = 0

    def __contains__(self, key_id: str) -> bool:
        with self._lock:
            return key_id in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def _evictable(self, now: float) -> list[str]:
        return [k for k in self._keys if k not in self._users and self._kept[k] <= now]

    def full(self) -> bool:
        """Whether a new key set would be refused now."""
        with self._lock:
            return len(self._keys) >= self.capacity and not self._evictable(time.monotonic())

    @contextmanager
    def using(self, key_id: str) -> Iterator[object]:
        """The key set ``key_id``, kept in the block and ``idle_s`` after; UnknownKeys if none."""
        with self._lock:
            keys = self._keys.get(key_id)
            if keys is None:
                raise UnknownKeys(key_id)
            self._keys.move_to_end(key_id)
            self._users[key_id] = self._users.get(key_id, 0) + 1
        try:
            yield keys
        finally:
            with self._lock:
                self._users[key_id] -= 1
                if not self._users[key_id]:
                    del self._users[key_id]
                self._kept[key_id] = time.monotonic() + self.idle_s

    def add(self, key_id: str, keys) -> int:
        """Hold ``keys``; returns how many key sets were evicted for them. Raises KeysFull when
        none may go."""
        with self._lock:
            if key_id in self._keys:
                self._keys.move_to_end(key_id)
                return 0
            now = time.monotonic()
            evictable = self._evictable(now)
            evicted = max(0, len(self._keys) + 1 - self.capacity)
            if evicted > len(evictable):
                raise KeysFull
            for k in evictable[:evicted]:
                del self._keys[k], self._kept[k]
            self._keys[key_id] = keys
            self._kept[key_id] = now + self.fresh_s
            self.evictions += evicted
        _trim()  # the upload's buffers, and the evicted key sets
        return evicted


class Service:
    """The model side of the server, without HTTP: registers key sets and runs inputs.

    Parameters
    ----------
    model : a bundle directory or its ``server/`` part.
    digest : its pinned digest (anything else is refused before it is read).
    limits : see :class:`ServeLimits`.
    progress : where compilation, the warm-up and key registrations are reported.

    Start-up compiles the circuit, generates one throwaway key set and runs one encrypted
    input with it: that gives the size of the keys a client uploads, the memory a key set
    takes once decompressed (measured, hence the key capacity) and lets concrete's runtime
    install what it installs on its first run before Python's signal handlers are restored.
    """

    def __init__(
        self,
        model: str | Path,
        digest: str | None = None,
        limits: ServeLimits | None = None,
        progress: Progress | None = None,
    ):
        self.limits = (limits or ServeLimits()).checked()
        _few_arenas()
        progress = progress or Progress(quiet=True)
        root = read_part(model, "server", digest)
        self.name = str(model)
        self.server = FheServer(root, progress=progress)
        specs = read_json(root / "client.specs.json")
        manifest = read_json(root.parent / "model.json") if root != Path(model) else {}
        self.key_bytes = evaluation_key_bytes(specs)[1]
        with progress.step("warming up: one throwaway key set and encrypted run") as report:
            per_set, first_run = self._warm_up()
            report["detail"] = f"{megabytes(per_set)} of memory per key set"
        self.capacity = self._capacity(per_set, first_run)
        self.keys = KeyStore(self.capacity)
        self.info = {
            "service": "autofhe",
            "autofhe": _version("autofhe"),
            "concrete_python": _version("concrete-python"),
            "model": self.name,
            "digest": bundle_digest(root),
            "client_specs_sha256": specs_digest(specs),
            "n_features": self.server.n_features,
            "task": manifest.get("task") if isinstance(manifest, dict) else None,
            "evaluation_keys_bytes": self.key_bytes,
            "key_sets_held_at_most": self.capacity,
        }

    def _warm_up(self) -> tuple[int, int]:
        """Bytes of memory one held key set takes, and how much more its first run takes for
        a moment (decompression), both measured after a throwaway run."""
        fhe = concrete_fhe()
        client = fhe.Client(self.server.client_specs)
        client.keygen()
        body = client.evaluation_keys.serialize()
        self.key_bytes = len(body)  # what concrete writes (the specs formula is within 1 kB)
        value = client.encrypt(np.zeros(self.server.n_features, dtype=np.int64))
        del client
        # the first run starts the runtime (threads, caches) and decompresses its keys ...
        self.server.run_value(value, fhe.EvaluationKeys.deserialize(body))
        _trim()
        # ... so a second key set, held beside nothing else, shows what one costs
        before, peak, done = _rss(), [0], threading.Event()

        def sample() -> None:
            while not done.wait(0.005):
                peak[0] = max(peak[0], _rss())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        keys = fhe.EvaluationKeys.deserialize(body)
        self.server.run_value(value, keys)
        done.set()
        sampler.join()
        after = _rss()
        per_set = max(after - before, 0) + len(body)
        del keys, body, value
        _trim()
        return int(per_set * 1.1), max(peak[0] - after, 0)

    def _capacity(self, per_set: int, first_run: int) -> int:
        """Key sets that fit beside the server itself and what is in flight: each upload's
        body (read, then copied) and the keys it becomes, and each run's working memory (a
        key set's first run decompresses it: ``first_run`` bytes more for a moment)."""
        limits = self.limits
        cap = limits.max_memory or (_rss() + available_memory()) // 2
        reserve = limits.max_uploads * 3 * self.key_bytes
        reserve += limits.max_runs * max(first_run, 16 * 1024**2)
        # a tenth kept for the allocator's slack and first runs decompressing side by side
        room = 0.9 * (cap - _rss() - reserve)
        if room < per_set:
            raise ResourceError(
                f"--max-memory {megabytes(int(cap))} leaves no room for one key set of this "
                f"model ({megabytes(per_set)} each; the server itself uses {megabytes(_rss())} "
                f"and up to {megabytes(reserve)} for uploads and runs in flight); raise "
                "--max-memory or lower --max-uploads."
            )
        return min(int(room // per_set), limits.max_key_sets or 100_000)

    def register(self, body: bytes) -> str:
        """Deserialize and hold a key set; its id (a thread may run this). ValueError for a
        body that is not evaluation keys, KeysFull when every held key set is in use."""
        fhe = concrete_fhe()
        key_id = hashlib.sha256(body).hexdigest()
        if key_id not in self.keys:
            try:
                keys = fhe.EvaluationKeys.deserialize(body)
            except Exception as exc:
                raise ValueError("body is not serialized evaluation keys") from exc
            self.keys.add(key_id, keys)
        return key_id

    def run(self, key_id: str, body: bytes) -> bytes:
        """One serialized encrypted input -> its serialized encrypted output, with the key set
        ``key_id`` (in a thread). UnknownKeys when it is not held, ValueError for a body that
        does not fit the circuit."""
        fhe = concrete_fhe()
        with self.keys.using(key_id) as keys:
            try:
                value = fhe.Value.deserialize(body)
                return self.server.run_value(value, keys).serialize()
            except Exception as exc:
                first = (str(exc).splitlines() or [type(exc).__name__])[0]
                raise ValueError(f"the input does not fit this model: {first}") from exc


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"
