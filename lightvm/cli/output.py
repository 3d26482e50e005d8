"""How the ``lightvm`` command reports errors, as one line or (``--json``) one JSON object.

Why one place: every command's error comes out of main (a lightvm error), argparse (a usage
error) or an interrupt, and a script driving ``lightvm --json`` must be able to read each of
them the same way. Under ``--json`` the error is one JSON object on **stdout**, one line::

    {"error": "no VM named 'x' in /run/lightvm", "kind": "NotFoundError", "hint": "lightvm list ..."}

stdout because that is the stream a ``--json`` caller parses: it reads one JSON document per
line (or the whole of ``list --json``), and an object with an ``error`` key is the failure;
the exit status is unchanged (1 a lightvm error, 2 a usage error, 130 interrupted). Without
``--json`` the error is the one line ``lightvm: error: <message>`` on stderr, as always.

``kind`` is the exception's class name in lightvm/errors.py (``UsageError`` for argparse,
``Interrupted`` for Ctrl-C/SIGTERM). ``hint`` is what to run next: the error's own ``hint``
attribute when it has one, else a line by kind (below), else null. Imported only when an
error is printed (the thin path pays nothing for it).
"""

from __future__ import annotations

import json
import sys

# The next step per error kind (a class of lightvm/errors.py or one of its bases). The message
# already says what failed and, usually, what to do; the hint is the generic next command.
HINTS = {
    "NotFoundError": "lightvm list (or lightvm network list) shows what exists in this state dir",
    "ExistsError": "pick another --name, or lightvm destroy NAME first",
    "SpecError": "fix the config file named in the message (docs/config.md)",
    "AccelError": "lightvm host check says which accelerator works here; --accel tcg always does",
    "CapabilityError": "run as root, or lightvm host check for what is missing",
    "NetworkError": "lightvm host check checks the host's networking",
    "StateError": "lightvm list shows each VM's status",
    "LaunchError": "lightvm host check checks QEMU; the message names QEMU's log",
    "QMPError": "lightvm info NAME shows the VM's QEMU status",
    "GuestError": "lightvm console NAME shows what the guest printed",
    "TinyxError": "the message names the step that failed; lightvm host check checks the host",
    "SetupError": "the message says what to run",
    "UsageError": "lightvm --help",
    "Interrupted": "what the command had made was removed; run it again",
}


def hint_for(exc: BaseException) -> str | None:
    """The hint of ``exc``: its ``hint`` attribute, else the first of its classes in HINTS."""
    own = getattr(exc, "hint", None)
    if isinstance(own, str) and own:
        return own
    for cls in type(exc).__mro__:
        if cls.__name__ in HINTS:
            return HINTS[cls.__name__]
    return None


def error_object(message: str, kind: str, hint: str | None) -> dict[str, str | None]:
    """The JSON error object (fields documented in docs/cli.md; kept stable)."""
    return {"error": message, "kind": kind, "hint": hint}


def print_error(message: str, kind: str, hint: str | None, as_json: bool) -> None:
    """Print an error: a JSON object on stdout under ``--json``, else ``lightvm: error: ...`` on stderr."""
    if as_json:
        print(json.dumps(error_object(message, kind, hint)), flush=True)
    else:
        print(f"lightvm: error: {message}", file=sys.stderr)


def print_exception(exc: BaseException, as_json: bool) -> None:
    """A lightvm error as one line (its message with whitespace folded) or one JSON object."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    print_error(message, type(exc).__name__, hint_for(exc), as_json)


def emit(obj: object) -> None:
    """One JSON document on one line of stdout (the ``--json`` form of one result)."""
    print(json.dumps(obj, default=str), flush=True)
