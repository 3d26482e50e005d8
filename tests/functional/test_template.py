"""Templates and clones through the CLI: a VM started from a template answers, clones share
no identity and keep a right clock, a damaged or foreign template is refused before any
QEMU starts, and deleting a template does not harm the VMs started from it."""

from __future__ import annotations

import calendar
import json
import os
import shutil
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from netclient import free_port, read_daytime

from lightvm.util import wait_until

pytestmark = pytest.mark.functional

DAYTIME = Path(__file__).resolve().parents[2] / "examples" / "daytime.toml"


def daytime_vm(lightvm: Any) -> int:
    port = free_port()
    lightvm.create(DAYTIME, "--publish", f"127.0.0.1:{port}:13")
    assert wait_until(lambda: read_daytime("127.0.0.1", port), timeout=20, interval=0.05)
    return port


def guest_clock_error(reply: str) -> float:
    """Seconds between the guest's daytime answer ("Friday, December 4, 2026 04:58:57-UTC")
    and the host's clock when it arrived."""
    now = time.time()
    _, rest = reply.strip().split(", ", 1)
    stamp = time.strptime(rest.removesuffix("-UTC"), "%B %d, %Y %H:%M:%S")
    return abs(now - calendar.timegm(stamp))


def free_ports(count: int) -> int:
    """A first port P with P .. P+count-1 free on 127.0.0.1 (checked one by one)."""
    import socket

    for _ in range(50):
        first = free_port()
        if first + count > 65535:
            continue
        ok = True
        for p in range(first, first + count):
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return first
    raise AssertionError("no run of free ports")


def test_template_restore_and_clones_have_own_identity(lightvm: Any, tmp_path: Path) -> None:
    port = daytime_vm(lightvm)
    tdir = tmp_path / "tpl" / "daytime.lvt"
    made = json.loads(lightvm.ok("template", "create", "daytime", str(tdir), "--json").out)
    assert made["ram_bytes"] == 4 << 20 and made["state_bytes"] < 256 << 10
    assert stat.S_IMODE((tdir / "ram").stat().st_mode) == 0o400  # never rewritten in place
    assert [p.name for p in tdir.parent.iterdir()] == ["daytime.lvt"]  # no partial folder left
    assert lightvm.status() == {"daytime": "running"}  # the source kept running

    first = free_ports(4)
    clones = json.loads(
        lightvm.ok("clone", str(tdir), "-n", "3", "--name", "c-{i}", "--publish", f"127.0.0.1:{first}:13", "--json").out
    )
    names = [c["name"] for c in clones["clones"]]
    assert names == ["c-0", "c-1", "c-2"]
    assert len({c["mac"] for c in clones["clones"]}) == 3
    infos = [json.loads(lightvm.ok("info", n, "--json").out) for n in names]
    uuids = {i["uuid"] for i in infos} | {json.loads(lightvm.ok("info", "daytime", "--json").out)["uuid"]}
    assert len(uuids) == 4  # each clone a NoXS identity of its own, none the source's
    for info in infos:
        assert info["status"] == "running" and info["guest"]["state"] == "READY"
    for i in range(3):
        reply = wait_until(lambda i=i: read_daytime("127.0.0.1", first + i), timeout=10, interval=0.05)
        assert reply is not None
        assert guest_clock_error(reply) <= 2.0, reply  # re-based on the page's host_time_ns

    # restore DIR: the template's own forwards, taken by the source until it goes.
    lightvm.ok("destroy", "daytime")
    restored = json.loads(lightvm.ok("restore", str(tdir), "--name", "one", "--json").out)
    assert restored["name"] == "one" and not restored["paused"]
    reply = wait_until(lambda: read_daytime("127.0.0.1", port), timeout=10, interval=0.05)
    assert reply is not None and guest_clock_error(reply) <= 2.0


def test_damaged_or_foreign_template_refused_before_any_vm(lightvm: Any, tmp_path: Path) -> None:
    daytime_vm(lightvm)
    good = tmp_path / "tpl" / "good"
    lightvm.ok("template", "create", "daytime", str(good))
    lightvm.ok("destroy", "daytime")

    def variant(name: str) -> Path:
        copy = good.parent / name
        shutil.copytree(good, copy)
        for f in copy.iterdir():
            os.chmod(f, 0o600)
        return copy

    def refused(tdir: Path, words: str, env: dict[str, str] | None = None) -> None:
        before = set(lightvm.qemu_pids())
        res = lightvm.run("restore", str(tdir), "--name", "x") if env is None else _run_env(lightvm, env, tdir)
        assert res.code == 1 and words in res.err, res.err
        assert res.err.count("\n") == 1  # one line
        assert lightvm.status() == {} and lightvm.vm_dirs() == []
        assert set(lightvm.qemu_pids()) <= before  # no QEMU was started for it

    cut = variant("cut")
    with open(cut / "ram", "r+b") as f:
        f.truncate((4 << 20) - 4096)
    refused(cut, "truncated or extended template RAM")

    flipped = variant("flipped")
    with open(flipped / "ram", "r+b") as f:
        f.seek(1 << 20)
        byte = f.read(1)
        f.seek(1 << 20)
        f.write(bytes([byte[0] ^ 0xFF]))
    refused(flipped, "corrupted template RAM")

    state = variant("state")
    data = bytearray((state / "state.lvm").read_bytes())
    data[len(data) // 2] ^= 0x01
    (state / "state.lvm").write_bytes(bytes(data))
    refused(state, "corrupted")

    short = variant("short")
    data = (short / "state.lvm").read_bytes()
    (short / "state.lvm").write_bytes(data[:-1])
    refused(short, "truncated")

    other = shutil.which("qemu-system-x86_64")
    assert other is not None, "Debian's qemu-system-x86_64 is needed as the 'other QEMU'"
    refused(good, "another QEMU", {"LIGHTVM_QEMU": other})

    # The good one still works after all that.
    lightvm.ok("restore", str(good), "--name", "fine")
    assert lightvm.status() == {"fine": "running"}


def _run_env(lightvm: Any, env: dict[str, str], tdir: Path) -> Any:
    saved = dict(lightvm.env)
    lightvm.env.update(env)
    try:
        return lightvm.run("restore", str(tdir), "--name", "x")
    finally:
        lightvm.env = saved


def test_deleting_template_does_not_harm_clones(lightvm: Any, tmp_path: Path) -> None:
    daytime_vm(lightvm)
    tdir = tmp_path / "tpl" / "t"
    lightvm.ok("template", "create", "daytime", str(tdir))
    lightvm.ok("destroy", "daytime")
    first = free_ports(2)
    lightvm.ok("clone", str(tdir), "-n", "2", "--publish", f"127.0.0.1:{first}:13")
    shutil.rmtree(tdir)
    with open("/proc/sys/vm/drop_caches", "w") as f:  # clean page-cache pages go; mapped ones stay
        f.write("3\n")
    for i in range(2):
        reply = wait_until(lambda i=i: read_daytime("127.0.0.1", first + i), timeout=10, interval=0.05)
        assert reply is not None and guest_clock_error(reply) <= 2.0
    # A clone made from a running VM uses a temporary template, deleted once they run.
    daytime_vm(lightvm)
    lightvm.ok("clone", "daytime", "-n", "2", "--name", "k{i}")
    assert not list((lightvm.state_dir / "templates").iterdir())
    assert {k: v for k, v in lightvm.status().items() if k.startswith("k")} == {"k0": "running", "k1": "running"}


def test_a_saved_clone_restores_without_its_template(lightvm: Any, tmp_path: Path) -> None:
    """A clone's QEMU loaded its stream with ``x-ignore-shared``, and QEMU keeps a capability
    set: its saves used to leave out the NoXS region and be marked "ignore-shared", and
    every restore of them failed ("Invalid argument"). A save now clears it: the file holds
    all of the clone's memory and restores with the template gone."""
    daytime_vm(lightvm)
    tdir = tmp_path / "tpl" / "t"
    lightvm.ok("template", "create", "daytime", str(tdir))
    lightvm.ok("destroy", "daytime")
    port = free_port()
    lightvm.ok("clone", str(tdir), "--name", "c", "--publish", f"127.0.0.1:{port}:13")
    assert wait_until(lambda: read_daytime("127.0.0.1", port), timeout=10, interval=0.05)
    saved = tmp_path / "c.lvm"
    lightvm.ok("save", "c", str(saved))
    shutil.rmtree(tdir)
    restored = json.loads(lightvm.ok("restore", str(saved), "--json").out)
    assert restored["name"] == "c" and not restored["paused"]
    reply = wait_until(lambda: read_daytime("127.0.0.1", port), timeout=10, interval=0.05)
    assert reply is not None and guest_clock_error(reply) <= 2.0


def test_killed_template_build_leaves_nothing_the_next_build_keeps(lightvm: Any, tmp_path: Path) -> None:
    import signal
    import subprocess

    daytime_vm(lightvm)
    ckpt = tmp_path / "d.lvm"
    lightvm.ok("save", "daytime", str(ckpt))
    out = tmp_path / "tpl"
    out.mkdir()
    killed = False
    for attempt in range(5):  # the build takes ~0.1-0.3 s: kill it while its partial folder exists
        proc = lightvm.popen("template", "create", str(ckpt), str(out / f"t{attempt}"))
        try:
            seen = wait_until(lambda: any(p.name.startswith(".") for p in out.iterdir()), timeout=10, interval=0.002)
            if seen and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                killed = True
        finally:
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate(timeout=10)
        if killed:
            break
    assert killed, "the build always finished before it could be killed"
    assert [p for p in out.iterdir() if p.name.startswith(".")]  # its partial folder is left ...
    lightvm.ok("template", "create", str(ckpt), str(out / "next"))
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # ... and the next build removes it
    lightvm.ok("destroy", "--all")  # the killed build's VM (its builder QEMU) goes like any VM's
    assert lightvm.status() == {}
    lightvm.ok("restore", str(out / "next"), "--name", "ok")
