"""One VM's lifecycle (lightvm/instance.py) without QEMU: the record -> MachineConfig
translation, a shell's folder becoming a VM's, and the errors a failed step raises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightvm.errors import ExistsError, GuestError, LightVMError, NoxsError
from lightvm.instance import Instance, adopt, destroy, machine_config
from lightvm.state import StateDir, VMDir, VMRecord, noxs_file


def record(name: str = "vm", **spec: object) -> VMRecord:
    base: dict[str, object] = {"kernel": "/k.elf", "memory": 8, "vcpus": 2, "cmdline": "x", "firmware": "/fw.bin"}
    base.update(spec)
    return VMRecord.new(name, "feedfacecafe0042", "u", "tcg", 8192, base)


def test_machine_config_from_the_record(tmp_path: Path) -> None:
    vmdir = VMDir(tmp_path / "vm")
    config = machine_config(vmdir, record(), extra_args=("-incoming", "defer"))
    assert (config.name, config.kernel, config.memory_mib, config.vcpus, config.cmdline) == (
        "vm",
        Path("/k.elf"),
        8,
        2,
        "x",
    )
    assert config.bios == Path("/fw.bin") and config.accel == "tcg" and config.noxs_size == 8192
    assert config.noxs_path == noxs_file("feedfacecafe0042")
    assert config.qmp_path == vmdir.qmp_path and config.extra_args == ("-incoming", "defer")
    assert machine_config(vmdir, record(firmware=None)).bios is None


def test_adopt_moves_the_folder_under_the_lock_or_refuses(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.ensure()
    shell = tmp_path / "state" / "pool" / "abc"
    shell.mkdir(parents=True)
    (shell / "vm.json").write_text("{}")
    vmdir = adopt(state, shell, "web")
    assert vmdir.path == state.vms_root / "web" and (vmdir.path / "vm.json").exists() and not shell.exists()
    other = tmp_path / "state" / "pool" / "def"
    other.mkdir()
    with pytest.raises(ExistsError, match=r"'web' already exists.*pick another --name"):
        adopt(state, other, "web")
    with pytest.raises(ExistsError, match=r"'web' already exists in \S+$"):
        adopt(state, other, "web", hint="")
    assert other.exists()


def test_a_failed_step_unwinds_removes_the_folder_and_names_vm_and_step(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    (vmdir,) = state.allocate(["vm"])
    vm = Instance(vmdir, record(), tmp_path)
    undone: list[str] = []
    vm.undo.push("thing", lambda: undone.append("thing"))
    with pytest.raises(NoxsError, match=r"^vm: create NoXS region: no room$"), vm.steps("vm"):
        vm.step = "create NoXS region"
        raise NoxsError("no room")
    assert undone == ["thing"] and not vmdir.path.exists()

    (vmdir,) = state.allocate(["vm"])
    with pytest.raises(GuestError, match=r"^guest says no$"), Instance(vmdir, record()).steps("vm"):
        raise GuestError("guest says no")  # names the VM itself: passed on as it is
    (vmdir,) = state.allocate(["vm"])
    with pytest.raises(LightVMError, match=r"^vm: record state: disk gone$"), Instance(vmdir, record()).steps("vm"):
        raise OSError("disk gone")


def test_destroy_removes_what_the_record_names(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    (vmdir,) = state.allocate(["vm"])
    rec = record()
    shm = tmp_path / "noxs"
    shm.write_bytes(b"")
    rec.noxs_path = str(shm)
    vmdir.write(rec)  # no PID: a creator killed before the spawn (the search finds no QEMU)
    assert json.loads(vmdir.record_path.read_text())["noxs_path"] == str(shm)
    destroy(vmdir, tmp_path)
    assert not shm.exists() and not vmdir.path.exists()
