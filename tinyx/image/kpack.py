"""The kernel file an image ships: the vmlinux without symbols and without padding.

x86-64's linker script aligns the kernel's text, rodata and data to 2 MiB, and the three
PT_LOAD segments' file offsets mirror those addresses: the 6.1 platform vmlinux is ~15 MB
on disk for ~4 MB of code and data. QEMU's PVH loader (load_elf) copies each PT_LOAD's
``p_filesz`` bytes from ``p_offset`` to ``p_paddr`` and finds the entry in the
XEN_ELFNOTE_PHYS32_ENTRY note of a PT_NOTE segment; it reads no section or symbol.

So the packed file keeps the ELF header, PT_LOAD segments split around the padding (each
piece at its own address, its bytes at a compact, page-aligned file offset), the PT_NOTE
segment (pointing at the same note bytes) and nothing else: no section headers, no symbol
or string tables. Padding is what no guest code reads:

* bytes of a PT_LOAD that lie in no SHF_ALLOC section (the 2 MiB alignment between the
  end of the text and rodata: Linux frees it at boot as "unused kernel image");
* runs of at least ``MIN_GAP`` int3 bytes (0xcc, the linker's fill) inside an executable
  section (the 2 MiB alignment around the entry text): never executed.

A dropped range is left as the guest's RAM holds it (zero: QEMU's guest RAM is fresh and
lightvm runs QEMU with ``-no-reboot``, so no reset reloads a kernel over old contents).
The last piece of a segment keeps the segment's ``p_memsz`` tail (bss), which QEMU
zero-fills as before. Cached by the vmlinux's content hash (and this file's) under
tinyx/build/kpack-<key>/vmlinux.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightvm.errors import TinyxError

PAGE = 4096
MIN_GAP = 64 * 1024  # a shorter run of int3 is not worth a segment (and may be code padding)
PT_LOAD, PT_NOTE = 1, 4
SHF_ALLOC, SHF_EXECINSTR = 0x2, 0x4
SHT_NOBITS = 8
EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")
SHDR = struct.Struct("<IIQQQQIIQQ")
INT3 = 0xCC


@dataclass(frozen=True)
class Segment:
    """One program header (the fields QEMU reads)."""

    type: int
    flags: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    align: int


@dataclass(frozen=True)
class Elf:
    entry: int
    ehdr: tuple[Any, ...]  # the raw header fields, reused for the packed file
    segments: list[Segment]
    sections: list[tuple[int, int, int, int]]  # (addr, size, flags, type) of SHF_ALLOC sections


def parse(data: bytes) -> Elf:
    """An ELF64 little-endian x86-64 executable's header, program and section headers."""
    if len(data) < EHDR.size or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise TinyxError("not an ELF64 little-endian file: the platform kernel must be an x86-64 vmlinux")
    h = EHDR.unpack_from(data)
    _, _, machine, _, entry, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum, _ = h
    if machine != 62 or phentsize != PHDR.size or (shnum and shentsize != SHDR.size):
        raise TinyxError(f"unexpected ELF (machine {machine}, phentsize {phentsize}): not an x86-64 vmlinux")
    if phoff + phnum * PHDR.size > len(data) or shoff + shnum * SHDR.size > len(data):
        raise TinyxError("truncated ELF: the program or section headers run past the end of the file")
    segs = [Segment(*PHDR.unpack_from(data, phoff + i * PHDR.size)) for i in range(phnum)]
    secs = []
    for i in range(shnum):
        _, stype, flags, addr, _, size, *_ = SHDR.unpack_from(data, shoff + i * SHDR.size)
        if flags & SHF_ALLOC and size:
            secs.append((addr, size, flags, stype))
    for s in segs:
        if s.type == PT_LOAD and s.offset + s.filesz > len(data):
            raise TinyxError("truncated ELF: a PT_LOAD segment runs past the end of the file")
    return Elf(entry, h, segs, secs)


def _int3_runs(data: bytes, start: int, end: int) -> list[tuple[int, int]]:
    """[lo, hi) file ranges within [start, end) of at least MIN_GAP int3 bytes."""
    runs: list[tuple[int, int]] = []
    pos = start
    needle = bytes([INT3]) * MIN_GAP
    while True:
        i = data.find(needle, pos, end)
        if i < 0:
            return runs
        j = i + MIN_GAP
        while j < end and data[j] == INT3:
            j += 1
        runs.append((i, j))
        pos = j


def pieces(elf: Elf, data: bytes, seg: Segment) -> list[tuple[int, int]]:
    """The [lo, hi) offsets within ``seg``'s file bytes to keep, padding dropped (page-rounded
    inwards, so every kept piece starts and ends on a page boundary of its address, except
    at the segment's own ends)."""
    lo_v, hi_v = seg.vaddr, seg.vaddr + seg.filesz
    covered = []
    exec_ranges = []
    for addr, size, flags, stype in elf.sections:
        a, b = max(addr, lo_v), min(addr + size, hi_v)
        if a >= b or stype == SHT_NOBITS:
            continue
        covered.append((a - lo_v, b - lo_v))
        if flags & SHF_EXECINSTR:
            exec_ranges.append((a - lo_v, b - lo_v))
    if not covered:  # no section headers (already packed, or stripped of them): keep all
        return [(0, seg.filesz)] if seg.filesz else []
    gaps = []
    covered.sort()
    pos = 0
    for a, b in covered:
        if a > pos:
            gaps.append((pos, a))
        pos = max(pos, b)
    if pos < seg.filesz:
        gaps.append((pos, seg.filesz))
    for a, b in exec_ranges:
        gaps += [(x - seg.offset, y - seg.offset) for x, y in _int3_runs(data, seg.offset + a, seg.offset + b)]
    # Drop only whole pages of the address space (rounded inwards); merge what overlaps.
    drop: list[tuple[int, int]] = []
    for a, b in sorted(gaps):
        a2 = -(-(lo_v + a) // PAGE) * PAGE - lo_v
        b2 = (lo_v + b) // PAGE * PAGE - lo_v
        if b2 - a2 < PAGE:
            continue
        if drop and a2 <= drop[-1][1]:
            drop[-1] = (drop[-1][0], max(drop[-1][1], b2))
        else:
            drop.append((a2, b2))
    keep = []
    pos = 0
    for a, b in drop:
        if a > pos:
            keep.append((pos, a))
        pos = b
    if pos < seg.filesz:
        keep.append((pos, seg.filesz))
    return keep


@dataclass(frozen=True)
class Packed:
    data: bytes
    loaded_bytes: int  # the sum of p_filesz: what QEMU copies into guest memory
    segments: int  # PT_LOAD segments in the packed file


def pack(data: bytes) -> Packed:
    """``data`` (a vmlinux) -> the packed ELF's bytes."""
    elf = parse(data)
    notes = [s for s in elf.segments if s.type == PT_NOTE]
    new: list[tuple[Segment, bytes]] = []  # (header with offset 0, bytes)
    for seg in elf.segments:
        if seg.type != PT_LOAD:
            continue
        keep = pieces(elf, data, seg)
        if not keep:  # bss only
            new.append((Segment(PT_LOAD, seg.flags, 0, seg.vaddr, seg.paddr, 0, seg.memsz, PAGE), b""))
        for i, (a, b) in enumerate(keep):
            last = i == len(keep) - 1
            memsz = seg.memsz - a if last else b - a
            body = data[seg.offset + a : seg.offset + b]
            new.append((Segment(PT_LOAD, seg.flags, 0, seg.vaddr + a, seg.paddr + a, b - a, memsz, PAGE), body))
    nphdr = len(new) + len(notes)
    pos = EHDR.size + nphdr * PHDR.size
    out = bytearray()
    phdrs = []
    bodies = []
    placed: list[tuple[Segment, int]] = []  # (original-address segment, new offset)
    for seg, body in new:
        pos += (seg.vaddr - pos) % PAGE  # offset == address modulo the page (ELF's p_align rule)
        phdrs.append(Segment(seg.type, seg.flags, pos, seg.vaddr, seg.paddr, seg.filesz, seg.memsz, seg.align))
        bodies.append((pos, body))
        placed.append((seg, pos))
        pos += len(body)
    for n in notes:
        off = _note_offset(n, placed)
        phdrs.append(Segment(PT_NOTE, n.flags, off, n.vaddr, n.paddr, n.filesz, n.memsz, n.align))
    h = list(elf.ehdr)
    h[5], h[6], h[10], h[12], h[13] = EHDR.size, 0, len(phdrs), 0, 0  # phoff, shoff, phnum, shnum, shstrndx
    h[11] = 0  # shentsize: no section headers
    out += EHDR.pack(*h)
    for p in phdrs:
        out += PHDR.pack(p.type, p.flags, p.offset, p.vaddr, p.paddr, p.filesz, p.memsz, p.align)
    for off, body in bodies:
        out += b"\0" * (off - len(out))
        out += body
    loaded = sum(p.filesz for p in phdrs if p.type == PT_LOAD)
    return Packed(bytes(out), loaded, sum(1 for p in phdrs if p.type == PT_LOAD))


def _note_offset(note: Segment, placed: list[tuple[Segment, int]]) -> int:
    """The packed file offset of a PT_NOTE's bytes: inside the kept piece holding its address."""
    for seg, off in placed:
        if seg.vaddr <= note.vaddr and note.vaddr + note.filesz <= seg.vaddr + seg.filesz:
            return off + note.vaddr - seg.vaddr
    raise TinyxError("the kernel's PT_NOTE (the PVH entry note) lies outside its loaded bytes: cannot pack it")


def loaded_image(data: bytes) -> dict[int, bytes]:
    """{paddr: bytes} of every PT_LOAD's file bytes: what QEMU copies into guest memory."""
    return {
        s.paddr: data[s.offset : s.offset + s.filesz] for s in parse(data).segments if s.type == PT_LOAD and s.filesz
    }


def packed_kernel(vmlinux: Path, cache_dir: Path) -> tuple[Path, dict[str, int], str]:
    """The packed copy of ``vmlinux`` (cached by content), its sizes, and "cached" | "built".

    Called under the image builder's cache lock: the entry is written as ``kpack-<key>.tmp``
    and renamed when complete; a killed build's ``.tmp`` is removed by cache.clean_stale."""
    data = vmlinux.read_bytes()
    h = hashlib.sha256(data)
    h.update(Path(__file__).read_bytes())
    out = cache_dir / f"kpack-{h.hexdigest()[:16]}"
    target = out / "vmlinux"
    state = "cached"
    if not target.is_file():
        state = "built"
        p = pack(data)
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
            (tmp / "vmlinux").write_bytes(p.data)
            os.chmod(tmp / "vmlinux", 0o755)
            shutil.rmtree(out, ignore_errors=True)  # an entry without its file
            os.rename(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    packed = target.read_bytes()
    sizes = {
        "vmlinux_bytes": len(data),
        "file_bytes": len(packed),
        "loaded_bytes": sum(len(b) for b in loaded_image(packed).values()),
        "vmlinux_loaded_bytes": sum(len(b) for b in loaded_image(data).values()),
    }
    return target, sizes, state
