"""Save and restore through the CLI: the daytime guest survives (no reboot), bad files are
refused with one clear line, a full disk leaves no file and a running VM."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netclient import free_port, read_daytime

from lightvm.mobility.format import MAGIC, VERSION, Sealer
from lightvm.util import wait_until

pytestmark = pytest.mark.functional

DAYTIME = Path(__file__).resolve().parents[2] / "examples" / "daytime.toml"


def guest(lightvm: Any, name: str) -> dict[str, Any]:
    info = json.loads(lightvm.ok("info", name, "--json").out)
    assert info["status"] == "running", info
    return dict(info["guest"])


def daytime_vm(lightvm: Any) -> int:
    port = free_port()
    lightvm.create(DAYTIME, "--publish", f"127.0.0.1:{port}:13")
    assert wait_until(lambda: read_daytime("127.0.0.1", port), timeout=20, interval=0.05)
    return port


def test_save_restore_daytime_continues(lightvm: Any, tmp_path: Path) -> None:
    port = daytime_vm(lightvm)
    # The idle guest is tickless: its heartbeat counts interrupts (the query's packets here).
    before = wait_until(lambda: (g := guest(lightvm, "daytime"))["heartbeat"] >= 1 and g, timeout=10)
    assert before and before["app_counter"] >= 1
    ckpt = tmp_path / "daytime.lvm"
    saved = json.loads(lightvm.ok("save", "daytime", str(ckpt), "--json").out)
    assert saved["bytes"] == ckpt.stat().st_size > 4096 and not saved["kept_running"]
    assert ckpt.read_bytes()[:8] == MAGIC
    assert lightvm.status() == {}  # destroyed after the save
    assert read_daytime("127.0.0.1", port) is None
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial file

    restored = json.loads(lightvm.ok("restore", str(ckpt), "--json").out)
    assert restored["name"] == "daytime" and not restored["paused"]
    # No reboot: the counters in the guest's own memory continue from where they were.
    assert restored["heartbeat"] >= before["heartbeat"] and restored["app_counter"] == before["app_counter"]
    reply = wait_until(lambda: read_daytime("127.0.0.1", port), timeout=20, interval=0.05)
    assert reply is not None and str(__import__("time").gmtime().tm_year) in reply
    after = wait_until(lambda: (g := guest(lightvm, "daytime"))["heartbeat"] > before["heartbeat"] and g, timeout=10)
    assert after and after["app_counter"] == before["app_counter"] + 1 and after["state"] == "READY"
    console = (lightvm.state_dir / "vms" / "daytime" / "console.log").read_text(errors="replace")
    assert "READY" not in console  # the restored guest did not boot again
    lightvm.ok("shutdown", "daytime")  # the rewritten NoXS page still drives the guest (sysctl poweroff)
    assert lightvm.status() == {}


def test_keep_running_then_restore_under_another_name(lightvm: Any, tmp_path: Path) -> None:
    port = daytime_vm(lightvm)
    ckpt = tmp_path / "d.lvm"
    out = lightvm.ok("save", "daytime", str(ckpt), "--keep-running").out
    assert "kept running" in out
    assert wait_until(lambda: read_daytime("127.0.0.1", port), timeout=10, interval=0.05)
    refused = lightvm.run("save", "daytime", str(ckpt))
    assert refused.code == 1 and "exists" in refused.err
    taken = lightvm.run("restore", str(ckpt))
    assert taken.code == 1 and "already exists" in taken.err
    lightvm.ok("destroy", "daytime")
    lightvm.ok("restore", str(ckpt), "--name", "copy")
    assert lightvm.status() == {"copy": "running"}
    assert wait_until(lambda: read_daytime("127.0.0.1", port), timeout=20, interval=0.05)


def _prefix(version: int = VERSION, length: int = 10, magic: bytes = MAGIC) -> bytes:
    return struct.pack("<8sHHI", magic, version, 0, length)


def _sealed(body: bytes, stream: bytes = bytes(64)) -> bytes:
    """A file with valid digests around ``body`` (what a buggy writer could produce)."""
    head = _prefix(length=len(body)) + body
    sealer = Sealer(None)
    sealer.update(head)
    head += sealer.digest()
    sealer = Sealer(None)
    sealer.update(head + stream)
    return head + stream + sealer.trailer(len(stream))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a lightvm checkpoint (bad magic)"),
        (b"QFI\xfb" + bytes(100), "not a lightvm checkpoint (bad magic)"),
        (_prefix(version=99) + b"{}", "checkpoint format version 99 is not supported"),
        (_prefix(version=1) + b"{}", "checkpoint format version 1 (an older lightvm, no checksums)"),
        (_prefix(length=500) + b'{"format"', "truncated checkpoint header (9 of 500 bytes)"),
        (_prefix(length=0), "bad checkpoint header length 0"),
        (_sealed(b"not json!!"), "checkpoint header is not valid JSON"),
        (_sealed(b"{}"), "is not a lightvm-checkpoint header"),
    ],
    ids=["empty", "qemu-stream", "version", "version-1", "truncated", "zero-length", "garbage", "foreign-json"],
)
def test_bad_files_refused(lightvm: Any, tmp_path: Path, content: bytes, message: str) -> None:
    bad = tmp_path / "bad.lvm"
    bad.write_bytes(content)
    result = lightvm.run("restore", str(bad))
    assert result.code == 1 and message in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1
    assert lightvm.vm_dirs() == []


def test_header_without_stream_refused(lightvm: Any, tmp_path: Path) -> None:
    daytime_vm(lightvm)
    ckpt = tmp_path / "d.lvm"
    lightvm.ok("save", "daytime", str(ckpt))
    raw = ckpt.read_bytes()
    (length,) = struct.unpack_from("<I", raw, 12)
    headonly = tmp_path / "head.lvm"
    headonly.write_bytes(raw[: 16 + length])
    result = lightvm.run("restore", str(headonly))
    assert result.code == 1 and "no migration stream" in result.err
    cut = tmp_path / "cut.lvm"
    cut.write_bytes(raw[: 16 + length + 5000])  # the stream ends mid-RAM
    result = lightvm.run("restore", str(cut))
    assert result.code == 1 and f"{cut}: truncated" in result.err, result.err
    assert lightvm.vm_dirs() == []  # nothing half-created
    lightvm.ok("restore", str(ckpt))  # the whole file still works


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tiny tmpfs (missing: run as root)")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "lvtiny", str(mnt)], check=True, timeout=10)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False, timeout=10)


def test_save_to_full_disk(lightvm: Any, tiny_fs: Path) -> None:
    port = daytime_vm(lightvm)
    result = lightvm.run("save", "daytime", str(tiny_fs / "d.lvm"))
    assert result.code == 1 and "disk full" in result.err and "keeps running" in result.err, result.err
    assert list(tiny_fs.iterdir()) == []  # no partial file
    assert lightvm.status() == {"daytime": "running"}
    assert wait_until(lambda: read_daytime("127.0.0.1", port), timeout=10, interval=0.05)


def test_migrate_between_state_dirs(lightvm: Any, tmp_path: Path) -> None:
    """The migration proper (no SSH): a noop guest goes to another state dir and back; its
    own counters continue and the source is destroyed each time."""
    from lightvm.mobility.migrate import migrate_local
    from lightvm.toolstack import Toolstack

    lightvm.create(DAYTIME.parent / "noop.toml")
    here = Toolstack(lightvm.state_dir)
    there = Toolstack(tmp_path / "there")
    try:
        first = migrate_local(here, "noop", there)
        assert first.bytes > 0 and first.migrate_ms > 0 and lightvm.status() == {}
        assert {i.name: i.status for i in there.list()} == {"noop": "running"}
        beat = there.info("noop")["guest"]["heartbeat"]
        back = migrate_local(there, "noop", here)
        assert back.bytes > 0 and there.list() == []
        assert lightvm.status() == {"noop": "running"}
        assert guest(lightvm, "noop")["heartbeat"] >= beat
    finally:
        there.destroy_all()
    assert not list((tmp_path / "there" / "vms").iterdir())


def _dirty_spec(tmp_path: Path, kib: int) -> Path:
    build = DAYTIME.parents[1] / "images" / "build"
    cfg = tmp_path / "dirty.toml"
    cfg.write_text(
        f'name = "dirty"\nkernel = "{build}/dirty.elf"\nfirmware = "{build}/lvfw.bin"\n'
        f'memory = "16M"\ncmdline = "dirty_kib={kib}"\n'
    )
    return cfg


def test_migration_of_a_guest_writing_memory(lightvm: Any, tmp_path: Path) -> None:
    """A guest re-dirtying 4 MiB converges at lightvm's bandwidth setting; at 8 MiB/s it
    cannot (each round re-sends more than the downtime allows): the migration gives up at its
    deadline and the guest keeps running at the source. 8, not 32: a round then lasts ~0.5 s,
    and even a TCG guest starved by a loaded host re-dirties its 4 MiB within that (at 32 MiB/s
    it once converged under load ~10)."""
    from lightvm.mobility.migrate import MigrationError, migrate_local
    from lightvm.toolstack import Toolstack

    lightvm.create(_dirty_spec(tmp_path, 4096))
    here, there = Toolstack(lightvm.state_dir), Toolstack(tmp_path / "there")
    try:
        passes = guest(lightvm, "dirty")["app_counter"]
        with pytest.raises(MigrationError, match=r"did not complete within 3\.0 s.*keeps running"):
            migrate_local(here, "dirty", there, bandwidth_mib=8, timeout=3.0)
        assert there.list() == [] and lightvm.status() == {"dirty": "running"}
        later = wait_until(lambda: (n := guest(lightvm, "dirty")["app_counter"]) > passes and n, timeout=10)
        assert later, "the guest stopped writing after the failed migration"
        moved = migrate_local(here, "dirty", there)  # default: 4 GiB/s, 10 ms downtime
        # Converged while the guest kept re-dirtying (more than its 4 MiB went over). How
        # short the final stop is belongs to `lightvm bench checkpoint`: a loaded CI host
        # once stretched it from ~10 to 99 ms. Here: reported, a part of the migration (not
        # a stop-and-copy of all of it), and under QEMU's own default downtime-limit of
        # 300 ms, which only a limit that was never applied would let it reach.
        # QEMU reports the downtime in whole ms: a sub-millisecond stop reads 0.
        assert moved.bytes > 4 << 20 and 0 <= moved.downtime_ms < min(300, moved.migrate_ms), moved
        on_there = there.info("dirty")["guest"]
        assert on_there["state"] == "READY" and on_there["app_counter"] >= later
        assert wait_until(lambda: there.info("dirty")["guest"]["app_counter"] > on_there["app_counter"], timeout=10)
    finally:
        there.destroy_all()
