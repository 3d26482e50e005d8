"""A disk-backed VM boots and its guest reads the disk (images/apps/disk.c, the
virtio-blk driver images/blk/virtio_blk.c), through the real CLI under TCG."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.functional

SECTOR = 512


def fnv1a(data: bytes) -> int:
    h = 2166136261
    for byte in data:
        h = ((h ^ byte) * 16777619) & 0xFFFFFFFF
    return h


def disk_config(tmp_path: Path, images: Path, image: Path) -> Path:
    config = tmp_path / "disk.toml"
    config.write_text(
        f'name = "disk"\nkernel = "{images / "disk.elf"}"\nfirmware = "{images / "lvfw.bin"}"\n'
        f'memory = "4M"\n\n[[disks]]\npath = "{image}"\nreadonly = true\n'
    )
    return config


def test_guest_reads_exactly_the_disk_content(lightvm: Any, images: Path, tmp_path: Path) -> None:
    sectors = 96
    content = bytearray(os.urandom(sectors * SECTOR))
    content[:16] = b"lightvm-disk-ok!"
    content[-SECTOR : -SECTOR + 16] = b"last-sector-here"
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(content))

    (vm,) = lightvm.create(disk_config(tmp_path, images, image))
    assert vm["app"] == "disk"  # READY comes only after both reads succeeded
    console = lightvm.ok("console", "disk").out
    first, last = bytes(content[:SECTOR]), bytes(content[-SECTOR:])
    assert f"disk: vbd 0 {sectors} sectors ro via virtio-mmio" in console, console
    assert f"disk: sector 0 fnv1a={fnv1a(first):08x} head={first[:16].hex()}\n" in console, console
    assert f"disk: sector {sectors - 1} fnv1a={fnv1a(last):08x} head={last[:16].hex()}\n" in console, console
    assert "disk: SUCCESS" in console.split("READY disk")[0]
    info = json.loads(lightvm.ok("info", "disk", "--json").out)
    assert info["guest"]["state"] == "READY"
    assert image.read_bytes() == bytes(content)  # readonly: the image is untouched
    lightvm.ok("destroy", "disk")
    assert image.exists()  # the image belongs to the user


def test_guest_without_its_disk_fails_the_create(lightvm: Any, images: Path, tmp_path: Path) -> None:
    """The disk app is fatal without a vbd: proves READY above really depends on the read."""
    config = tmp_path / "nodisk.toml"
    config.write_text(f'name = "nodisk"\nkernel = "{images / "disk.elf"}"\nmemory = "4M"\n')
    result = lightvm.run("create", str(config), "--accel", "tcg")
    assert result.code != 0
    assert "disk: no vbd 0" in result.err + result.out, result.err
