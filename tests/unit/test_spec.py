"""Spec parsing and validation: no QEMU, no root. Every error is one line naming file and key."""

from __future__ import annotations

import json
import struct
import uuid
from pathlib import Path

import pytest

from lightvm.errors import SpecError
from lightvm.spec import MEMORY_MAX_MIB, DiskSpec, load_spec, parse_memory


def make_elf(path: Path, pvh: bool = True, machine: int = 62, linux: bool = False) -> Path:
    """A minimal ELF64 with one PT_NOTE segment holding (or not) the Xen PVH note, and with
    ``linux`` a "Linux" note after it (as a vmlinux carries)."""
    name = b"Xen\0"
    note = struct.pack("<III", len(name), 4, 18 if pvh else 5) + name + struct.pack("<I", 0x100000)
    if linux:
        note += struct.pack("<III", 6, 4, 0x100) + b"Linux\0\0\0" + struct.pack("<I", 0)
    ehdr_size, phdr_size = 64, 56
    ehdr = bytearray(ehdr_size)
    ehdr[:4] = b"\x7fELF"
    ehdr[4], ehdr[5], ehdr[6] = 2, 1, 1
    struct.pack_into("<HHI", ehdr, 16, 2, machine, 1)
    struct.pack_into("<Q", ehdr, 32, ehdr_size)  # e_phoff
    struct.pack_into("<HHH", ehdr, 52, ehdr_size, phdr_size, 1)  # ehsize, phentsize, phnum
    phdr = struct.pack("<IIQQQQQQ", 4, 4, ehdr_size + phdr_size, 0, 0, len(note), len(note), 4)
    path.write_bytes(bytes(ehdr) + phdr + note)
    return path


@pytest.fixture
def kernel(tmp_path: Path) -> Path:
    return make_elf(tmp_path / "guest.elf")


def write(tmp_path: Path, text: str, name: str = "vm.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path: Path) -> str:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    return message


def test_minimal_toml(tmp_path: Path, kernel: Path) -> None:
    spec = load_spec(write(tmp_path, 'kernel = "guest.elf"\n'))
    assert spec.name == "vm"  # from the file name
    assert spec.kernel == kernel.resolve()
    assert (spec.memory_mib, spec.vcpus, spec.cmdline, spec.vifs, spec.disks) == (16, 1, "", (), ())


def test_full_toml(tmp_path: Path, kernel: Path) -> None:
    (tmp_path / "d.img").write_bytes(b"\0" * 4096)
    spec = load_spec(
        write(
            tmp_path,
            """
name = "web-1"
kernel = "guest.elf"
memory = "64M"
vcpus = 2
cmdline = "quiet"
[[vifs]]
network = "lv0"
ip = "10.0.0.5/24"
mac = "52:54:00:AA:BB:CC"
mtu = 1400
[[disks]]
path = "d.img"
readonly = true
""",
        )
    )
    assert (spec.name, spec.memory_mib, spec.vcpus, spec.cmdline) == ("web-1", 64, 2, "quiet")
    assert spec.vifs[0].network == "lv0" and spec.vifs[0].ip == "10.0.0.5/24"
    assert spec.vifs[0].mac == "52:54:00:aa:bb:cc" and spec.vifs[0].mtu == 1400
    assert spec.disks == (DiskSpec((tmp_path / "d.img").resolve(), True),)


def test_chaos_json_with_xl_strings(tmp_path: Path, kernel: Path) -> None:
    data = {"name": "j", "kernel": str(kernel), "memory": 8, "vifs": ["bridge=br0,ip=10.1.0.2/16,mtu=1500"]}
    spec = load_spec(write(tmp_path, json.dumps(data), "vm.json"))
    assert spec.memory_mib == 8
    assert spec.vifs[0].bridge == "br0" and spec.vifs[0].ip == "10.1.0.2/16" and spec.vifs[0].mtu == 1500


def test_to_dict_round_trips_as_json(tmp_path: Path, kernel: Path) -> None:
    spec = load_spec(write(tmp_path, 'kernel = "guest.elf"\n[[vifs]]\n'))
    assert json.loads(json.dumps(spec.to_dict()))["kernel"] == str(kernel.resolve())


@pytest.mark.parametrize(
    ("value", "mib"),
    [(4, 4), ("4M", 4), ("64M", 64), ("64MiB", 64), ("1G", 1024), ("8192K", 8), ("2 M", 2), ("16", 16)],
)
def test_memory_sizes(value: object, mib: int) -> None:
    assert parse_memory(value, "memory") == mib


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (0, "below"),
        ("0M", "below"),
        (1, "below"),
        (MEMORY_MAX_MIB + 1, "above"),
        ("1T", "above"),
        ("10000000000000", "above"),
        ("12X", "cannot parse"),
        ("1500K", "whole number"),
        (True, "expected"),
        (1.5, "expected"),
    ],
)
def test_memory_errors(value: object, words: str) -> None:
    with pytest.raises(SpecError, match=words):
        parse_memory(value, "memory")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('kernel = "guest.elf"\nmemroy = 4\n', "unknown key 'memroy'"),
        ('kernel = "guest.elf"\nmemory = 0\n', "key 'memory'"),
        ('kernel = "guest.elf"\nmemory = "999999G"\n', "key 'memory'"),
        ('kernel = "guest.elf"\nvcpus = 0\n', "key 'vcpus'"),
        ('kernel = "guest.elf"\nvcpus = "two"\n', "key 'vcpus'"),
        ('kernel = "guest.elf"\nname = "bad name"\n', "key 'name'"),
        ('kernel = "guest.elf"\nname = 5\n', "key 'name'"),
        ('kernel = "guest.elf"\ncmdline = 5\n', "key 'cmdline'"),
        ('kernel = "missing.elf"\n', "does not exist"),
        ("memory = 4\n", "missing key 'kernel'"),
        ('kernel = "guest.elf"\nvifs = 3\n', "key 'vifs'"),
        ('kernel = "guest.elf"\n[[vifs]]\nfoo = 1\n', "unknown key 'foo'"),
        ('kernel = "guest.elf"\n[[vifs]]\nip = "10.0.0.300/24"\n', "vifs[0]"),
        ('kernel = "guest.elf"\n[[vifs]]\nmac = "01:00:00:00:00:01"\n', "multicast"),
        ('kernel = "guest.elf"\n[[vifs]]\nnetwork = "a"\nbridge = "b"\n', "not both"),
        ('kernel = "guest.elf"\n[[vifs]]\nmtu = 20\n', "mtu"),
        ('kernel = "guest.elf"\n[[disks]]\npath = "nope.img"\n', "disks[0]"),
        ('kernel = "guest.elf"\nmemory = [\n', "malformed TOML"),
        ('kernel = "guest.elf"\nkernel = "x"\n', "malformed TOML"),
    ],
)
def test_toml_errors_name_the_key(tmp_path: Path, kernel: Path, text: str, words: str) -> None:
    assert words in error_of(write(tmp_path, text))


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('{"kernel": "guest.elf",}', "malformed JSON"),
        ('{"kernel": "guest.elf"', "malformed JSON"),
        ('["kernel"]', "top level must be an object"),
        ('{"kernel": "guest.elf", "extra": 1}', "unknown key 'extra'"),
    ],
)
def test_json_errors(tmp_path: Path, kernel: Path, text: str, words: str) -> None:
    assert words in error_of(write(tmp_path, text, "vm.json"))


def test_non_elf_kernel(tmp_path: Path) -> None:
    (tmp_path / "k").write_bytes(b"MZ not an elf at all" * 10)
    assert "not an ELF" in error_of(write(tmp_path, 'kernel = "k"\n'))


def test_elf_without_pvh_note(tmp_path: Path) -> None:
    make_elf(tmp_path / "k", pvh=False)
    assert "PVH" in error_of(write(tmp_path, 'kernel = "k"\n'))


def test_elf_for_another_machine(tmp_path: Path) -> None:
    make_elf(tmp_path / "k", machine=183)  # aarch64
    assert "not x86" in error_of(write(tmp_path, 'kernel = "k"\n'))


def test_kernel_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "k").mkdir()
    assert "directory" in error_of(write(tmp_path, 'kernel = "k"\n'))


def test_empty_and_truncated_kernel(tmp_path: Path) -> None:
    (tmp_path / "k").write_bytes(b"")
    assert "not an ELF" in error_of(write(tmp_path, 'kernel = "k"\n'))
    (tmp_path / "k").write_bytes(b"\x7fELF\x02\x01")
    assert "ELF" in error_of(write(tmp_path, 'kernel = "k"\n'))


def test_missing_config(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read config"):
        load_spec(tmp_path / "none.toml")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "vm.toml"
    path.write_bytes(b'kernel = "\xff"\n')
    assert "UTF-8" in error_of(path)


def test_real_images_pass_the_kernel_check(images: Path) -> None:
    """The repo's guests (built by the ``images`` fixture) carry the PVH note; the check must accept them."""
    from lightvm.spec import check_kernel_file

    elfs = sorted(images.glob("*.elf"))
    assert {"noop.elf", "daytime.elf"} <= {p.name for p in elfs}, elfs
    for elf in elfs:
        check_kernel_file(elf, "kernel")


def test_firmware_key(tmp_path: Path, kernel: Path) -> None:
    (tmp_path / "fw.bin").write_bytes(b"\0" * 65536)
    spec = load_spec(write(tmp_path, 'kernel = "guest.elf"\nfirmware = "fw.bin"\n'))
    assert spec.firmware == (tmp_path / "fw.bin").resolve()
    assert spec.to_dict()["firmware"] == str(spec.firmware)
    assert "key 'firmware'" in error_of(write(tmp_path, 'kernel = "guest.elf"\nfirmware = "none.bin"\n'))
    (tmp_path / "odd.bin").write_bytes(b"\0" * 100)
    assert "not a firmware image" in error_of(write(tmp_path, 'kernel = "guest.elf"\nfirmware = "odd.bin"\n'))


def test_with_name_keeps_everything_else(tmp_path: Path, kernel: Path) -> None:
    spec = load_spec(write(tmp_path, 'kernel = "guest.elf"\nmemory = 8\n[[vifs]]\n'))
    renamed = spec.with_name("other")
    assert renamed.name == "other" and renamed.memory_mib == 8 and renamed.vifs == spec.vifs
    with pytest.raises(SpecError):
        spec.with_name("bad name")


def test_vif_ip_without_prefix_stays_bare(tmp_path: Path, kernel: Path) -> None:
    spec = load_spec(write(tmp_path, 'kernel = "guest.elf"\n[[vifs]]\nnetwork = "n"\nip = "10.0.0.7"\n'))
    assert spec.vifs[0].ip == "10.0.0.7"


def test_examples_parse() -> None:
    examples = Path(__file__).resolve().parents[2] / "examples"
    paths = sorted(examples.glob("*.toml")) + sorted(examples.glob("*.json"))
    specs = [load_spec(p, check_kernel=False) for p in paths]  # unit tests do not need built images
    assert {s.name for s in specs} >= {"noop", "daytime", "noop-json"}
    daytime = next(s for s in specs if s.name == "daytime")
    assert len(daytime.vifs) == 1 and daytime.memory_mib == 4


def test_initrd_makes_a_linux_guest(tmp_path: Path) -> None:
    make_elf(tmp_path / "vmlinux", linux=True)
    (tmp_path / "initramfs.cpio").write_bytes(b"070701" + bytes(100))
    spec = load_spec(write(tmp_path, 'kernel = "vmlinux"\ninitrd = "initramfs.cpio"\n'))
    assert spec.is_linux and spec.initrd == (tmp_path / "initramfs.cpio").resolve()
    assert spec.memory_mib == 128  # a Linux guest's default; a unikernel's stays 16
    assert spec.to_dict()["initrd"] == str(spec.initrd)
    from lightvm.daemon.flavour import poolable

    assert poolable(spec) is None  # lvinit has the wait point: lightvmd pools Tinyx shells too
    assert (
        load_spec(write(tmp_path, 'kernel = "vmlinux"\ninitrd = "initramfs.cpio"\nmemory = "64M"\n')).memory_mib == 64
    )


def test_initrd_errors(tmp_path: Path, kernel: Path) -> None:
    make_elf(tmp_path / "vmlinux", linux=True)
    (tmp_path / "initramfs.cpio").write_bytes(b"070701")
    (tmp_path / "empty.cpio").write_bytes(b"")
    assert "needs key 'initrd'" in error_of(write(tmp_path, 'kernel = "vmlinux"\n'))
    assert "lightvm image build" in error_of(write(tmp_path, 'kernel = "vmlinux"\n'))
    assert "not a Linux kernel" in error_of(write(tmp_path, 'kernel = "guest.elf"\ninitrd = "initramfs.cpio"\n'))
    assert "No such file" in error_of(write(tmp_path, 'kernel = "vmlinux"\ninitrd = "missing.cpio"\n'))
    assert "size 0" in error_of(write(tmp_path, 'kernel = "vmlinux"\ninitrd = "empty.cpio"\n'))
    assert "expected a path string" in error_of(write(tmp_path, 'kernel = "vmlinux"\ninitrd = 3\n'))
    assert "is not a file" in error_of(write(tmp_path, 'kernel = "vmlinux"\ninitrd = "."\n'))


def test_linux_machine_config(tmp_path: Path) -> None:
    """A Linux guest's QEMU: -initrd, rtc=on, and tsc_early_khz= from the host's TSC rate
    under TCG (lightvm/linux.py says why); a unikernel's keeps rtc=off and its own cmdline."""
    from lightvm import hostfacts
    from lightvm.instance import machine_config
    from lightvm.machine import build_argv
    from lightvm.state import VMDir, VMRecord

    make_elf(tmp_path / "vmlinux", linux=True)
    (tmp_path / "initramfs.cpio").write_bytes(b"070701" + bytes(100))
    spec = load_spec(write(tmp_path, 'kernel = "vmlinux"\ninitrd = "initramfs.cpio"\ncmdline = "loglevel=3"\n'))
    vmdir = VMDir(tmp_path / "vm")
    record = VMRecord.new("t", "id1", str(uuid.uuid4()), "tcg", 8192, spec.to_dict())
    argv = build_argv(machine_config(vmdir, record), qmp_fd=3)
    assert argv[argv.index("-initrd") + 1] == str(spec.initrd)
    assert "rtc=on" in argv[argv.index("-M") + 1]
    assert argv[argv.index("-append") + 1] == (
        f"console=ttyS0 quiet random.trust_cpu=on tsc=reliable tsc_early_khz={hostfacts.tsc_hz() // 1000} loglevel=3"
    )
    assert argv[argv.index("-cpu") + 1] == "qemu64,+rdrand"  # TCG's RDRAND seeds the kernel's generator
    unikernel = VMRecord.new(
        "u", "id2", str(uuid.uuid4()), "tcg", 8192, {**spec.to_dict(), "initrd": None, "cmdline": "x"}
    )
    argv = build_argv(machine_config(vmdir, unikernel), qmp_fd=3)
    assert "-initrd" not in argv and "-cpu" not in argv and "rtc=off" in argv[argv.index("-M") + 1]
    assert argv[argv.index("-append") + 1] == "x"
