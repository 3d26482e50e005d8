"""``lightvm image build``: redis-server end to end, from whatever cache tinyx/build holds.

The first run on a fresh machine debootstraps the base tree and builds the platform
kernel (minutes: the long timeout); then the test checks the image folder, the report,
what the initramfs holds, that a second build is a cache hit well under 10 s with the
same bytes, and that no mount or temporary folder is left. A host ELF file (/bin/ls)
builds without apt. Needs root (debootstrap, chroot, overlayfs) and deb.debian.org.
Booting the image is the toolstack's part (it needs the spec's ``initrd``).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import pytest

from tinyx.image import appconf, cache, mounts
from tinyx.image.pack import archive_bytes
from tinyx.image.proc import Progress
from tinyx.kernel.build import BUILD

REPO = Path(__file__).resolve().parents[2]
WARM_LIMIT = 10.0

pytestmark = pytest.mark.functional


def lightvm_image(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``lightvm image ARGS``; past ``timeout`` it gets SIGTERM (it unwinds: mounts
    undone, partial outputs removed) before a SIGKILL, and the test fails."""
    argv = [sys.executable, "-m", "lightvm.cli.main", "image", *args]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                out, err = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            pytest.fail(f"lightvm image {' '.join(args)}: still running after {timeout:.0f}s: {err[-2000:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def clean_build_cache() -> None:
    """What a killed build may leave (mounts, .tmp folders), removed under the cache lock
    as the next build would; the cache entries themselves stay (they are shared)."""
    with cache.locked(BUILD, Progress(quiet=True)):
        cache.clean_stale(BUILD, Progress(quiet=True))


def read_newc(data: bytes) -> dict[str, tuple[int, bytes, tuple[int, int]]]:
    """name -> (mode, data, (rdev major, minor)) of a newc archive (the kernel's format)."""
    out: dict[str, tuple[int, bytes, tuple[int, int]]] = {}
    pos = 0
    while True:
        head = data[pos : pos + 110]
        assert head[:6] == b"070701", f"bad header at {pos}"
        f = [int(head[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        mode, size, rmaj, rmin, namesize = f[1], f[6], f[9], f[10], f[11]
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, data[pos : pos + size], (rmaj, rmin))
        pos += size
        pos += -pos % 4


def resolve(members: dict[str, tuple[int, bytes, tuple[int, int]]], path: str) -> str:
    """``path`` inside the archive with its symlinks followed (as the guest will)."""
    parts = [p for p in path.split("/") if p]
    cur: list[str] = []
    for _ in range(40):
        if not parts:
            return "/".join(cur)
        name = parts.pop(0)
        here = "/".join([*cur, name])
        mode, body, _rdev = members.get(here, (0, b"", (0, 0)))
        if stat.S_ISLNK(mode):
            target = body.decode()
            cur = [] if target.startswith("/") else cur
            parts = [p for p in target.split("/") if p] + parts
        else:
            cur.append(name)
    raise AssertionError(f"link loop at {path}")


def no_leftovers(out: Path) -> None:
    assert mounts.mounted_under(BUILD) == [], "a mount under tinyx/build was left behind"
    assert not list(BUILD.glob("assemble-*.tmp")) and not list(BUILD.glob("app-*.tmp"))
    assert not out.with_name(out.name + ".tmp").exists()


@pytest.mark.timeout(1500)
def test_build_redis_server_then_rebuild_from_the_cache(tmp_path: Path) -> None:
    out = tmp_path / "redis"
    try:
        first = lightvm_image("build", "redis-server", "-o", str(out), timeout=1400)
        assert first.returncode == 0, first.stderr[-3000:]
        assert "[tinyx-image" in first.stderr and "base tree:" in first.stderr and "apt install:" in first.stderr

        assert sorted(p.name for p in out.iterdir()) == [
            "initramfs.cpio.lz4",  # the default format (tinyx/image/pack.py)
            "redis-server.toml",
            "report.json",
            "report.txt",
            "snapshot",  # the VM booted once, probed and kept (lightvm/mobility/snapshot.py)
            "vmlinux",
        ]
        assert sorted(p.name for p in (out / "snapshot").iterdir()) == ["ram", "state.lvm"]
        spec = tomllib.loads((out / "redis-server.toml").read_text())
        assert spec == {
            "name": "redis-server",
            "kernel": "vmlinux",
            "initrd": "initramfs.cpio.lz4",
            "memory": "128M",
            "snapshot": "snapshot",
            "vifs": [{}],  # one NIC on user networking, as generated
        }
        from lightvm.spec import load_spec

        assert load_spec(out / "redis-server.toml").is_linux  # what `lightvm create` will read

        report = json.loads((out / "report.json").read_text())
        assert report["name"] == "redis-server" and report["app"]["package"] == "redis-server"
        assert report["packages"]["redis-server"] == report["app"]["version"]
        libs = {Path(lib["path"]).name: lib for lib in report["libraries"]}
        assert libs["libc.so.6"]["owner"].startswith("libc6 ")
        assert "ld-linux-x86-64.so.2" in libs
        ker = report["kernel"]
        assert ker["bytes"] == (out / "vmlinux").stat().st_size  # the packed file (tinyx/image/kpack.py)
        assert ker["loaded_bytes"] <= ker["bytes"] < ker["vmlinux_bytes"] == Path(ker["source"]).stat().st_size
        assert ker["loaded_bytes"] < ker["vmlinux_loaded_bytes"]
        assert report["kernel_plus_initramfs_bytes"] == ker["bytes"] + report["initramfs"]["bytes"]
        assert load_spec(out / "redis-server.toml").is_linux  # the packed file keeps its notes
        assert report["initramfs"]["bytes"] == (out / "initramfs.cpio.lz4").stat().st_size
        assert report["initramfs"]["bytes"] < report["initramfs"]["uncompressed_bytes"]
        assert set(report["steps"]) >= {"kernel", "base tree", "apt install", "assemble", "pack"}
        assert report["guessed"] == []
        snap = report["snapshot"]
        assert snap["folder"] == "snapshot" and snap["probed"] and snap["accel"] in ("kvm", "tcg")
        assert 0 < snap["ram_used_bytes"] < snap["ram_bytes"] == 128 << 20  # sparse: the pages written
        text = (out / "report.txt").read_text()
        assert "libraries (" in text and "redis-server" in text and "steps (s):" in text
        assert "snapshot:   snapshot/, the VM booted once" in text

        members = read_newc(archive_bytes(out / "initramfs.cpio.lz4"))
        assert stat.S_ISREG(members["init"][0]) and members["init"][0] & 0o111
        for path in ("usr/bin/redis-server", "lib/x86_64-linux-gnu/libc.so.6"):
            real = resolve(members, path)
            assert stat.S_ISREG(members[real][0]), f"/{path} -> /{real} is not a file"
        # the recipe says busybox = false: no shell, no applet links
        assert "usr/bin/busybox" not in members and "usr/bin/sh" not in members
        assert report["app"]["busybox"] is False and report["initramfs"]["busybox_applet_links"] == 0
        loader = resolve(members, "lib64/ld-linux-x86-64.so.2")
        assert members[loader][1][:4] == b"\x7fELF"
        console = members["dev/console"]
        assert stat.S_ISCHR(console[0]) and console[2] == (5, 1)
        for d in ("proc", "sys", "dev", "tmp", "run"):
            assert stat.S_ISDIR(members[d][0])
        conf = appconf.parse(members["etc/tinyx/app.conf"][1].decode())
        assert conf["name"] == ["redis-server"] and conf["port"] == ["6379"]
        assert conf["arg"][0] == "/usr/bin/redis-server"
        passwd = members["etc/passwd"][1].decode()
        assert passwd.startswith("root:x:0:0:") and "\nredis:" in passwd
        for pruned in ("usr/share/doc", "var/lib/dpkg", "etc/apt", "usr/sbin/policy-rc.d", "etc/ld.so.cache"):
            assert not any(m == pruned or m.startswith(pruned + "/") for m in members), pruned
        no_leftovers(out)

        t0 = time.monotonic()
        second = lightvm_image("build", "redis-server", "-o", str(out), "--json", timeout=120)
        took = time.monotonic() - t0
        assert second.returncode == 0, second.stderr[-3000:]
        again = json.loads(second.stdout)
        assert took < WARM_LIMIT, f"a warm rebuild took {took:.1f}s"
        assert again["cache"] == {
            "kernel": "cached",
            "kernel pack": "cached",
            "base tree": "cached",
            "apt install": "cached",
        }
        assert again["initramfs"]["sha256"] == report["initramfs"]["sha256"]  # same inputs, same bytes
        no_leftovers(out)
    finally:
        clean_build_cache()


@pytest.mark.timeout(600)
def test_a_host_elf_file_and_the_store_commands(tmp_path: Path) -> None:
    store = tmp_path / "store"
    env_out = store / "ls"
    try:
        built = lightvm_image("build", "/bin/ls", "-o", str(env_out), timeout=500)
    finally:
        clean_build_cache()
    assert built.returncode == 0, built.stderr[-3000:]
    assert "note: host ELF" in built.stderr  # the guess is said on stderr ...
    report = json.loads((env_out / "report.json").read_text())
    assert report["guessed"] and "port 0" in report["guessed"][0]  # ... and in the report
    assert report["app"]["package"] is None and report["packages"] == {}
    assert report["app"]["host_file_owner"].startswith("coreutils ")
    members = read_newc(archive_bytes(env_out / "initramfs.cpio.lz4"))
    assert stat.S_ISREG(members[resolve(members, "usr/bin/ls")][0])
    assert any(lib["name"] == "libselinux.so.1" for lib in report["libraries"])
    assert report["snapshot"] == {"why": "the app has no port: a VM that runs to completion starts from its boot"}
    assert not (env_out / "snapshot").exists() and "snapshot" not in (env_out / "ls.toml").read_text()

    listed = lightvm_image("list", "--store", str(store), "--json", timeout=60)
    assert listed.returncode == 0 and [i["name"] for i in json.loads(listed.stdout)] == ["ls"]
    assert lightvm_image("rm", "ls", "--store", str(store), timeout=60).returncode == 0
    gone = lightvm_image("rm", "ls", "--store", str(store), timeout=60)
    assert gone.returncode == 1 and "no image 'ls'" in gone.stderr
    bad = lightvm_image("build", "/etc/passwd", "-o", str(tmp_path / "bad"), timeout=60)
    assert bad.returncode == 1 and "not an x86-64 ELF executable" in bad.stderr
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.tmp").exists()


@pytest.mark.timeout(120)
def test_a_killed_builds_mounts_are_undone_without_deleting_what_they_showed(tmp_path: Path) -> None:
    """A build killed with -9 leaves the chroot's /dev bind-mounted in its .tmp folder;
    the next build must unmount it before removing the folder, never delete through it."""
    host_dev = tmp_path / "dev"
    host_dev.mkdir()
    (host_dev / "node").write_text("a host file")
    leftover = BUILD / f"app-killed{os.getpid()}.tmp"
    (leftover / "merged/dev").mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(host_dev), str(leftover / "merged/dev")], check=True, timeout=30)
    try:
        assert mounts.mounted_under(leftover) != []
        clean_build_cache()
        assert not leftover.exists()
        assert mounts.mounted_under(leftover) == []
        assert (host_dev / "node").read_text() == "a host file"
    finally:
        mounts.unmount_under(leftover)
        mounts.remove_tree(leftover)


@pytest.mark.timeout(900)
def test_a_package_without_a_recipe_gets_a_guessed_one_said_twice(tmp_path: Path) -> None:
    out = tmp_path / "hello"
    try:
        built = lightvm_image("build", "hello", "-o", str(out), timeout=800)
        unknown = lightvm_image("build", "no-such-package-tinyx", "-o", str(tmp_path / "x"), timeout=300)
    finally:
        clean_build_cache()
    assert built.returncode == 0, built.stderr[-3000:]
    assert "note: no recipe for hello: guessed command [/usr/bin/hello]" in built.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["app"]["command"] == ["/usr/bin/hello"] and report["app"]["port"] == 0
    assert len(report["guessed"]) == 1 and "tinyx/apps/hello.toml" in report["guessed"][0]
    assert "GUESSED:" in (out / "report.txt").read_text()
    conf = appconf.parse(read_newc(archive_bytes(out / "initramfs.cpio.lz4"))["etc/tinyx/app.conf"][1].decode())
    assert conf["arg"] == ["/usr/bin/hello"] and conf["port"] == ["0"]
    assert unknown.returncode == 1
    assert "unknown Debian package 'no-such-package-tinyx'" in unknown.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.tmp").exists()


def snapshot_boot_qemus(pid: int) -> list[int]:
    """Live QEMU processes whose command line names build ``pid``'s snapshot state dir."""
    mark = f"lightvm-snapshot-{pid}-".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if mark in cmd and b"qemu" in cmd and state != "Z":
                found.append(int(entry))
    return found


@pytest.mark.timeout(600)
def test_a_build_killed_while_it_boots_its_snapshot_leaves_nothing_after_the_next(tmp_path: Path) -> None:
    """kill -9 of `lightvm image build` while its snapshot VM boots: that QEMU and its
    state dir outlive it (nothing of the build ran again); the next build removes them,
    and its own image and snapshot are whole."""
    out = tmp_path / "redis"
    argv = [sys.executable, "-m", "lightvm.cli.main", "image", "build", "redis-server", "-o", str(out)]
    with subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=REPO) as proc:
        try:
            assert proc.stderr is not None
            for line in proc.stderr:  # the cached build reaches the snapshot step in seconds
                if "snapshot: booting the image once" in line:
                    break
            deadline = time.monotonic() + 30
            while not snapshot_boot_qemus(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert snapshot_boot_qemus(proc.pid), "the snapshot boot's QEMU never started"
        finally:
            proc.kill()
            proc.wait(30)
    assert snapshot_boot_qemus(proc.pid)  # orphaned by the kill, as any VM outlives its CLI
    stale = list(Path(tempfile.gettempdir()).glob(f"lightvm-snapshot-{proc.pid}-*"))
    assert stale, "the killed build's state dir"
    try:
        again = lightvm_image("build", "redis-server", "-o", str(out), timeout=300)
    finally:
        clean_build_cache()
    assert again.returncode == 0, again.stderr[-3000:]
    assert snapshot_boot_qemus(proc.pid) == [] and not any(p.exists() for p in stale)
    assert (out / "snapshot" / "state.lvm").is_file() and not out.with_name(out.name + ".tmp").exists()
    no_leftovers(out)
