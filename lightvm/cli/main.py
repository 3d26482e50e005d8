"""The ``lightvm`` command: the parser and the dispatch (the commands are in their group's module).

Exit status: 0 on success, 1 on a lightvm error (one line on stderr:
``lightvm: error: <what went wrong>``), 2 on a usage error, 130 when interrupted.
Scriptable interface (kept stable): ``create --json`` prints one JSON object per VM
(one line each) with ``name`` and ``boot_ms`` {qemu_up, resumed, guest_entry,
devices_up, ready}; ``list --json`` prints a JSON array; ``--state-dir`` (or
``$LIGHTVM_STATE_DIR``) keeps separate runs apart.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from lightvm.errors import LightVMError

DESCRIPTION = """\
lightvm: start single-application micro-VMs on QEMU as fast as containers.

A VM is described by a config file (TOML, or chaos-style JSON) naming its kernel
(a PVH ELF), memory, vCPUs, command line, vifs and disks. Each VM is one QEMU
process (-M microvm) whose devices are described to the guest in a NoXS page
(shared memory), with no control-plane daemon in the way.
"""

EPILOG = """\
examples:
  lightvm create examples/noop.toml            boot one VM, print the boot breakdown
  lightvm create examples/noop.toml -n 50      boot noop-0 .. noop-49
  lightvm list                                 what runs, what crashed
  lightvm shutdown noop                        clean guest poweroff, then destroy
  lightvm --state-dir /tmp/s create x.toml     keep this run apart from others
  lightvm image build redis-server             a Tinyx image (Linux + redis) in the image store
  lightvm host check                           what this host can run, and how to fix the rest
"""


def _state_parent() -> argparse.ArgumentParser:
    # --state-dir is accepted before or after the command; SUPPRESS keeps the
    # subcommand's default from overwriting a value given before it.
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--state-dir",
        type=Path,
        default=argparse.SUPPRESS,
        help="run dir holding the VMs' state (default: $LIGHTVM_STATE_DIR, /run/lightvm as root, "
        "else $XDG_RUNTIME_DIR/lightvm)",
    )
    return parent


class _VersionAction(argparse.Action):
    """``--version``: ``lightvm X.Y.Z``. The version is looked up only when asked for
    (importlib.metadata costs milliseconds that every other command would pay)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        from lightvm import version

        print(f"lightvm {version()}")
        parser.exit()


def build_parser(with_network: bool = True) -> argparse.ArgumentParser:
    """The argument parser. ``with_network`` adds ``network`` (imports pyroute2: slow)."""
    parent = _state_parent()
    parser = argparse.ArgumentParser(
        prog="lightvm",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[parent],
    )
    parser.add_argument("--version", action=_VersionAction, help="print lightvm's version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    from lightvm.cli import checkpoint, daemon, host, image, setup, vm

    vm.register(sub, parent)
    daemon.register(sub, parent)
    checkpoint.register(sub, parent)
    image.register(sub, parent)
    host.register(sub, parent)
    setup.register(sub, parent)

    from lightvm.bench import cli as bench_cli

    bench_cli.register(sub)

    if with_network:
        from lightvm.cli import network

        network.register(sub)
    return parser


_SIGTERM_OWNER = 0


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    if os.getpid() != _SIGTERM_OWNER:
        # A forked helper (pyroute2 forks some) inherited this handler: die as by default
        # instead of unwinding the parent's stack in the child.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    # Unwind like Ctrl-C, so a create being killed politely removes what it made.
    raise SystemExit(128 + signum)


def _wants_network(argv: list[str]) -> bool:
    return "network" in argv or not argv or any(a in ("-h", "--help") for a in argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lightvm`` command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(with_network=_wants_network(argv))
    args = parser.parse_args(argv)
    global _SIGTERM_OWNER
    _SIGTERM_OWNER = os.getpid()
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (an embedding program): keep its handler
        previous = None
    try:
        # A routed command asks lightvm.cli.backend who does the work (lightvmd or this process).
        result: Any = args.func(args)
        return int(result or 0)
    except LightVMError as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"lightvm: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lightvm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)  # main() called in-process: leave no trace


if __name__ == "__main__":
    sys.exit(main())
