"""lightvm.qemubin: which QEMU binary runs which machine type. No QEMU needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightvm import qemubin
from lightvm.qemubin import DEBIAN_QEMU, ENV, machine_type, qemu_binary, slim_binary

MICROVM = "microvm,pcie=on,ioapic2=off,x-option-roms=off,rtc=off,pic=off"


@pytest.fixture
def slim(tmp_path: Path) -> Path:
    """A build tree like qemu/build.sh leaves: <hash>/qemu-system-x86_64 and current -> <hash>."""
    build = tmp_path / "build"
    (build / "0123abcd").mkdir(parents=True)
    exe = build / "0123abcd" / "qemu-system-x86_64"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    (build / "current").symlink_to("0123abcd")
    return build / "current" / "qemu-system-x86_64"


def test_machine_type_drops_options() -> None:
    assert machine_type(MICROVM) == "microvm"
    assert machine_type("q35") == "q35"
    assert machine_type("pc,accel=tcg") == "pc"


def test_microvm_uses_the_slim_build_resolved(slim: Path) -> None:
    got = qemu_binary(MICROVM, env={}, slim=slim)
    assert got == str(slim.resolve())
    assert "0123abcd" in got  # names the exact build, not the moving "current" link


@pytest.mark.parametrize("machine", ["pc", "q35", "pc-i440fx-7.2,accel=tcg", "microvmx"])
def test_other_machines_use_debians_binary(slim: Path, machine: str) -> None:
    assert qemu_binary(machine, env={}, slim=slim) == DEBIAN_QEMU


def test_env_override_wins_for_every_machine(slim: Path) -> None:
    env = {ENV: "/opt/qemu/bin/qemu-system-x86_64"}
    assert qemu_binary(MICROVM, env=env, slim=slim) == env[ENV]
    assert qemu_binary("q35", env=env, slim=slim) == env[ENV]


def test_empty_env_override_is_ignored(slim: Path) -> None:
    assert qemu_binary(MICROVM, env={ENV: ""}, slim=slim) == str(slim.resolve())


def test_without_a_build_falls_back_to_path(tmp_path: Path) -> None:
    missing = tmp_path / "build" / "current" / "qemu-system-x86_64"
    assert slim_binary(missing) is None
    assert qemu_binary(MICROVM, env={}, slim=missing) == DEBIAN_QEMU


def test_dangling_current_link_falls_back(tmp_path: Path) -> None:
    build = tmp_path / "build"
    build.mkdir()
    (build / "current").symlink_to("gone")
    assert qemu_binary(MICROVM, env={}, slim=build / "current" / "qemu-system-x86_64") == DEBIAN_QEMU


def test_non_executable_build_falls_back(slim: Path) -> None:
    # access(X_OK) is False for a file with no x bit even for root.
    slim.resolve().chmod(0o644)
    assert qemu_binary(MICROVM, env={}, slim=slim) == DEBIAN_QEMU


def test_directory_is_not_a_binary(tmp_path: Path) -> None:
    fake = tmp_path / "qemu-system-x86_64"
    fake.mkdir()
    assert slim_binary(fake) is None


def test_defaults_read_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "/x/qemu")
    assert qemu_binary() == "/x/qemu"
    monkeypatch.delenv(ENV)
    assert qemu_binary("q35") == DEBIAN_QEMU


def test_slim_path_is_the_repos_build() -> None:
    repo = Path(__file__).resolve().parents[2]
    assert repo / "qemu" / "build" / "current" / "qemu-system-x86_64" == qemubin.SLIM_QEMU
    assert (repo / "qemu" / "build.sh").is_file()


def test_explain_says_why(tmp_path: Path) -> None:
    missing = tmp_path / "none"
    assert "no slim build at" in qemubin.explain("microvm", {}, missing)
    assert "$LIGHTVM_QEMU" in qemubin.explain("microvm", {ENV: "/x/qemu"}, missing)
    assert "no q35 board" in qemubin.explain("q35,accel=tcg", {}, missing)


def test_build_patches_read_from_buildinfo(slim: Path) -> None:
    (slim.resolve().parent / "BUILDINFO").write_text(
        "debian_source_version=1:7.2\nconfigure=--x\npatches=a.patch microvm-virtio-transports.patch\n"
    )
    assert qemubin.build_patches(str(slim)) == {"a.patch", "microvm-virtio-transports.patch"}


@pytest.mark.parametrize(
    "buildinfo",
    [None, "debian_source_version=1:7.2\nconfigure=--x\n", "patches=\n"],
    ids=["no-buildinfo", "before-the-line-existed", "no-patches"],
)
def test_build_patches_empty_without_a_list(slim: Path, buildinfo: str | None) -> None:
    if buildinfo is not None:
        (slim.resolve().parent / "BUILDINFO").write_text(buildinfo)
    assert qemubin.build_patches(str(slim)) == frozenset()


def test_build_patches_of_a_path_name_is_empty() -> None:
    assert qemubin.build_patches(DEBIAN_QEMU) == frozenset()  # found on PATH: Debian's
