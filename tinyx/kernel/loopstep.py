"""One step of the kernel trimming loop: configure, build incrementally, pack, boot, probe.

Cheap steps are the point. The loop keeps one object tree per app
(tinyx/build/kloop-APP/obj); a step writes the fragment, runs tinyconfig + olddefconfig
(tinyx.kernel.build.make_build, the same recipe as an ordinary build) and ``make vmlinux``
there, and Kbuild's fixdep recompiles only what depends on the options that changed
(a few files and the link, instead of the whole tree).

Every step is cached by content hash (source version, fragment, build.py, this file, the
initramfs, the probe and the VM's shape) as tinyx/build/kstep-<key>/result.json, written
last and by rename. What is cached is what the step found: a pass, a Kconfig refusal, a
boot or probe failure (seen twice: a boot under load is retried once before it counts).
A failed build (make's error, a timeout) is not cached, so the next run tries again; an
interrupted step writes nothing. make is killed with SIGKILL on Ctrl-C or a timeout
(tinyx.kernel.build), which can leave a truncated object file: a marker written before
make and removed after it says so, and the next step first deletes every object newer
than the marker, which Kbuild then rebuilds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from lightvm.errors import TinyxError
from lightvm.tcpprobe import free_port
from tinyx.image import kpack
from tinyx.image.recipe import Recipe
from tinyx.kernel import build as kb
from tinyx.kernel.loop import StepResult

STEP_FORMAT = "2"  # 2: the console check
BOOT_TIMEOUT = 60.0  # create -> READY under a loaded TCG machine
PROBE_TIMEOUT = 10.0
CLI_TIMEOUT = 120.0
MARKER = ".lvloop-building"
CONSOLE_MARK = "lvinit: READY"
CONSOLE_WAIT = 5.0
OBJ_SUFFIXES = (".o", ".a", ".cmd", ".tmp", ".S")


def _log(msg: str) -> None:
    print(f"[tinyx-loop] {msg}", file=sys.stderr, flush=True)


def recover_obj(obj: Path) -> int:
    """After a killed make: delete the objects written since it started (any may be
    truncated); Kbuild rebuilds them. Returns how many were deleted."""
    marker = obj / MARKER
    if not marker.exists():
        return 0
    since = marker.stat().st_mtime - 1.0
    gone = 0
    for dirpath, _dirs, files in os.walk(obj):
        for name in files:
            p = Path(dirpath) / name
            if name.startswith("vmlinux") or name.endswith(OBJ_SUFFIXES) or name.startswith(".tmp_"):
                with contextlib.suppress(OSError):
                    if p.stat().st_mtime >= since:
                        p.unlink()
                        gone += 1
    marker.unlink()
    return gone


class Stepper:
    """The real step for one app: ``Stepper(...)(fragment) -> StepResult``."""

    def __init__(self, recipe: Recipe, initramfs: Path, jobs: int = 2, workdir: Path | None = None) -> None:
        if recipe.port <= 0 or recipe.probe is None:
            raise TinyxError(f"{recipe.name}: the loop needs a recipe with a port and a [probe] (send, expect)")
        self.recipe = recipe
        self.initramfs = initramfs
        self.jobs = jobs
        self.version = kb.source_version()
        self.tree = kb.unpack(self.version, time.monotonic())
        self.work = workdir or kb.BUILD / f"kloop-{recipe.name}"
        self.obj = self.work / "obj"
        self.obj.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256(initramfs.read_bytes())
        self.initramfs_sha = h.hexdigest()
        self.steps = 0

    def key(self, fragment: str) -> str:
        h = hashlib.sha256()
        probe = self.recipe.probe
        assert probe is not None
        parts = [
            STEP_FORMAT,
            self.version,
            fragment,
            Path(kb.__file__).read_text(),
            Path(__file__).read_text(),
            self.initramfs_sha,
            json.dumps([self.recipe.port, probe.send, probe.expect, self.recipe.memory]),
        ]
        for part in parts:
            b = part.encode()
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
        return h.hexdigest()[:16]

    def __call__(self, fragment: str) -> StepResult:
        key = self.key(fragment)
        entry = kb.BUILD / f"kstep-{key}"
        cached = entry / "result.json"
        if cached.is_file():
            data = json.loads(cached.read_text())
            data["cached"] = True
            return StepResult(**data)
        start = time.monotonic()
        result = self._run(fragment, entry)
        result.step_seconds = round(time.monotonic() - start, 1)
        if result.stage != "build":  # a failed build may be the machine's fault: try again next run
            tmp = entry.with_name(entry.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                tmp.mkdir(parents=True)
                (tmp / "result.json").write_text(json.dumps(asdict(result), indent=1) + "\n")
                (tmp / "fragment.config").write_text(fragment)
                if result.ok:
                    shutil.copy2(self.obj / "vmlinux", tmp / "vmlinux")
                    shutil.copy2(self.obj / ".config", tmp / "config")
                shutil.rmtree(entry, ignore_errors=True)
                os.rename(tmp, entry)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return result

    def _run(self, fragment: str, entry: Path) -> StepResult:
        gone = recover_obj(self.obj)
        if gone:
            _log(f"an earlier build was killed: removed {gone} objects it may have truncated")
        frag = self.work / "fragment.config"
        frag.write_text(fragment)
        marker = self.obj / MARKER
        t0 = time.monotonic()
        marker.touch()
        try:
            kb.make_build(self.tree, self.obj, frag, self.jobs, t0)
        except kb.BuildError as e:
            msg = str(e)
            config = kb.read_config(self.obj / ".config") if (self.obj / ".config").is_file() else {}
            marker.unlink(missing_ok=True)  # make ended by itself (error or kconfig): its outputs are whole
            stage = "kconfig" if "olddefconfig dropped" in msg else "build"
            return StepResult(False, stage, msg[-1500:], config, build_seconds=round(time.monotonic() - t0, 1))
        marker.unlink()
        build_s = round(time.monotonic() - t0, 1)
        config = kb.read_config(self.obj / ".config")
        vmlinux = self.obj / "vmlinux"
        if not kb.has_pvh_note(vmlinux):
            return StepResult(False, "build", "no PVH entry note", config, build_seconds=build_s)
        packdir = self.work / "kpack"
        packdir.mkdir(exist_ok=True)
        packed, sizes, _ = kpack.packed_kernel(vmlinux, packdir)
        base = StepResult(
            False,
            "boot",
            config=config,
            vmlinux_bytes=sizes["vmlinux_bytes"],
            kernel_bytes=sizes["file_bytes"],
            build_seconds=build_s,
        )
        _log(f"built in {build_s:.0f} s: {sizes['file_bytes'] / 1e6:.3f} MB packed; booting")
        for attempt in (1, 2):
            stage, detail, ready = self.boot_and_probe(packed)
            base.stage, base.detail, base.boot_ms = stage, detail, ready
            if stage == "pass":
                base.ok = True
                break
            _log(f"boot {attempt} failed at {stage}: {detail.splitlines()[-1][:200] if detail else ''}")
        for old in packdir.iterdir():  # keep the folder small: one packed kernel at a time
            if old.resolve() != packed.parent.resolve():
                shutil.rmtree(old, ignore_errors=True)
        return base

    def boot_and_probe(self, kernel: Path) -> tuple[str, str, float]:
        """(stage, detail, READY ms): ``lightvm create`` the image with ``kernel``, the probe
        over a published port, lvinit's READY line on the console (``lightvm console`` must
        show user space's output), then ``lightvm shutdown`` (lvinit's clean poweroff must
        work too); the VM and its state folder are removed on every path."""
        r = self.recipe
        assert r.probe is not None
        try:
            with booted_image(kernel, self.initramfs, r, BOOT_TIMEOUT, "lvloop") as (cli, p, port):
                if p.returncode != 0:
                    return "boot", (p.stderr or p.stdout)[-1500:], 0.0
                vm = json.loads(p.stdout.strip().splitlines()[-1])
                ready = float(vm.get("boot_ms", {}).get("ready", 0.0))
                reply = probe(port, r.probe.send.encode(), r.probe.expect.encode())
                if r.probe.expect.encode() not in reply:
                    return "probe", f"sent {r.probe.send!r}, got {reply[:200]!r}", ready
                text = ready_console(cli, "lvloop")
                if not console_ok(text):
                    return "console", f"no {CONSOLE_MARK!r} line on the console: {text[-300:]!r}", ready
                s = subprocess.run([*cli, "shutdown", "lvloop"], capture_output=True, text=True, timeout=CLI_TIMEOUT)
                if s.returncode != 0:
                    return "shutdown", (s.stderr or s.stdout)[-800:], ready
                return "pass", "", ready
        except subprocess.TimeoutExpired as e:
            return "boot", f"{e.cmd[4:6]} timed out", 0.0


@contextlib.contextmanager
def booted_image(
    kernel: Path, initramfs: Path, recipe: Recipe, timeout: float, name: str, cmdline: str = "", firmware: str = ""
) -> Iterator[tuple[list[str], subprocess.CompletedProcess[str], int]]:
    """``lightvm create`` of an image (``kernel`` + ``initramfs``, the recipe's memory, one
    user-net vif with the recipe's port published on 127.0.0.1) in a state dir of its own:
    yields (the CLI's argv prefix for that state dir, the create's result, the host port);
    every VM of it destroyed and the folder removed after. The loop's steps and
    tinyx.kernel.bootcmp boot the same way."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp:
        spec = Path(tmp) / "vm.toml"
        spec.write_text(
            f'name = "{name}"\nkernel = "{kernel}"\ninitrd = "{initramfs}"\nmemory = "{recipe.memory}M"\n'
            + (f"cmdline = {json.dumps(cmdline)}\n" if cmdline else "")
            + (f"firmware = {json.dumps(str(Path(firmware).absolute()))}\n" if firmware else "")
            + "[[vifs]]\n"
        )
        cli = [sys.executable, "-m", "lightvm.cli", "--state-dir", str(Path(tmp) / "state")]
        try:
            p = subprocess.run(
                [*cli, "create", str(spec), "--json", "--accel", "tcg", "--timeout", str(int(timeout)),
                 "--publish", f"127.0.0.1:{port}:{recipe.port}"],
                capture_output=True, text=True, timeout=timeout + 30,
            )  # fmt: skip
            yield cli, p, port
        finally:
            subprocess.run([*cli, "destroy", "--all"], capture_output=True, timeout=CLI_TIMEOUT)


def console_ok(text: str) -> bool:
    """Whether user space's output reached the serial console: lvinit's READY line. The
    kernel's own lines are no proof: printk writes the UART by polling, user space through
    the tty layer, which needs the UART's interrupt (SERIAL_8250_PNP=n boots, serves and
    answers the probe, and its console shows nothing after the kernel's lines)."""
    return CONSOLE_MARK in text


def ready_console(cli: list[str], name: str, timeout: float = CONSOLE_WAIT) -> str:
    """VM ``name``'s console once it holds lvinit's READY line, or as it is after ``timeout``
    s. lvinit writes its READY lines at its first quiet moment after READY (~15 ms later:
    every console byte is an I/O exit, kept off a first client's way), and a boot's own lines
    come before the page: the line is awaited, not expected at once."""
    deadline = time.monotonic() + timeout
    while True:
        text = subprocess.run([*cli, "console", name], capture_output=True, text=True, timeout=CLI_TIMEOUT).stdout
        if console_ok(text) or time.monotonic() >= deadline:
            return text
        time.sleep(0.2)  # a poll of another process's output


def probe(port: int, send: bytes, expect: bytes, timeout: float = PROBE_TIMEOUT) -> bytes:
    """Connect (retrying while the published port is not yet accepting), send, read until
    ``expect`` is in the reply, the peer closes, or ``timeout``."""
    deadline = time.monotonic() + timeout
    last = b""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2.0) as s:
                s.settimeout(2.0)
                s.sendall(send)
                buf = b""
                while expect not in buf and time.monotonic() < deadline:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
                if expect in buf:
                    return buf
                last = buf
        except OSError as e:
            last = f"<{e}>".encode()
        time.sleep(0.2)
    return last
