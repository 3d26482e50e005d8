"""The thin path of the ``lightvm`` command: parse a routed VM command without argparse.

Why: ``lightvm create``/``list`` through lightvmd is a few ms of work, and the command was
paying ~10x that to import argparse, every command group and the bench harness only to
build a parser for a dozen commands (docs/cli-startup.md). :func:`parse` reads ``create``,
``list``, ``info``, ``destroy``, ``shutdown``, ``pause`` and ``unpause`` (the routed
commands of lightvm/cli/vm.py) in the forms people type, and gives the command the same
attributes argparse would (the global options --state-dir, --json and -q/--quiet
before or after the command, as argparse takes them); whether lightvmd or this process then does the work is
lightvm/cli/backend.py's choice, as on the full path.

Anything else returns None and main builds the full parser: ``-h``, ``--version``, unknown
or abbreviated options, short options with their value attached (``-n5``), ``--``, a value
or operand starting with ``-``, a bad number or accelerator, a wrong count of operands. So
help, usage errors and their exit status 2 come from argparse itself, unchanged.
The table below mirrors vm.register; tests/unit/test_thin.py checks that the two give the
same namespace for each form, and that each option of vm.register is known here.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import SimpleNamespace
    from typing import Any

    Option = tuple[str, Any]  # (dest, kind)

# types.SimpleNamespace, which sys.implementation is an instance of: importing `types` costs
# ~0.2-0.3 ms of an installed wheel's ~9 ms `python3 -c pass` (docs/cli-startup.md).
_NAMESPACE: type[SimpleNamespace] = type(sys.implementation)  # type: ignore[assignment]  # typeshed: _implementation

FLAG = "flag"  # store_true
APPEND = "append"  # action="append" of strings
ACCELS = ("auto", "kvm", "tcg")

# command -> ({option string: (dest, kind)}, operand dest, operand count: 1, "*" or "+", defaults)
# kind: FLAG, APPEND, str, int, float, or a tuple of choices.
COMMANDS: dict[str, tuple[dict[str, Option], str | None, int | str, dict[str, Any]]] = {
    "create": (
        {
            "--name": ("name", str),
            "--accel": ("accel", ACCELS),
            "-n": ("count", int),
            "--count": ("count", int),
            "-j": ("jobs", int),
            "--jobs": ("jobs", int),
            "--timeout": ("timeout", float),
            "--publish": ("publish", APPEND),
            "--no-snapshot": ("no_snapshot", FLAG),
        },
        "config",
        1,
        # overrides: the KEY=VALUE operands, which argparse reads (a second operand: not taken here)
        {
            "name": None,
            "accel": "auto",
            "count": 1,
            "jobs": None,
            "timeout": 10.0,
            "overrides": [],
            "no_snapshot": False,
        },
    ),
    "list": ({}, None, 0, {}),
    "info": ({}, "name", 1, {}),
    "destroy": ({"--all": ("all", FLAG)}, "names", "*", {"all": False}),
    "shutdown": (
        {"--keep": ("keep", FLAG), "--timeout": ("timeout", float)},
        "names",
        "+",
        {"keep": False, "timeout": 5.0},
    ),
    "pause": ({}, "names", "+", {}),
    "unpause": ({}, "names", "+", {}),
}
STATE_DIR = "--state-dir"
# The global options (lightvm/cli/parser.py), before or after the command; stored only when
# given, as argparse does (main.fill_globals adds the rest). -v is left to argparse: a
# command asking for logs pays for the parser (and logging) anyway.
GLOBALS: dict[str, Option] = {
    STATE_DIR: ("state_dir", str),
    "--json": ("json", FLAG),
    "-q": ("quiet", FLAG),
    "--quiet": ("quiet", FLAG),
}


def _value(kind: Any, text: str) -> Any:
    """``text`` converted as argparse would; raises ValueError where argparse would refuse it."""
    if isinstance(kind, tuple):
        if text not in kind:
            raise ValueError(text)
        return text
    return kind(text)


def parse(argv: list[str]) -> SimpleNamespace | None:
    """The namespace argparse would give for ``argv`` (``func``, ``command``, the command's
    options and operands, ``state_dir`` only when given), or None: a form left to argparse.

    ``config`` and ``state_dir`` are strings here (argparse makes Paths); the commands
    pass them to what accepts either.
    """
    values: dict[str, Any] = {}
    i = 0
    while i < len(argv) and argv[i] not in COMMANDS:  # before the command: the global options
        i = _option(argv, i, GLOBALS, values)
        if i < 0:
            return None
    if i >= len(argv):
        return None
    command = argv[i]
    options, operand, count, defaults = COMMANDS[command]
    options = {**options, **GLOBALS}
    for key, default in defaults.items():
        values.setdefault(key, default)
    if ("publish", APPEND) in options.values():
        values["publish"] = []
    operands: list[str] = []
    run_ended = False  # operands must be one run: argparse refuses some splits (destroy a --all b)
    i += 1
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-"):
            i = _option(argv, i, options, values)
            if i < 0:
                return None
            run_ended = bool(operands)
            continue
        if run_ended:
            return None
        operands.append(arg)
        i += 1
    if (count == 1 and len(operands) != 1) or (count == 0 and operands) or (count == "+" and not operands):
        return None
    if operand is not None:
        values[operand] = operands[0] if count == 1 else operands

    from lightvm.cli import vm

    func: Callable[[Any], int] = getattr(vm, f"cmd_{command}")
    return _NAMESPACE(command=command, func=func, **values)


def _option(argv: list[str], i: int, options: dict[str, Option], values: dict[str, Any]) -> int:
    """Store the option at ``argv[i]`` in ``values``; the index after it, or -1: not a form we take."""
    arg = argv[i]
    name, eq, attached = arg.partition("=")
    if name not in options or (eq and not name.startswith("--")):
        return -1  # unknown, abbreviated, -h, --version, --, or -n=5
    dest, kind = options[name]
    if kind == FLAG:
        if eq:
            return -1  # argparse: "ignored explicit argument"
        values[dest] = True
        return i + 1
    if eq:
        text, after = attached, i + 1
    else:
        if i + 1 >= len(argv) or argv[i + 1].startswith("-"):
            return -1  # missing value, or one argparse might read as an option
        text, after = argv[i + 1], i + 2
    try:
        value = _value(str if kind == APPEND else kind, text)
    except ValueError:
        return -1  # argparse reports it
    if kind == APPEND:
        values[dest] = [*values.get(dest, []), value]
    else:
        values[dest] = value
    return after
