"""Progress lines for the deployment commands (``serve``, ``predict``, ``remote-predict``).

Compiling a circuit, generating keys and uploading a few hundred MB of evaluation keys each
take seconds to minutes; a command that says nothing meanwhile looks hung. Every message goes
to one stream (stderr by default, so predictions printed on stdout stay clean), and a quiet
reporter prints nothing. On a terminal, counters rewrite one line; in a log, they print at
most one line every few seconds, and always the last one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from autofhe.units import megabytes

__all__ = ["Progress", "megabytes"]

#: Seconds between two counter lines when the stream is not a terminal.
LOG_INTERVAL = 5.0


class Progress:
    """Writes progress lines to ``stream`` unless ``quiet``.

    Parameters
    ----------
    quiet : print nothing at all.
    stream : where lines go (default: ``sys.stderr`` at the time of each write).
    """

    def __init__(self, quiet: bool = False, stream: TextIO | None = None):
        self.quiet = quiet
        self._stream = stream
        self._last = 0.0
        self._open_line = False

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stderr

    def _tty(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def say(self, message: str) -> None:
        """One full line."""
        if self.quiet:
            return
        if self._open_line:
            self.stream.write("\n")
            self._open_line = False
        print(message, file=self.stream, flush=True)

    @contextmanager
    def step(self, message: str) -> Iterator[dict]:
        """``message ...`` now, ``message: done in 3.2 s`` (plus ``result['detail']``) after.

        The yielded dict lets the body add a detail to the closing line, e.g. a size.
        """
        result: dict = {}
        start = time.perf_counter()
        self.say(f"{message} ...")
        yield result
        detail = f" ({result['detail']})" if result.get("detail") else ""
        self.say(f"{message}: done in {time.perf_counter() - start:.1f} s{detail}")

    def count(self, message: str, final: bool = False) -> None:
        """A counter line (``message`` holds the counts): rewritten in place on a terminal,
        at most every :data:`LOG_INTERVAL` seconds in a log; ``final`` always prints."""
        if self.quiet:
            return
        now = time.perf_counter()
        if self._tty():
            self.stream.write(f"\r{message}")
            self._open_line = True
            if final:
                self.stream.write("\n")
                self._open_line = False
            self.stream.flush()
        elif final or now - self._last >= LOG_INTERVAL:
            print(message, file=self.stream, flush=True)
            self._last = now
        if final:  # the next counter starts afresh
            self._last = 0.0

    def rate_line(self, what: str, done: int, total: int, seconds: float) -> str:
        """``what: 12.3 / 312.4 MB (8.1 MB/s)``."""
        rate = done / seconds / 1e6 if seconds > 0 else 0.0
        return f"{what}: {megabytes(done)} / {megabytes(total)} ({rate:.1f} MB/s)"
