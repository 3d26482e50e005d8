"""``lightvm completion bash|zsh``: a shell completion script generated from the argument parser.

Why generated: the parser (lightvm/cli/parser.py) is the one list of commands and options;
a hand-written script would drift from it. :func:`spec` walks the parser into a table
(per command path: subcommands, options, options taking a value, their choices, what the
operands are), and :func:`bash_script` writes that table as bash associative arrays plus one
completion function that reads it. What an operand completes to:

- a VM (an operand named NAME/VM, or ``names``/``name``/``vm``): the names ``lightvm list``
  prints, with the ``--state-dir`` of the line being completed (2 s timeout);
- a file (type Path: a config, a checkpoint, a FILE/DIR option): the shell's file names;
- a choice (``--accel``, ``bench SUITE``): the choices.

zsh runs the same function through its bashcompinit layer (with ksh_arrays, so the
function's 0-based indexing holds, and sh_word_split); the function filters words itself
since bashcompinit's ``compgen -W`` leaves that to zsh; file names come from ``compgen -f``
(bash) or zsh's own globbing of the word being completed. Install: docs/cli.md ("Shell completion").
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

VM_DESTS = ("name", "names", "vm")
VM_METAVARS = ("NAME", "VM")
ROOT = "lightvm"


def _subparsers(p: argparse.ArgumentParser) -> argparse._SubParsersAction | None:  # type: ignore[type-arg]
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _kind(action: argparse.Action) -> str:
    """What an operand or an option's value completes to: vm, file, choice or none."""
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        return "choice"
    if action.type is Path:
        return "file"
    metavar = action.metavar if isinstance(action.metavar, str) else ""
    if metavar.startswith(("FILE", "DIR", "CONFIG", "LVINIT")):
        return "file"
    if action.dest in VM_DESTS or metavar in VM_METAVARS:
        return "vm"
    return "none"


def spec(parser: argparse.ArgumentParser, path: str = ROOT) -> dict[str, dict[str, Any]]:
    """{command path: {subs, options, values: {option: kind}, choices: {option or '': [..]}, operand}}
    for ``parser`` and every subcommand under it (hidden options, help=SUPPRESS, left out)."""
    entry: dict[str, Any] = {"subs": [], "options": [], "values": {}, "choices": {}, "operand": "none"}
    table = {path: entry}
    sub = _subparsers(parser)
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        if action.option_strings:
            entry["options"].extend(action.option_strings)
            if action.nargs != 0:
                kind = _kind(action)
                for flag in action.option_strings:
                    entry["values"][flag] = kind
                    if kind == "choice":
                        entry["choices"][flag] = [str(c) for c in action.choices or ()]
        elif action is not sub and entry["operand"] == "none":
            entry["operand"] = _kind(action)
            if entry["operand"] == "choice":
                entry["choices"][""] = [str(c) for c in action.choices or ()]
    if sub is not None:
        shown = {a.dest for a in sub._choices_actions}  # those with a help line: not internal ones
        for name, child in sub.choices.items():
            if name not in shown:
                continue  # an alias, or a command lightvm runs itself (migrate-receive)
            entry["subs"].append(name)
            table.update(spec(child, f"{path} {name}"))
    return table


def _assoc(name: str, items: dict[str, str]) -> str:
    body = " ".join(f"[{shlex.quote(k)}]={shlex.quote(v)}" for k, v in items.items())
    return f"typeset -gA {name}\n{name}=({body})"


def _tables(table: dict[str, dict[str, Any]]) -> str:
    """The parser's table as the associative arrays the completion function reads."""
    subs, opts, vals, choices, operands = {}, {}, {}, {}, {}
    for path, e in table.items():
        subs[path] = " ".join(e["subs"])
        opts[path] = " ".join(e["options"])
        vals[path] = " ".join(f"{flag}={kind}" for flag, kind in e["values"].items())
        operands[path] = e["operand"]
        for flag, values in e["choices"].items():
            choices[f"{path}|{flag}"] = " ".join(values)
    return "\n".join(
        (
            _assoc("_lightvm_subs", subs),
            _assoc("_lightvm_opts", opts),
            _assoc("_lightvm_vals", vals),
            _assoc("_lightvm_choices", choices),
            _assoc("_lightvm_operand", operands),
        )
    )


FUNCTION = r"""
_lightvm_vms() {
    # The VMs of the state dir named on the line (or the default one): lightvm list's first column.
    local -a cmd
    cmd=(lightvm list)
    [ -n "$1" ] && cmd=(lightvm --state-dir "$1" list)
    if command -v timeout >/dev/null 2>&1; then cmd=(timeout 2 "${cmd[@]}"); fi
    "${cmd[@]}" 2>/dev/null | awk 'NR > 1 { print $1 }'
}

_lightvm_match() {
    # The words of $1 starting with $2 (not compgen -W: zsh's bashcompinit one does not filter).
    local w
    for w in $1; do
        case "$w" in "$2"*) echo "$w" ;; esac
    done
}

_lightvm_kind() {
    # What the value of option $2 of command path $1 completes to (empty: it takes none).
    local pair
    for pair in ${_lightvm_vals[$1]}; do
        if [ "${pair%%=*}" = "$2" ]; then echo "${pair#*=}"; return; fi
    done
}

_lightvm() {
    # (not "path": in zsh that is $PATH)
    [ -n "${ZSH_VERSION-}" ] && setopt local_options ksh_arrays sh_word_split
    local cur="${COMP_WORDS[COMP_CWORD]}" cmdpath=lightvm state_dir="" i w kind want=""
    COMPREPLY=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${COMP_WORDS[i]}"
        if [ -n "$want" ]; then
            [ "$want" = "--state-dir" ] && state_dir="$w"
            want=""
            continue
        fi
        case "$w" in
            --*=*) [ "${w%%=*}" = "--state-dir" ] && state_dir="${w#*=}"; continue ;;
            -*) [ -n "$(_lightvm_kind "$cmdpath" "$w")" ] && want="$w"; continue ;;
        esac
        case " ${_lightvm_subs[$cmdpath]} " in
            *" $w "*) cmdpath="$cmdpath $w" ;;
        esac
    done
    if [ -n "$want" ]; then
        kind="$(_lightvm_kind "$cmdpath" "$want")"
    elif [[ "$cur" == -* ]]; then
        COMPREPLY=($(_lightvm_match "${_lightvm_opts[$cmdpath]}" "$cur"))
        return 0
    elif [ -n "${_lightvm_subs[$cmdpath]}" ]; then
        COMPREPLY=($(_lightvm_match "${_lightvm_subs[$cmdpath]}" "$cur"))
        return 0
    else
        kind="${_lightvm_operand[$cmdpath]}"
        want=""
    fi
    case "$kind" in
        vm) COMPREPLY=($(_lightvm_match "$(_lightvm_vms "$state_dir")" "$cur")) ;;
        file) COMPREPLY=($(compgen -f -- "$cur")) ;;
        choice) COMPREPLY=($(_lightvm_match "${_lightvm_choices[$cmdpath|$want]}" "$cur")) ;;
    esac
    return 0
}
"""


def bash_script(parser: argparse.ArgumentParser) -> str:
    """The bash completion script for ``parser``'s commands."""
    return (
        "# bash completion for lightvm (generated by `lightvm completion bash`; do not edit)\n"
        + _tables(spec(parser))
        + FUNCTION
        + "complete -o filenames -F _lightvm lightvm\n"
    )


def zsh_script(parser: argparse.ArgumentParser) -> str:
    """The zsh completion script: the bash one through zsh's bashcompinit."""
    return (
        "#compdef lightvm\n# zsh completion for lightvm (generated by `lightvm completion zsh`; do not edit)\n"
        "autoload -U +X bashcompinit && bashcompinit\n" + bash_script(parser).split("\n", 1)[1]
    )
