"""tinyx/image/kpack.py on a synthetic vmlinux-shaped ELF: the packed file parses (our
parser, readelf, lightvm's spec check), keeps the PVH note, and loads the same bytes at the
same addresses except the padding it drops (int3 runs in code, bytes in no section)."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from lightvm.errors import TinyxError
from lightvm.spec import check_kernel_file
from tinyx.image import kpack

BASE = 0x1000000
VBASE = 0xFFFFFFFF80000000 + BASE
MB2 = 0x200000


def note(name: bytes, ntype: int, desc: bytes) -> bytes:
    def pad(b: bytes) -> bytes:
        return b + b"\0" * (-len(b) % 4)

    return struct.pack("<III", len(name) + 1, len(desc), ntype) + pad(name + b"\0") + pad(desc)


def synthetic() -> tuple[bytes, dict[str, tuple[int, int]]]:
    """An ELF laid out like the 6.1 vmlinux: text (code, a 2 MiB-aligned int3 gap, entry
    code), a gap in no section, rodata holding the notes, then data with a bss tail."""
    code1 = bytes(range(256)) * 0x300  # 192 KiB of "code"
    entry = b"\x90" * 0x1126
    text = code1 + b"\xcc" * (MB2 - len(code1)) + entry
    notes = note(b"Linux", 6, b"\0\0\0\0") + note(b"Xen", 18, struct.pack("<Q", BASE + 0x480))
    rodata = b"R" * 0x3000 + notes
    ro_addr = 2 * MB2  # rodata 2 MiB aligned: [len(text), 4 MiB) is in no section
    data = b"D" * 0x5000 + b"\0" * 0x3000  # zeros inside a section stay
    data_addr = 3 * MB2
    seg0_size = ro_addr + len(rodata)
    names = b"\0.text\0.rodata\0.data\0.bss\0.shstrtab\0"
    sections = [  # (name offset, type, flags, addr offset, file offset, size)
        (1, 1, 0x6, 0, 0x200000, len(text)),
        (7, 1, 0x2, ro_addr, 0x200000 + ro_addr, len(rodata)),
        (15, 1, 0x3, data_addr, 0x200000 + data_addr, len(data)),
        (21, 8, 0x3, data_addr + len(data), 0x200000 + data_addr + len(data), 0x4000),
    ]
    body = bytearray(b"\0" * (0x200000 + data_addr + len(data)))
    body[0x200000 : 0x200000 + len(text)] = text
    body[0x200000 + len(text) : 0x200000 + ro_addr] = b"\x11" * (ro_addr - len(text))  # padding fill
    body[0x200000 + ro_addr : 0x200000 + seg0_size] = rodata
    body[0x200000 + data_addr :] = data
    shstr_off = len(body)
    body += names
    shoff = len(body) + (-len(body) % 8)
    body += b"\0" * (shoff - len(body))
    shdrs = [b"\0" * 64]
    for name, stype, flags, a, off, size in sections:
        shdrs.append(kpack.SHDR.pack(name, stype, flags, VBASE + a, off, size, 0, 0, 16, 0))
    shdrs.append(kpack.SHDR.pack(27, 3, 0, 0, shstr_off, len(names), 0, 0, 1, 0))
    body += b"".join(shdrs)
    phdrs = [
        (1, 5, 0x200000, VBASE, BASE, seg0_size, seg0_size, MB2),
        (1, 6, 0x200000 + data_addr, VBASE + data_addr, BASE + data_addr, len(data), len(data) + 0x4000, MB2),
        (4, 4, 0x200000 + ro_addr + 0x3000, VBASE + ro_addr + 0x3000, BASE + ro_addr + 0x3000, len(notes),
         len(notes), 4),
    ]  # fmt: skip
    ehdr = kpack.EHDR.pack(b"\x7fELF\x02\x01\x01" + b"\0" * 9, 2, 62, 1, BASE, 64, shoff, 0, 64, 56, len(phdrs), 64,
                           len(shdrs), len(shdrs) - 1)  # fmt: skip
    head = ehdr + b"".join(kpack.PHDR.pack(*p) for p in phdrs)
    body[: len(head)] = head
    ranges = {"code1": (0, len(code1)), "entry": (MB2, MB2 + len(entry)), "rodata": (ro_addr, seg0_size),
              "data": (data_addr, data_addr + len(data))}  # fmt: skip
    return bytes(body), ranges


def memory(data: bytes) -> dict[int, int]:
    """guest physical address -> the (filesz, memsz) end of each PT_LOAD, for the bss check."""
    return {s.paddr: s.paddr + s.memsz for s in kpack.parse(data).segments if s.type == kpack.PT_LOAD}


def read_at(image: dict[int, bytes], addr: int, n: int) -> bytes:
    for base, b in image.items():
        if base <= addr and addr + n <= base + len(b):
            return b[addr - base : addr - base + n]
    raise AssertionError(f"{addr:#x}+{n:#x} is not loaded")


def test_pack_keeps_every_section_byte_and_drops_the_padding(tmp_path: Path) -> None:
    raw, ranges = synthetic()
    packed = kpack.pack(raw)
    content = sum(hi - lo for lo, hi in ranges.values())  # ~0.24 MB in a 6.3 MB file
    assert content <= packed.loaded_bytes <= content + 4 * kpack.PAGE  # partial pages only
    assert len(packed.data) <= packed.loaded_bytes + 8 * kpack.PAGE
    before, after = kpack.loaded_image(raw), kpack.loaded_image(packed.data)
    assert packed.loaded_bytes == sum(len(b) for b in after.values())
    assert sum(len(b) for b in before.values()) > 2 * MB2  # text + gap + rodata, data
    for lo, hi in ranges.values():  # every byte of a section's content, at the same address
        assert read_at(after, BASE + lo, hi - lo) == read_at(before, BASE + lo, hi - lo)
    # the int3 gap and the bytes in no section are gone, whole pages only
    for base, b in after.items():
        assert b"\xcc" * kpack.MIN_GAP not in b and b"\x11" * kpack.PAGE not in b
        assert base % kpack.PAGE == 0
    # the bss tail is still zero-filled memory after the data segment's last piece
    assert max(memory(packed.data).values()) == max(memory(raw).values())
    # file offsets are congruent with the addresses (ELF's rule for p_align)
    for s in kpack.parse(packed.data).segments:
        if s.type == kpack.PT_LOAD:
            assert s.offset % kpack.PAGE == s.vaddr % kpack.PAGE
    assert not kpack.parse(packed.data).sections  # no section headers, no symbols

    out = tmp_path / "vmlinux"
    out.write_bytes(packed.data)
    notes = subprocess.run(["readelf", "-lnW", str(out)], capture_output=True, text=True, timeout=30, check=True)
    assert "0x00000012" in notes.stdout and "Xen" in notes.stdout and "Warning" not in notes.stderr
    assert check_kernel_file(out, "kernel") is True  # lightvm's own check: PVH note, Linux note
    # packing a packed file changes nothing (no sections: every piece is kept)
    assert kpack.pack(packed.data).data == packed.data


def test_packed_kernel_is_cached_by_content(tmp_path: Path) -> None:
    raw, _ = synthetic()
    src = tmp_path / "vmlinux"
    src.write_bytes(raw)
    path, sizes, state = kpack.packed_kernel(src, tmp_path / "cache")
    assert state == "built" and path.read_bytes() == kpack.pack(raw).data
    assert sizes["vmlinux_bytes"] == len(raw) and sizes["file_bytes"] == path.stat().st_size
    assert sizes["loaded_bytes"] < sizes["vmlinux_loaded_bytes"]
    again, _, state2 = kpack.packed_kernel(src, tmp_path / "cache")
    assert (again, state2) == (path, "cached")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [path.parent.name]  # no .tmp left


def test_refuses_what_is_not_an_x86_64_elf() -> None:
    with pytest.raises(TinyxError, match="not an ELF64"):
        kpack.pack(b"MZ" + b"\0" * 100)
    raw, _ = synthetic()
    with pytest.raises(TinyxError, match="truncated"):
        kpack.pack(raw[:0x300000])
