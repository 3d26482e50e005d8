"""lightvm.daemon.api without a daemon: request parsing, structured errors, framing limits, client error mapping."""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

import pytest

from lightvm.daemon import api
from lightvm.errors import NotFoundError, SpecError


def _reply(raw: bytes) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(raw)
    return out


def _handlers() -> dict[str, api.Handler]:
    def boom(args: dict[str, Any]) -> Any:
        raise RuntimeError("a bug")

    def missing(args: dict[str, Any]) -> Any:
        raise NotFoundError(f"no VM named {args.get('name')!r}")

    return {"echo": lambda args: args, "boom": boom, "missing": missing}


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (b"{", "ProtocolError"),
        (b"42", "ProtocolError"),
        (b'{"v": 2, "op": "echo"}', "ProtocolError"),
        (b'{"v": 1}', "ProtocolError"),
        (b'{"v": 1, "op": ""}', "ProtocolError"),
        (b'{"v": 1, "op": "echo", "args": "x"}', "ProtocolError"),
        (b'{"v": 1, "id": [1], "op": "echo"}', "ProtocolError"),
        (b'{"v": 1, "op": "nope"}', "UnknownOpError"),
        (b'{"v": 1, "op": "boom"}', "InternalError"),
        (b'{"v": 1, "op": "missing", "args": {"name": "x"}}', "NotFoundError"),
    ],
)
def test_bad_requests_get_structured_errors(line: bytes, kind: str) -> None:
    raw, after = api.handle_line(line, _handlers())
    reply = _reply(raw)
    assert after is None and reply["v"] == api.VERSION and reply["ok"] is False
    assert reply["error"]["type"] == kind and reply["error"]["message"]


def test_ok_reply_echoes_id_and_runs_deferred_work_after() -> None:
    ran: list[str] = []
    handlers: dict[str, api.Handler] = {"go": lambda args: api.Deferred({"a": 1}, lambda: ran.append("after"))}
    raw, after = api.handle_line(b'{"v": 1, "id": "x7", "op": "go"}', handlers)
    assert _reply(raw) == {"v": 1, "id": "x7", "ok": True, "result": {"a": 1}}
    assert ran == [] and after is not None
    after()
    assert ran == ["after"]


def test_client_maps_error_types_back() -> None:
    with pytest.raises(SpecError, match="bad"):
        api.raise_error({"type": "SpecError", "message": "bad"})
    with pytest.raises(api.ApiError) as info:
        api.raise_error({"type": "UnknownOpError", "message": "no such op"})
    assert info.value.type_name == "UnknownOpError"
    with pytest.raises(api.ProtocolError):
        api.raise_error("not an object")


def test_serve_connection_framing_and_size_limit() -> None:
    a, b = socket.socketpair()
    logs: list[str] = []
    t = threading.Thread(target=api.serve_connection, args=(b, _handlers(), logs.append), daemon=True)
    t.start()
    a.settimeout(10)
    a.sendall(b'{"v":1,"id":1,"op":"echo","args":{"k":2}}\n\n{"v":1,"id":2,"op":"boom"}\n')
    buf = b""
    while buf.count(b"\n") < 2:
        buf += a.recv(65536)
    first, second = (json.loads(x) for x in buf.splitlines())
    assert first["result"] == {"k": 2} and second["error"]["type"] == "InternalError"
    assert logs and "internal error" in logs[0]
    a.sendall(b"x" * (api.MAX_REQUEST + 100))  # no newline: refused once over the limit
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = a.recv(65536)
        assert chunk
        buf += chunk
    assert json.loads(buf)["error"]["type"] == "ProtocolError"
    t.join(10)
    assert not t.is_alive()  # the server closed that connection
    a.close()


def test_connect_without_daemon_is_unavailable(tmp_path: Any) -> None:
    with pytest.raises(api.DaemonUnavailable):
        api.Client.connect(tmp_path)


def _deferred_server(ran: list[str], ran_event: threading.Event) -> tuple[socket.socket, threading.Thread]:
    def after() -> None:
        ran.append("after")
        ran_event.set()

    handlers: dict[str, api.Handler] = {
        "go": lambda args: api.Deferred({"a": 1}, after),
        "seen": lambda args: list(ran),  # what had run when the next request was handled
    }
    a, b = socket.socketpair()
    t = threading.Thread(target=api.serve_connection, args=(b, handlers, lambda msg: None), daemon=True)
    t.start()
    a.settimeout(10)
    return a, t


def _line(sock: socket.socket) -> dict[str, Any]:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(65536)
        assert chunk
        buf += chunk
    return _reply(buf)


@pytest.mark.parametrize("client_then", ["next request", "hang-up"])
def test_deferred_work_runs_as_soon_as_the_client_acts(monkeypatch: pytest.MonkeyPatch, client_then: str) -> None:
    """The bookkeeping after a reply waits for the client's next move (a grace that lets
    the client wake and read on a busy host), never beyond it: a next request finds it
    done, a hang-up runs it at once."""
    monkeypatch.setattr(api, "AFTER_GRACE_S", 30.0)  # far longer than this test may take
    ran: list[str] = []
    done = threading.Event()
    a, t = _deferred_server(ran, done)
    a.sendall(b'{"v":1,"id":1,"op":"go"}\n')
    assert _line(a)["result"] == {"a": 1}
    assert ran == []  # the client has not acted yet: the work waits
    if client_then == "next request":
        a.sendall(b'{"v":1,"id":2,"op":"seen"}\n')
        assert _line(a)["result"] == ["after"]
    else:
        a.close()
    assert done.wait(5.0)
    if client_then == "next request":
        a.close()
    t.join(5.0)
    assert not t.is_alive()


def test_deferred_work_runs_after_the_grace_when_the_client_stays_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "AFTER_GRACE_S", 0.05)
    ran: list[str] = []
    done = threading.Event()
    a, t = _deferred_server(ran, done)
    a.sendall(b'{"v":1,"id":1,"op":"go"}\n')
    assert _line(a)["result"] == {"a": 1}
    assert done.wait(5.0) and ran == ["after"]  # the connection still open, nothing sent
    a.close()
    t.join(5.0)
    assert not t.is_alive()
