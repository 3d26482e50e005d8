"""tinyx/image/recipe.py: the shipped recipes parse, every bad recipe is one error naming
file and key, and APP resolves to a recipe, a guessed package or a host ELF file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lightvm.errors import LightVMError, TinyxError
from tinyx.image import recipe as rc

GOOD = """\
package = "redis-server"
command = ["/usr/bin/redis-server", "--save", "", "--port", "6379"]
port = 6379
memory = 96
cwd = "/var/lib/redis"
stop_timeout_ms = 2000
exclude_packages = ["perl"]
prestart = true
busybox = false
[probe]
send = "PING\\r\\n"
expect = "+PONG"
[env]
LANG = "C.UTF-8"
[files]
"/etc/app/extra.conf" = "extra.conf"
"/etc/app/inline.conf" = { content = "a = b\\n", mode = 0o600 }
"""


def write(tmp_path: Path, text: str, name: str = "app.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    (tmp_path / "extra.conf").write_text("from a file\n")
    return path


def test_a_full_recipe_parses_into_every_field(tmp_path: Path) -> None:
    r = rc.parse(write(tmp_path, GOOD), "redis")
    assert r.name == "redis" and r.package == "redis-server" and r.origin.endswith("app.toml")
    assert r.command == ("/usr/bin/redis-server", "--save", "", "--port", "6379")
    assert (r.port, r.memory, r.cwd, r.stop_timeout_ms) == (6379, 96, "/var/lib/redis", 2000)
    assert r.probe == rc.Probe("PING\r\n", "+PONG")
    assert r.env == (("LANG", "C.UTF-8"),)
    assert r.exclude_packages == ("perl",) and r.prestart and not r.busybox
    files = {f.path: f for f in r.files}
    assert files["/etc/app/extra.conf"].data == b"from a file\n" and files["/etc/app/extra.conf"].mode == 0o644
    assert files["/etc/app/inline.conf"].data == b"a = b\n" and files["/etc/app/inline.conf"].mode == 0o600
    assert not r.generated and r.guessed == ()


def test_defaults_for_the_optional_keys(tmp_path: Path) -> None:
    r = rc.parse(write(tmp_path, 'package = "hello"\ncommand = ["/usr/bin/hello"]\nport = 0\n'))
    assert r.name == "app" and r.memory == rc.DEFAULT_MEMORY and r.probe is None
    assert r.files == () and r.env == () and r.cwd is None and r.stop_timeout_ms is None
    assert r.busybox  # a shell and the applets unless the recipe says otherwise


@pytest.mark.parametrize("app", ["redis-server", "nginx-light", "memcached"])
def test_the_shipped_recipes_parse_with_a_probe_on_their_port(app: str) -> None:
    r = rc.resolve(app)
    assert r.origin == str(rc.RECIPES / f"{app}.toml") and r.package == app
    assert r.command[0].startswith("/") and r.port > 0 and r.probe is not None and r.probe.expect


def test_nginx_runs_in_the_foreground_with_its_own_config() -> None:
    r = rc.resolve("nginx-light")
    assert "daemon off;" in r.command and "/etc/tinyx/nginx.conf" in r.command
    conf = next(f for f in r.files if f.path == "/etc/tinyx/nginx.conf").data.decode()
    assert "error_log stderr" in conf and "user root;" in conf
    assert rc.resolve("memcached").command[1:3] == ("-u", "root")


BAD = [
    # (recipe text, key named in the error, words of the error)
    ('package = "x1"\ncommand = ["/a"]\nport = 1\ncolour = "red"\n', "colour", "unknown key"),
    ('command = ["/a"]\nport = 1\n', "package", "missing"),
    ('package = "x1"\nport = 1\n', "command", "missing"),
    ('package = "x1"\ncommand = ["/a"]\n', "port", "missing"),
    ('package = "X_1"\ncommand = ["/a"]\nport = 1\n', "package", "not a valid Debian package name"),
    ('package = 5\ncommand = ["/a"]\nport = 1\n', "package", "must be"),
    ('package = "x1"\ncommand = "/a"\nport = 1\n', "command", "list of strings"),
    ('package = "x1"\ncommand = []\nport = 1\n', "command", "argv[0]"),
    ('package = "x1"\ncommand = ["a"]\nport = 1\n', "command[0]", "absolute"),
    ('package = "x1"\ncommand = ["/a", 3]\nport = 1\n', "command[1]", "string"),
    ('package = "x1"\ncommand = ["/a", "b\\nc"]\nport = 1\n', "command[1]", "newline"),
    ('package = "x1"\ncommand = ["/a"]\nport = "80"\n', "port", "TCP port"),
    ('package = "x1"\ncommand = ["/a"]\nport = true\n', "port", "TCP port"),
    ('package = "x1"\ncommand = ["/a"]\nport = 70000\n', "port", "0..65535"),
    ('package = "x1"\ncommand = ["/a"]\nport = 1\nmemory = "128M"\n', "memory", "MiB"),
    ('package = "x1"\ncommand = ["/a"]\nport = 1\nmemory = 8\n', "memory", "32..65536"),
    ('package = "x1"\ncommand = ["/a"]\nport = 0\n[probe]\nsend = "a"\nexpect = "b"\n', "probe", "needs a port"),
    ('package = "x1"\ncommand = ["/a"]\nport = 1\n[probe]\nsend = "a"\n', "probe.expect", "missing"),
    ('package = "x1"\ncommand = ["/a"]\nport = 1\n[probe]\nsend = "a"\nexpect = ""\n', "probe.expect", "empty"),
    ('package = "x1"\ncommand = ["/a"]\nport = 1\n[probe]\nsend = "a"\nexpect = "b"\nx = 1\n', "probe.x", "unknown"),
    ('package = "x1"\ncommand = ["/a"]\nport = 1\nprobe = "PING"\n', "probe", "table"),
    ('package = "x1"\ncommand = ["/a"]\nport = 1\n[env]\n"1X" = "a"\n', "env.1X", "variable name"),
    ('package = "x1"\ncommand = ["/a"]\nport = 1\n[env]\nA = 1\n', "env.A", "string"),
    ('package = "x1"\ncommand = ["/a"]\nport = 1\n[files]\n"rel/x" = "extra.conf"\n', "files.'rel/x'", "absolute"),
    ('package = "x1"\ncommand = ["/a"]\nport = 1\n[files]\n"/a/../b" = "extra.conf"\n', "files.'/a/../b'", "'..'"),
    ('package = "x1"\ncommand = ["/a"]\nport = 1\n[files]\n"/x" = "nope.conf"\n', "files.'/x'.source", "not a file"),
    ('package = "x1"\ncommand = ["/a"]\nport = 1\n[files]\n"/x" = {}\n', "files.'/x'", "exactly one"),
    (
        'package = "x1"\ncommand = ["/a"]\nport = 1\n[files]\n"/x" = {content = "a", owner = 1}\n',
        "files.'/x'.owner",
        "unknown",
    ),
    (
        'package = "x1"\ncommand = ["/a"]\nport = 1\n[files]\n"/x" = {content = "a", mode = 99999}\n',
        "files.'/x'.mode",
        "0o7777",
    ),
    ('package = "x1"\ncommand = ["/a"]\nport = 1\ncwd = "tmp"\n', "cwd", "absolute"),
    ('package = "x1"\ncommand = ["/a"]\nport = 1\nstop_timeout_ms = 0\n', "stop_timeout_ms", "positive"),
    ('package = "x1"\ncommand = ["/a"]\nport = 1\nexclude_packages = ["x1"]\n', "exclude_packages[0]", "own package"),
    ('package = "x1"\ncommand = ["/a"]\nport = 1\nexclude_packages = "perl"\n', "exclude_packages", "list"),
    ('package = "x1"\ncommand = ["/a"]\nport = 1\nprestart = 1\n', "prestart", "true or false"),
    ('package = "x1"\ncommand = ["/a"]\nport = 1\nbusybox = "no"\n', "busybox", "true or false"),
]


@pytest.mark.parametrize(("text", "key", "words"), BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_each_bad_recipe_is_one_line_naming_the_file_and_the_key(
    tmp_path: Path, text: str, key: str, words: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(TinyxError) as err:
        rc.parse(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: ") and f": {key}" in msg and words in msg
    assert isinstance(err.value, LightVMError)


def test_a_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'package = "x1\n')
    with pytest.raises(TinyxError, match=f"^{path}: not valid TOML"):
        rc.parse(path)


@pytest.mark.parametrize("name", ["redis-server", "g++", "libc6", "lib32z1", "a.b+c-d"])
def test_valid_debian_package_names(name: str) -> None:
    assert rc.valid_package(name)


@pytest.mark.parametrize("name", ["a", "Redis", "-x", ".x", "re dis", "re_dis", "x;rm", "../x", ""])
def test_invalid_debian_package_names(name: str) -> None:
    assert not rc.valid_package(name)


def test_resolve_an_unknown_valid_package_gives_a_generated_recipe(tmp_path: Path) -> None:
    r = rc.resolve("some-tool", recipes=tmp_path)
    assert r.generated and r.package == "some-tool" and r.command == () and r.port == 0


def test_resolve_refuses_an_invalid_package_name_before_apt_sees_it(tmp_path: Path) -> None:
    with pytest.raises(TinyxError, match=r"not a valid Debian package name.*path to an ELF"):
        rc.resolve("Bad;Name", recipes=tmp_path)


def test_resolve_a_recipe_file_path(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD, "myredis.toml")
    r = rc.resolve(str(path))
    assert r.name == "myredis" and r.package == "redis-server"


def test_resolve_a_host_elf_executable() -> None:
    ls = Path(shutil.which("ls") or "/bin/ls")
    r = rc.resolve(str(ls))
    assert r.package is None and r.host_elf == ls.resolve() and r.command == (str(ls.resolve()),)
    assert r.name == "ls" and r.port == 0 and r.guessed and "port 0" in r.guessed[0]


def test_resolve_a_path_that_is_not_elf_or_does_not_exist(tmp_path: Path) -> None:
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(TinyxError, match="is not an x86-64 ELF executable"):
        rc.resolve(str(script))
    with pytest.raises(TinyxError, match="no such file"):
        rc.resolve(str(tmp_path / "missing"))


def _exe(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shutil.which("true") or "/bin/true", path)
    path.chmod(0o755)


def test_complete_generated_prefers_the_executable_named_like_the_package(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    for rel in ("usr/bin/aaa-helper", "usr/bin/mytool", "usr/sbin/mytool-admin"):
        _exe(upper / rel)
    (upper / "usr/bin/notes.txt").write_text("not a program")
    r = rc.complete_generated(rc.generated("mytool"), upper)
    assert r.command == ("/usr/bin/mytool",)
    assert len(r.guessed) == 1 and "guessed command [/usr/bin/mytool]" in r.guessed[0]
    assert "/usr/bin/aaa-helper" in r.guessed[0] and "tinyx/apps/mytool.toml" in r.guessed[0]


def test_complete_generated_takes_the_daemon_of_a_server_package(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    for rel in ("usr/bin/abc", "usr/sbin/foo"):
        _exe(upper / rel)
    assert rc.complete_generated(rc.generated("foo-server"), upper).command == ("/usr/sbin/foo",)


def test_complete_generated_without_an_executable_says_to_write_a_recipe(tmp_path: Path) -> None:
    (tmp_path / "upper/usr/share").mkdir(parents=True)
    with pytest.raises(TinyxError, match=r"no ELF executable.*tinyx/apps/data-only\.toml"):
        rc.complete_generated(rc.generated("data-only"), tmp_path / "upper")


def test_image_names_are_usable_as_folder_and_vm_names() -> None:
    assert rc.image_name("g++") == "g--"
    assert rc.image_name(".hidden") == "hidden"
    assert len(rc.image_name("x" * 100)) == 48
