"""Templates through lightvmd (lightvm/daemon/templates.py): a restore of a template folder
and a clone take prepared shells that map the template's RAM; the clones answer on their
own ports with their own identity, and a template refused by the daemon leaves nothing."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from daemonlib import Lightvmd
from netclient import free_port, read_daytime
from test_template import free_ports, guest_clock_error

from lightvm.util import wait_until

pytestmark = pytest.mark.functional

DAYTIME = Path(__file__).resolve().parents[2] / "examples" / "daytime.toml"


def _template(d: Lightvmd, tdir: Path) -> int:
    port = free_port()
    d.create("day", DAYTIME, publish=[f"127.0.0.1:{port}:13"])
    assert wait_until(lambda: read_daytime("127.0.0.1", port), timeout=20, interval=0.05)
    r = d.cli("template", "create", "day", str(tdir))
    assert r.returncode == 0, r.stderr
    assert d.cli("destroy", "day").returncode == 0
    return port


def _template_with_a_shell(d: Lightvmd, tdir: Path) -> int:
    """A daemon keeping one shell of a new daytime template ``tdir``, ready (its first,
    cold restore taught the daemon the template); the template's published port."""
    d.start("--incoming-size", "1", pool=None)
    port = _template(d, tdir)
    assert d.cli("restore", str(tdir)).returncode == 0  # cold: teaches the daemon the template
    assert d.cli("destroy", "day").returncode == 0
    assert wait_until(lambda: _ready(d) >= 1, timeout=60, interval=0.05)
    return port


def _ready(d: Lightvmd) -> int:
    return sum(f["ready"] for f in d.call("ping")["incoming"] if "template" in f["flavour"] and not f["preparing"])


def test_restore_and_clone_from_template_shells(lightvmd: Lightvmd, tmp_path: Path) -> None:
    lightvmd.start("--incoming-size", "3", pool=None)
    tdir = tmp_path / "tpl" / "day.lvt"
    port = _template(lightvmd, tdir)

    first = lightvmd.cli("restore", str(tdir), "--json")  # cold: teaches the daemon the template
    assert first.returncode == 0 and "via lightvmd" in first.stderr, first.stderr
    assert json.loads(first.stdout)["path"] == "cold"
    assert lightvmd.cli("destroy", "day").returncode == 0
    assert wait_until(lambda: _ready(lightvmd) >= 3, timeout=60, interval=0.05)
    again = lightvmd.cli("restore", str(tdir), "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["path"] == "pool", again.stderr
    reply = wait_until(lambda: read_daytime("127.0.0.1", port), timeout=10, interval=0.05)
    assert reply is not None and guest_clock_error(reply) <= 2.0

    assert wait_until(lambda: _ready(lightvmd) >= 3, timeout=60, interval=0.05)
    base = free_ports(3)
    r = lightvmd.cli("clone", str(tdir), "-n", "3", "--publish", f"127.0.0.1:{base}:13", "--json")
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    assert out["pool_hits"] == 3
    names = [c["name"] for c in out["clones"]]
    assert names == ["day-0", "day-1", "day-2"]
    uuids = {lightvmd.call("info", {"name": n})["uuid"] for n in [*names, "day"]}
    assert len(uuids) == 4 and len({c["mac"] for c in out["clones"]}) == 3
    for i in range(3):
        text = wait_until(lambda i=i: read_daytime("127.0.0.1", base + i), timeout=10, interval=0.05)
        assert text is not None and guest_clock_error(text) <= 2.0


def test_template_shells_hold_the_device_state_of_that_very_file(lightvmd: Lightvmd, tmp_path: Path) -> None:
    """A template's shells load its device state before any request; a shell that loaded
    another version of ``state.lvm`` (the file replaced since) is not used for it."""
    tdir = tmp_path / "tpl" / "day.lvt"
    port = _template_with_a_shell(lightvmd, tdir)
    (shells,) = [f for f in lightvmd.call("ping")["incoming"] if "template" in f["flavour"]]
    assert shells["loaded"] == shells["ready"] == 1
    status = lightvmd.cli("daemon", "status")
    assert status.returncode == 0 and "1 ready (1 with the template loaded)" in status.stdout, status.stdout

    copy = tmp_path / "state.copy"
    shutil.copy2(tdir / "state.lvm", copy)
    os.replace(copy, tdir / "state.lvm")  # the same bytes, another file: the shell's is not it
    r = lightvmd.cli("restore", str(tdir), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["path"] == "cold", r.stderr
    assert wait_until(lambda: read_daytime("127.0.0.1", port), timeout=10, interval=0.05)
    assert lightvmd.cli("destroy", "day").returncode == 0
    assert wait_until(lambda: _ready(lightvmd) >= 1, timeout=60, interval=0.05)
    r = lightvmd.cli("restore", str(tdir), "--json")  # the refilled shell loaded the new file
    assert r.returncode == 0 and json.loads(r.stdout)["path"] == "pool", r.stderr
    assert wait_until(lambda: read_daytime("127.0.0.1", port), timeout=10, interval=0.05)


def test_a_template_restore_whose_port_is_taken_fails_and_leaves_nothing(lightvmd: Lightvmd, tmp_path: Path) -> None:
    """The forwards go in while the guest wakes (PreparedRestore.resume): one that QEMU
    refuses still fails the restore, as a network error, and the taken shell is gone."""
    import socket

    tdir = tmp_path / "tpl" / "day.lvt"
    port = _template_with_a_shell(lightvmd, tdir)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # over the last VM's TIME_WAIT
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        r = lightvmd.cli("restore", str(tdir), "--json")
        assert r.returncode == 1, r.stdout
        error = json.loads(r.stdout)
        assert error["kind"] == "NetworkError" and "is the host port free" in error["error"], error
        assert lightvmd.call("list") == []
    assert wait_until(lambda: _ready(lightvmd) >= 1, timeout=60, interval=0.05)
    r = lightvmd.cli("restore", str(tdir), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["path"] == "pool", r.stderr
    assert wait_until(lambda: read_daytime("127.0.0.1", port), timeout=10, interval=0.05)


def _flip_ram_byte(tdir: Path) -> None:
    os.chmod(tdir / "ram", 0o600)
    with open(tdir / "ram", "r+b") as f:
        f.seek(4096)
        byte = f.read(1)
        f.seek(4096)
        f.write(bytes([byte[0] ^ 0x5A]))


def test_daemon_refuses_altered_template(lightvmd: Lightvmd, tmp_path: Path) -> None:
    lightvmd.start("--incoming-size", "1", pool=None)
    tdir = tmp_path / "tpl" / "day.lvt"
    _template(lightvmd, tdir)
    for _ in range(3):  # the daemon keeps the check of a template it has seen (templates.checked_layout)
        assert lightvmd.cli("restore", str(tdir)).returncode == 0
        assert lightvmd.cli("destroy", "day").returncode == 0
    _flip_ram_byte(tdir)  # in place, after the check was kept: it is made again
    r = lightvmd.cli("restore", str(tdir))
    assert r.returncode == 1 and "corrupted template RAM" in r.stderr, r.stderr
    r = lightvmd.cli("clone", str(tdir), "-n", "2")  # clones use the same kept check
    assert r.returncode == 1 and "corrupted template RAM" in r.stderr, r.stderr
    _flip_ram_byte(tdir)  # back as it was: accepted again
    r = lightvmd.cli("clone", str(tdir), "-n", "2", "--name", "ok-{i}")
    assert r.returncode == 0, r.stderr
    assert lightvmd.cli("destroy", "ok-0", "ok-1").returncode == 0
    assert lightvmd.cli("restore", str(tdir)).returncode == 0
    assert lightvmd.cli("destroy", "day").returncode == 0
    bad = tmp_path / "tpl" / "bad.lvt"
    shutil.copytree(tdir, bad)
    _flip_ram_byte(bad)
    r = lightvmd.cli("restore", str(bad))
    assert r.returncode == 1 and "corrupted template RAM" in r.stderr, r.stderr
    r = lightvmd.cli("clone", str(bad), "-n", "2")
    assert r.returncode == 1 and "corrupted template RAM" in r.stderr, r.stderr
    assert lightvmd.call("list") == []
