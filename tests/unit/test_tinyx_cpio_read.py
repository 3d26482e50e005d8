"""tinyx/cpio.py's reader and extraction (``lightvm bench tinyx`` unpacks an image's
initramfs into a container's root with them): a round trip with the writer, and a
damaged archive is one clear error, never a partial list."""

from __future__ import annotations

import dataclasses
import io
import stat
from pathlib import Path

import pytest

from lightvm.errors import LightVMError, TinyxError
from tinyx import cpio

ENTRIES = [
    cpio.directory("bin"),
    cpio.directory("dev"),
    cpio.chardev("dev/console", 5, 1),
    cpio.regular("bin/busybox", b"\x7fELF" + b"x" * 1001, 0o755),  # data not a multiple of 4
    cpio.symlink("bin/sh", "busybox"),
    cpio.directory("etc"),
    cpio.directory("etc/tinyx", 0o700),
    cpio.regular("etc/tinyx/app.conf", b"name=x\nport=0\narg=/bin/sh\n"),
    cpio.regular("empty", b""),
    dataclasses.replace(cpio.regular("owned", b"abc", 0o600), uid=101, gid=102, mtime=1_700_000_000),
]


def archive(entries: list[cpio.Entry] = ENTRIES) -> bytes:
    buf = io.BytesIO()
    cpio.write(entries, buf)
    return buf.getvalue()


def test_read_gives_back_what_write_wrote() -> None:
    assert cpio.read(archive()) == ENTRIES


def test_bytes_after_the_trailer_are_ignored() -> None:
    assert cpio.read(archive() + b"\0" * 512) == ENTRIES


@pytest.mark.parametrize("cut", [0, 50, 110, 115, 200, -20])
def test_a_truncated_archive_is_a_clear_error(cut: int) -> None:
    data = archive()[:cut]
    with pytest.raises(TinyxError, match="truncated") as exc:
        cpio.read(data)
    assert isinstance(exc.value, LightVMError) and "rebuild the image" in str(exc.value)


def test_not_a_newc_archive() -> None:
    with pytest.raises(TinyxError, match="bad magic b'\\\\x7fELF"):
        cpio.read(b"\x7fELF" + b"\0" * 200)


def test_a_crc_archive_is_checked() -> None:
    """070702 (GNU cpio -H crc): the same layout plus the sum of each file's bytes."""
    data = bytearray(archive([cpio.regular("f", b"hello")]))
    data[:6] = b"070702"
    check = sum(b"hello")
    data[102:110] = b"%08X" % check
    assert cpio.read(bytes(data)) == [cpio.regular("f", b"hello")]
    data[102:110] = b"%08X" % (check + 1)
    with pytest.raises(TinyxError, match="f: checksum mismatch"):
        cpio.read(bytes(data))


def test_hard_links_are_refused() -> None:
    data = bytearray(archive([cpio.regular("f", b"x")]))
    data[38:46] = b"00000002"  # nlink
    with pytest.raises(TinyxError, match="hard links"):
        cpio.read(bytes(data))


def test_extract_makes_the_tree_and_leaves_device_nodes_out(tmp_path: Path) -> None:
    skipped = cpio.extract(cpio.read(archive()), tmp_path)
    assert skipped == ["dev/console"]
    assert (tmp_path / "bin/busybox").read_bytes() == ENTRIES[3].data
    assert stat.S_IMODE((tmp_path / "bin/busybox").stat().st_mode) == 0o755
    assert (tmp_path / "bin/sh").readlink() == Path("busybox")
    assert stat.S_IMODE((tmp_path / "etc/tinyx").stat().st_mode) == 0o700
    assert (tmp_path / "etc/tinyx/app.conf").read_text().startswith("name=x")
    assert (tmp_path / "empty").read_bytes() == b""


@pytest.mark.parametrize(
    "entries",
    [
        [cpio.regular("../escape", b"x")],
        [cpio.symlink("up", "/"), cpio.regular("up/tmp/escape", b"x")],
    ],
)
def test_extract_never_writes_outside_its_root(tmp_path: Path, entries: list[cpio.Entry]) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(TinyxError, match="escape"):
        cpio.extract(entries, root)
    assert not (tmp_path / "escape").exists() and not Path("/tmp/escape").exists()
