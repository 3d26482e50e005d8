"""The density suite's guards (lightvm/bench/fleetguard.py) and its row hook, without any VM.

What must hold on a shared host: a fleet the host cannot hold is refused before its first
VM with the limit named; a host running short stops the run (KeyboardInterrupt in the
main thread, then a FleetLimitError saying why); a closed fleet's leftovers are found;
a new way to start VMs becomes density rows between lightvm's and the baselines.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from lightvm.bench import density, fleetguard
from lightvm.bench.boot import Variant
from lightvm.bench.procfs import mem_available_kib, status_fields
from lightvm.errors import LightVMError
from lightvm.util import wait_until


def test_preflight_refuses_a_fleet_the_memory_cannot_hold() -> None:
    avail_gib = mem_available_kib() / fleetguard.GIB_KIB
    problems = fleetguard.preflight(4000, avail_gib * 1024 / 1000, fleetguard.Limits())
    assert any(p.startswith("memory: 4000 VMs") and "floor" in p for p in problems), problems


def test_preflight_passes_a_small_fleet_and_names_the_pid_limit_of_a_huge_one() -> None:
    assert fleetguard.preflight(2, 0.01, fleetguard.Limits(min_avail_kib=0)) == []
    problems = fleetguard.preflight(10_000_000, 0.0, fleetguard.Limits(min_avail_kib=0))
    assert any("kernel.pid_max" in p or "kernel.threads-max" in p for p in problems), problems


def test_watchdog_interrupts_the_main_thread_and_says_why() -> None:
    limits = fleetguard.Limits(min_avail_kib=mem_available_kib() + 64 * fleetguard.GIB_KIB)
    with pytest.raises(KeyboardInterrupt), fleetguard.Watchdog(limits, interval_s=0.05) as dog:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.01)  # stands for a fleet growing: the watchdog must interrupt it
    assert "MemAvailable" in dog.reason
    with pytest.raises(fleetguard.FleetLimitError, match=r"MemAvailable .* torn down"):
        dog.check()


def test_watchdog_quiet_on_a_host_within_its_limits() -> None:
    with fleetguard.Watchdog(fleetguard.Limits(min_avail_kib=0, max_load=1e9), interval_s=0.02) as dog:
        time.sleep(0.2)
    assert dog.reason == "" and dog.breach() == ""
    dog.check()


def test_leftovers_finds_a_process_and_a_shm_file_of_the_fleet(tmp_path: Path) -> None:
    marker = str(tmp_path / "fleet-state")
    name = f"lightvm-fleetguard-test-{tmp_path.name}"
    shm = Path("/dev/shm") / name
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", marker])
    try:
        # Until the child has exec'd, its command line is still this process's.
        cmdline = Path(f"/proc/{proc.pid}/cmdline")
        assert wait_until(lambda: marker.encode() in cmdline.read_bytes(), timeout=10)
        shm.write_bytes(b"x")
        left = fleetguard.leftovers(marker, [name])
        assert any(f"pid {proc.pid} still runs" in x for x in left), left
        assert f"/dev/shm/{name} remains" in left
    finally:
        proc.kill()
        proc.wait(5)
        shm.unlink(missing_ok=True)
    assert fleetguard.leftovers(marker, [name]) == []


def test_leftovers_finds_a_vms_jail_uid_record_and_cgroup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightvm import cgroups, jail

    monkeypatch.setattr(jail, "jail_dir", lambda: tmp_path / "jail")
    monkeypatch.setattr(cgroups, "_folders", lambda vm_id: [tmp_path / "cg" / vm_id])
    (tmp_path / "jail" / "vms").mkdir(parents=True)
    (tmp_path / "jail" / "vms" / "abc").write_text("1600000001\n")
    (tmp_path / "cg" / "abc").mkdir(parents=True)
    left = fleetguard.leftovers(str(tmp_path / "no-such-state"), [], ["abc", "gone"])
    assert len(left) == 2 and "jail uid of VM abc" in left[0] and left[1].startswith("cgroup ")


def test_status_fields_reads_page_tables_and_threads() -> None:
    fields = status_fields(1)
    assert fields["Threads"] >= 1 and fields["VmPTE"] >= 0
    assert status_fields(2**22 + 12345) == {}


def test_a_registered_variant_becomes_rows_after_lightvm_before_the_baselines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(density, "_REGISTERED", [])

    def factory(opts: object) -> object:
        raise AssertionError("not started here")

    clone = Variant("lightvm-clone", "lightvm", factory, lambda: None, "clones of a running VM")  # type: ignore[arg-type]
    density.register(clone)
    names = [v.name for v in density.variants()]
    assert names[:3] == ["lightvm-cold", "lightvm-split", "lightvm-clone"]
    assert names.index("crun") > 2 and names.index("fork-exec") > 2
    with pytest.raises(LightVMError, match="registered already"):
        density.register(clone)


def test_memcuts_weighs_page_tables_and_threads_per_process() -> None:
    import os

    from lightvm.bench import memcuts

    one = memcuts.weigh([os.getpid()])
    assert one["pss_mib"] > 1 and one["pte_mib"] > 0 and one["threads"] >= 1
    assert one["pss_pte_mib"] == pytest.approx(one["pss_mib"] + one["pte_mib"])
    with pytest.raises(LightVMError, match="no process"):
        memcuts.weigh([])
