"""Network clients run *inside* a test network namespace (``ip netns exec NS python netclient.py ...``).

Standard library only; every socket has a timeout; results are printed as one JSON object on stdout,
so the test in the root namespace can assert on them. Used against the guest IPv4 stack, either in
the host tap harness or in a booted unikernel.

Imported, it is also the one daytime client of the tests: :func:`read_daytime` (here),
:func:`read_daytime_in` (inside a namespace, through this file's ``daytime`` command) and
:func:`parse_daytime` (the RFC 867 line our servers write).

Commands:
  daytime IP PORT N [TIMEOUT]  N sequential TCP clients; each reads until the server closes
  parallel IP PORT N           N TCP clients connected at once, then each reads until closed
  time37 IP                    one RFC 868 client; prints the server's Unix time
  echo IP PORT CONNS SIZE      CONNS concurrent connections each echo SIZE random bytes
  udp IP PORT TEXT             one datagram, one reply
  refused IP PORT              a connect that must be refused (RST)
  garbage IFNAME DST_MAC SRC_MAC SRC_IP DST_IP COUNT SEED
                               hostile Ethernet frames through an AF_PACKET socket
"""

from __future__ import annotations

import calendar
import contextlib
import json
import random
import selectors
import socket
import struct
import subprocess
import sys
import time

TIMEOUT = 10.0
DAYTIME_FORMAT = "%A, %B %d, %Y %H:%M:%S-UTC"  # RFC 867 leaves it open; this is ours (images/apps/daytime.c)


def _out(obj: object) -> None:
    print(json.dumps(obj), flush=True)


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        data = sock.recv(4096)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def parse_daytime(text: str) -> float:
    """Seconds since the epoch from our RFC 867 line; raises ValueError if malformed."""
    if not text.endswith("\r\n"):
        raise ValueError(f"no CRLF: {text!r}")
    return calendar.timegm(time.strptime(text[:-2], DAYTIME_FORMAT))


def read_daytime(host: str, port: int, timeout: float = 2.0) -> str | None:
    """One daytime client: connect, read until the server closes; the text, or None when
    nothing answered (refused, reset, timed out, or closed without a byte)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            data = _read_all(sock)
    except OSError:
        return None
    return data.decode("ascii", "replace") or None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def read_daytime_in(netns: str, host: str, port: int, timeout: float = 2.0) -> str | None:
    """:func:`read_daytime` from inside network namespace ``netns``."""
    argv = ["ip", "netns", "exec", netns, sys.executable, __file__, "daytime", host, str(port), "1", str(timeout)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 30, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"netclient in {netns} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    texts: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])["texts"]
    return texts[0] if texts and texts[0] else None


def cmd_daytime(ip: str, port: int, count: int, timeout: float = TIMEOUT) -> None:
    texts: list[str] = []
    errors: list[str] = []
    start = time.monotonic()
    for i in range(count):
        try:
            with socket.create_connection((ip, port), timeout=timeout) as sock:
                texts.append(_read_all(sock).decode("ascii", "replace"))
        except OSError as exc:
            errors.append(f"client {i}: {exc!r}")
    _out({"ok": len(texts), "texts": texts, "errors": errors, "elapsed": time.monotonic() - start})


def cmd_parallel(ip: str, port: int, count: int) -> None:
    """count clients connected at the same time (connects first, then all the reads)."""
    socks: list[socket.socket] = []
    errors: list[str] = []
    texts: list[str] = []
    start = time.monotonic()
    for i in range(count):
        try:
            socks.append(socket.create_connection((ip, port), timeout=3 * TIMEOUT))
        except OSError as exc:
            errors.append(f"connect {i}: {exc!r}")
    for i, sock in enumerate(socks):
        try:
            texts.append(_read_all(sock).decode("ascii", "replace"))
        except OSError as exc:
            errors.append(f"read {i}: {exc!r}")
        finally:
            sock.close()
    _out({"ok": len(texts), "texts": texts, "errors": errors, "elapsed": time.monotonic() - start})


def cmd_time37(ip: str) -> None:
    with socket.create_connection((ip, 37), timeout=TIMEOUT) as sock:
        raw = _read_all(sock)
    _out({"len": len(raw), "unix": struct.unpack("!I", raw[:4])[0] - 2208988800 if len(raw) >= 4 else None})


def cmd_echo(ip: str, port: int, conns: int, size: int) -> None:
    """Concurrent echo: all connections open at once, writes and reads interleaved."""
    rnd = random.Random(size * 31 + conns)
    sel = selectors.DefaultSelector()
    state = {}
    for i in range(conns):
        sock = socket.create_connection((ip, port), timeout=3 * TIMEOUT)
        sock.setblocking(False)
        payload = rnd.randbytes(size)
        state[sock] = {"i": i, "out": payload, "sent": 0, "got": bytearray(), "want": payload, "eof": False}
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    deadline = time.monotonic() + 240
    while any(not s["eof"] for s in state.values()) and time.monotonic() < deadline:
        for key, events in sel.select(timeout=1.0):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            st = state[sock]
            if events & selectors.EVENT_WRITE and st["sent"] < len(st["out"]):
                with contextlib.suppress(BlockingIOError):
                    st["sent"] += sock.send(st["out"][st["sent"] : st["sent"] + 1000])
                if st["sent"] == len(st["out"]):
                    sock.shutdown(socket.SHUT_WR)
                    sel.modify(sock, selectors.EVENT_READ)
            if events & selectors.EVENT_READ:
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                if data:
                    st["got"] += data
                else:
                    st["eof"] = True
                    sel.unregister(sock)
    results = []
    for sock, st in state.items():
        results.append(
            {
                "i": st["i"],
                "sent": st["sent"],
                "got": len(st["got"]),
                "eof": st["eof"],
                "match": bytes(st["got"]) == st["want"],
            }
        )
        sock.close()
    _out({"conns": sorted(results, key=lambda r: r["i"])})


def cmd_udp(ip: str, port: int, text: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.sendto(text.encode(), (ip, port))
        data, addr = sock.recvfrom(2048)
    _out({"reply": data.decode("ascii", "replace"), "from": list(addr)})


def cmd_refused(ip: str, port: int) -> None:
    try:
        socket.create_connection((ip, port), timeout=TIMEOUT).close()
    except ConnectionRefusedError:
        _out({"refused": True})
        return
    except OSError as exc:
        _out({"refused": False, "error": repr(exc)})
        return
    _out({"refused": False})


# ---- hostile frames ----


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ip(
    src: bytes,
    dst: bytes,
    proto: int,
    payload: bytes,
    *,
    total: int | None = None,
    ihl: int = 5,
    frag: int = 0,
    good_csum: bool = True,
) -> bytes:
    opts = b"\x01" * (max(ihl, 5) * 4 - 20)
    hdr = (
        struct.pack(
            "!BBHHHBBH4s4s",
            0x40 | (ihl & 0xF),
            0,
            total if total is not None else 20 + len(opts) + len(payload),
            0x1234,
            frag,
            64,
            proto,
            0,
            src,
            dst,
        )
        + opts
    )
    if good_csum:
        hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
    return hdr + payload


def _l4_csum(src: bytes, dst: bytes, proto: int, seg: bytes, at: int) -> bytes:
    pseudo = src + dst + struct.pack("!BBH", 0, proto, len(seg))
    seg = seg[:at] + b"\0\0" + seg[at + 2 :]
    return seg[:at] + struct.pack("!H", _csum(pseudo + seg)) + seg[at + 2 :]


def _tcp(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    flags: int,
    *,
    seq: int = 0,
    ack: int = 0,
    offset: int = 5,
    opts: bytes = b"",
    data: bytes = b"",
    good_csum: bool = True,
) -> bytes:
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, (offset & 0xF) << 4, flags, 65535, 0, 0) + opts + data
    return _l4_csum(src, dst, 6, seg, 16) if good_csum else seg


def garbage_frames(dst_mac: bytes, src_mac: bytes, src: bytes, dst: bytes, count: int, seed: int) -> list[bytes]:
    """Frames that are each wrong in one way the stack must survive (plus pure noise)."""
    rnd = random.Random(seed)
    eth_ip = dst_mac + src_mac + b"\x08\x00"
    eth_arp = dst_mac + src_mac + b"\x08\x06"
    frames: list[bytes] = []
    makers = [
        lambda: dst_mac + src_mac + rnd.randbytes(rnd.randrange(0, 1500)),  # noise after the MACs
        lambda: eth_ip + rnd.randbytes(rnd.randrange(0, 60)),  # short junk "IP"
        lambda: eth_ip + _ip(src, dst, 6, b"", total=rnd.randrange(0, 65536)),  # IP total length lies
        lambda: eth_ip + _ip(src, dst, 6, rnd.randbytes(20), ihl=rnd.randrange(0, 16)),  # IHL lies
        lambda: eth_ip + _ip(src, dst, 1, b"\x08\x00" + rnd.randbytes(30), frag=0x2000),  # a fragment
        lambda: eth_ip + _ip(src, dst, 1, b"\x08\x00" + rnd.randbytes(30), frag=rnd.randrange(1, 0x1FFF)),
        lambda: (
            eth_ip + _ip(src, dst, 6, _tcp(src, dst, rnd.randrange(1, 65536), 13, 0x02, offset=rnd.randrange(0, 16)))
        ),  # TCP data offset lies
        lambda: (
            eth_ip
            + _ip(
                src,
                dst,
                6,
                _tcp(
                    src,
                    dst,
                    rnd.randrange(1, 65536),
                    13,
                    0x02,
                    offset=8,
                    opts=bytes([2, rnd.randrange(0, 256), 0, 0, 3, 0, 8, 255, 1, 0, 0, 0]),
                ),
            )
        ),
        lambda: (
            eth_ip
            + _ip(
                src,
                dst,
                6,
                _tcp(
                    src,
                    dst,
                    rnd.randrange(1, 65536),
                    13,
                    rnd.randrange(0, 256),
                    seq=rnd.getrandbits(32),
                    ack=rnd.getrandbits(32),
                    data=rnd.randbytes(rnd.randrange(0, 100)),
                ),
            )
        ),  # random flags
        lambda: eth_ip + _ip(src, dst, 6, _tcp(src, dst, 40000, 13, 0x02, good_csum=False)),  # bad checksum
        lambda: eth_ip + _ip(src, dst, 17, struct.pack("!HHHH", 5000, 7, rnd.randrange(0, 65536), 0) + b"x" * 8),
        lambda: eth_ip + _ip(src, dst, 1, rnd.randbytes(rnd.randrange(0, 8))),  # short ICMP
        lambda: eth_ip + _ip(src, dst, rnd.randrange(0, 256), rnd.randbytes(40)),  # any protocol
        lambda: eth_ip + _ip(src, dst, 6, rnd.randbytes(40), good_csum=False),  # bad IP checksum
        lambda: eth_arp + rnd.randbytes(rnd.randrange(0, 40)),  # junk ARP
        lambda: (
            eth_arp + struct.pack("!HHBBH6s4s6s4s", 1, 0x800, 6, 4, 1, src_mac, b"\xff\xff\xff\xff", b"\0" * 6, dst)
        ),  # ARP from broadcast IP
        lambda: eth_ip + _ip(b"\xff\xff\xff\xff", dst, 6, _tcp(b"\xff\xff\xff\xff", dst, 1234, 13, 0x02)),
        lambda: eth_ip + _ip(dst, dst, 6, _tcp(dst, dst, 13, 13, 0x02)),  # LAND attack
        lambda: b"\xff" * 6 + src_mac + b"\x08\x00" + _ip(src, dst, 1, b"\x08\x00\xf7\xff" + b"\0" * 4),
        lambda: (
            eth_ip + _ip(src, dst, 6, _tcp(src, dst, rnd.randrange(1024, 65536), 13, 0x02, seq=rnd.getrandbits(32)))
        ),  # SYN flood
    ]
    for _ in range(count):
        frames.append(rnd.choice(makers)())
    return frames


def cmd_garbage(ifname: str, dst_mac: str, src_mac: str, src_ip: str, dst_ip: str, count: int, seed: int) -> None:
    frames = garbage_frames(
        bytes.fromhex(dst_mac.replace(":", "")),
        bytes.fromhex(src_mac.replace(":", "")),
        socket.inet_aton(src_ip),
        socket.inet_aton(dst_ip),
        count,
        seed,
    )
    sent = 0
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((ifname, 0))
        for frame in frames:
            frame = frame[:1514]
            if len(frame) < 14:
                frame = frame + b"\0" * (14 - len(frame))
            sock.send(frame)
            sent += 1
            if sent % 50 == 0:
                time.sleep(0.01)  # let a slow (TCG) guest keep up rather than overflow its ring
    _out({"sent": sent})


def main(argv: list[str]) -> int:
    cmd, args = argv[0], argv[1:]
    if cmd == "daytime":
        cmd_daytime(args[0], int(args[1]), int(args[2]), *(float(a) for a in args[3:4]))
    elif cmd == "parallel":
        cmd_parallel(args[0], int(args[1]), int(args[2]))
    elif cmd == "time37":
        cmd_time37(args[0])
    elif cmd == "echo":
        cmd_echo(args[0], int(args[1]), int(args[2]), int(args[3]))
    elif cmd == "udp":
        cmd_udp(args[0], int(args[1]), args[2])
    elif cmd == "refused":
        cmd_refused(args[0], int(args[1]))
    elif cmd == "garbage":
        cmd_garbage(args[0], args[1], args[2], args[3], args[4], int(args[5]), int(args[6]))
    else:
        print(f"unknown command {cmd!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
