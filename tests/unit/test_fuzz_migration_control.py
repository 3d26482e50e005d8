"""Fuzz the migration control channel (lightvm/mobility/migrate.py's LineChannel on the
source, lightvm/mobility/receive.py's Control on the destination): whatever the peer
sends, each side gets JSON objects or a MigrationError (one of lightvm's errors), ends
at EOF or its deadline (no hang), and buffers a bounded amount of a line."""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import pytest
from fuzzlib import bounded, fuzz
from hypothesis import given
from hypothesis import strategies as st

from lightvm.mobility.migrate import LineChannel, MigrationError
from lightvm.mobility.receive import Control

CHUNKS = st.lists(
    st.binary(max_size=600)
    | st.dictionaries(st.text(max_size=8), st.text(max_size=8) | st.integers(), max_size=3).map(
        lambda d: json.dumps(d).encode() + b"\n"
    )
    | st.just(b'{"error": {"message": "no"}}\n')
    | st.just(b'{"error": [1]}\n'),
    max_size=8,
)


class FakeChannel:
    """A paramiko channel's surface as LineChannel uses it, fed from a list of chunks."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = [c for c in chunks if c]

    def settimeout(self, timeout: float) -> None:
        pass

    def recv(self, size: int) -> bytes:
        if not self.chunks:
            return b""
        chunk = self.chunks.pop(0)
        if len(chunk) > size:
            self.chunks.insert(0, chunk[size:])
        return chunk[:size]

    def recv_stderr_ready(self) -> bool:
        return False

    def exit_status_ready(self) -> bool:
        return True

    def recv_stderr(self, size: int) -> bytes:
        return b""


def drain_source_side(chunks: list[bytes]) -> list[dict[str, Any]]:
    channel = LineChannel(FakeChannel(chunks))
    got = []
    while True:
        try:
            got.append(channel.receive(2.0, "fuzz"))
        except MigrationError:
            return got


def drain_receiver_side(chunks: list[bytes]) -> list[dict[str, Any]]:
    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(rfd, False)

    def feed() -> None:
        with os.fdopen(wfd, "wb") as w:
            for chunk in chunks:
                w.write(chunk)
                w.flush()

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    control = Control(rfd, lambda data: None)
    got = []
    try:
        while True:
            try:
                got.append(control.read(2.0, "fuzz"))
            except MigrationError:
                return got
    finally:
        writer.join(5.0)
        os.close(rfd)


@fuzz(ci_examples=150)
@given(CHUNKS)
def test_source_side_reads_anything(chunks: list[bytes]) -> None:
    for msg in bounded(lambda: drain_source_side(chunks)):
        assert isinstance(msg, dict) and "error" not in msg


@fuzz(ci_examples=100, deadline_ms=5000)
@given(CHUNKS)
def test_receiver_side_reads_anything(chunks: list[bytes]) -> None:
    for msg in bounded(lambda: drain_receiver_side(chunks)):
        assert isinstance(msg, dict)


ENDLESS = 16 << 20  # a peer that never sends a newline


def test_source_side_bounds_an_endless_line() -> None:
    block = b"x" * 65536
    with pytest.raises(MigrationError, match="longer than"):
        bounded(lambda: LineChannel(FakeChannel([block] * (ENDLESS // len(block)))).receive(10.0, "fuzz"))


def test_receiver_side_bounds_an_endless_line() -> None:
    block = b"x" * 65536
    with pytest.raises(MigrationError, match="longer than"):
        bounded(lambda: drain_receiver_side_strict([block] * (ENDLESS // len(block))))


def drain_receiver_side_strict(chunks: list[bytes]) -> None:
    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(rfd, False)

    def feed() -> None:
        try:
            with os.fdopen(wfd, "wb") as w:
                for chunk in chunks:
                    w.write(chunk)
                    w.flush()
        except BrokenPipeError:
            pass

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        Control(rfd, lambda data: None).read(10.0, "fuzz")
    finally:
        os.close(rfd)
        writer.join(5.0)
