"""The accelerator probe's boot path, run under TCG (kvm here is the unusable nested PVM)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from lightvm import accel

pytestmark = pytest.mark.functional


def test_probe_boot_under_tcg_leaves_nothing(images: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTVM_CACHE_DIR", str(cache_dir))
    before = {n for n in os.listdir("/dev/shm") if n.startswith("lightvm-probe-")}
    ms = accel.probe_boot(images / "noop.elf", "tcg", timeout=10)
    assert 0 < ms < 5000
    after = {n for n in os.listdir("/dev/shm") if n.startswith("lightvm-probe-")}
    assert after <= before


def test_auto_on_this_host_is_tcg_without_booting(monkeypatch: pytest.MonkeyPatch, cache_dir: Path) -> None:
    monkeypatch.setenv("LIGHTVM_CACHE_DIR", str(cache_dir))
    if accel.kvm_open_error() is None and not accel.PVM_MODULE.exists():
        return  # a host with a real kvm: the probe decides (not the CI hosts)

    def no_probe(kernel: Path) -> accel.AccelChoice:
        raise AssertionError("kvm_pvm or no /dev/kvm must be decided without a probe boot")

    monkeypatch.setattr(accel, "probe", no_probe)
    assert accel.select("auto").accel == "tcg"


def test_cli_auto_runs_tcg(lightvm: Any) -> None:
    if accel.kvm_open_error() is None and not accel.PVM_MODULE.exists():
        return  # auto could pick a working kvm there; tests run TCG only
    noop = Path(__file__).resolve().parents[2] / "examples" / "noop.toml"
    out = lightvm.ok("create", str(noop), "--json").out  # --accel auto (the default)
    assert '"accel": "tcg"' in out
