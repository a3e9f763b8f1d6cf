"""The worker loop and worker processes.

- :func:`optimize`: ask -> objective -> tell in one process, with the heartbeat helper of
  heartbeat.py beating for the current trial; a trial that another process ended (a reaper
  that took it for dead) is dropped with a warning, never a crash.
- :func:`run_workers`: N such processes for ``search --workers N``; their exit codes are
  returned, so a failed child is never reported as success.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable

import optuna

from autofhe.errors import AutofheError
from autofhe.search import quiet
from autofhe.search.heartbeat import GRACE_S, Heartbeat
from autofhe.search.objective import objective
from autofhe.search.pareto import pareto_front

__all__ = ["optimize", "run_workers"]

#: Seconds between two looks of `search --workers N` at its children's progress.
PROGRESS_POLL_S = 5.0


def optimize(
    study,
    ctx,
    n_trials,
    timeout,
    beat: Heartbeat,
    after_trial: Callable,
    before_ask: Callable | None = None,
) -> int:
    """ask -> objective -> tell until ``n_trials`` are told or ``timeout`` passes.

    Unlike ``study.optimize`` this survives a trial that another process ended (a reaper that
    took it for dead): its result is dropped with a warning instead of a crash.
    ``before_ask`` runs right before each ask this process makes (it may enqueue the trial
    the ask then takes: nothing is left queued when the search ends).
    """
    with quiet.working():  # this process pauses at checkpoints while another one measures
        return _optimize(study, ctx, n_trials, timeout, beat, after_trial, before_ask)


def _optimize(study, ctx, n_trials, timeout, beat, after_trial, before_ask) -> int:
    state = optuna.trial.TrialState
    start, done = time.monotonic(), 0
    while n_trials is None or done < n_trials:
        if timeout is not None and time.monotonic() - start >= timeout:
            break
        quiet.checkpoint()
        if before_ask is not None:
            before_ask()
        trial = study.ask()
        beat.start(trial._trial_id)
        # who ran it (a system attribute: not one of the trial's results)
        study._storage.set_trial_system_attr(trial._trial_id, "autofhe_worker", _worker_id())
        values, ended = None, state.FAIL
        try:
            values, ended = objective(trial, ctx), None
        except optuna.TrialPruned:
            ended = state.PRUNED
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another process ended it: _tell says so
        except Exception as exc:  # a crash fails this trial, not the worker
            first = (str(exc).splitlines() or [""])[0]
            _record_error(trial, f"{type(exc).__name__}: {first}")
            print(
                f"autofhe: trial {trial.number} failed: {type(exc).__name__}: {first}",
                file=sys.stderr,
            )
        except BaseException:  # Ctrl-C: the trial is failed, not left RUNNING
            beat.stop()
            _tell(study, trial, None, state.FAIL)
            raise
        beat.stop()
        frozen = _tell(study, trial, values, ended)
        done += 1
        if frozen is not None:
            after_trial(frozen)
        gc.collect()
    return done


def _record_error(trial, text: str) -> None:
    """What crashed a trial, for the person who inspects it (and `search`'s exit message)."""
    try:
        trial.set_user_attr("error", text[:500])
    except Exception:  # the trial may be ended already: the error is printed anyway
        pass


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _tell(study, trial, values, ended) -> optuna.trial.FrozenTrial | None:
    """Report a trial; None (and a warning) when another process already ended it."""
    try:
        current = study._storage.get_trial(trial._trial_id)
        if not current.state.is_finished():
            return study.tell(trial, values, state=ended)
    except optuna.exceptions.UpdateFinishedTrialError:  # ended between our look and our write
        current = study._storage.get_trial(trial._trial_id)
    print(
        f"autofhe: warning: trial {trial.number} was ended by another process "
        f"({current.state.name}, heartbeat older than {GRACE_S} s?); its result is dropped",
        file=sys.stderr,
    )
    return None


def _worker_main(
    url: str, name: str, n_trials: int | None, timeout: float | None, seed: int
) -> None:
    """A child of ``run_workers``; its exit code is explicit (concrete's exit hook, once an
    encrypted run happened, would turn any exit into 0)."""
    warnings.filterwarnings("ignore")
    code = 0
    try:
        import torch

        # Small networks train as fast on one thread: N workers use N cores, not 2N threads.
        torch.set_num_threads(1)
        from autofhe.fhe.latency import load_cost_model
        from autofhe.search.study import SearchSession

        SearchSession(url, name, seed).run(n_trials, timeout, load_cost_model())
    except AutofheError as exc:
        print(f"autofhe: worker error: {exc}", file=sys.stderr)
        code = 2
    except BaseException as exc:
        first = (str(exc).splitlines() or [""])[0]
        print(f"autofhe: worker error: {type(exc).__name__}: {first}", file=sys.stderr)
        code = 130 if isinstance(exc, KeyboardInterrupt) else 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_workers(
    url: str,
    name: str,
    workers: int,
    n_trials: int | None,
    timeout: float | None,
    seed: int,
    cost_model,
    progress=None,
) -> list[int]:
    """Run the study with ``workers`` processes (1: in this process).

    Returns the exit codes of the worker processes (empty with one worker: its errors raise).
    """
    from autofhe.search.study import SearchSession, _storage

    if workers <= 1:
        SearchSession(url, name, seed).run(n_trials, timeout, cost_model, progress)
        return []
    shares = [None] * workers
    if n_trials is not None:
        shares = [n_trials // workers + (i < n_trials % workers) for i in range(workers)]
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_worker_main, args=(url, name, share, timeout, seed + i))
        for i, share in enumerate(shares)
        if share != 0
    ]
    for p in procs:
        p.start()
    try:
        # one storage (one small pool) for every look, and a look every few seconds only
        study = optuna.load_study(study_name=name, storage=_storage(url)) if progress else None
        seen = -1
        while any(p.is_alive() for p in procs):
            for p in procs:
                p.join(timeout=PROGRESS_POLL_S / len(procs))
            if study is not None:
                trials = study.get_trials(deepcopy=False)
                finished = sum(t.state.is_finished() for t in trials)
                if finished != seen:
                    seen = finished
                    progress(study, None, trials, pareto_front(trials))
    finally:
        for p in procs:
            p.join()
    return [p.exitcode for p in procs]
