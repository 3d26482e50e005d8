"""One-shot (no lightvmd) creates and destroys racing on one state dir: every VM gets its
own name, id, NoXS file and QEMU; a name two creates race for goes to exactly one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lightvm.state import noxs_file

pytestmark = pytest.mark.functional

REPO = Path(__file__).resolve().parents[2]
NOOP = REPO / "examples" / "noop.toml"


def run_all(lightvm: Any, argvs: list[list[str]], timeout: float = 120.0) -> list[tuple[int, str, str]]:
    procs = [lightvm.popen(*argv) for argv in argvs]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            results.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    lightvm.remember_ids()
    return results


def test_concurrent_creates_and_destroys(lightvm: Any) -> None:
    lightvm.env["LIGHTVM_NO_DAEMON"] = "1"
    names = [f"c{i}" for i in range(4)]
    argvs = [["create", str(NOOP), "--accel", "tcg", "--json", "--name", n] for n in names]
    argvs += [["create", str(NOOP), "--accel", "tcg", "--json", "--name", "same"] for _ in range(2)]
    results = run_all(lightvm, argvs)
    for code, _out, err in results[:4]:
        assert code == 0, err
    same = sorted(code for code, _, _ in results[4:])
    assert same == [0, 1], results[4:]
    # Under --json an error is one JSON object on stdout (docs/cli.md).
    loser = json.loads(next(out for code, out, _ in results[4:] if code == 1))
    assert "same" in loser["error"] and "exists" in loser["error"] and loser["kind"] == "ExistsError", loser

    vms = [json.loads(out) for code, out, _ in results if code == 0]
    assert sorted(vm["name"] for vm in vms) == sorted([*names, "same"])
    assert len({vm["id"] for vm in vms}) == 5 and len({vm["pid"] for vm in vms}) == 5
    assert all(noxs_file(vm["id"]).exists() for vm in vms)
    assert lightvm.status() == {n: "running" for n in [*names, "same"]}

    results = run_all(lightvm, [["destroy", n] for n in [*names, "same"]])
    assert all(code == 0 for code, _, _ in results), results
    assert lightvm.list() == []
    assert lightvm.leftovers() == []


def test_create_racing_destroy_all(lightvm: Any) -> None:
    """`destroy --all` while creates run: afterwards each VM is either fully there
    (running) or fully gone; a second `destroy --all` leaves nothing."""
    lightvm.env["LIGHTVM_NO_DAEMON"] = "1"
    creates = [lightvm.popen("create", str(NOOP), "--accel", "tcg", "--name", f"r{i}") for i in range(3)]
    try:
        lightvm.run("destroy", "--all", timeout=120)
        for proc in creates:
            proc.communicate(timeout=120)
    finally:
        for proc in creates:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    lightvm.remember_ids()
    assert set(lightvm.status().values()) <= {"running"}, lightvm.status()
    lightvm.ok("destroy", "--all")
    assert lightvm.leftovers() == []
