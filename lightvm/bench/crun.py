"""Reference: a container started with crun (a real OCI runtime, busybox rootfs).

crun refuses this host's hybrid cgroup v1/v2 layout, so (docs/qemu-notes.md, "Baselines for the benchmark suite")
all crun calls run in a worker process started as
``unshare -m --propagation private python -m lightvm.bench.crun WORKDIR``, which
first unmounts /sys/fs/cgroup/unified in its private mount namespace (the host's
mounts are untouched). The worker reads one JSON command per line on stdin and
answers one JSON line on stdout, so the timings exclude the unshare and Python
start-up: ``start`` runs a detached ``busybox sleep`` container (the N-1 that
keep running); ``measure`` times ``crun run`` of a container whose process
writes ``R`` to stdout and exits (ms to that byte, and to crun's exit);
``serve`` runs a server's bundle detached and times it to its first good answer on a
port (the Tinyx suite's redis, lightvm/bench/tinyx.py), ``kill`` deletes one;
``stop`` kills and deletes every container. The state lives under a suite-owned
``--root``; on EOF the worker deletes whatever is left.

The bundle: a rootfs with only busybox (and, for Debian's dynamic busybox, the
shared libraries ldd names; busybox-static needs none), read-only root, the
default namespaces of ``crun spec`` (pid, net, ipc, uts, mnt).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lightvm import paths
from lightvm.bench.runner import Sample
from lightvm.errors import LightVMError

TIMEOUT = 30.0
CGROUP_UNIFIED = "/sys/fs/cgroup/unified"
PR_SET_CHILD_SUBREAPER = 36


def busybox() -> Path | None:
    """The host's busybox (busybox-static or Debian's dynamic busybox), or None."""
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        path = Path(candidate)
        if path.is_file():
            return path
    return None


def shared_libraries(binary: Path) -> list[Path]:
    """The shared objects ``binary`` loads (from ldd), loader included; [] for a static binary."""
    proc = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, timeout=TIMEOUT, check=False)
    libs = []
    for line in proc.stdout.splitlines():
        # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        for word in line.split():
            if word.startswith("/") and Path(word).exists():
                libs.append(Path(word))
    return libs


def available() -> str | None:
    """Why this baseline cannot run here, or None."""
    if shutil.which("crun") is None:
        return "crun not found (apt install crun)"
    if shutil.which("unshare") is None:
        return "unshare not found (util-linux)"
    if busybox() is None:
        return "no busybox (apt install busybox or busybox-static)"
    if os.geteuid() != 0:
        return "crun needs root here"
    return None


def make_bundle(bundle: Path, args: list[str]) -> None:
    """An OCI bundle at ``bundle`` (rootfs + config.json from ``crun spec``) running ``args``."""
    bb = busybox()
    if bb is None:
        raise LightVMError("crun baseline: no busybox (apt install busybox or busybox-static)")
    rootfs = bundle / "rootfs"
    (rootfs / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(bb, rootfs / "bin" / "busybox")
    for lib in shared_libraries(bb):  # Debian's busybox is dynamic; busybox-static needs none
        dest = rootfs / lib.relative_to("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(lib.resolve(), dest)
    subprocess.run(["crun", "spec"], cwd=bundle, capture_output=True, timeout=TIMEOUT, check=True)
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = args
    config["root"] = {"path": "rootfs", "readonly": True}
    (bundle / "config.json").write_text(json.dumps(config))


class CrunFleet:
    """N-1 running busybox containers plus one measured ``crun run`` at a time."""

    variant = "crun"

    def __init__(self) -> None:
        why = available()
        if why:
            raise LightVMError(f"crun baseline: {why}")
        self._tmp = tempfile.TemporaryDirectory(prefix="lightvm-bench-crun-")
        work = Path(self._tmp.name)
        make_bundle(work / "ready", ["/bin/busybox", "echo", "R"])
        make_bundle(work / "sleep", ["/bin/busybox", "sleep", "3600"])
        self.count = 0
        try:
            self.worker = CrunWorker(work)
        except BaseException:
            self._tmp.cleanup()
            raise

    def _call(self, command: dict[str, Any]) -> dict[str, Any]:
        return self.worker.call(command)

    def grow(self, count: int) -> None:
        while self.count < count:
            self._call({"op": "start", "id": f"bg{self.count}"})
            self.count += 1

    def measure(self) -> Sample:
        reply = self._call({"op": "measure"})
        return {"ms": float(reply["ms"]), "exit_ms": float(reply["exit_ms"])}

    def pids(self) -> list[int]:
        """The running containers' processes: the worker is their subreaper, so its children.

        (crun leaves no monitor process per container, unlike containerd's shims.)
        """
        from lightvm.bench.procfs import children_of

        return children_of(self.worker.pid, "busybox sleep")

    def close(self) -> None:
        self.worker.close(TIMEOUT + self.count)
        self._tmp.cleanup()


class CrunWorker:
    """The worker process (``unshare -m ... python -m lightvm.bench.crun WORK``) and its
    one-JSON-line-per-command protocol; every container it starts lives under WORK/state
    and is deleted when :meth:`close` ends its input."""

    def __init__(self, work: Path) -> None:
        self._proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", sys.executable, "-m", "lightvm.bench.crun", str(work)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(paths.PACKAGE.parent)},  # where this lightvm is imported from
        )
        self.pid = self._proc.pid
        try:
            self.call({"op": "hello"})
        except BaseException:
            self.close()
            raise

    def call(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps(command) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()  # the worker answers every command (or dies)
        if not line:
            self._proc.wait(TIMEOUT)
            raise LightVMError(f"crun worker exited with status {self._proc.returncode}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise LightVMError(f"crun baseline: {reply['error']}")
        return reply

    def close(self, timeout: float = TIMEOUT) -> None:
        with contextlib.suppress(OSError, ValueError):
            if self._proc.stdin:
                self._proc.stdin.close()  # EOF: the worker deletes every container, then exits
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(TIMEOUT)
        if self._proc.stdout:
            self._proc.stdout.close()


# ---------------------------------------------------------------------- the worker


class _Worker:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.root = work / "state"
        self.root.mkdir(exist_ok=True)
        self.started: list[str] = []
        self.seq = 0
        self.started_any = False

    def crun(self, *args: str) -> None:
        # stderr goes to a file, not a pipe: a detached container inherits it and would
        # hold a pipe open for its whole life.
        with tempfile.TemporaryFile() as err:
            proc = subprocess.run(
                ["crun", "--root", str(self.root), *args],
                stdout=subprocess.DEVNULL,
                stderr=err,
                stdin=subprocess.DEVNULL,
                timeout=TIMEOUT,
                check=False,
            )
            if proc.returncode != 0:
                err.seek(0)
                text = err.read().decode(errors="replace").strip()[-300:]
                raise LightVMError(f"crun {' '.join(args)}: {text}")

    def start(self, cid: str) -> dict[str, Any]:
        self.crun("run", "--detach", "--bundle", str(self.work / "sleep"), cid)
        self.started.append(cid)
        self.started_any = True
        return {"ok": True}

    def measure(self) -> dict[str, Any]:
        self.seq += 1
        cid = f"m{self.seq}"
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            ["crun", "--root", str(self.root), "run", "--bundle", str(self.work / "ready"), cid],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        byte = proc.stdout.read(1)
        ready = (time.perf_counter() - t0) * 1000
        try:
            _, err = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate(timeout=TIMEOUT)
        exited = (time.perf_counter() - t0) * 1000
        if byte != b"R" or proc.returncode != 0:
            with contextlib.suppress(LightVMError):
                self.crun("delete", "--force", cid)
            msg = err.decode(errors="replace").strip()[-300:]
            return {"error": f"crun run exited {proc.returncode} (first byte {byte!r}): {msg}"}
        return {"ms": ready, "exit_ms": exited}

    def serve(
        self, bundle: str, cid: str, port: int, send: str, expect: str, timeout: float = TIMEOUT
    ) -> dict[str, Any]:
        """``crun run --detach`` of a server's bundle, timed to its first good answer on
        127.0.0.1:``port`` (the container shares the host's network namespace). A container
        that does not answer within ``timeout`` s is deleted before the error is returned."""
        from lightvm.tcpprobe import wait_serving

        with open(Path(bundle) / f"{cid}.log", "ab") as log:  # the app's own output, for errors
            t0 = time.perf_counter()
            proc = subprocess.run(
                ["crun", "--root", str(self.root), "run", "--detach", "--bundle", bundle, cid],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, timeout=TIMEOUT, check=False,
            )  # fmt: skip
            crun_ms = (time.perf_counter() - t0) * 1000
        if proc.returncode != 0:
            with contextlib.suppress(LightVMError):
                self.crun("delete", "--force", cid)
            tail = (Path(bundle) / f"{cid}.log").read_bytes().decode(errors="replace").strip()[-300:]
            return {"error": f"crun run --detach exited {proc.returncode}: {tail}"}
        self.started.append(cid)
        self.started_any = True
        try:
            ms = wait_serving(port, send.encode(), expect.encode(), t0, timeout=timeout)
        except LightVMError as exc:
            with contextlib.suppress(LightVMError, subprocess.SubprocessError):
                self.kill(cid)
            tail = (Path(bundle) / f"{cid}.log").read_bytes().decode(errors="replace").strip()[-300:]
            return {"error": f"{exc}; the app said: {tail}"}
        state = subprocess.run(
            ["crun", "--root", str(self.root), "state", cid], capture_output=True, timeout=TIMEOUT, check=True
        )
        return {"ms": ms, "crun_ms": crun_ms, "pid": int(json.loads(state.stdout)["pid"])}

    def kill(self, cid: str) -> dict[str, Any]:
        """Kill and delete one container (``crun delete --force``)."""
        self.crun("delete", "--force", cid)
        if cid in self.started:
            self.started.remove(cid)
        return {"ok": True}

    def stop_all(self) -> None:
        for cid in self.started:
            with contextlib.suppress(LightVMError, subprocess.SubprocessError):
                self.crun("delete", "--force", cid)
        self.started.clear()


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def _worker_main(work: Path) -> int:
    # Detached containers outlive the crun that started them: make this worker their
    # subreaper, so their exit is reaped here and not left to the host's PID 1.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    if os.path.ismount(CGROUP_UNIFIED):
        subprocess.run(["umount", CGROUP_UNIFIED], capture_output=True, timeout=TIMEOUT, check=False)
    worker = _Worker(work)
    try:
        for line in sys.stdin:
            command = json.loads(line)
            op = command.get("op")
            try:
                if op == "hello":
                    reply: dict[str, Any] = {"ok": True}
                elif op == "start":
                    reply = worker.start(str(command["id"]))
                elif op == "measure":
                    reply = worker.measure()
                elif op == "serve":
                    args = (command["bundle"], command["id"], int(command["port"]), command["send"], command["expect"])
                    reply = worker.serve(*args, timeout=float(command.get("timeout", TIMEOUT)))
                elif op == "kill":
                    reply = worker.kill(str(command["id"]))
                else:
                    reply = {"error": f"unknown op {op!r}"}
            except (LightVMError, OSError, subprocess.SubprocessError) as exc:
                reply = {"error": str(exc)}
            _reap()
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
    finally:
        worker.stop_all()
        deadline = time.monotonic() + TIMEOUT
        while worker.started_any and time.monotonic() < deadline:
            try:
                if os.waitpid(-1, 0)[0] <= 0:
                    break
            except ChildProcessError:
                break
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(Path(sys.argv[1])))
