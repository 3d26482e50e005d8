"""tests/guestlib.py runs guests under the product's command line (lightvm.machine.build_argv),
leaving out only what a test asks to."""

from __future__ import annotations

from pathlib import Path

from guestlib import FIRMWARE, MACHINE, qemu_argv

from lightvm.machine import MachineConfig, build_argv
from lightvm.qemubin import qemu_binary

KERNEL = Path("/images/noop.elf")
REGION = Path("/dev/shm/lvtest-x")


def product_argv(qmp_fd: int, cmdline: str, console_pipe: Path | None = None) -> list[str]:
    config = MachineConfig(
        name="noop",
        kernel=KERNEL,
        memory_mib=4,
        vcpus=1,
        cmdline=cmdline,
        accel="tcg",
        noxs_path=REGION,
        noxs_size=16384,
        console_path=Path("/tmp/t/console.log"),
        qmp_path=Path("/tmp/t/qmp.sock"),
        log_path=Path("/tmp/t/qemu.log"),
        machine=MACHINE,
        binary=qemu_binary(MACHINE),
        bios=FIRMWARE,
        console_pipe=console_pipe,
    )
    return build_argv(config, qmp_fd)


def test_paused_guest_with_qmp_is_the_product_command_line() -> None:
    argv = qemu_argv(
        KERNEL, REGION, 16384, console="file:/tmp/t/console.log", qmp_fd=7, paused=True, extra=["-append", "x=1"]
    )
    assert argv == product_argv(7, "x=1")


def test_what_a_test_may_leave_out() -> None:
    expected = product_argv(7, "")
    for option, value in (
        ("-append", ""),  # an empty command line
        ("-object", "memory-backend-file,id=noxs,"),  # region=None: no NoXS device
        ("-device", "ivshmem-plain,memdev=noxs,"),
        ("-device", "isa-debug-exit,"),  # debug_exit=False
        ("-chardev", "socket,id=qmp,"),  # no QMP
        ("-mon", "chardev=qmp,"),
    ):
        i = next(i for i, a in enumerate(expected) if a == option and expected[i + 1].startswith(value))
        del expected[i : i + 2]
    assert expected.pop() == "-S"  # not paused
    argv = qemu_argv(KERNEL, None, 0, console=Path("/tmp/t/console.log"), debug_exit=False, extra=["-s"])
    assert argv == [*expected, "-s"]


def test_console_pipe_is_the_product_pipe_chardev() -> None:
    """Guest(console_bell=True): the console as lightvm's pipe chardev (a pool shell's)."""
    pipe = Path("/tmp/t/console")
    argv = qemu_argv(
        KERNEL,
        REGION,
        16384,
        console="/tmp/t/console.log",
        qmp_fd=7,
        paused=True,
        console_pipe=pipe,
        extra=["-append", "x"],
    )
    assert argv == product_argv(7, "x", console_pipe=pipe)
    assert f"pipe,id=con,path={pipe}" in argv
