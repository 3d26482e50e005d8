"""Clones as a density fleet: N idle VMs started from one template (lightvm/mobility/template.py).

Set-up, untimed: one VM of the guest boots (cold path, a private state dir), becomes a
template (its RAM a file the clones map private) and is destroyed. ``grow(k)`` then
clones the template until k run, one-shot (``lightvm clone`` without lightvmd: a QEMU
per clone, several in flight), each clone with its own name, MAC, NoXS identity and,
for a daytime guest, its own published 127.0.0.1 port, which ``query_all`` asks. What a
clone costs beyond a cold VM's is what it does not share: the template's pages it never
wrote are counted once across the fleet (Pss), its own writes are its own.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path

from lightvm.bench.runner import Sample
from lightvm.errors import LightVMError
from lightvm.spec import VMSpec

SOURCE = "tpl-src"
TEMPLATE_DIR = "template"


class LightvmCloneFleet:
    """Clones of one template (see the module docstring)."""

    variant = "lightvm-clone"

    def __init__(self, spec: VMSpec, accel: str, publish_port: int | None = None) -> None:
        from lightvm.mobility.template import create_template
        from lightvm.toolstack import Toolstack

        self.publish_port = publish_port
        self.ports: list[int] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="lightvm-bench-clones-")
        self.marker = self._tmp.name  # in every QEMU's arguments (its console path)
        root = Path(self._tmp.name)
        self.ts = Toolstack(root / "state")
        self.tdir = root / TEMPLATE_DIR
        self.count = 0
        self.batch = 0
        try:
            self.ts.create(spec, name=SOURCE, accel=accel)
            create_template(self.ts, SOURCE, self.tdir)
            self.ts.destroy(SOURCE)
        except BaseException:
            self.close()
            raise

    def grow(self, count: int) -> None:
        """Clone the template until ``count`` clones run (one ``clone`` call for the rest)."""
        from lightvm.bench.split import free_port_run
        from lightvm.mobility.clone import clone

        more = count - self.count
        if more <= 0:
            return
        publish = None
        if self.publish_port is not None:
            first = free_port_run(more)
            publish = f"127.0.0.1:{first}:{self.publish_port}"
        self.batch += 1
        clone(self.ts, str(self.tdir), more, f"c{self.batch}-{{i}}", publish)
        if publish is not None:
            self.ports += list(range(first, first + more))
        self.count = count

    def query_all(self) -> tuple[int, int]:
        """Ask every published clone the time: (clones that answered a daytime line, asked)."""
        from lightvm.bench.split import query_ports

        return query_ports(self.ports)

    def measure(self) -> Sample:
        """One more clone, timed from the call to its READY, then destroyed."""
        from lightvm.mobility.clone import clone

        self.batch += 1
        t0 = time.perf_counter()
        result = clone(self.ts, str(self.tdir), 1, f"m{self.batch}-{{i}}", None)
        wall = (time.perf_counter() - t0) * 1000
        for made in result.clones:
            self.ts.destroy(str(made["name"]))
        return {"ms": wall, "wall_ms": wall}

    def pids(self) -> list[int]:
        return [info.pid for info in self.ts.list() if info.pid]

    def close(self) -> None:
        with contextlib.suppress(LightVMError):
            self.ts.destroy_all()
        self.count = 0
        self.ports = []
        self._tmp.cleanup()


__all__ = ["LightvmCloneFleet"]
