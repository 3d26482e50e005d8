"""Subprocesses and progress for the image builder.

Every child runs in its own session with a timeout, and on any exception (a timeout,
Ctrl-C, SIGTERM unwinding as SystemExit) its whole process group is killed and reaped:
debootstrap and apt-get start dpkg and maintainer scripts that would otherwise keep
writing into a tree we are about to remove. ``keep_fds`` lets a child inherit the build
lock, so that an orphan of a ``kill -9``-ed build still holds it until it exits.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lightvm.errors import TinyxError

# What children see: a fixed PATH (a chroot has no /usr/local tools of ours), no locale
# noise, no debconf questions.
CHILD_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C",
    "LANG": "C",
    "DEBIAN_FRONTEND": "noninteractive",
    "DEBCONF_NONINTERACTIVE_SEEN": "true",
    "HOME": "/root",
}


@dataclass
class Progress:
    """Progress lines on stderr ("[tinyx-image   3.2s] step: message") and the record of
    each step's duration, the cache hits and the guesses, for the build report."""

    quiet: bool = False
    start: float = field(default_factory=time.monotonic)
    steps: dict[str, float] = field(default_factory=dict)
    cache: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(f"[tinyx-image {time.monotonic() - self.start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    def note(self, msg: str, record: bool = True) -> None:
        """A guess or a caveat: on stderr now and (``record``) in the report's notes."""
        if record:
            self.notes.append(msg)
        if not self.quiet:
            print(f"tinyx-image: note: {msg}", file=sys.stderr, flush=True)

    def hit(self, what: str, state: str, detail: str = "") -> None:
        """Say a cache lookup's outcome ("cached", "building"...); the report records
        "built" for "building" (a failed build writes no report)."""
        self.cache[what] = "built" if state == "building" else state
        self.log(f"{what}: {state}{f' ({detail})' if detail else ''}")

    def step(self, name: str) -> _Step:
        return _Step(self, name)


class _Step:
    def __init__(self, progress: Progress, name: str) -> None:
        self.progress = progress
        self.name = name
        self.t0 = 0.0

    def __enter__(self) -> _Step:
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        took = time.monotonic() - self.t0
        self.progress.steps[self.name] = round(self.progress.steps.get(self.name, 0.0) + took, 3)


def run(
    argv: Sequence[str | Path],
    timeout: float,
    *,
    what: str,
    cwd: Path | None = None,
    keep_fds: Sequence[int] = (),
    on_line: Callable[[str], None] | None = None,
    input_text: str | None = None,
) -> str:
    """Run ``argv``; return its stdout+stderr text. Raise TinyxError naming ``what`` (and
    the output's tail) on a failure or after ``timeout`` seconds. ``on_line`` sees each
    output line as it comes (for progress on long steps)."""
    args = [str(a) for a in argv]
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    try:
        proc = subprocess.Popen(
            args,
            cwd=cwd,
            env=CHILD_ENV,
            stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
            pass_fds=tuple(keep_fds),
        )
    except OSError as e:
        raise TinyxError(f"{what}: cannot run {args[0]}: {e.strerror} (is it installed?)") from e
    try:
        if input_text is not None:
            assert proc.stdin is not None
            proc.stdin.write(input_text)
            proc.stdin.close()
        if on_line is None:
            out, _ = proc.communicate(timeout=timeout)
            lines = out.splitlines()
        else:
            _follow(proc, args, deadline, timeout, lines, on_line)
    except subprocess.TimeoutExpired as e:
        raise TinyxError(f"{what}: timed out after {timeout:.0f}s: {_tail(lines)}") from e
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        else:
            # The leader exited; its group may live on (a daemon a maintainer script
            # started despite policy-rc.d): nothing of ours may outlive the step.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
    if proc.returncode != 0:
        raise TinyxError(f"{what} failed (exit {proc.returncode}): {_tail(lines)}")
    return "\n".join(lines)


def _follow(
    proc: subprocess.Popen[str],
    args: list[str],
    deadline: float,
    timeout: float,
    lines: list[str],
    on_line: Callable[[str], None],
) -> None:
    """Pass each output line to ``on_line`` until the child exits; a reader thread keeps
    the deadline enforceable even when the child is silent."""
    out: queue.Queue[str | None] = queue.Queue()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.put(line.rstrip("\n"))
        out.put(None)

    threading.Thread(target=reader, daemon=True).start()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise subprocess.TimeoutExpired(args, timeout)
        try:
            line = out.get(timeout=min(left, 1.0))
        except queue.Empty:
            continue
        if line is None:
            break
        lines.append(line)
        del lines[:-200]
        on_line(line)
    proc.wait(timeout=max(1.0, deadline - time.monotonic()))


def _tail(lines: list[str], n: int = 6) -> str:
    kept = [ln.strip() for ln in lines if ln.strip()][-n:]
    return " | ".join(kept) if kept else "(no output)"
