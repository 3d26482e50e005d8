"""Build the Tinyx platform kernel: Debian's linux-source-6.1, tinyconfig + a fragment -> vmlinux.

    python -m tinyx.kernel.build [--fragment tinyx/kconfig/qemu-microvm.config] [--jobs 2]

The result is cached by a content hash of (Debian source version, fragment, this script)
under tinyx/build/kernel-<hash>/ (vmlinux, config, build.json): a rebuild with nothing
changed prints the cached path at once. Unpacking and compiling run under ``nice -n 19``
with a timeout each; the object tree lives next to the result and is removed on success.
Progress goes to stderr; the last stdout line is the vmlinux path.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from lightvm import paths

TINYX = paths.tinyx_package()
BUILD = paths.tinyx_build()  # tinyx/build in a checkout, the cache dir when installed
DEFAULT_FRAGMENT = TINYX / "kconfig" / "qemu-microvm.config"
SOURCE_PACKAGE = "linux-source-6.1"
SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
UNPACK_TIMEOUT = 600
CONFIG_TIMEOUT = 300
BUILD_TIMEOUT = 3600
XEN_ELFNOTE_PHYS32_ENTRY = 18


class BuildError(Exception):
    pass


def log(start: float, msg: str) -> None:
    print(f"[tinyx-kernel {time.monotonic() - start:7.1f}s] {msg}", file=sys.stderr, flush=True)


def source_version() -> str:
    """The installed Debian version of linux-source-6.1 (part of the cache key)."""
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", SOURCE_PACKAGE],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as e:
        raise BuildError(f"{SOURCE_PACKAGE} is not installed (apt-get install {SOURCE_PACKAGE})") from e
    if not out or not SOURCE_TARBALL.is_file():
        raise BuildError(f"{SOURCE_PACKAGE} is not installed (apt-get install {SOURCE_PACKAGE})")
    return out


def parse_fragment(text: str) -> dict[str, str]:
    """CONFIG_X=y / =n / =value / '# CONFIG_X is not set' -> {"CONFIG_X": value}; 'n' for unset."""
    opts: dict[str, str] = {}
    for num, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            words = line[1:].split()
            if len(words) == 4 and words[0].startswith("CONFIG_") and words[1:] == ["is", "not", "set"]:
                opts[words[0]] = "n"
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.startswith("CONFIG_") or not value or not name[7:].replace("_", "").isalnum():
            raise BuildError(f"fragment line {num}: not CONFIG_NAME=value: {raw!r}")
        opts[name] = value
    return opts


def cache_key(version: str, fragment: bytes, script: bytes) -> str:
    h = hashlib.sha256()
    for part in (version.encode(), fragment, script):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:16]


def run(argv: list[str], timeout: float, cwd: Path | None = None) -> None:
    try:
        subprocess.run(
            argv, cwd=cwd, timeout=timeout, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
    except subprocess.TimeoutExpired as e:
        raise BuildError(f"{' '.join(argv[:4])}...: timed out after {timeout:.0f}s") from e
    except subprocess.CalledProcessError as e:
        raise BuildError(f"{' '.join(argv[:4])}... failed:\n{(e.stderr or '')[-2000:]}") from e


def unpack(version: str, start: float) -> Path:
    """/usr/src tarball -> tinyx/build/src-<version>/linux-source-6.1 (once per version)."""
    top = BUILD / f"src-{version}"
    tree = top / "linux-source-6.1"
    if (top / ".unpacked").exists():
        return tree
    shutil.rmtree(top, ignore_errors=True)
    top.mkdir(parents=True)
    log(start, f"unpacking {SOURCE_TARBALL} ({version})")
    try:
        run(["nice", "-n", "19", "tar", "-xJf", str(SOURCE_TARBALL), "-C", str(top)], UNPACK_TIMEOUT)
    except BaseException:
        shutil.rmtree(top, ignore_errors=True)
        raise
    (top / ".unpacked").touch()
    return tree


def read_config(path: Path) -> dict[str, str]:
    opts: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith("CONFIG_"):
            name, _, value = line.partition("=")
            opts[name] = value
    return opts


def check_config(wanted: dict[str, str], got: dict[str, str]) -> list[str]:
    """Fragment options whose value olddefconfig did not keep (a missing dependency)."""
    return [f"{k}: wanted {v}, got {got.get(k, 'n')}" for k, v in wanted.items() if got.get(k, "n") != v]


def has_pvh_note(vmlinux: Path) -> bool:
    """readelf -n: a Xen note of type 18 (XEN_ELFNOTE_PHYS32_ENTRY), which QEMU's PVH loader needs."""
    out = subprocess.run(["readelf", "-n", str(vmlinux)], capture_output=True, text=True, timeout=60).stdout
    owner = ""
    for line in out.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] in ("Xen", "GNU", "Linux"):
            owner = words[0]
            if owner == "Xen" and ("0x00000012" in words or "Unknown note type: (0x00000012)" in line):
                return True
        if owner == "Xen" and "0x00000012" in line:
            return True
    return False


def make_build(tree: Path, obj: Path, fragment: Path, jobs: int, start: float) -> None:
    make = ["nice", "-n", "19", "make", "-C", str(tree), f"O={obj}", "ARCH=x86_64"]
    log(start, "make tinyconfig")
    run([*make, "tinyconfig"], CONFIG_TIMEOUT)
    config = obj / ".config"
    with config.open("a") as f:
        f.write("\n" + fragment.read_text())
    log(start, f"merged {fragment.name}; make olddefconfig")
    run([*make, "olddefconfig"], CONFIG_TIMEOUT)
    bad = check_config(parse_fragment(fragment.read_text()), read_config(config))
    if bad:
        raise BuildError("olddefconfig dropped fragment options (a dependency is missing):\n  " + "\n  ".join(bad))
    log(start, f"make -j{jobs} vmlinux (nice 19)")
    deadline = time.monotonic() + BUILD_TIMEOUT
    # Its own process group: on a timeout or Ctrl-C the compilers go with make.
    proc = subprocess.Popen(
        [*make, f"-j{jobs}", "vmlinux"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    last = 0.0
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
            del lines[:-40]
            now = time.monotonic()
            if now > deadline:
                raise BuildError(f"make vmlinux: timed out after {BUILD_TIMEOUT}s")
            if now - last >= 10:
                last = now
                log(start, f"  {line.strip()[:100]}")
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired as e:
        raise BuildError(f"make vmlinux: timed out after {BUILD_TIMEOUT}s") from e
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if rc != 0:
        raise BuildError("make vmlinux failed:\n" + "\n".join(lines[-20:]))


def build(fragment: Path = DEFAULT_FRAGMENT, jobs: int = 2, keep_obj: bool = False) -> Path:
    start = time.monotonic()
    version = source_version()
    frag = fragment.read_bytes()
    parse_fragment(frag.decode())
    key = cache_key(version, frag, Path(__file__).read_bytes())
    out = BUILD / f"kernel-{key}"
    vmlinux = out / "vmlinux"
    if vmlinux.is_file():
        log(start, f"cached: {vmlinux}")
        return vmlinux
    tree = unpack(version, start)
    tmp = BUILD / f"kernel-{key}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    obj = tmp / "obj"
    obj.mkdir(parents=True)
    try:
        make_build(tree, obj, fragment, jobs, start)
        built = obj / "vmlinux"
        if not has_pvh_note(built):
            raise BuildError(f"{built} has no Xen PHYS32_ENTRY note: QEMU cannot start it (is CONFIG_PVH on?)")
        shutil.copy2(built, tmp / "vmlinux")
        shutil.copy2(obj / ".config", tmp / "config")
        elapsed = time.monotonic() - start
        (tmp / "build.json").write_text(
            json.dumps(
                {
                    "source": f"{SOURCE_PACKAGE} {version}",
                    "fragment": str(fragment.name),
                    "key": key,
                    "build_seconds": round(elapsed, 1),
                    "vmlinux_bytes": built.stat().st_size,
                    "jobs": jobs,
                },
                indent=2,
            )
            + "\n"
        )
        if not keep_obj:
            shutil.rmtree(obj)
        shutil.rmtree(out, ignore_errors=True)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(start, f"built {vmlinux} ({vmlinux.stat().st_size / 1e6:.2f} MB) in {time.monotonic() - start:.0f}s")
    return vmlinux


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM (timeout(1), a CI runner) cleans up like Ctrl-C: no half-built cache entry."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fragment", type=Path, default=DEFAULT_FRAGMENT)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--keep-obj", action="store_true", help="keep the object tree (for menuconfig/diffs)")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        print(build(args.fragment, args.jobs, args.keep_obj))
    except BuildError as e:
        print(f"tinyx-kernel: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tinyx-kernel: interrupted; partial outputs removed", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
