"""The lightvmd API: versioned JSON over a unix socket (server dispatch + client).

Protocol, version 1:

1. Transport: a ``SOCK_STREAM`` unix socket, ``STATE/lightvmd.sock`` (mode 0600, or
   0660 with the daemon's ``--group``). Whoever can connect can do everything: the
   socket's permissions are the access control.
2. Framing: one request per line, one response per line; UTF-8 JSON objects ended by
   ``\\n``. A client may send several requests on one connection, one at a time (the
   daemon answers each before reading the next).
3. Request: ``{"v": 1, "id": ID, "op": OP, "args": {...}}``. ``id`` is any JSON scalar
   chosen by the client and echoed back; ``args`` may be omitted (= ``{}``).
4. Response: ``{"v": 1, "id": ID, "ok": true, "result": ...}`` or
   ``{"v": 1, "id": ID, "ok": false, "error": {"type": T, "message": M}}``. ``T`` is the
   name of a :mod:`lightvm.errors` class (``SpecError``, ``NotFoundError``, ...) or one
   of the protocol's own: ``ProtocolError`` (not JSON, not an object, bad ``v``, a line
   longer than :data:`MAX_REQUEST`), ``UnknownOpError``, ``InternalError`` (a bug; the
   daemon logs it and keeps serving).
5. Limits: a request line is at most :data:`MAX_REQUEST` bytes; a longer one gets a
   ``ProtocolError`` and the connection is closed (the rest is not read). An idle
   connection is closed after :data:`IDLE_TIMEOUT` s. No client can stop the daemon
   by what it sends.
6. Operations (``args`` keys; * = required):

   ==========  ===========================================  ==================================
   op          args                                         result
   ==========  ===========================================  ==================================
   ping        -                                            {"daemon": "lightvmd", "pid", "v",
                                                             "started", "pool": {...}}
   create      config* (absolute path of a TOML/JSON        [CreateResult + "path": "pool",
               config), name, count, accel, timeout,        "snapshot" or "cold" (+ "path_reason")]
               publish [list], pool (bool, default true),   one per VM; a pool create also
               snapshot (bool, default true: an unpooled    has "pool_take_ms" (its wait for
               create starts from the config's snapshot)    a shell)
   list        -                                            [VMInfo]
   info        name*                                        {record, status, guest, ...}
   destroy     names* [list] or all (bool)                  {"destroyed": [names]}
   shutdown    name*, keep, timeout                         {"ms": float}
   pause       name*                                        {"ms": float}
   unpause     name*                                        {"ms": float}
   pool        -                                            pool statistics: per flavour
                                                            ready, preparing, target, hits,
                                                            waited, misses, hit_rate,
                                                            demand_per_s, refills_per_s,
                                                            refill_ms, shrunk (docs/lightvmd.md,
                                                            "Adaptive pool")
   restore     file* (absolute path of a checkpoint or      RestoreResult + "path": "pool"
               a template folder), name, timeout            (a prepared -incoming shell) or
                                                            "cold"
   clone       source* (a VM's name, or the absolute path  CloneResult (clones: name, id, pid,
               of a checkpoint or template folder), count,  mac, publish) + "pool_hits"
               name (pattern, {name} {i}), publish
               ([ADDR:]PORT:GUESTPORT: clone i PORT+i),
               timeout
   migrate     name*, target* ([user@]host), port,          MigrateResult (the migration
               known_hosts, identity (absolute paths),      over this daemon's kept SSH
               remote_command, remote_state_dir, tunnel,    connection; lightvm/daemon/ssh_sessions.py)
               bandwidth_mib, downtime_ms, timeout
   migrate-in  meta*, name*, listen*, timeout               {"port", "receiver"}; then the
                                                            connection carries the migration
                                                            (see 8.)
   ssh         action (list|connect|drop), and the          kept SSH sessions
               target args of migrate
   ==========  ===========================================  ==================================

8. ``migrate-in`` (the receiving end of a live migration, reached from the source's
   lightvmd through an SSH relay) keeps the connection after its response: it then
   carries lightvm/mobility/migrate.py's JSON lines (``{"ready": ...}`` from the daemon,
   ``{"commit": true}`` from the client, ``{"committed": true}``; ``{"error": M}`` ends
   it and closes the connection). After ``committed`` the connection serves requests
   again. If the client goes away before committing, the incoming VM is removed.
9. Versioning: ``v`` is this protocol's major version. A request with another ``v``
   gets a ``ProtocolError`` naming the versions served. New ops and new optional args
   are added without a bump; removing or changing one bumps ``v``.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightvm.daemon.proto import (  # the client side, apart so that the CLI's thin path imports only it
    SOCKET_NAME,
    VERSION,
    ApiError,
    Client,
    DaemonUnavailable,
    ProtocolError,
    UnknownOpError,
    raise_error,
)
from lightvm.errors import LightVMError
from lightvm.util import wait_readable

MAX_REQUEST = 1 << 20  # 1 MiB: a request is a few hundred bytes; anything near this is abuse
IDLE_TIMEOUT = 60.0
# A Deferred's bookkeeping waits this long for the client to act on its reply (its next
# request or its hang-up runs it at once): on 2 cores the record write right after the
# reply took the CPU the client needed to wake up and read it, ~0.1 ms of a pooled
# create (docs/execute-path.md).
AFTER_GRACE_S = 0.002


def socket_path(state_root: Path) -> Path:
    return state_root / SOCKET_NAME


# ---------------------------------------------------------------------- server side

Handler = Callable[[dict[str, Any]], Any]


class Deferred:
    """A handler result with work to do right *after* the response is sent."""

    def __init__(self, result: Any, after: Callable[[], None]) -> None:
        self.result = result
        self.after = after


class Takeover:
    """A handler result that keeps the connection for a conversation of its own (an
    incoming migration): once the response is sent, ``run(conn, rest)`` owns the socket
    (``rest``: bytes the client sent past its request line). It returns what it read past
    its last line, and the connection serves requests again; or None to close it."""

    def __init__(self, result: Any, run: Callable[[socket.socket, bytes], bytes | None]) -> None:
        self.result = result
        self.run = run


def error_body(exc: BaseException) -> dict[str, str]:
    """The ``error`` object for an exception: lightvm errors keep their class name."""
    if isinstance(exc, ApiError):
        return {"type": exc.type_name, "message": str(exc)}
    if isinstance(exc, LightVMError):
        return {"type": type(exc).__name__, "message": str(exc)}
    return {"type": "InternalError", "message": f"{type(exc).__name__}: {exc}"}


def response(req_id: Any, result: Any = None, exc: BaseException | None = None) -> bytes:
    body: dict[str, Any] = {"v": VERSION, "id": req_id}
    if exc is None:
        body["ok"] = True
        body["result"] = result
    else:
        body["ok"] = False
        body["error"] = error_body(exc)
    return json.dumps(body, separators=(",", ":"), default=str).encode() + b"\n"


def parse_request(line: bytes) -> tuple[Any, str, dict[str, Any]]:
    """(id, op, args) of one request line.

    :raise ProtocolError: not a valid version-1 request.
    """
    try:
        msg = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"request is not JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise ProtocolError(f"request must be a JSON object, got {type(msg).__name__}")
    req_id = msg.get("id")
    if isinstance(req_id, (dict, list)):
        raise ProtocolError("request id must be a JSON scalar")
    if msg.get("v") != VERSION:
        raise ProtocolError(f"protocol version {msg.get('v')!r} not served; this daemon speaks v{VERSION}")
    op = msg.get("op")
    if not isinstance(op, str) or not op:
        raise ProtocolError("request needs an 'op' string")
    args = msg.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ProtocolError("'args' must be a JSON object")
    return req_id, op, args


def handle_line(line: bytes, handlers: dict[str, Handler]) -> tuple[bytes, Callable[[], None] | None]:
    """Answer one request line: the response, and what to run once it is sent.

    Never raises (except BaseException like SystemExit).
    """
    reply, after, _ = _handle(line, handlers)
    return reply, after


def _handle(line: bytes, handlers: dict[str, Handler]) -> tuple[bytes, Callable[[], None] | None, Takeover | None]:
    req_id: Any = None
    try:
        req_id, op, args = parse_request(line)
        handler = handlers.get(op)
        if handler is None:
            raise UnknownOpError(f"unknown op {op!r}; known: {', '.join(sorted(handlers))}")
        result = handler(args)
        if isinstance(result, Deferred):
            return response(req_id, result.result), result.after, None
        if isinstance(result, Takeover):
            return response(req_id, result.result), None, result
        return response(req_id, result), None, None
    except Exception as exc:  # every failure becomes a structured error
        return response(req_id, exc=exc), None, None


def _client_moment(conn: socket.socket) -> None:
    """Wait up to :data:`AFTER_GRACE_S` for the client to send again or hang up."""
    with contextlib.suppress(OSError, ValueError):  # a closed or broken socket: no wait
        wait_readable(conn.fileno(), AFTER_GRACE_S)


def serve_connection(conn: socket.socket, handlers: dict[str, Handler], log: Callable[[str], None]) -> None:
    """Serve one client until it hangs up, idles out, or breaks the framing."""
    conn.settimeout(IDLE_TIMEOUT)
    buf = b""
    try:
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                if len(buf) > MAX_REQUEST:
                    conn.sendall(response(None, exc=ProtocolError(f"request longer than {MAX_REQUEST} bytes")))
                    return
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    return
                if not chunk:
                    return
                buf += chunk
                continue
            line, buf = buf[:nl], buf[nl + 1 :]
            if len(line) > MAX_REQUEST:
                conn.sendall(response(None, exc=ProtocolError(f"request longer than {MAX_REQUEST} bytes")))
                return
            if not line.strip():
                continue
            reply, after, takeover = _handle(line, handlers)
            if b'"InternalError"' in reply:
                log(f"internal error answering {line[:200]!r}: {reply[:500]!r}")
            try:
                conn.sendall(reply)
            except BaseException:
                if takeover is not None:
                    takeover.run(conn, b"")  # it must still clean up (its peer is gone)
                raise
            finally:
                if after is not None:
                    if b"\n" not in buf:
                        _client_moment(conn)
                    try:
                        after()
                    except Exception as exc:  # bookkeeping after a reply must not kill the server
                        log(f"after answering {line[:200]!r}: {type(exc).__name__}: {exc}")
            if takeover is not None:
                rest = takeover.run(conn, buf)
                if rest is None:
                    return
                buf = rest
                conn.settimeout(IDLE_TIMEOUT)
    except OSError:
        return  # the client went away; nothing to answer
    finally:
        conn.close()


__all__ = [
    "IDLE_TIMEOUT",
    "MAX_REQUEST",
    "SOCKET_NAME",
    "VERSION",
    "ApiError",
    "Client",
    "DaemonUnavailable",
    "Deferred",
    "ProtocolError",
    "Takeover",
    "UnknownOpError",
    "handle_line",
    "raise_error",
    "serve_connection",
    "socket_path",
]
