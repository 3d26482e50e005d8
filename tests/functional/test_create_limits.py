"""`create -n`: the 1..4096 bounds, one-shot and through lightvmd, and all-or-none when
one of the N names is taken."""

from __future__ import annotations

from typing import Any

import pytest
from daemonlib import NOOP, Lightvmd

pytestmark = pytest.mark.functional


@pytest.mark.parametrize("count", ["0", "-1", "4097"])
def test_count_out_of_bounds_is_refused_one_shot(lightvm: Any, count: str) -> None:
    result = lightvm.run("create", str(NOOP), "--accel", "tcg", "-n", count)
    assert result.code == 1
    assert f"-n {count}: create between 1 and 4096 VMs at a time" in result.err, result.err
    assert lightvm.vm_dirs() == []


def test_count_out_of_bounds_is_refused_by_lightvmd(lightvmd: Lightvmd) -> None:
    lightvmd.start(pool=None)
    for count in ("0", "4097"):
        r = lightvmd.cli("create", str(NOOP), "--accel", "tcg", "-n", count)
        assert r.returncode == 1
        assert f"-n {count}: create between 1 and 4096 VMs at a time" in r.stderr, r.stderr
    assert lightvmd.call("list") == []


def test_count_is_all_or_none_when_a_name_is_taken(lightvm: Any) -> None:
    lightvm.create(NOOP, "--name", "vm-1")
    result = lightvm.run("create", str(NOOP), "--accel", "tcg", "--name", "vm", "-n", "3")
    assert result.code == 1 and "vm-1" in result.err, result.err
    assert lightvm.status() == {"vm-1": "running"}  # neither vm-0 nor vm-2
    vms = lightvm.create(NOOP, "--name", "ok", "-n", "2")
    assert sorted(vm["name"] for vm in vms) == ["ok-0", "ok-1"]
    assert len({vm["pid"] for vm in vms}) == 2
