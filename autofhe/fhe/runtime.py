"""concrete-python, imported with Python's signal handlers given back.

Loading concrete's native runtime installs its own crash reporter on SIGINT, SIGTERM, SIGHUP
(and faults); its first encrypted run adds one on SIGPIPE. That reporter prints the native
stack and kills the process: Ctrl-C during a search ended in ``Segmentation fault`` (exit
139), and a client closing its socket while ``serve`` wrote to it killed the server (Python
itself ignores SIGPIPE and turns the write into an ``OSError``). :func:`concrete_fhe` is how
autofhe imports ``concrete.fhe``; :func:`restore_signal_handlers` re-installs Python's
handlers after a first run. Both only act in the main thread, where Python's handlers live.
"""

from __future__ import annotations

import signal
import threading
from types import ModuleType

__all__ = ["concrete_fhe", "restore_signal_handlers"]

#: What concrete's runtime takes over and Python (or autofhe's CLI) must keep.
SIGNALS = tuple(
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGPIPE")
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


def concrete_fhe() -> ModuleType:
    """``concrete.fhe``; on its first import in this process, Python's handlers are restored."""
    global _restored
    from concrete import fhe

    if not _restored and threading.current_thread() is threading.main_thread():
        restore_signal_handlers()
        _restored = True
    return fhe
