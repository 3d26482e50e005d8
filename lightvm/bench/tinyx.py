"""``lightvm bench tinyx``: one app (redis-server) as a Tinyx VM, a pooled Tinyx VM and a
crun container made of the same image's files, side by side in one run.

The image is built once per run into the run's temporary folder with the real CLI
(``lightvm image build redis-server -o TMP``; warm caches under tinyx/build make that ~1 s,
a cold cache minutes: progress on stderr). Then, one variant alive at a time
(lightvm/bench/tinyxfleets.py has how each is started):

- ``tinyx/serve/VARIANT``: from the start request to the first ``+PONG`` answered on a
  host port, for ``tinyx-cold`` (``Toolstack.create``, READY recorded too), ``tinyx-pool``
  (a create request to a private lightvmd pooling the image; its reply recorded too) and
  ``crun`` (``crun run --detach`` of the unpacked image in the host's network namespace);
- ``tinyx/memory/VARIANT``: one idle instance (cold VM, pooled VM, container) after serving and
  ``--idle-window`` seconds: host memory (PSS of the QEMU process, of the container's
  processes) and CPU over the window;
- ``tinyx/size/VARIANT``: the image (kernel + initramfs bytes, from its report.json) and
  the container's root file system (the same files unpacked).

Not measured yet: the issue's stock Debian kernel image (the same app booted on a
distribution kernel and initramfs). TCG only here, and the machine is shared: timings
are noisy, each row records the host's load and steal.
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
from lightvm.bench.suite import SuiteOptions
from lightvm.bench.tinyxfleets import ColdVMs, Containers, Image, PoolVMs
from lightvm.errors import LightVMError

APP = "redis-server"
BUILD_TIMEOUT_S = 1800  # a cold cache: kernel build (~6 min here), debootstrap, apt
REFERENCE = "tinyx-cold"
VARIANTS = ("tinyx-cold", "tinyx-pool", "crun")
MEMORY_VARIANTS = ("tinyx-cold", "tinyx-pool", "crun")
MEMORY_ITERATIONS = 3  # at most: each is a boot plus the idle window, and PSS barely moves
NOT_MEASURED = "the stock Debian kernel image of the issue (not measured yet)"


def build_image(out: Path) -> Image:
    """``lightvm image build APP -o OUT`` (its progress on our stderr).

    :raise LightVMError: the build failed or timed out (its exit status says which).
    """
    argv = [sys.executable, "-m", "lightvm.cli", "image", "build", APP, "-o", str(out)]
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
        self.fleet: ColdVMs | PoolVMs | Containers | None = None

    def image(self) -> Image:
        if self._failed is not None:  # every row says why, without building again
            raise LightVMError(f"no image: {self._failed}")
        if self._image is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="lightvm-bench-tinyx-")
            try:
                self._image = build_image(Path(self._tmp.name) / APP)
            except LightVMError as exc:
                self._failed = exc
                raise
        return self._image

    def use(self, variant: str) -> None:
        """The variant's fleet, after closing the previous one (variants never share the host)."""
        if self.fleet is not None and self.fleet.variant == variant:
            return
        self.close_fleet()
        image = self.image()
        if variant == "tinyx-cold":
            self.fleet = ColdVMs(image, self.opts.accel)
        elif variant == "tinyx-pool":
            self.fleet = PoolVMs(image, self.opts.accel)
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
        image = self.image()
        if variant == "crun":
            if not isinstance(self.fleet, Containers):
                raise LightVMError("tinyx: no container bundle (its set-up failed)")
            return {"mib": self.fleet.rootfs_bytes / 2**20, "files": float(self.fleet.rootfs_files)}
        kernel, initramfs = image.kernel_bytes / 2**20, image.initramfs_bytes / 2**20
        return {"mib": kernel + initramfs, "kernel_mib": kernel, "initramfs_mib": initramfs}

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

    rows = []
    for variant in VARIANTS:
        rows.append(
            Benchmark(
                f"tinyx/serve/{variant}", run.measure, warmup=opts.warmup, iterations=opts.iterations,
                params={"variant": variant, "n": 1, "measure": "serve", "app": APP}, before=using(variant),
            )
        )  # fmt: skip
    for variant in MEMORY_VARIANTS:
        rows.append(
            Benchmark(
                f"tinyx/memory/{variant}", run.idle, warmup=0, iterations=min(opts.iterations, MEMORY_ITERATIONS),
                params={"variant": variant, "n": 1, "measure": "memory", "app": APP}, metric="pss_mib", unit="MiB",
                before=using(variant),
            )
        )  # fmt: skip

    def size(variant: str) -> Callable[[], Sample]:
        return lambda: run.size(variant)

    def image_only() -> None:
        run.image()  # the image's size is in its report: no fleet needed

    for variant, before in (("tinyx-cold", image_only), ("crun", using("crun"))):
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
            "tinyx-pool": "create request to a private lightvmd pooling the image (one shell, app prestarted)",
            "crun": "crun run --detach of the same image's files (initramfs unpacked), host network namespace",
        },
        "rows": {
            "tinyx/serve/VARIANT": "start request -> first +PONG on a host port (ms); VMs: READY too",
            "tinyx/memory/VARIANT": "one idle instance after serving and --idle-window s: PSS of its processes",
            "tinyx/size/VARIANT": "tinyx-cold: kernel + initramfs bytes (report.json); crun: the unpacked rootfs",
        },
        "metrics": {
            "ms": "serve: from the start request to the first +PONG (RESP over a socket, no redis-cli)",
            "ready": "tinyx-*: the boot record's READY, ms from the start of create (the init saw redis accept)",
            "create_ms": "tinyx-cold: the Toolstack.create call's wall time",
            "reply_ms": "tinyx-pool: the create request to lightvmd's reply (sent at READY)",
            "crun_ms": "crun: crun run --detach until it exited",
            "pss_mib": "memory: sum of Pss over the instance's processes (QEMU; the container's)",
            "cpu_pct": "memory: their utime+stime over the window, % of one CPU",
        },
        "not_measured": [NOT_MEASURED],
    }


def plot(results: list[Result], outdir: Path, subtitle: str = "") -> list[Path]:
    from lightvm.bench import plots

    def row(name: str) -> Result | None:
        return next((r for r in results if r.name == name and not r.error), None)

    serve: list[tuple[str, list[float]]] = []
    for variant, extra, label in (("tinyx-cold", "ready", "READY"), ("tinyx-pool", "reply_ms", "reply (READY)")):
        r = row(f"tinyx/serve/{variant}")
        if r is not None:
            serve += [(f"{variant}\n{label}", r.values(extra)), (f"{variant}\n+PONG", r.values())]
    crun = row("tinyx/serve/crun")
    if crun is not None:
        serve.append(("crun\n+PONG", crun.values()))
    memory = [(v, r.values()) for v in MEMORY_VARIANTS if (r := row(f"tinyx/memory/{v}")) is not None]
    sizes = [(label, r.values()) for v, label in (("tinyx-cold", "Tinyx image\n(kernel + initramfs)"),
             ("crun", "container rootfs")) if (r := row(f"tinyx/size/{v}")) is not None]  # fmt: skip
    return [
        *plots.bars(serve, outdir / "tinyx-serve", f"{APP}: start request -> serving (median, p10-p90)",
                    "ms (log scale)", logy=True, subtitle=subtitle),
        *plots.bars(memory, outdir / "tinyx-memory", f"{APP}: host memory per idle instance (PSS)",
                    "MiB", subtitle=subtitle),
        *plots.bars(sizes, outdir / "tinyx-size", f"{APP}: what is started", "MiB", subtitle=subtitle),
    ]  # fmt: skip
