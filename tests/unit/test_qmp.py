"""The raw QMP client against a scripted fake QEMU on a socketpair."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from lightvm.errors import QMPError
from lightvm.qmp import QMPClient

GREETING = {"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}}, "capabilities": []}}


def fake_qemu(sock: socket.socket, handler: Callable[[dict[str, object]], list[dict[str, object]]]) -> None:
    f = sock.makefile("rwb")
    f.write(json.dumps(GREETING).encode() + b"\r\n")
    f.flush()
    for line in f:
        for reply in handler(json.loads(line)):
            f.write(json.dumps(reply).encode() + b"\r\n")
        f.flush()
    sock.close()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def serve(peer: socket.socket, handler: Callable[[dict[str, object]], list[dict[str, object]]]) -> threading.Thread:
    thread = threading.Thread(target=fake_qemu, args=(peer, handler), daemon=True)
    thread.start()
    return thread


def echo(msg: dict[str, object]) -> list[dict[str, object]]:
    if msg["execute"] == "query-status":
        return [{"event": "X", "data": {}}, {"return": {"status": "running"}, "id": msg["id"]}]
    if msg["execute"] == "bad":
        return [{"error": {"class": "CommandNotFound", "desc": "The command bad has not been found"}, "id": msg["id"]}]
    if msg["execute"] == "silent":
        return []
    return [{"return": {}, "id": msg["id"]}]


def test_negotiate_execute_and_events(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    serve(peer, echo)
    client = QMPClient(ours)
    client.negotiate(timeout=2)
    assert client.greeting == GREETING
    assert client.execute("query-status") == {"status": "running"}
    assert client.events and client.events[0]["event"] == "X"


def test_pipelined_commands_before_greeting(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    client = QMPClient(ours)
    neg = client.send_negotiate()
    cont = client.send("cont")  # queued before the peer even said hello
    serve(peer, echo)
    assert client.wait(cont, 2, "cont") == {}
    assert client.reply(neg) is not None


def test_error_reply_is_one_line(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    serve(peer, echo)
    client = QMPClient(ours)
    client.negotiate(timeout=2)
    with pytest.raises(QMPError, match="QMP bad failed: The command bad has not been found"):
        client.execute("bad")


def test_timeout(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    serve(peer, echo)
    client = QMPClient(ours)
    client.negotiate(timeout=2)
    with pytest.raises(QMPError, match="no reply within"):
        client.execute("silent", timeout=0.1)


def test_peer_closing_is_reported(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    client = QMPClient(ours)
    cmd = client.send("quit")
    peer.close()  # QEMU exits before answering
    with pytest.raises(QMPError, match="closed the connection"):
        client.wait(cmd, timeout=1)
    assert client.closed_by_peer
    with pytest.raises(QMPError, match="cannot send"):
        client.send("cont")


def test_garbage_lines_are_ignored(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    client = QMPClient(ours)
    peer.sendall(b"not json\r\n[1,2]\r\n" + json.dumps({"return": 5, "id": 1}).encode() + b"\r\n")
    client._next_id = 1
    assert client.execute("x", timeout=1) == 5
