"""Files the user names (config, kernel, initrd, disk, checkpoint) that are not regular
files are refused at once with one line, never opened in a way that blocks: a FIFO
named as a kernel used to hang `create` forever (and, through lightvmd, leave one
blocked daemon thread per request)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from daemonlib import Lightvmd

from lightvm.errors import LightVMError

pytestmark = pytest.mark.functional

REPO = Path(__file__).resolve().parents[2]
NOOP_ELF = REPO / "images" / "build" / "noop.elf"
BOUND = 20.0  # far above a refusal (~0.3 s); a blocked open never returns


def _refused(lightvm: Any, *args: str) -> str:
    t0 = time.monotonic()
    result = lightvm.run(*args, timeout=BOUND)
    assert time.monotonic() - t0 < BOUND
    assert result.code == 1, result.out + result.err
    assert result.err.startswith("lightvm: error: ") and result.err.count("\n") == 1, result.err
    assert lightvm.vm_dirs() == [] and lightvm.leftovers() == []
    return result.err


def test_fifo_kernel_is_refused(lightvm: Any, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "kernel.elf")
    (tmp_path / "vm.toml").write_text('kernel = "kernel.elf"\n')
    err = _refused(lightvm, "create", str(tmp_path / "vm.toml"), "--accel", "tcg")
    assert "key 'kernel'" in err and "not a regular file" in err and "FIFO" in err, err


def test_fifo_config_is_refused(lightvm: Any, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "vm.toml")
    err = _refused(lightvm, "create", str(tmp_path / "vm.toml"), "--accel", "tcg")
    assert "vm.toml" in err and "not a regular file" in err, err


def test_device_file_config_is_refused(lightvm: Any) -> None:
    err = _refused(lightvm, "create", "/dev/zero", "--accel", "tcg")
    assert "/dev/zero" in err and "not a regular file" in err, err


@pytest.mark.parametrize("key", ["initrd", "firmware"])
def test_fifo_initrd_and_firmware_are_refused(lightvm: Any, tmp_path: Path, key: str) -> None:
    os.mkfifo(tmp_path / "blob")
    (tmp_path / "vm.toml").write_text(f'kernel = "{NOOP_ELF}"\n{key} = "blob"\n')
    err = _refused(lightvm, "create", str(tmp_path / "vm.toml"), "--accel", "tcg")
    assert f"key '{key}'" in err, err


def test_fifo_disk_is_refused(lightvm: Any, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "disk.img")
    (tmp_path / "vm.toml").write_text(f'kernel = "{NOOP_ELF}"\n[[disks]]\npath = "disk.img"\n')
    err = _refused(lightvm, "create", str(tmp_path / "vm.toml"), "--accel", "tcg")
    assert "disk.img" in err and "not a file" in err, err


def test_fifo_checkpoint_is_refused(lightvm: Any, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "ckpt.lvm")
    err = _refused(lightvm, "restore", str(tmp_path / "ckpt.lvm"))
    assert "ckpt.lvm" in err and "not a regular file" in err, err


def test_fifo_kernel_through_lightvmd_blocks_no_thread(lightvmd: Lightvmd, tmp_path: Path) -> None:
    lightvmd.start(pool=None)
    os.mkfifo(tmp_path / "kernel.elf")
    config = tmp_path / "vm.toml"
    config.write_text('kernel = "kernel.elf"\n')
    for i in range(3):
        with pytest.raises(LightVMError, match="not a regular file"):
            lightvmd.call("create", {"config": str(config), "name": f"f{i}", "accel": "tcg"}, timeout=BOUND)
    assert lightvmd.call("list") == []
    # The daemon still answers at once: no worker is stuck on the FIFO.
    assert lightvmd.call("ping", timeout=5.0)
