"""The xenstore wire protocol of lightvm/bench/xenstore/store.py against a scripted fake xenstored.

The fake speaks ``struct xsd_sockmsg`` on a socketpair: it checks each request's
header and payload and answers as xenstored does (replies echo type and req_id,
errors are XS_ERROR with the errno name, watch events are unsolicited XS_WATCH_EVENT).
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Iterator

import pytest

from lightvm.bench.xenstore import store
from lightvm.bench.xenstore.store import StoreError, XsClient, XsError

Handler = Callable[[int, int, bytes], list[tuple[int, bytes]]]


def _recv(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def fake_xenstored(sock: socket.socket, handler: Handler, seen: list[tuple[int, int, bytes]]) -> None:
    """Answer every request with handler(type, tx, payload) -> [(type, payload)], req_id echoed
    (0 for watch events, as xenstored sends them)."""
    try:
        while True:
            msg_type, req_id, tx, length = struct.unpack("<IIII", _recv(sock, 16))
            payload = _recv(sock, length)
            seen.append((msg_type, tx, payload))
            for rtype, reply in handler(msg_type, tx, payload):
                rid = 0 if rtype == store.XS_WATCH_EVENT else req_id
                sock.sendall(struct.pack("<IIII", rtype, rid, tx, len(reply)) + reply)
    except (EOFError, OSError):
        pass
    finally:
        sock.close()


@pytest.fixture
def connect() -> Iterator[Callable[[Handler], tuple[XsClient, list[tuple[int, int, bytes]]]]]:
    clients: list[XsClient] = []

    def make(handler: Handler) -> tuple[XsClient, list[tuple[int, int, bytes]]]:
        a, b = socket.socketpair()
        seen: list[tuple[int, int, bytes]] = []
        threading.Thread(target=fake_xenstored, args=(b, handler, seen), daemon=True).start()
        client = XsClient(a, timeout=2.0)
        clients.append(client)
        return client, seen

    yield make
    for c in clients:
        c.close()


def test_pack_is_xsd_sockmsg() -> None:
    wire = store.pack(store.XS_WRITE, 7, 3, b"/a\0b")
    assert wire == struct.pack("<IIII", 11, 7, 3, 4) + b"/a\0b"
    assert store.unpack_header(wire) == (11, 7, 3, 4)


def test_payload_over_4096_refused_both_ways() -> None:
    with pytest.raises(StoreError, match="4096"):
        store.pack(store.XS_WRITE, 1, 0, b"x" * 4097)
    with pytest.raises(StoreError, match="not a xenstored"):
        store.unpack_header(struct.pack("<IIII", 2, 1, 0, 5000))


def test_strings_round_trip() -> None:
    assert store.strings("a", "bc") == b"a\0bc\0"
    assert store.split_strings(b"a\0bc\0") == ["a", "bc"]
    assert store.split_strings(b"") == []


def test_write_read_directory_payloads(
    connect: Callable[[Handler], tuple[XsClient, list[tuple[int, int, bytes]]]],
) -> None:
    def handler(t: int, tx: int, p: bytes) -> list[tuple[int, bytes]]:
        if t == store.XS_READ:
            return [(t, b"value")]  # READ replies carry no trailing NUL
        if t == store.XS_DIRECTORY:
            return [(t, b"name\0vm\0")]
        return [(t, b"OK\0")]

    c, seen = connect(handler)
    c.write("/local/domain/1/name", "vm1", tx=5)
    assert c.read("/local/domain/1/name") == "value"
    assert c.directory("/local/domain/1") == ["name", "vm"]
    c.set_perms("/x", ["n0", "r1"])
    assert seen[0] == (store.XS_WRITE, 5, b"/local/domain/1/name\0vm1")  # the value is not NUL-terminated
    assert seen[1] == (store.XS_READ, 0, b"/local/domain/1/name\0")
    assert seen[3] == (store.XS_SET_PERMS, 0, b"/x\0n0\0r1\0")


def test_error_reply_names_errno(connect: Callable[[Handler], tuple[XsClient, list[tuple[int, int, bytes]]]]) -> None:
    c, _ = connect(lambda t, tx, p: [(store.XS_ERROR, b"ENOENT\0")])
    with pytest.raises(XsError, match="read '/nope': ENOENT") as err:
        c.read("/nope")
    assert err.value.errno_name == "ENOENT"


def test_rm_of_missing_node_is_not_an_error(
    connect: Callable[[Handler], tuple[XsClient, list[tuple[int, int, bytes]]]],
) -> None:
    c, seen = connect(lambda t, tx, p: [(store.XS_ERROR, b"ENOENT\0")])
    c.rm("/gone")
    assert seen == [(store.XS_RM, 0, b"/gone\0")]


def test_watch_events_between_replies_are_queued(
    connect: Callable[[Handler], tuple[XsClient, list[tuple[int, int, bytes]]]],
) -> None:
    def handler(t: int, tx: int, p: bytes) -> list[tuple[int, bytes]]:
        if t == store.XS_WATCH:
            path, token = store.split_strings(p)
            # xenstored acks, then fires the new watch once
            return [(t, b"OK\0"), (store.XS_WATCH_EVENT, store.strings(path, token))]
        if t == store.XS_WRITE:
            # an event for the watch arrives before the write's own reply
            return [(store.XS_WATCH_EVENT, store.strings("/a/state", "tok")), (t, b"OK\0")]
        return [(t, b"OK\0")]

    c, _ = connect(handler)
    c.watch("/a", "tok")
    assert c.wait_watch("tok") == "/a"
    c.write("/a/state", "2")
    assert c.events == [("/a/state", "tok")]
    assert c.wait_watch("tok") == "/a/state"
    with pytest.raises(StoreError, match="did not answer"):
        c.wait_watch("tok", timeout=0.05)


def test_transaction_retried_on_eagain(
    connect: Callable[[Handler], tuple[XsClient, list[tuple[int, int, bytes]]]],
) -> None:
    ends: list[int] = []

    def handler(t: int, tx: int, p: bytes) -> list[tuple[int, bytes]]:
        if t == store.XS_TRANSACTION_START:
            return [(t, b"%d\0" % (len(ends) + 10))]
        if t == store.XS_TRANSACTION_END:
            ends.append(tx)
            return [(store.XS_ERROR, b"EAGAIN\0")] if len(ends) < 3 else [(t, b"OK\0")]
        return [(t, b"OK\0")]

    c, seen = connect(handler)
    bodies: list[int] = []

    def body(tx: int) -> None:
        bodies.append(tx)
        c.write("/k", "v", tx)

    store.in_transaction(c, body)
    assert bodies == [10, 11, 12]  # the body ran again in each new transaction
    assert ends == [10, 11, 12]
    assert [tx for t, tx, _p in seen if t == store.XS_WRITE] == [10, 11, 12]


def test_transaction_aborted_when_body_fails(
    connect: Callable[[Handler], tuple[XsClient, list[tuple[int, int, bytes]]]],
) -> None:
    def handler(t: int, tx: int, p: bytes) -> list[tuple[int, bytes]]:
        return [(t, b"4\0" if t == store.XS_TRANSACTION_START else b"OK\0")]

    c, seen = connect(handler)

    def body(tx: int) -> None:
        raise XsError("write", "/x", "EACCES")

    with pytest.raises(XsError, match="EACCES"):
        store.in_transaction(c, body)
    assert seen[-1] == (store.XS_TRANSACTION_END, 4, b"F\0")  # aborted, not committed, not retried


def test_mismatched_reply_and_closed_peer(
    connect: Callable[[Handler], tuple[XsClient, list[tuple[int, int, bytes]]]],
) -> None:
    c, _ = connect(lambda t, tx, p: [(store.XS_DIRECTORY, b"")])
    with pytest.raises(StoreError, match="reply 1/"):
        c.read("/a")
    c2, _ = connect(lambda t, tx, p: [])
    c2.sock.shutdown(socket.SHUT_WR)
    with pytest.raises(StoreError):
        c2.read("/a")


def test_ring_put_and_take_wrap_and_refuse_corrupt_indexes() -> None:
    import mmap

    from lightvm.bench.xenstore.guest import REQ_CONS, REQ_PROD, RSP, RSP_CONS, ring_put, ring_take

    ring = mmap.mmap(-1, 4096)
    struct.pack_into("<II", ring, REQ_CONS, 1020, 1020)  # 4 bytes before req[]'s end: the put wraps
    assert ring_put(ring, b"abcdef") == 6
    assert ring[1020:1024] == b"abcd" and ring[0:2] == b"ef"
    assert struct.unpack_from("<I", ring, REQ_PROD)[0] == 1026
    struct.pack_into("<I", ring, REQ_CONS, 1026 - 1024 + 6)  # only 6 bytes of room left
    assert ring_put(ring, b"x" * 100) == 6
    ring[RSP : RSP + 3] = b"xyz"
    struct.pack_into("<II", ring, RSP_CONS, 0, 3)
    assert ring_take(ring) == b"xyz" and ring_take(ring) == b""
    struct.pack_into("<II", ring, RSP_CONS, 0, 5000)  # a broken daemon or a hostile page
    with pytest.raises(StoreError, match="corrupt"):
        ring_take(ring)


def test_relay_moves_only_whole_messages() -> None:
    from lightvm.bench.xenstore.guest import _whole_messages

    one = store.pack(store.XS_READ, 1, 0, b"name\0")
    assert _whole_messages(bytearray(one + one[:7])) == len(one)
    assert _whole_messages(bytearray(one[:15])) == 0
    with pytest.raises(StoreError):  # a guest claiming a 5000-byte payload loses its channel
        _whole_messages(bytearray(struct.pack("<IIII", 2, 1, 0, 5000)))
