"""The ``lightvm`` argument parser: every command group's ``register``, --help, --version.

Apart from lightvm/cli/main.py because building it costs more than a routed command through
lightvmd may (argparse, every group's module, the bench harness's options): main builds it
only when the thin path (lightvm/cli/thin.py) does not take the command.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

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
  lightvm run daytime                          a quick VM: console follows, Ctrl-C destroys it
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
    from lightvm.cli import checkpoint, daemon, events, host, image, run, setup, vm

    vm.register(sub, parent)
    run.register(sub, parent)
    daemon.register(sub, parent)
    checkpoint.register(sub, parent)
    image.register(sub, parent)
    host.register(sub, parent)
    events.register(sub, parent)
    setup.register(sub, parent)

    from lightvm.bench import cli as bench_cli

    bench_cli.register(sub)

    if with_network:
        from lightvm.cli import network

        network.register(sub)
    return parser
