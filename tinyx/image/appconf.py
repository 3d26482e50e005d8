"""/etc/tinyx/app.conf: how the init (tinyx/init, lvinit) learns what to run.

The format is the interface fixed between the image builder and the init: ``key=value``
lines; ``name=`` (at most 15 bytes: the boot record's app name), ``port=`` (0: READY as
soon as the app is started), one ``arg=`` per argv element in order (argv[0] first,
absolute), then optional ``env=KEY=VALUE``, ``cwd=``, ``stop_timeout_ms=`` and
``prestart=1`` lines, and the recipe's ``[probe]`` as ``probe_send=`` / ``probe_expect=``
(escaped: ``\\r \\n \\t \\\\ \\xHH``): a prestarted app gets that request once at the
pool shell's wait point, so that its first client does not pay for its first request
(docs/tinyx.md, "The wait point").
``#`` lines and empty lines are comments. A value runs to the end of its line, so it
may hold '=' and spaces but no newline (the recipe parser refuses those).
"""

from __future__ import annotations

from lightvm.errors import TinyxError
from tinyx.image.recipe import Recipe

PATH = "etc/tinyx/app.conf"
NAME_MAX = 15


def app_name(name: str) -> str:
    """The name as the boot record holds it: at most 15 bytes (cut at a UTF-8 boundary)."""
    raw = name.encode()[:NAME_MAX]
    return raw.decode(errors="ignore")


def render(recipe: Recipe) -> str:
    """The app.conf text of a complete recipe."""
    if not recipe.command or not recipe.command[0].startswith("/"):
        raise TinyxError(f"{recipe.name}: the command must start with an absolute path, not {recipe.command!r}")
    values = [*recipe.command, *(f"{k}={v}" for k, v in recipe.env), recipe.cwd or ""]
    if any(c in v for v in values for c in "\n\r\0"):
        raise TinyxError(f"{recipe.name}: a command, env or cwd value holds a newline or NUL")
    lines = [
        f"# {recipe.name}: written by the Tinyx image builder from {recipe.origin}",
        f"name={app_name(recipe.name)}",
        f"port={recipe.port}",
        *(f"arg={a}" for a in recipe.command),
        *(f"env={k}={v}" for k, v in recipe.env),
    ]
    if recipe.cwd:
        lines.append(f"cwd={recipe.cwd}")
    if recipe.stop_timeout_ms is not None:
        lines.append(f"stop_timeout_ms={recipe.stop_timeout_ms}")
    if recipe.prestart:
        lines.append("prestart=1")
    if recipe.probe is not None and recipe.port:
        if "\0" in recipe.probe.send + recipe.probe.expect:
            raise TinyxError(f"{recipe.name}: the probe holds a NUL byte (the init's values are C strings)")
        lines += [f"probe_send={escape(recipe.probe.send)}", f"probe_expect={escape(recipe.probe.expect)}"]
    return "\n".join(lines) + "\n"


def escape(value: str) -> str:
    """A probe value as app.conf holds it: one line, the init's escapes (lvinit's unescape)."""
    named = {"\r": "\\r", "\n": "\\n", "\t": "\\t", "\\": "\\\\"}
    out = []
    for byte in value.encode():
        ch = chr(byte)
        out.append(named.get(ch) or (ch if 0x20 <= byte <= 0x7E else f"\\x{byte:02x}"))
    return "".join(out)


def parse(text: str) -> dict[str, list[str]]:
    """app.conf -> {key: [values in order]} (what the init reads; for tests and checks)."""
    out: dict[str, list[str]] = {}
    for num, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise TinyxError(f"app.conf line {num}: not key=value: {line!r}")
        out.setdefault(key, []).append(value)
    return out
