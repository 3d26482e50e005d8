"""Live migration through lightvmd on both "hosts" (the two-namespace set-up of
twohosts.py): the source's lightvmd keeps the SSH connection and a relay to the
destination's lightvmd, which receives with a prepared ``-incoming defer`` QEMU.

Faults on this path: the destination lightvmd killed mid-migration, the kept SSH
session killed, a wrong host key. Each must leave the VM running at the source and
nothing of it on the destination.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import qemu_pids_mentioning
from twohosts import DAYTIME, SSH_PORT, Host, TwoHosts, _children, _migrating, boot_daytime, run

from lightvm.util import wait_until

pytestmark = [pytest.mark.root, pytest.mark.functional]


def _daemon(h: Host) -> dict[str, Any]:
    out = h.lv.run("daemon", "status", "--json").out
    return dict(json.loads(out)) if out.strip() else {"running": False}


@pytest.fixture
def warm(hosts: TwoHosts) -> Iterator[TwoHosts]:
    """Both hosts with a lightvmd (stopped again before the hosts are torn down)."""
    try:
        for h in (hosts.a, hosts.b):
            h.lv.ok("daemon", "start", "--accel", "tcg")
        yield hosts
    finally:
        for h in (hosts.a, hosts.b):
            # One host's failed stop must not skip the other's; the hosts fixture kills (and
            # reports) a lightvmd still running after this.
            with contextlib.suppress(Exception):
                h.lv.run("daemon", "stop", timeout=90)


def _ssh_args(hs: TwoHosts, known_hosts: Path | None = None) -> list[str]:
    return hs.migrate_args("x", known_hosts=known_hosts)[2:]  # [USER@]HOST and the options


def _incoming_ready(h: Host) -> int:
    return sum(f["ready"] for f in _daemon(h).get("incoming") or [])


def _migrate_json(hs: TwoHosts, name: str, *extra: str) -> dict[str, Any]:
    result = hs.a.lv.ok(*hs.migrate_args(name, "--json", *extra))
    assert "via lightvmd" in result.err
    # Progress streamed from lightvmd: at least the line at the stream's end, with the downtime.
    assert re.search(r"migrate: completed: [0-9.]+ MiB sent; downtime [0-9.]+ ms", result.err), result.err
    return dict(json.loads(result.out))


def test_warm_migration_daytime(warm: TwoHosts) -> None:
    hs = warm
    out = hs.a.lv.ok("daemon", "connect", *_ssh_args(hs)).out
    assert "connected" in out and "lightvmd pid" in out, out
    port = boot_daytime(hs)
    before = wait_until(lambda: (g := hs.a.guest("daytime"))["app_counter"] >= 1 and g, timeout=10)
    assert before
    first = _migrate_json(hs, "daytime")
    # The destination had never seen this kind of VM: a QEMU was started for it.
    assert first["link"] == "kept" and first["receiver"] == "lightvmd-cold", first
    assert hs.a.lv.status() == {} and hs.b.lv.status() == {"daytime": "running"}
    assert wait_until(lambda: hs.b.daytime(port), timeout=20, interval=0.05)
    assert wait_until(lambda: hs.b.guest("daytime")["app_counter"] == before["app_counter"] + 1, timeout=10)
    assert hs.b.guest("daytime")["state"] == "READY"

    # Now lightvmd on B keeps a prepared shell of that kind: the next one is warm.
    assert wait_until(lambda: _incoming_ready(hs.b) >= 1, timeout=30)
    port2 = port + 1
    hs.a.lv.create(DAYTIME, "--name", "day2", "--publish", f"127.0.0.1:{port2}:13")
    assert wait_until(lambda: hs.a.daytime(port2), timeout=20, interval=0.05)
    before2 = wait_until(lambda: (g := hs.a.guest("day2"))["app_counter"] >= 1 and g, timeout=10)
    assert before2
    second = _migrate_json(hs, "day2")
    assert second["link"] == "kept" and second["receiver"] == "lightvmd-pool", second
    assert second["ssh_ms"] == 0.0 and second["bytes"] > 0
    assert hs.b.lv.status() == {"daytime": "running", "day2": "running"} and hs.a.lv.status() == {}
    # The shell was spawned without the VM's MAC and forward: both arrive at take time.
    assert wait_until(lambda: hs.b.daytime(port2), timeout=20, interval=0.05)
    # (the guest counts a request after its reply: poll)
    assert wait_until(lambda: hs.b.guest("day2")["app_counter"] == before2["app_counter"] + 1, timeout=10)
    # Direct TCP, too, when asked (a third VM: the pool refilled meanwhile).
    assert second["tunnel"]  # the default: encrypted inside the kept SSH connection
    assert wait_until(lambda: _incoming_ready(hs.b) >= 1, timeout=30)
    hs.a.lv.create(DAYTIME, "--name", "day3")
    third = _migrate_json(hs, "day3", "--direct")
    assert not third["tunnel"] and third["receiver"] == "lightvmd-pool"
    assert hs.b.lv.status()["day3"] == "running"
    status = hs.a.lv.ok("daemon", "status").out
    assert f"ssh root@{hs.b.addr}:{SSH_PORT}: connected" in status and "3 migration(s)" in status, status


def test_warm_wrong_host_key_refused(warm: TwoHosts, tmp_path: Path) -> None:
    hs = warm
    port = boot_daytime(hs)
    other = tmp_path / "other"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)])
    wrong = tmp_path / "wrong_known_hosts"
    parts = Path(f"{other}.pub").read_text().split()
    wrong.write_text(f"[{hs.b.addr}]:{SSH_PORT} {parts[0]} {parts[1]}\n")
    result = hs.a.lv.run(*hs.migrate_args("daytime", known_hosts=wrong))
    assert result.code == 1 and "host key mismatch" in result.err and "keeps running here" in result.err, result.err
    result = hs.a.lv.run("daemon", "connect", *_ssh_args(hs, known_hosts=wrong))
    assert result.code == 1 and "host key mismatch" in result.err, result.err
    assert hs.a.lv.status() == {"daytime": "running"} and hs.b.lv.vm_dirs() == []
    assert hs.a.daytime(port)


def _b_clean(hs: TwoHosts) -> bool:
    """Nothing of the VM on B: no VM folder, no QEMU but B's prepared shells."""
    shells = set()
    info = _daemon(hs.b)
    if info.get("running"):
        shells = {p for p in qemu_pids_mentioning(str(hs.b.lv.state_dir / "pool"))}
    vm_qemus = set(qemu_pids_mentioning(str(hs.b.lv.state_dir))) - shells
    provisional = [p for p in (hs.b.lv.state_dir / "pool").glob("*/vm.json") if '"name": "daytime"' in p.read_text()]
    return not hs.b.lv.vm_dirs() and not vm_qemus and not provisional


def _fail_warm(hs: TwoHosts, fault: Any, mode: str = "--direct") -> str:
    """Boot daytime on A, migrate it slowly through the daemons, inject ``fault`` once
    the stream flows: the command fails saying the VM keeps running at A, it does."""
    port = boot_daytime(hs)
    hs.a.lv.ok("daemon", "connect", *_ssh_args(hs))
    # Direct TCP by default, as in test_migrate.py's faults: a fault of the SSH connection
    # alone must not be confused with one of the stream.
    proc = hs.a.lv.popen(*hs.migrate_args("daytime", mode, "--bandwidth-mib", "0.05", "--timeout", "20"))
    try:
        assert wait_until(lambda: _migrating(hs), timeout=60), "the stream never started"
        fault()
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 1 and "keeps running here" in err, err
    assert hs.a.lv.status() == {"daytime": "running"}
    assert wait_until(lambda: hs.a.daytime(port), timeout=10, interval=0.05)
    return err


def test_warm_destination_daemon_killed(warm: TwoHosts) -> None:
    hs = warm

    def kill_b_daemon() -> None:
        os.kill(int(_daemon(hs.b)["pid"]), signal.SIGKILL)

    err = _fail_warm(hs, kill_b_daemon)
    assert "lightvmd there closed the connection" in err, err
    # The provisional VM lived in B's pool folder: `lightvm list` never showed it, and
    # the next lightvmd (a service manager restarts it) discards it with the shells.
    assert hs.b.lv.vm_dirs() == []
    hs.b.lv.ok("daemon", "start", "--accel", "tcg")
    assert wait_until(lambda: _b_clean(hs), timeout=30), (
        f"leftovers on B: {list((hs.b.lv.state_dir / 'pool').iterdir())}"
    )
    # The kept connection notices the dead relay and the next migration works.
    result = json.loads(hs.a.lv.ok(*hs.migrate_args("daytime", "--json")).out)
    assert result["link"] == "kept" and hs.b.lv.status() == {"daytime": "running"}


def test_warm_destination_qemu_killed(warm: TwoHosts) -> None:
    hs = warm

    def kill_destination_qemu() -> None:
        for pid in qemu_pids_mentioning(str(hs.b.lv.state_dir)):
            os.kill(pid, signal.SIGKILL)

    err = _fail_warm(hs, kill_destination_qemu)
    assert "the receiving QEMU exited" in err, err  # the destination's explanation reaches the user
    assert wait_until(lambda: _b_clean(hs), timeout=30), "leftovers on B"
    assert _daemon(hs.b)["running"]  # lightvmd on B lives on


def test_warm_ssh_session_killed(warm: TwoHosts) -> None:
    hs = warm

    def kill_ssh_sessions_on_b() -> None:
        assert hs.b.sshd is not None
        sessions = _children(hs.b.sshd.pid)
        assert sessions, "no sshd session on B"
        for pid in sessions:
            os.kill(pid, signal.SIGKILL)

    err = _fail_warm(hs, kill_ssh_sessions_on_b)
    # Which side notices first is a race; either way the user gets an explanation of the cause.
    assert re.search(r"destination: |the SSH session to \S+ is gone|stalled: nothing sent for|SSH failed", err), err
    assert wait_until(lambda: _b_clean(hs), timeout=30), "leftovers on B"
    # The daemon reconnects on the next migration.
    result = json.loads(hs.a.lv.ok(*hs.migrate_args("daytime", "--json")).out)
    assert result["link"] == "kept" and hs.b.lv.status() == {"daytime": "running"}


def test_warm_veth_cut(warm: TwoHosts) -> None:
    hs = warm
    err = _fail_warm(hs, lambda: run(["ip", "-n", hs.a.ns, "link", "set", hs.veth_a, "down"]))
    assert re.search(r"stalled: nothing sent for|destination: ", err), err
    run(["ip", "-n", hs.a.ns, "link", "set", hs.veth_a, "up"])
    assert wait_until(lambda: _b_clean(hs), timeout=30), "leftovers on B"


def test_warm_veth_cut_through_the_tunnel(warm: TwoHosts) -> None:
    """The cut with the stream inside the daemon's kept SSH connection (the default): the
    migration fails within seconds, and the next one connects again."""
    hs = warm
    err = _fail_warm(hs, lambda: run(["ip", "-n", hs.a.ns, "link", "set", hs.veth_a, "down"]), "--tunnel")
    assert re.search(r"stalled|destination: ", err), err
    run(["ip", "-n", hs.a.ns, "link", "set", hs.veth_a, "up"])
    assert wait_until(lambda: _b_clean(hs), timeout=30), "leftovers on B"
    result = json.loads(hs.a.lv.ok(*hs.migrate_args("daytime", "--json")).out)
    assert hs.b.lv.status() == {"daytime": "running"}, result


def test_warm_without_destination_daemon(hosts: TwoHosts) -> None:
    """Only the source runs lightvmd: its kept connection runs migrate-receive there."""
    hs = hosts
    hs.a.lv.ok("daemon", "start", "--accel", "tcg")
    try:
        port = boot_daytime(hs)
        out = hs.a.lv.ok("daemon", "connect", *_ssh_args(hs)).out
        assert "no lightvmd there" in out, out
        result = json.loads(hs.a.lv.ok(*hs.migrate_args("daytime", "--json")).out)
        assert result["link"] == "kept" and result["receiver"] == "migrate-receive", result
        assert hs.b.lv.status() == {"daytime": "running"}
        assert wait_until(lambda: hs.b.daytime(port), timeout=20, interval=0.05)
    finally:
        hs.a.lv.run("daemon", "stop", timeout=90)
