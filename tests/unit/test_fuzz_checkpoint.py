"""Fuzz the checkpoint file's parser and framing (lightvm/mobility/format.py) and the
digest check restore runs on the bytes it feeds QEMU (lightvm/mobility/stream.py).

Properties: reading any file raises nothing but CheckpointError (never another
exception, never a hang, bounded memory); a sealed file with any byte changed, cut or
extended is refused, by the header check or by the feed's digest; the feed hands out
exactly the stream's bytes."""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from pathlib import Path

from fuzzlib import bounded, fuzz
from hypothesis import given
from hypothesis import strategies as st

from lightvm.mobility.format import TRAILER, CheckpointError, Sealer, encode_header, read_layout
from lightvm.mobility.stream import VerifiedFeed

META = {
    "format": "lightvm-checkpoint",
    "name": "f",
    "uuid": "00000000-0000-0000-0000-000000000000",
    "spec": {"kernel": "/k"},
    "noxs_size": 8192,
    "page": {"tsc_hz": 0, "vifs": [], "vbds": []},
    "vifs": [],
}


def sealed(stream: bytes) -> bytes:
    head = encode_header(META)
    sealer = Sealer(None)
    sealer.update(head + stream)
    return head + stream + sealer.trailer(len(stream))


def feed_all(path: Path) -> bytes:
    """Run restore's verified feed with a reader in QEMU's place; what it was fed.

    :raise CheckpointError: the file is refused (header, framing or digest).
    """
    _, layout = read_layout(path)
    feed = VerifiedFeed(path, os.open(path, os.O_RDONLY | os.O_CLOEXEC), layout)
    got = bytearray()

    def reader() -> None:
        with os.fdopen(feed.read_fd, "rb", buffering=0) as f:
            while chunk := f.read(65536):
                got.extend(chunk)

    drain = threading.Thread(target=reader, daemon=True)
    drain.start()
    feed.thread.start()
    try:
        feed.verify(10.0)
    finally:
        drain.join(10.0)
    assert not drain.is_alive()
    return bytes(got)


def _write(data: bytes) -> Path:
    fd, name = tempfile.mkstemp(prefix="lightvm-fuzz-", suffix=".lvm")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return Path(name)


@fuzz(ci_examples=150)
@given(st.binary(max_size=4096))
def test_any_bytes_are_refused_cleanly(data: bytes) -> None:
    path = _write(data)
    try:
        with contextlib.suppress(CheckpointError):
            bounded(lambda: read_layout(path))
    finally:
        path.unlink()


@fuzz(ci_examples=150)
@given(
    st.binary(min_size=1, max_size=3000),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=1, max_value=255)), min_size=1, max_size=20),
)
def test_any_flipped_byte_is_refused(stream: bytes, flips: list[tuple[int, int]]) -> None:
    good = sealed(stream)
    bad = bytearray(good)
    for at, mask in flips:
        bad[at % len(bad)] ^= mask
    path = _write(bytes(bad))
    try:
        try:
            fed = bounded(lambda: feed_all(path))
        except CheckpointError:
            return
        assert bytes(bad) == good, "a changed file passed the checks"
        assert fed == stream
    finally:
        path.unlink()


@fuzz(ci_examples=100)
@given(st.binary(min_size=1, max_size=3000), st.integers(), st.binary(max_size=64))
def test_cut_or_extended_files_are_refused(stream: bytes, cut: int, extra: bytes) -> None:
    good = sealed(stream)
    cut %= len(good)
    for data in (good[:cut], good + extra if extra else good[:-1]):
        path = _write(data)
        try:
            try:
                bounded(lambda p=path: feed_all(p))  # type: ignore[misc]
            except CheckpointError:
                continue
            raise AssertionError(f"a file of {len(data)} bytes (sealed: {len(good)}) passed")
        finally:
            path.unlink()


@fuzz(ci_examples=50)
@given(st.binary(min_size=1, max_size=20000))
def test_intact_files_pass_and_feed_exactly_the_stream(stream: bytes) -> None:
    path = _write(sealed(stream))
    try:
        assert bounded(lambda: feed_all(path)) == stream
        _, layout = read_layout(path)
        assert layout.stream_len == len(stream) and path.stat().st_size == layout.offset + len(stream) + TRAILER.size
    finally:
        path.unlink()
