"""A listening socket for autofhe's HTTP servers (``serve``, ``dashboard``): a bad address or
a busy port is one clear error before anything slow starts."""

from __future__ import annotations

import errno
import ipaddress
import socket

from autofhe.errors import HttpError, ParameterError

__all__ = ["bind"]


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, made before anything slow (compilation, keys) so
    that a bad address or a busy port is one clear error at once."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ParameterError(f"--port {port!r} is not a TCP port; pass 0 to 65535 (0: any free).")
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        except (socket.gaierror, UnicodeError):
            raise ParameterError(
                f"--host {host!r} is not an IP address or a name this machine resolves; pass "
                "e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)."
            ) from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            fix = f"port {port} is in use: pick another --port (0: any free port)"
        elif exc.errno in (errno.EACCES, errno.EPERM):
            fix = f"port {port} needs privileges: pick a --port above 1023"
        else:
            fix = f"--host {host} is not an address of this machine: pass one it has"
        raise HttpError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); {fix}.") from None
    sock.setblocking(False)
    return sock
