"""Host side of the NoXS page: a ctypes mirror of ``noxs_abi.h``.

The NoXS region is a small shared-memory file in /dev/shm that QEMU exposes
to the guest as an ``ivshmem-plain`` BAR. The host writes the device page
and the host-owned half of each control page; the guest writes only the
second half of its control pages (fe_state, boot record, counters).

Everything the guest wrote is hostile: :meth:`NoxsRegion.boot_record`
copies it out in one bounded read and validates every field before use.
Host-owned configuration is written from the host's own copy and never read
back. ``tests/unit/test_noxs_abi.py`` compiles the C header and checks that
every size and offset here matches it.
"""

from __future__ import annotations

import ctypes
import enum
import mmap
import os
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path

from lightvm.errors import NoxsError

MAGIC = 0x53584F4E
ABI_VERSION = 1
PAGE_SIZE = 4096
MAX_DEVICES = 32
REGION_MIN = 2 * PAGE_SIZE
REGION_MAX = 64 * PAGE_SIZE
CTRL_GUEST_OFFSET = 2048
NAME_LEN = 64
IFNAME_LEN = 16
MESSAGE_LEN = 64
APP_LEN = 16

FEAT_TSC_HZ = 1 << 0
FEAT_NMI_DOORBELL = 1 << 1
FEAT_WAIT_CONFIG = 1 << 2  # placeholder page: the guest waits (BootState.WAITING) for the real one
FEAT_CONSOLE_BELL = 1 << 3  # with FEAT_WAIT_CONFIG: the guest may sleep there until a byte on its console


class DevType(enum.IntEnum):
    NONE = 0
    SYSCTL = 1
    VIF = 2
    VBD = 3


class XenbusState(enum.IntEnum):
    UNKNOWN = 0
    INITIALISING = 1
    INITWAIT = 2
    INITIALISED = 3
    CONNECTED = 4
    CLOSING = 5
    CLOSED = 6
    RECONFIGURING = 7
    RECONFIGURED = 8


class Sysctl(enum.IntFlag):
    POWEROFF = 1 << 0
    REBOOT = 1 << 1
    SUSPEND = 1 << 2
    CRASH = 1 << 3
    WATCHDOG = 1 << 4


class BootState(enum.IntEnum):
    UNKNOWN = 0
    BOOTING = 1
    DEVICES_UP = 2
    READY = 3
    STOPPING = 4
    HALTED = 5
    ERROR = 6
    WAITING = 7
    WAITING_BELL = 8  # waiting asleep: a byte on the console input wakes it


class GuestErrorCode(enum.IntEnum):
    NONE = 0
    BAD_PAGE = 1
    NO_DEVICE = 2
    DEVICE = 3
    APP = 4
    EXCEPTION = 5


class TscSource(enum.IntEnum):
    UNKNOWN = 0
    PAGE = 1
    CPUID_15H = 2
    CPUID_16H = 3
    HV_LEAF = 4
    PIT = 5


VBD_RO = 1
VBD_RW = 2

# ---- ctypes mirror (little-endian, as the ABI says) ----

_LE = ctypes.LittleEndianStructure


class DevEntry(_LE):
    _pack_ = 8
    _fields_ = (
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("backend_id", ctypes.c_uint32),
        ("ctrl_offset", ctypes.c_uint32),
    )


class DevicePage(_LE):
    _pack_ = 8
    _fields_ = (
        ("magic", ctypes.c_uint32),
        ("abi_version", ctypes.c_uint16),
        ("header_size", ctypes.c_uint16),
        ("features", ctypes.c_uint64),
        ("region_size", ctypes.c_uint32),
        ("dev_count", ctypes.c_uint32),
        ("generation", ctypes.c_uint64),
        ("host_time_ns", ctypes.c_uint64),
        ("tsc_hz", ctypes.c_uint64),
        ("uuid", ctypes.c_uint8 * 16),
        ("name", ctypes.c_char * NAME_LEN),
        ("reserved", ctypes.c_uint8 * 64),
        ("devs", DevEntry * MAX_DEVICES),
    )


_UUID_OFFSET = DevicePage.uuid.offset
_DEVS_OFFSET = DevicePage.devs.offset
_DEV_ENTRY_SIZE = ctypes.sizeof(DevEntry)
_DEVS_END = _DEVS_OFFSET + MAX_DEVICES * _DEV_ENTRY_SIZE


class CtrlHdr(_LE):
    _pack_ = 8
    _fields_ = (
        ("be_state", ctypes.c_uint32),
        ("be_events", ctypes.c_uint32),
        ("fe_state", ctypes.c_uint32),
        ("fe_events", ctypes.c_uint32),
    )


class BootRecordRaw(_LE):
    _pack_ = 8
    _fields_ = (
        ("state", ctypes.c_uint32),
        ("error", ctypes.c_uint32),
        ("tsc_hz", ctypes.c_uint64),
        ("tsc_entry", ctypes.c_uint64),
        ("tsc_devices_up", ctypes.c_uint64),
        ("tsc_ready", ctypes.c_uint64),
        ("heartbeat", ctypes.c_uint64),
        ("app_counter", ctypes.c_uint64),
        ("tsc_source", ctypes.c_uint32),
        ("generation_seen", ctypes.c_uint32),
        ("app", ctypes.c_char * APP_LEN),
        ("message", ctypes.c_char * MESSAGE_LEN),
    )


class SysctlCtrl(_LE):
    _pack_ = 8
    _fields_ = (
        ("hdr", CtrlHdr),
        ("status_req", ctypes.c_uint32),
        ("host_pad", ctypes.c_uint8 * (CTRL_GUEST_OFFSET - 20)),
        ("status_ack", ctypes.c_uint32),
        ("guest_pad", ctypes.c_uint32),
        ("boot", BootRecordRaw),
    )


class VifCtrl(_LE):
    _pack_ = 8
    _fields_ = (
        ("hdr", CtrlHdr),
        ("mac", ctypes.c_uint8 * 6),
        ("mtu", ctypes.c_uint16),
        ("ip", ctypes.c_uint8 * 4),
        ("gateway", ctypes.c_uint8 * 4),
        ("prefix", ctypes.c_uint8),
        ("vif_pad", ctypes.c_uint8 * 3),
        ("bridge", ctypes.c_char * IFNAME_LEN),
        ("dev_mac", ctypes.c_uint8 * 6),
        ("dev_mac_pad", ctypes.c_uint8 * 2),
        ("host_pad", ctypes.c_uint8 * (CTRL_GUEST_OFFSET - 60)),
        ("rx_packets", ctypes.c_uint64),
        ("tx_packets", ctypes.c_uint64),
    )


class VbdCtrl(_LE):
    _pack_ = 8
    _fields_ = (
        ("hdr", CtrlHdr),
        ("sectors", ctypes.c_uint64),
        ("sector_size", ctypes.c_uint32),
        ("mode", ctypes.c_uint32),
        ("host_pad", ctypes.c_uint8 * (CTRL_GUEST_OFFSET - 32)),
        ("reads", ctypes.c_uint64),
        ("writes", ctypes.c_uint64),
    )


# ---- host-side configuration (the host's own copy; never read back) ----


@dataclass(frozen=True)
class VifConfig:
    """One NIC as the guest will see it in its vif control page."""

    mac: bytes
    ip: str = "0.0.0.0"
    prefix: int = 0
    gateway: str = "0.0.0.0"
    mtu: int = 1500
    bridge: str = ""
    # The virtio-net device's own MAC when it is not ``mac`` (a NIC created in a prepared
    # shell before the vif's MAC was known): the guest finds its device by it and still
    # uses ``mac`` as its address. Empty: the device's MAC is ``mac`` (noxs_abi.h).
    dev_mac: bytes = b""

    def __post_init__(self) -> None:
        if len(self.mac) != 6:
            raise NoxsError(f"vif MAC must be 6 bytes, got {len(self.mac)}")
        if self.mac[0] & 1:
            raise NoxsError(f"vif MAC {format_mac(self.mac)} is multicast; use a unicast MAC")
        if self.dev_mac and (len(self.dev_mac) != 6 or self.dev_mac[0] & 1 or not any(self.dev_mac)):
            raise NoxsError(f"vif device MAC {self.dev_mac.hex(':')}: 6 bytes, unicast, not zero (or none)")
        if not 68 <= self.mtu <= 9000:
            raise NoxsError(f"vif MTU {self.mtu} out of range 68..9000")
        if not 0 <= self.prefix <= 32:
            raise NoxsError(f"vif prefix /{self.prefix} out of range 0..32")
        _ipv4_bytes(self.ip)
        _ipv4_bytes(self.gateway)
        if len(self.bridge.encode()) >= IFNAME_LEN:
            raise NoxsError(f"bridge name {self.bridge!r} longer than {IFNAME_LEN - 1} bytes")


@dataclass(frozen=True)
class VbdConfig:
    """One disk as the guest will see it in its vbd control page."""

    sectors: int
    sector_size: int = 512
    read_only: bool = False


@dataclass
class PageConfig:
    """Everything the host writes into a VM's NoXS region."""

    name: str
    uuid: uuidlib.UUID = field(default_factory=uuidlib.uuid4)
    vifs: list[VifConfig] = field(default_factory=list)
    vbds: list[VbdConfig] = field(default_factory=list)
    tsc_hz: int = 0
    nmi_doorbell: bool = False
    wait_config: bool = False  # a prepared shell's placeholder (FEAT_WAIT_CONFIG)
    console_bell: bool = False  # with wait_config: the host will ring the console bell (FEAT_CONSOLE_BELL)


@dataclass(frozen=True)
class BootRecord:
    """A validated copy of the guest-written boot record."""

    state: BootState
    error: GuestErrorCode
    tsc_hz: int
    tsc_entry: int
    tsc_devices_up: int
    tsc_ready: int
    heartbeat: int
    app_counter: int
    tsc_source: TscSource
    generation_seen: int
    app: str
    message: str

    def tsc_delta_ms(self, start: int, end: int) -> float | None:
        """Milliseconds between two guest TSC stamps, or None if unusable."""
        if not self.tsc_hz or not start or not end or end < start:
            return None
        return (end - start) * 1000.0 / self.tsc_hz


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def parse_mac(text: str) -> bytes:
    parts = text.split(":")
    try:
        if len(parts) != 6 or any(len(p) != 2 for p in parts):
            raise ValueError
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise NoxsError(f"bad MAC address {text!r}; expected six hex pairs like 52:54:00:12:34:56") from None


def _ipv4_bytes(text: str) -> bytes:
    parts = text.split(".")
    try:
        if len(parts) != 4:
            raise ValueError
        values = [int(p, 10) for p in parts]
        if any(not 0 <= v <= 255 for v in values):
            raise ValueError
    except ValueError:
        raise NoxsError(f"bad IPv4 address {text!r}") from None
    return bytes(values)


def _clean_text(raw: bytes) -> str:
    """Decode guest-written bytes as printable ASCII, bounded by the field size."""
    raw = raw.split(b"\0", 1)[0]
    return "".join(chr(b) if 32 <= b < 127 else "?" for b in raw)


def _enum_or(cls: type[enum.IntEnum], value: int, default: enum.IntEnum) -> enum.IntEnum:
    try:
        return cls(value)
    except ValueError:
        return default


def region_size_for(device_count: int) -> int:
    """Smallest power-of-two region holding the device page and the control pages."""
    if not 1 <= device_count <= MAX_DEVICES:
        raise NoxsError(f"a VM needs 1..{MAX_DEVICES} NoXS devices, got {device_count}")
    needed = (1 + device_count) * PAGE_SIZE
    size = REGION_MIN
    while size < needed:
        size *= 2
    if size > REGION_MAX:
        raise NoxsError(f"NoXS region of {size} bytes exceeds the {REGION_MAX}-byte maximum")
    return size


SYSCTL_OFFSET = PAGE_SIZE  # the sysctl control page always comes first


class NoxsRegion:
    """One VM's NoXS region: a shared-memory file mapped by the host.

    Create it with :meth:`create` (a new file) or :meth:`open` (re-adopt an
    existing one after a toolstack restart). It is a context manager;
    :meth:`close` unmaps, :meth:`unlink` removes the file.
    """

    def __init__(self, path: Path, fd: int, size: int) -> None:
        self.path = path
        self.size = size
        self._fd = fd
        self._map: mmap.mmap | None = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._config: PageConfig | None = None

    @classmethod
    def create(cls, path: Path, device_count: int) -> NoxsRegion:
        """Create a zeroed region file sized for ``device_count`` devices.

        :raise NoxsError: if the file exists or cannot be created.
        """
        size = region_size_for(device_count)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise NoxsError(f"cannot create NoXS region {path}: {exc.strerror}") from exc
        try:
            os.ftruncate(fd, size)
            return cls(path, fd, size)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise

    @classmethod
    def open(cls, path: Path) -> NoxsRegion:
        """Map an existing region file (e.g. to re-adopt a running VM).

        :raise NoxsError: if the file is missing or has an impossible size.
        """
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise NoxsError(f"cannot open NoXS region {path}: {exc.strerror}") from exc
        size = os.fstat(fd).st_size
        if size < REGION_MIN or size > REGION_MAX or size & (size - 1):
            os.close(fd)
            raise NoxsError(f"NoXS region {path} has impossible size {size}")
        return cls(path, fd, size)

    # -- lifetime --

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
            os.close(self._fd)

    def unlink(self) -> None:
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> NoxsRegion:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _buf(self) -> mmap.mmap:
        if self._map is None:
            raise NoxsError(f"NoXS region {self.path} is closed")
        return self._map

    # -- host writes --

    def write_config(self, config: PageConfig, host_time_ns: int | None = None) -> None:
        """Write the device page and every control page from ``config``.

        The sysctl device is always entry 0, then vifs, then vbds. The
        generation is odd while writing (a seqlock), so a guest that reads
        mid-rewrite (after migration) retries.

        :raise NoxsError: if the configuration does not fit the region.
        """
        devices: list[tuple[DevType, int]] = [(DevType.SYSCTL, 0)]
        devices += [(DevType.VIF, i) for i in range(len(config.vifs))]
        devices += [(DevType.VBD, i) for i in range(len(config.vbds))]
        if (1 + len(devices)) * PAGE_SIZE > self.size:
            raise NoxsError(f"{len(devices)} devices do not fit a {self.size}-byte NoXS region")
        name = config.name.encode()
        if len(name) > NAME_LEN:
            raise NoxsError(f"VM name longer than {NAME_LEN} bytes")

        buf = self._buf
        page = DevicePage.from_buffer(buf, 0)
        generation = page.generation
        page.generation = generation + 1 if generation % 2 == 0 else generation
        page.magic = MAGIC
        page.abi_version = ABI_VERSION
        page.header_size = ctypes.sizeof(DevicePage)
        page.features = (FEAT_TSC_HZ if config.tsc_hz else 0) | (FEAT_NMI_DOORBELL if config.nmi_doorbell else 0)
        page.features |= FEAT_WAIT_CONFIG if config.wait_config else 0
        page.features |= FEAT_CONSOLE_BELL if config.wait_config and config.console_bell else 0
        page.region_size = self.size
        page.dev_count = len(devices)
        page.host_time_ns = time.time_ns() if host_time_ns is None else host_time_ns
        page.tsc_hz = config.tsc_hz
        buf[_UUID_OFFSET : _UUID_OFFSET + 16] = config.uuid.bytes
        page.name = name
        for index, (dev_type, dev_id) in enumerate(devices):
            offset = (1 + index) * PAGE_SIZE
            page.devs[index] = DevEntry(dev_type, dev_id, 0, offset)
            self._write_ctrl(config, dev_type, dev_id, offset)
        # The unused entries in one slice (a DevEntry per slot cost ~40 % of a pool create's page write).
        unused = _DEVS_OFFSET + len(devices) * _DEV_ENTRY_SIZE
        buf[unused:_DEVS_END] = bytes(_DEVS_END - unused)
        page.generation = (page.generation | 1) + 1
        del page  # release the buffer export before anyone closes the map
        self._config = config

    def stamp_host_time(self, host_time_ns: int | None = None) -> None:
        """Rewrite only ``host_time_ns`` (under the seqlock), just before the guest runs.

        The guest sets its wall clock to ``host_time_ns`` at the moment it reads the page, so
        every millisecond between the stamp and that read puts the guest's clock behind by as
        much. :meth:`write_config` runs before QEMU starts; stamping again right before ``cont``
        leaves out QEMU's start-up (and, in tests, anything done while paused). A guest that
        already read the page sees the generation move and re-bases, as after a migration.
        """
        buf = self._buf
        page = DevicePage.from_buffer(buf, 0)
        page.generation = page.generation | 1
        page.host_time_ns = time.time_ns() if host_time_ns is None else host_time_ns
        page.generation = page.generation + 1
        del page

    def stamp_resume(self) -> bool:
        """Stamp ``host_time_ns`` for a guest whose vCPUs are about to run again after a stop
        (unpause, save --keep-running, a failed migration's source): its TSC stood still
        meanwhile (TCG), and the new generation makes it re-base its wall clock at this stamp
        (SPEC.md, "The wall clock"). Call it right before ``cont``, then ring the doorbell.

        A placeholder page (``FEAT_WAIT_CONFIG``: a prepared shell waiting for its real page)
        is left alone: a new generation there means "your page is written". :return: stamped.
        """
        if DevicePage.from_buffer_copy(self._buf, 0).features & FEAT_WAIT_CONFIG:
            return False
        self.stamp_host_time()
        return True

    def _write_ctrl(self, config: PageConfig, dev_type: DevType, dev_id: int, offset: int) -> None:
        buf = self._buf
        hdr = CtrlHdr.from_buffer(buf, offset)
        hdr.be_state = XenbusState.INITWAIT
        hdr.be_events += 1
        del hdr
        if dev_type == DevType.SYSCTL:
            sysctl = SysctlCtrl.from_buffer(buf, offset)
            sysctl.status_req = 0
            del sysctl
        elif dev_type == DevType.VIF:
            vif_cfg = config.vifs[dev_id]
            vif = VifCtrl.from_buffer(buf, offset)
            vif.mac[:] = list(vif_cfg.mac)
            vif.mtu = vif_cfg.mtu
            vif.ip[:] = list(_ipv4_bytes(vif_cfg.ip))
            vif.gateway[:] = list(_ipv4_bytes(vif_cfg.gateway))
            vif.prefix = vif_cfg.prefix
            vif.bridge = vif_cfg.bridge.encode()
            vif.dev_mac[:] = list(vif_cfg.dev_mac or bytes(6))
            del vif
        elif dev_type == DevType.VBD:
            vbd_cfg = config.vbds[dev_id]
            vbd = VbdCtrl.from_buffer(buf, offset)
            vbd.sectors = vbd_cfg.sectors
            vbd.sector_size = vbd_cfg.sector_size
            vbd.mode = VBD_RO if vbd_cfg.read_only else VBD_RW
            del vbd

    def request(self, bits: Sysctl) -> None:
        """Set sysctl request bits (e.g. POWEROFF) for the guest to act on."""
        sysctl = SysctlCtrl.from_buffer(self._buf, SYSCTL_OFFSET)
        sysctl.status_req |= int(bits)
        sysctl.hdr.be_events += 1
        del sysctl

    def set_backend_state(self, index: int, state: XenbusState) -> None:
        """Set the Xenbus backend state of device ``index`` (0 = sysctl)."""
        offset = (1 + index) * PAGE_SIZE
        if offset + PAGE_SIZE > self.size:
            raise NoxsError(f"no NoXS device {index} in this region")
        hdr = CtrlHdr.from_buffer(self._buf, offset)
        hdr.be_state = state
        hdr.be_events += 1
        del hdr

    # -- guest-written data, read defensively --

    def boot_record(self) -> BootRecord:
        """Copy and validate the guest's boot record (never trusts the guest)."""
        start = SYSCTL_OFFSET + SysctlCtrl.boot.offset
        raw = BootRecordRaw.from_buffer_copy(self._buf[start : start + ctypes.sizeof(BootRecordRaw)])
        return BootRecord(
            state=BootState(_enum_or(BootState, raw.state, BootState.UNKNOWN)),
            error=GuestErrorCode(_enum_or(GuestErrorCode, raw.error, GuestErrorCode.NONE)),
            tsc_hz=raw.tsc_hz,
            tsc_entry=raw.tsc_entry,
            tsc_devices_up=raw.tsc_devices_up,
            tsc_ready=raw.tsc_ready,
            heartbeat=raw.heartbeat,
            app_counter=raw.app_counter,
            tsc_source=TscSource(_enum_or(TscSource, raw.tsc_source, TscSource.UNKNOWN)),
            generation_seen=raw.generation_seen,
            app=_clean_text(bytes(raw.app)),
            message=_clean_text(bytes(raw.message)),
        )

    def rings_nmi_doorbell(self) -> bool:
        """Whether the page promises the guest NMIs as a doorbell (FEAT_NMI_DOORBELL). A host
        path that would wake the guest with ``inject-nmi`` asks this first: a Linux guest's
        page does not promise it, and Linux reports an unexpected NMI on its console."""
        return bool(DevicePage.from_buffer_copy(self._buf, 0).features & FEAT_NMI_DOORBELL)

    def boot_state(self) -> int:
        """The raw boot state word: the cheap read for a READY poll loop."""
        start = SYSCTL_OFFSET + SysctlCtrl.boot.offset
        return int.from_bytes(self._buf[start : start + 4], "little")

    def frontend_state(self, index: int) -> XenbusState:
        """The guest's Xenbus state for device ``index`` (validated)."""
        offset = (1 + index) * PAGE_SIZE + CtrlHdr.fe_state.offset
        if offset + 4 > self.size:
            raise NoxsError(f"no NoXS device {index} in this region")
        value = int.from_bytes(self._buf[offset : offset + 4], "little")
        return XenbusState(_enum_or(XenbusState, value, XenbusState.UNKNOWN))

    def raw(self) -> mmap.mmap:
        """The mapping itself, for tests that forge hostile page content."""
        return self._buf
