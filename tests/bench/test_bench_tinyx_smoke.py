"""`lightvm bench tinyx` in smoke mode (one warm-up, two iterations, TCG): redis-server as a
cold Tinyx VM, a pooled one and a crun container of the same image's files.

Checked: every row of the suite is there without error, its samples are finite and
positive, the plots exist, the measurements hang together (READY before the first
+PONG, a pooled create faster than a cold one, a container's PSS far below a VM's) and
nothing is left: no QEMU, lightvmd or crun worker of the run's temp dirs, no container
whose root is there. Needs root (crun, the image build's chroot), like the other bench
smoke tests, and the Tinyx caches under tinyx/build (scripts/test.sh builds the kernel).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from benchlib import check_results, smoke_opts

from lightvm.bench.cli import run_suite
from lightvm.bench.tinyx import MEMORY_VARIANTS, VARIANTS


@pytest.mark.timeout(1800)  # ~25 s with warm Tinyx caches; a cold image build takes minutes
def test_tinyx_smoke(tmp_path: Path, clean_host: None) -> None:
    opts = smoke_opts()
    run_suite("tinyx", opts, tmp_path)
    expected = {f"tinyx/serve/{v}" for v in VARIANTS} | {f"tinyx/memory/{v}" for v in MEMORY_VARIANTS}
    expected |= {"tinyx/size/tinyx-cold", "tinyx/size/crun"}
    doc = check_results(tmp_path, "tinyx", expected)
    rows = {b["name"]: b for b in doc["benchmarks"]}
    assert {"tinyx-serve.png", "tinyx-memory.png", "tinyx-size.png"} <= set(doc["plots"])
    assert "not measured yet" in doc["describe"]["not_measured"][0]
    for s in rows["tinyx/serve/tinyx-cold"]["samples"]:
        # the boot steps in order; the first +PONG after create returned at READY
        assert s["qemu_up"] < s["guest_entry"] < s["devices_up"] <= s["ready"] <= s["create_ms"] <= s["ms"], s
    for s in rows["tinyx/serve/tinyx-pool"]["samples"]:
        assert s["ready"] <= s["reply_ms"] <= s["ms"], s
    for s in rows["tinyx/serve/crun"]["samples"]:
        assert s["crun_ms"] <= s["ms"] < 30_000, s
    median = {v: rows[f"tinyx/serve/{v}"]["summary"]["ms"]["median"] for v in VARIANTS}
    assert median["tinyx-pool"] < median["tinyx-cold"], median  # the point of the pool
    pss = {v: rows[f"tinyx/memory/{v}"]["summary"]["pss_mib"]["median"] for v in MEMORY_VARIANTS}
    assert 1 < pss["crun"] < 64 < min(pss["tinyx-cold"], pss["tinyx-pool"]) <= max(pss.values()) < 400, (
        pss
    )  # redis vs QEMU + a 128 MiB guest
    (image,) = rows["tinyx/size/tinyx-cold"]["samples"]
    (rootfs,) = rows["tinyx/size/crun"]["samples"]
    assert image["mib"] == pytest.approx(image["kernel_mib"] + image["initramfs_mib"])
    # the same files: the rootfs is the initramfs minus its headers and padding
    assert 0.9 * image["initramfs_mib"] < rootfs["mib"] < image["initramfs_mib"], (image, rootfs)
    assert rootfs["files"] > 10


def test_a_container_that_never_answers_is_an_error_and_is_removed(tmp_path: Path, clean_host: None) -> None:
    """A sample that fails (here: an answer that never comes) says why, deletes its
    container at once (the leak guard checks no process has its root in the run's dirs),
    and the next sample of the same fleet works."""
    import dataclasses

    from lightvm.bench.tinyx import build_image
    from lightvm.bench.tinyxfleets import Containers
    from lightvm.errors import LightVMError

    image = build_image(tmp_path / "image")
    fleet = Containers(dataclasses.replace(image, expect=b"+NEVER"))
    try:
        fleet.serve_timeout = 1.0
        with pytest.raises(LightVMError, match=r"did not answer b'PING\\r\\n' with b'\+NEVER'"):
            fleet.measure()
        fleet.image = image
        assert fleet.measure()["ms"] > 0
    finally:
        fleet.close()
