"""What to build: a recipe (tinyx/apps/APP.toml), a guessed one, or a host ELF file.

A recipe names the Debian package, the command the init runs, the TCP port whose
accept means "serving" and the probe the kernel-trimming loop runs from the host::

    package = "redis-server"
    command = ["/usr/bin/redis-server", "--protected-mode", "no"]  # argv[0] absolute
    port = 6379                      # 0: READY as soon as the app is started
    memory = 128                     # MiB (optional, default 128)
    cwd = "/"                        # optional
    stop_timeout_ms = 5000           # optional
    prestart = true                  # optional: in a pooled shell, start the app before the
                                     #   VM's identity comes (it must listen on 0.0.0.0)
    exclude_packages = ["perl"]      # optional: installed as dependencies, files left out
    busybox = false                  # optional (default true): no /bin/busybox, /bin/sh and
                                     #   applet links (2 MB) for an app that runs no shell
    [probe]                          # optional; needs port > 0
    send = "PING\\r\\n"
    expect = "+PONG"
    [env]                            # optional
    KEY = "value"
    [files]                          # optional: path in the image = file next to the recipe,
    "/etc/app.conf" = "app.conf"     #   or { content = "...", mode = 0o644 },
                                     #   or { source = "x.conf", mode = 0o600 }

Parsing is strict: an unknown key, a wrong type or a relative argv[0] is one
TinyxError naming the file and the key. :func:`resolve` turns the command-line APP into
a Recipe: a path (with a slash) is a host ELF executable, APP.toml a recipe file, a
name with a recipe in tinyx/apps/ that recipe, any other valid Debian package name a
recipe whose command is guessed after the install (:func:`complete_generated`).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lightvm import paths
from lightvm.errors import TinyxError
from tinyx.image.elfdeps import ET_EXEC, read_elf

RECIPES = paths.tinyx_package() / "apps"
# Debian Policy 5.6.1: at least two characters, lower case letters, digits, + - .,
# starting with a letter or digit.
PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
IMAGE_NAME_RE = re.compile(r"[^A-Za-z0-9_.-]")
TOP_KEYS = (
    "package",
    "command",
    "port",
    "probe",
    "files",
    "memory",
    "env",
    "cwd",
    "stop_timeout_ms",
    "exclude_packages",
    "prestart",
    "busybox",
)
PROBE_KEYS = ("send", "expect")
FILE_KEYS = ("content", "source", "mode")
DEFAULT_MEMORY = 128
MEMORY_RANGE = (32, 65536)
FILE_MAX = 64 << 20
EXEC_DIRS = ("usr/sbin", "usr/bin")


@dataclass(frozen=True)
class Probe:
    """A TCP exchange with the app's port: send ``send``, expect ``expect`` in the reply."""

    send: str
    expect: str


@dataclass(frozen=True)
class ExtraFile:
    path: str  # absolute, in the image
    data: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class Recipe:
    """Everything the build needs to know about the app. ``package`` is None for a host
    ELF file (``host_elf``); ``command`` is empty until a guessed recipe is completed."""

    name: str
    origin: str  # the recipe file, "generated" or "host ELF"
    package: str | None
    command: tuple[str, ...]
    port: int = 0
    probe: Probe | None = None
    files: tuple[ExtraFile, ...] = ()
    memory: int = DEFAULT_MEMORY
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None
    stop_timeout_ms: int | None = None
    exclude_packages: tuple[str, ...] = ()
    prestart: bool = False  # a pooled shell starts the app at its wait point (lvinit)
    busybox: bool = True  # /bin/busybox + applet links (a shell for scripts and debugging)
    host_elf: Path | None = None
    guessed: tuple[str, ...] = field(default=())

    @property
    def generated(self) -> bool:
        return self.origin == "generated"


def image_name(text: str) -> str:
    """A name usable as the image folder and the VM spec's name."""
    name = IMAGE_NAME_RE.sub("-", text).lstrip(".-_") or "app"
    return name[:48]


def valid_package(name: str) -> bool:
    return bool(PACKAGE_RE.match(name))


def _err(src: Path, key: str, what: str) -> TinyxError:
    return TinyxError(f"{src}: {key}: {what}")


def _type(src: Path, key: str, value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise _err(src, key, f"must be {what}, not {type(value).__name__} {value!r}")
    return value


def _line_safe(src: Path, key: str, value: str) -> str:
    # app.conf is line-based: a newline or NUL would split or end a value
    if "\n" in value or "\r" in value or "\0" in value:
        raise _err(src, key, f"may not contain a newline or NUL: {value!r}")
    return value


def _abs_path(src: Path, key: str, value: Any) -> str:
    _type(src, key, value, str, "an absolute path (string)")
    _line_safe(src, key, value)
    parts = value.split("/")
    if not value.startswith("/") or value == "/" or ".." in parts:
        raise _err(src, key, f"must be an absolute path without '..', not {value!r}")
    return "/" + "/".join(p for p in parts if p)


def _command(src: Path, value: Any) -> tuple[str, ...]:
    _type(src, "command", value, list, "a list of strings (argv)")
    if not value:
        raise _err(src, "command", "must hold at least argv[0]")
    for i, arg in enumerate(value):
        _type(src, f"command[{i}]", arg, str, "a string")
        _line_safe(src, f"command[{i}]", arg)
    if not value[0].startswith("/"):
        raise _err(src, "command[0]", f"must be an absolute path, not {value[0]!r}")
    return tuple(value)


def _probe(src: Path, value: Any) -> Probe:
    _type(src, "probe", value, dict, "a table with send and expect")
    for k in value:
        if k not in PROBE_KEYS:
            raise _err(src, f"probe.{k}", f"unknown key (known: {', '.join(PROBE_KEYS)})")
    for k in PROBE_KEYS:
        if k not in value:
            raise _err(src, f"probe.{k}", "missing")
        _type(src, f"probe.{k}", value[k], str, "a string")
    if not value["expect"]:
        raise _err(src, "probe.expect", "must not be empty")
    return Probe(value["send"], value["expect"])


def _files(src: Path, value: Any) -> tuple[ExtraFile, ...]:
    _type(src, "files", value, dict, "a table {path in the image = file}")
    out = []
    for path, spec in value.items():
        key = f"files.{path!r}"
        dest = _abs_path(src, key, path)
        mode = 0o644
        if isinstance(spec, str):
            spec = {"source": spec}
        _type(src, key, spec, dict, "a path next to the recipe or a table {content|source, mode}")
        for k in spec:
            if k not in FILE_KEYS:
                raise _err(src, f"{key}.{k}", f"unknown key (known: {', '.join(FILE_KEYS)})")
        if ("content" in spec) == ("source" in spec):
            raise _err(src, key, "give exactly one of content and source")
        if "mode" in spec:
            mode = _type(src, f"{key}.mode", spec["mode"], int, "an integer such as 0o644")
            if not 0 <= mode <= 0o7777:
                raise _err(src, f"{key}.mode", f"must be a permission mode (0o0 .. 0o7777), not {mode:#o}")
        if "content" in spec:
            data = _type(src, f"{key}.content", spec["content"], str, "a string").encode()
        else:
            rel = _type(src, f"{key}.source", spec["source"], str, "a path relative to the recipe")
            file = src.parent / rel
            if not file.is_file():
                raise _err(src, f"{key}.source", f"{file} is not a file")
            if file.stat().st_size > FILE_MAX:
                raise _err(src, f"{key}.source", f"{file} is larger than {FILE_MAX >> 20} MiB")
            data = file.read_bytes()
        out.append(ExtraFile(dest, data, mode))
    return tuple(out)


def _env(src: Path, value: Any) -> tuple[tuple[str, str], ...]:
    _type(src, "env", value, dict, 'a table KEY = "value"')
    out = []
    for k, v in value.items():
        if not ENV_RE.match(k):
            raise _err(src, f"env.{k}", "not a valid environment variable name")
        _type(src, f"env.{k}", v, str, "a string")
        out.append((k, _line_safe(src, f"env.{k}", v)))
    return tuple(out)


def _exclude(src: Path, value: Any, package: str) -> tuple[str, ...]:
    _type(src, "exclude_packages", value, list, "a list of Debian package names")
    for i, name in enumerate(value):
        key = f"exclude_packages[{i}]"
        if not valid_package(_type(src, key, name, str, "a Debian package name")):
            raise _err(src, key, f"{name!r} is not a valid Debian package name")
        if name == package:
            raise _err(src, key, f"cannot leave out the app's own package {package}")
    return tuple(value)


def parse(src: Path, name: str | None = None) -> Recipe:
    """Read and check a recipe file; every problem is one TinyxError naming file and key."""
    try:
        data = tomllib.loads(src.read_text())
    except OSError as e:
        raise TinyxError(f"{src}: cannot read the recipe: {e.strerror}") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise TinyxError(f"{src}: not valid TOML: {e}") from e
    for k in data:
        if k not in TOP_KEYS:
            raise _err(src, k, f"unknown key (known: {', '.join(TOP_KEYS)})")
    for k in ("package", "command", "port"):
        if k not in data:
            raise _err(src, k, "missing (a recipe needs package, command and port)")
    package = _type(src, "package", data["package"], str, "a Debian package name")
    if not valid_package(package):
        raise _err(src, "package", f"{package!r} is not a valid Debian package name")
    port = _type(src, "port", data["port"], int, "a TCP port number (0: ready when started)")
    if not 0 <= port <= 65535:
        raise _err(src, "port", f"must be 0..65535, not {port}")
    probe = _probe(src, data["probe"]) if "probe" in data else None
    if probe is not None and port == 0:
        raise _err(src, "probe", "needs a port (port = 0 means no port to probe)")
    memory = _type(src, "memory", data.get("memory", DEFAULT_MEMORY), int, "MiB (an integer)")
    if not MEMORY_RANGE[0] <= memory <= MEMORY_RANGE[1]:
        raise _err(src, "memory", f"must be {MEMORY_RANGE[0]}..{MEMORY_RANGE[1]} MiB, not {memory}")
    stop = data.get("stop_timeout_ms")
    if stop is not None and _type(src, "stop_timeout_ms", stop, int, "milliseconds (an integer)") <= 0:
        raise _err(src, "stop_timeout_ms", f"must be positive, not {stop}")
    return Recipe(
        name=image_name(name or src.stem),
        origin=str(src),
        package=package,
        command=_command(src, data["command"]),
        port=port,
        probe=probe,
        files=_files(src, data.get("files", {})),
        memory=memory,
        env=_env(src, data.get("env", {})),
        cwd=_abs_path(src, "cwd", data["cwd"]) if "cwd" in data else None,
        stop_timeout_ms=stop,
        exclude_packages=_exclude(src, data.get("exclude_packages", []), package),
        prestart=_type(src, "prestart", data.get("prestart", False), bool, "true or false"),
        busybox=_type(src, "busybox", data.get("busybox", True), bool, "true or false"),
    )


def from_elf(path: Path) -> Recipe:
    """A host ELF executable: the image holds it and its NEEDED closure from the host."""
    if not path.is_file():
        raise TinyxError(f"{path}: no such file; give a path to an ELF executable, a recipe or a package name")
    info = read_elf(path)
    if info is None or not info.loadable:
        raise TinyxError(f"{path} is not an x86-64 ELF executable; give an ELF executable or a Debian package name")
    abspath = str(path.resolve())
    guessed = (f"host ELF {abspath}: command [{abspath}] without arguments, port 0 (READY when started)",)
    return Recipe(image_name(path.name), "host ELF", None, (abspath,), host_elf=path.resolve(), guessed=guessed)


def generated(package: str) -> Recipe:
    """A recipe for a package without one; its command is chosen after the install."""
    return Recipe(image_name(package), "generated", package, ())


def resolve(app: str, recipes: Path = RECIPES) -> Recipe:
    """The recipe for the APP given on the command line (see the module docstring)."""
    if app.endswith(".toml") and Path(app).is_file():
        return parse(Path(app))
    if "/" in app:
        return from_elf(Path(app))
    own = recipes / f"{app}.toml"
    if own.is_file():
        return parse(own, app)
    if not valid_package(app):
        raise TinyxError(
            f"{app!r} is not a valid Debian package name (lower case letters, digits, '+', '-', '.'); "
            "give a package name, a recipe (.toml) or a path to an ELF executable"
        )
    return generated(app)


def _score(package: str, name: str) -> tuple[int, str]:
    stems = {package, package.removesuffix("-server"), package.removesuffix("-daemon"), package.split("-")[0]}
    if name == package:
        return 0, name
    if name in stems or name.rstrip("d") in stems:
        return 1, name
    if name.startswith(package.split("-")[0]):
        return 2, name
    return 3, name


def complete_generated(recipe: Recipe, upper: Path) -> Recipe:
    """Pick the command of a generated recipe among the ELF executables the package put
    in /usr/sbin and /usr/bin (one named like the package first); say what was guessed."""
    found = []
    for d in EXEC_DIRS:
        for f in sorted((upper / d).glob("*")) if (upper / d).is_dir() else []:
            info = read_elf(f) if f.is_file() and not f.is_symlink() and f.stat().st_mode & 0o111 else None
            if info is not None and info.loadable and (info.interp or info.etype == ET_EXEC):
                found.append("/" + f.relative_to(upper).as_posix())
    if not found:
        raise TinyxError(
            f"package {recipe.package} has no ELF executable in /usr/sbin or /usr/bin; "
            f"write a recipe tinyx/apps/{recipe.name}.toml with its command"
        )
    assert recipe.package is not None
    best = min(found, key=lambda p: _score(recipe.package or "", p.rsplit("/", 1)[1]))
    others = [p for p in found if p != best]
    guess = (
        f"no recipe for {recipe.package}: guessed command [{best}] without arguments"
        + (f" (other executables: {', '.join(others[:8])}{' ...' if len(others) > 8 else ''})" if others else "")
        + "; port 0 (READY when started), no probe, 128 MiB; "
        + f"write tinyx/apps/{recipe.name}.toml to say otherwise"
    )
    return replace(recipe, command=(best,), guessed=(*recipe.guessed, guess))
