"""lightvm as an installed package (issue #14): build the sdist, the wheel from it, install the
wheel into a fresh venv, and run it with the source tree hidden.

What this proves: the wheel carries everything ``lightvm create`` needs (guests, examples,
firmware), ``--version`` and ``host check --json`` work, and no file under the checkout is
used. Two independent proofs of the last point:

- every command runs in a private mount namespace where the checkout (and the shared build
  caches its build folders link to) is covered by an empty tmpfs: a lookup that still went
  to the checkout would find nothing (root: that is why this test is in tests/root);
- every command runs under ``strace -f -e trace=%file`` and no path it names is under
  those folders (``-b execve`` lets QEMU go untraced once started, so create returns;
  the execve line still names the QEMU binary and, in its argv, the guest kernel).

The wheel is built from the sdist, so a file missing from MANIFEST.in fails here too.
pip needs PyPI (setuptools for the isolated build; pyroute2 and paramiko) or its cache.
Measured on the 2-core host shared with other sessions, pip's cache warm: 27 s at load 6.5
(24 s of it building and installing), 59-87 s at load 11-13 (sdist 3 s, wheel 26-30 s,
venv + install 15-20 s, the commands the rest).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.functional, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
PIP_TIMEOUT = 600
RUN_TIMEOUT = 120
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Mounts tmpfs over each folder given before "--" (in the private mount namespace unshare
# made), then execs the rest. A file, not "sh -c": no shell anywhere.
HIDER = """\
import os, subprocess, sys
split = sys.argv.index("--")
for folder in sys.argv[1:split]:
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0", "lightvm-hidden", folder], check=True, timeout=30)
os.execvp(sys.argv[split + 1], sys.argv[split + 1 :])
"""


def hidden_folders() -> list[Path]:
    """The checkout, and the real folders its build links point to (shared caches)."""
    folders = {REPO, REPO.resolve()}
    for rel in ("images/build", "noxs-virtio/build", "qemu/build", "tinyx/build", ".venv"):
        link = REPO / rel
        if link.exists():
            folders.add(link.resolve())
    # A folder inside another one is hidden with it (and mounting over it would fail once
    # its parent is covered).
    return sorted(f for f in folders if not any(o != f and o in f.parents for o in folders))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sdist from the checkout, then the wheel from the sdist (as ``python -m build`` does)."""
    out = tmp_path_factory.mktemp("dist")
    code = f"from setuptools import build_meta as b; print(b.build_sdist({str(out)!r}))"
    sdist = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=PIP_TIMEOUT, check=True
    ).stdout.split()[-1]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check", "-w", str(out),
         str(out / sdist)],
        cwd=out, timeout=PIP_TIMEOUT, check=True,
    )  # fmt: skip
    (built,) = out.glob("lightvm-*-py3-none-linux_x86_64.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (the system python3) with only the wheel and its dependencies."""
    root = tmp_path_factory.mktemp("venv")
    python3 = shutil.which("python3", path=CLEAN_PATH)
    assert python3 is not None
    subprocess.run([python3, "-m", "venv", str(root)], cwd=root, timeout=RUN_TIMEOUT, check=True)
    pip = [str(root / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(wheel)]
    subprocess.run(pip, cwd=root, env=clean_env(root), timeout=PIP_TIMEOUT, check=True)
    return root


def clean_env(home: Path) -> dict[str, str]:
    """No PYTHONPATH, no venv of the checkout on PATH, a private cache dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "LIGHTVM_"))}
    env.update(PATH=CLEAN_PATH, LIGHTVM_CACHE_DIR=str(home / "cache"))
    return env


class Runner:
    """Runs the installed ``lightvm`` with the checkout hidden and under strace."""

    def __init__(self, venv: Path, work: Path) -> None:
        self.venv, self.work = venv, work
        self.hider = work / "hide.py"
        self.hider.write_text(HIDER)
        self.python = shutil.which("python3", path=CLEAN_PATH) or "/usr/bin/python3"  # not the checkout's .venv
        self.state = work / "state"
        self.traces: list[Path] = []

    def hidden(self, *argv: str) -> list[str]:
        """``argv`` in a private mount namespace with the checkout covered."""
        hide = [self.python, str(self.hider), *map(str, hidden_folders()), "--"]
        return ["unshare", "--mount", "--propagation", "private", "--", *hide, *argv]

    def __call__(self, *args: str, check: bool = True, command: str = "lightvm-py") -> subprocess.CompletedProcess[str]:
        """``command ARGS``: by default ``lightvm-py``, the Python command, which the
        ``lightvm`` launcher execs when lightvmd does not run it: strace stops following a
        process at its first execve (``-b execve``), so a trace of the launcher would end there."""
        trace = self.work / f"strace-{len(self.traces)}.log"
        self.traces.append(trace)
        argv = self.hidden(
            "strace", "-f", "-qq", "-s", "4096", "-b", "execve", "-e", "trace=%file", "-o", str(trace),
            str(self.venv / "bin" / command), *args,
        )  # fmt: skip
        done = subprocess.run(
            argv, cwd=self.work, env=clean_env(self.work), capture_output=True, text=True, timeout=RUN_TIMEOUT
        )
        if check and done.returncode != 0:
            raise AssertionError(f"lightvm {' '.join(args)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}")
        return done

    def touched(self) -> set[str]:
        """Every absolute path the traced processes named."""
        found: set[str] = set()
        for trace in self.traces:
            found.update(re.findall(r'"(/[^"]*)"', trace.read_text(errors="replace")))
        return found


@pytest.fixture
def run(venv: Path, tmp_path: Path) -> Iterator[Runner]:
    runner = Runner(venv, tmp_path)
    try:
        yield runner
    finally:
        # Whatever happened, no VM of this state dir survives (the plain command: no strace).
        subprocess.run(
            [str(venv / "bin" / "lightvm"), "--state-dir", str(runner.state), "destroy", "--all"],
            cwd=tmp_path, env=clean_env(tmp_path), capture_output=True, timeout=RUN_TIMEOUT, check=False,
        )  # fmt: skip


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_installed_wheel_boots_daytime_without_the_checkout(run: Runner, venv: Path) -> None:
    site = next((venv / "lib").glob("python3*/site-packages"))
    # The control: in the namespace the commands run in, the checkout's files are not there.
    code = f"import os; print(os.path.exists({str(REPO / 'pyproject.toml')!r}))"
    seen = subprocess.run(run.hidden(str(venv / "bin" / "python"), "-c", code), capture_output=True, text=True,
                          cwd=run.work, timeout=RUN_TIMEOUT, check=True)  # fmt: skip
    assert seen.stdout.strip() == "False"
    assert (site / "lightvm" / "_data" / "images" / "build" / "daytime.elf").is_file()
    assert (site / "lightvm" / "_data" / "qemu" / "build.sh").is_file()  # for lightvm setup qemu
    assert (site / "lightvm" / "py.typed").is_file()  # PEP 561: the Python API's types (docs/api.md)

    version = run("--version")
    assert re.fullmatch(r"lightvm \d+\.\d+\.\d+\S*\n", version.stdout), version.stdout

    report = json.loads(run("host", "check", "--json").stdout)
    assert report["paths"]["layout"] == "installed"
    assert report["paths"]["data_root"] == str(site / "lightvm" / "_data")
    assert report["can_boot"] is True
    rows = {c["name"]: c for c in report["checks"]}
    assert rows["guests"]["status"] == "ok" and "daytime.elf" in rows["guests"]["detail"]
    assert report["accel"]["accel"] in ("kvm", "tcg") and report["accel"]["reason"]

    port = free_port()
    state = str(run.state)
    created = run("--state-dir", state, "create", "daytime", "--name", "dt", "--publish", f"127.0.0.1:{port}:13")
    assert "dt: daytime READY" in created.stdout, created.stdout + created.stderr
    # No slim QEMU in the fresh cache dir: create says once which binary runs and why; and
    # why the accelerator is tcg when auto chose it.
    assert "lightvm: qemu: Debian's full build" in created.stderr, created.stderr
    if report["accel"]["accel"] == "tcg":
        assert f"accel: tcg ({report['accel']['reason']})" in created.stderr, created.stderr
    answer = subprocess.run(
        ["nc", "-d", "-w", "5", "127.0.0.1", str(port)], capture_output=True, text=True, timeout=30, check=False
    )
    assert re.search(r"\d\d:\d\d:\d\d", answer.stdout), (answer.returncode, answer.stdout, answer.stderr)
    listed = json.loads(run("--state-dir", state, "list", "--json").stdout)
    assert [(vm["name"], vm["status"]) for vm in listed] == [("dt", "running")]
    run("--state-dir", state, "destroy", "dt")
    assert json.loads(run("--state-dir", state, "list", "--json").stdout) == []

    touched = run.touched()
    qemu_execs = [p for p in touched if p.endswith("qemu-system-x86_64")]
    assert qemu_execs, "strace saw no QEMU started: the trace does not cover create"
    assert any(p.startswith(str(site / "lightvm" / "_data")) for p in touched), "the kernel was not the packaged one"
    forbidden = [str(f) for f in hidden_folders()]
    used = sorted(p for p in touched if any(p == f or p.startswith(f + "/") for f in forbidden))
    assert used == [], f"paths under the checkout were used: {used[:20]}"


def test_installed_launcher_hands_vm_commands_to_lightvmds_warm_server(run: Runner, venv: Path) -> None:
    """The installed ``lightvm`` is the compiled launcher and ``lightvm-py`` the Python
    command pip wrote the interpreter into; with lightvmd running, ``list`` runs in its warm
    CLI server (no ``lightvm-py`` started), and ``--version`` in ``lightvm-py``."""
    command, script = venv / "bin" / "lightvm", venv / "bin" / "lightvm-py"
    assert command.read_bytes()[:4] == b"\x7fELF"
    assert script.read_text().splitlines()[0].startswith(f"#!{venv / 'bin' / 'python'}")  # python or python3
    state = str(run.state)

    def started_python_command(*args: str) -> bool:
        run(*args, command="lightvm")
        return f'execve("{script}"' in run.traces[-1].read_text()  # (the launcher reads its first line)

    run("--state-dir", state, "daemon", "start")
    try:
        assert (run.state / "cli.sock").exists()
        assert not started_python_command("--state-dir", state, "list"), "list did not run in the warm server"
        assert json.loads(run("--state-dir", state, "list", "--json", command="lightvm").stdout) == []
        assert started_python_command("--version")
    finally:
        run("--state-dir", state, "daemon", "stop", check=False)
    assert not (run.state / "cli.sock").exists()
