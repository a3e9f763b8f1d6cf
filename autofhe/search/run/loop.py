"""The trial loop of one worker process: ask -> objective -> tell.

The heartbeat helper of heartbeat.py beats for the current trial. A trial that another
process ended (a reaper that took it for dead) is dropped with a warning, never a crash.
Ctrl-C or SIGTERM in the middle of a trial ends it FAIL with the reason
``interrupted (SIGINT)`` and queues its configuration again, so the next run takes it first:
nothing is lost.
"""

from __future__ import annotations

import gc
import signal
import sys
import time
from collections.abc import Callable

import optuna

from autofhe.errors import Interrupted
from autofhe.search import record
from autofhe.search.record import TrialRecord
from autofhe.search.run.heartbeat import Heartbeat, end_trial, worker_id
from autofhe.search.trial import quiet
from autofhe.search.trial.objective import objective

__all__ = ["optimize"]


def _signal_name(exc: BaseException) -> str:
    return signal.Signals(exc.signum).name if isinstance(exc, Interrupted) else "SIGINT"


def optimize(
    study,
    storage,
    ctx,
    n_trials,
    timeout,
    beat: Heartbeat,
    after_trial: Callable,
    before_ask: Callable | None = None,
) -> int:
    """ask -> objective -> tell until ``n_trials`` are told or ``timeout`` passes; ``storage``
    is the study's (trials are addressed in it by id).

    Unlike ``study.optimize`` this survives a trial that another process ended (a reaper that
    took it for dead): its result is dropped with a warning instead of a crash. ``before_ask``
    runs right before each ask this process makes (it may enqueue the trial the ask then
    takes: nothing is left queued when the search ends).
    """
    with quiet.working():  # this process pauses at checkpoints while another one measures
        return _optimize(study, storage, ctx, n_trials, timeout, beat, after_trial, before_ask)


def _optimize(study, storage, ctx, n_trials, timeout, beat, after_trial, before_ask) -> int:
    state = optuna.trial.TrialState
    start, done = time.monotonic(), 0
    while n_trials is None or done < n_trials:
        if timeout is not None and time.monotonic() - start >= timeout:
            break
        quiet.checkpoint()
        if before_ask is not None:
            before_ask()
        trial = study.ask()
        values, ended = None, state.FAIL
        try:
            beat.start(trial._trial_id)
            # who runs it (a system attribute: not one of the trial's results)
            storage.set_trial_system_attr(trial._trial_id, "autofhe_worker", worker_id())
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
        except BaseException as exc:  # Ctrl-C, SIGTERM: the trial ends and is queued again
            reason = f"interrupted ({_signal_name(exc)}) in worker {worker_id()}"
            # the helper keeps the trial as current until it is ended: should this process
            # die before, the helper ends it when its pipe closes
            end_trial(storage, study, trial._trial_id, reason, limit=None)
            beat.stop()
            raise
        beat.stop()
        frozen = _tell(study, storage, trial, values, ended)
        done += 1
        if frozen is not None:
            after_trial(frozen)
        gc.collect()
    return done


def _record_error(trial, text: str) -> None:
    """What crashed a trial, for the person who inspects it (and `search`'s exit message)."""
    try:
        record.write(trial, error=text[:500])
    except Exception:  # the trial may be ended already: the error is printed anyway
        pass


def _tell(study, storage, trial, values, ended) -> optuna.trial.FrozenTrial | None:
    """Report a trial; None (and a warning) when another process already ended it."""
    try:
        current = storage.get_trial(trial._trial_id)
        if not current.state.is_finished():
            return study.tell(trial, values, state=ended)
    except optuna.exceptions.UpdateFinishedTrialError:  # ended between our look and our write
        current = storage.get_trial(trial._trial_id)
    why = TrialRecord.of(current).reason or f"{current.state.name}, no heartbeat?"
    print(
        f"autofhe: warning: trial {trial.number} was ended by another process ({why}); its "
        "result is dropped",
        file=sys.stderr,
    )
    return None
