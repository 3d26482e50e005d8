"""`lightvm bench tinyx` in smoke mode (one warm-up, two iterations, TCG): redis-server as a
cold Tinyx VM, a pooled one (user networking, and a tap on a lightvm network), a crun
container of the same image's files and the stock Debian VM (cloud kernel, its initrd, a
debootstrap root disk: one boot per row, no warm-up).

Checked: every row of the suite is there without error, its samples are finite and
positive, the plots exist, the measurements hang together (READY before the first
+PONG, a pooled create faster than a cold one, a container's PSS far below a VM's) and
nothing is left: no QEMU, lightvmd or crun worker of the run's temp dirs, no container
whose root is there. Needs root (crun, the image build's chroot), like the other bench
smoke tests, and the Tinyx caches under tinyx/build (scripts/test.sh builds the kernel);
the stock image is built there at the first run (~5 min cold: debootstrap 235 s + 49 s here;
docs/tinyx-bench.md), then booted twice (its serve and memory rows: ~20 s each on a quiet host here,
up to 2.5 min at load 14).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from benchlib import check_results, smoke_opts

from lightvm.bench.cli import SMOKE_STOCK_ITERATIONS, run_suite
from lightvm.bench.tinyx import MEMORY_VARIANTS, SIZE_VARIANTS, VARIANTS


@pytest.mark.timeout(2700)  # ~25 s + 2 stock boots with warm caches; cold image builds take minutes
def test_tinyx_smoke(tmp_path: Path, clean_host: None) -> None:
    opts = smoke_opts()
    opts.stock_iterations, opts.stock_warmup = SMOKE_STOCK_ITERATIONS, 0  # as `--smoke`: one boot per row
    run_suite("tinyx", opts, tmp_path)
    expected = {f"tinyx/serve/{v}" for v in VARIANTS} | {f"tinyx/memory/{v}" for v in MEMORY_VARIANTS}
    expected |= {f"tinyx/size/{v}" for v in SIZE_VARIANTS}
    doc = check_results(tmp_path, "tinyx", expected)
    rows = {b["name"]: b for b in doc["benchmarks"]}
    assert {"tinyx-serve.png", "tinyx-memory.png", "tinyx-size.png"} <= set(doc["plots"])
    assert "stock" in doc["describe"]["variants"]
    for s in rows["tinyx/serve/tinyx-cold"]["samples"]:
        # the boot steps in order; the first +PONG after create returned at READY
        assert s["qemu_up"] < s["guest_entry"] < s["devices_up"] <= s["ready"] <= s["create_ms"] <= s["ms"], s
    for variant in ("tinyx-pool", "tinyx-pool-bridge"):  # user networking; a tap on a lightvm network
        for s in rows[f"tinyx/serve/{variant}"]["samples"]:
            assert s["ready"] <= s["reply_ms"] <= s["ms"], s
    for s in rows["tinyx/serve/crun"]["samples"]:
        assert s["crun_ms"] <= s["ms"] < 30_000, s
    median = {v: rows[f"tinyx/serve/{v}"]["summary"]["ms"]["median"] for v in VARIANTS}
    assert max(median["tinyx-pool"], median["tinyx-pool-bridge"]) < median["tinyx-cold"], median  # the pool's point
    assert median["tinyx-cold"] < median["stock"] < 300_000, median  # a systemd boot of a distro kernel
    assert len(rows["tinyx/serve/stock"]["samples"]) == 1  # smoke: one boot (no warm-up)
    pss = {v: rows[f"tinyx/memory/{v}"]["summary"]["pss_mib"]["median"] for v in MEMORY_VARIANTS}
    tinyx_pss = (pss["tinyx-cold"], pss["tinyx-pool"])
    assert 1 < pss["crun"] < 64 < min(tinyx_pss) <= max(tinyx_pss) < 400, pss  # redis vs QEMU + a 128 MiB guest
    # a 256 MiB guest booted by systemd, and QEMU's TCG cache of far more guest code (~600 MiB here)
    assert max(tinyx_pss) < pss["stock"] < 1536, pss
    (image,) = rows["tinyx/size/tinyx-cold"]["samples"]
    (rootfs,) = rows["tinyx/size/crun"]["samples"]
    assert image["mib"] == pytest.approx(image["kernel_mib"] + image["initramfs_mib"])
    # the same files: the rootfs is the archive (uncompressed) minus its headers and padding
    assert 0.9 * image["initramfs_raw_mib"] < rootfs["mib"] < image["initramfs_raw_mib"], (image, rootfs)
    assert image["initramfs_mib"] < 0.8 * image["initramfs_raw_mib"]  # lz4, the builder's default
    assert rootfs["files"] > 10
    (debian,) = rows["tinyx/size/stock"]["samples"]
    assert debian["mib"] == pytest.approx(debian["kernel_initrd_mib"] + debian["disk_mib"])
    assert debian["disk_mib"] < debian["disk_apparent_mib"]  # sparse
    # the stock image (its root disk included) is the bigger; its kernel + initrd alone are
    # not (28 vs 34 MiB here: Tinyx's initramfs is the whole root file system)
    assert image["mib"] < debian["mib"] and debian["kernel_initrd_mib"] < debian["mib"]
    summary = (tmp_path / "summary.txt").read_text()
    assert "stock vs tinyx-cold" in summary and "Tinyx faster by" in summary, summary
    assert doc["summary_extra"] and doc["summary_extra"][0] in summary


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
