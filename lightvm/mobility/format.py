"""The checkpoint file: lightvm's header in front of QEMU's migration stream.

File format (version 1), all integers little-endian::

    offset  size  field
    0       8     magic        b"LVMCKPT\\0"
    8       2     version      1 (a reader refuses any other)
    10      2     flags        0 (reserved; a reader refuses unknown bits)
    12      4     header_len   length N of the JSON header that follows (1 .. 1 MiB)
    16      N     JSON header  UTF-8 object, see below
    16+N    ...   QEMU's migration stream (``migrate fd:``), to the end of the file

The JSON header::

    {"format": "lightvm-checkpoint", "name": VM name, "uuid": VM uuid,
     "accel": "tcg", "saved_at": unix time, "paused": was the VM paused when saved,
     "spec": the VM spec (VMSpec.to_dict(): absolute kernel/firmware paths),
     "noxs_size": bytes of the NoXS region,
     "page": {"tsc_hz": int, "nmi_doorbell": bool,
              "vifs": [{"mac", "ip", "prefix", "gateway", "mtu", "bridge"}, ...],
              "vbds": [{"sectors", "sector_size", "read_only"}, ...]},
     "vifs": the vifs' host side as created (PreparedVif.to_dict(): mode, MAC, IP, tap, ...),
     "qemu_args": the VM's device arguments as QEMU saw them}

The same header opens a live migration (lightvm/mobility/migrate.py): it tells the
receiving side what to spawn. What the stream carries and how restore uses the header:
lightvm/mobility/restore.py.
"""

from __future__ import annotations

import json
import os
import struct
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

from lightvm import hostfacts
from lightvm.errors import LightVMError
from lightvm.noxs import PageConfig, VbdConfig, VifConfig, parse_mac
from lightvm.state import VMRecord
from lightvm.util import NotRegularFileError, open_regular

MAGIC = b"LVMCKPT\0"
VERSION = 1
FORMAT = "lightvm-checkpoint"
PREFIX = struct.Struct("<8sHHI")
HEADER_MAX = 1 << 20


class CheckpointError(LightVMError):
    """A checkpoint file cannot be written or read (names the file and what is wrong)."""


def encode_header(meta: dict[str, Any]) -> bytes:
    body = json.dumps(meta, separators=(",", ":")).encode()
    if len(body) > HEADER_MAX:
        raise CheckpointError(f"checkpoint header of {len(body)} bytes exceeds {HEADER_MAX}")
    return PREFIX.pack(MAGIC, VERSION, 0, len(body)) + body


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a checkpoint file and the offset of QEMU's stream.

    :raise CheckpointError: not a lightvm checkpoint, another version, a truncated or
        malformed header (one line saying which).
    """
    try:
        with os.fdopen(open_regular(path), "rb") as f:  # a FIFO would block the open forever
            prefix = f.read(PREFIX.size)
            if len(prefix) < PREFIX.size or prefix[:8] != MAGIC:
                raise CheckpointError(f"{path}: not a lightvm checkpoint (bad magic)")
            _, version, flags, length = PREFIX.unpack(prefix)
            if version != VERSION:
                raise CheckpointError(
                    f"{path}: checkpoint format version {version} is not supported (this lightvm reads {VERSION})"
                )
            if flags:
                raise CheckpointError(f"{path}: unknown checkpoint flags {flags:#x}")
            if not 0 < length <= HEADER_MAX:
                raise CheckpointError(f"{path}: bad checkpoint header length {length}")
            body = f.read(length)
            if len(body) < length:
                raise CheckpointError(f"{path}: truncated checkpoint header ({len(body)} of {length} bytes)")
            size = os.fstat(f.fileno()).st_size
    except NotRegularFileError as exc:
        raise CheckpointError(f"{path} {exc.strerror}; name a checkpoint file") from exc
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        meta = json.loads(body)
    except ValueError as exc:
        raise CheckpointError(f"{path}: checkpoint header is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: checkpoint header is not a {FORMAT} header")
    for key, kind in (("name", str), ("spec", dict), ("noxs_size", int), ("page", dict), ("vifs", list)):
        if not isinstance(meta.get(key), kind):
            raise CheckpointError(f"{path}: checkpoint header lacks a valid {key!r}")
    offset = PREFIX.size + length
    if size <= offset:
        raise CheckpointError(f"{path}: truncated checkpoint (no migration stream after the header)")
    return meta, offset


def page_to_json(page: PageConfig) -> dict[str, Any]:
    return {
        "tsc_hz": page.tsc_hz,
        "nmi_doorbell": page.nmi_doorbell,
        "vifs": [
            {
                "mac": v.mac.hex(":"),
                "ip": v.ip,
                "prefix": v.prefix,
                "gateway": v.gateway,
                "mtu": v.mtu,
                "bridge": v.bridge,
            }
            for v in page.vifs
        ],
        "vbds": [{"sectors": b.sectors, "sector_size": b.sector_size, "read_only": b.read_only} for b in page.vbds],
    }


def vif_config(data: dict[str, Any]) -> VifConfig:
    """A NoXS vif page from its JSON form (the header's page, or PreparedVif.to_dict()).

    :raise KeyError, TypeError, ValueError, LightVMError: on a malformed description.
    """
    return VifConfig(
        mac=parse_mac(str(data["mac"])),
        ip=str(data["ip"]),
        prefix=int(data["prefix"]),
        gateway=str(data["gateway"]),
        mtu=int(data["mtu"]),
        bridge=str(data.get("bridge") or ""),
    )


def page_from_json(data: dict[str, Any], name: str, vm_uuid: uuidlib.UUID) -> PageConfig:
    """:raise CheckpointError: on a malformed page description."""
    try:
        vifs = [vif_config(v) for v in data.get("vifs", [])]
        vbds = [VbdConfig(int(b["sectors"]), int(b["sector_size"]), bool(b["read_only"])) for b in data.get("vbds", [])]
        return PageConfig(
            name=name,
            uuid=vm_uuid,
            vifs=vifs,
            vbds=vbds,
            tsc_hz=int(data.get("tsc_hz", 0)),
            nmi_doorbell=bool(data.get("nmi_doorbell", True)),
        )
    except (KeyError, TypeError, ValueError, LightVMError) as exc:
        raise CheckpointError(f"checkpoint header: bad NoXS page description ({exc})") from exc


def header_for(record: VMRecord, paused: bool) -> dict[str, Any]:
    """The JSON header describing ``record``'s VM (everything restore needs besides the stream)."""
    saved_vifs = list(record.devices.get("vifs") or [])
    # Straight from the saved dicts (PreparedVif.to_dict()): importing devices.net costs ~190 ms.
    vif_configs = [vif_config(v) for v in saved_vifs]
    vbds: list[VbdConfig] = []
    if record.devices.get("disks"):
        from lightvm.devices import blk

        vbds = [blk.noxs_config(blk.PreparedDisk.from_dict(d)) for d in record.devices["disks"]]
    linux = bool(record.spec.get("initrd"))  # its init polls the page: no NMI doorbell (lightvm/linux.py)
    page = PageConfig(name=record.name, vifs=vif_configs, vbds=vbds, tsc_hz=hostfacts.tsc_hz(), nmi_doorbell=not linux)
    return {
        "format": FORMAT,
        "name": record.name,
        "uuid": record.uuid,
        "accel": record.accel,
        "saved_at": time.time(),
        "paused": paused,
        "spec": record.spec,
        "noxs_size": record.noxs_size,
        "page": page_to_json(page),
        "vifs": saved_vifs,
        "qemu_args": device_args(record.argv),
    }


def device_args(argv: list[str]) -> list[str]:
    """The device arguments of a VM's QEMU command line (build_argv puts ``extra_args``
    between the QMP monitor and the final ``-S``): vifs and disks as QEMU saw them."""
    try:
        start = argv.index("-mon") + 2
    except ValueError:
        return []
    end = len(argv) - 1 if argv and argv[-1] == "-S" else len(argv)
    args = argv[start:end]
    if args[-2:] == ["-incoming", "defer"]:  # a restored VM's QEMU: not a device
        args = args[:-2]
    return args


__all__ = [
    "FORMAT",
    "MAGIC",
    "VERSION",
    "CheckpointError",
    "device_args",
    "encode_header",
    "header_for",
    "page_from_json",
    "page_to_json",
    "read_header",
]
