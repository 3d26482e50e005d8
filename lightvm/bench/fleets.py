"""The lightvm side of the comparisons: a fleet of VMs made by the toolstack's public API.

A *fleet* is what every boot-suite variant provides (lightvm here; fork/exec,
crun and libvirt in their modules): ``grow(k)`` keeps k instances running (the
N-1 of "the Nth VM while N-1 run"), ``measure()`` starts one more, times it to
ready, removes it and returns the sample, ``close()`` removes everything.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from lightvm.bench.runner import REPO, Sample
from lightvm.boot import BOOT_STEP_KEYS
from lightvm.errors import LightVMError
from lightvm.spec import VMSpec, load_spec


class Fleet(Protocol):
    variant: str

    def grow(self, count: int) -> None: ...

    def measure(self) -> Sample: ...

    def close(self) -> None: ...

    def pids(self) -> list[int]:
        """The host processes the running instances cost (for density), daemons included."""
        ...


def guest_spec(app: str = "noop") -> VMSpec:
    """examples/<app>.toml (noop by default): the guest every VM variant boots.

    :raise LightVMError: the example or its kernel is missing (run ``make -C images``).
    """
    path = REPO / "examples" / f"{app}.toml"
    if not path.is_file():
        raise LightVMError(f"{path}: no such example")
    return load_spec(path)


class LightvmColdFleet:
    """lightvm's cold path (NoXS, no pool): ``Toolstack.create`` of one VM, in a private state dir.

    The sample is the toolstack's own boot breakdown (ms from the start of create):
    ``ms`` = READY seen by the host, plus qemu_up, resumed, guest_entry, devices_up,
    and ``wall_ms`` around the call (Python-side bookkeeping included).
    """

    variant = "lightvm-cold"

    def __init__(self, spec: VMSpec, accel: str, publish_port: int | None = None) -> None:
        from lightvm.toolstack import Toolstack

        self.spec = spec
        self.accel = accel
        # publish_port: each VM's guest port forwarded to a 127.0.0.1 port of its own (user
        # networking), so that query_all() can ask every one of them (density's `nc` check).
        self.publish_port = publish_port
        self.ports: list[int] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="lightvm-bench-state-")
        self.marker = self._tmp.name  # in every QEMU's arguments (its console path)
        self.ts = Toolstack(Path(self._tmp.name) / "state")
        self.count = 0
        self.seq = 0

    def grow(self, count: int) -> None:
        from lightvm.bench.ports import free_port

        while self.count < count:
            spec = self.spec
            if self.publish_port is not None:
                port = free_port()
                spec = spec.with_publish([f"127.0.0.1:{port}:{self.publish_port}"])
                self.ports.append(port)
            self.ts.create(spec, name=f"bg{self.count}", accel=self.accel)
            self.count += 1

    def query_all(self) -> tuple[int, int]:
        """Ask every published VM the time: (VMs that answered a daytime line, VMs asked)."""
        from lightvm.bench.split import query_ports

        return query_ports(self.ports)

    def measure(self) -> Sample:
        self.seq += 1
        name = f"m{self.seq}"
        t0 = time.perf_counter()
        (result,) = self.ts.create(self.spec, name=name, accel=self.accel)
        wall = (time.perf_counter() - t0) * 1000
        t1 = time.perf_counter()
        self.ts.destroy(name)
        destroy = (time.perf_counter() - t1) * 1000
        sample: Sample = {"wall_ms": wall, "destroy_ms": destroy}
        for step in BOOT_STEP_KEYS:
            value = result.boot_ms.get(step)
            if value is not None:
                sample[step] = float(value)
        sample["ms"] = sample.get("ready", wall)
        return sample

    def pids(self) -> list[int]:
        return [info.pid for info in self.ts.list() if info.pid]

    def close(self) -> None:
        with contextlib.suppress(LightVMError):
            self.ts.destroy_all()
        self.count = 0
        self.ports = []
        self._tmp.cleanup()


def network_setup(name: str, subnet: str) -> Callable[[Path, dict[str, str]], None]:
    """A :class:`lightvm.bench.split.SplitFleet` ``before_daemon`` step: network ``name``
    made in the fleet's state dir (the CLI, no daemon yet), so that the pool's shells
    lease their addresses on it from the first one (lightvm/devices/shellnet.py), as on
    a host whose networks outlive its lightvmd.

    :raise LightVMError: the network could not be made."""

    def make(state: Path, env: dict[str, str]) -> None:
        made = subprocess.run(
            [sys.executable, "-m", "lightvm.cli", "--state-dir", str(state), "network", "create", name,
             "--subnet", subnet],
            env=dict(env, LIGHTVM_NO_DAEMON="1"), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if made.returncode != 0:
            raise LightVMError(f"network create {name}: {made.stderr.strip()}")

    return make


__all__ = ["Fleet", "LightvmColdFleet", "guest_spec", "network_setup"]
