"""The warm CLI server: runs the ``lightvm`` command's VM commands in a forked,
already-imported Python, for the compiled launcher (bin/launcher.c).

Why: an installed ``lightvm create CONFIG`` served by lightvmd cost ~1.2x ``python3 -c
pass`` (docs/cli-startup.md): the interpreter's own start-up (site, encodings) is most of
such a command, and no trimming of our imports removes it. lightvmd starts this server next
to its socket (``STATE/cli.sock``); the launcher, a small C program installed as
``lightvm``, hands it the command line, the environment, the umask, its standard streams
and its working directory (SCM_RIGHTS), and a child forked from this server runs
:func:`lightvm.cli.main.main` on them: the code ``lightvm-py`` (the Python command) runs,
without the interpreter's start-up.

A command runs here only when nothing would differ from running ``lightvm-py``; otherwise
the launcher execs ``lightvm-py``, before anything of the command ran:

- the client has this server's uid (``SO_PEERCRED``): the child has no privilege the
  client lacks;
- the client's ``lightvm-py`` names this server's interpreter (``sys.executable``, as pip
  wrote it) and its ``PYTHON*`` variables are this server's (but for those that only place
  bytecode caches): the same installation, run the same way; and the files of the lightvm
  modules this server loaded are unchanged (:class:`Sources`: not reinstalled or edited);
- :func:`lightvm.cli.thin.parse` takes the command line (create, list, info, destroy,
  shutdown, pause, unpause in their plain forms): help, usage errors and every other
  command run in a process of their own;
- the child, set up as the client, reaches the lightvmd the command's state dir names:
  a command that would do the work in its own process (no daemon there,
  ``LIGHTVM_NO_DAEMON``) does not run in lightvmd's service (its cgroup, its limits).

The wire, one Unix stream connection per command: the launcher sends a 4-byte
little-endian length and that many bytes, each field NUL-terminated: the magic
``lightvm-launch-1``, the interpreter, the umask (octal), the argument count, the
arguments (argv[1:]), then the environment (``KEY=VALUE``); four descriptors ride on the
first bytes (stdin, stdout, stderr, the working directory). The answer is one byte: ``F``
(run it yourself) or ``R`` (the child is ready). After ``R`` the launcher commits with
``G``, and only then does the child run the command: a launcher that timed out waiting for
``R`` and fell back never commits, so a command never runs twice. After ``G`` the launcher
sends one byte per signal it gets (SIGINT, SIGTERM, SIGHUP, SIGQUIT), relayed to the
child; the server ends with two bytes, ``E`` and the exit status or ``S`` and the signal
that ended the child. A launcher that hangs up after its commit gets its command SIGTERM,
as its own death would have ended the command.

Single-threaded (so fork is safe) around one poll loop: commands run side by side. It ends
when its lifetime pipe (lightvmd holds the write end) reports EOF, so even a lightvmd
killed with -9 leaves no server behind, and it removes its socket if that is still its own.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import struct
import sys
import time
from typing import Any

# Imported here so that every forked child starts with them loaded: the point of this server.
from lightvm.cli import backend, thin, vm  # noqa: F401  (vm: the thin path's commands)
from lightvm.cli import main as cli_main
from lightvm.daemon import proto  # noqa: F401  (the client the commands use)
from lightvm.daemon.warmcli import SOCKET_NAME
from lightvm.lineio import listen_unix

MAGIC = b"lightvm-launch-1"
MAX_REQUEST = 4 << 20  # bytes: a larger command line and environment run in their own process
HANDSHAKE_TIMEOUT = 1.0  # s: a client slower to send its request runs the command itself
RELAYED_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT})
FALLBACK, RUNNING, COMMIT = b"F", b"R", b"G"
# s: a launcher sends its commit as soon as it reads R; a child that waited this long ends
# without running the command (its launcher, if it commits later, is told nothing and says so).
COMMIT_TIMEOUT = 10.0
NOT_RUN = 75  # the child's status when it did not run the command (EX_TEMPFAIL; lightvm never exits so)
_INT = struct.calcsize("i")


class Request:
    """One launcher's command, as :func:`read_request` decoded it."""

    def __init__(self, fds: list[int]) -> None:
        self.fds = fds  # stdin, stdout, stderr, the working directory
        self.interpreter = ""
        self.umask = 0o022
        self.argv: list[str] = []
        self.env: dict[str, str] = {}

    def close(self) -> None:
        fds, self.fds = self.fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def read_request(conn: socket.socket) -> Request | None:
    """The launcher's request, within HANDSHAKE_TIMEOUT in all, or None: malformed, cut
    short, too large, too slow or without its four descriptors (the launcher then runs it
    itself).

    :raise OSError: the first read failed (nothing came in time).
    """
    deadline = time.monotonic() + HANDSHAKE_TIMEOUT
    conn.settimeout(HANDSHAKE_TIMEOUT)
    head, ancillary, _flags, _addr = conn.recvmsg(4, socket.CMSG_SPACE(8 * _INT), socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            count = len(payload) // _INT
            fds.extend(struct.unpack(f"{count}i", payload[: count * _INT]))
    request = Request(fds)
    try:
        head += _recv_exactly(conn, 4 - len(head), deadline)
        (length,) = struct.unpack("<I", head)
        if length > MAX_REQUEST or len(fds) != 4:
            raise ValueError("too large, or not four descriptors")
        fields = _recv_exactly(conn, length, deadline).split(b"\0")
        if len(fields) < 5 or fields.pop() != b"" or fields[0] != MAGIC:
            raise ValueError("not this protocol")
        argc = int(fields[3])
        if not 0 <= argc <= len(fields) - 4:
            raise ValueError("bad argument count")
        request.interpreter = os.fsdecode(fields[1])
        request.umask = int(fields[2], 8) & 0o777
        request.argv = [os.fsdecode(a) for a in fields[4 : 4 + argc]]
        for entry in fields[4 + argc :]:
            key, eq, value = entry.partition(b"=")
            if not eq or not key:
                raise ValueError("an environment entry without '='")
            request.env[os.fsdecode(key)] = os.fsdecode(value)
    except (ValueError, OSError):
        request.close()
        return None
    return request


def _recv_exactly(conn: socket.socket, size: int, deadline: float) -> bytes:
    chunks, got = [], 0
    while got < size:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ValueError("too slow")
        conn.settimeout(left)
        chunk = conn.recv(min(size - got, 1 << 20))
        if not chunk:
            raise ValueError("cut short")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


# PYTHON* variables that only say where bytecode caches go: the same code runs either way.
CACHE_ONLY = frozenset({"PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX"})


def _python_env(env: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """The PYTHON* variables that change what the interpreter loads or how it behaves."""
    return {k: v for k, v in env.items() if k.startswith("PYTHON") and k not in CACHE_ONLY}


def takes(request: Request, peer_uid: int) -> bool:
    """Whether this server may run ``request``: the client's uid and installation, and a
    command line the thin path takes (module docstring; the child checks the daemon)."""
    return (
        peer_uid == os.getuid()
        and request.interpreter == sys.executable
        and _python_env(request.env) == _python_env(os.environ)
        and thin.parse(request.argv) is not None
    )


class Sources:
    """The files of the lightvm modules this server loaded, as they were when it started.

    Why: this server runs the code it imported, lightvm-py the files on disk. After a
    reinstall (``pip install -U``) or an edit of a checkout, a command must not run the old
    code here: :meth:`unchanged` is then False and the launcher runs lightvm-py (one
    ``stat`` per file per command, the ~12 it imports). lightvmd itself runs its old code until it
    is restarted, which ends this server too.
    """

    def __init__(self, paths: list[str]) -> None:
        self.stamps = {path: _stamp(path) for path in paths}
        self.told = False

    @classmethod
    def loaded(cls) -> Sources:
        """The files of every lightvm module imported now."""
        paths = {
            getattr(module, "__file__", None)
            for name, module in sys.modules.items()
            if name == "lightvm" or name.startswith("lightvm.")
        }
        return cls(sorted(p for p in paths if p))

    def unchanged(self) -> bool:
        changed = [path for path, stamp in self.stamps.items() if _stamp(path) != stamp]
        if changed and not self.told:  # once, on lightvmd's stderr (STATE/lightvmd.out, the journal)
            self.told = True
            print(f"lightvm: warm CLI server: {changed[0]} changed since lightvmd started: commands "
                  f"run lightvm-py until lightvmd is restarted", file=sys.stderr, flush=True)  # fmt: skip
        return not changed


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def peer_uid(conn: socket.socket) -> int:
    ucred = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", ucred)[1])


def _become_client(request: Request) -> None:
    """In the child: take the launcher's streams, directory, umask and environment."""
    stdin, stdout, stderr, cwd = request.fds
    for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
        os.dup2(fd, target)
    os.fchdir(cwd)
    request.close()
    os.umask(request.umask)
    os.environ.clear()
    os.environ.update(request.env)
    _reopen_streams()
    for number in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(number, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _reopen_streams() -> None:
    """sys.stdin/stdout/stderr anew on descriptors 0-2, buffered as Python buffers them at
    start-up for what they now are (stdout line-buffered on a terminal, stderr always)."""
    import io

    encoding = sys.stdout.encoding if sys.stdout is not None else "utf-8"

    def text(fd: int, mode: str, errors: str, line_buffering: bool) -> io.TextIOWrapper:
        raw = io.FileIO(fd, mode, closefd=False)
        buffered = io.BufferedReader(raw) if mode == "r" else io.BufferedWriter(raw)
        return io.TextIOWrapper(buffered, encoding=encoding, errors=errors, line_buffering=line_buffering)

    sys.stdin = text(0, "r", "strict", False)
    sys.stdout = text(1, "w", "strict", os.isatty(1))
    sys.stderr = text(2, "w", "backslashreplace", True)


def run_child(conn: socket.socket, request: Request, go: int) -> None:
    """The forked child: become the client, check that lightvmd serves the command, answer
    R, and run it once the server passes on the launcher's commit (a byte on ``go``); or
    answer F, or see ``go`` closed (the launcher gave up), and end. Never returns.

    Nothing before the commit prints: whatever fails there, the launcher runs lightvm-py,
    which reports it itself."""
    client = None
    try:
        _become_client(request)
        args: Any = thin.parse(request.argv)  # a namespace as argparse's (takes() saw it parse)
        if args is not None:
            client = backend.connect(args)  # None: the work would be done in the caller's process
        if client is None:
            conn.sendall(FALLBACK)
            os._exit(NOT_RUN)
        conn.sendall(RUNNING)
        conn.close()
        if not select.select([go], [], [], COMMIT_TIMEOUT)[0] or os.read(go, 1) != COMMIT:
            os._exit(NOT_RUN)  # the launcher fell back, hung up or stalled: it runs the command, not us
        os.close(go)
    except BaseException:
        os._exit(NOT_RUN)
    code = 0
    try:
        backend.checked_client = client
        sys.argv = ["lightvm", *request.argv]
        code = cli_main.main(request.argv)
    except SystemExit as exc:
        code = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # reported as lightvm-py would report it: one line, status 1
        code = 1
        with contextlib.suppress(Exception):
            print(f"lightvm: error: {type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code & 0xFF)


class Command:
    """A forked command: its launcher's connection, its child, and the pipe that tells the
    child to run (a byte: the launcher committed) or not (closed)."""

    def __init__(self, conn: socket.socket, pid: int, go: int) -> None:
        self.conn = conn
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)
        self.go: int | None = go
        self.committed = False
        self.hung_up = False

    def relay(self) -> None:
        """Read what the launcher sent: its commit first, then one byte per signal to relay.
        A launcher that hangs up before its commit has run the command itself (the child
        ends without running it); after, its command gets SIGTERM."""
        try:
            data = self.conn.recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.hung_up = True
            if self.committed:
                self._signal(signal.SIGTERM)
            self._close_go()
            return
        if not self.committed:
            if data[:1] != COMMIT:  # not the protocol: as if it hung up
                self.hung_up = True
                self._close_go()
                return
            try:
                if self.go is None:
                    raise BrokenPipeError
                os.write(self.go, COMMIT)
            except OSError:  # the child is gone (it waited COMMIT_TIMEOUT): no answer to give
                self.hung_up = True
                self._close_go()
                return
            self._close_go()
            self.committed, data = True, data[1:]
        for number in data:
            if number in RELAYED_SIGNALS:
                self._signal(number)

    def _close_go(self) -> None:
        go, self.go = self.go, None
        if go is not None:
            os.close(go)

    def _signal(self, number: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self.pidfd, number)

    def finish(self) -> None:
        """Reap the child, tell a committed launcher how it ended, close everything."""
        _pid, status = os.waitpid(self.pid, 0)
        if os.WIFSIGNALED(status):
            answer = b"S" + bytes([os.WTERMSIG(status)])
        else:
            answer = b"E" + bytes([os.waitstatus_to_exitcode(status) & 0xFF])
        ran = not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == NOT_RUN)
        if self.committed and not self.hung_up and ran:
            try:
                self.conn.settimeout(HANDSHAKE_TIMEOUT)
                self.conn.sendall(answer)
            except OSError:
                pass  # the launcher is gone
        self._close_go()
        self.conn.close()
        os.close(self.pidfd)


class Server:
    """The poll loop over the listening socket, the lifetime pipe and each command's
    launcher connection and child."""

    def __init__(self, listener: socket.socket, lifetime_fd: int) -> None:
        self.listener = listener
        self.lifetime_fd = lifetime_fd
        self.poller = select.poll()
        self.by_fd: dict[int, Command] = {}  # a command's connection and pidfd
        self.sources = Sources.loaded()

    def serve(self) -> None:
        """Serve until the lifetime pipe reports EOF (or an error)."""
        self.poller.register(self.listener.fileno(), select.POLLIN)
        self.poller.register(self.lifetime_fd, select.POLLIN)
        while True:
            for fd, _events in self.poller.poll():
                if fd == self.lifetime_fd:
                    return
                if fd == self.listener.fileno():
                    self.accept()
                    continue
                command = self.by_fd.get(fd)
                if command is None:
                    continue
                if fd == command.pidfd:
                    self._forget(command)
                    command.finish()
                else:
                    command.relay()
                    if command.hung_up:
                        self._unwatch(fd)  # its end still comes through the pidfd

    def _watch(self, fd: int, command: Command) -> None:
        self.by_fd[fd] = command
        self.poller.register(fd, select.POLLIN)

    def _unwatch(self, fd: int) -> None:
        del self.by_fd[fd]
        self.poller.unregister(fd)

    def _forget(self, command: Command) -> None:
        for fd in [fd for fd, c in self.by_fd.items() if c is command]:
            self._unwatch(fd)

    def accept(self) -> None:
        """Take one launcher's request: answer F, or fork the child that answers."""
        try:
            conn, _addr = self.listener.accept()
        except OSError:
            return
        request = None
        try:
            request = read_request(conn)
            if request is None or not takes(request, peer_uid(conn)) or not self.sources.unchanged():
                conn.sendall(FALLBACK)
                conn.close()
                return
            self._fork(conn, request)
        except OSError:
            conn.close()
        finally:
            if request is not None:
                request.close()

    def _fork(self, conn: socket.socket, request: Request) -> None:
        """Fork ``request``'s child and watch it; on a failure nothing is left (the child,
        if forked, sees its go pipe closed and ends without running the command)."""
        go_read, go_write = os.pipe2(os.O_CLOEXEC)
        try:
            pid = os.fork()
        except OSError:
            os.close(go_read)
            os.close(go_write)
            raise
        if pid == 0:
            self.listener.close()
            os.close(self.lifetime_fd)
            os.close(go_write)
            for other in set(self.by_fd.values()):  # the other commands' ends
                other.conn.close()
                os.close(other.pidfd)
                other._close_go()
            run_child(conn, request, go_read)
        os.close(go_read)
        try:
            command = Command(conn, pid, go_write)
        except OSError:
            os.close(go_write)
            os.waitpid(pid, 0)
            raise
        conn.setblocking(False)
        self._watch(conn.fileno(), command)
        self._watch(command.pidfd, command)


def serve(state_dir: str, lifetime_fd: int) -> None:
    """Serve ``state_dir``/cli.sock until ``lifetime_fd`` reports EOF or SIGTERM comes;
    then remove the socket if it is still this server's."""
    path = os.path.join(state_dir, SOCKET_NAME)
    listener = listen_unix(path, 64)  # born 0600; a stale one (a killed server's) replaced
    inode = os.stat(path).st_ino
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # unwinds to the socket's removal
    try:
        Server(listener, lifetime_fd).serve()
    finally:
        listener.close()
        try:
            if os.stat(path).st_ino == inode:
                os.unlink(path)
        except FileNotFoundError:
            pass


def main(argv: list[str] | None = None) -> int:
    """``python -m lightvm.cli.warm STATE_DIR LIFETIME_FD`` (lightvmd runs it)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not args[1].isdigit():
        print("usage: python -m lightvm.cli.warm STATE_DIR LIFETIME_FD (lightvmd starts it)", file=sys.stderr)
        return 2
    try:
        serve(args[0], int(args[1]))
    except OSError as exc:  # on lightvmd's stderr (STATE/lightvmd.out, the journal); launchers run lightvm-py
        print(f"lightvm: warm CLI server: cannot serve {args[0]}/{SOCKET_NAME}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
