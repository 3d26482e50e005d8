"""Clone identities and the template stream fix-up, without a VM (lightvm/mobility/clone.py,
lightvm/mobility/template.py)."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import pytest

from lightvm.errors import SpecError
from lightvm.mobility.clone import clone_mac, clone_meta, clone_names, parse_publish
from lightvm.mobility.template import TemplateError, _unpin_noxs, file_digest, without_forwards

META: dict[str, Any] = {
    "name": "daytime",
    "vifs": [{"mode": "user", "mac": "52:54:00:22:B6:97", "publish": ["127.0.0.1:2000:13"]}],
    "page": {"vifs": [{"mac": "52:54:00:22:b6:97", "ip": "10.0.2.15"}]},
    "qemu_args": [
        "-netdev",
        "user,id=n0,net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:2000-:13",
        "-device",
        "virtio-net-device,netdev=n0,mac=52:54:00:22:b6:97",
    ],
}


def test_clone_meta_gives_each_clone_its_mac_and_port() -> None:
    a = clone_meta(META, "d-0", 0, ("tcp", "127.0.0.1", 3000, 13), base=77)
    b = clone_meta(META, "d-1", 1, ("tcp", "127.0.0.1", 3000, 13), base=77)
    assert a["qemu_args"][1] == "user,id=n0,net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:3000-:13"
    assert b["qemu_args"][1].endswith("hostfwd=tcp:127.0.0.1:3001-:13")
    assert a["qemu_args"][3] == f"virtio-net-device,netdev=n0,mac={clone_mac(77, 0, 0)}"
    assert a["vifs"][0]["mac"] == a["page"]["vifs"][0]["mac"] == clone_mac(77, 0, 0) != b["vifs"][0]["mac"]
    assert a["name"] == "daytime"  # restore gives a VM renamed from the header a new uuid
    assert META["vifs"][0]["mac"] == "52:54:00:22:B6:97"  # the template's header is not touched


def test_clone_meta_without_publish_drops_the_sources_forwards() -> None:
    out = clone_meta(META, "x", 0, None)
    assert "hostfwd" not in out["qemu_args"][1] and out["vifs"][0]["publish"] == []


def test_clone_macs_are_distinct_unicast_local() -> None:
    base = 0xFFFFFF - 100  # wraps around inside one command: still distinct
    macs = {clone_mac(base, i, v) for i in range(4096) for v in range(2)}
    assert len(macs) == 8192
    first = int(clone_mac(base, 0, 0).split(":")[0], 16)
    assert first & 1 == 0 and first & 2  # unicast, locally administered


def test_clone_names_and_publish_parse() -> None:
    assert clone_names("{name}-{i}", "day", 3) == ["day-0", "day-1", "day-2"]
    assert clone_names("solo", "day", 1) == ["solo"]
    with pytest.raises(SpecError, match=r"\{i\}"):
        clone_names("same", "day", 2)
    with pytest.raises(SpecError, match="only"):
        clone_names("{name}-{i}-{j}", "day", 2)
    assert parse_publish("4000:13", 10) == ("tcp", "127.0.0.1", 4000, 13)
    assert parse_publish("0.0.0.0:4000:53/udp", 1) == ("udp", "0.0.0.0", 4000, 53)
    with pytest.raises(SpecError, match="valid ports"):
        parse_publish("65530:13", 10)
    with pytest.raises(SpecError):
        parse_publish("host:1:2", 1)


def test_without_forwards() -> None:
    assert without_forwards(META["qemu_args"])[1] == "user,id=n0,net=10.0.2.0/24"


def _stream(noxs_size: int, gpa: int, twice: bool = False) -> bytes:
    entry = bytes([17]) + b"0000:00:01.0/noxs" + struct.pack(">QQ", noxs_size, gpa)
    ram = bytes([3]) + b"ram" + struct.pack(">QQ", 4 << 20, 0)
    return b"QEVM" + ram + entry + (entry if twice else b"") + b"\0" * 100


def test_unpin_noxs_zeroes_the_noxs_gpa_only(tmp_path: Path) -> None:
    path = tmp_path / "s"
    head = b"H" * 10
    path.write_bytes(head + _stream(16384, 0xC0000000))
    fd = os.open(path, os.O_RDWR)
    try:
        _unpin_noxs(fd, len(head), 16384)
    finally:
        os.close(fd)
    assert path.read_bytes() == head + _stream(16384, 0)


def test_unpin_noxs_refuses_an_unknown_layout(tmp_path: Path) -> None:
    for data in (_stream(8192, 0xC0000000), _stream(16384, 0xC0000000, twice=True)):
        path = tmp_path / "s"
        path.write_bytes(data)
        fd = os.open(path, os.O_RDWR)
        try:
            with pytest.raises(TemplateError, match="NoXS block"):
                _unpin_noxs(fd, 0, 16384)
        finally:
            os.close(fd)


def test_file_digest_follows_a_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "ram"
    path.write_bytes(b"a" * 5000)
    fd = os.open(path, os.O_RDONLY)
    try:
        first = file_digest(fd, str(path), None)
        assert file_digest(fd, str(path), None) == first  # remembered
        assert file_digest(fd, str(path), b"k" * 16) != first  # keyed: another digest
    finally:
        os.close(fd)
    with open(path, "r+b") as f:  # same size, same mtime set back: the ctime still moves
        st = os.stat(path)
        f.write(b"b")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert file_digest(fd, str(path), None) != first
    finally:
        os.close(fd)
