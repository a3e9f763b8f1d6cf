"""The one error hierarchy of autofhe.

Every user-facing failure is an :class:`AutofheError`. Messages say what is wrong, show the
offending value and say how to fix it. Subclasses also derive from the built-in exception that
scikit-learn conventions expect (``ValueError``, ``TypeError``), so generic tooling catches them.
"""

from __future__ import annotations

__all__ = [
    "AccumulatorBudgetError",
    "AutofheError",
    "AutofheWarning",
    "BundleError",
    "CompilationError",
    "DataError",
    "DataTypeError",
    "HttpError",
    "Interrupted",
    "NotCompiledError",
    "NotFittedError",  # noqa: F822 -- built on first use, see __getattr__
    "ParameterError",
    "ResourceError",
    "StorageError",
    "on_stop_signals",
]


class AutofheError(Exception):
    """Base class of every error autofhe raises on purpose."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM, raised where the program is by the handler of :func:`on_stop_signals`.

    Not a KeyboardInterrupt: skorch takes that for "stop training early" and goes on, so a
    Ctrl-C during a search's training was lost. ``signum`` says which signal; a command ends
    with 128 + it (130, 143).
    """

    def __init__(self, signum: int):
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise_interrupted(signum, _frame) -> None:
    import signal

    # SIGUSR1 is how a search's supervisor passes a Ctrl-C on to its workers (search/run/workers.py)
    raise Interrupted(signal.SIGINT if signum == signal.SIGUSR1 else signum)


def on_stop_signals(relayed: bool = False) -> None:
    """SIGINT and SIGTERM raise :class:`Interrupted` in this process's main thread;
    ``relayed``: SIGUSR1 too, as a Ctrl-C passed on by a supervisor."""
    import signal

    signals = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGUSR1] if relayed else [])
    for sig in signals:
        signal.signal(sig, _raise_interrupted)


class DataError(AutofheError, ValueError):
    """The data handed to autofhe cannot be used as it is (shape, values, labels)."""


class DataTypeError(DataError, TypeError):
    """The data has a type autofhe cannot read as numbers."""


class ParameterError(AutofheError, ValueError):
    """A hyperparameter is out of range or of the wrong kind."""


class AccumulatorBudgetError(ParameterError):
    """``n_accum_bits`` is too small for any network with the chosen bit widths."""


def __getattr__(name: str):
    # NotFittedError is built on first use: importing scikit-learn costs about a second, which
    # every CLI command would pay (`autofhe --help` must answer at once).
    if name == "NotFittedError":
        from sklearn.exceptions import NotFittedError as _SklearnNotFittedError

        class NotFittedError(AutofheError, _SklearnNotFittedError):
            """The estimator is used before ``fit``; also scikit-learn's ``NotFittedError``."""

        NotFittedError.__module__, NotFittedError.__qualname__ = __name__, "NotFittedError"
        globals()["NotFittedError"] = NotFittedError
        return NotFittedError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class NotCompiledError(AutofheError, RuntimeError):
    """FHE simulation or execution was asked for before ``compile``."""


class CompilationError(AutofheError, RuntimeError):
    """The model cannot become a TFHE circuit (precision too high, no crypto parameters)."""


class ResourceError(AutofheError, RuntimeError):
    """The work would need more memory (or time) than this machine has."""


class BundleError(AutofheError, ValueError):
    """A bundle is missing, incomplete, tampered with, or from an incompatible version."""


class StorageError(AutofheError, RuntimeError):
    """The study database could not be read or written."""


class HttpError(AutofheError, RuntimeError):
    """The encrypted-inference server answered with an error or could not be reached."""


class AutofheWarning(UserWarning):
    """Something works but probably not as the user intended."""
