"""Where lightvm finds its files: the ONE module that owns every path lookup.

Why one module: lightvm runs from two layouts, and each lookup that guessed on its own
(``Path(__file__).parent.parent / "images"``) worked in a checkout and silently failed in an
installed wheel (no probe guest, so ``--accel auto`` fell to TCG without saying why).

The two layouts (see docs/install.md):

- **checkout**: this package sits in a source tree (``pyproject.toml`` and
  ``images/Makefile`` next to it). The data root is the tree itself: guests in
  ``images/build/``, examples in ``examples/``, built by ``scripts/bootstrap.sh``.
- **installed** (a wheel in site-packages): the data root is ``lightvm/_data/``, which
  the wheel build (``setup.py``) fills with the same relative layout: ``images/build/*.elf``
  and ``lvfw.bin``, ``noxs-virtio/build/noxs-read``, ``examples/``, ``tools/xsshim/``
  sources. Same layout, so an example's ``kernel = "../images/build/daytime.elf"``
  resolves in both.

Writable places are never in the data root (site-packages may be read-only): the cache
dir (``$LIGHTVM_CACHE_DIR``, else ``$XDG_CACHE_HOME/lightvm``, else ``~/.cache/lightvm``)
holds host facts, builds done on first use (the xenstore shim, Tinyx's) and, for an
installed package, the slim QEMU (``lightvm setup qemu`` builds it there). The state dir
(running VMs) is :func:`lightvm.state.default_state_dir`.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
DATA_DIR_NAME = "_data"
CACHE_ENV = "LIGHTVM_CACHE_DIR"


def checkout() -> Path | None:
    """The source tree this package runs from, or None when it is installed (a wheel)."""
    root = PACKAGE.parent
    if (root / "pyproject.toml").is_file() and (root / "images" / "Makefile").is_file():
        return root
    return None


def layout() -> str:
    """``checkout`` or ``installed``: which of the two layouts :func:`data_root` is."""
    return "checkout" if checkout() is not None else "installed"


def data_root() -> Path:
    """Where the read-only data lives: the checkout, else the package's ``_data`` folder."""
    tree = checkout()
    return tree if tree is not None else PACKAGE / DATA_DIR_NAME


def cache_dir() -> Path:
    """The per-user cache: ``$LIGHTVM_CACHE_DIR``, ``$XDG_CACHE_HOME/lightvm``, ``~/.cache/lightvm``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "lightvm"


def guests_dir() -> Path:
    """The built guest unikernels (``noop.elf``, ``daytime.elf``, ...) and ``lvfw.bin``."""
    return data_root() / "images" / "build"


def guest(name: str) -> Path:
    """One guest image by app name (``noop`` -> .../noop.elf); may not exist."""
    return guests_dir() / f"{name}.elf"


def examples_dir() -> Path:
    """The example VM configs (``daytime.toml``, ``noop.toml``, ...)."""
    return data_root() / "examples"


def example(name: str) -> Path | None:
    """The example config called ``name`` (``daytime``, or ``daytime.toml``), or None."""
    folder = examples_dir()
    candidates = [folder / name] if Path(name).suffix else [folder / f"{name}{s}" for s in (".toml", ".json")]
    return next((p for p in candidates if p.is_file()), None)


def resolve_config(given: str | os.PathLike[str]) -> Path:
    """A config argument as given if that file exists, else a bare example name's file.

    Why: an installed lightvm's examples are somewhere in site-packages;
    ``lightvm create daytime`` should find them without the user looking for that folder.
    """
    path = Path(given)
    if path.exists() or len(path.parts) != 1:
        return path
    found = example(str(path))
    return found if found is not None else path


def noxs_read() -> Path:
    """The static ``noxs-read`` tool (a Linux guest's or a test's reader of the NoXS page)."""
    return data_root() / "noxs-virtio" / "build" / "noxs-read"


def xsshim_source() -> Path:
    """The folder with the xenstore shim's source and Makefile (``tools/xsshim``)."""
    return data_root() / "tools" / "xsshim"


def xsshim_build() -> Path:
    """Where the shim is built: next to its source in a checkout, else the cache dir."""
    tree = checkout()
    return tree / "tools" / "xsshim" / "build" if tree is not None else cache_dir() / "xsshim"


def qemu_home() -> Path:
    """The folder of qemu/build.sh, whose build/ it builds into: the checkout's qemu/, else the
    cache dir's qemu/ (``lightvm setup qemu`` copies the shipped script there)."""
    tree = checkout()
    return tree / "qemu" if tree is not None else cache_dir() / "qemu"


def slim_qemu() -> Path:
    """Where the slim QEMU (qemu/build.sh) is looked for: ``qemu_home()/build/current/``."""
    return qemu_home() / "build" / "current" / "qemu-system-x86_64"


def noxs_sources() -> Path:
    """noxs-virtio's headers and validator (include/, lib/), compiled into lvinit."""
    return data_root() / "noxs-virtio"


def tinyx_package() -> Path:
    """The ``tinyx`` package folder (recipes in apps/, lvinit's C sources in init/, kconfig/):
    next to this one in both layouts."""
    return PACKAGE.parent / "tinyx"


def tinyx_build() -> Path:
    """The Tinyx builders' cache (Linux source and kernels, debootstrap trees, lvinit):
    ``tinyx/build`` in a checkout (shared by its tools and tests), else the cache dir."""
    tree = checkout()
    return tree / "tinyx" / "build" if tree is not None else cache_dir() / "tinyx"


def summary() -> dict[str, str]:
    """Every location, for ``lightvm host check`` and bug reports."""
    return {
        "layout": layout(),
        "data_root": str(data_root()),
        "guests": str(guests_dir()),
        "examples": str(examples_dir()),
        "cache": str(cache_dir()),
        "slim_qemu": str(slim_qemu()),
        "tinyx_build": str(tinyx_build()),
    }
