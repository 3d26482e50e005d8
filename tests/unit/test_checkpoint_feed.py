"""restore's verified feed (lightvm/mobility/stream.py) leaves no file descriptor behind
when QEMU refuses the stream at once (its QMP fails before the feed starts)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from lightvm.errors import QMPError
from lightvm.mobility.format import Sealer, encode_header, read_layout
from lightvm.mobility.stream import VerifiedFeed


class RefusingQMP:
    def send_fd(self, fd: int, name: str) -> None:
        raise QMPError("QMP getfd: QEMU closed the connection (did it exit?)")


class RefusingMachine:
    qmp: Any = RefusingQMP()


def test_no_fd_left_when_qemu_refuses(tmp_path: Path) -> None:
    head = encode_header(
        {"format": "lightvm-checkpoint", "name": "f", "spec": {}, "noxs_size": 8192, "page": {}, "vifs": []}
    )
    stream = b"stream" * 100
    sealer = Sealer(None)
    sealer.update(head + stream)
    path = tmp_path / "f.lvm"
    path.write_bytes(head + stream + sealer.trailer(len(stream)))
    _, layout = read_layout(path)
    before = sorted(os.listdir("/proc/self/fd"))
    feed = VerifiedFeed(path, os.open(path, os.O_RDONLY | os.O_CLOEXEC), layout)
    with pytest.raises(QMPError):
        feed.start(RefusingMachine())  # type: ignore[arg-type]
    assert sorted(os.listdir("/proc/self/fd")) == before
