"""Where the time of a cold ``Toolstack.create`` goes, at N VMs already running.

``python -m lightvm.bench.createprof --vms 1,200,1000 --iterations 20 --accel tcg``
grows a fleet through the public API (a private state dir), and at each N times
``--iterations`` more creates, each followed by its destroy. Every step of the create
is timed by wrapping the method that does it (the folder and its marker, each record
write, the NoXS file, the QMP socket, the QEMU spawn, the QMP connect, the NoXS page),
next to the boot breakdown (QEMU up, READY) and the destroy. One JSON line per N, of
medians in ms. It answers one question: does a step of ours grow with N, or does only
QEMU's own start (the host)? Above 20 VMs hold ``flock /tmp/bench.lock`` around it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# (class path, method, label): the create path's steps, in order
STEPS = (
    ("lightvm.state:StateDir", "allocate", "folder"),
    ("lightvm.state:VMDir", "write", "record_write"),
    ("lightvm.noxs:NoxsRegion", "create", "noxs_file"),
    ("lightvm.machine:Machine", "_pre_launch", "qmp_socket"),
    ("lightvm.machine:Machine", "_launch", "spawn"),
    ("lightvm.machine:Machine", "_post_launch", "qmp_connect"),
    ("lightvm.noxs:NoxsRegion", "write_config", "noxs_page"),
)


@contextlib.contextmanager
def timed_steps(times: dict[str, list[float]]) -> Iterator[None]:
    """Wrap every method of :data:`STEPS` so that each call appends its ms to ``times``."""
    import importlib

    saved = []
    for where, method, label in STEPS:
        module, cls_name = where.split(":")
        cls = getattr(importlib.import_module(module), cls_name)
        original = cls.__dict__[method]
        # NoxsRegion.create is a classmethod: wrap its function, then make it one again
        kind = type(original) if isinstance(original, classmethod | staticmethod) else None
        func = original.__func__ if kind is not None else original

        def wrapper(*args: Any, _f: Callable[..., Any] = func, _l: str = label, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return _f(*args, **kwargs)
            finally:
                times.setdefault(_l, []).append((time.perf_counter() - t0) * 1000)

        functools.update_wrapper(wrapper, func)
        saved.append((cls, method, original))
        setattr(cls, method, kind(wrapper) if kind is not None else wrapper)
    try:
        yield
    finally:
        for cls, method, original in saved:
            setattr(cls, method, original)


def profile(vms: list[int], iterations: int, accel: str, app: str, settle_s: float) -> Iterator[dict[str, Any]]:
    """One dict of medians per N (ascending); the fleet grows between them."""
    from lightvm.bench.fleets import guest_spec
    from lightvm.toolstack import Toolstack

    spec = guest_spec(app)
    with tempfile.TemporaryDirectory(prefix="lightvm-createprof-") as tmp:
        ts = Toolstack(Path(tmp) / "state")
        running, seq = 0, 0
        try:
            for n in sorted(set(vms)):
                while running < n - 1:
                    ts.create(spec, name=f"bg{running}", accel=accel)
                    running += 1
                time.sleep(settle_s)
                times: dict[str, list[float]] = {}
                boots: list[dict[str, float | None]] = []
                with timed_steps(times):
                    for _ in range(iterations):
                        seq += 1
                        (result,) = ts.create(spec, name=f"m{seq}", accel=accel)
                        boots.append(result.boot_ms)
                        t0 = time.perf_counter()
                        ts.destroy(f"m{seq}")
                        times.setdefault("destroy", []).append((time.perf_counter() - t0) * 1000)
                out: dict[str, Any] = {"n": n, "iterations": iterations}
                for step in ("qemu_up", "ready"):
                    values = [float(v) for b in boots if (v := b.get(step)) is not None]
                    out[step] = round(statistics.median(values), 3) if values else None
                # record_write: each of the create's two writes (and destroy's none) counts
                out.update({k: round(statistics.median(v), 3) for k, v in times.items()})
                yield out
        finally:
            ts.destroy_all()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightvm.bench.createprof", description=__doc__.split("\n")[0])
    parser.add_argument("--vms", default="1,200", help="N values (default 1,200)")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--accel", default="tcg")
    parser.add_argument("--app", default="noop")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds between growing and timing")
    args = parser.parse_args(argv)
    vms = [int(x) for x in args.vms.split(",") if x.strip()]
    for line in profile(vms, args.iterations, args.accel, args.app, args.settle):
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
