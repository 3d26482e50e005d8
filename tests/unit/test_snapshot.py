"""Image snapshots without a VM: what makes one fit a create (lightvm/mobility/snapshot.py),
the digests a one-shot command keeps in its state dir (lightvm/mobility/template.py), the
spec key and the spec text an image build writes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tomllib
from pathlib import Path
from typing import Any

import pytest

from lightvm.errors import SpecError
from lightvm.mobility import template
from lightvm.mobility.snapshot import unfit_reason
from lightvm.spec import load_spec, parse_spec
from tinyx.image.output import spec_text

IMAGES = Path(__file__).resolve().parents[2] / "images" / "build"


def made(**spec: Any) -> dict[str, Any]:
    """A snapshot's header as template.py writes it: one user NIC, made under tcg."""
    saved = {"name": "app", "kernel": "/i/vmlinux", "initrd": "/i/initramfs.cpio", "memory": 128, "vcpus": 1}
    saved.update(cmdline="", firmware=None, vifs=[{}], disks=[])
    saved.update(spec)
    vif = {"index": 0, "mode": "user", "ip": "10.0.2.15", "prefix": 24, "gateway": "10.0.2.2", "mtu": 1500}
    return {"accel": "tcg", "paused": False, "spec": saved, "vifs": [vif]}


def spec_of(tmp_path: Path, extra: str = "", vif: str = "") -> Any:
    """A spec (parsed, files unchecked) of 128M and one user NIC, unless ``extra`` says otherwise."""
    memory = "" if "memory" in extra else 'memory = "128M"'
    text = f'name = "app"\nkernel = "{IMAGES / "daytime.elf"}"\n{memory}\n{extra}\n[[vifs]]\n{vif}'
    return parse_spec(tomllib.loads(text), tmp_path / "app.toml", check_kernel=False)


def with_initrd(spec: Any) -> Any:
    """The spec as a Tinyx image's (files unchecked)."""
    return dataclasses.replace(spec, initrd=Path("/i/initramfs.cpio"))


def test_a_spec_like_the_snapshots_fits(tmp_path: Path) -> None:
    spec = with_initrd(spec_of(tmp_path, vif='publish = ["127.0.0.1:8000:6379"]'))
    assert unfit_reason(spec, made(), "tcg") is None  # publish is the VM's own


@pytest.mark.parametrize(
    ("extra", "vif", "accel", "header", "said"),
    [
        ('memory = "256M"', "", "tcg", {}, "memory is 256 here, 128 in the snapshot"),
        ("vcpus = 2", "", "tcg", {}, "vcpus is 2 here, 1 in the snapshot"),
        ('cmdline = "quiet"', "", "tcg", {}, "cmdline is 'quiet' here"),
        ("", 'network = "net0"', "tcg", {}, "vif 0 is on a tap network, and this snapshot's guest does not take"),
        ("", 'ip = "10.0.2.20/24"', "tcg", {}, "vif 0 sets an address"),
        ("", 'mac = "52:54:00:00:00:01"', "tcg", {}, "vif 0 sets a MAC"),
        ("", "mtu = 9000", "tcg", {}, "vif 0 MTU is 9000 here, 1500 in the snapshot"),
        ("", "", "kvm", {}, "it was made under tcg, this create runs kvm"),
        ("", "", "tcg", {"paused": True}, "it was saved paused"),
    ],
)
def test_what_does_not_fit_is_named(
    tmp_path: Path, extra: str, vif: str, accel: str, header: dict[str, Any], said: str
) -> None:
    spec = with_initrd(spec_of(tmp_path, extra, vif))
    reason = unfit_reason(spec, {**made(), **header}, accel)
    assert reason is not None and said in reason, reason


def test_a_tap_network_fits_a_snapshot_whose_guest_takes_new_vifs(tmp_path: Path) -> None:
    """lightvm image build marks its snapshots (lvinit configures a NIC again after a page
    rewrite): a VM on a lightvm network, with its own address and MAC, starts from them."""
    header = made()
    header["template"] = {"note": {"guest_takes_vifs": True}}
    on_net = with_initrd(spec_of(tmp_path, vif='network = "net0"\nip = "10.0.0.9"\nmac = "52:54:00:00:00:09"'))
    assert unfit_reason(on_net, header, "tcg") is None
    mtu = with_initrd(spec_of(tmp_path, vif="mtu = 9000"))
    assert unfit_reason(mtu, header, "tcg") is None  # the guest sets it too
    user_ip = with_initrd(spec_of(tmp_path, vif='ip = "10.0.2.20/24"'))
    assert "vif 0 sets an address" in str(unfit_reason(user_ip, header, "tcg"))  # user networking's is fixed


def test_nics_and_image_files_must_match(tmp_path: Path) -> None:
    spec = with_initrd(spec_of(tmp_path))
    assert "0 NICs here, 1 in the snapshot" in str(unfit_reason(dataclasses.replace(spec, vifs=()), made(), "tcg"))
    no_initrd = dataclasses.replace(spec, initrd=None)
    assert "the image has kernel, the snapshot was made of initrd, kernel" in str(
        unfit_reason(no_initrd, made(), "tcg")
    )


def test_the_spec_key_is_a_folder_beside_the_config(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, 'snapshot = "snapshot"')
    assert spec.snapshot == tmp_path / "snapshot"  # not required to exist: a create says why it boots
    assert spec.to_dict()["snapshot"] == str(tmp_path / "snapshot")
    assert "snapshot" not in spec_of(tmp_path).to_dict()  # records of other VMs unchanged
    bad = tmp_path / "bad.toml"
    bad.write_text(f'kernel = "{IMAGES / "daytime.elf"}"\nsnapshot = 3\n')
    with pytest.raises(SpecError, match="key 'snapshot': expected a folder path string"):
        load_spec(bad)


def test_the_image_builds_spec_names_its_snapshot_only_when_made(tmp_path: Path) -> None:
    made_one = tomllib.loads(spec_text("redis", "package redis", tmp_path / "r.toml", "i.cpio", 128, 6379, "snapshot"))
    assert made_one["snapshot"] == "snapshot" and made_one["vifs"] == [{}]
    assert "snapshot" not in tomllib.loads(spec_text("redis", "package redis", tmp_path / "r.toml", "i.cpio", 128, 0))


@pytest.fixture
def memo() -> Any:
    """The module's memos emptied around a test (other tests' digests are not ours)."""
    saved = dict(template._DIGESTS), dict(template._REMEMBERED)
    template._DIGESTS.clear()
    template._REMEMBERED.clear()
    yield
    template._DIGESTS.clear()
    template._REMEMBERED.clear()
    template._DIGESTS.update(saved[0])
    template._REMEMBERED.update(saved[1])


def test_digests_are_kept_in_the_state_dir_and_trusted_only_when_expected(tmp_path: Path, memo: None) -> None:
    data = tmp_path / "ram"
    data.write_bytes(b"r" * 10000)
    real = hashlib.sha256(b"r" * 10000).hexdigest()
    state = tmp_path / "state"
    state.mkdir()
    with template.remembered_digests(state):
        assert template.path_digest(data) == real
    rows = json.loads((state / template.DIGESTS_FILE).read_text())
    assert [r[-1] for r in rows] == [real] and rows[0][0] == str(data)
    assert oct((state / template.DIGESTS_FILE).stat().st_mode & 0o777) == "0o600"

    # A later command: the kept digest is used when it is the expected one...
    template._DIGESTS.clear()
    lie = "0" * 64
    rows[0][-1] = lie  # a damaged entry (the file is the same version)
    (state / template.DIGESTS_FILE).write_text(json.dumps(rows))
    with template.remembered_digests(state):
        assert template.path_digest(data, expect=lie) == lie  # the state dir's word, as the header expects
        # ...and any other answer is computed from the file: never a wrong "it differs"
        assert template.path_digest(data, expect=real) == real
    template._DIGESTS.clear()
    template._REMEMBERED.clear()
    assert template.path_digest(data, expect=lie) == real  # without the state dir: the file's


@pytest.mark.parametrize("content", [b"{not json", b'{"a": 1}', b'[["short"]]', b"\xff\xfe"])
def test_a_damaged_digest_file_is_an_empty_memo(tmp_path: Path, memo: None, content: bytes) -> None:
    data = tmp_path / "file"
    data.write_bytes(b"abc")
    (tmp_path / template.DIGESTS_FILE).write_bytes(content)
    with template.remembered_digests(tmp_path):
        assert template.path_digest(data) == hashlib.sha256(b"abc").hexdigest()
    rows = json.loads((tmp_path / template.DIGESTS_FILE).read_text())  # rewritten whole
    assert len(rows) == 1 and rows[0][0] == str(data)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary file left


def test_a_saved_vm_from_the_snapshot_keeps_its_deviceless_netdevs() -> None:
    """What a restore carries over from a saved VM's command line: the netdevs no device uses
    (the snapshot's restricted user networks, whose state the stream holds); vifs it makes
    again, so they are not copied."""
    from lightvm.mobility.restore import deviceless_netdevs

    argv = [
        "-netdev", "tap,id=n0,ifname=lvff168d-0,script=no,downscript=no",
        "-device", "virtio-net-device,netdev=n0,mac=52:54:0a:d5:4d:02",
        "-netdev", "user,id=snapshot-slirp0,restrict=on",
        "-device", "virtio-blk-device,drive=d0",
    ]  # fmt: skip
    assert deviceless_netdevs(argv) == ["-netdev", "user,id=snapshot-slirp0,restrict=on"]
    assert deviceless_netdevs(argv[:4]) == []  # a plain tap VM: nothing extra
    assert deviceless_netdevs([]) == []
