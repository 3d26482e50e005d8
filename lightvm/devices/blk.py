"""The vbd device module: a disk image file -> virtio-blk + the NoXS vbd page.

Spec keys (``[[disks]]``): ``path`` (an existing regular file, relative to the
config file), ``readonly`` (default false). The image is raw; its size must be a
multiple of 512 bytes. There is no host resource to create (QEMU opens the file),
so ``prepare`` only measures the image and ``release`` has nothing to undo.
Same interface as :mod:`lightvm.devices.net` (see :mod:`lightvm.devices`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightvm.errors import SpecError
from lightvm.noxs import VbdConfig
from lightvm.spec import DiskSpec
from lightvm.util import qemu_opt_escape

SECTOR = 512


@dataclass(frozen=True)
class PreparedDisk:
    index: int
    path: str
    readonly: bool
    sectors: int

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "path": self.path, "readonly": self.readonly, "sectors": self.sectors}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreparedDisk:
        return cls(int(data["index"]), str(data["path"]), bool(data["readonly"]), int(data["sectors"]))


def validate(spec_entry: DiskSpec, where: str = "disk") -> DiskSpec:
    """:raise SpecError: if the image is missing, not a file, or not a whole number of sectors."""
    try:
        size = os.stat(spec_entry.path).st_size
    except OSError as exc:
        raise SpecError(f"{where}.path: {spec_entry.path}: {exc.strerror}") from exc
    if size == 0 or size % SECTOR:
        raise SpecError(f"{where}.path: {spec_entry.path} is {size} bytes, not a non-zero multiple of {SECTOR}")
    return spec_entry


def prepare(spec: DiskSpec, index: int) -> PreparedDisk:
    """Measure the image (no host resource to create or undo)."""
    size = Path(spec.path).stat().st_size
    return PreparedDisk(index, str(spec.path), spec.readonly, size // SECTOR)


def qemu_args(prepared: PreparedDisk) -> list[str]:
    """``-drive`` + ``virtio-blk-device`` (virtio-mmio on microvm)."""
    drive = f"file={qemu_opt_escape(prepared.path)},if=none,id=d{prepared.index},format=raw"
    if prepared.readonly:
        drive += ",readonly=on"
    return ["-drive", drive, "-device", f"virtio-blk-device,drive=d{prepared.index}"]


def noxs_config(prepared: PreparedDisk) -> VbdConfig:
    return VbdConfig(sectors=prepared.sectors, sector_size=SECTOR, read_only=prepared.readonly)


def release(prepared: PreparedDisk) -> None:
    """Nothing to undo: the image belongs to the user."""
