"""The test harness shared by every test folder: a `lightvm` CLI runner bound to one
state dir (LightVM) and a QEMU process finder. A plain module, so that tests import it
by name (`from harness import LightVM`); conftest.py only holds the fixtures. (A test
that imports `conftest` gets whichever conftest.py pytest loaded under that name.)
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLI_TIMEOUT = 120.0


def qemu_pids_mentioning(text: str, live_only: bool = False) -> list[int]:
    """Processes whose command line starts with a QEMU binary and mentions ``text``.

    ``live_only`` leaves out zombies (dead, not yet reaped by their parent): the
    daemon tests use it, since lightvmd reaps its QEMU children asynchronously.
    """
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace")
            if live_only:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                        continue
        except (OSError, IndexError):
            continue
        if text in argv and "qemu" in argv.split("\0", 1)[0]:
            pids.append(int(entry.name))
    return pids


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class LightVM:
    """Runs the `lightvm` CLI (as a subprocess, like a user) against one state dir."""

    def __init__(self, state_dir: Path, cache_dir: Path) -> None:
        self.state_dir = state_dir
        self.env = dict(os.environ, LIGHTVM_CACHE_DIR=str(cache_dir), PYTHONDONTWRITEBYTECODE="1")
        self.env.pop("LIGHTVM_STATE_DIR", None)
        self.argv0 = [sys.executable, "-m", "lightvm.cli", "--state-dir", str(state_dir)]
        self.seen_ids: set[str] = set()

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*self.argv0, *args], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def run(self, *args: str, timeout: float = CLI_TIMEOUT) -> Result:
        proc = subprocess.run(
            [*self.argv0, *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        self.remember_ids()
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def ok(self, *args: str, timeout: float = CLI_TIMEOUT) -> Result:
        result = self.run(*args, timeout=timeout)
        assert result.code == 0, f"lightvm {' '.join(args)} failed ({result.code}): {result.err}{result.out}"
        return result

    def create(self, config: Path | str, *args: str) -> list[dict[str, Any]]:
        """`create --accel tcg --json`; returns one dict per VM."""
        result = self.ok("create", str(config), "--accel", "tcg", "--json", *args)
        return [json.loads(line) for line in result.out.splitlines() if line.strip()]

    def list(self) -> list[dict[str, Any]]:
        vms: list[dict[str, Any]] = self.ok("list", "--json").json()
        self.seen_ids.update(vm["id"] for vm in vms if vm.get("id"))
        return vms

    def status(self) -> dict[str, str]:
        return {vm["name"]: vm["status"] for vm in self.list()}

    def vm_dirs(self) -> list[Path]:
        root = self.state_dir / "vms"
        return sorted(root.iterdir()) if root.is_dir() else []

    def remember_ids(self) -> None:
        for folder in self.vm_dirs():
            with contextlib.suppress(OSError, ValueError, KeyError):
                self.seen_ids.add(json.loads((folder / "vm.json").read_text())["id"])

    def consoles(self) -> str:
        parts = []
        for folder in self.vm_dirs():
            for log in ("console.log", "qemu.log"):
                path = folder / log
                if path.exists():
                    parts.append(f"--- {folder.name}/{log}\n{path.read_text(errors='replace')[-2000:]}")
        return "\n".join(parts)

    def leftovers(self) -> list[str]:
        """Everything of this state dir that should not exist once all VMs are destroyed."""
        found = []
        for pid in qemu_pids_mentioning(str(self.state_dir)):
            found.append(f"QEMU process {pid}")
        for vm_id in sorted(self.seen_ids):
            shm = Path(f"/dev/shm/lightvm-{vm_id}")
            if shm.exists():
                found.append(f"NoXS file {shm}")
        found += [f"VM folder {p}" for p in self.vm_dirs()]
        if self.state_dir.exists():
            found += [f"socket {p}" for p in self.state_dir.rglob("*.sock")]
        return found
