"""Corrupted checkpoints are refused before any guest code runs, with one line naming the
file and the reason: bytes flipped anywhere, a file cut short by one byte, another
image's stream; signed checkpoints (LIGHTVM_CHECKPOINT_KEY_FILE) need the right key.
Restore errors carry QEMU's own reason (a host port already taken)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from daemonlib import Lightvmd
from netclient import free_port, read_daytime

from lightvm.mobility.format import KEY_ENV, MAGIC, TRAILER, VERSION, Sealer
from lightvm.util import wait_until

pytestmark = pytest.mark.functional

DAYTIME = Path(__file__).resolve().parents[2] / "examples" / "daytime.toml"


def _daytime(lightvm: Any, name: str = "daytime") -> int:
    port = free_port()
    lightvm.create(DAYTIME, "--name", name, "--publish", f"127.0.0.1:{port}:13")
    assert wait_until(lambda: read_daytime("127.0.0.1", port), timeout=20, interval=0.05)
    return port


def _parts(raw: bytes) -> tuple[int, int]:
    """(offset of the stream, its length)."""
    (length,) = struct.unpack_from("<I", raw, 12)
    offset = 16 + length + 32
    return offset, len(raw) - TRAILER.size - offset


def _refused(lightvm: Any, path: Path, *words: str) -> str:
    result = lightvm.run("restore", str(path), timeout=60)
    assert result.code == 1, result.out + result.err
    assert result.err.startswith(f"lightvm: error: {path}") or str(path) in result.err, result.err
    assert result.err.count("\n") == 1, f"not one line: {result.err!r}"
    for word in words:
        assert word in result.err, result.err
    assert lightvm.vm_dirs() == [] and lightvm.leftovers() == []
    return result.err


def _flip(raw: bytes, at: int, count: int = 1) -> bytes:
    out = bytearray(raw)
    for i in range(count):
        out[at + i * 97] ^= 0xA5
    return bytes(out)


def test_corrupted_checkpoints_are_refused(lightvm: Any, tmp_path: Path) -> None:
    port = _daytime(lightvm)
    ckpt, other = tmp_path / "d.lvm", tmp_path / "other.lvm"
    lightvm.ok("save", "daytime", str(ckpt))
    raw = ckpt.read_bytes()
    offset, stream_len = _parts(raw)
    assert stream_len > 100_000  # guest RAM is in there: 20 flipped bytes land in it
    _daytime(lightvm, "other")
    lightvm.ok("save", "other", str(other))
    raw_other = other.read_bytes()
    other_offset, _ = _parts(raw_other)

    cases = {
        "json": (_flip(raw, 40), ("corrupted checkpoint", "header")),
        "header-digest": (_flip(raw, offset - 5), ("corrupted checkpoint", "header")),
        "stream-start": (_flip(raw, offset + 3), ("corrupted checkpoint", "SHA-256")),
        "guest-ram-20-bytes": (_flip(raw, offset + stream_len // 2, 20), ("corrupted checkpoint", "SHA-256")),
        "stream-end": (_flip(raw, offset + stream_len - 1), ("corrupted checkpoint",)),
        "trailer-digest": (_flip(raw, len(raw) - 1), ("corrupted checkpoint",)),
        "trailer-length": (_flip(raw, len(raw) - 33), ("truncated",)),
        "cut-by-1-byte": (raw[:-1], ("truncated",)),
        "cut-mid-stream": (raw[: offset + stream_len // 2], ("truncated",)),
        "another-image's-stream": (raw[:offset] + raw_other[other_offset:], ("corrupted checkpoint",)),
    }
    for case, (content, words) in cases.items():
        bad = tmp_path / f"{case}.lvm"
        bad.write_bytes(content)
        _refused(lightvm, bad, *words)
        bad.unlink()
    lightvm.ok("restore", str(ckpt))  # the intact file still works: the guest continues
    assert wait_until(lambda: read_daytime("127.0.0.1", port), timeout=20, interval=0.05)
    lightvm.ok("destroy", "--all")


def test_signed_checkpoints_need_their_key(lightvm: Any, tmp_path: Path) -> None:
    key, wrong = tmp_path / "ckpt.key", tmp_path / "wrong.key"
    key.write_bytes(bytes(range(32)))
    wrong.write_bytes(bytes(range(1, 33)))
    short = tmp_path / "short.key"
    short.write_bytes(b"0123")
    _daytime(lightvm)
    signed, plain = tmp_path / "signed.lvm", tmp_path / "plain.lvm"
    lightvm.ok("save", "daytime", str(plain), "--keep-running")
    lightvm.env[KEY_ENV] = str(key)
    lightvm.ok("save", "daytime", str(signed))
    assert lightvm.vm_dirs() == []
    _refused(lightvm, plain, "not signed", KEY_ENV)
    lightvm.env[KEY_ENV] = str(wrong)
    _refused(lightvm, signed, "corrupted checkpoint", "HMAC")
    lightvm.env[KEY_ENV] = str(short)
    _refused(lightvm, signed, KEY_ENV, "16")
    del lightvm.env[KEY_ENV]
    _refused(lightvm, signed, "signed with a key", KEY_ENV)
    lightvm.env[KEY_ENV] = str(key)
    lightvm.ok("restore", str(signed))
    lightvm.ok("destroy", "--all")


def test_restore_error_quotes_qemu(lightvm: Any, tmp_path: Path) -> None:
    """The forward's host port is still held by the running VM: QEMU says so and exits;
    the error quotes it (as create does), not just "QMP closed the connection"."""
    _daytime(lightvm)
    ckpt = tmp_path / "d.lvm"
    lightvm.ok("save", "daytime", str(ckpt), "--keep-running")
    result = lightvm.run("restore", str(ckpt), "--name", "copy")
    assert result.code == 1 and result.err.count("\n") == 1, result.err
    assert "Could not set up host forwarding" in result.err, result.err
    assert [d.name for d in lightvm.vm_dirs()] == ["daytime"]
    lightvm.ok("destroy", "--all")


def test_malformed_header_error_names_the_file(lightvm: Any, tmp_path: Path) -> None:
    """A header with valid digests (a buggy writer) but a bad NoXS page description."""
    meta = {"format": "lightvm-checkpoint", "name": "x", "spec": {}, "noxs_size": 4096, "vifs": []}
    meta["page"] = {"vifs": [{"mac": "not-a-mac"}]}
    body = json.dumps(meta).encode()
    head = struct.pack("<8sHHI", MAGIC, VERSION, 0, len(body)) + body
    sealer = Sealer(None)
    sealer.update(head)
    head += sealer.digest()
    stream = bytes(64)
    sealer = Sealer(None)
    sealer.update(head + stream)
    bad = tmp_path / "page.lvm"
    bad.write_bytes(head + stream + sealer.trailer(len(stream)))
    _refused(lightvm, bad, "bad NoXS page description")


def test_partial_of_a_killed_save_is_cleaned_by_the_next(lightvm: Any, tmp_path: Path) -> None:
    """A `kill -9`ed save cannot remove its `.FILE.partial-PID`: the next save into the
    same directory removes partials whose PID is dead, and keeps a live save's."""
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait(timeout=10)
    stale = out / f".old.lvm.partial-{dead.pid}"
    stale.write_bytes(b"half a checkpoint")
    live = out / f".busy.lvm.partial-{os.getpid()}"
    live.write_bytes(b"a save in progress")
    _daytime(lightvm)
    lightvm.ok("save", "daytime", str(out / "d.lvm"))
    assert sorted(p.name for p in out.iterdir()) == [live.name, "d.lvm"]


def test_lightvmd_prepared_shell_verifies_too(lightvmd: Lightvmd, tmp_path: Path) -> None:
    """A restore into one of lightvmd's prepared `-incoming defer` shells checks the
    digest like the cold path: a corrupted file never runs, the shell is used up."""
    lightvmd.start(pool=None)
    port = free_port()
    lightvmd.create("day", DAYTIME, publish=[f"127.0.0.1:{port}:13"])
    assert wait_until(lambda: read_daytime("127.0.0.1", port), timeout=20, interval=0.05)
    ckpt = tmp_path / "d.lvm"
    assert lightvmd.cli("save", "day", str(ckpt)).returncode == 0
    lightvmd.stop()
    lightvmd.start("--incoming", str(ckpt), pool=None)

    def ready() -> bool:
        return sum(f["ready"] for f in lightvmd.call("ping")["incoming"] if not f["preparing"]) == 1

    assert wait_until(ready, timeout=30)
    raw = ckpt.read_bytes()
    offset, stream_len = _parts(raw)
    bad = tmp_path / "bad.lvm"
    bad.write_bytes(_flip(raw, offset + stream_len // 2, 20))
    refused = lightvmd.cli("restore", str(bad))
    assert refused.returncode == 1 and "corrupted checkpoint" in refused.stderr, refused.stderr
    errors = [line for line in refused.stderr.splitlines() if line.startswith("lightvm: error: ")]
    assert errors == [f"lightvm: error: {bad}: {errors[0].split(f'{bad}: ', 1)[1]}"], refused.stderr
    assert lightvmd.call("list") == []
    assert wait_until(ready, timeout=30)
    good = lightvmd.cli("restore", str(ckpt), "--json")
    assert good.returncode == 0 and json.loads(good.stdout)["path"] == "pool", good.stderr
    assert wait_until(lambda: read_daytime("127.0.0.1", port), timeout=20, interval=0.05)
    lightvmd.call("destroy", {"all": True})
