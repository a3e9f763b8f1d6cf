"""Worker processes, and how a search stops.

:func:`run_workers`: the search's workers, each a child process in its own process group
  (``search --workers N``; the CLI always isolates them, a library call with one worker runs
  in-process). The parent supervises: the terminal's Ctrl-C reaches it alone, and it passes
  one stop on to each worker, which ends its trial (loop.py) and exits 130 (143); a second
  Ctrl-C kills the workers at once (their helpers then end their trials with that reason).
  Its ``progress`` callback sees the study every few seconds. A Ctrl-C is passed on as
  SIGUSR1, not SIGINT: concrete-python puts its own SIGINT handler in place for the length of
  each compilation, key generation and run, and that handler kills the process.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import optuna

from autofhe.errors import AutofheError, Interrupted, on_stop_signals
from autofhe.search.store.engine import make_storage

__all__ = ["Outcome", "run_workers"]

#: Seconds between two looks of the supervisor at the study (progress, started trials).
PROGRESS_POLL_S = 2.0
#: What a worker's exit code says when it was stopped by a signal it handled.
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


#: The signals a worker stops on; ignored while it starts (see run_workers).
STOP_SIGNALS = (*EXIT_CODES, signal.SIGUSR1)
#: What the supervisor sends a worker for each signal it receives (see the module docstring).
RELAYED = {signal.SIGINT: signal.SIGUSR1, signal.SIGTERM: signal.SIGTERM}


def _worker_main(
    url: str, name: str, n_trials: int | None, timeout: float | None, seed: int, cost: dict, ready
) -> None:
    """A child of ``run_workers``, in a process group of its own. It is born ignoring the stop
    signals; ``ready`` tells the supervisor when it stops on them. Its exit code is explicit
    (concrete's exit hook, once an encrypted run happened, would turn any exit into 0)."""
    os.setpgid(0, 0)  # the terminal's Ctrl-C reaches the supervisor, which passes one on
    on_stop_signals(relayed=True)
    _stop_with_parent()
    ready.set()
    warnings.filterwarnings("ignore")
    code = 0
    try:
        from autofhe.fhe.runtime import concrete_fhe

        concrete_fhe()  # first, while no other thread exists (runtime.py)
        import torch

        # Small networks train as fast on one thread: N workers use N cores, not 2N threads.
        torch.set_num_threads(1)
        from autofhe.fhe.latency import CostModel
        from autofhe.search.run.study import SearchSession

        SearchSession(url, name, seed).run(n_trials, timeout, CostModel.from_json(cost))
    except Interrupted as exc:
        code = exc.exit_code
    except AutofheError as exc:
        print(f"autofhe: worker error: {exc}", file=sys.stderr)
        code = 2
    except BaseException as exc:
        first = (str(exc).splitlines() or [""])[0]
        print(f"autofhe: worker error: {type(exc).__name__}: {first}", file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    from autofhe.fhe.runtime import remove_compiled_libraries

    remove_compiled_libraries()  # os._exit runs no exit handler
    os._exit(code)


def _stop_with_parent() -> None:
    """SIGTERM to this worker when its supervisor dies (``kill -9`` of `autofhe search`):
    otherwise, in its own process group, it would go on alone. Linux only (prctl)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the supervisor died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class Outcome:
    """How the workers of :func:`run_workers` ended."""

    codes: list[int] = field(default_factory=list)  # exit codes (negative: killed by a signal)
    pids: list[int] = field(default_factory=list)
    stopped_by: int | None = None  # SIGINT / SIGTERM the supervisor received, if any
    aborted: bool = False  # a second signal: workers killed without ending their trials

    @property
    def exit_code(self) -> int:
        """130 / 143 when stopped by SIGINT / SIGTERM, else 0 or the failed workers' code."""
        if self.stopped_by is not None:
            return EXIT_CODES[self.stopped_by]
        codes = [c for c in self.codes if c]
        if not codes:
            return 0
        return max(codes) if all(c > 0 for c in codes) else 1

    def failures(self) -> list[str]:
        """One description per worker that did not end well (a stop we asked for is fine)."""
        asked = {0, *EXIT_CODES.values()} if self.stopped_by else {0}
        out = []
        for i, (code, pid) in enumerate(zip(self.codes, self.pids)):
            if code in asked or (self.aborted and code == -signal.SIGKILL):
                continue
            if code < 0:
                out.append(f"worker {i + 1} (pid {pid}) was killed by {signal.Signals(-code).name}")
            else:
                out.append(f"worker {i + 1} (pid {pid}) exited with code {code}")
        return out


class _Stop:
    """The supervisor's SIGINT / SIGTERM handlers: they only count, the loop acts."""

    def __init__(self):
        self.signum: int | None = None
        self.count = 0
        self._old = {}

    def __enter__(self):
        for sig in EXIT_CODES:
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        self.signum = self.signum or signum
        self.count += 1

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def run_workers(
    url: str,
    name: str,
    workers: int,
    n_trials: int | None,
    timeout: float | None,
    seed: int,
    cost_model,
    progress: Callable | None = None,
    isolate: bool = False,
) -> Outcome:
    """Run the study with ``workers`` processes.

    With one worker and ``isolate`` False (a library call), the worker runs in this process;
    otherwise every worker is a child (see the module docstring) and ``progress(study)``, when
    given, is called every :data:`PROGRESS_POLL_S` seconds. ``cost_model`` None: this machine's
    cached latency model.
    """
    from autofhe.fhe.latency import load_cost_model
    from autofhe.search.run.study import SearchSession

    cost_model = cost_model or load_cost_model()
    if workers <= 1 and not isolate:
        SearchSession(url, name, seed).run(n_trials, timeout, cost_model)
        return Outcome()
    shares = [None] * workers
    if n_trials is not None:
        shares = [n_trials // workers + (i < n_trials % workers) for i in range(workers)]
    ctx = multiprocessing.get_context("spawn")
    cost = cost_model.to_json()
    ready = [ctx.Event() for share in shares if share != 0]
    procs = [
        ctx.Process(target=_worker_main, args=(url, name, share, timeout, seed + i, cost, flag))
        for i, (share, flag) in enumerate(zip([s for s in shares if s != 0], ready))
    ]
    outcome = Outcome()
    # Children inherit ignored signals: until their handlers exist they ignore a Ctrl-C (the
    # supervisor passes it on once they are ready), where a default handler would print a
    # KeyboardInterrupt traceback from the middle of an import.
    ignored = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        for p in procs:
            p.start()
    finally:
        for sig, old in ignored.items():
            signal.signal(sig, old)
    with _Stop() as stop:
        study = optuna.load_study(study_name=name, storage=make_storage(url)) if progress else None
        told: set[int] = set()  # workers the first stop signal was passed on to
        killed, last = False, 0.0
        while any(p.is_alive() for p in procs):
            for p in procs:
                p.join(timeout=0.2 / len(procs))
            if stop.count > 1 and not killed:  # the second: at once, whatever they do
                killed = outcome.aborted = True
                for p in procs:
                    if p.is_alive():
                        p.kill()
            elif stop.count == 1:
                relay = RELAYED[stop.signum]
                for i, p in enumerate(procs):
                    if i not in told and p.is_alive() and ready[i].is_set():
                        told.add(i)
                        os.kill(p.pid, relay)
            if study is not None and time.monotonic() - last >= PROGRESS_POLL_S:
                last = time.monotonic()
                _quietly(progress, study)
        outcome.stopped_by = stop.signum
    if study is not None:
        _quietly(progress, study)
    outcome.codes = [p.exitcode for p in procs]
    outcome.pids = [p.pid for p in procs]
    return outcome


def _quietly(progress: Callable, study) -> None:
    """A progress report never ends a search (a database hiccup skips one report)."""
    try:
        progress(study)
    except Exception as exc:
        print(f"autofhe: warning: no progress report: {exc}"[:200], file=sys.stderr)
