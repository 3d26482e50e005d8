"""The adaptive pool with real QEMUs: a burst of creates against a pool of 1 raises its
target and grows it, the counters add up in ``lightvm daemon status`` (text and --json),
and after the idle period the surplus shells are destroyed and the pool is back at 1."""

from __future__ import annotations

import pytest
from daemonlib import NOOP, Lightvmd, wait_pool

from lightvm.util import wait_until

pytestmark = pytest.mark.functional
BURST = 60
IDLE_S = 3.0


def test_a_burst_grows_a_pool_of_one_and_it_shrinks_back_when_idle(lightvmd: Lightvmd) -> None:
    lightvmd.start("--pool-idle", str(IDLE_S), "--pool-parallel", "2", size=1)
    wait_pool(lightvmd, 1)
    paths = []
    with lightvmd.client() as client:  # one client, create -> destroy as fast as the daemon answers
        for i in range(BURST):
            (vm,) = client.call("create", {"config": str(NOOP), "name": f"b{i}", "accel": "tcg"}, timeout=60.0)
            lightvmd.seen_ids.add(vm["id"])
            paths.append(vm["path"])
            if vm["path"] == "pool":
                assert vm["pool_take_ms"] >= 0
            client.call("destroy", {"names": [f"b{i}"]}, timeout=60.0)
    (f,) = lightvmd.pool_stats()["flavours"]
    assert f["target"] > 1, f  # the demand raised it above the floor
    assert f["hits"] + f["waited"] + f["misses"] == BURST
    assert f["hits"] + f["waited"] == paths.count("pool")
    assert f["demand_per_s"] > 0 and f["refill_ms"] > 0

    # After the burst the pool fills to its raised target (it keeps it for IDLE_S s) ...
    sizes: list[int] = []

    def back_at_one() -> bool:
        (g,) = lightvmd.pool_stats()["flavours"]
        sizes.append(g["ready"] + g["preparing"])
        return bool(g["target"] == 1 and g["ready"] == 1 and not g["preparing"] and g["shrunk"] > 0)

    assert wait_until(back_at_one, timeout=IDLE_S + 30.0, interval=0.05, max_interval=0.05), sizes[-5:]
    assert max(sizes) > 1, sizes  # ... which it had grown to ...
    (g,) = wait_pool(lightvmd, 1)["flavours"]
    assert g["shrunk"] >= max(sizes) - 1  # ... and the surplus went once idle (polls may miss the peak)
    # The folders and QEMUs of the surplus too (destroyed after they left the queue, so
    # the counters say 1 a moment before the last folder is gone).
    assert wait_until(lambda: len(lightvmd.shell_records()) == 1, timeout=20.0), lightvmd.shell_records()

    status = lightvmd.cli("daemon", "status")
    assert status.code == 0, status.err
    assert "hit rate" in status.out and "refills/s" in status.out and "target 1" in status.out
    doc = lightvmd.cli("daemon", "status", "--json").json()
    (h,) = doc["pool"]["flavours"]
    assert h["hits"] + h["waited"] + h["misses"] == BURST and h["hit_rate"] is not None
    assert doc["pool"]["idle_s"] == IDLE_S and doc["pool"]["parallel"] == 2
