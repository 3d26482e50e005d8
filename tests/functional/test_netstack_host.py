"""The guest IPv4 stack (images/net/), run as a host process on a tap in a private namespace.

The harness (images/net/test/tap_harness.c) links the very sources the unikernels link, built here
with the host gcc under ASan+UBSan, so a memory error anywhere in the stack aborts it and fails the
test. Clients are the real Linux ones (busybox ping, openbsd nc) plus netclient.py, all run inside
the namespace with ``ip netns exec``.
"""

from __future__ import annotations

import calendar
import random
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netclient import parse_daytime
from nettools import Netns, peer_line, rawpeer, require_netns, run, stop_peers

REPO = Path(__file__).resolve().parents[2]
NET = REPO / "images" / "net"
STACK_SOURCES = ["eth.c", "arp.c", "ip.c", "tcp.c", "tcp_conn.c", "daytime_fmt.c", "warm.c"]  # the portable half
GUEST_ONLY = {"virtio_net.c", "netif.c"}  # these need guest.h
STACK_IP = "10.213.0.2"
STACK_MAC = "52:54:00:13:00:02"

pytestmark = pytest.mark.functional


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("needs a host gcc to build the tap harness")
    # every portable source must be in the harness, or it would go untested
    assert {p.name for p in NET.glob("*.c")} - GUEST_ONLY == set(STACK_SOURCES)
    out = tmp_path_factory.mktemp("harness") / "tap_harness"
    argv = [
        "gcc",
        "-std=c11",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-O1",
        "-g",
        "-fsanitize=address,undefined",
        "-fno-sanitize-recover=all",
        "-I",
        str(REPO / "images" / "include"),
        *[str(NET / s) for s in STACK_SOURCES],
        str(NET / "test" / "tap_harness.c"),
        "-o",
        str(out),
    ]
    proc = run(argv, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return out


def expected_daytime(t: int) -> str:
    g = time.gmtime(t)
    return (
        f"{calendar.day_name[g.tm_wday]}, {calendar.month_name[g.tm_mon]} {g.tm_mday}, {g.tm_year} "
        f"{g.tm_hour:02d}:{g.tm_min:02d}:{g.tm_sec:02d}-UTC"
    )


def test_daytime_format_matches_python_calendar(harness: Path) -> None:
    rnd = random.Random(867)
    stamps = [
        0,
        59,
        86399,
        86400,
        951782400,
        951868800,
        978307199,
        1709164800,
        1763753712,
        4107542400,
        4102444799,
        253402300799,
    ]
    stamps += [rnd.randrange(0, 253402300799) for _ in range(400)]
    proc = run([str(harness), "fmt", *map(str, stamps)], timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines == [expected_daytime(t) for t in stamps]
    # and what a client parses back is the same instant
    assert parse_daytime(lines[8] + "\r\n") == stamps[8]


def test_warm_runs_the_whole_exchange(harness: Path) -> None:
    """net_warm (images/net/warm.c, at a pooled shell's wait point): the ARP request is
    answered, the SYN accepted, the listener's byte and FIN sent and acknowledged, and
    nothing dropped or reset: every path it means to warm did run (under ASan+UBSan)."""
    proc = run([str(harness), "warm"], timeout=30, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    stats = dict(kv.split("=") for kv in proc.stdout.split()[1:])
    assert stats == {"arp_replies": "1", "accepted": "1", "tx": stats["tx"], "rx": "4", "dropped": "0", "resets": "0"}
    assert int(stats["tx"]) >= 3  # the ARP reply, the SYN-ACK, the byte (and the FIN, with it or after)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stack_survives_fuzzed_frames(harness: Path, seed: int) -> None:
    proc = run([str(harness), "fuzz", "150000", str(seed)], timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FUZZ OK" in proc.stdout
    fields = dict(kv.split("=") for kv in proc.stdout.split("FUZZ OK", 1)[1].split())
    # the fuzzer must reach deep into TCP, not only bounce off checksums
    assert int(fields["accepted"]) > 100
    assert int(fields["retransmits"]) > 100
    assert int(fields["tx"]) > 10000


class Stack:
    """The harness serving on a tap in a fresh namespace."""

    def __init__(self, harness: Path, ns: Netns, loss: int = 0) -> None:
        argv = ns.argv(
            [
                str(harness),
                "run",
                ns.tap,
                STACK_MAC,
                f"{STACK_IP}/24",
                ns.host_ip,
                "--loss",
                str(loss),
                "--seed",
                str(1000 + loss),
            ]
        )
        self.ns = ns
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        # The harness prints READY or dies; a bounded wait, so a harness that hangs fails
        # this test instead of blocking the whole run.
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline() if ready else "(no line within 60 s)"
        if line.strip() != "READY":
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            raise AssertionError(f"tap harness did not start: {line!r} {err}")
        self.stats: dict[str, int] = {}

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> dict[str, int]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate(timeout=10)
        assert self.proc.returncode == 0, f"harness exited {self.proc.returncode}: {err[-3000:]}"
        for line in out.splitlines():
            if line.startswith("STATS "):
                self.stats = {k: int(v) for k, v in (kv.split("=") for kv in line.split()[1:])}
        return self.stats


@pytest.fixture
def stack(harness: Path) -> Iterator[Stack]:
    require_netns()
    with Netns() as ns:
        s = Stack(harness, ns)
        try:
            yield s
        finally:
            if s.proc.poll() is None:
                s.proc.kill()
                s.proc.communicate(timeout=10)


def test_ping(stack: Stack) -> None:
    proc = stack.ns.exec(["busybox", "ping", "-c", "3", "-W", "2", STACK_IP], timeout=20, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 packets received" in proc.stdout
    # a big one too (no fragmentation: 1472 + 28 = the 1500-byte MTU)
    proc = stack.ns.exec(["busybox", "ping", "-c", "1", "-s", "1472", "-W", "2", STACK_IP], timeout=20, check=False)
    assert "1 packets received" in proc.stdout, proc.stdout
    assert stack.stop()["icmp_echo_replies"] == 4


def test_daytime_with_netcat(stack: Stack) -> None:
    assert abs(parse_daytime(stack.ns.nc(STACK_IP, 13)) - time.time()) < 5


def test_time_protocol_with_rdate(stack: Stack) -> None:
    proc = stack.ns.exec(["busybox", "rdate", "-p", STACK_IP], timeout=20, check=False)
    assert proc.returncode == 0, proc.stderr
    # busybox prints the time as ctime(), in the local zone; the client result is exact
    assert abs(stack.ns.client("time37", STACK_IP)["unix"] - time.time()) < 5


def test_hundred_sequential_clients(stack: Stack) -> None:
    result = stack.ns.client("daytime", STACK_IP, 13, 100)
    assert result["errors"] == []
    assert result["ok"] == 100
    for text in result["texts"]:
        assert abs(parse_daytime(text) - time.time()) < 30
    stats = stack.stop()
    assert stats["daytime_served"] == 100
    assert stats["tcp_table_full"] == 0
    # 100 finished connections went through a 16-slot table: TIME_WAIT slots were recycled
    assert stats["tcp_recycled"] >= 100 - 16


def test_more_clients_at_once_than_slots(stack: Stack) -> None:
    # 40 clients connected together, 16 slots: finished (FIN_WAIT_2/TIME_WAIT) slots are reused
    result = stack.ns.client("parallel", STACK_IP, 13, 40, timeout=300)
    assert result["errors"] == [] and result["ok"] == 40
    stats = stack.stop()
    assert stats["daytime_served"] == 40
    assert stats["tcp_recycled"] >= 40 - 16


def test_closed_port_is_refused(stack: Stack) -> None:
    assert stack.ns.client("refused", STACK_IP, 9) == {"refused": True}
    assert stack.stop()["tcp_resets_sent"] == 1  # one SYN, one RST: nothing else reached a closed port


def test_concurrent_echo_connections(stack: Stack) -> None:
    result = stack.ns.client("echo", STACK_IP, 7, 8, 50_000)
    for conn in result["conns"]:
        assert conn["match"] and conn["eof"], conn


def test_udp_echo_and_daytime(stack: Stack) -> None:
    assert stack.ns.client("udp", STACK_IP, 7, "hello udp")["reply"] == "hello udp"
    reply = stack.ns.client("udp", STACK_IP, 13, "?")["reply"]
    assert abs(parse_daytime(reply) - time.time()) < 5


def test_garbage_frames_do_not_crash(stack: Stack) -> None:
    mac = stack.ns.tap_mac()
    result = stack.ns.client("garbage", stack.ns.tap, STACK_MAC, mac, stack.ns.host_ip, STACK_IP, 3000, 7)
    assert result["sent"] == 3000
    assert stack.alive()
    assert abs(parse_daytime(stack.ns.nc(STACK_IP, 13)) - time.time()) < 5
    stats = stack.stop()
    assert stats["rx_dropped"] > 1000


def test_retransmission_under_loss(harness: Path) -> None:
    """10% of frames lost each way: every byte still arrives, through retransmission."""
    require_netns()
    with Netns() as ns:
        s = Stack(harness, ns, loss=10)
        try:
            # backoff reaches 8 s per attempt: give each client a minute
            result = ns.client("daytime", STACK_IP, 13, 15, 60, timeout=600)
            assert result["errors"] == [] and result["ok"] == 15
            echo = ns.client("echo", STACK_IP, 7, 2, 10_000, timeout=300)
            for conn in echo["conns"]:
                assert conn["match"] and conn["eof"], conn
            stats = s.stop()
            assert stats["tcp_retransmits"] > 0
        finally:
            if s.proc.poll() is None:
                s.proc.kill()
                s.proc.communicate(timeout=10)


def test_full_table_under_loss_forgets_no_client(harness: Path) -> None:
    """40 clients at once through 16 slots with 5% loss. A client whose handshake ACK is lost holds
    a connection the stack has only half-open; with the table full of FIN_WAIT_1 slots (Linux
    delays the ACK of our FIN), recycling that young half-open slot for the next SYN left the
    client waiting forever (or reset later). Young half-open slots are kept: the new SYN waits."""
    require_netns()
    with Netns() as ns:
        s = Stack(harness, ns, loss=5)
        try:
            for count in (10, 40):
                result = ns.client("parallel", STACK_IP, 13, count, timeout=300)
                assert result["errors"] == [] and result["ok"] == count, result["errors"]
            stats = s.stop()
            assert stats["daytime_served"] == 50
            assert stats["tcp_table_full"] > 0  # the table did overflow: the case under test ran
        finally:
            if s.proc.poll() is None:
                s.proc.kill()
                s.proc.communicate(timeout=10)


# ---- hostile peers (tests/functional/rawpeers.py: made-up hosts on the tap, never a RST back) ----


def _rawpeer(stack: Stack, *args: str | int) -> subprocess.Popen[str]:
    return rawpeer(stack.ns, STACK_MAC, STACK_IP, str(args[0]), *args[1:])


def _timed_daytime(stack: Stack) -> float:
    """Seconds a netcat client waits for the time (which must be right)."""
    t0 = time.monotonic()
    text = stack.ns.nc(STACK_IP, 13)
    elapsed = time.monotonic() - t0
    assert abs(parse_daytime(text) - time.time()) < 5, text
    return elapsed


@pytest.mark.parametrize("flags", [0x00, 0x01, 0x03])  # no flags, FIN alone, SYN+FIN
def test_listening_port_drops_segments_without_syn_or_ack(stack: Stack, flags: int) -> None:
    """RFC 9293 3.10.7.2: in LISTEN such a segment is dropped; a closed port still answers RST."""
    procs = [_rawpeer(stack, "probe", "10.213.0.50", 13, flags)]
    try:
        assert peer_line(procs[0], 30) == {"reply": None}
        procs.append(_rawpeer(stack, "probe", "10.213.0.50", 9, flags))
        assert peer_line(procs[1], 30)["reply"] == 0x14  # RST|ACK from the closed port
    finally:
        stop_peers(procs)
    assert stack.alive() and _timed_daytime(stack) < 5


def test_silent_and_zero_window_peers_do_not_lock_out_clients(stack: Stack) -> None:
    """16 peers that complete the handshake and go silent, 16 that hold their window shut (and
    answer every probe): each alone used to fill the 16-slot table for 37 s or for good. The
    table now evicts the connection idle for longest, and one address holds at most 12 slots."""
    procs = [_rawpeer(stack, "hold", "10.213.0.50", 16, 1000, 60)]
    try:
        silent = peer_line(procs[0], 60)["held"]
        procs.append(_rawpeer(stack, "hold", "10.213.0.51", 16, 0, 60))
        zero = peer_line(procs[1], 60)["held"]
        assert silent + zero >= 16, (silent, zero)  # the 16-slot table was full of them
        waits = [_timed_daytime(stack) for _ in range(3)]
        assert max(waits) < 1.0, waits
    finally:
        stop_peers(procs)
    stats = stack.stop()
    assert stats["tcp_evicted"] >= 3 + 4, stats  # the zero-window peers evicted silent ones too
    assert stats["daytime_served"] >= 3


def test_syn_flood_from_one_source_leaves_room_for_others(stack: Stack) -> None:
    """SYNs as fast as Python sends them from one address that never answers: it holds at most
    12 half-open slots, so another client still gets the time while the flood lasts."""
    procs = [_rawpeer(stack, "flood", "10.213.0.60", 8)]
    try:
        time.sleep(1.5)  # the flood has filled what it can
        waits = [_timed_daytime(stack) for _ in range(3)]
        assert procs[0].poll() is None, "the flood ended before the clients ran"
        sent = peer_line(procs[0], 30)["sent"]
        assert sent > 100, sent
        assert max(waits) < 1.0, waits
    finally:
        stop_peers(procs)
    stats = stack.stop()
    assert stats["tcp_table_full"] > 0, stats  # the flood hit its cap: SYNs were dropped


def test_syn_flood_from_many_addresses_leaves_room_for_others(stack: Stack) -> None:
    """SYNs from 100 spoofed addresses (none answers ARP): every slot is young and half-open, so
    a real client gets a SYN cookie; its ACK takes a half-open slot. Its ARP entry survives the
    flood's unanswered requests."""
    procs = [_rawpeer(stack, "flood", "10.213.0.100", 8, 100)]
    try:
        time.sleep(1.5)
        waits = [_timed_daytime(stack) for _ in range(3)]
        assert procs[0].poll() is None, "the flood ended before the clients ran"
        assert peer_line(procs[0], 30)["sent"] > 100
        assert max(waits) < 1.0, waits
    finally:
        stop_peers(procs)
    stats = stack.stop()
    assert stats["tcp_cookies_sent"] > 0 and stats["tcp_cookies_ok"] >= 1, stats
