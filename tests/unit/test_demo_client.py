"""The demo's gap client (lightvm/bench/demo/client.py): the gap arithmetic, and the client
against a local daytime-like server that goes silent for a while (as a VM does during
its migration's downtime), over loopback only."""

from __future__ import annotations

import io
import os
import socket
import sys
import threading
import time

from lightvm.bench.demo.client import Events, gap, run


def test_gap_is_longest_interval_overlapping_window() -> None:
    ms = 1_000_000
    answers = [(t * ms, 500) for t in (0, 10, 20, 65, 75, 200)]
    assert gap(answers, 30 * ms, 40 * ms) == 45.0  # 20 -> 65 brackets the window
    assert gap(answers, 5 * ms, 70 * ms) == 45.0
    assert gap(answers, 70 * ms, 150 * ms) == 125.0  # 75 -> 200
    assert gap(answers, 300 * ms, 400 * ms) is None  # no answer after the window
    assert gap([], 0, 1) is None


def test_events_parse_client_lines() -> None:
    ev = Events([], [])
    for line in ("A 100 42\n", "F 200\n", "garbage\n", "A 300 7\n"):
        ev.feed(line)
    assert ev.answers == [(100, 42), (300, 7)] and ev.failures == [200]


def _server(sock: socket.socket, silent: threading.Event, stop: threading.Event) -> None:
    """Answer each connection with a time line; while ``silent``, accept nothing (the
    connections wait in the backlog, like SYNs queued for a stopped VM)."""
    sock.settimeout(0.01)
    while not stop.is_set():
        if silent.is_set():
            time.sleep(0.002)
            continue
        try:
            conn, _ = sock.accept()
        except TimeoutError:
            continue
        with conn:
            conn.sendall(b"Thursday, December 3, 2026 23:00:00-UTC\r\n")


def test_client_sees_the_silence_as_one_gap_and_no_failure() -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    silent, stop = threading.Event(), threading.Event()
    t = threading.Thread(target=_server, args=(srv, silent, stop), daemon=True)
    t.start()
    rfd, wfd = os.pipe()  # the client stops at EOF on its "stdin"
    out = io.StringIO()
    saved = sys.stdin
    sys.stdin = os.fdopen(rfd)
    client = threading.Thread(target=run, args=("127.0.0.1", port, 0.01, 0.02, 1.0, out), daemon=True)
    try:
        client.start()
        time.sleep(0.3)
        t0 = time.monotonic_ns()
        silent.set()
        time.sleep(0.15)
        silent.clear()
        t1 = time.monotonic_ns()
        time.sleep(0.3)
    finally:
        os.close(wfd)
        client.join(5)
        sys.stdin = saved
        stop.set()
        t.join(5)
        srv.close()
    assert not client.is_alive()
    ev = Events([], [])
    for line in out.getvalue().splitlines():
        ev.feed(line)
    assert ev.failures == []
    assert len(ev.answers) > 20  # ~100 queries a second outside the silence
    g = gap(ev.answers, t0, t1)
    assert g is not None and 100.0 <= g < 1000.0, g  # the 150 ms silence, give or take a query
