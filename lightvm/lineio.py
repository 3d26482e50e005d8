"""Deadlines, newline-framed reads and unix-socket connects: the little that talking to
lightvmd (or QMP, or a migration peer) needs, importing only the standard library's
``os`` and ``time`` (``socket`` when :func:`connect_unix` is called).

Why a module of its own: the ``lightvm`` command's thin path (lightvm/cli/thin.py) imports
it on every ``create``/``list`` through lightvmd, and each import costs every command a
share of a start-up measured against ``python3 -c pass`` (docs/cli-startup.md).
:mod:`lightvm.util` re-exports all of it for the rest of the package.
"""

from __future__ import annotations

import errno  # built into the interpreter: no import cost
import os
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable
    from typing import Any, Protocol

    class LineConnection(Protocol):
        """What :func:`recv_line` needs: a socket, or a paramiko channel."""

        def recv(self, size: int, /) -> bytes: ...

        def settimeout(self, value: float | None, /) -> None: ...


# AF_UNIX paths are limited to 108 bytes including the NUL.
UNIX_PATH_MAX = 107


class Deadline:
    """A point in monotonic time; ``remaining()`` never goes below zero."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.end = time.monotonic() + timeout

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.end


LINE_MAX = 1 << 20  # a JSON line of the API or the migration protocol is a few hundred bytes


def recv_line(
    conn: LineConnection,
    buf: bytes,
    deadline: Deadline,
    max_wait: float | None = None,
    max_line: int = LINE_MAX,
    on_idle: Callable[[], None] | None = None,
) -> tuple[bytes, bytes]:
    """Read from ``conn`` until ``buf`` holds a whole line; return the line (without its
    newline) and the bytes after it. Both newline-delimited JSON peers use it: the
    lightvmd API client and the migration control channel. ``max_wait`` caps each
    blocking ``recv``; ``on_idle`` runs after each one that timed out and may raise to
    give up early (what is read so far is then dropped with the connection).

    :raise TimeoutError: the deadline passed before a whole line arrived.
    :raise EOFError: the peer closed the connection.
    :raise OSError: the connection failed, or the peer sent more than ``max_line``
        bytes without a newline (EMSGSIZE: a broken or hostile peer must not fill memory).
    """
    while b"\n" not in buf:
        if len(buf) > max_line:
            raise OSError(errno.EMSGSIZE, f"the peer sent a line longer than {max_line} bytes")
        left = deadline.remaining()
        if left <= 0:
            raise TimeoutError
        conn.settimeout(left if max_wait is None else min(left, max_wait))
        try:
            chunk = conn.recv(65536)
        except TimeoutError:
            if on_idle is not None:
                on_idle()
            continue
        if not chunk:
            raise EOFError
        buf += chunk
    line, rest = buf.split(b"\n", 1)
    return line, rest


def short_unix_path(path: str | os.PathLike[str]) -> tuple[str, int | None]:
    """A path usable with AF_UNIX bind/connect, and a folder fd to close afterwards.

    Long state folders (deep tmp dirs) overflow the 108-byte limit; going through
    /proc/self/fd/N of the folder keeps the address short and names the same file.
    """
    text = os.fspath(path)
    if len(os.fsencode(text)) <= UNIX_PATH_MAX:
        return text, None
    dirfd = os.open(os.path.dirname(text) or ".", os.O_PATH | os.O_CLOEXEC)
    return f"/proc/self/fd/{dirfd}/{os.path.basename(text)}", dirfd


def connect_unix(path: str | os.PathLike[str], timeout: float, module: Any = None) -> socket.socket:
    """A stream socket connected to the unix socket at ``path`` (any length: see
    :func:`short_unix_path`), with ``timeout`` set on it. ``module``: the socket module
    to make it with (default ``socket``; the API client passes the lighter ``_socket``,
    lightvm/daemon/proto.py).

    :raise OSError: it could not connect (the socket is closed).
    """
    if module is None:
        import socket as module

    sock: socket.socket = module.socket(module.AF_UNIX, module.SOCK_STREAM | module.SOCK_CLOEXEC)
    address, dirfd = short_unix_path(path)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
    except OSError:
        sock.close()
        raise
    finally:
        if dirfd is not None:
            os.close(dirfd)
    return sock


def listen_unix(path: str | os.PathLike[str], backlog: int) -> socket.socket:
    """A stream socket listening at ``path`` (any length: see :func:`short_unix_path`), born
    mode 0600: the umask is set around the bind, so there is no moment when another user
    could connect. A socket file already at ``path`` is replaced: the caller owns the path
    (it holds the state dir's lock, or its parent does).

    :raise OSError: it could not bind or listen (no socket is left open).
    """
    import socket

    try:  # noqa: SIM105  (contextlib: an import the CLI's thin path, which imports this module, avoids)
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    address, dirfd = short_unix_path(path)
    old = os.umask(0o177)
    try:
        sock.bind(address)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old)
        if dirfd is not None:
            os.close(dirfd)
    return sock
