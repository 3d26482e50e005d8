"""QMP round trips on one kept connection: what lightvm's control path pays per command.

    lightvm bench qmp [--iterations N] [--accel tcg]

One QEMU, started paused (-S) through lightvm.machine.Machine with a user-networking NIC,
and its QMP connection, negotiated once (as lightvmd keeps each VM's). Rows, each a
command sent and its reply read by lightvm.qmp.QMPClient:

* ``query-version``: the shortest command, QEMU's fixed cost per command;
* ``info-status``: ``human-monitor-command`` ``info status``, an HMP command through QMP;
* ``hostfwd-add``: ``human-monitor-command`` ``hostfwd_add`` of a free local port, what a
  pooled create with user networking and ``--publish`` sends (removed again, untimed).

QEMU's monitor read its socket one byte per main-loop wake-up before
qemu/patches/qmp-read-buffer.patch, so a command's cost grew with its length:
``LIGHTVM_QEMU=`` a build without the patch runs the same rows for the comparison
(docs/qemu-notes.md).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

from lightvm.bench.ports import free_port
from lightvm.bench.runner import Benchmark, Result, Sample
from lightvm.bench.suite import SuiteOptions
from lightvm.errors import LightVMError

VARIANTS = ("query-version", "info-status", "hostfwd-add")
REFERENCE = "query-version"
NETDEV = "net0"


class _Monitor:
    """A paused QEMU with a user NIC and lightvm's negotiated QMP connection to it."""

    def __init__(self, accel: str) -> None:
        from lightvm import accel as accelmod
        from lightvm import hostfacts
        from lightvm.machine import Machine, MachineConfig
        from lightvm.noxs import NoxsRegion, PageConfig, region_size_for
        from lightvm.state import SHM_PREFIX, shm_dir

        kernel = accelmod.probe_kernel()
        if kernel is None:
            raise LightVMError("bench qmp: no guest kernel (images/build/noop.elf): make -C images")
        self._tmp = tempfile.TemporaryDirectory(prefix="lightvm-bench-qmp-")
        work = Path(self._tmp.name)
        self._shm = shm_dir() / f"{SHM_PREFIX}benchqmp-{work.name[-8:]}"
        self._region = NoxsRegion.create(self._shm, 1)
        self.machine: Any = None
        try:
            self._region.write_config(PageConfig(name="benchqmp", tsc_hz=hostfacts.tsc_hz()))
            config = MachineConfig(
                name="benchqmp",
                kernel=kernel,
                memory_mib=16,
                vcpus=1,
                cmdline="",
                accel=accel,
                noxs_path=self._shm,
                noxs_size=region_size_for(1),
                console_path=work / "console.log",
                qmp_path=work / "qmp.sock",
                log_path=work / "qemu.log",
                extra_args=(
                    "-netdev",
                    f"user,id={NETDEV},net=10.0.2.0/24",
                    "-device",
                    f"virtio-net-device,netdev={NETDEV}",
                ),
            )
            self.machine = Machine(config)
            self.machine.launch()  # paused (-S): nothing runs but the monitor
            self.machine.qmp.wait(self.machine.qmp.negotiate_id or 0, timeout=10.0)
        except BaseException:
            self.close()
            raise

    def round_trip(self, command: str, arguments: dict[str, Any] | None = None) -> tuple[float, Any]:
        t0 = time.perf_counter()
        said = self.machine.qmp.execute(command, arguments, timeout=5.0)
        return (time.perf_counter() - t0) * 1000, said

    def hmp(self, line: str) -> tuple[float, str]:
        ms, said = self.round_trip("human-monitor-command", {"command-line": line})
        return ms, str(said or "")

    def sample(self, variant: str) -> Sample:
        if variant == "query-version":
            ms, _ = self.round_trip("query-version")
        elif variant == "info-status":
            ms, said = self.hmp("info status")
            if "paused" not in said and "prelaunch" not in said:
                raise LightVMError(f"bench qmp: info status said {said!r}")
        elif variant == "hostfwd-add":
            rule = f"tcp:127.0.0.1:{free_port()}-:13"
            ms, said = self.hmp(f"hostfwd_add {NETDEV} {rule}")
            if said.strip():
                raise LightVMError(f"bench qmp: hostfwd_add {rule}: {said.strip()}")
            _, said = self.hmp(f"hostfwd_remove {NETDEV} {rule.split('-')[0]}")
        else:
            raise LightVMError(f"bench qmp: unknown row {variant!r}")
        return {"ms": ms}

    def close(self) -> None:
        if self.machine is not None:
            with contextlib.suppress(Exception):
                self.machine.kill()
            self.machine = None
        with contextlib.suppress(Exception):
            self._region.close()
        with contextlib.suppress(OSError):
            self._region.unlink()
        self._tmp.cleanup()


def benchmarks(opts: SuiteOptions, stack: contextlib.ExitStack) -> list[Benchmark]:
    monitor: list[_Monitor] = []

    def fixture() -> _Monitor:
        if not monitor:
            monitor.append(_Monitor(opts.accel))
            stack.callback(monitor[0].close)
        return monitor[0]

    def row(variant: str) -> Benchmark:
        return Benchmark(
            f"qmp/{variant}",
            lambda: fixture().sample(variant),
            warmup=max(opts.warmup, 3),  # the first commands of a connection pay QEMU's first-use costs
            iterations=opts.iterations,
            params={"variant": variant},
        )

    return [row(variant) for variant in VARIANTS]


def describe() -> dict[str, Any]:
    doc = (__doc__ or "").split("Rows,", 1)[-1]
    return {
        "variants": {v: {"kind": "lightvm", "doc": f"lightvm/bench/qmp.py: {v}"} for v in VARIANTS},
        "rows": doc.strip(),
        "reference": REFERENCE,
    }


def plot(results: list[Result], outdir: Path, subtitle: str = "") -> list[Path]:
    from lightvm.bench import plots

    groups = [(str(r.params.get("variant")), r.values()) for r in results]
    return plots.bars(groups, outdir / "qmp", "QMP round trip on a kept connection", "ms", subtitle=subtitle)


__all__ = ["REFERENCE", "VARIANTS", "benchmarks", "describe", "plot"]
