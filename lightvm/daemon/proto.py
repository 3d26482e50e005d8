"""The client half of the lightvmd API (lightvm/daemon/api.py has the protocol, numbered):
the errors, the socket's name and :class:`Client`, importing only ``errno``, ``_socket``,
:mod:`lightvm.jsonline` (JSON through ``_json``, without ``json``), :mod:`lightvm.lineio`
(``os``, ``time``) and :mod:`lightvm.errors`.

Why apart from api.py: ``lightvm create``/``list`` through lightvmd is meant to cost no
more than starting Python (docs/cli-startup.md), and every module the CLI imports on
that path is paid by every command. No pathlib here either (it imports urllib.parse):
paths are strings, normalised as pathlib would print them (:func:`pure_path`).
:mod:`lightvm.daemon.api` re-exports all of it; import it from there elsewhere.
"""

from __future__ import annotations

import _socket
import errno
import os

from lightvm import errors, jsonline
from lightvm.errors import LightVMError
from lightvm.lineio import Deadline, connect_unix, recv_line

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any

VERSION = 1
SOCKET_NAME = "lightvmd.sock"


class ApiError(LightVMError):
    """An error reported by the daemon (``type`` is its class name there), or a
    failure to talk to it."""

    def __init__(self, message: str, type_name: str = "ApiError") -> None:
        super().__init__(message)
        self.type_name = type_name


class ProtocolError(ApiError):
    """A request or response that breaks the protocol."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "ProtocolError")


class UnknownOpError(ApiError):
    """A request naming an operation the daemon does not have."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "UnknownOpError")


class DaemonUnavailable(ApiError):
    """Nothing answers on the daemon socket (no daemon: use one-shot mode)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "DaemonUnavailable")


def pure_path(path: str | os.PathLike[str]) -> str:
    """``str(pathlib.PurePosixPath(path))`` without pathlib: '.' and empty components
    dropped, one leading slash (two kept, as POSIX allows), '' is '.'."""
    text = os.fspath(path)
    root = ""
    if text.startswith("/"):
        root = "//" if text.startswith("//") and not text.startswith("///") else "/"
    joined = root + "/".join(part for part in text.split("/") if part and part != ".")
    return joined or "."


def socket_file(state_root: str | os.PathLike[str]) -> str:
    """``str(state_root / SOCKET_NAME)`` (api.socket_path is the same as a Path)."""
    root = pure_path(state_root)
    if root == ".":
        return SOCKET_NAME
    return root + SOCKET_NAME if root.endswith("/") else f"{root}/{SOCKET_NAME}"


_ERROR_TYPES: dict[str, type[LightVMError]] = {
    name: cls for name, cls in vars(errors).items() if isinstance(cls, type) and issubclass(cls, LightVMError)
}


def connect_raw(path: str, timeout: float) -> _socket.socket:
    """:func:`lightvm.lineio.connect_unix` with the C module ``_socket`` (what the ``socket``
    module wraps): importing ``socket`` builds enum classes for its constants and imports
    selectors, 2-5 ms of a ~40 ms command here (docs/cli-startup.md), and a client needs
    only connect, settimeout, sendall, recv and close, which ``_socket.socket`` has.

    :raise OSError: it could not connect (the socket is closed).
    """
    sock: _socket.socket = connect_unix(path, timeout, _socket)
    return sock


def raise_error(err: Any) -> None:
    """Re-raise a daemon's error object as the matching lightvm error class.

    :raise LightVMError: always (ApiError when the type is not a lightvm error class).
    """
    if not isinstance(err, dict):
        raise ProtocolError(f"daemon sent a malformed error: {err!r}")
    type_name = str(err.get("type", "ApiError"))
    message = str(err.get("message", ""))
    cls = _ERROR_TYPES.get(type_name)
    if cls is not None:
        try:
            raise cls(message)
        except TypeError:
            pass
    raise ApiError(message, type_name)


class Client:
    """One connection to lightvmd. Every call has a timeout. ``path``: the socket's path
    (a string, as pathlib would print it).

    :raise DaemonUnavailable: from :meth:`connect` when no daemon answers.
    """

    def __init__(self, sock: _socket.socket, path: str | os.PathLike[str]) -> None:
        self._sock = sock
        self.path = pure_path(path)
        self._buf = b""
        self._next = 1

    @classmethod
    def connect(cls, state_root: str | os.PathLike[str], timeout: float = 2.0) -> Client:
        path = socket_file(state_root)
        try:
            sock = connect_raw(path, timeout)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR):
                raise DaemonUnavailable(f"no lightvmd on {path}") from None
            raise DaemonUnavailable(f"cannot connect to lightvmd on {path}: {exc.strerror or exc}") from exc
        return cls(sock, path)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_raw(self, data: bytes) -> None:
        self._sock.settimeout(5.0)
        self._sock.sendall(data)

    def read_line(self, timeout: float) -> bytes:
        """One response line.

        :raise ApiError: timeout, or the daemon hung up.
        """
        try:
            line, self._buf = recv_line(self._sock, self._buf, Deadline(timeout))
        except TimeoutError:
            raise ApiError(f"lightvmd on {self.path} did not answer within {timeout:.1f} s") from None
        except EOFError:
            raise ApiError(f"lightvmd on {self.path} closed the connection") from None
        except OSError as exc:
            raise ApiError(f"lightvmd on {self.path}: {exc.strerror or exc}") from exc
        return line

    def next_line(self, timeout: float) -> bytes | None:
        """One more line of a streaming op (``events --follow``); None when none came
        within ``timeout`` (the stream is idle, not broken).

        :raise ApiError: the daemon hung up or the connection failed.
        """
        try:
            line, self._buf = recv_line(self._sock, self._buf, Deadline(timeout))
        except TimeoutError:
            return None
        except EOFError:
            raise ApiError(f"lightvmd on {self.path} closed the connection") from None
        except OSError as exc:
            raise ApiError(f"lightvmd on {self.path}: {exc.strerror or exc}") from exc
        return line

    def call(self, op: str, args: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        """Send one request and return its ``result``.

        :raise LightVMError: the daemon's error, re-raised as the same class.
        :raise ApiError: timeout, a hang-up or a malformed response.
        """
        req_id = self._next
        self._next += 1
        msg = {"v": VERSION, "id": req_id, "op": op, "args": args or {}}
        try:
            self.send_raw(jsonline.dumps(msg, separators=(",", ":")).encode() + b"\n")
        except OSError as exc:
            raise ApiError(f"cannot send to lightvmd on {self.path}: {exc.strerror or exc}") from exc
        line = self.read_line(timeout)
        try:
            reply = jsonline.loads(line)
        except ValueError:
            raise ProtocolError(f"lightvmd sent a line that is not JSON: {line[:200]!r}") from None
        if not isinstance(reply, dict) or reply.get("id") != req_id:
            raise ProtocolError(f"lightvmd sent an unexpected response: {line[:200]!r}")
        if reply.get("ok"):
            return reply.get("result")
        raise_error(reply.get("error"))
        return None  # unreachable

    def call_with_progress(self, op: str, args: dict[str, Any], timeout: float, progress: Any) -> Any:
        """``op`` (restore, migrate) with ``"progress": true``: lightvmd answers
        ``{"stream": "progress"}``, then sends ``{"progress": {...}}`` lines, each given to
        ``progress``, and one ``{"result": ...}`` (returned) or ``{"error": ...}`` (raised).
        A daemon that does not stream the op answers with its result at once: returned.

        :raise ApiError: nothing came for ``timeout`` seconds, or the connection failed.
        """
        first = self.call(op, {**args, "progress": True}, timeout=timeout)
        if not isinstance(first, dict) or first.get("stream") != "progress":
            return first
        while True:
            line = self.next_line(timeout)
            if line is None:
                raise ApiError(f"lightvmd said nothing about the {op} for {timeout:.0f} s")
            try:
                message = jsonline.loads(line)
            except ValueError:
                raise ProtocolError(f"lightvmd sent a line that is not JSON: {line[:200]!r}") from None
            if "progress" in message:
                progress(message["progress"])
            elif "result" in message:
                return message["result"]
            else:
                raise_error(message.get("error"))


__all__ = [
    "SOCKET_NAME",
    "VERSION",
    "ApiError",
    "Client",
    "DaemonUnavailable",
    "ProtocolError",
    "UnknownOpError",
    "connect_raw",
    "pure_path",
    "raise_error",
    "socket_file",
]
