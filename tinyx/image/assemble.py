"""The image tree: what goes into the initramfs, as a manifest of canonical paths.

Sources, in order (a later source never replaces an earlier file, except the generated
/etc files and the recipe's ``files``, which are meant to):

1. the app's layer (the overlay's upper), pruned (tinyx.image.prune), whiteouts skipped;
   or, for a host ELF, that one file;
2. the NEEDED closure of every ELF file of 1, resolved in ``root`` (the merged tree, or
   ``/``), with every symlink crossed (``lib64`` -> ``usr/lib64``, ``libz.so.1`` -> ...);
3. the root's top-level directory symlinks (/usr merged: bin, sbin, lib, lib64);
4. BusyBox as /bin/busybox with a /bin link per applet the tree does not already have;
5. the init as /init, /etc/tinyx/app.conf, passwd/group (root, nobody and the users the
   package created), hosts, nsswitch.conf; /proc /sys /dev /tmp /run, /dev/console.

Every member is stored at its canonical path (no parent is a symlink), so the kernel's
unpacker never has to follow a link to create a file.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path

from lightvm.errors import TinyxError
from tinyx import cpio
from tinyx.image import appconf, prune
from tinyx.image.busybox import BusyBox
from tinyx.image.elfdeps import Closure, Root, closure, read_elf
from tinyx.image.owners import Owners
from tinyx.image.recipe import Recipe

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"
HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
NSSWITCH = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nservices: files\n"
EMPTY_DIRS = {"proc": 0o555, "sys": 0o555, "dev": 0o755, "tmp": 0o1777, "run": 0o755, "root": 0o700}


@dataclass
class Item:
    """One member: ``kind`` is dir, file, link or chardev; a file's bytes come from
    ``source`` (a host path) or ``data``; ``origin`` says which source put it there."""

    kind: str
    mode: int
    origin: str
    source: Path | None = None
    data: bytes | None = None
    target: str = ""
    rdev: tuple[int, int] = (0, 0)
    uid: int = 0
    gid: int = 0
    nbytes: int = 0  # a file's size, known when it is added (the source may be unmounted later)

    def __post_init__(self) -> None:
        if self.kind == "file" and not self.nbytes:
            self.nbytes = len(self.data) if self.data is not None else self.source.stat().st_size if self.source else 0


@dataclass
class Tree:
    items: dict[str, Item] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, rel: str, item: Item, replace: bool = False) -> bool:
        rel = rel.strip("/")
        if not rel:
            return False
        if rel in self.items and not replace:
            return False
        self.items[rel] = item
        return True

    def canonical(self, path: str) -> str:
        """``path`` with the tree's own directory symlinks resolved (e.g. bin/sh -> usr/bin/sh)."""
        parts = [p for p in path.strip("/").split("/") if p]
        out: list[str] = []
        for hops, name in enumerate(parts):
            cand = "/".join([*out, name])
            item = self.items.get(cand)
            if item is not None and item.kind == "link" and hops < len(parts) - 1:
                target = item.target
                base = [] if target.startswith("/") else out
                out = [*base, *(p for p in target.strip("/").split("/") if p and p != ".")]
                continue
            out.append(name)
        return "/".join(out)

    def file(self, rel: str, data: bytes, mode: int, origin: str, replace: bool = True) -> None:
        self.add(self.canonical(rel), Item("file", mode, origin, data=data), replace=replace)

    def fill_parents(self) -> None:
        """Add every missing parent directory; refuse a member whose parent is not a directory."""
        for rel in list(self.items):
            parts = rel.split("/")
            for i in range(1, len(parts)):
                parent = "/".join(parts[:i])
                got = self.items.get(parent)
                if got is None:
                    self.items[parent] = Item("dir", 0o755, "parent")
                elif got.kind != "dir":
                    raise TinyxError(f"image tree: /{rel} lies below /{parent}, which is a {got.kind}, not a directory")

    def entries(self) -> Iterator[cpio.Entry]:
        """cpio entries, parents first; file data is read one member at a time."""
        for rel in sorted(self.items, key=lambda r: r.split("/")):
            it = self.items[rel]
            if it.kind == "dir":
                yield cpio.Entry(rel, stat.S_IFDIR | it.mode, uid=it.uid, gid=it.gid)
            elif it.kind == "link":
                yield cpio.Entry(rel, stat.S_IFLNK | 0o777, it.target.encode(), uid=it.uid, gid=it.gid)
            elif it.kind == "chardev":
                yield cpio.Entry(rel, stat.S_IFCHR | it.mode, rdev=it.rdev, uid=it.uid, gid=it.gid)
            else:
                data = it.data if it.data is not None else it.source.read_bytes() if it.source else b""
                yield cpio.Entry(rel, stat.S_IFREG | it.mode, data, uid=it.uid, gid=it.gid)


def _from_stat(host: Path, st: os.stat_result, origin: str) -> Item | None:
    perm = stat.S_IMODE(st.st_mode)
    if stat.S_ISDIR(st.st_mode):
        return Item("dir", perm, origin, uid=st.st_uid, gid=st.st_gid)
    if stat.S_ISLNK(st.st_mode):
        return Item("link", 0o777, origin, target=os.readlink(host), uid=st.st_uid, gid=st.st_gid)
    if stat.S_ISREG(st.st_mode):
        return Item("file", perm, origin, source=host, uid=st.st_uid, gid=st.st_gid, nbytes=st.st_size)
    return None


def add_layer(tree: Tree, upper: Path, skip: AbstractSet[str] = frozenset()) -> int:
    """The app's layer minus the pruned paths, overlayfs whiteouts and the non-directory
    paths in ``skip`` (the files of the recipe's exclude_packages); returns how many
    paths were pruned or skipped (a pruned directory counts once)."""
    pruned = 0
    for dirpath, dirnames, filenames in os.walk(upper):
        here = Path(dirpath)
        rel_dir = here.relative_to(upper).as_posix()
        keep = []
        for name in sorted(dirnames):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if prune.pruned(rel):
                pruned += 1
                continue
            st = os.lstat(here / name)
            item = _from_stat(here / name, st, "app")
            if item is not None:
                tree.add(rel, item)
            if item is not None and item.kind == "dir":
                keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if prune.pruned(rel) or rel in skip:
                pruned += 1
                continue
            st = os.lstat(here / name)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                continue  # an overlayfs whiteout: the app deleted a base file
            item = _from_stat(here / name, st, "app")
            if item is None:
                tree.notes.append(f"skipped /{rel}: not a file, directory or symlink")
                continue
            tree.add(rel, item)
    return pruned


def drop_empty_dirs(tree: Tree, dirs: AbstractSet[str]) -> None:
    """Remove the directories of ``dirs`` left empty (those of excluded packages)."""
    children: dict[str, int] = {}
    for rel in tree.items:
        parent = rel.rpartition("/")[0]
        children[parent] = children.get(parent, 0) + 1
    for rel in sorted(dirs, key=lambda r: r.count("/"), reverse=True):
        item = tree.items.get(rel)
        if item is not None and item.kind == "dir" and not children.get(rel):
            del tree.items[rel]
            parent = rel.rpartition("/")[0]
            children[parent] = children.get(parent, 0) - 1


def elf_members(tree: Tree) -> list[str]:
    """Absolute paths of the tree's dynamically or statically linked x86-64 ELF files."""
    out = []
    for rel, it in sorted(tree.items.items()):
        if it.kind == "file" and it.source is not None:
            info = read_elf(it.source)
            if info is not None and info.loadable:
                out.append("/" + rel)
    return out


def add_command(tree: Tree, root: Path, recipe: Recipe) -> str:
    """The command's file and every symlink to it, from ``root``, whatever the layer
    held: Debian's /usr/bin/redis-server is a link to redis-check-rdb, which redis-tools
    ships; a recipe may leave redis-tools out and still run redis-server. Returns the
    command's canonical path."""
    r = Root(root)
    canon = r.resolve(recipe.command[0])
    host = r.host(canon)
    if not host.is_file():
        raise TinyxError(
            f"{recipe.origin}: command[0] {recipe.command[0]} is not a file in the installed tree; "
            "check the path in the recipe (packages install their programs under /usr/bin or /usr/sbin)"
        )
    for link, target in r.links.items():
        tree.add(link, Item("link", 0o777, "app", target=target))
    item = _from_stat(host, os.stat(host), "app")
    assert item is not None
    tree.add(canon, item)
    return canon


def add_closure(tree: Tree, root: Path, elves: list[str], command: str) -> Closure:
    """The libraries of ``elves`` and the symlinks leading to them, copied from ``root``.

    The command's own closure must be complete (else TinyxError); another ELF file of the
    layer whose library is missing (a plugin of an optional feature, such as iproute2's
    tc/q_atm.so wanting libatm) only gets a note: it is shipped but cannot load."""
    if read_elf(Root(root).host(Root(root).resolve(command))) is not None:
        closure(root, [command], strict=True)
    found = closure(root, elves, strict=False)
    for miss in sorted(set(found.missing)):
        tree.notes.append(f"library not found, not needed by the command: {miss}")
    r = Root(root)
    for link, target in found.links.items():
        tree.add(link, Item("link", 0o777, "library", target=target))
    for path in found.libraries:
        host = r.host(path)
        item = _from_stat(host, os.lstat(host), "library")
        if item is not None:
            tree.add(path, item)
    return found


def add_top_links(tree: Tree, root: Path) -> None:
    """The root's top-level directory symlinks (bin -> usr/bin...), so that /bin/sh and
    the loader's /lib64 path exist in the guest."""
    for top in sorted(root.iterdir()):
        if top.is_symlink() and top.is_dir():
            tree.add(top.name, Item("link", 0o777, "layout", target=os.readlink(top)))


def add_busybox(tree: Tree, bb: BusyBox) -> int:
    """/bin/busybox and a /bin link per applet the tree does not have; returns the links added."""
    tree.add(tree.canonical("bin/busybox"), Item("file", 0o755, "busybox", source=bb.binary), replace=True)
    added = 0
    for applet in bb.applets:
        rel = tree.canonical(f"bin/{applet}")
        if rel not in tree.items and tree.add(rel, Item("link", 0o777, "busybox", target="busybox")):
            added += 1
    return added


def add_system(tree: Tree, recipe: Recipe, init: Path, users: list[str], groups: list[str]) -> None:
    """The init, app.conf, minimal /etc, the empty mount points and /dev/console."""
    tree.add("init", Item("file", 0o755, "init", source=init), replace=True)
    tree.file(appconf.PATH, appconf.render(recipe).encode(), 0o644, "generated")
    tree.file("etc/passwd", (PASSWD + "".join(u + "\n" for u in users)).encode(), 0o644, "generated")
    tree.file("etc/group", (GROUP + "".join(g + "\n" for g in groups)).encode(), 0o644, "generated")
    tree.file("etc/hosts", HOSTS.encode(), 0o644, "generated")
    tree.file("etc/nsswitch.conf", NSSWITCH.encode(), 0o644, "generated")
    for d, mode in EMPTY_DIRS.items():
        tree.add(d, Item("dir", mode, "layout"), replace=True)
    tree.add("dev/console", Item("chardev", 0o600, "layout", rdev=(5, 1)), replace=True)
    for f in recipe.files:
        rel = tree.canonical(f.path)
        if rel in ("init", appconf.PATH):
            raise TinyxError(f"{recipe.origin}: files: /{rel} is written by the builder; choose another path")
        tree.add(rel, Item("file", f.mode, "recipe", data=f.data), replace=True)


@dataclass
class Assembled:
    tree: Tree
    closure: Closure
    elves: list[str]
    pruned: int
    applets: int
    host_owner: str | None = None  # for a host ELF file: "package version" that installed it


def assemble(
    recipe: Recipe,
    root: Path,
    upper: Path | None,
    bb: BusyBox | None,
    init: Path,
    users: list[str],
    groups: list[str],
    owners: Owners,
    installed: dict[str, str],
) -> Assembled:
    """The whole manifest. ``root`` is where libraries are resolved (the merged tree, or
    ``/`` with ``upper`` None for a host ELF file); ``owners`` maps files to packages,
    ``installed`` lists the packages the app brought (for exclude_packages); ``bb`` is None
    for a recipe with ``busybox = false``."""
    tree = Tree()
    pruned = 0
    if upper is not None:
        excluded = set(recipe.exclude_packages)
        for pkg in sorted(excluded - set(installed)):
            tree.notes.append(f"exclude_packages: {pkg} was not installed by the app; nothing left out for it")
        skip = owners.files_of(excluded & set(installed))
        pruned = add_layer(tree, upper, skip)
        drop_empty_dirs(tree, skip)
    command = add_command(tree, root, recipe)
    elves = elf_members(tree) if upper is not None else [command]
    found = add_closure(tree, root, elves, command)
    add_top_links(tree, root)
    applets = add_busybox(tree, bb) if bb is not None else 0
    add_system(tree, recipe, init, users, groups)
    tree.fill_parents()
    return Assembled(tree, found, elves, pruned, applets)


def owners_of(found: Closure, owners: Owners) -> list[dict[str, object]]:
    """The report's library list: name, path, owning package and version, who needs it."""
    return [
        {
            "name": lib.name,
            "path": path,
            "owner": owners.describe(path, lib.found),
            "needed_by": sorted(lib.needed_by),
        }
        for path, lib in sorted(found.libraries.items())
    ]
