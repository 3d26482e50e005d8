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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lightvm.bench.ports import free_port
from lightvm.bench.runner import Benchmark, Result, Sample
from lightvm.bench.suite import SuiteOptions
from lightvm.errors import LightVMError

VARIANTS = ("query-version", "info-status", "hostfwd-add")
REFERENCE = "query-version"
NETDEV = "net0"


@contextlib.contextmanager
def paused_qemu(name: str, accel: str = "tcg", extra_args: tuple[str, ...] = ()) -> Iterator[Any]:
    """A scratch QEMU on the noop guest (lightvm.accel.scratch_machine) started paused (-S),
    its QMP negotiated: nothing runs in it but the monitor the QMP benches talk to.

    :raise LightVMError: no guest kernel (the images are not built).
    """
    from lightvm import accel as accelmod

    kernel = accelmod.probe_kernel()
    if kernel is None:
        raise LightVMError("no guest kernel (images/build/noop.elf, or $LIGHTVM_PROBE_KERNEL): make -C images")
    with accelmod.scratch_machine(name, kernel, accel, extra_args) as (machine, _region):
        machine.launch()  # paused (-S)
        machine.qmp.wait(machine.qmp.negotiate_id or 0, timeout=10.0)
        yield machine


class _Monitor:
    """A paused QEMU with a user NIC and lightvm's negotiated QMP connection to it."""

    def __init__(self, accel: str) -> None:
        self._stack = contextlib.ExitStack()
        nic = ("-netdev", f"user,id={NETDEV},net=10.0.2.0/24", "-device", f"virtio-net-device,netdev={NETDEV}")
        self.machine = self._stack.enter_context(paused_qemu("benchqmp", accel, nic))

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
            self.hmp(f"hostfwd_remove {NETDEV} {rule.split('-')[0]}")
        else:
            raise LightVMError(f"bench qmp: unknown row {variant!r}")
        return {"ms": ms}

    def close(self) -> None:
        self._stack.close()


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
