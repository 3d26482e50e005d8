"""The client of the migration demo and of ``lightvm bench migrate``: asks a daytime
service the time every ``interval`` and logs each answer, so that the gap a migration
causes is seen the way a user of the service sees it.

One query is one new TCP connection to IP:13 and the time string back (RFC 867: the
server sends it and closes). Queries run one after another, a new one ``interval`` after
the previous one started (or at once if it took longer). A query that has no answer
after ``hedge`` (default 20 ms) opens another connection beside the first, and one more
every ``hedge`` (the oldest is closed beyond ``MAX_ATTEMPTS`` at once): a SYN that
reached the source host while the VM was stopped there is lost with the source's tap,
and Linux would resend it only after its 1 s initial SYN RTO (measured without hedging:
every migration then lost a query; docs/migration-demo.md). The first connection to
answer wins. A query with no answer within ``timeout`` (default 1 s) is a **failed
query**.

Run inside the client's network namespace as ``python -m lightvm.bench.demo.client IP`` (the
demo starts it with ``ip netns exec``); it prints one line per event on stdout::

    A T_NS LAT_US   an answer at CLOCK_MONOTONIC T_NS, LAT_US after its query started
    F T_NS          a query started at T_NS failed (no answer within the timeout)

and stops at EOF on stdin (or SIGTERM). CLOCK_MONOTONIC is system-wide, so the demo
lines these up with the times of its migrations. :func:`gap` computes the figure.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import itertools
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

MAX_ATTEMPTS = 8  # connections of one query at once (the guest keeps 16 TCP slots)


@dataclass
class Events:
    """What a client printed: answer times (ns) with latencies (us), failed query starts."""

    answers: list[tuple[int, int]]
    failures: list[int]

    def feed(self, line: str) -> None:
        parts = line.split()
        if len(parts) == 3 and parts[0] == "A":
            self.answers.append((int(parts[1]), int(parts[2])))
        elif len(parts) == 2 and parts[0] == "F":
            self.failures.append(int(parts[1]))


def gap(answers: Sequence[tuple[int, int]], t0: int, t1: int) -> float | None:
    """The longest time (ms) between two consecutive answers where the interval overlaps
    [t0, t1] (ns), or None if no pair of answers brackets any part of it."""
    times = [t for t, _ in answers]
    longest: int | None = None
    for a, b in itertools.pairwise(times):
        if b >= t0 and a <= t1:
            longest = b - a if longest is None else max(longest, b - a)
    return None if longest is None else longest / 1e6


class _Query:
    def __init__(self, addr: tuple[str, int], started: int) -> None:
        self.addr = addr
        self.started = started
        self.socks: dict[socket.socket, bytearray] = {}
        self.last_attempt = 0

    def attempt(self, sel: selectors.BaseSelector, now: int) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex(self.addr)
        if err not in (0, errno.EINPROGRESS):
            s.close()  # (no route yet: the next hedge tries again)
        else:
            self.socks[s] = bytearray()
            sel.register(s, selectors.EVENT_READ)
        self.last_attempt = now

    def drop_oldest(self, sel: selectors.BaseSelector) -> None:
        s = next(iter(self.socks))  # (dicts keep insertion order)
        sel.unregister(s)
        s.close()
        del self.socks[s]

    def close(self, sel: selectors.BaseSelector) -> None:
        for s in self.socks:
            sel.unregister(s)
            s.close()
        self.socks.clear()


def run(ip: str, port: int, interval_s: float, hedge_s: float, timeout_s: float, out: object) -> None:
    """Query until stdin closes; write the event lines to ``out`` (a text stream)."""
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin.fileno(), selectors.EVENT_READ, data="stdin")
    interval, hedge, timeout = (int(x * 1e9) for x in (interval_s, hedge_s, timeout_s))
    next_start = time.monotonic_ns()
    query: _Query | None = None
    try:
        while True:
            now = time.monotonic_ns()
            if query is None and now >= next_start:
                query = _Query((ip, port), now)
                query.attempt(sel, now)
                next_start = now + interval
            if query is not None:
                if now - query.started >= timeout:
                    print(f"F {query.started}", file=out, flush=True)  # type: ignore[call-overload]
                    query.close(sel)
                    query = None
                    continue
                if now - query.last_attempt >= hedge:
                    if len(query.socks) >= MAX_ATTEMPTS:
                        query.drop_oldest(sel)
                    query.attempt(sel, now)
            wake = next_start if query is None else min(query.last_attempt + hedge, query.started + timeout)
            for key, _ in sel.select(max(0.0, (wake - time.monotonic_ns()) / 1e9)):
                if key.data == "stdin":
                    if not os.read(sys.stdin.fileno(), 4096):
                        return
                    continue
                if query is None or key.fileobj not in query.socks:
                    continue
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    chunk = s.recv(256)
                except OSError:  # refused or reset: drop this attempt, the others go on
                    sel.unregister(s)
                    s.close()
                    del query.socks[s]
                    continue
                buf = query.socks[s]
                buf += chunk
                if not chunk or b"\n" in buf:
                    if buf.strip():
                        t = time.monotonic_ns()
                        print(f"A {t} {(t - query.started) // 1000}", file=out, flush=True)  # type: ignore[call-overload]
                        query.close(sel)
                        query = None
                        break
                    sel.unregister(s)  # closed with nothing said: not an answer
                    s.close()
                    del query.socks[s]
    finally:
        if query is not None:
            query.close(sel)
        sel.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lightvm.bench.demo.client", description=__doc__.split("\n\n")[0])
    p.add_argument("ip")
    p.add_argument("--port", type=int, default=13)
    p.add_argument("--interval-ms", type=float, default=10.0)
    p.add_argument("--hedge-ms", type=float, default=20.0)
    p.add_argument("--timeout-ms", type=float, default=1000.0)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        run(args.ip, args.port, args.interval_ms / 1e3, args.hedge_ms / 1e3, args.timeout_ms / 1e3, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
