"""Use a bundle: the client (keys, encrypt, decrypt) and the server (run on encrypted data).

The data owner holds ``client/`` and a key directory; the server holds ``server/`` and the
evaluation keys the client sends it. Everything that crosses between them is bytes:
serialized evaluation keys, serialized encrypted inputs, serialized encrypted outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from autofhe.data import check_X
from autofhe.fhe.bundle import BundleError, load_model, read_json, read_part
from autofhe.fhe.codec import check_client_matches, client_from_json, program_from_json
from autofhe.fhe.model import check_mode
from autofhe.fhe.program import quantize_inputs, softmax
from autofhe.fhe.progress import Progress, megabytes
from autofhe.fhe.rebuild import check_specs, compile_server
from autofhe.fhe.runtime import concrete_fhe

__all__ = ["FheClient", "FheServer", "measure_bundle", "predict_bundle"]


class FheClient:
    """The data owner's side: keys, quantization + encryption, decryption + post-processing.

    Parameters
    ----------
    client : a bundle directory or its ``client/`` part.
    key_dir : where the secret and evaluation keys live (created, reused across runs). None:
        keys in memory only.
    digest : the pinned :func:`~autofhe.fhe.bundle.bundle_digest` of ``client`` (the bundle
        or the part, whichever is passed); anything else is refused.
    progress : where key generation reports its progress (default: nowhere).
    """

    def __init__(
        self,
        client: str | Path,
        key_dir: str | Path | None = None,
        digest: str | None = None,
        progress: Progress | None = None,
    ):
        fhe = concrete_fhe()

        root = read_part(client, "client", digest)
        specs = read_json(root / "client.specs.json")
        #: client.json, checked (against the specs: inputs, outputs; and the program)
        self.part = client_from_json(read_json(root / "client.json"), specs)
        if root != Path(client):  # a whole bundle: its program is at hand
            program = program_from_json(read_json(root.parent / "server" / "program.json"))
            check_client_matches(self.part, program)
        try:
            specs = fhe.ClientSpecs.deserialize(json.dumps(specs).encode())
        except (ValueError, RuntimeError, TypeError, KeyError) as exc:
            raise BundleError(f"{root} is not a readable client part: {exc}") from None
        self._client = fhe.Client(specs)
        self.key_dir = None if key_dir is None else Path(key_dir)
        self.progress = progress or Progress(quiet=True)
        self._has_keys = False

    def keygen(self) -> None:
        """Generate keys (or load them from ``key_dir`` when they exist there).

        The key file is named after this model's client specs, so one key directory can serve
        several models without mixing their keys; it holds the secret key, so only its owner
        may read it.
        """
        if self._has_keys:  # the client keeps them
            return
        if self.key_dir is None:
            with self.progress.step("generating keys (in memory)"):
                self._client.keygen()
            self._has_keys = True
            return
        self.key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.key_dir, 0o700)
        specs = hashlib.sha256(self._client.specs.serialize()).hexdigest()[:16]
        path = self.key_dir / f"keys-{specs}.bin"
        what = f"loading keys from {path}" if path.exists() else f"generating keys into {path}"
        with self.progress.step(what):
            self._client.keys.load_if_exists_generate_and_save_otherwise(path)
        if path.exists():
            os.chmod(path, 0o600)
        self._has_keys = True

    def evaluation_keys(self) -> bytes:
        """Serialized evaluation keys for the server (never the secret key)."""
        self.keygen()
        return self._client.evaluation_keys.serialize()

    def quantize(self, X) -> np.ndarray:
        p = self.part
        X = check_X(X, n_features=p.n_features, estimator="this model")
        return quantize_inputs(X, p.input_offset, p.input_norm, p.input_scale, p.input_bits)

    def encrypt(self, X) -> list[bytes]:
        """One serialized encrypted input per row of ``X``."""
        self.keygen()
        return [self.encrypt_row(row) for row in self.quantize(X)]

    def encrypt_row(self, x_int: np.ndarray) -> bytes:
        """One already-quantized row, encrypted and serialized (keys must exist)."""
        return self._client.encrypt(x_int).serialize()

    def decrypt(self, outputs: list[bytes]) -> np.ndarray:
        """Real-valued outputs (logits or regression values) of serialized encrypted outputs."""
        fhe = concrete_fhe()

        self.keygen()
        acc = np.stack([self._client.decrypt(fhe.Value.deserialize(o)) for o in outputs])
        return self.outputs(acc)

    def outputs(self, acc: np.ndarray) -> np.ndarray:
        return np.asarray(acc, dtype=np.float64) * self.part.output_scale

    def predict_proba(self, real: np.ndarray) -> np.ndarray:
        if not self.part.decoding.classification:
            raise BundleError("predict_proba is for classifiers; this bundle is a regressor.")
        return softmax(real)

    def predict(self, real: np.ndarray) -> np.ndarray:
        return self.part.decoding.predict(real)


class FheServer:
    """The server's side: runs encrypted inputs with a client's evaluation keys.

    It compiles its circuit from ``server/program.json`` (no compiled code is ever loaded from
    a bundle) and refuses to run when that circuit's client specs differ from the bundle's.

    Parameters
    ----------
    server : a bundle directory or its ``server/`` part.
    digest : the pinned digest of ``server`` (bundle or part); anything else is refused.
    progress : where compilation reports its progress (default: nowhere).
    """

    def __init__(
        self, server: str | Path, digest: str | None = None, progress: Progress | None = None
    ):
        root = read_part(server, "server", digest)
        data, specs = read_json(root / "program.json"), read_json(root / "client.specs.json")
        with (progress or Progress(quiet=True)).step(f"compiling the circuit of {root}"):
            circuit = compile_server(data)
        check_specs(circuit, specs, root)
        self._server = circuit.server
        self.n_features = len(data["input_scale"])  # checked by compile_server

    def run(self, encrypted_input: bytes, evaluation_keys: bytes) -> bytes:
        """Serialized encrypted input + serialized evaluation keys -> serialized output."""
        fhe = concrete_fhe()

        return self.run_value(
            fhe.Value.deserialize(encrypted_input), fhe.EvaluationKeys.deserialize(evaluation_keys)
        ).serialize()

    @property
    def client_specs(self):
        """The circuit's client specs (what keys for it look like)."""
        return self._server.client_specs

    def run_value(self, value, evaluation_keys):
        """The same on deserialized concrete objects (a server keeps keys deserialized)."""
        return self._server.run(value, evaluation_keys=evaluation_keys)


def count_samples(progress: Progress, what: str, done: int, total: int, start: float) -> None:
    """``what: 3/10 samples (0.52 s per sample)``, the last one always shown."""
    import time

    per = (time.perf_counter() - start) / done if done else 0.0
    progress.count(f"{what}: {done}/{total} samples ({per:.2f} s per sample)", done == total)


def predict_bundle(
    bundle: str | Path,
    X,
    fhe: str = "execute",
    progress: bool | Progress = True,
    key_dir=None,
    digest: str | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Predictions (and class probabilities, for classifiers) of a bundle on ``X``.

    ``execute``: client and server in this process, keys in ``key_dir`` (default: in memory);
    ``simulate``: the server's circuit, simulated; ``disable``: the program in the clear.
    ``digest``: the bundle's pinned digest (anything else is refused). ``progress``: True
    reports compilation, key generation and samples on stderr (or pass a :class:`Progress`).
    """
    import time

    check_mode(fhe)
    report = progress if isinstance(progress, Progress) else Progress(quiet=not progress)
    client = FheClient(bundle, key_dir, digest, progress=report)
    x_int = client.quantize(X)
    if fhe == "execute":
        server = FheServer(bundle, digest, progress=report)
        keys = client.evaluation_keys()  # key_dir None: in memory, gone with this process
        report.say(f"evaluation keys: {megabytes(len(keys))}")
        outputs, start = [], time.perf_counter()
        for i, row in enumerate(x_int):
            outputs.append(server.run(client.encrypt_row(row), keys))
            count_samples(report, "encrypted predictions", i + 1, len(x_int), start)
        real = client.decrypt(outputs)
    else:
        model = load_model(bundle, digest)  # its circuit is checked against the specs
        if fhe == "disable":
            acc = model.program.run(x_int)
        else:
            with report.step("compiling the circuit to simulate it"):
                circuit = model.circuit  # compiled on first use, checked against the specs
            acc = np.stack([circuit.simulate(row) for row in x_int])
        real = client.outputs(acc)
    proba = client.predict_proba(real) if client.part.decoding.classification else None
    return client.predict(real), proba


class _Endpoints:
    """A bundle's client and server behind a circuit's keygen / encrypt / run / decrypt."""

    def __init__(self, bundle: str | Path, digest: str | None = None):
        self.client = FheClient(bundle, digest=digest)
        self.server = FheServer(bundle, digest)

    def keygen(self, force: bool = False) -> None:
        self.client._client.keygen(force=force)
        # deserialized once, as a server keeps them
        self._keys = self.client._client.evaluation_keys

    def encrypt(self, x_int):
        return self.client._client.encrypt(x_int)

    def run(self, value):
        return self.server.run_value(value, self._keys)

    def decrypt(self, value):
        return self.client._client.decrypt(value)


def measure_bundle(bundle: str | Path, X, n: int = 3, digest: str | None = None) -> dict:
    """Measured latency of an exported model on this machine, client and server in one process.

    Same figures as ``measure_latency`` (key generation, then the median encrypt / run / decrypt
    time per sample over ``n`` rows of ``X``), from the bundle alone: no model, no recompiling.
    """
    from autofhe.fhe.latency import measure_circuit

    endpoints = _Endpoints(bundle, digest)
    x_int = endpoints.client.quantize(X)[: max(1, n)]
    return measure_circuit(endpoints, list(x_int), n)
