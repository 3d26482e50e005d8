"""The stock Debian baseline's parts that need no VM, network or chroot: the redis.conf
tweak, finding the kernel and initrd in /boot, the image's configuration and leftovers,
the raw ext4 disk (mkfs.ext4 -d on a small tree: e2fsprogs, no mount), the cache
(reuse, a new key per package version, nothing left by a failed build), QEMU's command
line, the sizes and the ratios the bench prints."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from lightvm.bench import stockvm, tinyx
from lightvm.bench.runner import Result
from lightvm.errors import LightVMError, TinyxError
from tinyx.image import cache, stock
from tinyx.image.base import Base
from tinyx.image.proc import Progress

REDIS_CONF = """\
# bind 192.168.1.100 10.0.0.1
bind 127.0.0.1 -::1
protected-mode yes
port 6379
"""


def test_redis_listens_everywhere_without_protected_mode() -> None:
    out = stock.open_redis(REDIS_CONF)
    assert out.splitlines() == ["# bind 192.168.1.100 10.0.0.1", "bind 0.0.0.0", "protected-mode no", "port 6379"]
    with pytest.raises(TinyxError, match="no protected-mode line"):
        stock.open_redis("bind 127.0.0.1\n")
    with pytest.raises(TinyxError, match="no bind line"):
        stock.open_redis("# bind 1.2.3.4\nprotected-mode yes\n")


def test_boot_files_are_the_one_kernel_and_its_initrd(tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    with pytest.raises(TinyxError, match=r"expected one vmlinuz-\*, found \[\]"):
        stock.boot_files(boot)
    (boot / "vmlinuz-6.1.0-28-cloud-amd64").write_bytes(b"k")
    (boot / "config-6.1.0-28-cloud-amd64").write_text("")
    with pytest.raises(TinyxError, match="did initramfs-tools run"):
        stock.boot_files(boot)
    (boot / "initrd.img-6.1.0-28-cloud-amd64").write_bytes(b"i")
    assert stock.boot_files(boot) == (boot / "vmlinuz-6.1.0-28-cloud-amd64", boot / "initrd.img-6.1.0-28-cloud-amd64")
    (boot / "vmlinuz-6.1.0-27-cloud-amd64").write_bytes(b"k")
    with pytest.raises(TinyxError, match="expected one"):
        stock.boot_files(boot)


def fake_root(root: Path, enabled: bool = True) -> Path:
    """What the install leaves that configure() looks at."""
    (root / "etc/redis").mkdir(parents=True)
    (root / stock.REDIS_CONF).write_text(REDIS_CONF)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    if enabled:
        (wants / stock.SERVICE).symlink_to("/lib/systemd/system/redis-server.service")
    for rel in stock.LEFTOVERS:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    (root / "var/lib/apt/lists").mkdir(parents=True)
    (root / "var/lib/apt/lists/deb.debian.org_Packages").write_text("big")
    (root / "var/cache/apt/archives").mkdir(parents=True)
    (root / "var/cache/apt/archives/redis_7.deb").write_bytes(b"deb")
    return root


def test_configure_opens_redis_adds_dhcp_and_removes_build_leftovers(tmp_path: Path) -> None:
    root = fake_root(tmp_path / "root")
    stock.configure(root)
    assert "protected-mode no" in (root / stock.REDIS_CONF).read_text()
    assert (root / stock.NETWORK_FILE).read_text() == stock.NETWORK_UNIT
    assert (root / "etc/hostname").read_text() == stock.HOSTNAME
    assert not any((root / rel).exists() for rel in stock.LEFTOVERS)
    assert [p.name for p in (root / "var/lib/apt/lists").iterdir()] == ["partial"]
    assert not list((root / "var/cache/apt/archives").glob("*.deb"))


def test_a_service_the_package_did_not_enable_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TinyxError, match=r"redis-server\.service is not enabled"):
        stock.configure(fake_root(tmp_path / "root", enabled=False))


def test_the_disk_is_a_sparse_ext4_image_of_the_tree(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/hostname").write_text(stock.HOSTNAME)
    (tree / "bin").mkdir()
    (tree / "bin/big").write_bytes(b"\1" * 3_000_000)
    assert stock.tree_bytes(tree) == 3_000_000 + len(stock.HOSTNAME)
    image = tmp_path / "root.img"
    apparent = stock.make_disk(tree, image)
    assert apparent == image.stat().st_size == stock.disk_size(stock.tree_bytes(tree))
    assert apparent % 2**20 == 0 and apparent >= stock.DISK_EXTRA
    assert stock.allocated(image) < apparent / 4  # sparse: mostly holes
    # the files are in it, read back without mounting (debugfs, e2fsprogs)
    out = subprocess.run(
        ["debugfs", "-R", "cat /etc/hostname", str(image)], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout == stock.HOSTNAME
    out = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True, timeout=30, check=True)
    assert "Filesystem volume name:   root" in out.stdout


def test_the_key_follows_package_versions() -> None:
    a = stock.stock_key("b1", {"redis-server": "5:7.0.15-1", "linux-image-cloud-amd64": "6.1.119-1"})
    assert a == stock.stock_key("b1", {"linux-image-cloud-amd64": "6.1.119-1", "redis-server": "5:7.0.15-1"})
    assert a != stock.stock_key("b1", {"redis-server": "5:7.0.15-1", "linux-image-cloud-amd64": "6.1.123-1"})
    assert a != stock.stock_key("b2", {"redis-server": "5:7.0.15-1", "linux-image-cloud-amd64": "6.1.119-1"})


@pytest.fixture
def fake_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """ensure_stock with the base, apt and the chroot build replaced: counts builds."""
    state: dict[str, Any] = {"builds": 0, "fail": False, "versions": {p: "1.0" for p in stock.PACKAGES}}
    base = Base(tmp_path / "base-abc", "abc")

    def build(base_: Base, tmp: Path, progress: Progress, fd: int) -> dict[str, Any]:
        state["builds"] += 1
        for name in ("vmlinuz", "initrd.img", "root.img"):
            (tmp / name).write_bytes(b"x")
        if state["fail"]:
            raise KeyboardInterrupt  # a Ctrl-C in the middle of the build
        return {"kernel": "vmlinuz-6.1"}

    monkeypatch.setattr(stock, "ensure_base", lambda progress, fd, variant, root: base)
    monkeypatch.setattr(stock, "host_candidates", lambda *p: dict(state["versions"]))
    monkeypatch.setattr(stock, "_build", build)
    return state


def test_the_image_is_built_once_and_again_for_a_new_version(tmp_path: Path, fake_steps: dict[str, Any]) -> None:
    progress = Progress(quiet=True)
    first = stock.ensure_stock(progress, -1, root=tmp_path)
    assert first.kernel.is_file() and first.disk.is_file() and first.meta["kernel"] == "vmlinuz-6.1"
    assert first.meta["candidates"] == fake_steps["versions"] and first.path.name.startswith("stock-")
    assert stock.ensure_stock(progress, -1, root=tmp_path).path == first.path
    assert fake_steps["builds"] == 1 and progress.cache["stock image"] == "cached"
    fake_steps["versions"]["redis-server"] = "1.1"
    assert stock.ensure_stock(progress, -1, root=tmp_path).path != first.path
    assert fake_steps["builds"] == 2


def test_an_interrupted_build_leaves_nothing(tmp_path: Path, fake_steps: dict[str, Any]) -> None:
    fake_steps["fail"] = True
    with pytest.raises(KeyboardInterrupt):
        stock.ensure_stock(Progress(quiet=True), -1, root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_package_the_host_does_not_know_is_an_error(tmp_path: Path, fake_steps: dict[str, Any]) -> None:
    fake_steps["versions"]["redis-server"] = "(none)"
    with pytest.raises(TinyxError, match="does not know redis-server: run apt-get update"):
        stock.ensure_stock(Progress(quiet=True), -1, root=tmp_path)


def test_a_killed_stock_build_is_cleaned_by_the_next(tmp_path: Path) -> None:
    (tmp_path / "stock-0123.tmp/merged").mkdir(parents=True)
    cache.clean_stale(tmp_path, Progress(quiet=True))
    assert not (tmp_path / "stock-0123.tmp").exists()


def test_qemu_boots_the_stock_image_on_microvm_with_a_private_disk(tmp_path: Path) -> None:
    image = stockvm.StockImage(tmp_path)
    argv = stockvm.qemu_argv(image, "tcg", 40000, tmp_path / "console.log", 2_596_147_000)
    joined = " ".join(argv)
    assert argv[argv.index("-M") + 1] == "microvm" and argv[argv.index("-kernel") + 1] == str(image.kernel)
    assert f"file={image.disk},format=raw,if=none,snapshot=on" in joined  # runs never change the image
    assert "hostfwd=tcp:127.0.0.1:40000-:6379" in joined and "virtio-blk-device" in joined
    append = argv[argv.index("-append") + 1]
    assert "root=/dev/vda rw" in append and "tsc_early_khz=2596147" in append and "console=ttyS0" in append


def test_the_stock_size_counts_the_disk_as_allocated(tmp_path: Path) -> None:
    image = stockvm.StockImage(tmp_path)
    image.kernel.write_bytes(b"k" * 2**20)
    image.initrd.write_bytes(b"i" * 2 * 2**20)
    with open(image.disk, "wb") as f:
        f.truncate(64 * 2**20)
        f.seek(0)
        f.write(b"d" * 2**20)
    s = image.sizes()
    assert s["kernel_initrd_mib"] == 3 and s["disk_apparent_mib"] == 64
    assert 1 <= s["disk_mib"] < 2 and s["mib"] == pytest.approx(3 + s["disk_mib"])


def result(name: str, values: list[float], metric: str = "ms", **extra: list[float]) -> Result:
    samples = [{metric: v, **{k: vs[i] for k, vs in extra.items()}} for i, v in enumerate(values)]
    return Result(name=name, metric=metric, unit="", params={}, samples=samples, warmup=0, iterations=len(values))


def test_the_ratios_and_bars_against_tinyx() -> None:
    results = [
        result("tinyx/serve/tinyx-cold", [1000, 1200, 1100]),
        result("tinyx/serve/stock", [30_000]),
        result("tinyx/size/tinyx-cold", [10.0], metric="mib"),
        result("tinyx/size/stock", [1000.0], metric="mib", kernel_initrd_mib=[40.0]),
        result("tinyx/memory/tinyx-cold", [100.0], metric="pss_mib"),
    ]
    r = tinyx.stock_ratios(results)
    assert r == {"speed_x": pytest.approx(30_000 / 1100), "size_x": 100.0, "kernel_size_x": 4.0}
    lines = tinyx.summary_extra(results)
    assert "Tinyx faster by 27.3x  (bar >= 5x: met)" in lines[1]
    assert "Tinyx smaller by 100.0x  (bar >= 10x: met)" in lines[2]
    assert lines[3].endswith("kernel + initrd alone: Tinyx smaller by 4.0x")
    results[3] = result("tinyx/size/stock", [1000.0], metric="mib", kernel_initrd_mib=[8.0])
    assert tinyx.summary_extra(results)[3].endswith("kernel + initrd alone: Tinyx larger by 1.2x")
    results[1] = result("tinyx/serve/stock", [3000])
    assert "(bar >= 5x: NOT met)" in tinyx.summary_extra(results)[1]
    assert tinyx.summary_extra(results[:1]) == ["stock vs tinyx-cold: no ratio (a stock or Tinyx row failed)"]


def test_a_stock_boot_that_never_serves_says_why(tmp_path: Path) -> None:
    """QEMU refusing to start (no kernel file) is reported with its error; nothing stays."""
    fleet = stockvm.StockVMs(stockvm.StockImage(tmp_path / "missing"), "tcg", b"PING\r\n", b"+PONG")
    fleet.serve_timeout = 3.0
    try:
        with pytest.raises(LightVMError, match="QEMU exited 1"):
            fleet.measure()
        assert fleet.proc is None
    finally:
        fleet.close()
    assert not fleet.work.exists()
