"""Hostile TCP peers, built frame by frame on an AF_PACKET socket, run *inside* a test namespace.

Kernel sockets cannot misbehave the way these peers must: the kernel acknowledges every byte and
answers a stray SYN-ACK with a RST. These peers use an address of the tap's subnet that no
interface owns, with a made-up MAC: they announce it to the stack under test with one ARP request
(the stack learns it, RFC 826), so its replies go to that MAC, which the namespace's kernel drops
as not its own (no RST ever) while our packet socket still reads them.

Standard library only; every socket has a timeout; results are JSON lines on stdout.

Commands:
  hold IFNAME DST_MAC DST_IP SRC_IP COUNT WINDOW SECONDS
      Complete COUNT handshakes to DST_IP port 13, acknowledging the SYN-ACK with WINDOW; print
      {"held": N} once done, then for SECONDS: WINDOW 0 answers every segment with a zero-window
      ACK (the peer is alive, its window stays shut: persist probes forever), WINDOW > 0 answers
      nothing (silent: the server retransmits into the void).
  flood IFNAME DST_MAC DST_IP SRC_IP SECONDS [SOURCES]
      SYNs to port 13 from SRC_IP, a new source port each, as fast as they go, for SECONDS;
      nothing is ever answered. With SOURCES > 1 each SYN comes from a random one of SOURCES
      addresses from SRC_IP up (spoofed: never announced, so the stack's ARP requests for
      them go unanswered too). Prints {"sent": N}.
  probe IFNAME DST_MAC DST_IP SRC_IP PORT FLAGS
      One segment with FLAGS (an integer, e.g. 0 or 1 for FIN) to PORT; prints {"reply": F} with
      the flags of the stack's answer within 1 s, or {"reply": null}.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import sys
import time

from netclient import _ip, _tcp

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
SYN, RST, ACK = 0x02, 0x04, 0x10
PORT = 13  # the daytime port, unless a command names another


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


class Peer:
    """One made-up host (SRC_IP, a locally administered MAC) on the tap."""

    def __init__(self, ifname: str, dst_mac: str, dst_ip: str, src_ip: str) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind((ifname, 0))
        self.sock.settimeout(0.05)
        self.dst_mac = _mac(dst_mac)
        self.src_mac = bytes([0x02, 0x13, 0x37]) + socket.inet_aton(src_ip)[1:]
        self.dst = socket.inet_aton(dst_ip)
        self.src = socket.inet_aton(src_ip)

    def close(self) -> None:
        self.sock.close()

    def announce(self) -> None:
        """ARP request "who has DST_IP, tell SRC_IP": the stack learns our MAC from it."""
        arp = struct.pack("!HHBBH6s4s6s4s", 1, ETH_P_IP, 6, 4, 1, self.src_mac, self.src, b"\0" * 6, self.dst)
        self.sock.send(b"\xff" * 6 + self.src_mac + struct.pack("!H", ETH_P_ARP) + arp)

    def send_tcp(self, sport: int, flags: int, seq: int, ack: int, window: int, dport: int = PORT) -> None:
        seg = bytearray(_tcp(self.src, self.dst, sport, dport, flags, seq=seq, ack=ack))
        seg[14:16] = struct.pack("!H", window)
        seg[16:18] = b"\0\0"
        pseudo = self.src + self.dst + struct.pack("!BBH", 0, 6, len(seg))
        data = pseudo + bytes(seg) + (b"\0" if len(seg) % 2 else b"")
        total = sum(struct.unpack(f"!{len(data) // 2}H", data))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        seg[16:18] = struct.pack("!H", ~total & 0xFFFF)
        frame = self.dst_mac + self.src_mac + struct.pack("!H", ETH_P_IP) + _ip(self.src, self.dst, 6, bytes(seg))
        self.sock.send(frame)

    def receive(self, port: int = PORT) -> tuple[int, int, int, int, int] | None:
        """The next TCP segment the stack sent us: (our port, flags, seq, ack, payload length)."""
        try:
            frame = self.sock.recv(2048)
        except TimeoutError:
            return None
        if len(frame) < 54 or frame[:6] != self.src_mac or frame[12:14] != struct.pack("!H", ETH_P_IP):
            return None
        ip = frame[14:]
        ihl = (ip[0] & 0xF) * 4
        if ip[9] != 6 or ip[12:16] != self.dst or ip[16:20] != self.src:
            return None
        total = struct.unpack("!H", ip[2:4])[0]
        tcp = ip[ihl:total]
        sport, dport, seq, ack = struct.unpack("!HHII", tcp[:12])
        if sport != port:
            return None
        return dport, tcp[13], seq, ack, len(tcp) - (tcp[12] >> 4) * 4


def cmd_hold(peer: Peer, count: int, window: int, seconds: float) -> None:
    peer.announce()
    time.sleep(0.2)
    conns: dict[int, int] = {}  # our port -> the stack's ISN + 1 (all we ever acknowledge)
    base = random.randrange(20000, 40000)
    for i in range(count):
        port = base + i
        isn = random.getrandbits(32)
        peer.send_tcp(port, SYN, isn, 0, 65535)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            seg = peer.receive()
            if seg and seg[0] == port and seg[1] & (SYN | ACK) == SYN | ACK:
                conns[port] = (seg[2] + 1) & 0xFFFFFFFF
                peer.send_tcp(port, ACK, isn + 1, conns[port], window)
                break
            if seg and seg[0] == port and seg[1] & RST:
                break
        if port in conns:
            conns[port] = conns[port] | (isn + 1) << 32
    print(json.dumps({"held": len(conns)}), flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        seg = peer.receive()
        if not seg or seg[0] not in conns or window:
            continue
        state = conns[seg[0]]
        if seg[1] & RST:
            del conns[seg[0]]
            continue
        peer.send_tcp(seg[0], ACK, state >> 32, state & 0xFFFFFFFF, 0)  # alive, window shut


def cmd_flood(peer: Peer, seconds: float, sources: int) -> None:
    if sources == 1:
        peer.announce()
    first = struct.unpack("!I", peer.src)[0]
    sent = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if sources > 1:
            peer.src = struct.pack("!I", first + random.randrange(sources))
        peer.send_tcp(1024 + sent % 60000, SYN, random.getrandbits(32), 0, 65535)
        sent += 1
    print(json.dumps({"sent": sent}), flush=True)


def cmd_probe(peer: Peer, port: int, flags: int) -> None:
    peer.announce()
    time.sleep(0.2)
    sport = random.randrange(40000, 60000)
    peer.send_tcp(sport, flags, random.getrandbits(32), 0, 65535, dport=port)
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        seg = peer.receive(port)
        if seg and seg[0] == sport:
            print(json.dumps({"reply": seg[1]}), flush=True)
            return
    print(json.dumps({"reply": None}), flush=True)


def main(argv: list[str]) -> int:
    cmd, args = argv[0], argv[1:]
    peer = Peer(args[0], args[1], args[2], args[3])
    try:
        if cmd == "hold":
            cmd_hold(peer, int(args[4]), int(args[5]), float(args[6]))
        elif cmd == "probe":
            cmd_probe(peer, int(args[4]), int(args[5]))
        elif cmd == "flood":
            cmd_flood(peer, float(args[4]), int(args[5]) if len(args) > 5 else 1)
        else:
            print(f"unknown command {cmd!r}", file=sys.stderr)
            return 2
    finally:
        peer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
