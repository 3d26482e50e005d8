"""The accelerator probe's boot path, run under TCG (kvm here is the unusable nested PVM)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from lightvm import accel
from lightvm.state import SHM_PREFIX, shm_dir

pytestmark = pytest.mark.functional

REAL_KVM = "this host has a working /dev/kvm (not kvm_pvm): auto may pick kvm here; the CI hosts' rule is tcg"


def _probe_files() -> set[str]:
    return {n for n in os.listdir(shm_dir()) if n.startswith(f"{SHM_PREFIX}probe-")}


def test_probe_boot_under_tcg_leaves_nothing(images: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTVM_CACHE_DIR", str(cache_dir))
    before = _probe_files()
    ms = accel.probe_boot(images / "noop.elf", "tcg", timeout=10)
    assert 0 < ms < 5000
    assert _probe_files() <= before


def test_auto_on_this_host_is_tcg_without_booting(monkeypatch: pytest.MonkeyPatch, cache_dir: Path) -> None:
    monkeypatch.setenv("LIGHTVM_CACHE_DIR", str(cache_dir))
    if accel.kvm_open_error() is None and not accel.PVM_MODULE.exists():
        pytest.skip(REAL_KVM)

    def no_probe(kernel: Path) -> accel.AccelChoice:
        raise AssertionError("kvm_pvm or no /dev/kvm must be decided without a probe boot")

    monkeypatch.setattr(accel, "probe", no_probe)
    assert accel.select("auto").accel == "tcg"


def test_cli_auto_runs_tcg(lightvm: Any) -> None:
    if accel.kvm_open_error() is None and not accel.PVM_MODULE.exists():
        pytest.skip(REAL_KVM)
    noop = Path(__file__).resolve().parents[2] / "examples" / "noop.toml"
    out = lightvm.ok("create", str(noop), "--json").out  # --accel auto (the default)
    assert '"accel": "tcg"' in out
