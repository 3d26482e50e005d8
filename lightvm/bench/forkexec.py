"""Reference: fork/exec of a static binary, timed to its "ready" byte on a pipe.

The binary is a 20-line C program compiled with ``gcc -static`` into a private
temp dir when the fleet is opened (real, not simulated): it writes one byte
``R`` to stdout, then either exits (the measured instance) or, with ``wait``,
blocks reading stdin until EOF (the N-1 instances that keep running).
Spawning goes through :class:`subprocess.Popen`, which uses vfork/posix_spawn
here (no preexec_fn, close_fds default), as a process manager would.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from lightvm.bench.runner import Sample
from lightvm.errors import LightVMError

SOURCE = r"""
#include <unistd.h>
#include <string.h>
int main(int argc, char **argv) {
    char c = 'R';
    if (write(1, &c, 1) != 1) return 2;
    if (argc > 1 && strcmp(argv[1], "wait") == 0) {
        char buf[16];
        while (read(0, buf, sizeof buf) > 0) {}
    }
    return 0;
}
"""
TIMEOUT = 10.0


def build_static(workdir: Path) -> Path:
    """Compile the ready-byte program with ``gcc -static``; returns the binary.

    :raise LightVMError: no gcc, or the compile failed (e.g. no static libc).
    """
    gcc = shutil.which("gcc")
    if gcc is None:
        raise LightVMError("fork/exec baseline: gcc is needed to build the static binary")
    src = workdir / "ready.c"
    src.write_text(SOURCE)
    out = workdir / "ready"
    proc = subprocess.run(
        [gcc, "-static", "-O2", "-o", str(out), str(src)], capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        raise LightVMError(f"fork/exec baseline: gcc -static failed: {proc.stderr.strip()[-300:]}")
    return out


def _read_ready(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdout is not None
    byte = proc.stdout.read(1)
    if byte != b"R":
        raise LightVMError(f"fork/exec baseline: expected the ready byte, got {byte!r}")


class ForkExecFleet:
    """N-1 running instances of the static binary plus one measured spawn at a time."""

    variant = "fork-exec"

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="lightvm-bench-fork-")
        self.binary = build_static(Path(self._tmp.name))
        self.running: list[subprocess.Popen[bytes]] = []

    def grow(self, count: int) -> None:
        """Keep ``count`` instances running (each has written its ready byte)."""
        while len(self.running) < count:
            proc = subprocess.Popen(
                [str(self.binary), "wait"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
            )
            self.running.append(proc)
            _read_ready(proc)

    def measure(self) -> Sample:
        """One spawn: ms to the ready byte, and to the child's exit."""
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(self.binary)], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:
            _read_ready(proc)
            ready = (time.perf_counter() - t0) * 1000
            proc.wait(TIMEOUT)
            exited = (time.perf_counter() - t0) * 1000
        finally:
            _stop(proc)
        return {"ms": ready, "exit_ms": exited}

    def pids(self) -> list[int]:
        return [proc.pid for proc in self.running]

    def close(self) -> None:
        for proc in self.running:
            _stop(proc)
        self.running.clear()
        self._tmp.cleanup()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    try:
        proc.wait(TIMEOUT)  # EOF on stdin ends a waiting instance
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(TIMEOUT)


def available() -> str | None:
    """Why this baseline cannot run here, or None."""
    return None if shutil.which("gcc") else "gcc not found"


__all__ = ["ForkExecFleet", "available", "build_static"]
