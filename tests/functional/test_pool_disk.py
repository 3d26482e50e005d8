"""Pooled disks: lightvmd's disk shells come with a virtio-blk device on a placeholder
node, and a create's image is put under it at execute (QMP blockdev-add + blockdev-reopen),
so a VM with a disk takes the pool path (lightvm/devices/shellblk.py). The guest
(images/apps/disk.c) reads the first and last sectors and reports READY only after both
reads succeeded and the device's capacity equals the NoXS page's."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from daemonlib import Lightvmd, wait_pool
from test_disk import SECTOR, fnv1a

from lightvm.errors import SpecError

pytestmark = pytest.mark.functional


def _config(tmp_path: Path, images: Path, image: Path, readonly: bool, name: str = "disk") -> Path:
    config = tmp_path / f"{name}.toml"
    config.write_text(
        f'name = "{name}"\nkernel = "{images / "disk.elf"}"\nfirmware = "{images / "lvfw.bin"}"\n'
        f'memory = "4M"\n\n[[disks]]\npath = "{image}"\nreadonly = {str(readonly).lower()}\n'
    )
    return config


def _image(path: Path, sectors: int, tag: bytes) -> bytes:
    content = bytearray(os.urandom(sectors * SECTOR))
    content[: len(tag)] = tag
    path.write_bytes(bytes(content))
    return bytes(content)


def _reads(console: str, content: bytes) -> None:
    sectors = len(content) // SECTOR
    first, last = content[:SECTOR], content[-SECTOR:]
    assert f"disk: vbd 0 {sectors} sectors" in console, console
    assert f"disk: sector 0 fnv1a={fnv1a(first):08x} head={first[:16].hex()}\n" in console, console
    assert f"disk: sector {sectors - 1} fnv1a={fnv1a(last):08x} head={last[:16].hex()}\n" in console, console
    assert "disk: SUCCESS" in console


def test_pooled_disk_vms_read_their_own_images(lightvmd: Lightvmd, images: Path, tmp_path: Path) -> None:
    a_img, b_img = tmp_path / "a.img", tmp_path / "b.img"
    a, b = _image(a_img, 96, b"image-a"), _image(b_img, 2048, b"image-b")  # sizes differ: capacity follows
    lightvmd.start(pool=_config(tmp_path, images, a_img, readonly=True), size=2)
    stats = wait_pool(lightvmd, 2)
    assert stats["flavours"][0]["flavour"].endswith("/1disk(ro)"), stats

    va = lightvmd.create("va", _config(tmp_path, images, a_img, readonly=True, name="va"))
    r = lightvmd.cli("create", str(_config(tmp_path, images, b_img, readonly=True, name="vb")), "--accel", "tcg")
    assert r.returncode == 0, r.stderr
    assert va["path"] == "pool" and "path: pool" in r.stdout, (va, r.stdout)
    _reads(lightvmd.cli("console", "va").stdout, a)
    _reads(lightvmd.cli("console", "vb").stdout, b)
    info = json.loads(lightvmd.cli("info", "vb", "--json").stdout)
    disks = info.get("devices", {}).get("disks") or info.get("disks")
    assert disks and disks[0]["path"] == str(b_img) and disks[0]["sectors"] == 2048, info
    assert a_img.read_bytes() == a and b_img.read_bytes() == b  # read-only: untouched


def test_pooled_disk_vm_survives_save_and_restore(lightvmd: Lightvmd, images: Path, tmp_path: Path) -> None:
    """The record's command line is a cold VM's (the image, not the placeholder): the
    restored QEMU opens the image and the guest keeps running."""
    img = tmp_path / "keep.img"
    _image(img, 64, b"kept")
    config = _config(tmp_path, images, img, readonly=True, name="kept")
    lightvmd.start(pool=config, size=1)
    wait_pool(lightvmd, 1)
    assert lightvmd.create("kept", config)["path"] == "pool"
    ckpt = tmp_path / "kept.ckpt"
    r = lightvmd.cli("save", "kept", str(ckpt))
    assert r.returncode == 0, r.stderr
    r = lightvmd.cli("restore", str(ckpt))
    assert r.returncode == 0, r.stderr
    info = json.loads(lightvmd.cli("info", "kept", "--json").stdout)
    assert info["guest"]["state"] == "READY", info
    assert str(img) in " ".join(info.get("argv") or []) and "null-co" not in " ".join(info.get("argv") or []), info


def test_disk_flavours_and_bad_images(lightvmd: Lightvmd, images: Path, tmp_path: Path) -> None:
    """A read-write disk needs a read-write shell (the device's read-only bit is fixed at
    prepare): it takes the cold path and says why; a missing image is one clear error and
    nothing is left behind (the fixture's leak check)."""
    img = tmp_path / "rw.img"
    content = _image(img, 32, b"rw")
    lightvmd.start(pool=_config(tmp_path, images, img, readonly=True), size=1)
    wait_pool(lightvmd, 1)
    rw = lightvmd.create("rw", _config(tmp_path, images, img, readonly=False, name="rw"))
    assert rw["path"] == "cold", rw
    assert "1disk(rw)" in rw.get("path_reason", ""), rw
    _reads(lightvmd.cli("console", "rw").stdout, content)

    missing = tmp_path / "missing.img"
    with pytest.raises(SpecError, match=r"disks\[0\]'\.path: disk image .*missing\.img does not exist"):
        lightvmd.create("gone", _config(tmp_path, images, missing, readonly=True, name="gone"))
    assert [vm["name"] for vm in lightvmd.call("list")] == ["rw"]
