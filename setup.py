"""The wheel build step: build the guests and put them, with the examples and the sources
built on first use, into the package as ``lightvm/_data`` (the layout lightvm/paths.py reads).

Why at wheel-build time and not on first use: a user who installs lightvm expects
``lightvm create daytime`` to boot at once; the guests are freestanding x86-64 ELFs (no libc,
no host dependency), built in ~10 s with gcc and make, so they belong in the wheel like any
compiled file. The wheel is tagged ``py3-none-linux_x86_64`` for that reason (noxs-read is a
static x86-64 Linux program). An editable install (``pip install -e``, scripts/bootstrap.sh)
builds nothing here: it runs from the checkout, whose guests bootstrap builds with make.

Everything is built in a temporary folder: the checkout's own build folders are never
written (they may be shared caches), and a failed or interrupted build leaves nothing.
All metadata is in pyproject.toml; this file only adds the build step.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.install_scripts import install_scripts

HERE = Path(__file__).resolve().parent
MAKE_TIMEOUT = 900
# Copied as they are (relative to the source tree, kept relative under _data): the examples,
# the xenstore shim's sources (built into the cache dir on first use), noxs-virtio's headers
# and validator (compiled into Tinyx's lvinit on first use).
SOURCES = {
    "examples": ("*.toml", "*.json"),
    "tools/xsshim": ("Makefile", "*.c"),
    "noxs-virtio/include": ("*.h",),
    "noxs-virtio/lib": ("*.c", "*.h"),
    "qemu": ("build.sh", "devices.mak"),  # `lightvm setup qemu` builds the slim QEMU with them
    "qemu/patches": ("*.patch",),  # ... and applies these over Debian's source
}


def _make(folder: Path, out: Path) -> None:
    """``make -C folder BUILD=out``: progress on stderr, the tool's output shown on failure."""
    argv = ["make", "-s", "-j2", "-C", str(folder), f"BUILD={out}"]
    print(f"lightvm wheel: {' '.join(argv)}", file=sys.stderr, flush=True)
    try:
        subprocess.run(argv, check=True, timeout=MAKE_TIMEOUT)
    except FileNotFoundError:
        raise SystemExit("lightvm wheel: building the guests needs make and gcc: apt-get install make gcc") from None
    except subprocess.SubprocessError as exc:
        raise SystemExit(f"lightvm wheel: {' '.join(argv)} failed ({exc}); see its output above") from None


def build_data(data: Path) -> None:
    """Fill ``data`` (lightvm/_data in the build tree) with guests, tools and sources."""
    with tempfile.TemporaryDirectory(prefix="lightvm-wheel-") as tmp:
        images, noxs = Path(tmp) / "images", Path(tmp) / "noxs"
        _make(HERE / "images", images)
        _make(HERE / "noxs-virtio", noxs)
        guests = data / "images" / "build"
        guests.mkdir(parents=True, exist_ok=True)
        built = [*images.glob("*.elf"), images / "lvfw.bin"]
        for path in built:
            shutil.copy2(path, guests / path.name)
        tools = data / "noxs-virtio" / "build"
        tools.mkdir(parents=True, exist_ok=True)
        shutil.copy2(noxs / "noxs-read", tools / "noxs-read")
    for rel, patterns in SOURCES.items():
        target = data / rel
        target.mkdir(parents=True, exist_ok=True)
        for pattern in patterns:
            for path in (HERE / rel).glob(pattern):
                shutil.copy2(path, target / path.name)
    print(f"lightvm wheel: {len(built)} guest files and the tools in {data}", file=sys.stderr, flush=True)


class BuildPyWithGuests(build_py):
    """build_py, then the guests into lightvm/_data (not for an editable install)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        data = Path(self.build_lib) / "lightvm" / "_data"
        shutil.rmtree(data, ignore_errors=True)  # a stale tree from an earlier build
        build_data(data)


def build_launcher(out: Path) -> None:
    """Compile bin/launcher.c, the installed ``lightvm`` command, into ``out``: static when
    the C library allows (no dynamic loader to run: ~0.3 ms less per command), else dynamic."""
    source = HERE / "bin" / "launcher.c"
    for static in (["-static"], []):
        argv = ["gcc", *static, "-O2", "-s", "-Wall", "-Wextra", "-o", str(out), str(source)]
        print(f"lightvm wheel: {' '.join(argv)}", file=sys.stderr, flush=True)
        try:
            done = subprocess.run(argv, timeout=MAKE_TIMEOUT, check=False)
        except FileNotFoundError:
            raise SystemExit("lightvm wheel: the lightvm command is compiled: apt-get install gcc") from None
        if done.returncode == 0:
            return
    raise SystemExit(f"lightvm wheel: compiling {source} failed; see gcc's output above")


class InstallScriptsWithLauncher(install_scripts):
    """install_scripts with the compiled launcher as ``lightvm`` among the built scripts
    (bin/lightvm-py, the Python command): it execs ``lightvm-py`` unless lightvmd's warm
    CLI server runs the command (lightvm/cli/warm.py, docs/cli-startup.md "The launcher").
    Here and not in build_scripts, which setuptools does not export; editable installs and
    wheels both install scripts through this command."""

    def run(self) -> None:
        Path(self.build_dir).mkdir(parents=True, exist_ok=True)
        build_launcher(Path(self.build_dir) / "lightvm")
        super().run()


def platform_wheel() -> type | None:
    """bdist_wheel tagged py3-none-linux_x86_64: pure Python, but it ships x86-64 Linux
    binaries. None when no bdist_wheel exists here (an sdist build needs none)."""
    try:  # setuptools >= 70.1 has bdist_wheel; older ones take it from the wheel package
        from setuptools.command.bdist_wheel import bdist_wheel
    except ImportError:
        try:
            from wheel.bdist_wheel import bdist_wheel  # type: ignore[no-redef]
        except ImportError:
            return None

    class PlatformWheel(bdist_wheel):  # type: ignore[misc,valid-type]
        def get_tag(self) -> tuple[str, str, str]:
            return "py3", "none", "linux_x86_64"

    return PlatformWheel


commands: dict[str, type] = {"build_py": BuildPyWithGuests, "install_scripts": InstallScriptsWithLauncher}
wheel_command = platform_wheel()
if wheel_command is not None:
    commands["bdist_wheel"] = wheel_command

setup(cmdclass=commands)
