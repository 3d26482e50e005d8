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


# The global options: accepted before or after the command (and after a group's action,
# ``lightvm network list --json``). Their default is SUPPRESS so that a subcommand's parser
# does not overwrite a value given before it; main.fill_globals sets the
# defaults after parsing.
def _add_globals(p: argparse.ArgumentParser, count: int = 4) -> None:
    """Add the first ``count`` global options to ``p``; one ``p`` already has (its own ``--json``
    help, say) only loses its default, so that it cannot undo the same option given before
    the command."""
    known = p._option_string_actions
    for flags, kwargs in (
        (
            ("--state-dir",),
            {
                "type": Path,
                "help": "run dir holding the VMs' state (default: $LIGHTVM_STATE_DIR, /run/lightvm as root, "
                "else $XDG_RUNTIME_DIR/lightvm)",
            },
        ),
        (
            ("--json",),
            {
                "action": "store_true",
                "help": "print JSON (errors too: {error, kind, hint} on stdout; docs/cli.md)",
            },
        ),
        (("-q", "--quiet"), {"action": "store_true", "help": "no progress lines or notes on stderr"}),
        (
            ("-v", "--verbose"),
            {"action": _CountVerbose, "help": "log the toolstack's steps on stderr (-vv: and QMP traffic)"},
        ),
    )[:count]:
        present = [known[f] for f in flags if f in known]
        if present:
            for action in present:
                action.default = argparse.SUPPRESS
            continue
        p.add_argument(*flags, default=argparse.SUPPRESS, **kwargs)


def _state_parent() -> argparse.ArgumentParser:
    """The parent parser of the commands: --state-dir (the other global options are added by
    :func:`_globalize` once every command is registered, next to a command's own ``--json``)."""
    parent = argparse.ArgumentParser(add_help=False)
    _add_globals(parent, count=1)
    return parent


def _globalize(p: argparse.ArgumentParser) -> None:
    """Give the global options to ``p`` and every (sub)command parser under it."""
    _add_globals(p)
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in {id(c): c for c in action.choices.values()}.values():
                _globalize(child)


class _CountVerbose(argparse.Action):
    """``-v``, counted over the whole command line: argparse's ``count`` would start again in
    the subcommand's parser (its own namespace, copied over the top one's), so that ``-v
    list -v`` gave 1. The count lives on :class:`Parser` for the one parse under way."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, *args: Any) -> None:
        Parser.verbose_count += 1
        setattr(namespace, self.dest, Parser.verbose_count)


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors are a JSON object on stdout under ``--json``
    (exit status 2 still), like every other error of a ``--json`` command."""

    json_errors = False  # set by main when the command line has --json
    verbose_count = 0  # -v seen so far in this parse (_CountVerbose)
    top = False  # the top-level parser: a parse of it starts the count again

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if self.top:
            Parser.verbose_count = 0
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> None:  # type: ignore[override]
        if Parser.json_errors:
            from lightvm.cli import output

            output.print_error(message, "UsageError", f"{self.prog} --help", as_json=True)
            self.exit(2)
        super().error(message)


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
    parser = Parser(
        prog="lightvm",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[parent],
    )
    parser.top = True
    parser.add_argument("--version", action=_VersionAction, help="print lightvm's version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    from lightvm.cli import checkpoint, daemon, events, host, image, run, setup, template, vm

    vm.register(sub, parent)
    run.register(sub, parent)
    daemon.register(sub, parent)
    checkpoint.register(sub, parent)
    template.register(sub, parent)
    image.register(sub, parent)
    host.register(sub, parent)
    events.register(sub, parent)
    setup.register(sub, parent)

    from lightvm.bench import cli as bench_cli

    bench_cli.register(sub)

    if with_network:
        from lightvm.cli import network

        network.register(sub)
    _register_completion(sub, parent)
    _globalize(parser)
    return parser


def _register_completion(sub: Any, parent: argparse.ArgumentParser) -> None:
    """``completion SHELL``: registered here, next to build_parser, which the script is
    generated from (lightvm/cli/completion.py writes it from the parser it is given)."""
    p = sub.add_parser(
        "completion",
        parents=[parent],
        help="print a bash or zsh completion script",
        description="Print a completion script for SHELL, generated from lightvm's parser: commands, options, "
        "VM names (from lightvm list) and file names. bash: lightvm completion bash > "
        "~/.local/share/bash-completion/completions/lightvm; zsh: lightvm completion zsh > "
        "~/.zfunc/_lightvm with fpath+=(~/.zfunc) before compinit (docs/cli.md).",
    )
    p.add_argument("shell", choices=("bash", "zsh"), metavar="SHELL", help="bash or zsh")
    p.set_defaults(func=_cmd_completion)


def _cmd_completion(args: argparse.Namespace) -> int:
    from lightvm.cli import completion

    parser = build_parser(with_network=True)
    script = completion.bash_script(parser) if args.shell == "bash" else completion.zsh_script(parser)
    print(script, end="")
    return 0
