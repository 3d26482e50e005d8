"""tinyx/cpio.py: the newc archive the kernel unpacks as initramfs, checked with GNU cpio."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pytest

from tinyx import cpio

ENTRIES = [
    cpio.directory("bin"),
    cpio.directory("dev"),
    cpio.chardev("dev/console", 5, 1),
    cpio.regular("bin/busybox", b"\x7fELF" + b"x" * 1001, 0o755),
    cpio.symlink("bin/sh", "busybox"),
    cpio.regular("init", b"#!/bin/sh\necho hi\n", 0o755),
    cpio.regular("empty", b""),
]


def archive() -> bytes:
    buf = io.BytesIO()
    size = cpio.write(ENTRIES, buf)
    data = buf.getvalue()
    assert size == len(data)
    return data


def test_every_member_is_4_byte_aligned_and_the_archive_ends_with_the_trailer() -> None:
    data = archive()
    assert data.startswith(b"070701")
    assert len(data) % 4 == 0
    assert b"TRAILER!!!\0" in data[-128:]


@pytest.mark.skipif(shutil.which("cpio") is None, reason="needs GNU cpio")
def test_gnu_cpio_lists_names_modes_devices_and_link_targets() -> None:
    listing = subprocess.run(
        ["cpio", "-itv", "--quiet"], input=archive(), capture_output=True, timeout=30, check=True
    ).stdout.decode()
    lines = listing.splitlines()
    assert [ln.split()[-1] if "->" not in ln else ln.split()[-3] for ln in lines] == [e.name for e in ENTRIES]
    console = next(ln for ln in lines if ln.endswith("dev/console"))
    assert console.startswith("crw-------") and "5,   1" in console
    assert next(ln for ln in lines if "bin/sh" in ln).endswith("bin/sh -> busybox")
    assert next(ln for ln in lines if ln.endswith(" init")).startswith("-rwxr-xr-x")
    assert " 1005 " in next(ln for ln in lines if ln.endswith("bin/busybox"))


@pytest.mark.skipif(shutil.which("cpio") is None, reason="needs GNU cpio")
def test_gnu_cpio_extracts_the_same_bytes(tmp_path: Path) -> None:
    subprocess.run(
        ["cpio", "-id", "--quiet", "--no-absolute-filenames"],
        input=archive(),
        cwd=tmp_path,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert (tmp_path / "init").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (tmp_path / "bin/busybox").read_bytes() == b"\x7fELF" + b"x" * 1001
    assert (tmp_path / "bin/sh").is_symlink()


@pytest.mark.parametrize("name", ["", "/", "TRAILER!!!", "a\0b"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        cpio.write([cpio.regular(name, b"")], io.BytesIO())


def test_only_files_and_symlinks_carry_data() -> None:
    with pytest.raises(ValueError):
        cpio.write([cpio.Entry("d", cpio.directory("d").mode, b"x")], io.BytesIO())
