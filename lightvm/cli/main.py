"""The ``lightvm`` command: the parser and the dispatch (the commands are in their group's module).

Exit status: 0 on success, 1 on a lightvm error (one line on stderr:
``lightvm: error: <what went wrong>``), 2 on a usage error, 130 when interrupted.
Global options, before or after the command: ``--state-dir`` (or ``$LIGHTVM_STATE_DIR``)
keeps separate runs apart, ``--json``, ``-q/--quiet``, ``-v/--verbose`` (stdlib logging on
stderr; lightvm/cli/logsetup.py). Scriptable interface (kept stable, docs/cli.md):
``create --json`` prints one JSON object per VM (one line each) with ``name`` and
``boot_ms`` {qemu_up, resumed, guest_entry, devices_up, ready}; ``list --json`` prints a
JSON array; under ``--json`` an error is one JSON object {error, kind, hint} on stdout
(lightvm/cli/output.py), with the same exit status.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal's C half (no stub): signal builds enums, ~0.6 ms
import os
import sys

from lightvm.errors import LightVMError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    import argparse
    from types import FrameType
    from typing import Any

# What this module imports is paid by every command (it is the console script's entry
# point): os, _signal, sys and lightvm.errors. The parser (argparse and every command group)
# is in lightvm/cli/parser.py, built only when lightvm/cli/thin.py does not take the
# command (docs/cli-startup.md).


def build_parser(with_network: bool = True) -> argparse.ArgumentParser:
    """The argument parser (lightvm.cli.parser). ``with_network`` adds ``network`` (imports pyroute2: slow)."""
    from lightvm.cli import parser

    return parser.build_parser(with_network)


_SIGTERM_OWNER = 0


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    if os.getpid() != _SIGTERM_OWNER:
        # A forked helper (pyroute2 forks some) inherited this handler: die as by default
        # instead of unwinding the parent's stack in the child.
        _signal.signal(signum, _signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    # Unwind like Ctrl-C, so a create being killed politely removes what it made.
    raise SystemExit(128 + signum)


def _wants_network(argv: list[str]) -> bool:
    return "network" in argv or not argv or any(a in ("-h", "--help") for a in argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lightvm`` command; returns the exit status."""
    command_line = argv is None  # the lightvm command itself, not a caller in this process
    argv = sys.argv[1:] if argv is None else argv
    from lightvm.cli import thin

    args: Any = thin.parse(argv)  # a routed VM command in a form it knows, else None
    if args is None:
        from lightvm.cli import parser

        parser.Parser.json_errors = "--json" in argv
        try:
            args = build_parser(with_network=_wants_network(argv)).parse_args(argv)
        finally:
            parser.Parser.json_errors = False
    fill_globals(args)
    if args.verbose and not getattr(args, "own_logging", False):  # daemon run sets up its own
        from lightvm.cli import logsetup

        logsetup.configure(args.verbose)
    code = _run(args)
    if command_line and getattr(args, "served_by_lightvmd", False):
        _exit_now(code)
    return code


# The global options' values when not given (argparse leaves them out: lightvm/cli/parser.py).
GLOBAL_DEFAULTS = {"json": False, "quiet": False, "verbose": 0}


def fill_globals(args: Any) -> None:
    """Give ``args`` the global options it was not given (both parse paths leave them out)."""
    for key, value in GLOBAL_DEFAULTS.items():
        if not hasattr(args, key):
            setattr(args, key, value)


def _exit_now(code: int) -> None:
    """End the process at once after a command lightvmd served: the interpreter's
    finalization (module teardown, garbage collection) was ~20 % of ``python3 -c pass``
    here (docs/cli-startup.md), and such a command leaves nothing to finalize: no thread,
    no atexit handler, no child, its socket closed. Only the standard streams are flushed;
    if that fails (a closed pipe), return and let the interpreter report it as usual."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        return
    os._exit(code)


def _run(args: Any) -> int:
    """Run the parsed command: exit status 0, 1 (a lightvm error, one line), 130 (interrupted)."""
    global _SIGTERM_OWNER
    _SIGTERM_OWNER = os.getpid()
    try:
        previous = _signal.signal(_signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (an embedding program): keep its handler
        previous = None
    try:
        # A routed command asks lightvm.cli.backend who does the work (lightvmd or this process).
        result: Any = args.func(args)
        return int(result or 0)
    except LightVMError as exc:
        from lightvm.cli import output

        output.print_exception(exc, getattr(args, "json", False))
        return 1
    except KeyboardInterrupt:
        if getattr(args, "json", False):
            from lightvm.cli import output

            output.print_error("interrupted", "Interrupted", output.HINTS["Interrupted"], as_json=True)
        else:
            print("lightvm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    finally:
        if previous is not None:
            _signal.signal(_signal.SIGTERM, previous)  # main() called in-process: leave no trace


if __name__ == "__main__":
    sys.exit(main())
