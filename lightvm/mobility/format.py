"""The checkpoint file: lightvm's header in front of QEMU's migration stream, sealed by
checksums over both.

File format (version 2), all integers little-endian::

    offset  size  field
    0       8     magic        b"LVMCKPT\\0"
    8       2     version      2 (a reader refuses any other; version 1 had no checksums)
    10      2     flags        bit 0: KEYED, the digests are HMAC-SHA256 (else SHA-256);
                               a reader refuses unknown bits
    12      4     header_len   length N of the JSON header that follows (1 .. 1 MiB)
    16      N     JSON header  UTF-8 object, see below
    16+N    32    header digest  over bytes 0 .. 16+N (prefix and JSON)
    48+N    L     QEMU's migration stream (``migrate fd:``)
    48+N+L  8     trailer magic  b"LVMCKEND"
            8     L, the stream's length
            32    digest       over bytes 0 .. 48+N+L (everything before the trailer)

The header digest lets a reader trust the header before it spawns anything from it;
the trailer's length refuses a truncated (or extended) file before anything is spawned;
the final digest covers the stream, and restore (lightvm/mobility/restore.py) computes
it on the very bytes it hands QEMU, through a pipe, and resumes the guest only when it
matched: a corrupted file never runs. The key of a KEYED file comes from the file named
by ``LIGHTVM_CHECKPOINT_KEY_FILE`` (:func:`checkpoint_key`): with it set, save signs and
restore accepts only files signed with that key; without it, a KEYED file is refused.

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

import hashlib
import hmac
import json
import os
import struct
import time
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightvm import hostfacts
from lightvm.errors import LightVMError
from lightvm.noxs import PageConfig, VbdConfig, VifConfig, parse_mac
from lightvm.state import VMRecord
from lightvm.util import NotRegularFileError, open_regular, read_regular

MAGIC = b"LVMCKPT\0"
VERSION = 2
FORMAT = "lightvm-checkpoint"
PREFIX = struct.Struct("<8sHHI")
HEADER_MAX = 1 << 20
KEYED = 1  # flags bit: HMAC-SHA256 with the configured key
DIGEST_SIZE = 32
TRAILER_MAGIC = b"LVMCKEND"
TRAILER = struct.Struct("<8sQ32s")
KEY_ENV = "LIGHTVM_CHECKPOINT_KEY_FILE"
KEY_MIN, KEY_MAX = 16, 4096


class CheckpointError(LightVMError):
    """A checkpoint file cannot be written or read (names the file and what is wrong)."""


def checkpoint_key() -> bytes | None:
    """The HMAC key, the bytes of the file ``$LIGHTVM_CHECKPOINT_KEY_FILE`` names (read on
    every call: a key rotated on disk takes effect at once), or None when it is not set.

    :raise CheckpointError: the variable names no readable regular file of 16 .. 4096 bytes.
    """
    name = os.environ.get(KEY_ENV)
    if not name:
        return None
    try:
        key = read_regular(name, KEY_MAX)
    except OSError as exc:
        raise CheckpointError(f"{KEY_ENV}={name}: cannot read the checkpoint key: {exc.strerror or exc}") from exc
    if len(key) < KEY_MIN:
        raise CheckpointError(
            f"{KEY_ENV}={name}: a checkpoint key needs {KEY_MIN} .. {KEY_MAX} bytes, not {len(key)}"
            " (e.g. `head -c 32 /dev/urandom > FILE`)"
        )
    return key


class Sealer:
    """The running digest of a checkpoint: SHA-256, or HMAC-SHA256 with ``key``."""

    def __init__(self, key: bytes | None) -> None:
        self._h: Any = hmac.new(key, digestmod=hashlib.sha256) if key is not None else hashlib.sha256()

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._h.update(data)

    def digest(self) -> bytes:
        return bytes(self._h.digest())

    def trailer(self, stream_len: int) -> bytes:
        """The trailer closing a file whose bytes up to here went through :meth:`update`."""
        return TRAILER.pack(TRAILER_MAGIC, stream_len, self.digest())


def encode_header(meta: dict[str, Any], key: bytes | None = None) -> bytes:
    """Prefix, JSON header and header digest: the first bytes of a checkpoint file."""
    body = json.dumps(meta, separators=(",", ":")).encode()
    if len(body) > HEADER_MAX:
        raise CheckpointError(f"checkpoint header of {len(body)} bytes exceeds {HEADER_MAX}")
    head = PREFIX.pack(MAGIC, VERSION, KEYED if key is not None else 0, len(body)) + body
    sealer = Sealer(key)
    sealer.update(head)
    return head + sealer.digest()


def key_for(path: Path, flags: int) -> bytes | None:
    """The key to verify a file with ``flags``: the configured one, which must agree with
    whether the file is signed.

    :raise CheckpointError: a signed file and no key, or an unsigned file where a key is set.
    """
    try:
        key = checkpoint_key()
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: cannot verify: {exc}") from exc
    if flags & KEYED and key is None:
        raise CheckpointError(
            f"{path}: the checkpoint is signed with a key (HMAC); set {KEY_ENV} to the key file it was saved with"
        )
    if not flags & KEYED and key is not None:
        raise CheckpointError(
            f"{path}: the checkpoint is not signed, and {KEY_ENV} is set: only checkpoints signed with that key are"
            " restored here (save it again with the key set)"
        )
    return key


@dataclass
class Layout:
    """Where the parts of a checkpoint file are (read_header checked them)."""

    offset: int  # of QEMU's stream
    stream_len: int
    digest: bytes  # the trailer's, over bytes 0 .. offset + stream_len
    key: bytes | None


def read_layout(path: Path) -> tuple[dict[str, Any], Layout]:
    """The JSON header of a checkpoint file and where its stream is, after checking the
    header digest and the trailer (the stream's own digest is checked as it is read:
    lightvm/mobility/restore.py).

    :raise CheckpointError: not a lightvm checkpoint, another version, a corrupted,
        truncated or malformed header, a truncated file (one line naming the file).
    """
    try:
        with os.fdopen(open_regular(path), "rb") as f:  # a FIFO would block the open forever
            prefix = f.read(PREFIX.size)
            if len(prefix) < PREFIX.size or prefix[:8] != MAGIC:
                raise CheckpointError(f"{path}: not a lightvm checkpoint (bad magic)")
            _, version, flags, length = PREFIX.unpack(prefix)
            if version == 1:
                raise CheckpointError(
                    f"{path}: checkpoint format version 1 (an older lightvm, no checksums) is not supported:"
                    f" this lightvm reads version {VERSION} only; restore it with the lightvm that saved it"
                    " and save it again with this one"
                )
            if version != VERSION:
                raise CheckpointError(
                    f"{path}: checkpoint format version {version} is not supported (this lightvm reads {VERSION})"
                )
            if flags & ~KEYED:
                raise CheckpointError(f"{path}: unknown checkpoint flags {flags:#x}")
            if not 0 < length <= HEADER_MAX:
                raise CheckpointError(f"{path}: bad checkpoint header length {length}")
            body = f.read(length)
            if len(body) < length:
                raise CheckpointError(f"{path}: truncated checkpoint header ({len(body)} of {length} bytes)")
            stored = f.read(DIGEST_SIZE)
            size = os.fstat(f.fileno()).st_size
            offset = PREFIX.size + length + DIGEST_SIZE
            if size < offset + TRAILER.size:
                raise CheckpointError(
                    f"{path}: truncated checkpoint ({size} bytes: no migration stream after the header)"
                )
            key = key_for(path, flags)
            sealer = Sealer(key)
            sealer.update(prefix + body)
            if not hmac.compare_digest(sealer.digest(), stored):
                raise CheckpointError(f"{path}: corrupted checkpoint: the header's {_what(key)} does not match")
            f.seek(size - TRAILER.size)
            magic, stream_len, digest = TRAILER.unpack(f.read(TRAILER.size))
    except NotRegularFileError as exc:
        raise CheckpointError(f"{path} {exc.strerror}; name a checkpoint file") from exc
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    have = size - TRAILER.size - offset
    if magic != TRAILER_MAGIC:
        raise CheckpointError(
            f"{path}: truncated or corrupted checkpoint (no end marker at its end: the file was cut,"
            " or its save did not complete)"
        )
    if stream_len != have:
        raise CheckpointError(f"{path}: truncated or extended checkpoint (stream of {have} bytes, saved {stream_len})")
    if stream_len == 0:
        raise CheckpointError(f"{path}: truncated checkpoint (no migration stream after the header)")
    try:
        meta = json.loads(body)
    except ValueError as exc:
        raise CheckpointError(f"{path}: checkpoint header is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: checkpoint header is not a {FORMAT} header")
    for key_name, kind in (("name", str), ("spec", dict), ("noxs_size", int), ("page", dict), ("vifs", list)):
        if not isinstance(meta.get(key_name), kind):
            raise CheckpointError(f"{path}: checkpoint header lacks a valid {key_name!r}")
    page_from_json(meta["page"], "check", uuidlib.UUID(int=0), where=str(path))
    return meta, Layout(offset, stream_len, digest, key)


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a checkpoint file and the offset of QEMU's stream
    (:func:`read_layout`, for callers that hand the file on to ``PreparedRestore.finish``).

    :raise CheckpointError: as read_layout.
    """
    meta, layout = read_layout(path)
    return meta, layout.offset


def _what(key: bytes | None) -> str:
    return "HMAC-SHA256 (with the key of " + KEY_ENV + ")" if key is not None else "SHA-256"


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


def page_from_json(data: dict[str, Any], name: str, vm_uuid: uuidlib.UUID, where: str = "") -> PageConfig:
    """:raise CheckpointError: on a malformed page description (naming ``where``, the file)."""
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
        raise CheckpointError(f"{where or 'checkpoint'}: checkpoint header: bad NoXS page description ({exc})") from exc


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
    "KEY_ENV",
    "MAGIC",
    "TRAILER",
    "VERSION",
    "CheckpointError",
    "Layout",
    "Sealer",
    "checkpoint_key",
    "device_args",
    "encode_header",
    "header_for",
    "page_from_json",
    "page_to_json",
    "read_header",
    "read_layout",
]
