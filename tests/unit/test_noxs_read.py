"""noxs-read (the Linux guest tool) with --file on regions written by lightvm.noxs."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from lightvm.noxs import DevicePage, NoxsRegion, PageConfig, VbdConfig, VifConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from guestlib import HOSTILE_PAGES, hostile_base_config

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "noxs-virtio" / "build" / "noxs-read"


@pytest.fixture(scope="session")
def tool() -> Path:
    subprocess.run(["make", "-C", str(REPO / "noxs-virtio"), "-s"], check=True, timeout=120, capture_output=True)
    return TOOL


def _run(tool: Path, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(tool), "--file", str(path)], capture_output=True, text=True, timeout=30)


def test_prints_config(tool: Path, tmp_path: Path) -> None:
    vm_uuid = uuid.UUID("12345678-9abc-def0-1234-56789abcdef0")
    cfg = PageConfig(
        name="web-1",
        uuid=vm_uuid,
        vifs=[
            VifConfig(mac=bytes.fromhex("525400000001"), ip="10.0.0.2", prefix=24, gateway="10.0.0.1", mtu=1400,
                      bridge="lvbr0"),
            VifConfig(mac=bytes.fromhex("525400000002"), ip="192.168.7.9", prefix=16,
                      dev_mac=bytes.fromhex("5a0000c0ffee")),
        ],
        vbds=[VbdConfig(sectors=2048, read_only=True)],
        tsc_hz=2_700_000_000,
    )  # fmt: skip
    with NoxsRegion.create(tmp_path / "region", 4) as region:
        region.write_config(cfg, host_time_ns=1_700_000_000_123_456_789)
    result = _run(tool, tmp_path / "region")
    assert result.returncode == 0, result.stderr
    kv = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert kv["name"] == "web-1"
    assert kv["uuid"] == str(vm_uuid)
    assert kv["host_time_ns"] == "1700000000123456789"
    assert kv["tsc_hz"] == "2700000000"
    assert kv["features"] == "0x1"
    assert kv["dev_count"] == "4"
    assert kv["region_size"] == "32768"
    assert kv["sysctl.status_req"] == "0x0"
    assert kv["sysctl.be_state"] == "InitWait"
    assert kv["vif_count"] == "2"
    assert (kv["vif0.mac"], kv["vif0.ip"], kv["vif0.prefix"]) == ("52:54:00:00:00:01", "10.0.0.2", "24")
    assert (kv["vif0.gateway"], kv["vif0.mtu"], kv["vif0.bridge"]) == ("10.0.0.1", "1400", "lvbr0")
    assert (kv["vif1.mac"], kv["vif1.ip"], kv["vif1.prefix"]) == ("52:54:00:00:00:02", "192.168.7.9", "16")
    assert (kv["vif1.gateway"], kv["vif1.mtu"]) == ("0.0.0.0", "1500")
    assert (kv["vif0.dev_mac"], kv["vif1.dev_mac"]) == ("00:00:00:00:00:00", "5a:00:00:c0:ff:ee")
    assert kv["vbd_count"] == "1"
    assert (kv["vbd0.sectors"], kv["vbd0.sector_size"], kv["vbd0.mode"]) == ("2048", "512", "ro")


def test_name_of_full_length_is_bounded(tool: Path, tmp_path: Path) -> None:
    with NoxsRegion.create(tmp_path / "region", 1) as region:
        region.write_config(PageConfig(name="n" * 64))
    result = _run(tool, tmp_path / "region")
    assert result.returncode == 0, result.stderr
    assert "name=" + "n" * 64 + "\n" in result.stdout


@pytest.mark.parametrize("case", list(HOSTILE_PAGES))
def test_rejects_hostile_page(tool: Path, tmp_path: Path, case: str) -> None:
    mutate, expected = HOSTILE_PAGES[case]
    with NoxsRegion.create(tmp_path / "region", 2) as region:
        region.write_config(hostile_base_config())
        mutate(region)
    result = _run(tool, tmp_path / "region")
    assert result.returncode == 1, result.stdout
    assert expected in result.stderr
    assert result.stdout == ""


def test_short_file(tool: Path, tmp_path: Path) -> None:
    (tmp_path / "short").write_bytes(b"NOXS")
    result = _run(tool, tmp_path / "short")
    assert result.returncode == 1
    assert "noxs:" in result.stderr


def test_missing_file_and_usage(tool: Path, tmp_path: Path) -> None:
    assert _run(tool, tmp_path / "nope").returncode == 2
    usage = subprocess.run([str(tool), "--bogus"], capture_output=True, text=True, timeout=30)
    assert usage.returncode == 2 and "usage" in usage.stderr


def test_stamp_host_time_rewrites_only_the_time(tool: Path, tmp_path: Path) -> None:
    """The stamp before ``cont``: the time moves, the generation moves on by one even step (a
    guest that already read the page re-bases), and nothing else in the page changes."""
    path = tmp_path / "region"
    with NoxsRegion.create(path, 4) as region:
        region.write_config(PageConfig(name="web-1", tsc_hz=2_700_000_000), host_time_ns=1_000)
        before = path.read_bytes()
        region.stamp_host_time(host_time_ns=2_000)
        after = path.read_bytes()
    kv = dict(line.split("=", 1) for line in _run(tool, path).stdout.splitlines())
    assert (kv["host_time_ns"], kv["name"], kv["tsc_hz"]) == ("2000", "web-1", "2700000000")
    gen = slice(DevicePage.generation.offset, DevicePage.generation.offset + 8)
    assert int.from_bytes(after[gen], "little") == int.from_bytes(before[gen], "little") + 2
    time_end = DevicePage.host_time_ns.offset + 8
    assert DevicePage.host_time_ns.offset == gen.stop  # the two fields are adjacent
    assert before[: gen.start] == after[: gen.start] and before[time_end:] == after[time_end:]


def test_rings_nmi_doorbell_follows_the_page(tmp_path: Path) -> None:
    """Host paths that would inject an NMI ask the page first (a Linux guest's does not
    promise the doorbell)."""
    with NoxsRegion.create(tmp_path / "region", 2) as region:
        region.write_config(PageConfig(name="uni", nmi_doorbell=True))
        assert region.rings_nmi_doorbell()
        region.write_config(PageConfig(name="linux", nmi_doorbell=False))
        assert not region.rings_nmi_doorbell()
