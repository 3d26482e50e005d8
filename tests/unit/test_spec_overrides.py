"""``create cfg.toml KEY=VALUE``: overrides checked by the spec's own checks, errors naming
the key (lightvm/spec.py: parse_overrides, check_overrides, load_spec(overrides=))."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_spec import make_elf, write

from lightvm.errors import SpecError
from lightvm.spec import check_overrides, load_spec, parse_overrides


@pytest.fixture
def config(tmp_path: Path) -> Path:
    make_elf(tmp_path / "guest.elf")
    return write(tmp_path, 'kernel = "guest.elf"\nmemory = "8M"\ncmdline = "a"\n')


def test_overrides_replace_the_files_keys(config: Path) -> None:
    overrides = parse_overrides(["memory=64M", "vcpus=2", "cmdline=console=ttyS0 quiet", "name=other"])
    assert overrides == {"memory": 64, "vcpus": 2, "cmdline": "console=ttyS0 quiet", "name": "other"}
    spec = load_spec(config, overrides=overrides)
    assert (spec.name, spec.memory_mib, spec.vcpus, spec.cmdline) == ("other", 64, 2, "console=ttyS0 quiet")
    plain = load_spec(config)
    assert (plain.name, plain.memory_mib, plain.vcpus, plain.cmdline) == ("vm", 8, 1, "a")


def test_an_empty_value_is_a_value(config: Path) -> None:
    assert load_spec(config, overrides=parse_overrides(["cmdline="])).cmdline == ""


def test_a_path_is_taken_from_the_working_dir(tmp_path: Path, config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "sub"
    other.mkdir()
    make_elf(other / "k2.elf")
    monkeypatch.chdir(other)
    overrides = parse_overrides(["kernel=k2.elf"])
    assert overrides == {"kernel": str(other / "k2.elf")}
    assert load_spec(config, overrides=overrides).kernel == other / "k2.elf"


@pytest.mark.parametrize(
    ("items", "words"),
    [
        (["memory"], "override 'memory': write KEY=VALUE"),
        (["=3"], "write KEY=VALUE"),
        (["memory=64X"], "override memory='64X': cannot parse size"),
        (["memory=1M"], "override memory='1M': 1 MiB is below"),
        (["vcpus=two"], "override vcpus='two': expected an integer"),
        (["vcpus=0"], "override vcpus=0: 0 is out of range 1..64"),
        (["name=-x"], "override name='-x': invalid VM name"),
        (["kernel=/nonexistent/k.elf"], "override kernel='/nonexistent/k.elf': /nonexistent/k.elf does not exist"),
        (["vifs=x"], "unknown key 'vifs' (keys: name, kernel,"),
        (["colour=red"], "override colour='red': unknown key 'colour'"),
        ([f"cmdline={'x' * 3000}"], "longer than 2048 bytes"),
    ],
)
def test_bad_overrides_name_the_key(items: list[str], words: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_overrides(items)
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_the_daemons_check_refuses_what_the_client_should_have(config: Path) -> None:
    """lightvmd gets the mapping as JSON and checks it again: a relative path or a string
    vcpus from a client that skipped parse_overrides is refused, naming the key."""
    with pytest.raises(SpecError, match=r"override kernel='k\.elf': expected an absolute path"):
        check_overrides({"kernel": "k.elf"})
    with pytest.raises(SpecError, match="override vcpus='2': expected an integer"):
        check_overrides({"vcpus": "2"})
    with pytest.raises(SpecError, match="boolean true"):
        check_overrides({"memory": True})


def test_the_whole_spec_is_validated_after_the_overrides(config: Path, tmp_path: Path) -> None:
    """An override valid alone can make the spec invalid: a unikernel given an initrd."""
    initrd = tmp_path / "initrd.cpio"
    initrd.write_bytes(b"x")
    with pytest.raises(SpecError, match="only Linux guests take an initrd"):
        load_spec(config, overrides=parse_overrides([f"initrd={os.fspath(initrd)}"]))
