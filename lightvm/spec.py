"""The VM spec: parse and validate a config file before anything is created.

Two formats carry the same keys:

* TOML (``*.toml``)::

      name = "daytime"
      kernel = "../images/build/daytime.elf"   # relative to the config file's folder
      firmware = "../images/build/lvfw.bin"    # optional QEMU -bios; default: QEMU's own
      memory = "4M"                            # MiB as an int, or "4M" / "64M" / "1G"
      vcpus = 1
      cmdline = ""
      initrd = "initramfs.cpio"                # Linux guests only (a Tinyx image: `lightvm image build`)
      snapshot = "snapshot"                    # optional: start from this template when it fits
      [[vifs]]
      network = "lightvm0"                      # or bridge = "br0"; neither: user networking
      ip = "10.10.0.2/24"                       # also gateway, mac, mtu; publish = ["8013:13"]
      [[disks]]
      path = "data.img"
      readonly = true

* chaos-style JSON (``*.json``): one object with the same keys; as in chaos and
  xl, a vif or disk may also be written as one string of ``key=value`` pairs,
  e.g. ``"vifs": ["bridge=br0,ip=10.0.0.2/24,mac=52:54:00:12:34:56"]``.

Every problem is a :class:`SpecError` whose one-line message names the file and the
key. Unknown keys are errors. The kernel must exist and be an x86 ELF carrying the
PVH entry note, since that is how QEMU boots our guests without firmware. A Linux kernel
(its ELF notes name "Linux") needs an ``initrd`` and a unikernel must not have one, so
"has an initrd" is what tells the rest of lightvm that a guest is Linux (lightvm/linux.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightvm.errors import LightVMError, SpecError
from lightvm.linux import LINUX_MEMORY_MIB
from lightvm.util import NotRegularFileError, open_regular, read_regular

MEMORY_MIN_MIB = 2
MEMORY_MAX_MIB = 65536
VCPUS_MAX = 64
CMDLINE_MAX = 2048
# Room for a "-NNNN" suffix from `create -n` inside the NoXS name field.
NAME_MAX = 48
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

TOP_KEYS = ("name", "kernel", "firmware", "memory", "vcpus", "cmdline", "initrd", "vifs", "disks", "snapshot")
INITRD_MAX = 1 << 30
FIRMWARE_MAX = 16 << 20
CONFIG_MAX = 1 << 20  # a config file is a few hundred bytes; bounded read
DISK_KEYS = ("path", "readonly")

XEN_ELFNOTE_PHYS32_ENTRY = 18
EM_386 = 3
EM_X86_64 = 62
PT_NOTE = 4
NOTE_SCAN_MAX = 1 << 16


@dataclass(frozen=True)
class VifSpec:
    """One NIC as written in the config; devices/net.py validates it into a ``ValidVif``."""

    network: str | None = None
    bridge: str | None = None
    ip: str | None = None  # "a.b.c.d/prefix", or "a.b.c.d" on a network; None: the network's IPAM
    gateway: str | None = None
    mac: str | None = None  # normalised lower-case, or None to generate one
    mtu: int | None = None
    publish: tuple[str, ...] = ()  # user networking port forwards, "HOSTPORT:GUESTPORT[/udp]"


@dataclass(frozen=True)
class DiskSpec:
    path: Path
    readonly: bool = False


@dataclass(frozen=True)
class VMSpec:
    """A validated VM specification. ``source`` is the config file it came from."""

    name: str
    kernel: Path
    memory_mib: int = 16
    vcpus: int = 1
    cmdline: str = ""
    vifs: tuple[VifSpec, ...] = ()
    disks: tuple[DiskSpec, ...] = ()
    source: Path | None = field(default=None, compare=False)
    firmware: Path | None = None  # QEMU -bios image; None: QEMU's default firmware
    initrd: Path | None = None  # a Linux guest's initramfs; None: a unikernel
    # A template of this very VM booted once (an image's snapshot, lightvm/mobility/snapshot.py):
    # a one-shot create starts from it when it fits. Not checked here: a missing or stale
    # snapshot makes the create boot instead, and say why.
    snapshot: Path | None = None

    @property
    def is_linux(self) -> bool:
        return self.initrd is not None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able copy (absolute paths), as stored in the VM's state folder."""
        out = {
            "name": self.name,
            "kernel": str(self.kernel),
            "memory": self.memory_mib,
            "vcpus": self.vcpus,
            "cmdline": self.cmdline,
            "vifs": [{k: v for k, v in vars(vif).items() if v not in (None, ())} for vif in self.vifs],
            "disks": [{"path": str(d.path), "readonly": d.readonly} for d in self.disks],
            "firmware": str(self.firmware) if self.firmware else None,
            "initrd": str(self.initrd) if self.initrd else None,
        }
        if self.snapshot is not None:
            out["snapshot"] = str(self.snapshot)
        return out

    def with_name(self, name: str) -> VMSpec:
        check_name(name, what="name")
        return dataclasses.replace(self, name=name)

    def with_publish(self, publish: list[str] | tuple[str, ...], count: int = 1) -> VMSpec:
        """This spec with ``--publish`` forwards added to its first vif.

        :raise SpecError: no vif to forward to, or several VMs that would share the host port.
        """
        if not self.vifs:
            raise SpecError(f"{self.source}: --publish needs a vif: add a [[vifs]] table (empty = user networking)")
        if count > 1:
            raise SpecError("--publish with -n: the VMs would all want the same host port; publish one VM at a time")
        first = dataclasses.replace(self.vifs[0], publish=self.vifs[0].publish + tuple(publish))
        return dataclasses.replace(self, vifs=(first, *self.vifs[1:]))


def load_spec(path: str | Path, check_kernel: bool = True, overrides: Mapping[str, Any] | None = None) -> VMSpec:
    """Read and validate a TOML or JSON config file; ``overrides`` (``check_overrides``'s
    result: ``create cfg.toml memory=64M``) replace the file's keys before the whole is
    validated, so a combination the file alone would not have is refused too.

    :raise SpecError: naming the file and the key for any problem.
    """
    path = Path(path)
    try:
        raw = read_regular(path, CONFIG_MAX)  # never blocks on a FIFO, never reads /dev/zero
    except NotRegularFileError as exc:
        raise SpecError(f"{path}: config {exc.strerror}; name a TOML or JSON file") from exc
    except OSError as exc:
        raise SpecError(f"{path}: cannot read config: {exc.strerror}") from exc
    data = parse_text(raw, path)
    if overrides:
        data = {**data, **check_overrides(overrides)}
    return parse_spec(data, path, check_kernel=check_kernel)


# The keys ``create``/``run`` take as KEY=VALUE overrides (as xl's ``xl create cfg key=value``):
# the scalars. vifs and disks are tables, whose one-line form would be a second syntax.
OVERRIDE_KEYS = ("name", "kernel", "firmware", "memory", "vcpus", "cmdline", "initrd")
_PATH_KEYS = ("kernel", "firmware", "initrd")


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["memory=64M", "vcpus=2", "cmdline=a b"]`` -> checked overrides (:func:`check_overrides`).

    Why here and not in the CLI: lightvmd receives the resulting mapping and checks it again
    with :func:`check_overrides`, so both ends apply the same rules. Paths are made absolute
    against this process's working dir (the daemon has its own).

    :raise SpecError: an item that is not KEY=VALUE, an unknown key, or a bad value, naming the key.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise SpecError(f"override {item!r}: write KEY=VALUE (keys: {', '.join(OVERRIDE_KEYS)})")
        if key in _PATH_KEYS and value:
            value = os.path.abspath(value)
        if key == "vcpus" and value.strip().isdigit():
            out[key] = int(value)
        else:
            out[key] = value
    return check_overrides(out)


def check_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Each override checked alone by the checks :func:`parse_spec` applies to the same key
    (errors name ``override KEY=VALUE``, not the config file, which is not at fault);
    memory comes back in MiB. The whole spec is validated again once they are applied.

    :raise SpecError: an unknown key or a bad value, naming the key.
    """
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        what = f"override {key}={value!r}"
        if key not in OVERRIDE_KEYS:
            extra = "; vifs and disks are set in the config file" if key in TOP_KEYS else ""
            raise SpecError(f"{what}: unknown key {key!r} (keys: {', '.join(OVERRIDE_KEYS)}){extra}")
        if key == "memory":
            value = parse_memory(value, what)
        elif key == "vcpus":
            check_vcpus(value, what)
        elif key == "cmdline":
            check_cmdline(value, what)
        elif key == "name":
            if not isinstance(value, str):
                raise SpecError(f"{what}: expected a string, got {_kind(value)}")
            check_name(value, what)
        else:  # a path
            if not isinstance(value, str) or not value or not os.path.isabs(value):
                raise SpecError(f"{what}: expected an absolute path, got {_kind(value)}")
            if not os.path.isfile(value):
                raise SpecError(f"{what}: {value} does not exist or is not a file")
        out[key] = value
    return out


def check_vcpus(vcpus: object, what: str) -> None:
    """:raise SpecError: ``vcpus`` is not an integer in 1..VCPUS_MAX."""
    if not isinstance(vcpus, int) or isinstance(vcpus, bool):
        raise SpecError(f"{what}: expected an integer, got {_kind(vcpus)}")
    if not 1 <= vcpus <= VCPUS_MAX:
        raise SpecError(f"{what}: {vcpus} is out of range 1..{VCPUS_MAX}")


def check_cmdline(cmdline: object, what: str) -> None:
    """:raise SpecError: ``cmdline`` is not a string that fits the NoXS page (no NUL)."""
    if not isinstance(cmdline, str):
        raise SpecError(f"{what}: expected a string, got {_kind(cmdline)}")
    if len(cmdline.encode()) > CMDLINE_MAX or "\0" in cmdline:
        raise SpecError(f"{what}: longer than {CMDLINE_MAX} bytes or contains NUL")


def parse_text(raw: bytes, path: Path) -> dict[str, Any]:
    """Decode config bytes as JSON (``.json`` or a leading ``{``) or TOML.

    :raise SpecError: on malformed input.
    """
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: config is not UTF-8 text (byte {exc.start})") from exc
    is_json = path.suffix.lower() == ".json" or (path.suffix.lower() != ".toml" and text.lstrip().startswith("{"))
    if is_json:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"{path}: malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
        if not isinstance(data, dict):
            raise SpecError(f"{path}: malformed JSON: the top level must be an object, got {_kind(data)}")
        return data
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: malformed TOML: {exc}") from exc


def parse_spec(data: Mapping[str, Any], source: Path, check_kernel: bool = True) -> VMSpec:
    """Validate a decoded config mapping. Relative paths are taken from ``source``'s folder.

    :raise SpecError: naming the file and the key.
    """
    where = str(source)
    _unknown_keys(data, TOP_KEYS, where, "")
    base = source.parent

    name = data.get("name", source.stem)
    if not isinstance(name, str):
        raise SpecError(f"{where}: key 'name': expected a string, got {_kind(name)}")
    check_name(name, what=f"{where}: key 'name'")

    if "kernel" not in data:
        raise SpecError(f"{where}: missing key 'kernel' (path of the guest ELF)")
    kernel_raw = data["kernel"]
    if not isinstance(kernel_raw, str) or not kernel_raw:
        raise SpecError(f"{where}: key 'kernel': expected a path string, got {_kind(kernel_raw)}")
    kernel = (base / kernel_raw).resolve() if not Path(kernel_raw).is_absolute() else Path(kernel_raw)
    initrd = _parse_initrd(data.get("initrd"), where, base, check_kernel)
    if check_kernel:
        is_linux = check_kernel_file(kernel, f"{where}: key 'kernel'")
        if is_linux and initrd is None:
            raise SpecError(
                f"{where}: key 'kernel': {kernel} is a Linux kernel, which needs key 'initrd' "
                "(build an image with `lightvm image build APP`)"
            )
        if initrd is not None and not is_linux:
            raise SpecError(f"{where}: key 'initrd': {kernel} is not a Linux kernel; only Linux guests take an initrd")

    firmware = None
    if data.get("firmware") is not None:
        raw_fw = data["firmware"]
        if not isinstance(raw_fw, str) or not raw_fw:
            raise SpecError(f"{where}: key 'firmware': expected a path string, got {_kind(raw_fw)}")
        firmware = (base / raw_fw).resolve()
        if check_kernel:
            try:
                size = firmware.stat().st_size
            except OSError as exc:
                raise SpecError(f"{where}: key 'firmware': {firmware}: {exc.strerror}") from None
            if not firmware.is_file() or not 0 < size <= FIRMWARE_MAX or size % 4096:
                raise SpecError(f"{where}: key 'firmware': {firmware} is not a firmware image (size {size})")

    default_memory = LINUX_MEMORY_MIB if initrd is not None else 16
    memory = parse_memory(data.get("memory", default_memory), f"{where}: key 'memory'")
    vcpus = data.get("vcpus", 1)
    check_vcpus(vcpus, f"{where}: key 'vcpus'")
    cmdline = data.get("cmdline", "")
    check_cmdline(cmdline, f"{where}: key 'cmdline'")

    vifs = tuple(_parse_vif(item, f"{where}: key 'vifs[{i}]'") for i, item in enumerate(_list(data, "vifs", where)))
    disks = tuple(
        _parse_disk(item, f"{where}: key 'disks[{i}]'", base) for i, item in enumerate(_list(data, "disks", where))
    )
    snapshot = None
    if data.get("snapshot") is not None:
        raw_snap = data["snapshot"]
        if not isinstance(raw_snap, str) or not raw_snap:
            raise SpecError(f"{where}: key 'snapshot': expected a folder path string, got {_kind(raw_snap)}")
        snapshot = (base / raw_snap).resolve()
    return VMSpec(name, kernel, memory, vcpus, cmdline, vifs, disks, source, firmware, initrd, snapshot)


def _parse_initrd(raw: object, where: str, base: Path, check: bool) -> Path | None:
    """The ``initrd`` key: a path to a regular file of at most 1 GiB (when ``check``)."""
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw:
        raise SpecError(f"{where}: key 'initrd': expected a path string, got {_kind(raw)}")
    path = (base / raw).resolve()
    if check:
        try:
            st = path.stat()
        except OSError as exc:
            raise SpecError(f"{where}: key 'initrd': {path}: {exc.strerror}") from None
        if not path.is_file() or not 0 < st.st_size <= INITRD_MAX:
            raise SpecError(f"{where}: key 'initrd': {path} is not a file of 1 byte..1 GiB (size {st.st_size})")
    return path


CREATE_MAX = 4096  # VMs one create makes at most (-n)


def create_names(base: str, count: int) -> list[str]:
    """The names ``create -n COUNT`` gives: ``base``, or ``base-0`` .. ``base-(COUNT-1)``.

    :raise SpecError: an invalid name; :raise LightVMError: COUNT out of 1..CREATE_MAX.
    """
    check_name(base, "--name")
    if not 1 <= count <= CREATE_MAX:
        raise LightVMError(f"-n {count}: create between 1 and {CREATE_MAX} VMs at a time")
    names = [base] if count == 1 else [f"{base}-{i}" for i in range(count)]
    for n in names:
        check_name(n, "VM name")
    return names


def check_name(name: str, what: str = "name") -> None:
    """:raise SpecError: if ``name`` cannot name a VM (folder, NoXS name field)."""
    if not name or len(name) > NAME_MAX or not NAME_RE.match(name):
        raise SpecError(
            f"{what}: invalid VM name {name!r}: use 1..{NAME_MAX} letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        )


_MEM_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_MEM_SCALE_KIB = {"K": 1, "M": 1024, "G": 1024 * 1024, "T": 1024 * 1024 * 1024}


def parse_memory(value: object, what: str) -> int:
    """Memory in MiB from an int (MiB) or a string like "4M", "64MiB", "1G", "8192K".

    :raise SpecError: on a bad type, unit, or a size outside 2 MiB..64 GiB.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise SpecError(f'{what}: expected MiB as an integer or a size string like "64M", got {_kind(value)}')
    if isinstance(value, int):
        mib = value
    else:
        match = _MEM_RE.match(value)
        if not match:
            raise SpecError(f'{what}: cannot parse size {value!r}; write e.g. "4M", "64M" or "1G"')
        kib = int(match.group(1)) * _MEM_SCALE_KIB[(match.group(2) or "M").upper()]
        if kib % 1024:
            raise SpecError(f"{what}: {value!r} is not a whole number of MiB")
        mib = kib // 1024
    if mib < MEMORY_MIN_MIB:
        raise SpecError(f"{what}: {mib} MiB is below the {MEMORY_MIN_MIB} MiB minimum")
    if mib > MEMORY_MAX_MIB:
        raise SpecError(f"{what}: {mib} MiB is above the {MEMORY_MAX_MIB} MiB maximum")
    return mib


def check_kernel_file(path: Path, what: str) -> bool:
    """Check that ``path`` is a readable x86 ELF with the PVH entry note (cheap: bounded reads).
    Returns whether it is a Linux kernel (a note named "Linux"), not one of our unikernels.

    :raise SpecError: naming ``what`` and the problem.
    """
    try:
        with os.fdopen(open_regular(path), "rb") as f:  # a FIFO would block the open forever
            head = f.read(64)
            if head[:4] != b"\x7fELF":
                raise SpecError(f"{what}: {path} is not an ELF file (bad magic); build the guest with `make -C images`")
            if len(head) < 52 or head[5] != 1 or head[4] not in (1, 2):
                raise SpecError(f"{what}: {path} is not a little-endian 32/64-bit ELF")
            is64 = head[4] == 2
            machine = struct.unpack_from("<H", head, 18)[0]
            if machine not in (EM_386, EM_X86_64):
                raise SpecError(f"{what}: {path} is an ELF for machine {machine}, not x86")
            names = _note_names(f, head, is64)
            if (b"Xen", XEN_ELFNOTE_PHYS32_ENTRY) not in names:
                raise SpecError(
                    f"{what}: {path} has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); QEMU cannot boot it directly"
                )
            return any(name == b"Linux" for name, _ in names)
    except FileNotFoundError:
        raise SpecError(f"{what}: kernel {path} does not exist") from None
    except IsADirectoryError:
        raise SpecError(f"{what}: kernel {path} is a directory") from None
    except NotRegularFileError as exc:
        raise SpecError(f"{what}: kernel {path} {exc.strerror}") from None
    except OSError as exc:
        raise SpecError(f"{what}: cannot read kernel {path}: {exc.strerror}") from exc


def _note_names(f: Any, head: bytes, is64: bool) -> set[tuple[bytes, int]]:
    """(name, type) of every ELF note in the PT_NOTE segments (bounded reads)."""
    found: set[tuple[bytes, int]] = set()
    if is64:
        if len(head) < 64:
            return found
        phoff = struct.unpack_from("<Q", head, 32)[0]
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
    else:
        phoff = struct.unpack_from("<I", head, 28)[0]
        phentsize, phnum = struct.unpack_from("<HH", head, 42)
    if phnum == 0 or phnum > 128 or phentsize < (56 if is64 else 32):
        return found
    f.seek(phoff)
    table = f.read(phentsize * phnum)
    for i in range(phnum):
        entry = table[i * phentsize : (i + 1) * phentsize]
        if len(entry) < phentsize:
            return found
        p_type = struct.unpack_from("<I", entry, 0)[0]
        if p_type != PT_NOTE:
            continue
        if is64:
            offset, filesz = struct.unpack_from("<Q", entry, 8)[0], struct.unpack_from("<Q", entry, 32)[0]
        else:
            offset, filesz = struct.unpack_from("<I", entry, 4)[0], struct.unpack_from("<I", entry, 16)[0]
        f.seek(offset)
        found |= _notes_in(f.read(min(filesz, NOTE_SCAN_MAX)))
    return found


def _notes_in(notes: bytes) -> set[tuple[bytes, int]]:
    found: set[tuple[bytes, int]] = set()
    pos = 0
    while pos + 12 <= len(notes):
        namesz, descsz, ntype = struct.unpack_from("<III", notes, pos)
        pos += 12
        name = notes[pos : pos + namesz]
        pos += (namesz + 3) & ~3
        pos += (descsz + 3) & ~3
        found.add((name.rstrip(b"\0"), ntype))
    return found


def _parse_vif(item: object, where: str) -> VifSpec:
    """Config-format concerns only (chaos ``k=v`` strings, numeric strings); the vif
    device module owns the field rules, so a bad vif is refused here, before anything
    is created, by the same checks the toolstack relies on."""
    from lightvm.devices import net

    table = _table_or_kv(item, where)
    _unknown_keys(table, net.VIF_KEYS, where, "")
    mtu = table.get("mtu")
    if isinstance(mtu, str) and mtu.isdigit():
        table["mtu"] = int(mtu)
    publish = table.get("publish", ())
    if isinstance(publish, str):
        publish = (publish,)
    if not isinstance(publish, list | tuple) or not all(isinstance(p, str) for p in publish):
        raise SpecError(f'{where}.publish: expected a list of "HOSTPORT:GUESTPORT" strings, got {_kind(publish)}')
    table["publish"] = tuple(publish)
    vif = net.validate(table, where)
    # publish stays as written (it is re-parsed when the spec is read back from state).
    return VifSpec(vif.network, vif.bridge, vif.ip, vif.gateway, vif.mac, vif.mtu, tuple(publish))


def _parse_disk(item: object, where: str, base: Path) -> DiskSpec:
    table = _table_or_kv(item, where)
    _unknown_keys(table, DISK_KEYS, where, "")
    raw = table.get("path")
    if not isinstance(raw, str) or not raw:
        raise SpecError(f"{where}.path: expected a path string, got {_kind(raw)}")
    path = (base / raw).resolve()
    if not path.is_file():
        raise SpecError(f"{where}.path: disk image {path} does not exist or is not a file")
    readonly = table.get("readonly", False)
    if isinstance(readonly, str) and readonly.lower() in ("true", "false", "yes", "no", "1", "0"):
        readonly = readonly.lower() in ("true", "yes", "1")
    if not isinstance(readonly, bool):
        raise SpecError(f"{where}.readonly: expected true or false, got {_kind(readonly)}")
    return DiskSpec(path, readonly)


def _table_or_kv(item: object, where: str) -> dict[str, Any]:
    if isinstance(item, dict):
        return item
    if isinstance(item, str):
        table: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in item.split(","))):
            key, sep, value = part.partition("=")
            if not sep:
                raise SpecError(f"{where}: expected key=value pairs separated by commas, got {part!r}")
            table[key.strip()] = value.strip()
        return table
    raise SpecError(f'{where}: expected a table or a "key=value,..." string, got {_kind(item)}')


def _list(data: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise SpecError(f"{where}: key '{key}': expected a list, got {_kind(value)}")
    return value


def _unknown_keys(data: Mapping[str, Any], allowed: tuple[str, ...], where: str, prefix: str) -> None:
    for key in data:
        if key not in allowed:
            raise SpecError(f"{where}: unknown key '{prefix}{key}' (allowed: {', '.join(allowed)})")


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return f"boolean {value}".lower()
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {value!r}"
