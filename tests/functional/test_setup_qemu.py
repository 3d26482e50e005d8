"""``lightvm setup qemu`` in the installed layout: the shipped qemu/build.sh is copied into the
cache dir and run there, and qemubin then finds the slim QEMU in the cache.

No compile here (a cold build is ~10 min on 2 cores): the cache's build folder is seeded with
a link to the checkout's existing build of the same hash, so build.sh takes its real "already
built" path (it checks the binary runs and points build/current at it). The hash is computed
as build.sh computes it (Debian source version + build.sh + devices.mak + patches), so a stale checkout
build fails here with a clear message instead of starting a build.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lightvm import hostfacts, paths, qemubin
from lightvm.cli import main as cli

REPO = Path(__file__).resolve().parents[2]
CHECKOUT_QEMU = REPO / "qemu"


def build_hash(binary: Path) -> str:
    """build.sh's hash for the Debian source version ``binary`` was built from."""
    out = subprocess.run([str(binary), "-version"], capture_output=True, text=True, timeout=10, check=True).stdout
    found = re.search(r"lightvm slim, Debian ([^)]+)\)", out)
    assert found, f"{binary} is not a lightvm slim build: {out!r}"
    data = f"debian-source qemu {found.group(1)}\n".encode()
    data += (CHECKOUT_QEMU / "build.sh").read_bytes() + (CHECKOUT_QEMU / "devices.mak").read_bytes()
    for patch in sorted((CHECKOUT_QEMU / "patches").glob("*.patch")):
        data += patch.read_bytes()
    return hashlib.sha256(data).hexdigest()[:16]


def test_setup_qemu_installed_layout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The checkout's build made by this build.sh (qemu/build may also hold others' builds).
    builds = [b.parent for b in (CHECKOUT_QEMU / "build").glob("*/qemu-system-x86_64") if b.parent.name != "current"]
    matching = [b.resolve() for b in builds if b.name == build_hash(b / "qemu-system-x86_64")]
    assert matching, f"no build of this qemu/build.sh in {CHECKOUT_QEMU / 'build'}: run scripts/bootstrap.sh"
    built = matching[0]
    # An installed package: site-packages/lightvm/_data/qemu as the wheel ships it.
    package = tmp_path / "site-packages" / "lightvm"
    shipped = package / "_data" / "qemu"
    shipped.mkdir(parents=True)
    for name in ("build.sh", "devices.mak"):
        shutil.copy2(CHECKOUT_QEMU / name, shipped / name)
    (shipped / "patches").mkdir()
    for patch in (CHECKOUT_QEMU / "patches").glob("*.patch"):
        shutil.copy2(patch, shipped / "patches" / patch.name)
    monkeypatch.setattr(paths, "PACKAGE", package)
    monkeypatch.setenv(hostfacts.CACHE_ENV, str(tmp_path / "cache"))
    assert paths.layout() == "installed"
    seeded = tmp_path / "cache" / "qemu" / "build" / built.name
    seeded.parent.mkdir(parents=True)
    seeded.symlink_to(built)
    assert qemubin.slim_binary(paths.slim_qemu()) is None  # no build/current yet

    assert cli.main(["setup", "qemu"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == str(built / "qemu-system-x86_64")
    assert qemubin.slim_binary(paths.slim_qemu()) == str(built / "qemu-system-x86_64")
    assert (tmp_path / "cache" / "qemu" / "build.sh").read_bytes() == (CHECKOUT_QEMU / "build.sh").read_bytes()
    for patch in (CHECKOUT_QEMU / "patches").glob("*.patch"):
        assert (tmp_path / "cache" / "qemu" / "patches" / patch.name).read_bytes() == patch.read_bytes()


def test_setup_qemu_without_a_shipped_script(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    package = tmp_path / "site-packages" / "lightvm"
    package.mkdir(parents=True)
    monkeypatch.setattr(paths, "PACKAGE", package)
    monkeypatch.setenv(hostfacts.CACHE_ENV, str(tmp_path / "cache"))
    assert cli.main(["setup", "qemu"]) == 1
    err = capsys.readouterr().err
    assert err == f"lightvm: error: {package / '_data' / 'qemu' / 'build.sh'} is missing: reinstall lightvm " \
        "(its wheel ships qemu/build.sh)\n"  # fmt: skip
    assert not (tmp_path / "cache" / "qemu" / "build").exists()  # nothing was run
