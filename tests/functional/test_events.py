"""lightvm events: what lightvmd saw happen, in order, from a follower started before the
VMs and from the backlog; a kill -9 of a VM's QEMU is reported as crashed with its exit
status (lightvm/daemon/events.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from daemonlib import NOOP, Lightvmd, wait_pool

from lightvm.errors import NotFoundError, SpecError
from lightvm.util import wait_until

pytestmark = pytest.mark.functional


def _kinds(events: list[dict], vm: str) -> list[str]:  # type: ignore[type-arg]
    return [e["event"] for e in events if e.get("vm") == vm]


def test_events_follow_created_ready_destroyed_and_a_crash(lightvmd: Lightvmd, images: Path, tmp_path: Path) -> None:
    lightvmd.start(pool=NOOP, size=1)
    wait_pool(lightvmd, 1)
    out = tmp_path / "events.jsonl"
    cli = [sys.executable, "-m", "lightvm.cli", "--state-dir", str(lightvmd.state_dir)]
    with open(out, "wb") as sink:
        follower = subprocess.Popen([*cli, "events", "--json"], env=lightvmd.env, stdout=sink, stderr=subprocess.PIPE)
    try:
        assert lightvmd.create("e1")["path"] == "pool"
        lightvmd.call("pause", {"name": "e1"})
        lightvmd.call("unpause", {"name": "e1"})
        lightvmd.call("destroy", {"names": ["e1"]})
        cold = lightvmd.create("e2", pool=False)
        os.kill(int(cold["pid"]), signal.SIGKILL)

        def seen() -> list[dict]:  # type: ignore[type-arg]
            return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]

        assert wait_until(lambda: "crashed" in _kinds(seen(), "e2"), timeout=20), seen()
        events = seen()
        assert _kinds(events, "e1") == ["created", "ready", "paused", "resumed", "destroyed"]
        assert _kinds(events, "e2") == ["created", "ready", "crashed"]
        crash = next(e for e in events if e["event"] == "crashed")
        assert (
            crash["signal"] == 9 and crash["status"] == "killed by signal 9 (SIGKILL)" and crash["pid"] == cold["pid"]
        )
        first = next(e for e in events if e["vm"] == "e1")
        assert first["path"] == "pool" and isinstance(first["time"], float)
        assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)

        # The same from the backlog, for one VM, as text.
        r = lightvmd.cli("events", "e1", "--no-follow")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert [line.split()[1] for line in lines] == ["created", "ready", "paused", "resumed", "destroyed"], lines
        assert all(line.split()[2] == "e1" for line in lines)
        lightvmd.call("destroy", {"names": ["e2"]})  # the crashed VM's folder
        assert lightvmd.stop() == 0
        assert follower.wait(timeout=20) == 0  # the daemon ended the stream
        assert b"lightvmd stopped" in follower.stderr.read()  # type: ignore[union-attr]
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait(10)
        if follower.stderr is not None:
            follower.stderr.close()


def test_events_without_a_daemon_says_so(lightvm: object) -> None:
    r = lightvm.run("events", "--no-follow")  # type: ignore[attr-defined]
    assert r.code == 1 and "lightvm events needs lightvmd" in r.err and "lightvm daemon start" in r.err


def test_a_one_shot_save_is_a_saved_event_before_destroyed(lightvmd: Lightvmd, tmp_path: Path) -> None:
    """save runs in the CLI's process; it tells lightvmd once the file is complete, so the
    log reads saved -> destroyed (and saved alone with --keep-running)."""
    lightvmd.start(pool=NOOP, size=1)
    wait_pool(lightvmd, 1)
    lightvmd.create("s1")
    lightvmd.create("s2")
    kept, gone = tmp_path / "s1.lvm", tmp_path / "s2.lvm"
    r = lightvmd.cli("save", "s1", str(kept), "--keep-running")
    assert r.returncode == 0, r.stderr
    r = lightvmd.cli("save", "s2", str(gone))
    assert r.returncode == 0, r.stderr

    def events() -> list[dict]:  # type: ignore[type-arg]
        return lightvmd.call("events", {"since": 0})  # type: ignore[no-any-return]

    assert wait_until(lambda: "destroyed" in _kinds(events(), "s2"), timeout=20), events()
    assert _kinds(events(), "s1") == ["created", "ready", "saved"]
    assert _kinds(events(), "s2") == ["created", "ready", "saved", "destroyed"]
    saved = next(e for e in events() if e["event"] == "saved" and e["vm"] == "s1")
    assert saved["file"] == str(kept) and saved["by"] == "another lightvm process"
    # Only what lightvmd cannot see, and only for a VM it has.
    with pytest.raises(SpecError, match="event must be one of saved"):
        lightvmd.call("note", {"event": "crashed", "vm": "s1", "file": "x"})
    with pytest.raises(NotFoundError, match="no VM 'nope' here"):
        lightvmd.call("note", {"event": "saved", "vm": "nope", "file": "x"})
    lightvmd.call("destroy", {"names": ["s1"]})
