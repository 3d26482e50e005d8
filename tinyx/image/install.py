"""Install the app's Debian package over the base tree; keep only what it brought.

``apt-get install --no-install-recommends PKG`` runs in a chroot of an overlayfs whose
lower layer is the base tree (read-only, shared by every app) and whose upper layer is
a fresh folder: after the install the upper layer holds exactly the files the package
and its new dependencies added or changed. The chroot gets /proc, the host's /dev
(bind), the host's resolv.conf, the host's apt sources (deb stanzas of
/etc/apt/sources.list.d/*.sources) and /etc/apt/apt.conf.d/99* settings (such as
Check-Valid-Until), so it sees the package versions the host sees, and a policy-rc.d
answering 101 so that no maintainer script starts a service.

Cached as tinyx/build/app-<key>/upper, key = (base key, package, the candidate version
the host's ``apt-cache policy`` reports): a new upload to the archive gives a new key
once the host's lists know it. entry.json records the versions actually installed
(read back from the upper's dpkg status) and the users the package created.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightvm.errors import TinyxError
from tinyx.image import cache
from tinyx.image.base import Base
from tinyx.image.mounts import mounted, remove_tree
from tinyx.image.proc import Progress, run

HOST_SOURCES = Path("/etc/apt/sources.list.d")
HOST_APT_CONF = Path("/etc/apt/apt.conf.d")
HOST_RESOLV = Path("/etc/resolv.conf")
POLICY_RC_D = "#!/bin/sh\n# tinyx: no service may start while the image is built\nexit 101\n"
APT_TUNING = '// tinyx: no translations to download\nAcquire::Languages "none";\n'
UPDATE_TIMEOUT = 600.0
INSTALL_TIMEOUT = 1800.0
APT_OPTS = ("-q", "-o", "Dpkg::Use-Pty=0")


@dataclass(frozen=True)
class App:
    """An installed package: ``upper`` is the overlay's upper layer (whiteouts included)."""

    path: Path
    key: str
    meta: dict[str, Any]

    @property
    def upper(self) -> Path:
        return self.path / "upper"


def host_candidates(*packages: str) -> dict[str, str]:
    """The versions the host's apt would install ("(none)" for a package it does not
    know), in one ``apt-cache policy`` call: it reads every index, ~1 s each time."""
    try:
        out = subprocess.run(
            ["apt-cache", "policy", *packages], capture_output=True, text=True, timeout=60, env={"LC_ALL": "C"}
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise TinyxError(f"apt-cache policy failed ({e}); the image builder needs a Debian host") from e
    found: dict[str, str] = {}
    current = None
    for line in out.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            current = line[:-1].split(":", 1)[0]
        elif current and line.strip().startswith("Candidate:"):
            found[current] = line.split(":", 1)[1].strip()
    return {p: found.get(p, "(none)") for p in packages}


def host_candidate(package: str) -> str:
    return host_candidates(package)[package]


def deb_stanzas(text: str) -> str:
    """The ``Types: deb`` stanzas of a deb822 .sources file (deb-src dropped: apt would
    download the Sources indexes for nothing)."""
    kept: list[str] = []
    for stanza in re.split(r"\n\s*\n", text.strip()):
        lines = stanza.splitlines()
        types = next((ln.split(":", 1)[1].split() for ln in lines if ln.lower().startswith("types:")), [])
        if "deb" not in types:
            continue
        kept.append("\n".join("Types: deb" if ln.lower().startswith("types:") else ln for ln in lines))
    return "\n\n".join(kept) + "\n" if kept else ""


def _signed_by(text: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^Signed-By:\s*(/\S+)\s*$", text, re.M)]


def prepare_upper(upper: Path, lower: Path) -> list[str]:
    """Put the chroot's apt and network settings into the upper layer (pruned from the
    image later); returns the host files copied, for the report."""
    copied: list[str] = []
    sources = upper / "etc/apt/sources.list.d"
    sources.mkdir(parents=True)
    for src in sorted(HOST_SOURCES.glob("*.sources")):
        text = deb_stanzas(src.read_text())
        if not text:
            continue
        (sources / src.name).write_text(text)
        copied.append(str(src))
        for keyring in _signed_by(text):
            host_key = Path(keyring)
            if host_key.is_file() and not (lower / keyring.lstrip("/")).exists():
                dst = upper / keyring.lstrip("/")
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(host_key, dst)
                copied.append(keyring)
    if copied:
        (upper / "etc/apt/sources.list").write_text("# tinyx: the host's sources.list.d is used\n")
    conf = upper / "etc/apt/apt.conf.d"
    conf.mkdir(parents=True)
    for src in sorted(HOST_APT_CONF.glob("99*")):
        if src.is_file():
            shutil.copyfile(src, conf / src.name)
            copied.append(str(src))
    (conf / "99tinyx").write_text(APT_TUNING)
    if HOST_RESOLV.exists():
        (upper / "etc/resolv.conf").write_bytes(HOST_RESOLV.read_bytes())
    rc = upper / "usr/sbin/policy-rc.d"
    rc.parent.mkdir(parents=True)
    rc.write_text(POLICY_RC_D)
    rc.chmod(0o755)
    return copied


def parse_status(text: str) -> dict[str, str]:
    """dpkg's status file -> {package: version} of the installed packages."""
    out: dict[str, str] = {}
    for para in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in para.splitlines():
            if line and not line[0].isspace() and ":" in line:
                k, v = line.split(":", 1)
                fields[k.strip().lower()] = v.strip()
        if fields.get("package") and fields.get("status", "").endswith(" installed"):
            out[fields["package"]] = fields.get("version", "")
    return out


def installed_by_app(upper: Path, lower: Path) -> dict[str, str]:
    """Packages installed or changed by the app: the upper's dpkg status minus the base's."""
    status = upper / "var/lib/dpkg/status"
    if not status.is_file():
        return {}
    base = parse_status((lower / "var/lib/dpkg/status").read_text(errors="replace"))
    now = parse_status(status.read_text(errors="replace"))
    return {p: v for p, v in sorted(now.items()) if base.get(p) != v}


def new_entries(upper_file: Path, lower_file: Path) -> list[str]:
    """Lines of a passwd/group-style file that the upper layer added (by name)."""
    if not upper_file.is_file():
        return []
    old = {ln.split(":", 1)[0] for ln in lower_file.read_text().splitlines()} if lower_file.is_file() else set()
    return [ln for ln in upper_file.read_text().splitlines() if ln and ln.split(":", 1)[0] not in old]


def _chroot(merged: Path, *argv: str) -> list[str]:
    return ["chroot", str(merged), *argv]


def _install(merged: Path, package: str, progress: Progress, lock_fd: int) -> None:
    last = [0.0]

    def on_line(line: str) -> None:
        now = time.monotonic()
        if line.startswith(("Setting up ", "Get:", "Fetched ", "E:", "W:")) and now - last[0] >= 3:
            last[0] = now
            progress.log(f"  apt: {line.strip()[:100]}")

    progress.log("apt-get update (in the chroot)")
    run(_chroot(merged, "apt-get", *APT_OPTS, "update"), UPDATE_TIMEOUT, what="apt-get update", keep_fds=(lock_fd,))
    try:
        run(_chroot(merged, "apt-cache", "show", package), 60, what=f"apt-cache show {package}")
    except TinyxError as e:
        raise TinyxError(
            f"unknown Debian package {package!r} (apt-cache show found nothing); "
            "give a package name or a path to an ELF executable"
        ) from e
    progress.log(f"apt-get install --no-install-recommends {package} ...")
    run(
        _chroot(merged, "apt-get", *APT_OPTS, "-y", "--no-install-recommends", "install", package),
        INSTALL_TIMEOUT,
        what=f"apt-get install {package}",
        keep_fds=(lock_fd,),
        on_line=on_line,
    )


def ensure_app(
    base: Base, package: str, progress: Progress, lock_fd: int, rebuild: bool = False, candidate: str | None = None
) -> App:
    """The cached install of ``package`` over ``base``, installed first if absent;
    ``candidate`` is the host's candidate version if the caller looked it up already."""
    candidate = candidate or host_candidate(package)
    k = cache.key("app", base.key, package, candidate)
    path = cache.entry("app", k, base.path.parent)
    meta = cache.read_meta(path)
    if meta is not None and not rebuild and (path / "upper").is_dir():
        progress.hit("apt install", "cached", f"{package} {candidate}: {path.name}")
        return App(path, k, meta)
    progress.hit("apt install", "building", f"{package} {candidate}")
    t0 = time.monotonic()
    tmp = cache.begin(path)
    try:
        upper, work, merged = tmp / "upper", tmp / "work", tmp / "merged"
        for d in (upper, work, merged):
            d.mkdir()
        copied = prepare_upper(upper, base.tree)
        opts = f"lowerdir={base.tree},upperdir={upper},workdir={work}"
        with mounted(merged, ["-t", "overlay", "overlay", "-o", opts], "mount the overlay"):
            run(["mount", "-t", "proc", "proc", merged / "proc"], 60, what="mount /proc in the chroot")
            run(["mount", "--bind", "/dev", merged / "dev"], 60, what="bind /dev into the chroot")
            _install(merged, package, progress, lock_fd)
        remove_tree(work)
        remove_tree(merged)
        # The indexes and the downloaded .debs: big, stale soon, pruned from the image anyway.
        # Removed from the upper only (apt-get clean in the chroot would whiteout the base's).
        remove_tree(upper / "var/lib/apt/lists")
        for deb in (upper / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        lower = base.tree
        meta = {
            "package": package,
            "candidate": candidate,
            "base": base.key,
            "installed": installed_by_app(upper, lower),
            "users": new_entries(upper / "etc/passwd", lower / "etc/passwd"),
            "groups": new_entries(upper / "etc/group", lower / "etc/group"),
            "host_apt_files": len(copied),
            "seconds": round(time.monotonic() - t0, 1),
        }
        if package not in meta["installed"]:
            raise TinyxError(
                f"{package} is part of the {base.path.name} tree already, so the app layer does not hold it; "
                "build from its executable's path instead (lightvm image build /usr/bin/PROGRAM)"
            )
        cache.publish(tmp, path, meta)
    except BaseException:
        remove_tree(tmp)
        raise
    progress.log(f"installed {package} ({len(meta['installed'])} packages) in {time.monotonic() - t0:.0f}s")
    return App(path, k, meta)
