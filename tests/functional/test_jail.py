"""The jail around QEMU (lightvm/jail.py), checked on the running processes: a VM's QEMU
is not root, has no capabilities, runs under a seccomp filter with no_new_privs, sees an
empty root, sits in a cgroup of its own with memory and pids limits (lightvm/cgroups.py),
and every VM has a uid of its own; the same for a pooled VM and a restored
one. LIGHTVM_JAIL=off turns it off."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from daemonlib import Lightvmd, wait_pool

from lightvm import cgroups

pytestmark = pytest.mark.functional

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def _jailed(pid: int) -> int:
    """Assert the jail's layers on QEMU ``pid``; its uid."""
    status = _status(pid)
    uids = {int(u) for u in status["Uid"].split()}
    assert len(uids) == 1 and 0 not in uids, status["Uid"]  # real, effective, saved, fs: one non-root uid
    assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0, status
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2", status
    assert os.listdir(f"/proc/{pid}/root") == []  # its root: an empty folder
    # Its own cgroup with limits, where the host allows (this one does: rw cgroup v1).
    parent = os.environ["LIGHTVM_CGROUP_PARENT"]
    groups = dict(line.split(":", 2)[1:] for line in cgroups.of_pid(pid))
    assert cgroups.available() is None
    mine = groups.get("memory", "")
    assert mine.startswith(f"/{parent}/") and groups.get("pids") == mine, groups
    memory = Path("/sys/fs/cgroup/memory") / mine.lstrip("/")
    assert int((memory / "memory.limit_in_bytes").read_text()) > cgroups.OVERHEAD_MIB << 20
    assert (Path("/sys/fs/cgroup/pids") / mine.lstrip("/") / "pids.max").read_text().strip() == str(cgroups.PIDS_MAX)
    return uids.pop()


def _pid(lv: Any, name: str) -> int:
    return int(json.loads(lv.ok("info", name, "--json").out)["pid"])


@pytest.mark.root
def test_cold_vms_are_jailed_each_with_its_own_uid(lightvm: Any, images: Path) -> None:
    a, b = (
        lightvm.create(EXAMPLES / "daytime.toml", "--name", "ja", "--accel", "tcg"),
        lightvm.create(EXAMPLES / "noop.toml", "--name", "jb", "--accel", "tcg"),
    )
    assert a and b
    uid_a, uid_b = _jailed(_pid(lightvm, "ja")), _jailed(_pid(lightvm, "jb"))
    assert uid_a != uid_b
    jail = Path(os.environ["LIGHTVM_JAIL_DIR"])
    assert sorted(os.listdir(jail / "uids")) == sorted([str(uid_a), str(uid_b)])
    lightvm.ok("destroy", "ja")
    assert os.listdir(jail / "uids") == [str(uid_b)]  # given back at destroy
    lightvm.ok("destroy", "jb")


@pytest.mark.root
def test_pooled_and_restored_vms_are_jailed(lightvmd: Lightvmd, images: Path, tmp_path: Path) -> None:
    lightvmd.start(pool=EXAMPLES / "noop.toml", size=1)
    wait_pool(lightvmd, 1)
    shell_pids = [int(r["pid"]) for r in lightvmd.shell_records()]
    assert shell_pids and all(_jailed(p) for p in shell_pids)  # jailed before anyone uses it
    vm = lightvmd.create("pooled")
    assert vm["path"] == "pool", vm
    _jailed(_pid(lightvmd.lv, "pooled"))
    ckpt = tmp_path / "p.ckpt"
    lightvmd.cli("save", "pooled", str(ckpt))
    r = lightvmd.cli("restore", str(ckpt))
    assert r.returncode == 0, r.stderr
    _jailed(_pid(lightvmd.lv, "pooled"))


@pytest.mark.root
def test_jail_off_is_plain_root(lightvm: Any, images: Path) -> None:
    lightvm.env["LIGHTVM_JAIL"] = "off"
    lightvm.create(EXAMPLES / "noop.toml", "--name", "free", "--accel", "tcg")
    status = _status(_pid(lightvm, "free"))
    assert status["Uid"].split()[0] == "0" and status["Seccomp"] == "0", status
    lightvm.ok("destroy", "free")
