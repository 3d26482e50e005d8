"""Which Debian package a file came from, read from dpkg's database inside a root.

``dpkg -S`` would need the chroot (mounts) or the host's dpkg; the database is plain
text: var/lib/dpkg/info/PKG[:ARCH].list names every path a package installed. With
/usr merged, a package may list /lib/x86_64-linux-gnu/libc.so.6 while the file's
canonical path is /usr/lib/x86_64-linux-gnu/libc.so.6, so a lookup also tries every
alias through the root's top-level directory symlinks (lib -> usr/lib, ...).
"""

from __future__ import annotations

import os
from pathlib import Path

from tinyx.image.install import parse_status


class Owners:
    """path -> package for one root (``/`` for the host, or a merged tree)."""

    def __init__(self, *roots: Path) -> None:
        """Several roots (upper, then base) behave like their overlay: a package's list
        in the first root that has one wins."""
        self.paths: dict[str, str] = {}
        self.versions: dict[str, str] = {}
        self.aliases: list[tuple[str, str]] = []  # ("/usr/lib/", "/lib/"): canonical prefix -> alias
        seen: set[str] = set()
        for root in roots:
            info = root / "var/lib/dpkg/info"
            for lst in sorted(info.glob("*.list")) if info.is_dir() else []:
                pkg = lst.name[: -len(".list")].split(":", 1)[0]
                if pkg in seen:
                    continue
                seen.add(pkg)
                for line in lst.read_text(errors="replace").splitlines():
                    if line and line != "/.":
                        self.paths.setdefault(line, pkg)
            status = root / "var/lib/dpkg/status"
            if status.is_file():
                for pkg, ver in parse_status(status.read_text(errors="replace")).items():
                    self.versions.setdefault(pkg, ver)
            for top in sorted(root.iterdir()) if root.is_dir() else []:
                if top.is_symlink():
                    target = os.readlink(top)
                    canon = "/" + target.strip("/") if target.startswith("/") else "/" + target.rstrip("/")
                    alias = (canon + "/", f"/{top.name}/")
                    if alias not in self.aliases:
                        self.aliases.append(alias)

    def owner(self, *paths: str) -> str | None:
        """The package owning the first of ``paths`` (or an alias of it) that dpkg knows."""
        for path in paths:
            candidates = [path]
            candidates += [alias + path[len(canon) :] for canon, alias in self.aliases if path.startswith(canon)]
            for cand in candidates:
                if cand in self.paths:
                    return self.paths[cand]
        return None

    def files_of(self, packages: set[str]) -> set[str]:
        """The canonical paths (relative, no leading slash) of the files ``packages`` installed."""
        out: set[str] = set()
        for path, pkg in self.paths.items():
            if pkg not in packages:
                continue
            for canon, alias in self.aliases:
                if path.startswith(alias):
                    path = canon + path[len(alias) :]
                    break
            out.add(path.strip("/"))
        return out

    def describe(self, *paths: str) -> str:
        """ "pkg version" of the owner, or "(no package)" for a file dpkg does not know."""
        pkg = self.owner(*paths)
        if pkg is None:
            return "(no package)"
        return f"{pkg} {self.versions.get(pkg, '?')}"
