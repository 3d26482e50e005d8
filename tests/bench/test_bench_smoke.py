"""Smoke runs of every implemented benchmark suite: results are produced and sane (not fast).

Each suite runs in smoke mode (N = 1, 2; one warm-up, two iterations; TCG) with
every baseline of the boot suite: fork/exec of a static binary, crun with a
busybox bundle and a private libvirtd creating the same guest. Checked: the
results file carries the metadata, no row failed, every row has its samples,
every value is finite and positive (CPU shares: >= 0), the plots exist, and
nothing the suite started is left: no process of its temp dirs (QEMU,
libvirtd, the crun worker), no container, no NoXS file, no network namespace.
Needs root (crun, libvirtd, netns), like the rest of CI here.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from benchlib import VMS, check_results, smoke_opts

from lightvm.bench import suite
from lightvm.bench.cli import run_suite

REPO = Path(__file__).resolve().parent.parent.parent


def test_boot_smoke_with_every_baseline(images: Path, tmp_path: Path, clean_host: None) -> None:
    run_suite("boot", smoke_opts(), tmp_path)
    variants = ("lightvm-cold", "lightvm-split", "libvirt", "crun", "fork-exec")
    doc = check_results(tmp_path, "boot", {f"boot/{v}/n={n}" for v in variants for n in VMS})
    rows = {b["name"]: b for b in doc["benchmarks"]}
    # The boot breakdown is recorded per point for lightvm, in order.
    for sample in rows["boot/lightvm-cold/n=2"]["samples"]:
        steps = [sample[k] for k in ("qemu_up", "resumed", "guest_entry", "devices_up", "ready")]
        assert steps == sorted(steps), steps
        assert sample["ms"] == sample["ready"]
    # Same-guest libvirt: READY detected in the NoXS page, after createXML returned or with it.
    for sample in rows["boot/libvirt/n=1"]["samples"]:
        assert sample["ms"] >= sample["create_xml_ms"]
    assert "ratio" in doc["summary_table"] and "x lightvm-cold" in doc["summary_table"]
    assert {"boot.png", "boot.svg", "boot-breakdown.png", "boot-breakdown.svg"} <= set(doc["plots"])


@pytest.mark.timeout(600)  # ~35 s on the 2-core CI hosts
def test_density_smoke(images: Path, tmp_path: Path, clean_host: None) -> None:
    run_suite("density", smoke_opts(), tmp_path)
    variants = ("lightvm-cold", "lightvm-split", "lightvm-clone", "libvirt", "crun", "fork-exec")
    expected = {f"density/{v}/{m}/n={n}" for v in variants for m in ("memory", "cpu") for n in VMS}
    doc = check_results(tmp_path, "density", expected)
    rows = {b["name"]: b for b in doc["benchmarks"]}
    pss = {v: rows[f"density/{v}/memory/n=2"]["summary"]["pss_mib_per_vm"]["median"] for v in variants}
    assert 1 < pss["lightvm-cold"] < 200, pss  # MiB per idle noop VM: QEMU + 4 MiB guest
    assert 1 < pss["lightvm-clone"] < 200, pss  # a clone is a QEMU too; its guest RAM is the template's
    assert pss["fork-exec"] < pss["crun"] < pss["lightvm-cold"] < pss["libvirt"], pss  # libvirtd is counted


def test_clone_fleet_grows_in_batches_and_every_clone_answers(images: Path, clean_host: None) -> None:
    from lightvm.bench.clonefleet import LightvmCloneFleet
    from lightvm.bench.fleets import guest_spec

    fleet = LightvmCloneFleet(guest_spec("daytime"), "tcg", publish_port=13)
    try:
        fleet.grow(2)
        fleet.grow(5)  # a second batch: its own names and ports
        assert fleet.query_all() == (5, 5)
        assert len(set(fleet.pids())) == 5 and len(set(fleet.ports)) == 5
        assert fleet.measure()["ms"] > 0 and len(fleet.pids()) == 5  # the measured clone is gone again
    finally:
        fleet.close()
    assert fleet.count == 0


def test_net_smoke(tmp_path: Path, clean_host: None) -> None:
    run_suite("net", smoke_opts(), tmp_path)
    check_results(tmp_path, "net", {f"net/{v}/n={n}" for v in ("tap", "vif-prepare") for n in VMS})


def test_cli_writes_results_and_exits_zero(images: Path, tmp_path: Path, clean_host: None) -> None:
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "lightvm.bench.cli", "boot", "--vms", "1", "--iterations", "1", "--warmup", "0",
         "--accel", "tcg", "--baselines", "fork-exec", "--settle", "0", "--out", str(out)],
        capture_output=True, text=True, timeout=120, check=False, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "boot/fork-exec/n=1" in proc.stdout and "results:" in proc.stdout
    doc = json.loads((out / "results.json").read_text())
    names = [b["name"] for b in doc["benchmarks"]]
    assert names[0] == "boot/lightvm-cold/n=1" and names[-1] == "boot/fork-exec/n=1"  # lightvm variants, then baselines
    assert not any("libvirt" in n or "crun" in n for n in names)  # --baselines fork-exec
    bad = subprocess.run(
        [sys.executable, "-m", "lightvm.bench.cli", "boot", "--vms", "500", "--accel", "tcg", "--out", str(out)],
        capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
    )  # fmt: skip
    assert bad.returncode == 1 and "--max-vms" in bad.stderr


@pytest.mark.timeout(600)  # ~55 s on the 2-core CI hosts
def test_checkpoint_smoke(images: Path, tmp_path: Path, clean_host: None) -> None:
    run_suite("checkpoint", smoke_opts(), tmp_path)
    doc = check_results(
        tmp_path,
        "checkpoint",
        {f"checkpoint/{op}/n={n}" for op in checkpoint_ops() for n in VMS},
    )
    rows = {b["name"]: b for b in doc["benchmarks"]}
    for sample in rows["checkpoint/save/n=2"]["samples"]:
        assert sample["total_ms"] >= sample["ms"] >= sample["downtime_ms"] > 0
        assert sample["file_kib"] > 4  # at least the guest's used pages and the header
    for sample in rows["checkpoint/restore/n=2"]["samples"]:
        assert sample["ms"] >= sample["finish_ms"] > 0
    for sample in rows["checkpoint/restore-prepared/n=2"]["samples"]:
        assert sample["prepare_and_finish_ms"] >= sample["ms"] > 0
    for sample in rows["checkpoint/migrate/n=2"]["samples"]:
        assert sample["ms"] > sample["migrate_ms"] > 0 and sample["bytes"] > 4096
    for sample in rows["checkpoint/restore-pool/n=2"]["samples"]:
        assert sample["pool_hit"] == 1 and sample["ms"] >= sample["daemon_ms"] >= sample["finish_ms"] > 0
    for sample in rows["checkpoint/migrate-ssh/n=2"]["samples"]:
        assert sample["ssh_ms"] > 0 and sample["ms"] > sample["prepare_ms"] > 0 and sample["bytes"] > 4096
    for sample in rows["checkpoint/migrate-ssh-warm/n=2"]["samples"]:
        # the kept link (no handshake) and the destination's prepared shell
        assert "ssh_ms" not in sample and sample["pool_hit"] == 1 and sample["ms"] >= sample["total_ms"] > 0
    for n in VMS:
        for sample in rows[f"checkpoint/migrate-gap/n={n}"]["samples"]:
            # the client saw the VM move (a gap over its 10 ms period, under its 1 s timeout), lost no query
            assert sample["failed_queries"] == 0 and 0 < sample["ms"] < 1000 and sample["bytes"] > 4096


def checkpoint_ops() -> tuple[str, ...]:
    """Every row of the checkpoint suite, the SSH ones included: these tests run as root
    with openssh-server installed (scripts/bootstrap.sh installs it; CI runs as root), so
    a row missing here is a failure, not a host without SSH."""
    from lightvm.bench import checkpoint

    assert set(checkpoint.OPS) >= {"restore-pool", "migrate-ssh", "migrate-ssh-warm", "migrate-gap"}
    return checkpoint.OPS


def test_split_smoke_daytime(images: Path, tmp_path: Path, clean_host: None) -> None:
    """The scale bar's suite at N = 1, 2 daytime VMs: idle cost, execute path, scaling ratio."""
    opts = smoke_opts()
    opts.app = "daytime"
    run_suite("split", opts, tmp_path)
    expected = {f"split/{m}/n={n}" for m in ("idle", "execute") for n in VMS} | {f"split/scaling/n={VMS[-1]}"}
    doc = check_results(tmp_path, "split", expected)
    rows = {b["name"]: b for b in doc["benchmarks"]}
    for n in VMS:
        (idle,) = rows[f"split/idle/n={n}"]["samples"]
        assert idle["vms"] == n and idle["answered"] == idle["asked"] == n, idle  # every VM tells the time
        # QEMU's own memory per idle VM: a few MiB at least, far below the guest-inclusive RSS
        assert 1 < idle["beyond_guest_mib_per_vm"] < idle["rss_mib_per_vm"] < 200, idle
        assert all(s["pool"] == 1.0 for s in rows[f"split/execute/n={n}"]["samples"])
    (scaling,) = rows[f"split/scaling/n={VMS[-1]}"]["samples"]
    medians = [statistics.median(s["ms"] for s in rows[f"split/execute/n={n}"]["samples"]) for n in VMS]
    assert scaling["ratio"] == pytest.approx(medians[-1] / medians[0])


def test_cli_suite_smoke(images: Path, tmp_path: Path, clean_host: None) -> None:
    """lightvm bench cli: every command ran to exit 0, each sample paired with a python3 -c pass,
    the pooled create was a pool hit and the creates' READY is inside their wall time."""
    from lightvm.bench.clistart import VARIANTS

    run_suite("cli", smoke_opts(), tmp_path)
    doc = check_results(tmp_path, "cli", {f"cli/{v}" for v in VARIANTS})
    rows = {b["name"]: b for b in doc["benchmarks"]}
    for variant in VARIANTS:
        for sample in rows[f"cli/{variant}"]["samples"]:
            assert sample["vs_python3"] == pytest.approx(sample["ms"] / sample["python3_ms"])
            if variant.startswith("create"):
                assert sample["cli_ms"] + sample["vm_ready_ms"] == pytest.approx(sample["ms"])
    assert all(s["pool"] == 1.0 for s in rows["cli/create-pool"]["samples"])
    assert "x python3" in doc["summary_table"] and doc["plots"] == ["cli.png", "cli.svg"]
    assert all(b["metric"] == "vs_python3" and b["unit"] == "x" for b in rows.values())


def test_boot_row_order() -> None:
    """--order n (default): every variant at one N before the next N; variant: as before.
    Only the table is built here (fleets start in the rows' set-up hooks)."""
    import contextlib

    from lightvm.bench import boot

    opts = suite.SuiteOptions(vms=[10, 1], baselines=("fork-exec",), settle_s=0.0)
    with contextlib.ExitStack() as stack:
        by_n = [b.name for b in boot.benchmarks(opts, stack)]
        opts.order = "variant"
        by_variant = [b.name for b in boot.benchmarks(opts, stack)]
    variants = ("lightvm-cold", "lightvm-split", "fork-exec")
    assert by_n == [f"boot/{v}/n={n}" for n in (1, 10) for v in variants]
    assert by_variant == [f"boot/{v}/n={n}" for v in variants for n in (1, 10)]


def test_rows_measured_under_steal_run_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A row whose iterations ran while the hypervisor stole more than --max-steal runs
    again (twice at most); the attempt with the least steal is kept, the others recorded."""
    from lightvm.bench import runner

    steals = iter([50.0, 30.0, 40.0, 5.0])

    class FakeLoad:
        def __init__(self) -> None:
            self.steal = next(steals)

        def as_dict(self) -> dict[str, float]:
            return {"steal_pct": self.steal}

    monkeypatch.setattr(runner, "HostLoad", FakeLoad)
    waits = []
    monkeypatch.setattr(runner, "wait_for_low_steal", lambda pct, timeout: waits.append(timeout) or 1.0)
    calls = []
    row = runner.Benchmark("r", lambda: calls.append(1) or {"ms": float(len(calls))}, warmup=1, iterations=2)
    (result,) = runner.run([row], max_steal_pct=10.0)
    assert result.host == {"steal_pct": 30.0} and len(calls) == 9
    assert [d["host"]["steal_pct"] for d in result.discarded] == [50.0, 40.0]
    assert result.values() == [5.0, 6.0]  # the second attempt's iterations, after its warm-up
    assert waits == [runner.STEAL_WAIT_S] * 2  # a wait for a quiet moment before each retry
    (quiet,) = runner.run([row])  # no limit: one attempt, whatever the steal
    assert quiet.host == {"steal_pct": 5.0} and not quiet.discarded and len(calls) == 12


def test_createprof_times_every_create_step(images: Path, clean_host: None) -> None:
    """lightvm.bench.createprof: one line of medians per N, every step of the create timed."""
    from lightvm.bench import createprof

    lines = list(createprof.profile([1, 2], iterations=2, accel="tcg", app="noop", settle_s=0.0))
    assert [line["n"] for line in lines] == [1, 2]
    for line in lines:
        for _, _, step in createprof.STEPS:
            assert line[step] > 0, (step, line)
        assert 0 < line["qemu_up"] < line["ready"] and line["destroy"] > 0
