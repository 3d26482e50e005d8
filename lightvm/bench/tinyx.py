"""``lightvm bench tinyx``: one app (redis-server) as a Tinyx VM, a pooled Tinyx VM and a
crun container made of the same image's files, side by side in one run.

The image is built once per run into the run's temporary folder with the real CLI
(``lightvm image build redis-server -o TMP``; warm caches under tinyx/build make that ~1 s,
a cold cache minutes: progress on stderr). Then, one variant alive at a time
(lightvm/bench/tinyxfleets.py has how each is started):

- ``tinyx/serve/VARIANT``: from the start request to the first ``+PONG`` answered on a
  host port, for ``tinyx-cold`` (``Toolstack.create``, READY recorded too),
  ``tinyx-snapshot`` (the same VM started from the image's snapshot, as a one-shot create
  of the image's config starts it), ``tinyx-pool``
  (a create request to a private lightvmd pooling the image; its reply recorded too),
  ``tinyx-pool-bridge`` (the same pool with a tap NIC on a lightvm network in a private
  namespace, answered on the VM's own address: no port forward; root) and
  ``crun`` (``crun run --detach`` of the unpacked image in the host's network namespace)
  and ``stock`` (QEMU spawned on Debian's cloud kernel, its initrd and a debootstrap root
  disk with Debian's redis-server: lightvm/bench/stockvm.py, tinyx/image/stock.py);
- ``tinyx/memory/VARIANT``: one idle instance (cold VM, pooled VM, container) after serving and
  ``--idle-window`` seconds: host memory (PSS of the QEMU process, of the container's
  processes) and CPU over the window;
- ``tinyx/size/VARIANT``: the image (kernel + initramfs bytes, from its report.json),
  the container's root file system (the same files unpacked) and the stock image
  (kernel + initrd + the root disk's allocated bytes; its apparent size recorded too).

A stock boot takes tens of seconds under TCG: its rows run ``--stock-iterations`` times
(default :data:`STOCK_ITERATIONS`; 1 in smoke mode) with at most one warm-up. The stock
image is cached under tinyx/build (a cold build: minutes). TCG only here, and the machine
is shared: timings are noisy, each row records the host's load and steal.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightvm.bench.runner import Benchmark, Result, Sample
from lightvm.bench.stockvm import StockImage, StockVMs, build_stock
from lightvm.bench.suite import SuiteOptions
from lightvm.bench.tinyxfleets import ColdVMs, Containers, Image, PoolBridgedVMs, PoolVMs, SnapshotVMs
from lightvm.errors import LightVMError

APP = "redis-server"
BUILD_TIMEOUT_S = 1800  # a cold cache: kernel build (~6 min here), debootstrap, apt
REFERENCE = "tinyx-cold"
STOCK = "stock"
BRIDGE = "tinyx-pool-bridge"
SNAPSHOT = "tinyx-snapshot"
VARIANTS = ("tinyx-cold", SNAPSHOT, "tinyx-pool", BRIDGE, "crun", STOCK)
MEMORY_VARIANTS = ("tinyx-cold", SNAPSHOT, "tinyx-pool", "crun", STOCK)
SIZE_VARIANTS = ("tinyx-cold", "crun", STOCK)
MEMORY_ITERATIONS = 3  # at most: each is a boot plus the idle window, and PSS barely moves
STOCK_ITERATIONS = 3  # a stock boot is 10-60 s under TCG
# The bars against the stock image, checked on each run's medians (summary_extra).
SIZE_BAR = 10.0  # Tinyx kernel + initramfs at least this many times smaller than the stock image
SPEED_BAR = 5.0  # create -> first +PONG at least this many times faster than the stock image


def build_image(out: Path, accel: str = "auto") -> Image:
    """``lightvm image build APP -o OUT --accel ACCEL`` (its snapshot made under the run's
    accelerator; its progress on our stderr).

    :raise LightVMError: the build failed or timed out (its exit status says which).
    """
    argv = [sys.executable, "-m", "lightvm.cli", "image", "build", APP, "-o", str(out), "--accel", accel]
    try:
        proc = subprocess.run(argv, stdout=subprocess.DEVNULL, timeout=BUILD_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise LightVMError(
            f"lightvm image build {APP} took over {BUILD_TIMEOUT_S} s; run it alone to see why"
        ) from None
    if proc.returncode != 0:
        raise LightVMError(f"lightvm image build {APP} exited {proc.returncode} (its error is above, on stderr)")
    return Image.load(out)


class _Run:
    """The run's image (built at the first row's set-up) and the one fleet alive at a time."""

    def __init__(self, opts: SuiteOptions) -> None:
        self.opts = opts
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._image: Image | None = None
        self._failed: LightVMError | None = None
        self._stock: StockImage | None = None
        self._stock_failed: LightVMError | None = None
        self.fleet: ColdVMs | SnapshotVMs | PoolVMs | PoolBridgedVMs | Containers | StockVMs | None = None

    def image(self) -> Image:
        if self._failed is not None:  # every row says why, without building again
            raise LightVMError(f"no image: {self._failed}")
        if self._image is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="lightvm-bench-tinyx-")
            try:
                self._image = build_image(Path(self._tmp.name) / APP, self.opts.accel)
            except LightVMError as exc:
                self._failed = exc
                raise
        return self._image

    def stock(self) -> StockImage:
        """The cached stock image (built at the first stock row's set-up if absent)."""
        if self._stock_failed is not None:
            raise LightVMError(f"no stock image: {self._stock_failed}")
        if self._stock is None:
            try:
                self._stock = build_stock()
            except LightVMError as exc:
                self._stock_failed = exc
                raise
        return self._stock

    def use(self, variant: str) -> None:
        """The variant's fleet, after closing the previous one (variants never share the host)."""
        if self.fleet is not None and self.fleet.variant == variant:
            return
        self.close_fleet()
        image = self.image()
        if variant == "tinyx-cold":
            self.fleet = ColdVMs(image, self.opts.accel)
        elif variant == SNAPSHOT:
            self.fleet = SnapshotVMs(image, self.opts.accel)
        elif variant == "tinyx-pool":
            self.fleet = PoolVMs(image, self.opts.accel)
        elif variant == BRIDGE:
            self.fleet = PoolBridgedVMs(image, self.opts.accel)
        elif variant == STOCK:
            self.fleet = StockVMs(self.stock(), self.opts.accel, image.send, image.expect)
        else:
            self.fleet = Containers(image)

    def measure(self) -> Sample:
        if self.fleet is None:
            raise LightVMError("tinyx: no fleet (its set-up failed)")
        return self.fleet.measure()

    def idle(self) -> Sample:
        if self.fleet is None:
            raise LightVMError("tinyx: no fleet to weigh (its set-up failed)")
        return self.fleet.idle(self.opts.idle_window_s)

    def size(self, variant: str) -> Sample:
        if variant == STOCK:
            return self.stock().sizes()
        image = self.image()
        if variant == "crun":
            if not isinstance(self.fleet, Containers):
                raise LightVMError("tinyx: no container bundle (its set-up failed)")
            return {"mib": self.fleet.rootfs_bytes / 2**20, "files": float(self.fleet.rootfs_files)}
        kernel, initramfs = image.kernel_bytes / 2**20, image.initramfs_bytes / 2**20
        raw = image.initramfs_raw_bytes / 2**20
        return {"mib": kernel + initramfs, "kernel_mib": kernel, "initramfs_mib": initramfs, "initramfs_raw_mib": raw}

    def close_fleet(self) -> None:
        fleet, self.fleet = self.fleet, None
        if fleet is not None:
            fleet.close()

    def close(self) -> None:
        try:
            self.close_fleet()
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()


def benchmarks(opts: SuiteOptions, stack: contextlib.ExitStack) -> list[Benchmark]:
    """serve and memory (cold, pool, crun), size (image, rootfs); N is always 1."""
    run = _Run(opts)
    stack.callback(run.close)

    def using(variant: str) -> Callable[[], None]:
        return lambda: run.use(variant)

    stock_iterations = opts.stock_iterations if opts.stock_iterations is not None else STOCK_ITERATIONS
    rows = []
    for variant in VARIANTS:
        warmup, iterations = opts.warmup, opts.iterations
        if variant == STOCK:
            warmup, iterations = min(opts.warmup, opts.stock_warmup), stock_iterations
        rows.append(
            Benchmark(
                f"tinyx/serve/{variant}", run.measure, warmup=warmup, iterations=iterations,
                params={"variant": variant, "n": 1, "measure": "serve", "app": APP}, before=using(variant),
            )
        )  # fmt: skip
    for variant in MEMORY_VARIANTS:
        iterations = min(opts.iterations, MEMORY_ITERATIONS, *([stock_iterations] if variant == STOCK else []))
        rows.append(
            Benchmark(
                f"tinyx/memory/{variant}", run.idle, warmup=0, iterations=iterations,
                params={"variant": variant, "n": 1, "measure": "memory", "app": APP}, metric="pss_mib", unit="MiB",
                before=using(variant),
            )
        )  # fmt: skip

    def size(variant: str) -> Callable[[], Sample]:
        return lambda: run.size(variant)

    def image_only() -> None:
        run.image()  # the image's size is in its report: no fleet needed

    def stock_only() -> None:
        run.stock()

    for variant, before in (("tinyx-cold", image_only), ("crun", using("crun")), (STOCK, stock_only)):
        rows.append(
            Benchmark(
                f"tinyx/size/{variant}", size(variant), warmup=0, iterations=1,
                params={"variant": variant, "n": 1, "measure": "size", "app": APP}, metric="mib", unit="MiB",
                before=before,
            )
        )  # fmt: skip
    return rows


def describe() -> dict[str, Any]:
    return {
        "app": APP,
        "variants": {
            "tinyx-cold": "Toolstack.create of the Tinyx image's VM, port published (QEMU user networking)",
            SNAPSHOT: "the same VM from the image's snapshot (booted once by lightvm image build, kept serving): "
            "create_from_snapshot, as a one-shot create; port published",
            "tinyx-pool": "create request to a private lightvmd pooling the image (one shell, app prestarted), "
            "port published (QEMU user networking: a hostfwd added over QMP at execute)",
            BRIDGE: "the same pool with a tap NIC on a lightvm network (bridge in a private namespace); "
            "the client connects to the VM's own address from that namespace",
            "crun": "crun run --detach of the same image's files (initramfs unpacked), host network namespace",
            STOCK: "QEMU -M microvm (qboot, ACPI) on Debian's linux-image-cloud-amd64 bzImage + its initrd, "
            "root on a virtio-mmio raw ext4 disk (snapshot=on) of debootstrap bookworm + apt's redis-server "
            "(bind 0.0.0.0, protected-mode no), systemd; port published (QEMU user networking)",
        },
        "rows": {
            "tinyx/serve/VARIANT": "start request -> first +PONG on a host port (ms); VMs: READY too",
            "tinyx/memory/VARIANT": "one idle instance after serving and --idle-window s: PSS of its processes",
            "tinyx/size/VARIANT": "tinyx-cold: kernel + initramfs bytes (report.json; the archive uncompressed in "
            "initramfs_raw_mib); crun: the unpacked rootfs; "
            "stock: kernel + initrd + root disk (allocated; apparent size in disk_apparent_mib)",
        },
        "metrics": {
            "ms": "serve: from the start request to the first +PONG (RESP over a socket, no redis-cli)",
            "ready": "tinyx-*: the boot record's READY, ms from the start of create (the init saw redis accept; "
            "tinyx-snapshot: the guest took its new page)",
            "create_ms": "tinyx-cold, tinyx-snapshot: the create call's wall time",
            "reply_ms": "tinyx-pool*: the create request to lightvmd's reply (sent at READY)",
            "crun_ms": "crun: crun run --detach until it exited",
            "pss_mib": "memory: sum of Pss over the instance's processes (QEMU; the container's)",
            "cpu_pct": "memory: their utime+stime over the window, % of one CPU",
            "kernel_initrd_mib": "size, stock: kernel + initrd alone (what the Tinyx image's bytes compare with)",
        },
        "bars": {"size_x": SIZE_BAR, "speed_x": SPEED_BAR},
    }


def stock_ratios(results: list[Result]) -> dict[str, float]:
    """The stock image against Tinyx (medians of one run): ``speed_x`` = stock serve /
    tinyx-cold serve, ``size_x`` = stock image / Tinyx kernel + initramfs, and the same
    for the stock kernel + initrd alone (``kernel_size_x``) and host memory (``memory_x``).
    A ratio whose rows failed is left out."""
    import statistics

    def median(name: str, metric: str | None = None) -> float | None:
        r = next((r for r in results if r.name == name and not r.error), None)
        values = r.values(metric) if r is not None else []
        return statistics.median(values) if values else None

    pairs = {
        "speed_x": (median("tinyx/serve/stock"), median("tinyx/serve/tinyx-cold")),
        "size_x": (median("tinyx/size/stock"), median("tinyx/size/tinyx-cold")),
        "kernel_size_x": (median("tinyx/size/stock", "kernel_initrd_mib"), median("tinyx/size/tinyx-cold")),
        "memory_x": (median("tinyx/memory/stock"), median("tinyx/memory/tinyx-cold")),
    }
    return {k: a / b for k, (a, b) in pairs.items() if a is not None and b}


def summary_extra(results: list[Result]) -> list[str]:
    """Lines after the summary table: the stock ratios and whether the issue's bars are met."""
    ratios = stock_ratios(results)
    if not ratios:
        return ["stock vs tinyx-cold: no ratio (a stock or Tinyx row failed)"]
    lines = ["stock vs tinyx-cold (medians of this run):"]
    for key, what, bar in (
        ("speed_x", "create -> first +PONG: Tinyx", SPEED_BAR),
        ("size_x", "image (kernel + initrd + allocated root disk): Tinyx", SIZE_BAR),
        ("kernel_size_x", "kernel + initrd alone: Tinyx", None),
        ("memory_x", "host memory (PSS) per idle VM: Tinyx", None),
    ):
        if key in ratios:
            x = ratios[key]
            better, worse = ("faster", "slower") if key == "speed_x" else ("smaller", "larger")
            verdict = "" if bar is None else f"  (bar >= {bar:g}x: {'met' if x >= bar else 'NOT met'})"
            lines.append(f"  {what} {better} by {x:.1f}x{verdict}" if x >= 1 else f"  {what} {worse} by {1 / x:.1f}x")
    return lines


def plot(results: list[Result], outdir: Path, subtitle: str = "") -> list[Path]:
    from lightvm.bench import plots

    def row(name: str) -> Result | None:
        return next((r for r in results if r.name == name and not r.error), None)

    serve: list[tuple[str, list[float]]] = []
    for variant, extra, label in (
        ("tinyx-cold", "ready", "READY"), ("tinyx-pool", "reply_ms", "reply (READY)"), (BRIDGE, "reply_ms", "reply")
    ):  # fmt: skip
        r = row(f"tinyx/serve/{variant}")
        if r is not None:
            serve += [(f"{variant}\n{label}", r.values(extra)), (f"{variant}\n+PONG", r.values())]
    for variant in ("crun", STOCK):
        r = row(f"tinyx/serve/{variant}")
        if r is not None:
            serve.append((f"{variant}\n+PONG", r.values()))
    memory = [(v, r.values()) for v in MEMORY_VARIANTS if (r := row(f"tinyx/memory/{v}")) is not None]
    sizes = [(label, r.values()) for v, label in (("tinyx-cold", "Tinyx image\n(kernel + initramfs)"),
             ("crun", "container rootfs")) if (r := row(f"tinyx/size/{v}")) is not None]  # fmt: skip
    stock = row(f"tinyx/size/{STOCK}")
    if stock is not None:
        sizes += [("stock Debian\nkernel + initrd", stock.values("kernel_initrd_mib")),
                  ("stock Debian image\n(+ root disk, allocated)", stock.values())]  # fmt: skip
    return [
        *plots.bars(serve, outdir / "tinyx-serve", f"{APP}: start request -> serving (median, p10-p90)",
                    "ms (log scale)", logy=True, subtitle=subtitle),
        *plots.bars(memory, outdir / "tinyx-memory", f"{APP}: host memory per idle instance (PSS)",
                    "MiB", subtitle=subtitle),
        *plots.bars(sizes, outdir / "tinyx-size", f"{APP}: what is started", "MiB (log scale)", logy=True,
                    subtitle=subtitle),
    ]  # fmt: skip
