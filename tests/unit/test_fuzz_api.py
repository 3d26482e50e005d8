"""Fuzz lightvmd's request parsing, server side (lightvm/daemon/api.py): any line, any
JSON, any framing on the socket. Properties: handle_line never raises; each answer is one
JSON line of protocol v1 whose error, if any, is one of lightvm's (never InternalError,
the type for a bug); serve_connection ends when the client does (no hang) and buffers at
most MAX_REQUEST of a line."""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

from fuzzlib import bounded, fuzz
from hypothesis import given
from hypothesis import strategies as st

from lightvm.daemon import api
from lightvm.daemon.operations import _arg

# Handlers that parse their args the way the daemon's op_* do (operations._arg).
HANDLERS: dict[str, api.Handler] = {
    "ping": lambda a: {"daemon": "lightvmd"},
    "info": lambda a: _arg(a, "name", str, required=True),
    "restore": lambda a: [_arg(a, "file", str, required=True), _arg(a, "name", str), _arg(a, "timeout", (int, float))],
    "destroy": lambda a: [_arg(a, "names", list), _arg(a, "all", bool)],
}

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
REQUEST = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([1, 2, 0, "1", None, 1.0, True]) | JSON,
        "id": JSON,
        "op": st.sampled_from([*sorted(HANDLERS), "", "nope"]) | JSON,
        "args": st.dictionaries(st.sampled_from(["name", "file", "timeout", "names", "all", "x"]), JSON) | JSON,
    },
)


def check_reply(reply: bytes) -> dict[str, Any]:
    assert reply.endswith(b"\n") and reply.count(b"\n") == 1, reply
    body = json.loads(reply)
    assert body["v"] == api.VERSION and isinstance(body["ok"], bool)
    if not body["ok"]:
        assert body["error"]["type"] != "InternalError", body
    return dict(body)


@fuzz(ci_examples=200)
@given(st.binary(max_size=2000) | REQUEST.map(lambda r: json.dumps(r).encode()))
def test_any_line_gets_one_protocol_answer(line: bytes) -> None:
    reply, after = bounded(lambda: api.handle_line(line, HANDLERS))
    assert after is None
    check_reply(reply)


@fuzz(ci_examples=40, deadline_ms=5000)
@given(st.lists(st.binary(max_size=3000) | REQUEST.map(lambda r: json.dumps(r).encode() + b"\n"), max_size=8))
def test_any_byte_stream_is_served_and_ends(chunks: list[bytes]) -> None:
    server, client = socket.socketpair()
    logged: list[str] = []
    served = threading.Thread(target=api.serve_connection, args=(server, HANDLERS, logged.append), daemon=True)
    served.start()
    client.settimeout(10.0)
    data = b"".join(chunks)
    try:
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)
        answers = b""
        while chunk := client.recv(65536):
            answers += chunk
    finally:
        client.close()
    served.join(10.0)
    assert not served.is_alive(), "serve_connection did not end with its client"
    server.close()
    lines = [line for line in data.split(b"\n")[:-1] if line.strip()]  # complete, non-empty
    replies = answers.splitlines(keepends=True)
    assert len(replies) == len(lines), (lines, replies)
    for reply in replies:
        check_reply(reply)
    assert logged == []


def test_an_endless_line_is_cut_at_max_request() -> None:
    server, client = socket.socketpair()
    served = threading.Thread(target=api.serve_connection, args=(server, HANDLERS, print), daemon=True)
    served.start()
    client.settimeout(10.0)
    try:
        block = b"x" * 65536
        sent = 0
        try:
            while sent <= api.MAX_REQUEST + len(block):
                client.sendall(block)
                sent += len(block)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = client.recv(65536)
    finally:
        client.close()
    served.join(10.0)
    server.close()
    assert not served.is_alive()
    assert check_reply(answer)["error"]["type"] == "ProtocolError"
