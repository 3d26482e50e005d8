"""Accelerator choice without booting anything: the probe is replaced where it would run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lightvm import accel, hostfacts
from lightvm.errors import AccelError


@pytest.fixture(autouse=True)
def private_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(hostfacts.CACHE_ENV, str(tmp_path / "cache"))


def no_probe(kernel: Path) -> accel.AccelChoice:
    raise AssertionError("the probe must not run here")


def test_tcg_always(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "probe", no_probe)
    assert accel.select("tcg").accel == "tcg"


def test_unknown_name() -> None:
    with pytest.raises(AccelError, match="unknown accelerator"):
        accel.select("hvf")


def test_pvm_is_unusable_without_probing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(accel, "kvm_open_error", lambda: None)
    module = tmp_path / "kvm_pvm"
    module.mkdir()
    monkeypatch.setattr(accel, "PVM_MODULE", module)
    monkeypatch.setattr(accel, "probe", no_probe)
    choice = accel.select("auto")
    assert choice.accel == "tcg" and "kvm_pvm" in choice.reason


def test_this_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the CI hosts /dev/kvm is the nested PVM: auto must say tcg without a probe."""
    if accel.kvm_open_error() is None and not accel.PVM_MODULE.exists():
        pytest.skip("this host has a working /dev/kvm (not kvm_pvm): the probe decides here, not the CI hosts' rule")
    monkeypatch.setattr(accel, "probe", no_probe)
    assert accel.select("auto").accel == "tcg"


def test_no_kvm_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "kvm_open_error", lambda: "/dev/kvm: No such file or directory")
    assert accel.select("auto").accel == "tcg"
    with pytest.raises(AccelError, match="--accel kvm: /dev/kvm"):
        accel.select("kvm")


def test_kvm_forced_where_it_opens(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(accel, "kvm_open_error", lambda: None)
    monkeypatch.setattr(accel, "PVM_MODULE", tmp_path / "absent")
    assert accel.select("kvm").accel == "kvm"


def test_probe_verdict_is_cached(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(accel, "kvm_open_error", lambda: None)
    monkeypatch.setattr(accel, "PVM_MODULE", tmp_path / "absent")
    kernel = tmp_path / "noop.elf"
    kernel.write_bytes(b"x")
    monkeypatch.setenv(accel.PROBE_KERNEL_ENV, str(kernel))
    calls: list[Path] = []

    def fake_probe(k: Path) -> accel.AccelChoice:
        calls.append(k)
        return accel.AccelChoice("tcg", "kvm probe slower than tcg")

    monkeypatch.setattr(accel, "probe", fake_probe)
    assert accel.select("auto").accel == "tcg"
    assert accel.select("auto").reason.startswith("cached probe")
    assert calls == [kernel]
    # Another QEMU build or kernel: a different key, so the probe runs again.
    monkeypatch.setattr(accel, "host_key", lambda binary="": "other")
    accel.select("auto")
    assert len(calls) == 2


def test_tsc_rate_is_measured_once_per_boot(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(hostfacts, "measure_tsc_hz", lambda interval=0.03: calls.append(1) or 2_000_000_000)
    assert hostfacts.tsc_hz() == 2_000_000_000
    assert hostfacts.tsc_hz() == 2_000_000_000
    assert len(calls) == 1


def test_tsc_measurement_is_plausible() -> None:
    """0 exactly where the TSC cannot serve (not x86-64, or not invariant); elsewhere a rate
    in range that a second, 5x longer measurement confirms to 1%."""
    invariant = os.uname().machine == "x86_64" and {"constant_tsc", "nonstop_tsc"} <= hostfacts._cpu_flags()
    short = hostfacts.measure_tsc_hz(0.01)
    if not invariant:
        assert short == 0
        return
    long = hostfacts.measure_tsc_hz(0.05)
    assert hostfacts.TSC_MIN_HZ <= short <= hostfacts.TSC_MAX_HZ, short
    assert abs(short - long) <= long / 100, (short, long)
