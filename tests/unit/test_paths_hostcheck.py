"""lightvm/paths.py (the one owner of file lookups) and ``lightvm host check``.

The installed layout is faked by pointing paths.PACKAGE at a folder with no checkout
around it; tests/root/test_wheel_install.py checks the real wheel.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightvm import accel, hostfacts, paths
from lightvm.cli import host
from lightvm.cli import main as cli

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def private_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(hostfacts.CACHE_ENV, str(tmp_path / "cache"))


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """paths as an installed package sees them: site-packages/lightvm with _data inside."""
    package = tmp_path / "site-packages" / "lightvm"
    examples = package / "_data" / "examples"
    examples.mkdir(parents=True)
    (examples / "daytime.toml").write_text('name = "daytime"\n')
    monkeypatch.setattr(paths, "PACKAGE", package)
    return package


def test_checkout_layout_is_the_source_tree() -> None:
    assert paths.checkout() == REPO
    assert paths.layout() == "checkout"
    assert paths.guest("noop") == REPO / "images" / "build" / "noop.elf"
    assert paths.example("daytime") == REPO / "examples" / "daytime.toml"
    assert paths.tinyx_build() == REPO / "tinyx" / "build"
    assert paths.slim_qemu() == REPO / "qemu" / "build" / "current" / "qemu-system-x86_64"


def test_installed_layout_reads_package_data_and_writes_the_cache(installed: Path, tmp_path: Path) -> None:
    assert paths.checkout() is None and paths.layout() == "installed"
    assert paths.data_root() == installed / "_data"
    assert paths.guest("noop") == installed / "_data" / "images" / "build" / "noop.elf"
    # Writable things never go into site-packages.
    cache = tmp_path / "cache"
    assert paths.cache_dir() == cache
    assert paths.xsshim_build() == cache / "xsshim"
    assert paths.tinyx_build() == cache / "tinyx"
    assert paths.slim_qemu() == cache / "qemu" / "build" / "current" / "qemu-system-x86_64"
    assert paths.tinyx_package() == installed.parent / "tinyx"


def test_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(paths.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.cache_dir() == tmp_path / "xdg" / "lightvm"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert paths.cache_dir() == Path.home() / ".cache" / "lightvm"


def test_config_argument_falls_back_to_a_packaged_example(
    installed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    packaged = installed / "_data" / "examples" / "daytime.toml"
    assert paths.resolve_config(Path("daytime")) == packaged
    assert paths.resolve_config(Path("daytime.toml")) == packaged
    (tmp_path / "daytime").write_text("")  # a file of that name wins: it is what the user named
    assert paths.resolve_config(Path("daytime")) == Path("daytime")
    assert paths.resolve_config(Path("sub/daytime")) == Path("sub/daytime")  # a path is never guessed
    assert paths.resolve_config(Path("nosuch")) == Path("nosuch")  # and the error names what was given


def test_fix_is_taken_from_the_reason() -> None:
    assert host.fix_in("crun not found (apt install crun)") == "apt install crun"
    reason = "/dev/kvm: Permission denied (join group 'kvm': sudo usermod -aG kvm $USER, then log in again)"
    assert host.fix_in(reason) == "sudo usermod -aG kvm $USER, then log in again"
    assert host.fix_in("kvm unusable: /dev/kvm is the nested PVM hypervisor (kvm_pvm), slower than tcg") is None


def test_accel_row_says_why_and_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    denied = (
        "kvm unusable: /dev/kvm: Permission denied (join group 'kvm': sudo usermod -aG kvm $USER, then log in again)"
    )
    monkeypatch.setattr(accel, "select", lambda requested: accel.AccelChoice("tcg", denied))
    row = host.check_accel()
    assert (row.status, row.detail) == ("missing", f"tcg: {denied}")
    assert row.fix is not None and row.fix.startswith("sudo usermod -aG kvm")
    pvm = "kvm unusable: /dev/kvm is the nested PVM hypervisor (kvm_pvm), slower than tcg"
    monkeypatch.setattr(accel, "select", lambda requested: accel.AccelChoice("tcg", pvm))
    assert (host.check_accel().status, host.check_accel().fix) == ("info", None)  # nothing to fix: tcg is right
    absent = "kvm unusable: /dev/kvm: No such file or directory (no KVM on this host: ...)"
    monkeypatch.setattr(accel, "select", lambda requested: accel.AccelChoice("tcg", absent))
    assert "modprobe" in (host.check_accel().fix or "")
    monkeypatch.setattr(accel, "select", lambda requested: accel.AccelChoice("kvm", "kvm probe booted in 1 ms"))
    assert host.check_accel().status == "ok"


def test_no_guests_means_cannot_boot(installed: Path) -> None:
    rows = host.check_guests()
    assert rows[0].status == "missing" and rows[0].essential
    assert rows[0].fix == "reinstall lightvm (its wheel ships the guests)"
    assert rows[1].status == "ok" and "daytime" in rows[1].detail  # the example is there
    assert host.report(rows)["can_boot"] is False


def test_cli_json_report(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "select", lambda requested: accel.AccelChoice("tcg", "requested"))
    assert cli.main(["host", "check", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["accel"] == {"accel": "tcg", "reason": "requested"}
    assert doc["paths"]["layout"] == "checkout" and doc["can_boot"] is True
    names = [c["name"] for c in doc["checks"]]
    assert names[:4] == ["accel", "qemu", "jail", "guests"]
    assert {"ksm", "hugepages", "network", "bench: crun", "bench: libvirt", "bench: xenstore"} <= set(names)
    assert all(c["status"] in ("ok", "missing", "info") for c in doc["checks"])


def test_debian_qemu_note_is_said_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from lightvm import qemubin
    from lightvm.cli import vm

    monkeypatch.delenv(qemubin.ENV, raising=False)
    monkeypatch.setattr(qemubin, "SLIM_QEMU", tmp_path / "no-slim-build")
    monkeypatch.setattr(qemubin, "slim_binary", lambda slim=None: None)
    first = vm.qemu_note()
    assert first is not None and "Debian's full build" in first and str(tmp_path / "no-slim-build") in first
    assert vm.qemu_note() is None  # remembered in the cache dir
    monkeypatch.setattr(qemubin, "slim_binary", lambda slim=None: "/x/qemu-system-x86_64")
    monkeypatch.setattr(qemubin, "SLIM_QEMU", tmp_path / "another")
    assert vm.qemu_note() is None  # a slim build runs: nothing to say


def test_lightvmd_logs_the_qemu_note(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A create lightvmd serves no longer checks the client's QEMU: the daemon, which
    chooses the QEMUs, says it in its log at every start."""
    from lightvm import qemubin
    from lightvm.daemon import server

    monkeypatch.delenv(qemubin.ENV, raising=False)
    monkeypatch.setattr(qemubin, "SLIM_QEMU", tmp_path / "no-slim-build")
    monkeypatch.setattr(qemubin, "slim_binary", lambda slim=None: None)
    note = server.qemu_note()
    assert note is not None and "Debian's full build" in note and str(tmp_path / "no-slim-build") in note
    assert server.qemu_note() == note  # a log line at each start, not once per cache dir
    monkeypatch.setenv(qemubin.ENV, "/usr/bin/qemu-system-x86_64")
    assert server.qemu_note() is None  # an override: the user chose
    monkeypatch.delenv(qemubin.ENV)
    monkeypatch.setattr(qemubin, "slim_binary", lambda slim=None: "/x/qemu-system-x86_64")
    assert server.qemu_note() is None  # a slim build runs: nothing to say


def test_host_check_reports_the_jail(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightvm import jail
    from lightvm.cli import host

    monkeypatch.setenv(jail.ENV, "off")
    off = host.check_jail()
    assert off.status == "missing" and "QEMU runs as root" in off.detail and off.fix == f"unset {jail.ENV}"
    monkeypatch.delenv(jail.ENV)
    monkeypatch.setattr(jail, "sandbox_supported", lambda binary: False)
    no_filter = host.check_jail()
    assert no_filter.status == "info" and "built without libseccomp" in no_filter.detail
    assert no_filter.fix == "lightvm setup qemu"
    monkeypatch.setattr(jail, "sandbox_supported", lambda binary: True)
    monkeypatch.setattr(jail.os, "geteuid", lambda: 1000)
    rootless = host.check_jail()
    assert rootless.detail.startswith("seccomp, no_new_privs; not on: own uid") and rootless.status == "info"
