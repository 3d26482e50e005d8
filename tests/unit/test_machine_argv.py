"""QEMU command line and Machine runstate guards: no QEMU needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightvm.errors import MachineError, StateError
from lightvm.machine import MICROVM, QEMU_BINARY, Machine, MachineConfig, Runstate, build_argv, virtio_mmio_devices


def config(tmp_path: Path, **overrides: object) -> MachineConfig:
    values: dict[str, object] = dict(
        name="vm1",
        kernel=Path("/k/noop.elf"),
        memory_mib=8,
        vcpus=2,
        cmdline="a=b c",
        accel="tcg",
        noxs_path=Path("/dev/shm/lightvm-abc"),
        noxs_size=8192,
        console_path=tmp_path / "console.log",
        qmp_path=tmp_path / "qmp.sock",
        log_path=tmp_path / "qemu.log",
    )
    values.update(overrides)
    return MachineConfig(**values)  # type: ignore[arg-type]


def opt(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def fake_build(tmp_path: Path, patches: str) -> str:
    """A binary path whose BUILDINFO lists ``patches`` (as qemu/build.sh writes it)."""
    build = tmp_path / "build"
    build.mkdir()
    (build / "BUILDINFO").write_text(f"debian_source_version=1:7.2\nconfigure=--x\npatches={patches}\n")
    return str(build / "qemu-system-x86_64")


def test_argv_for_tcg(tmp_path: Path) -> None:
    argv = build_argv(config(tmp_path), qmp_fd=7)
    assert argv[0] == QEMU_BINARY
    argv = build_argv(config(tmp_path, binary=fake_build(tmp_path, "tb-htable.patch")), qmp_fd=7)
    assert argv[-1] == "-S"  # launched paused
    for flag in ("-nodefaults", "-no-user-config", "-no-reboot"):
        assert flag in argv
    assert opt(argv, "-M") == [f"{MICROVM},memory-backend=ram"]
    assert MICROVM.startswith("microvm,pcie=on")
    assert "memory-backend-memfd,id=ram,size=8M" in opt(argv, "-object")
    assert opt(argv, "-accel") == ["tcg,tb-size=1"] and "-cpu" not in argv
    assert opt(argv, "-m") == ["8M"] and opt(argv, "-smp") == ["2"]
    assert opt(argv, "-kernel") == ["/k/noop.elf"] and opt(argv, "-append") == ["a=b c"]
    assert opt(argv, "-display") == ["none"]
    assert "memory-backend-file,id=noxs,mem-path=/dev/shm/lightvm-abc,size=8192,share=on" in opt(argv, "-object")
    devices = opt(argv, "-device")
    assert "ivshmem-plain,memdev=noxs,master=on" in devices
    assert "isa-debug-exit,iobase=0xf4,iosize=4" in devices
    chardevs = opt(argv, "-chardev")
    assert f"file,id=con,path={tmp_path}/console.log" in chardevs
    assert "socket,id=qmp,fd=7,server=on,wait=off" in chardevs
    assert opt(argv, "-serial") == ["chardev:con"] and opt(argv, "-mon") == ["chardev=qmp,mode=control"]


def test_big_guests_keep_the_default_translation_cache(tmp_path: Path) -> None:
    argv = build_argv(config(tmp_path, memory_mib=512), qmp_fd=3)
    assert opt(argv, "-accel") == ["tcg"]
    assert "memory-backend-memfd,id=ram,size=512M" in opt(argv, "-object")


def test_argv_for_kvm_avoids_the_msr_abort(tmp_path: Path) -> None:
    argv = build_argv(config(tmp_path, accel="kvm"), qmp_fd=3)
    assert opt(argv, "-accel") == ["kvm"]
    assert opt(argv, "-cpu") == ["host,-arch-capabilities"]


def test_argv_escapes_commas_in_option_values(tmp_path: Path) -> None:
    argv = build_argv(config(tmp_path, noxs_path=Path("/dev/shm/a,b"), console_path=Path("/x,y/c.log")), qmp_fd=3)
    assert any("mem-path=/dev/shm/a,,b," in o for o in opt(argv, "-object"))
    assert "file,id=con,path=/x,,y/c.log" in opt(argv, "-chardev")


def test_a_console_pipe_replaces_the_console_file(tmp_path: Path) -> None:
    argv = build_argv(config(tmp_path, console_pipe=Path("/v,m/console")), qmp_fd=3)
    assert "pipe,id=con,path=/v,,m/console" in opt(argv, "-chardev")
    assert not any(o.startswith("file,id=con") for o in opt(argv, "-chardev"))
    assert "chardev:con" in opt(argv, "-serial")


def test_extra_args_come_before_S(tmp_path: Path) -> None:
    argv = build_argv(config(tmp_path, extra_args=("-netdev", "user,id=n0")), qmp_fd=3)
    assert argv[-3:] == ["-netdev", "user,id=n0", "-S"]


def test_unknown_accel(tmp_path: Path) -> None:
    with pytest.raises(MachineError, match="unknown accelerator"):
        build_argv(config(tmp_path, accel="hvf"), qmp_fd=3)


def test_runstate_guards(tmp_path: Path) -> None:
    machine = Machine(config(tmp_path))
    assert machine.runstate is Runstate.CREATED
    with pytest.raises(StateError, match=r"cannot pause a machine that is created.*needs running"):
        machine.pause()
    with pytest.raises(StateError, match="cannot resume"):
        machine.resume()
    machine.shutdown()  # nothing launched: a no-op that still cleans up
    assert machine.runstate is Runstate.SHUTDOWN
    with pytest.raises(StateError, match="cannot launch a machine that is shutdown"):
        machine.launch()


def test_launch_error_carries_command_and_log(tmp_path: Path) -> None:
    machine = Machine(config(tmp_path, binary=str(tmp_path / "no-such-qemu")))
    with pytest.raises(MachineError, match="cannot run") as info:
        machine.launch()
    assert "\n" not in str(info.value)
    assert machine.runstate is Runstate.SHUTDOWN
    assert not (tmp_path / "qmp.sock").exists()


def test_bios_goes_before_the_kernel(tmp_path: Path) -> None:
    argv = build_argv(config(tmp_path, bios=Path("/fw/lvfw.bin")), qmp_fd=3)
    assert opt(argv, "-bios") == ["/fw/lvfw.bin"]
    assert argv.index("-bios") < argv.index("-kernel")
    assert "-bios" not in build_argv(config(tmp_path), qmp_fd=3)


@pytest.mark.parametrize(("value", "merged"), [("1", "yes"), (None, "no")])
def test_ksm_opt_in_reaches_the_processes_we_start(value: str | None, merged: str) -> None:
    """LIGHTVM_KSM=1 marks the spawning process for KSM, and exec'd children inherit it
    (what QEMU gets); without it nothing changes. In a child interpreter: the mark is for good."""
    import subprocess
    import sys

    if not Path("/proc/self/ksm_stat").exists():
        pytest.skip("this kernel has no /proc/PID/ksm_stat (Linux < 6.1) to check the mark with")
    env = {} if value is None else {"LIGHTVM_KSM": value}
    code = (
        "import subprocess; from lightvm.machine import spawn_setup; "
        f"spawn_setup({env!r}); "
        "print(subprocess.run(['cat', '/proc/self/ksm_stat'], capture_output=True, text=True, timeout=10).stdout)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True).stdout
    assert f"ksm_merge_any: {merged}" in out, out


NIC = ["-netdev", "user,id=n0", "-device", "virtio-net-device,netdev=n0,mac=52:54:00:00:00:01"]
DISK = ["-drive", "if=none,id=d0,file=/x", "-device", "virtio-blk-device,drive=d0"]


def test_virtio_mmio_devices_counts_only_virtio_mmio_devices() -> None:
    assert virtio_mmio_devices([]) == 0
    assert virtio_mmio_devices(["-device", "ivshmem-plain,memdev=noxs", "-device", "isa-debug-exit"]) == 0
    assert virtio_mmio_devices(NIC + DISK) == 2
    assert virtio_mmio_devices(["-device", "virtio-net-pci,netdev=n0"]) == 0  # PCI, not a transport


@pytest.mark.parametrize(("extra", "transports"), [((), 0), (tuple(NIC), 1), (tuple(NIC + DISK), 2)])
def test_slim_build_gets_one_transport_per_device(tmp_path: Path, extra: tuple[str, ...], transports: int) -> None:
    binary = fake_build(tmp_path, "idle-memory.patch microvm-virtio-transports.patch")
    argv = build_argv(config(tmp_path, binary=binary, extra_args=extra), qmp_fd=7)
    assert opt(argv, "-M") == [f"{MICROVM},memory-backend=ram,x-virtio-transports={transports}"]


def test_other_machine_types_get_no_transport_count(tmp_path: Path) -> None:
    binary = fake_build(tmp_path, "microvm-virtio-transports.patch")
    argv = build_argv(config(tmp_path, binary=binary, machine="q35", extra_args=tuple(NIC)), qmp_fd=7)
    assert opt(argv, "-M") == ["q35,memory-backend=ram"]
