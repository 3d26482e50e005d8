"""The image builder's small parts that need no network, root mounts or apt: the apt
settings given to the chroot, dpkg's database, mountinfo, the cache entries, the store,
the image folder swap, compression, and the CLI's lazy import of tinyx."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightvm.cli.main import main
from lightvm.errors import NotFoundError, TinyxError
from tinyx import cpio
from tinyx.image import cache, install, mounts, output, pack, store
from tinyx.image.assemble import Item, Tree
from tinyx.image.owners import Owners
from tinyx.image.proc import Progress, run

REPO = Path(__file__).resolve().parents[2]

SOURCES = """\
Types: deb deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
"""

STATUS = """\
Package: libc6
Status: install ok installed
Version: 2.36-9

Package: redis-server
Status: install ok installed
Version: 5:7.0.15-1
Description: a
 multi-line field: Version: 9

Package: gone
Status: deinstall ok config-files
Version: 1.0
"""


def test_only_deb_stanzas_reach_the_chroot() -> None:
    out = install.deb_stanzas(SOURCES)
    assert out.count("Types:") == 1 and "Types: deb\n" in out and "deb-src" not in out
    assert "debian-security" not in out and "Signed-By: /usr/share/keyrings" in out
    assert install.deb_stanzas("Types: deb-src\nURIs: x\n") == ""


def test_the_upper_gets_apt_settings_resolv_conf_and_a_policy_rc_d(tmp_path: Path) -> None:
    upper, lower = tmp_path / "upper", tmp_path / "lower"
    upper.mkdir()
    lower.mkdir()
    install.prepare_upper(upper, lower)
    rc = upper / "usr/sbin/policy-rc.d"
    assert rc.stat().st_mode & 0o777 == 0o755
    assert subprocess.run([str(rc)], timeout=10).returncode == 101
    assert (upper / "etc/apt/apt.conf.d/99tinyx").is_file()
    for src in Path("/etc/apt/sources.list.d").glob("*.sources"):
        copied = upper / "etc/apt/sources.list.d" / src.name
        wanted = install.deb_stanzas(src.read_text())  # "" for a deb-src only file: not copied
        assert (copied.read_text() if copied.exists() else "") == wanted
    for src in Path("/etc/apt/apt.conf.d").glob("99*"):
        assert (upper / "etc/apt/apt.conf.d" / src.name).read_bytes() == src.read_bytes()
    if Path("/etc/resolv.conf").exists():
        assert (upper / "etc/resolv.conf").read_bytes() == Path("/etc/resolv.conf").read_bytes()


def test_dpkg_status_and_what_the_app_added(tmp_path: Path) -> None:
    assert install.parse_status(STATUS) == {"libc6": "2.36-9", "redis-server": "5:7.0.15-1"}
    upper, lower = tmp_path / "upper", tmp_path / "lower"
    for root, status in ((lower, "Package: libc6\nStatus: install ok installed\nVersion: 2.36-8\n"), (upper, STATUS)):
        (root / "var/lib/dpkg").mkdir(parents=True)
        (root / "var/lib/dpkg/status").write_text(status)
        (root / "etc").mkdir()
    assert install.installed_by_app(upper, lower) == {"libc6": "2.36-9", "redis-server": "5:7.0.15-1"}
    (lower / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (upper / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\nredis:x:100:101::/var/lib/redis:/bin/false\n")
    assert install.new_entries(upper / "etc/passwd", lower / "etc/passwd") == [
        "redis:x:100:101::/var/lib/redis:/bin/false"
    ]
    assert install.new_entries(upper / "etc/group", lower / "etc/group") == []


def test_owners_read_dpkg_lists_through_the_usr_merge_aliases(tmp_path: Path) -> None:
    base, upper = tmp_path / "base", tmp_path / "upper"
    for root in (base, upper):
        (root / "var/lib/dpkg/info").mkdir(parents=True)
    (base / "lib").symlink_to("usr/lib")
    (base / "var/lib/dpkg/info/libc6:amd64.list").write_text("/.\n/lib/x86_64-linux-gnu/libc.so.6\n")
    (base / "var/lib/dpkg/status").write_text("Package: libc6\nStatus: install ok installed\nVersion: 2.36-9\n")
    (upper / "var/lib/dpkg/info/libssl3:amd64.list").write_text("/usr/lib/x86_64-linux-gnu/libssl.so.3\n")
    owners = Owners(upper, base)
    assert owners.describe("/usr/lib/x86_64-linux-gnu/libc.so.6") == "libc6 2.36-9"
    assert owners.owner("/usr/lib/x86_64-linux-gnu/libssl.so.3") == "libssl3"
    assert owners.describe("/usr/bin/nothing") == "(no package)"
    assert owners.files_of({"libc6"}) == {"usr/lib/x86_64-linux-gnu/libc.so.6"}


def test_mountinfo_paths_are_unescaped_and_listed_deepest_first(tmp_path: Path) -> None:
    top = tmp_path / "a b"
    info = "\n".join(
        [
            f"36 25 0:32 / {tmp_path}/a\\040b rw - overlay overlay rw",
            f"37 36 0:5 / {tmp_path}/a\\040b/dev rw - devtmpfs udev rw",
            f"38 36 0:6 / {tmp_path}/a\\040b/proc rw - proc proc rw",
            f"39 25 0:7 / {tmp_path}/a\\040bc rw - tmpfs t rw",
            "40 25 0:8 / / rw - ext4 /dev/vda rw",
        ]
    )
    top.mkdir()
    found = mounts.mounted_under(top, info)
    assert found[-1] == top and set(found[:2]) == {top / "dev", top / "proc"}
    assert tmp_path / "a bc" not in found  # a sibling with the same prefix is not below


def test_remove_tree_removes_an_unmounted_tree(tmp_path: Path) -> None:
    (tmp_path / "t/x/y").mkdir(parents=True)
    (tmp_path / "t/x/y/f").write_text("x")
    mounts.remove_tree(tmp_path / "t")
    assert not (tmp_path / "t").exists()
    mounts.remove_tree(tmp_path / "t")  # absent: nothing to do


def test_cache_keys_entries_and_stale_tmp_folders(tmp_path: Path) -> None:
    assert cache.key("a", "bc") != cache.key("ab", "c") and len(cache.key("x")) == 16
    path = cache.entry("app", cache.key("x"), tmp_path)
    tmp = cache.begin(path)
    (tmp / "upper").mkdir()
    assert cache.read_meta(path) is None  # nothing is complete before publish
    cache.publish(tmp, path, {"package": "x"})
    assert cache.read_meta(path) == {"package": "x"} and not tmp.exists()
    (tmp_path / "base-1.tmp").mkdir()
    (tmp_path / "kernel-1.tmp").mkdir()
    cache.clean_stale(tmp_path, Progress(quiet=True))
    assert not (tmp_path / "base-1.tmp").exists()
    assert (tmp_path / "kernel-1.tmp").exists()  # maybe a kernel build in progress: not ours


def test_the_cache_lock_is_exclusive(tmp_path: Path) -> None:
    import fcntl

    with cache.locked(tmp_path, Progress(quiet=True)):
        fd = os.open(tmp_path / cache.LOCK_NAME, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)


def test_run_reports_failures_and_timeouts_in_one_line(tmp_path: Path) -> None:
    assert run(["sh", "-c", "echo hi"], 10, what="echo") == "hi"
    with pytest.raises(TinyxError, match=r"^false-ish failed \(exit 3\): oops$"):
        run(["sh", "-c", "echo oops; exit 3"], 10, what="false-ish")
    with pytest.raises(TinyxError, match="sleepy: timed out after 1s"):
        run(["sleep", "30"], 1, what="sleepy")
    lines: list[str] = []
    with pytest.raises(TinyxError, match="timed out"):
        run(["sh", "-c", "echo a; sleep 30"], 1, what="follow", on_line=lines.append)
    assert lines == ["a"]
    with pytest.raises(TinyxError, match="cannot run no-such-tool-x"):
        run(["no-such-tool-x"], 10, what="x")


def _tree() -> Tree:
    t = Tree()
    t.add("init", Item("file", 0o755, "init", data=b"#!/bin/sh\n" * 100))
    t.add("dev/console", Item("chardev", 0o600, "layout", rdev=(5, 1)))
    t.fill_parents()
    return t


@pytest.mark.parametrize("fmt", ["none", "gzip", "lz4"])
def test_pack_writes_and_compresses_the_archive(tmp_path: Path, fmt: str) -> None:
    raw = tmp_path / "initramfs.cpio"
    size = pack.write_cpio(_tree(), raw)
    data = raw.read_bytes()
    assert size == len(data) and data.startswith(cpio.MAGIC) and b"TRAILER!!!" in data
    out = pack.compress(raw, fmt)
    assert out.name == pack.initrd_name(fmt)
    if fmt == "gzip":
        assert gzip.decompress(out.read_bytes()) == data
    elif fmt == "lz4":
        assert out.read_bytes()[:4] == b"\x02\x21\x4c\x18"  # the legacy frame Linux unpacks
    assert not raw.exists() or fmt == "none"
    # What reads an image's archive (the bench's container row, the tests) gets it back whole,
    # and finds it in the folder by its format's name.
    assert pack.archive_bytes(out) == data
    assert pack.find_initrd(tmp_path) == out


def test_a_missing_compressor_is_refused_before_the_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no lz4, no gzip here
    with pytest.raises(TinyxError, match=r"lz4 is not installed: apt-get install lz4, or build with --compress none"):
        pack.check_tool("lz4")
    with pytest.raises(TinyxError, match="use one of none, gzip, lz4"):
        pack.check_tool("zstd")
    pack.check_tool("none")  # needs nothing


def test_a_broken_archive_is_one_clear_error(tmp_path: Path) -> None:
    for name in ("initramfs.cpio.lz4", "initramfs.cpio.gz"):
        bad = tmp_path / name
        bad.write_bytes(b"not compressed at all")
        with pytest.raises(TinyxError, match="initramfs"):
            pack.archive_bytes(bad)
    assert pack.find_initrd(tmp_path / "nowhere") is None


def test_the_image_folder_is_swapped_in_only_when_complete(tmp_path: Path) -> None:
    dest = tmp_path / "redis"
    dest.mkdir()
    (dest / "old").write_text("previous build")
    (dest / "report.json").write_text("{}")
    tmp = output.begin(dest)
    (tmp / "new").write_text("this build")
    output.publish(tmp, dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["redis"]
    assert (dest / "new").is_file() and not (dest / "old").exists()


def test_a_folder_that_is_not_an_image_is_never_replaced(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    with pytest.raises(TinyxError, match="holds no Tinyx image"):
        output.begin(home)
    (tmp_path / "file").write_text("x")
    with pytest.raises(TinyxError, match="not a folder"):
        output.begin(tmp_path / "file")
    assert (home / "notes.txt").read_text() == "mine" and not (tmp_path / "home.tmp").exists()
    (tmp_path / "empty").mkdir()
    output.begin(tmp_path / "empty")  # an empty folder may be filled


def _image(store_dir: Path, name: str) -> None:
    folder = store_dir / name
    folder.mkdir(parents=True)
    (folder / "initramfs.cpio").write_bytes(b"x" * 1000)
    report = {"app": {"package": name, "version": "1.0"}, "built_at": "2026-01-01T00:00:00+00:00"}
    report["initramfs"] = {"bytes": 1000}
    (folder / store.REPORT).write_text(json.dumps(report))


def test_the_store_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(store.ENV, str(tmp_path / "s"))
    assert store.default_dir() == tmp_path / "s"
    monkeypatch.delenv(store.ENV)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    expect = store.ROOT_DIR if os.geteuid() == 0 else tmp_path / "xdg/lightvm/images"
    assert store.default_dir() == expect


def test_image_list_and_rm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _image(tmp_path, "redis-server")
    _image(tmp_path, "memcached")
    (tmp_path / "half.tmp").mkdir()  # an interrupted build is not an image
    assert [i["name"] for i in store.list_images(tmp_path)] == ["memcached", "redis-server"]
    assert main(["image", "list", "--store", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "redis-server 1.0" in out and "memcached" in out and "half" not in out
    assert main(["image", "list", "--store", str(tmp_path), "--json"]) == 0
    assert {i["name"] for i in json.loads(capsys.readouterr().out)} == {"memcached", "redis-server"}
    assert main(["image", "rm", "memcached", "--store", str(tmp_path)]) == 0
    assert not (tmp_path / "memcached").exists()
    assert main(["image", "rm", "memcached", "--store", str(tmp_path)]) == 1
    assert "no image 'memcached'" in capsys.readouterr().err
    with pytest.raises(NotFoundError):
        store.remove(tmp_path, "memcached")
    with pytest.raises(TinyxError, match="not an image name"):
        store.remove(tmp_path, "../x")
    assert main(["image", "list", "--store", str(tmp_path / "none")]) == 0
    assert "no images" in capsys.readouterr().out


def test_lightvm_help_does_not_import_the_image_builder() -> None:
    code = (
        "import sys; from lightvm.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "try:\n    main(['image', 'build', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m == 'tinyx' or m.startswith('tinyx.image')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "image build" in out.stdout and out.stdout.strip().splitlines()[-1] == "[]"
