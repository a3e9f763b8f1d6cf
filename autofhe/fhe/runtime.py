"""concrete-python, imported with Python's signal handlers given back.

Loading concrete's native runtime installs its own crash reporter on SIGINT, SIGTERM, SIGHUP
(and faults); its first simulation installs it again, and adds SIGPIPE; so does its first
encrypted run. That reporter prints the native stack and kills the process: Ctrl-C during a
search ended in ``Segmentation fault`` (exit 139), and a client closing its socket while
``serve`` wrote to it killed the server (Python itself ignores SIGPIPE and turns the write into
an ``OSError``). :func:`concrete_fhe` is how autofhe imports ``concrete.fhe``: the first time,
it simulates and runs a one-operation circuit (about 0.3 s), so that every lazy start-up of the
runtime is behind it, then re-installs Python's handlers (:func:`restore_signal_handlers`).
Both act in the main thread only, where Python's handlers live.

concrete also compiles every circuit (and, on first simulation, its simulation twin) into a
new temporary directory that it never removes (``Server.cleanup`` is a no-op in 2.11): about
20 KB left in the temporary directory per compilation, 40,000 directories after a day of
searches. :func:`concrete_fhe` makes each such directory go with its ``Server``
(:func:`_remove_libraries_with_their_servers`).
"""

from __future__ import annotations

import atexit
import shutil
import signal
import tempfile
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

__all__ = ["concrete_fhe", "remove_compiled_libraries", "restore_signal_handlers", "shielded"]

#: What concrete's runtime takes over and Python (or autofhe's CLI) must keep.
SIGNALS = tuple(
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGPIPE", "SIGUSR1", "SIGUSR2")
    if hasattr(signal, name)
)

_restored = False


def restore_signal_handlers() -> None:
    """Re-install the handler Python has on record for each of :data:`SIGNALS` (its own, a
    handler set with ``signal.signal``, ``SIG_IGN`` for SIGPIPE). A no-op off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in SIGNALS:
        handler = signal.getsignal(sig)
        if handler is not None:  # None: installed outside Python before it started; leave it
            signal.signal(sig, handler)


#: Signals held back while concrete works (see :func:`shielded`).
HELD = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, n))


@contextmanager
def shielded() -> Iterator[None]:
    """Hold the stop signals back (blocked, so pending, not lost) in the main thread while
    concrete works: for the length of each compilation, key generation and run, concrete puts
    a SIGINT handler of its own in place, and that handler kills the process. They are
    delivered, to Python's handlers, when the block ends. Elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def concrete_fhe() -> ModuleType:
    """``concrete.fhe``, its runtime started and Python's handlers restored (first call in the
    main thread of a process: the threads concrete starts then inherit the held signals, so
    that none of them ever takes a stop signal meant for Python)."""
    global _restored
    if _restored or threading.current_thread() is not threading.main_thread():
        from concrete import fhe

        _remove_libraries_with_their_servers()
        return fhe
    with shielded():
        from concrete import fhe

        _remove_libraries_with_their_servers()
        _restored = True
        config = fhe.Configuration(dump_artifacts_on_unexpected_failures=False)
        circuit = fhe.Compiler(lambda x: x + 1, {"x": "encrypted"}).compile(range(4), config)
        circuit.simulate(1)  # each of these starts a part of the runtime on first use ...
        circuit.keygen()
        circuit.encrypt_run_decrypt(1)
        restore_signal_handlers()  # ... and installs the crash reporter again
    return fhe


#: The pending removals of concrete's library directories (see below).
_removals: set[weakref.finalize] = set()


def remove_compiled_libraries() -> None:
    """Remove the library directories of the servers still alive: at exit, and before
    ``os._exit`` (a search's worker ends so), which runs no exit handler."""
    for removal in list(_removals):
        removal()
    _removals.clear()


def _remove_libraries_with_their_servers() -> None:
    """Make every concrete ``Server`` remove its library's temporary directory when it is
    garbage collected (or when the process exits normally). Only a directory concrete made
    with ``tempfile.mkdtemp()`` is removed: a ``tmp*`` child of the temporary directory."""
    from concrete.fhe.compilation.server import Server

    if getattr(Server, "_autofhe_removes_libraries", False):
        return
    init = Server.__init__

    def __init__(self, library, *args, **kwargs):
        init(self, library, *args, **kwargs)
        path = Path(library.get_output_dir_path())
        if path.parent == Path(tempfile.gettempdir()) and path.name.startswith("tmp"):
            _removals.difference_update([r for r in _removals if not r.alive])
            _removals.add(weakref.finalize(self, shutil.rmtree, path, True))

    Server.__init__ = __init__
    Server._autofhe_removes_libraries = True
    # at exit, before concrete's own exit hook (registered at its import, so run after this
    # one), which ends the process before weakref's exit hook when that one was registered
    # earlier (by tempfile, multiprocessing, ...)
    atexit.register(remove_compiled_libraries)
