"""lightvmd's options from a TOML file (``lightvm daemon run|start --config FILE``).

A service wants its settings in a file (/etc/lightvm/lightvmd.toml) rather than in its
unit's command line. The file's keys are the long options of ``daemon run`` without
their dashes, with the same meaning and defaults::

    # /etc/lightvm/lightvmd.toml
    state-dir = "/run/lightvm"
    group = "lightvm"
    pool = ["vms/daytime.toml", "vms/noop.toml"]   # relative: to this file's folder
    pool-size = 4
    pool-memory = 4096
    accel = "auto"

An option given on the command line wins over the file; the file wins over the
default. How: :func:`take_defaults` replaces each option's default by None in the parser,
so after parsing, None means "not on the command line", and :func:`apply` fills those
from the file, then from the saved defaults. An unknown key, a wrong type or a value
outside an option's choices is one error naming the file and the key.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lightvm.errors import SpecError

NOT_FROM_FILE = {"help", "config", "func", "daemon_command", "command"}


def take_defaults(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Each option's default (by dest); the parser's own defaults become None.

    Options whose default is SUPPRESS (``--state-dir``: also accepted before the command,
    where a subparser default would overwrite it) stay as they are: absent means not given.
    """
    defaults: dict[str, Any] = {}
    for action in parser._actions:  # argparse has no public accessor for its options
        if not action.option_strings or action.dest in NOT_FROM_FILE:
            continue
        defaults[action.dest] = action.default
        if action.default is not argparse.SUPPRESS:
            action.default = None
    return defaults


def apply(args: argparse.Namespace, parser: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    """Fill the options not given on the command line from ``args.config``, then the defaults."""
    from_file = _read(args.config, parser) if getattr(args, "config", None) else {}
    for dest, default in defaults.items():
        if getattr(args, dest, None) is not None:
            continue
        if dest in from_file:
            setattr(args, dest, from_file[dest])
        elif default is not argparse.SUPPRESS:
            setattr(args, dest, default)


def _read(path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    import tomllib  # here: every CLI start imports this module (its parser needs take_defaults)

    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise SpecError(f"daemon config {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"daemon config {path}: not valid TOML: {exc}") from exc
    actions = {a.option_strings[-1].lstrip("-"): a for a in parser._actions if a.option_strings}
    base = Path(path).resolve().parent
    out: dict[str, Any] = {}
    for key, value in data.items():
        action = actions.get(key)
        if action is None or action.dest in NOT_FROM_FILE:
            known = ", ".join(sorted(k for k, a in actions.items() if a.dest not in NOT_FROM_FILE))
            raise SpecError(f"daemon config {path}: unknown key {key!r} (known: {known})")
        out[action.dest] = _value(path, key, action, value, base)
    return out


def _value(path: Path, key: str, action: argparse.Action, value: Any, base: Path) -> Any:
    where = f"daemon config {path}: {key}"
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else [value]
        return [_one(where, action, item, base) for item in items]
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        if not isinstance(value, bool):
            raise SpecError(f"{where}: want true or false, got {value!r}")
        return value
    return _one(where, action, value, base)


def _one(where: str, action: argparse.Action, value: Any, base: Path) -> Any:
    kind = action.type
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{where}: want an integer, got {value!r}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SpecError(f"{where}: want a number, got {value!r}")
        value = float(value)
    elif not isinstance(value, str):
        raise SpecError(f"{where}: want a string, got {value!r}")
    elif kind is Path:
        value = base / Path(value).expanduser()
    if action.choices is not None and value not in action.choices:
        raise SpecError(f"{where}: {value!r} is not one of {', '.join(map(str, action.choices))}")
    return value


__all__ = ["apply", "take_defaults"]
