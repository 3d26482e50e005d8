"""Our QMP client (lightvm/qmp.py) against qemu.qmp's, on one paused QEMU.

    python -m lightvm.bench.qmpclients [--rounds 20]

Per round, alternating: connect + ``qmp_capabilities`` + ``query-status`` + close, with
lightvm.qmp.QMPClient, qemu.qmp's sync ``legacy.QEMUMonitorProtocol`` and its asyncio
``QMPClient`` (one ``asyncio.run`` per round, as a synchronous caller would pay). QEMU
is started with ``-S`` through lightvm.machine.Machine and serves one client at a time.
Then the import time of each client, in a fresh interpreter (median of 5). qemu.qmp is
imported only if installed; without it only our client is measured (and it says so).
The figures are in docs/qemu-notes.md ("Why our own QMP client").
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

IMPORTS = {
    "lightvm.qmp": "import lightvm.qmp",
    "qemu.qmp.legacy": "import qemu.qmp.legacy",
    "qemu.qmp (QMPClient)": "from qemu.qmp import QMPClient",
}


def have_qemu_qmp() -> bool:
    try:
        return importlib.util.find_spec("qemu.qmp") is not None
    except ModuleNotFoundError:
        return False


def ours(path: Path) -> None:
    from lightvm.qmp import QMPClient

    with QMPClient.connect(path, timeout=2.0) as client:
        client.negotiate(timeout=2.0)
        assert client.execute("query-status", timeout=2.0)["status"] == "prelaunch"


def legacy(path: Path) -> None:
    from qemu.qmp.legacy import QEMUMonitorProtocol

    qmp = QEMUMonitorProtocol(str(path))
    try:
        qmp.connect(negotiate=True)
        status = qmp.cmd("query-status")
        assert isinstance(status, dict) and status["status"] == "prelaunch"
    finally:
        qmp.close()


def asyncio_client(path: Path) -> None:
    import asyncio

    from qemu.qmp import QMPClient

    async def run() -> None:
        qmp = QMPClient("bench")
        await qmp.connect(str(path))  # negotiates by default
        try:
            status = await qmp.execute("query-status")
            assert isinstance(status, dict) and status["status"] == "prelaunch"
        finally:
            await qmp.disconnect()

    asyncio.run(run())


def import_ms(statement: str, runs: int = 5) -> float:
    """Median wall time of ``statement`` in a fresh interpreter (its own clock, not start-up)."""
    code = f"import time; t = time.perf_counter(); {statement}; print((time.perf_counter() - t) * 1000)"
    samples = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
        samples.append(float(out.stdout.strip()))
    return statistics.median(samples)


def measure(rounds: int) -> dict[str, list[float]]:
    from lightvm.bench.qmp import paused_qemu
    from lightvm.errors import LightVMError

    clients: dict[str, Callable[[Path], None]] = {"lightvm.qmp": ours}
    if have_qemu_qmp():
        clients["qemu.qmp.legacy"] = legacy
        clients["qemu.qmp (QMPClient)"] = asyncio_client
    else:
        print("qemu.qmp is not installed: measuring lightvm.qmp only (pip install qemu.qmp to compare)")
    times: dict[str, list[float]] = {name: [] for name in clients}
    try:
        with paused_qemu("qmpbench") as machine:
            qmp_path = machine.config.qmp_path
            machine.disconnect()  # QEMU serves one client at a time: free it for the bench
            for fn in clients.values():  # warm-up: imports, first-connection costs
                fn(qmp_path)
            for _ in range(rounds):
                for name, fn in clients.items():
                    t = time.perf_counter()
                    fn(qmp_path)
                    times[name].append((time.perf_counter() - t) * 1000)
    except LightVMError as exc:
        raise SystemExit(str(exc)) from None
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightvm.bench.qmpclients", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="rounds (each client once per round, alternating)")
    args = parser.parse_args(argv)
    times = measure(args.rounds)
    print(f"connect + qmp_capabilities + query-status + close, median of {args.rounds} (alternating), QEMU -S:")
    for name, samples in times.items():
        print(f"  {name:<22} {statistics.median(samples):7.3f} ms  (min {min(samples):.3f}, max {max(samples):.3f})")
    print("import time in a fresh interpreter, median of 5:")
    for name, statement in IMPORTS.items():
        if name != "lightvm.qmp" and not have_qemu_qmp():
            continue
        print(f"  {name:<22} {import_ms(statement):7.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
