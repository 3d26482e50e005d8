"""Why ``--accel auto`` chose tcg reaches the user: one stderr line from create, ``accel_reason`` in JSON.

Fake verdicts and fake backends: nothing boots here.
"""

from __future__ import annotations

import errno
import json
import types
from pathlib import Path
from typing import Any

import pytest
from clilib import run_with

from lightvm import accel, hostfacts
from lightvm.cli import backend as backendmod
from lightvm.cli import vm
from lightvm.toolstack import CreateResult

PVM = "kvm unusable: /dev/kvm is the nested PVM hypervisor (kvm_pvm), slower than tcg"


@pytest.fixture(autouse=True)
def private_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(hostfacts.CACHE_ENV, str(tmp_path / "cache"))


def test_note_only_when_auto_fell_back_to_tcg() -> None:
    assert vm.accel_note("auto", "tcg", PVM) == f"accel: tcg ({PVM})"
    assert vm.accel_note("auto", "kvm", "kvm probe booted in 0.1 ms vs tcg 9.0 ms") is None
    assert vm.accel_note("tcg", "tcg", "requested") is None
    assert vm.accel_note("auto", "tcg", None) is None  # an older lightvmd sends no reason


def test_reasons_say_why(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(accel, "KVM_DEVICE", tmp_path / "kvm")  # absent
    choice = accel.select("auto")
    assert choice.accel == "tcg"
    assert choice.reason == f"kvm unusable: {tmp_path / 'kvm'}: No such file or directory (no KVM on this host: " \
        "kernel module kvm_intel/kvm_amd not loaded, or no virtualization)"  # fmt: skip
    monkeypatch.setattr(accel, "kvm_open_error", lambda: None)
    module = tmp_path / "kvm_pvm"
    module.mkdir()
    monkeypatch.setattr(accel, "PVM_MODULE", module)
    assert accel.select("auto") == accel.AccelChoice("tcg", PVM)


def test_permission_denied_names_the_group(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    device = tmp_path / "kvm"
    device.touch()
    monkeypatch.setattr(accel, "KVM_DEVICE", device)

    def denied(*args: Any) -> int:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(accel.os, "open", denied)
    monkeypatch.setattr(accel.grp, "getgrgid", lambda gid: type("G", (), {"gr_name": "kvm"})())
    assert accel.kvm_open_error() == (
        f"{device}: Permission denied (join group 'kvm': sudo usermod -aG kvm $USER, then log in again)"
    )


class Backend:
    """Results as lightvm.cli.backend returns them, with the verdict's reason."""

    def __init__(self, routed: bool, accel_name: str = "tcg", reason: str = PVM) -> None:
        self.routed = routed
        self.accel, self.reason = accel_name, reason

    def create(self, request: dict[str, Any], progress: Any) -> list[dict[str, Any]]:
        boot = {"qemu_up": 10.0, "resumed": 11.0, "guest_entry": 12.5, "devices_up": 13.0, "ready": 14.25}
        r = {"name": request["name"], "id": "x", "accel": self.accel, "pid": 42, "app": "noop", "network": None,
             "boot_ms": boot, "accel_reason": self.reason}  # fmt: skip
        if self.routed:
            r["path"] = "pool"
        else:
            progress(r, 1, 1)
        return [r]


def create(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], backend: Backend, *argv: str
) -> tuple[int, str, str]:
    return run_with(monkeypatch, capsys, backend, "create", "x.toml", "--name", "v", *argv)


@pytest.mark.parametrize("routed", [False, True])
def test_create_prints_the_reason_on_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], routed: bool
) -> None:
    code, out, err = create(monkeypatch, capsys, Backend(routed))
    assert code == 0 and err == f"accel: tcg ({PVM})\n"
    assert out.splitlines()[0] == "v: noop READY in 14.2 ms (tcg, pid 42)"  # stdout as before


@pytest.mark.parametrize("argv", [("--accel", "tcg"), ("--accel", "kvm")])
def test_no_note_when_asked_for_or_on_kvm(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    backend = Backend(False, argv[1], "requested")
    assert create(monkeypatch, capsys, backend, *argv)[2] == ""
    backend = Backend(True, "kvm", "cached probe: kvm probe booted in 0.1 ms vs tcg 9.0 ms")
    assert create(monkeypatch, capsys, backend)[2] == ""


@pytest.mark.parametrize("routed", [False, True])
def test_json_carries_the_reason_and_stays_on_stdout(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], routed: bool
) -> None:
    code, out, err = create(monkeypatch, capsys, Backend(routed), "--json")
    (obj,) = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and err == "" and obj["accel"] == "tcg" and obj["accel_reason"] == PVM


def test_local_backend_passes_the_request_and_the_results_carry_the_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The Toolstack resolves the verdict (one select per create) and puts its reason in
    each CreateResult; the local backend hands both through unchanged."""
    seen: dict[str, Any] = {}

    class Toolstack:
        def create(self, spec: Any, **kwargs: Any) -> list[CreateResult]:
            seen.update(kwargs)
            result = CreateResult("v", "1", "tcg", {"ready": 1.0}, 42, "noop", accel_reason=PVM)
            kwargs["progress"](result, 1, 1)
            return [result]

    local = backendmod.LocalBackend.__new__(backendmod.LocalBackend)
    local.ts = Toolstack()  # type: ignore[assignment]
    progressed: list[dict[str, Any]] = []
    request = {"config": tmp_path / "x.toml", "name": "v", "count": 1, "accel": "auto", "jobs": None, "publish": []}
    spec = types.SimpleNamespace(snapshot=None)  # a config without a snapshot: the Toolstack boots it
    monkeypatch.setattr("lightvm.spec.load_spec", lambda path, overrides=None: spec)
    (result,) = local.create(request, lambda r, done, count: progressed.append(r))
    assert seen["accel"] == "auto"  # the Toolstack resolves it (and keeps the reason)
    assert result["accel_reason"] == PVM and progressed == [result]
    keys = ["name", "id", "accel", "pid", "app", "network", "boot_ms"]
    assert list(result) == [*keys, "accel_reason"]  # keys added, none renamed or moved
