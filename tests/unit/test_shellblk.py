"""A shell's placeholder disks and the command line its VM is recorded with."""

from __future__ import annotations

from lightvm.devices import blk, shellblk
from lightvm.mobility.format import device_args


def test_shell_args_fix_each_devices_read_only_bit() -> None:
    args = shellblk.shell_args((True, False))
    assert args == [
        "-blockdev", "driver=null-co,node-name=ph0,size=512,read-zeroes=on,read-only=on",
        "-blockdev", "driver=raw,node-name=d0,file=ph0,read-only=on",
        "-device", "virtio-blk-device,drive=d0",
        "-blockdev", "driver=null-co,node-name=ph1,size=512,read-zeroes=on",
        "-blockdev", "driver=raw,node-name=d1,file=ph1",
        "-device", "virtio-blk-device,drive=d1",
    ]  # fmt: skip


def test_recorded_argv_is_a_cold_vms() -> None:
    disks = [blk.PreparedDisk(0, "/img/a,b.img", True, 8), blk.PreparedDisk(1, "/img/c.img", False, 16)]
    head = ["qemu-system-x86_64", "-M", "microvm", "-mon", "chardev=qmp,mode=control"]
    nic = ["-netdev", "user,id=n0", "-device", "virtio-net-device,netdev=n0"]
    shell = [*head, *nic, *shellblk.shell_args((True, False)), "-S"]
    recorded = shellblk.vm_argv(shell, disks)
    assert recorded == [*head, *nic, *blk.qemu_args(disks[0]), *blk.qemu_args(disks[1]), "-S"]
    assert "file=/img/a,,b.img" in recorded[recorded.index("-drive") + 1]  # QEMU's comma escape
    assert device_args(recorded) == [*nic, *blk.qemu_args(disks[0]), *blk.qemu_args(disks[1])]
