"""lvinit (tinyx/init) on the host: the code the guest runs, through its command-line modes.

``lvinit --check-conf FILE`` parses an app.conf with the init's own parser and prints what it
would run; ``lvinit --dump-page FILE`` reads a NoXS region file through the init's seqlock
and validation (noxs-virtio/lib/noxs_validate.c, compiled in) and prints the hostname and
network configuration it would apply. Region files are written with lightvm.noxs.NoxsRegion,
hostile ones with tests/guestlib.py's HOSTILE_PAGES (the cases the unikernels and noxs-read
are held to). Also: build_init() and its error, and the binary being static.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from lightvm.errors import LightVMError
from lightvm.noxs import NoxsRegion, PageConfig, VbdConfig, VifConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from guestlib import HOSTILE_PAGES, hostile_base_config

import tinyx.init
from tinyx.init import InitBuildError, build_init

DEFAULT_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/", "TERM=linux"]


@pytest.fixture(scope="module")
def lvinit() -> Path:
    return build_init()


def run(lvinit: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(lvinit), *args], capture_output=True, text=True, timeout=30)


def check_conf(lvinit: Path, tmp_path: Path, text: str | bytes) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "app.conf"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return run(lvinit, "--check-conf", str(path))


def lines(result: subprocess.CompletedProcess[str]) -> list[tuple[str, str]]:
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return [tuple(ln.split("=", 1)) for ln in result.stdout.splitlines()]  # type: ignore[misc]


# ---- app.conf ----


def test_full_conf_is_what_the_init_runs(lvinit: Path, tmp_path: Path) -> None:
    text = (
        "# redis, as the image builder writes it\n"
        "\n"
        "name=redis-server\n"
        "port=6379\n"
        "arg=/usr/bin/redis-server\n"
        "arg=--save\n"
        "arg=\n"  # an empty argv element (redis' --save "")
        "arg=--bind 0.0.0.0 :: x=y\n"  # the value is everything after the first '='
        "env=MALLOC_ARENA_MAX=2\n"
        "env=PATH=/opt/bin\n"  # overrides the default PATH
        "   \t\n"  # a blank line of spaces and tabs
        "cwd=/var/lib/redis\n"
        "prestart=1\n"
        "stop_timeout_ms=600000"  # no final newline
    )
    assert lines(check_conf(lvinit, tmp_path, text)) == [
        ("name", "redis-server"),
        ("port", "6379"),
        ("cwd", "/var/lib/redis"),
        ("stop_timeout_ms", "600000"),
        ("prestart", "1"),
        ("argc", "4"),
        ("arg", "/usr/bin/redis-server"),
        ("arg", "--save"),
        ("arg", ""),
        ("arg", "--bind 0.0.0.0 :: x=y"),
        ("env", "HOME=/"),
        ("env", "TERM=linux"),
        ("env", "MALLOC_ARENA_MAX=2"),
        ("env", "PATH=/opt/bin"),
    ]


def test_probe_is_unescaped_and_printed_back_as_written(lvinit: Path, tmp_path: Path) -> None:
    """The request a prestarted app is sent once at the wait point: app.conf escapes, which the
    init decodes (--check-conf prints them escaped again, so the round trip is visible)."""
    text = BASE + "probe_send=PING\\r\\n\\t\\\\ \\x7f\\xC3\\xA9 a=b\nprobe_expect=+PONG\n"
    got = lines(check_conf(lvinit, tmp_path, text))
    assert ("probe_send", "PING\\r\\n\\t\\\\ \\x7f\\xc3\\xa9 a=b") in got
    assert ("probe_expect", "+PONG") in got
    assert not [kv for kv in lines(check_conf(lvinit, tmp_path, BASE)) if kv[0].startswith("probe")]


def test_minimal_conf_gets_the_defaults(lvinit: Path, tmp_path: Path) -> None:
    got = lines(check_conf(lvinit, tmp_path, "name=a\nport=0\narg=/bin/a\n"))
    assert got == [
        ("name", "a"),
        ("port", "0"),
        ("cwd", "/"),
        ("stop_timeout_ms", "5000"),
        ("prestart", "0"),
        ("argc", "1"),
        ("arg", "/bin/a"),
        *(("env", e) for e in DEFAULT_ENV),
    ]


def test_limits_themselves_are_accepted(lvinit: Path, tmp_path: Path) -> None:
    text = "name=" + "n" * 15 + "\nport=65535\n" + "".join(f"arg=/a{i}\n" for i in range(256))
    text += "".join(f"env=K{i}=v\n" for i in range(256))
    got = lines(check_conf(lvinit, tmp_path, text))
    assert ("name", "n" * 15) in got and ("port", "65535") in got and ("argc", "256") in got
    assert len([kv for kv in got if kv[0] == "env"]) == 256 + 3


BASE = "name=web\nport=80\narg=/bin/httpd\n"

# (app.conf text, the error line the init prints)
HOSTILE_CONFS: dict[str, tuple[str | bytes, str]] = {
    "unknown_key": (BASE + "user=root\n", "app.conf line 4: unknown key 'user' (known: name, port, arg, env, cwd"),
    "spaces_around_equals": ("name = web\n", "app.conf line 1: unknown key 'name '"),
    "no_equals": (BASE + "cwd /tmp\n", "app.conf line 4: no '=' (want key=value)"),
    "name_too_long": ("name=" + "x" * 16 + "\n", "app.conf line 1: name must be 1..15 bytes, not 16"),
    "name_empty": ("name=\n", "app.conf line 1: name must be 1..15 bytes, not 0"),
    "name_with_space": ("name=my app\n", "app.conf line 1: name must be printable ASCII without spaces"),
    "name_twice": (BASE + "name=other\n", "app.conf line 4: a second name= line"),
    "port_word": ("name=a\nport=http\n", "app.conf line 2: port 'http' is not a number 0..65535"),
    "port_too_big": ("name=a\nport=65536\n", "app.conf line 2: port '65536' is not a number 0..65535"),
    "port_negative": ("name=a\nport=-1\n", "app.conf line 2: port '-1' is not a number 0..65535"),
    "port_trailing_space": ("name=a\nport=80 \n", "app.conf line 2: port '80 ' is not a number"),
    "port_empty": ("name=a\nport=\n", "app.conf line 2: port '' is not a number"),
    "port_huge": ("name=a\nport=99999999999999999999\n", "app.conf line 2: port '9999999999999999' is not"),
    "port_twice": (BASE + "port=81\n", "app.conf line 4: a second port= line"),
    "relative_program": ("name=a\nport=0\narg=redis-server\n", "app.conf line 3: the first arg= must be the program's"),
    "empty_program": ("name=a\nport=0\narg=\n", "app.conf line 3: the first arg= must be the program's"),
    "too_many_args": (BASE + "arg=x\n" * 256, "app.conf line 259: more than 256 arg= lines"),
    "env_without_value": (BASE + "env=DEBUG\n", "app.conf line 4: env= wants KEY=VALUE"),
    "env_bad_key": (BASE + "env=MY-VAR=1\n", "app.conf line 4: env= wants KEY=VALUE"),
    "env_digit_first": (BASE + "env=1X=1\n", "app.conf line 4: env= wants KEY=VALUE"),
    "env_empty_key": (BASE + "env==1\n", "app.conf line 4: env= wants KEY=VALUE"),
    "env_twice": (BASE + "env=A=1\nenv=A=2\n", "app.conf line 5: env A set twice"),
    "too_many_env": (BASE + "".join(f"env=K{i}=v\n" for i in range(257)), "app.conf line 260: more than 256 env="),
    "cwd_relative": (BASE + "cwd=data\n", "app.conf line 4: cwd must be an absolute path"),
    "cwd_twice": (BASE + "cwd=/a\ncwd=/b\n", "app.conf line 5: a second cwd= line"),
    "stop_timeout_word": (BASE + "stop_timeout_ms=5s\n", "app.conf line 4: stop_timeout_ms must be 0..600000"),
    "stop_timeout_too_big": (BASE + "stop_timeout_ms=600001\n", "app.conf line 4: stop_timeout_ms must be 0..600000"),
    "prestart_two": (BASE + "prestart=2\n", "app.conf line 4: prestart must be 0 or 1"),
    "prestart_twice": (BASE + "prestart=1\nprestart=0\n", "app.conf line 5: a second prestart= line"),
    "probe_bad_escape": (BASE + "probe_send=a\\q\nprobe_expect=b\n", "app.conf line 4: probe_send: bad escape or NUL"),
    "probe_nul": (BASE + "probe_send=a\\x00\nprobe_expect=b\n", "app.conf line 4: probe_send: bad escape or NUL"),
    "probe_short_hex": (BASE + "probe_send=x\nprobe_expect=\\x4\n", "app.conf line 5: probe_expect: bad escape"),
    "probe_trailing_backslash": (BASE + "probe_send=x\\\n", "app.conf line 4: probe_send: bad escape or NUL"),
    "probe_empty_expect": (BASE + "probe_send=x\nprobe_expect=\n", "app.conf line 5: probe_expect must not be empty"),
    "probe_twice": (BASE + "probe_send=x\nprobe_send=y\n", "app.conf line 5: a second probe_send= line"),
    "probe_alone": (BASE + "probe_send=x\n", "app.conf: probe_send= and probe_expect= go together"),
    "probe_without_port": ("name=a\nport=0\narg=/x\nprobe_send=x\nprobe_expect=y\n", "app.conf: a probe needs a port"),
    "crlf": ("name=web\r\nport=80\r\n", "app.conf line 1: carriage return (use Unix line endings)"),
    "nul_byte": (b"name=web\nport=8\x000\n", "app.conf line 2: NUL byte"),
    "control_char": ("name=web\nport=80\narg=/bin/x\x1b[31m\n", "app.conf line 3: control character 0x1b"),
    "delete_char": ("name=web\x7f\n", "app.conf line 1: control character 0x7f"),
    "line_too_long": (BASE + "arg=" + "a" * 4100 + "\n", "app.conf line 4: longer than 4096 bytes"),
    "no_name": ("port=80\narg=/bin/x\n", "app.conf: no name= line"),
    "no_port": ("name=a\narg=/bin/x\n", "app.conf: no port= line (port=0: READY as soon as the app started)"),
    "no_arg": ("name=a\nport=80\n", "app.conf: no arg= line (the first is the program's absolute path)"),
    "empty_file": ("", "app.conf: no name= line"),
    "only_comments": ("# name=a\n#port=1\n", "app.conf: no name= line"),
}


@pytest.mark.parametrize("case", list(HOSTILE_CONFS))
def test_hostile_conf_is_one_line_naming_the_line(lvinit: Path, tmp_path: Path, case: str) -> None:
    text, expected = HOSTILE_CONFS[case]
    result = check_conf(lvinit, tmp_path, text)
    assert result.returncode == 1, result.stdout
    assert result.stdout == ""
    assert result.stderr.startswith("lvinit: " + expected), result.stderr
    assert result.stderr.count("\n") == 1


def test_conf_larger_than_64k(lvinit: Path, tmp_path: Path) -> None:
    result = check_conf(lvinit, tmp_path, BASE + "#" * 65536 + "\n")
    assert result.returncode == 1
    assert "is larger than 65536 bytes" in result.stderr


def test_missing_conf_and_usage(lvinit: Path, tmp_path: Path) -> None:
    missing = run(lvinit, "--check-conf", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "No such file or directory" in missing.stderr
    for args in ((), ("--check-conf",), ("--bogus", "x"), ("--dump-page", "a", "b")):
        result = run(lvinit, *args)
        assert result.returncode == 2 and "usage: lvinit" in result.stderr, args


# ---- the NoXS page ----


def dump(lvinit: Path, path: Path) -> subprocess.CompletedProcess[str]:
    return run(lvinit, "--dump-page", str(path))


def test_page_with_vifs_is_the_network_the_init_applies(lvinit: Path, tmp_path: Path) -> None:
    config = PageConfig(
        name="web-1",
        vifs=[
            VifConfig(mac=bytes.fromhex("525400000001"), ip="10.0.0.2", prefix=24, gateway="10.0.0.1", mtu=1400),
            VifConfig(mac=bytes.fromhex("525400000002"), ip="192.168.7.9", prefix=32),
            VifConfig(mac=bytes.fromhex("525400000003"), prefix=0),  # no address: just up
        ],
        vbds=[VbdConfig(sectors=2048)],
        tsc_hz=2_700_000_000,
    )
    with NoxsRegion.create(tmp_path / "region", 5) as region:
        region.write_config(config, host_time_ns=1_700_000_000_000_000_000)
    assert lines(dump(lvinit, tmp_path / "region")) == [
        ("name", "web-1"),
        ("hostname", "web-1"),
        ("features", "0x1"),
        ("wait_config", "0"),
        ("console_bell", "0"),
        ("generation", "2"),
        ("host_time_ns", "1700000000000000000"),
        ("tsc_hz", "2700000000"),
        ("sysctl_offset", "4096"),
        ("vif_count", "3"),
        *[(f"vif0.{k}", v) for k, v in (("id", "0"), ("mac", "52:54:00:00:00:01"), ("ip", "10.0.0.2"))],
        *[(f"vif0.{k}", v) for k, v in (("prefix", "24"), ("netmask", "255.255.255.0"), ("gateway", "10.0.0.1"))],
        ("vif0.mtu", "1400"),
        *[(f"vif1.{k}", v) for k, v in (("id", "1"), ("mac", "52:54:00:00:00:02"), ("ip", "192.168.7.9"))],
        *[(f"vif1.{k}", v) for k, v in (("prefix", "32"), ("netmask", "255.255.255.255"), ("gateway", "0.0.0.0"))],
        ("vif1.mtu", "1500"),
        *[(f"vif2.{k}", v) for k, v in (("id", "2"), ("mac", "52:54:00:00:00:03"), ("ip", "0.0.0.0"))],
        *[(f"vif2.{k}", v) for k, v in (("prefix", "0"), ("netmask", "0.0.0.0"), ("gateway", "0.0.0.0"))],
        ("vif2.mtu", "1500"),
        ("vbd_count", "1"),
    ]


def test_pool_placeholder_page(lvinit: Path, tmp_path: Path) -> None:
    with NoxsRegion.create(tmp_path / "region", 1) as region:
        region.write_config(PageConfig(name="pool-1", wait_config=True, console_bell=True))
    got = dict(lines(dump(lvinit, tmp_path / "region")))
    assert (got["wait_config"], got["console_bell"], got["features"], got["vif_count"]) == ("1", "1", "0xc", "0")
    assert got["tsc_hz"] == "0"  # no FEAT_TSC_HZ: no hint


def test_a_name_that_is_no_hostname_is_not_used(lvinit: Path, tmp_path: Path) -> None:
    with NoxsRegion.create(tmp_path / "region", 1) as region:
        region.write_config(PageConfig(name="a b\x01" + "c" * 60))  # 64 bytes, not NUL-terminated
    got = dict(lines(dump(lvinit, tmp_path / "region")))
    assert got["name"] == "a b?" + "c" * 60  # bounded at 64 bytes, made printable
    assert got["hostname"] == ""


@pytest.mark.parametrize("case", list(HOSTILE_PAGES))
def test_hostile_page_is_refused_as_the_unikernels_refuse_it(lvinit: Path, tmp_path: Path, case: str) -> None:
    mutate, expected = HOSTILE_PAGES[case]
    with NoxsRegion.create(tmp_path / "region", 2) as region:
        region.write_config(hostile_base_config())
        mutate(region)
    result = dump(lvinit, tmp_path / "region")
    assert result.returncode == 1, result.stdout
    assert result.stdout == ""
    assert result.stderr.startswith("lvinit: noxs: ") and result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr


def test_short_and_missing_region_files(lvinit: Path, tmp_path: Path) -> None:
    (tmp_path / "short").write_bytes(b"NOXS" + bytes(4096))
    result = dump(lvinit, tmp_path / "short")
    assert result.returncode == 1 and "lvinit: noxs: the region is 4100 bytes (want >= 8192)" in result.stderr
    assert dump(lvinit, tmp_path / "nope").returncode == 2


# ---- the build ----


def test_binary_is_static(lvinit: Path) -> None:
    """The initramfs has no libc: the init must carry its own (no PT_INTERP program header)."""
    data = lvinit.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2  # ELF64
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    types = [struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)]
    assert 3 not in types  # PT_INTERP
    print(f"lvinit: {len(data)} bytes")
    assert len(data) < 1024 * 1024


def test_build_failure_names_makes_last_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "Makefile").write_text("all:\n\t@echo first-line; echo 'main.c:1: error: boom' >&2; exit 3\n")
    monkeypatch.setattr(tinyx.init, "HERE", tmp_path)
    with pytest.raises(InitBuildError) as info:
        build_init()
    assert isinstance(info.value, LightVMError)
    message = str(info.value)
    assert "building lvinit failed" in message and "main.c:1: error: boom" in message and "first-line" in message
