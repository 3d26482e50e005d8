"""Bad input: each gets a one-line error naming the problem, and creates nothing.

"Nothing" is checked the way the leftovers fixture does it: no QEMU mentioning the
state dir, no VM folder, no NoXS file, no socket; plus the NoXS dir gains no file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from lightvm.state import SHM_PREFIX, shm_dir

pytestmark = pytest.mark.functional

REPO = Path(__file__).resolve().parents[2]
NOOP_ELF = REPO / "images" / "build" / "noop.elf"


def shm_files() -> set[str]:
    """The NoXS files (not the accel probe's) in the NoXS dir: the test session's own
    (tests/leakguard.py sets LIGHTVM_SHM_DIR), so nobody else's VMs come and go there."""
    return {n for n in os.listdir(shm_dir()) if n.startswith(SHM_PREFIX) and not n.startswith(f"{SHM_PREFIX}probe")}


def expect_error(lightvm: Any, config: Path, words: str, *extra: str) -> str:
    before = shm_files()
    result = lightvm.run("create", str(config), "--accel", "tcg", *extra)
    assert result.code == 1, result.out + result.err
    assert result.err.startswith("lightvm: error: "), result.err
    assert result.err.count("\n") == 1, f"not one line: {result.err!r}"
    assert words in result.err, result.err
    assert result.out == ""
    assert lightvm.vm_dirs() == [] and lightvm.leftovers() == []
    assert shm_files() <= before, "the failed create left a NoXS file"
    return result.err


def config(tmp_path: Path, text: str, name: str = "vm.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_missing_kernel(lightvm: Any, tmp_path: Path) -> None:
    err = expect_error(lightvm, config(tmp_path, 'kernel = "no-such.elf"\n'), "does not exist")
    assert "kernel" in err and "no-such.elf" in err


def test_non_elf_kernel(lightvm: Any, tmp_path: Path) -> None:
    (tmp_path / "kernel.bin").write_bytes(b"#!/bin/sh\necho not a kernel\n")
    err = expect_error(lightvm, config(tmp_path, 'kernel = "kernel.bin"\n'), "not an ELF")
    assert "key 'kernel'" in err


@pytest.mark.parametrize("memory", ["0", '"0M"', "1"])
def test_memory_too_small(lightvm: Any, tmp_path: Path, memory: str) -> None:
    expect_error(lightvm, config(tmp_path, f'kernel = "{NOOP_ELF}"\nmemory = {memory}\n'), "key 'memory'")


@pytest.mark.parametrize("memory", ['"100T"', "10000000", '"70000M"', '"65536M"'])
def test_memory_absurd(lightvm: Any, tmp_path: Path, memory: str) -> None:
    err = expect_error(lightvm, config(tmp_path, f'kernel = "{NOOP_ELF}"\nmemory = {memory}\n'), "key 'memory'")
    assert "maximum" in err or "host's" in err


def test_duplicate_name(lightvm: Any, noop_vm: dict[str, Any]) -> None:
    result = lightvm.run("create", str(REPO / "examples" / "noop.toml"), "--accel", "tcg")
    assert result.code == 1 and result.err.count("\n") == 1
    assert "'noop' already exists" in result.err
    assert lightvm.status() == {"noop": "running"}  # the first one is untouched


def test_duplicate_name_inside_a_batch(lightvm: Any, noop_vm: dict[str, Any]) -> None:
    lightvm.create(REPO / "examples" / "noop.toml", "--name", "b-1")
    result = lightvm.run("create", str(REPO / "examples" / "noop.toml"), "--accel", "tcg", "-n", "3", "--name", "b")
    assert result.code == 1 and "'b-1' already exists" in result.err
    assert set(lightvm.status()) == {"noop", "b-1"}  # b-0 and b-2 were not made


def test_unknown_key(lightvm: Any, tmp_path: Path) -> None:
    expect_error(lightvm, config(tmp_path, f'kernel = "{NOOP_ELF}"\nvcpu = 1\n'), "unknown key 'vcpu'")


def test_unknown_vif_key(lightvm: Any, tmp_path: Path) -> None:
    text = f'kernel = "{NOOP_ELF}"\n[[vifs]]\nipaddr = "10.0.0.2/24"\n'
    expect_error(lightvm, config(tmp_path, text), "unknown key 'ipaddr'")


def test_malformed_toml(lightvm: Any, tmp_path: Path) -> None:
    expect_error(lightvm, config(tmp_path, f'kernel = "{NOOP_ELF}"\nmemory = = 4\n'), "malformed TOML")


def test_malformed_json(lightvm: Any, tmp_path: Path) -> None:
    text = json.dumps({"kernel": str(NOOP_ELF)})[:-1]
    expect_error(lightvm, config(tmp_path, text, "vm.json"), "malformed JSON")


def test_bad_name_option(lightvm: Any) -> None:
    expect_error(lightvm, REPO / "examples" / "noop.toml", "invalid VM name", "--name", "../evil")


def test_json_config_boots(lightvm: Any, tmp_path: Path) -> None:
    """The chaos-style JSON format is not only parsed but runs."""
    path = config(tmp_path, json.dumps({"name": "j", "kernel": str(NOOP_ELF), "memory": "8M"}), "vm.json")
    (vm,) = lightvm.create(path)
    assert vm["name"] == "j" and vm["boot_ms"]["ready"] > 0


def test_smallest_memory_boots_and_examples_say_so(lightvm: Any, tmp_path: Path) -> None:
    """The parser's minimum (2 MiB) boots the noop guest; 1536K is refused (measured: with
    lvfw it exits "the kernel entry point is not in RAM", with QEMU's firmware it never
    prints). The examples' comments must name the size the parser accepts."""
    from lightvm.spec import MEMORY_MIN_MIB

    (vm,) = lightvm.create(config(tmp_path, f'kernel = "{NOOP_ELF}"\nmemory = "{MEMORY_MIN_MIB}M"\n'))
    assert vm["boot_ms"]["ready"] > 0
    lightvm.ok("destroy", "--all")
    expect_error(lightvm, config(tmp_path, f'kernel = "{NOOP_ELF}"\nmemory = "1536K"\n', "k.toml"), "key 'memory'")
    for example in sorted((REPO / "examples").glob("*.toml")):
        for line in example.read_text().splitlines():
            if "is the smallest that boots" in line:
                assert f"{MEMORY_MIN_MIB}M is the smallest" in line and "1536K" not in line.split("smallest")[0], line
