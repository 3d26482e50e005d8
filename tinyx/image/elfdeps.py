"""The NEEDED closure of ELF files, resolved inside a root tree as the guest's ld.so will.

An image holds only what the app's package brought; the libraries it links against
(libc, libssl...) live in the base tree. For every ELF file this follows PT_INTERP and
the ``NEEDED`` entries ``objdump -p`` lists, transitively, searching RPATH (when there is
no RUNPATH), RUNPATH, then glibc's system directories, all inside ``root`` (the merged
base + app tree, or ``/`` for a host binary). Paths are resolved like a chroot would:
an absolute symlink target restarts at ``root``, and every symlink crossed on the way
(``/lib64`` -> ``usr/lib64``, ``libz.so.1`` -> ``libz.so.1.2.13``) is recorded so that
the image can hold both the link and its target.

The search directories are those of Debian's glibc without an ld.so.cache (the image
has none: the host's cache would name files the image lacks): /lib/x86_64-linux-gnu,
/usr/lib/x86_64-linux-gnu, /lib, /usr/lib. /lib64 holds only the loader, which is found
through PT_INTERP. glibc-hwcaps subdirectories and dlopen()ed modules are not followed.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lightvm.errors import TinyxError
from tinyx.image.proc import run

SEARCH_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib", "/usr/lib")
EM_X86_64 = 62
ET_EXEC, ET_DYN = 2, 3
PT_INTERP = 3
MAX_LINK_HOPS = 40
OBJDUMP_TIMEOUT = 60.0


@dataclass(frozen=True)
class ElfInfo:
    """What the ELF header says: a 64-bit x86 executable or shared object, its loader."""

    etype: int
    machine: int
    interp: str | None

    @property
    def loadable(self) -> bool:
        return self.machine == EM_X86_64 and self.etype in (ET_EXEC, ET_DYN)


def read_elf(path: Path) -> ElfInfo | None:
    """The header of a 64-bit little-endian ELF file; None if ``path`` is anything else."""
    try:
        with path.open("rb") as f:
            ident = f.read(64)
            if len(ident) < 64 or ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1:
                return None
            etype, machine = struct.unpack_from("<HH", ident, 16)
            phoff = struct.unpack_from("<Q", ident, 32)[0]
            phentsize, phnum = struct.unpack_from("<HH", ident, 54)
            interp = None
            if phoff and phentsize >= 56 and phnum < 4096:
                f.seek(phoff)
                table = f.read(phentsize * phnum)
                for i in range(len(table) // phentsize):
                    ptype, _, offset, _, _, filesz = struct.unpack_from("<IIQQQQ", table, i * phentsize)
                    if ptype == PT_INTERP and 0 < filesz < 4096:
                        f.seek(offset)
                        interp = f.read(filesz).split(b"\0", 1)[0].decode(errors="replace")
    except OSError:
        return None
    return ElfInfo(etype, machine, interp)


@dataclass(frozen=True)
class Dynamic:
    needed: tuple[str, ...] = ()
    rpath: tuple[str, ...] = ()
    runpath: tuple[str, ...] = ()


def parse_objdump(text: str) -> Dynamic:
    """NEEDED, RPATH and RUNPATH from ``objdump -p`` output."""
    needed: list[str] = []
    rpath: list[str] = []
    runpath: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if len(words) != 2:
            continue
        tag, value = words
        if tag == "NEEDED":
            needed.append(value)
        elif tag == "RPATH":
            rpath += [p for p in value.split(":") if p]
        elif tag == "RUNPATH":
            runpath += [p for p in value.split(":") if p]
    return Dynamic(tuple(needed), tuple(rpath), tuple(runpath))


_DYNAMIC: dict[tuple[str, int, int], Dynamic] = {}


def dynamic(path: Path) -> Dynamic:
    """``objdump -p`` of ``path``, remembered by (path, size, mtime) for this process: the
    closure of the command is computed again after the closure of the whole layer."""
    st = path.stat()
    k = (str(path), st.st_size, st.st_mtime_ns)
    if k not in _DYNAMIC:
        _DYNAMIC[k] = parse_objdump(run(["objdump", "-p", path], OBJDUMP_TIMEOUT, what=f"objdump -p {path}"))
    return _DYNAMIC[k]


class Root:
    """Path resolution inside a root directory, as if it were chroot()ed into.

    ``links`` collects every symlink crossed: its path in the root -> its target text."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.links: dict[str, str] = {}

    def host(self, path: str) -> Path:
        """The host path of an absolute path inside the root (no symlink resolution)."""
        return self.root / path.lstrip("/")

    def resolve(self, path: str, follow_last: bool = True) -> str:
        """The canonical absolute path of ``path`` inside the root (which may not exist)."""
        todo = [p for p in path.split("/") if p not in ("", ".")]
        cur: list[str] = []
        hops = 0
        while todo:
            name = todo.pop(0)
            if name == "..":
                if cur:
                    cur.pop()
                continue
            cand = [*cur, name]
            here = "/" + "/".join(cand)
            if (todo or follow_last) and self.host(here).is_symlink():
                hops += 1
                if hops > MAX_LINK_HOPS:
                    raise TinyxError(f"{path}: too many levels of symbolic links inside {self.root}")
                target = os.readlink(self.host(here))
                self.links[here] = target
                if target.startswith("/"):
                    cur = []
                todo = [p for p in target.split("/") if p not in ("", ".")] + todo
                continue
            cur = cand
        return "/" + "/".join(cur)


@dataclass
class Library:
    """One resolved dependency: ``name`` as NEEDED (or PT_INTERP) wrote it, ``found`` the
    path the search tried (before symlinks), ``path`` the canonical file in the root."""

    name: str
    found: str
    path: str
    needed_by: list[str] = field(default_factory=list)


@dataclass
class Closure:
    """The result: ``libraries`` by canonical path, ``links`` (symlinks crossed, path ->
    target) and ``missing`` ("libfoo.so.1 (needed by /usr/bin/x)") when not strict."""

    libraries: dict[str, Library] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


def _search_dirs(dyn: Dynamic, origin: str) -> list[str]:
    dirs = [*(dyn.rpath if not dyn.runpath else ()), *dyn.runpath]
    dirs = [d.replace("${ORIGIN}", origin).replace("$ORIGIN", origin) for d in dirs]
    return [*(d for d in dirs if d.startswith("/")), *SEARCH_DIRS]


def _find(root: Root, name: str, dirs: list[str]) -> tuple[str, str] | None:
    """(path searched, canonical path) of the first x86-64 ELF called ``name`` in ``dirs``;
    like ld.so, files of another class or machine are skipped."""
    candidates = [name] if "/" in name else [f"{d.rstrip('/')}/{name}" for d in dirs]
    for cand in candidates:
        scratch = Root(root.root)
        canon = scratch.resolve(cand)
        host = root.host(canon)
        info = read_elf(host) if host.is_file() else None
        if info is not None and info.machine == EM_X86_64:
            root.links.update(scratch.links)
            return cand, canon
    return None


def closure(root: Path, elves: Iterable[str], strict: bool = True) -> Closure:
    """The transitive libraries of ``elves`` (absolute paths inside ``root``).

    With ``strict``, a library that cannot be found raises one TinyxError naming every
    missing library and who needs it; otherwise they are listed in ``Closure.missing``."""
    r = Root(root)
    result = Closure()
    seen: set[str] = set()
    todo: list[str] = []
    for elf in elves:
        canon = r.resolve(elf)
        if read_elf(r.host(canon)) is None:
            raise TinyxError(f"{elf} is not an ELF file (inside {root})")
        todo.append(canon)
    while todo:
        obj = todo.pop()
        if obj in seen:
            continue
        seen.add(obj)
        host = r.host(obj)
        info = read_elf(host)
        if info is None or not info.loadable:
            continue
        wanted: list[tuple[str, list[str]]] = []
        if info.interp:
            wanted.append((info.interp, []))
        dyn = dynamic(host)
        dirs = _search_dirs(dyn, os.path.dirname(obj))
        wanted += [(n, dirs) for n in dyn.needed]
        for name, search in wanted:
            hit = _find(r, name, search)
            if hit is None:
                result.missing.append(f"{name} (needed by {obj})")
                continue
            found, canon = hit
            lib = result.libraries.setdefault(canon, Library(os.path.basename(name), found, canon))
            if obj not in lib.needed_by:
                lib.needed_by.append(obj)
            todo.append(canon)
    result.links = dict(sorted(r.links.items()))
    if result.missing and strict:
        where = ", ".join(SEARCH_DIRS)
        raise TinyxError(
            f"missing libraries in {root}: {'; '.join(sorted(set(result.missing)))} "
            f"(searched RPATH/RUNPATH and {where}); install the package that ships them"
        )
    return result
