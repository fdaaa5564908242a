"""Seed corpus for tests/fuzz/fuzz_engine.c: one file per scenario, in the
harness's input format (a configuration byte, then records of 2-byte length,
1-byte clock step and the frame).

Owns only the seeds. It must not send anything anywhere: scapy is used to
build bytes, never to put them on a wire. Destinations are the gateway N+2
(the harness's loopback peer on port 7777), the DNS address N+3 and a few
addresses the harness refuses (its connect() only reaches loopback); in
shared-address mode, the address maps' `match` addresses (loopback targets).

Usage: python make_corpus.py OUTDIR
"""

from __future__ import annotations

import hashlib
import pathlib
import struct
import sys

from scapy.all import (
    ARP,
    BOOTP,
    DHCP,
    DNS,
    DNSQR,
    ICMP,
    IP,
    TCP,
    UDP,
    Ether,
    IPv6,
    raw,
)
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6ND_NS,
    ICMPv6ND_RS,
    ICMPv6NDOptSrcLLAddr,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)

GUEST_MAC = "52:54:00:12:34:56"
GW_MAC = "52:55:0a:00:02:02"
DNS_MAC = "52:55:0a:00:02:03"
GW6_MAC = "52:56:00:00:00:02"
BCAST = "ff:ff:ff:ff:ff:ff"
GUEST, GW, DNS_IP = "10.0.2.100", "10.0.2.2", "10.0.2.3"
GUEST6, GW6, DNS6 = "fd00::100", "fd00::2", "fd00::3"
PORT = 7777

# Configuration bits, as fuzz_engine.c reads byte 0.
VNET, OFFLOAD, IPV6, NO_LOOPBACK, NO_DNS = 0x01, 0x02, 0x04, 0x08, 0x10
FWD = 0x80
# Both "disabled" bits at once: shared-address mode (pasta's model).
SHARED = NO_LOOPBACK | NO_DNS
OUR_MAC = "9a:55:9a:55:9a:55"
DNS_FWD, MAP_GUEST, PEER_SUB6 = "169.254.1.1", "169.254.1.2", "fe80::1"
FWD_TCP_CLIENT, FWD_UDP_CLIENT = 40080, 40053
MTU_68, MTU_9000, MTU_65520 = 0x20, 0x40, 0x60

START_NS = 1000 * 1_000_000_000
STEP_NS = 10_000_000


def vnet_hdr(flags: int = 0, gso_type: int = 0, hdr_len: int = 0, gso_size: int = 0,
             csum_start: int = 0, csum_offset: int = 0) -> bytes:
    """struct virtio_net_hdr in the TAP's (native, little-endian) order."""
    return struct.pack("<BBHHHH", flags, gso_type, hdr_len, gso_size, csum_start,
                       csum_offset)


class Seed:
    """Frames of one scenario, with the fake clock the harness will use (so
    that the engine's SYN-ACK sequence number can be predicted, see isn())."""

    def __init__(self, config: int) -> None:
        self.config = config
        self.records: list[bytes] = []
        self.now = START_NS
        self.isn_state = 0

    def add(self, pkt, step: int = 1, vnet: bytes | None = None) -> Seed:
        frame = pkt if isinstance(pkt, bytes) else raw(pkt)
        if self.config & VNET:
            frame = (vnet if vnet is not None else vnet_hdr()) + frame
        self.now += step * STEP_NS if step < 200 else (step - 199) * 30 * 1_000_000_000
        self.records.append(struct.pack("!HB", len(frame), step) + frame)
        return self

    def isn(self) -> int:
        """The ISN the engine picks for a SYN fed at the current clock
        (csrc/tcp.c new_isn(): an LCG stepped with the clock, from zero)."""
        self.isn_state = (self.isn_state * 6364136223846793005 + 1442695040888963407
                          + self.now) & 0xFFFFFFFFFFFFFFFF
        return self.isn_state >> 32

    def data(self) -> bytes:
        return bytes([self.config]) + b"".join(self.records)


def e4(dst_mac: str = GW_MAC) -> Ether:
    return Ether(dst=dst_mac, src=GUEST_MAC)


def e6(dst_mac: str = GW6_MAC) -> Ether:
    return Ether(dst=dst_mac, src=GUEST_MAC)


def tcp_session(config: int, six: bool = False, dst: str | None = None, dport: int = PORT,
                payload: bytes = b"GET / HTTP/1.0\r\n\r\n", mac: str | None = None) -> Seed:
    """SYN, ACK of the predicted SYN-ACK, data, FIN, then a timer jump."""
    s = Seed(config)
    base = (e6(mac or GW6_MAC) / IPv6(src=GUEST6, dst=dst or GW6) if six
            else e4(mac or GW_MAC) / IP(src=GUEST, dst=dst or GW))
    opts = [("MSS", 1460), ("SAckOK", b""), ("NOP", None), ("WScale", 7)]
    s.add(base / TCP(sport=40000, dport=dport, flags="S", seq=1000, options=opts,
                     window=65535))
    ours = s.isn()
    s.add(base / TCP(sport=40000, dport=dport, flags="A", seq=1001, ack=ours + 1,
                     window=512))
    s.add(base / TCP(sport=40000, dport=dport, flags="PA", seq=1001, ack=ours + 1,
                     window=512) / payload)
    s.add(base / TCP(sport=40000, dport=dport, flags="A", seq=1001 + len(payload),
                     ack=ours + 1 + 28, window=512))
    s.add(base / TCP(sport=40000, dport=dport, flags="FA", seq=1001 + len(payload),
                     ack=ours + 1 + 28 + 1, window=512))
    s.add(base / TCP(sport=40000, dport=dport, flags="A", seq=1002 + len(payload),
                     ack=ours + 30, window=512), step=250)
    return s


def gso_session(config: int) -> Seed:
    """A TSO super-frame (64 KiB of data in one frame) after a handshake."""
    s = Seed(config)
    base = e4() / IP(src=GUEST, dst=GW)
    s.add(base / TCP(sport=40001, dport=PORT, flags="S", seq=5000,
                     options=[("MSS", 1460), ("WScale", 7)]))
    ours = s.isn()
    s.add(base / TCP(sport=40001, dport=PORT, flags="A", seq=5001, ack=ours + 1))
    data = bytes(range(256)) * 40
    seg = base / TCP(sport=40001, dport=PORT, flags="PA", seq=5001, ack=ours + 1) / data
    b = raw(seg)
    s.add(b, vnet=vnet_hdr(1, 1, 14 + 20 + 20, 1448, 14 + 20, 16))
    return s


def fwd_sessions(config: int, peer4: str = GW, peer6: str = GW6,
                 mac: str | None = None) -> tuple[Seed, Seed]:
    """Answers to the harness's port forwards (config bit 0x80): the guest
    completes the engine's SYN to port 80 (its ISN is predicted for the clock
    of the first frame, when the harness's client is accepted) and sends data
    and FIN; and it answers the datagram that arrived on port 5353. The
    engine's peer is `peer4`/`peer6` (shared mode: the substitute address)."""
    six = bool(config & IPV6)
    hello = (Ether(dst=BCAST, src=GUEST_MAC)
             / ARP(op=1, hwsrc=GUEST_MAC, psrc=GUEST, pdst=GW))
    base = (e6(mac or GW6_MAC) / IPv6(src=GUEST6, dst=peer6) if six
            else e4(mac or GW_MAC) / IP(src=GUEST, dst=peer4))
    t = Seed(config)
    t.add(hello)
    ours = t.isn()
    t.add(base / TCP(sport=80, dport=FWD_TCP_CLIENT, flags="SA", seq=7000, ack=ours + 1,
                     options=[("MSS", 1460), ("WScale", 7)]))
    t.add(base / TCP(sport=80, dport=FWD_TCP_CLIENT, flags="PA", seq=7001, ack=ours + 1)
          / b"HTTP/1.0 200 OK\r\n\r\n")
    t.add(base / TCP(sport=80, dport=FWD_TCP_CLIENT, flags="FA", seq=7020, ack=ours + 1),
          step=250)
    u = Seed(config)
    u.add(hello)
    u.add(base / UDP(sport=5353, dport=FWD_UDP_CLIENT) / b"reply")
    u.add(base / UDP(sport=5353, dport=FWD_UDP_CLIENT) / b"reply again", step=255)
    return t, u


def simple(config: int, *pkts, step: int = 1) -> Seed:
    s = Seed(config)
    for p in pkts:
        s.add(p, step=step)
    return s


def seeds() -> dict[str, Seed]:
    dns_q = DNS(id=0x1234, rd=1, qd=DNSQR(qname="example.test"))
    dhcp = (Ether(dst=BCAST, src=GUEST_MAC) / IP(src="0.0.0.0", dst="255.255.255.255")
            / UDP(sport=68, dport=67)
            / BOOTP(chaddr=bytes.fromhex("525400123456"), xid=0x42)
            / DHCP(options=[("message-type", "discover"), "end"]))
    out: dict[str, Seed] = {}
    for cfg, tag in ((0, "plain"), (VNET, "vnet")):
        out[f"arp-{tag}"] = simple(
            cfg,
            Ether(dst=BCAST, src=GUEST_MAC) / ARP(op=1, hwsrc=GUEST_MAC, psrc=GUEST, pdst=GW),
            Ether(dst=BCAST, src=GUEST_MAC) / ARP(op=1, hwsrc=GUEST_MAC, psrc=GUEST,
                                                  pdst=DNS_IP),
            Ether(dst=BCAST, src=GUEST_MAC) / ARP(op=2, hwsrc=GUEST_MAC, psrc=GUEST,
                                                  pdst=GUEST))
        out[f"icmp-{tag}"] = simple(
            cfg,
            e4() / IP(src=GUEST, dst=GW) / ICMP(id=7, seq=1) / b"ping",
            e4(DNS_MAC) / IP(src=GUEST, dst=DNS_IP) / ICMP(id=7, seq=2),
            e4() / IP(src=GUEST, dst="192.0.2.1") / ICMP(id=7, seq=3),
            e4() / IP(src=GUEST, dst=GW) / ICMP(type=13),
            e4() / IP(src=GUEST, dst=GW, ttl=1) / ICMP(id=7, seq=4))
        out[f"udp-{tag}"] = simple(
            cfg,
            e4() / IP(src=GUEST, dst=GW) / UDP(sport=40000, dport=PORT) / b"hello",
            e4() / IP(src=GUEST, dst=GW) / UDP(sport=40000, dport=PORT) / b"again",
            e4() / IP(src=GUEST, dst="255.255.255.255") / UDP(sport=40001, dport=PORT),
            e4() / IP(src=GUEST, dst=GW) / UDP(sport=40002, dport=1) / b"closed",
            e4() / IP(src=GUEST, dst="198.51.100.7") / UDP(sport=40003, dport=9) / b"x")
        out[f"dns-{tag}"] = simple(
            cfg,
            e4(DNS_MAC) / IP(src=GUEST, dst=DNS_IP) / UDP(sport=5353, dport=53) / dns_q,
            e4(DNS_MAC) / IP(src=GUEST, dst=DNS_IP) / UDP(sport=5353, dport=54) / dns_q)
        out[f"dhcp-{tag}"] = simple(cfg, dhcp)
        out[f"tcp4-{tag}"] = tcp_session(cfg)
        out[f"tcp4-dns-{tag}"] = tcp_session(
            cfg, dst=DNS_IP, dport=53,
            payload=struct.pack("!H", len(raw(dns_q))) + raw(dns_q))
        out[f"tcp4-closed-{tag}"] = simple(
            cfg,
            e4() / IP(src=GUEST, dst=GW) / TCP(sport=40000, dport=1, flags="S"),
            e4() / IP(src=GUEST, dst="203.0.113.9") / TCP(sport=40000, dport=80, flags="S"),
            e4() / IP(src=GUEST, dst=GW) / TCP(sport=40000, dport=PORT, flags="A", ack=5))
        out[f"ip4-odd-{tag}"] = simple(
            cfg,
            e4() / IP(src=GUEST, dst=GW, flags="MF", frag=0) / UDP(dport=PORT) / b"frag",
            e4() / IP(src=GUEST, dst=GW, options=b"\x94\x04\x00\x00")
            / UDP(sport=40000, dport=PORT) / b"router-alert",
            e4() / IP(src=GUEST, dst=GW, proto=47) / b"gre?",
            e4() / IP(src="0.0.0.0", dst=GW) / UDP(dport=PORT),
            e4() / IP(src=GW, dst=GW) / UDP(dport=PORT))
        cfg6 = cfg | IPV6
        out[f"ndp-{tag}"] = simple(
            cfg6,
            Ether(dst="33:33:ff:00:00:02", src=GUEST_MAC)
            / IPv6(src=GUEST6, dst="ff02::1:ff00:2") / ICMPv6ND_NS(tgt=GW6)
            / ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC),
            Ether(dst="33:33:00:00:00:02", src=GUEST_MAC)
            / IPv6(src="fe80::5054:ff:fe12:3456", dst="ff02::2") / ICMPv6ND_RS()
            / ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC),
            Ether(dst="33:33:ff:00:01:00", src=GUEST_MAC)
            / IPv6(src="::", dst="ff02::1:ff00:100") / ICMPv6ND_NS(tgt=GUEST6))
        out[f"ip6-{tag}"] = simple(
            cfg6,
            e6() / IPv6(src=GUEST6, dst=GW6) / ICMPv6EchoRequest(id=3, seq=1, data=b"p6"),
            e6() / IPv6(src=GUEST6, dst=GW6) / UDP(sport=40000, dport=PORT) / b"u6",
            e6() / IPv6(src=GUEST6, dst=DNS6) / UDP(sport=40000, dport=53) / dns_q,
            e6() / IPv6(src=GUEST6, dst=GW6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
            / IPv6ExtHdrRouting() / UDP(sport=40001, dport=PORT) / b"ext",
            e6() / IPv6(src=GUEST6, dst=GW6) / IPv6ExtHdrFragment(m=1)
            / UDP(sport=40002, dport=PORT) / b"frag6")
        out[f"tcp6-{tag}"] = tcp_session(cfg6, six=True)
    out["gso-vnet"] = gso_session(VNET | OFFLOAD)
    # A USO super-frame: 1000 bytes cut every 300 (partial checksum, hdr_len).
    out["uso-vnet"] = Seed(VNET | OFFLOAD).add(
        e4() / IP(src=GUEST, dst=GW) / UDP(sport=40003, dport=PORT) / (b"s" * 1000),
        vnet=vnet_hdr(1, 5, 14 + 20 + 8, 300, 14 + 20, 6))
    for cfg, tag in ((FWD, "fwd4"), (FWD | IPV6, "fwd6"), (FWD | VNET | OFFLOAD, "fwd4-vnet")):
        out[f"{tag}-tcp"], out[f"{tag}-udp"] = fwd_sessions(cfg)
    out["tcp4-mtu68"] = tcp_session(MTU_68)
    out["tcp4-mtu65520-vnet"] = tcp_session(VNET | OFFLOAD | MTU_65520)
    out["tcp4-noloopback"] = tcp_session(NO_LOOPBACK)
    out["dns-disabled"] = simple(
        NO_DNS, e4(DNS_MAC) / IP(src=GUEST, dst=DNS_IP) / UDP(sport=5353, dport=53) / dns_q)
    # More UDP flows than the harness's cap (32): LRU eviction.
    out["udp-cap"] = simple(0, *[e4() / IP(src=GUEST, dst=GW) / UDP(sport=30000 + i, dport=PORT)
                                 / b"c" for i in range(40)])
    out["timers"] = simple(
        IPV6, e4() / IP(src=GUEST, dst=GW) / UDP(sport=40000, dport=PORT) / b"t",
        e6() / IPv6(src=GUEST6, dst=GW6) / UDP(sport=40000, dport=PORT) / b"t6", step=255)
    out.update(shared_seeds(dns_q))
    return out


def shared_seeds(dns_q: DNS) -> dict[str, Seed]:
    """Shared-address mode (config SHARED): ARP/NDP for any address but the
    guest's own, the address maps (fuzz_engine.c shared_config()), inbound
    peers as the substitute address."""
    def arp(op: int, psrc: str, pdst: str) -> Ether:
        return Ether(dst=BCAST, src=GUEST_MAC) / ARP(op=op, hwsrc=GUEST_MAC, psrc=psrc,
                                                     pdst=pdst)

    def ns(tgt: str, src: str = "fe80::5054:ff:fe12:3456") -> Ether:
        return (Ether(dst="33:33:ff:00:00:02", src=GUEST_MAC)
                / IPv6(src=src, dst="ff02::1:ff00:2", hlim=255) / ICMPv6ND_NS(tgt=tgt)
                / ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC))

    rs = (Ether(dst="33:33:00:00:00:02", src=GUEST_MAC)
          / IPv6(src="fe80::5054:ff:fe12:3456", dst="ff02::2", hlim=255) / ICMPv6ND_RS()
          / ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC))
    out: dict[str, Seed] = {}
    out["shared-arp"] = simple(
        SHARED, arp(1, GUEST, GW), arp(1, GUEST, "192.0.2.77"), arp(1, "0.0.0.0", GUEST),
        arp(1, GUEST, GUEST), arp(2, GUEST, GUEST), arp(1, GUEST, MAP_GUEST))
    for cfg, tag in ((SHARED | IPV6, "ndp"), (SHARED | IPV6 | MTU_9000, "ndp-ra")):
        out[f"shared-{tag}"] = simple(cfg, ns(GW6), ns("2001:db8::1"), ns(GUEST6, src="::"),
                                      ns(GUEST6), rs)
    out["shared-udp"] = simple(
        SHARED,
        e4(OUR_MAC) / IP(src=GUEST, dst=DNS_FWD) / UDP(sport=5353, dport=53) / dns_q,
        e4(OUR_MAC) / IP(src=GUEST, dst=DNS_FWD) / UDP(sport=5353, dport=PORT) / b"not dns",
        e4(OUR_MAC) / IP(src=GUEST, dst=MAP_GUEST) / UDP(sport=40000, dport=PORT) / b"mg",
        e4(OUR_MAC) / IP(src=GUEST, dst=GW) / UDP(sport=40001, dport=PORT) / b"gw",
        e4(OUR_MAC) / IP(src=GUEST, dst="127.0.0.1") / UDP(sport=40002, dport=PORT),
        e4(OUR_MAC) / IP(src=GUEST, dst="224.0.0.251") / UDP(sport=5353, dport=5353),
        e4(OUR_MAC) / IP(src=GUEST, dst=GW) / ICMP(id=9, seq=1) / b"ping")
    out["shared-udp6"] = simple(
        SHARED | IPV6,
        e6(OUR_MAC) / IPv6(src=GUEST6, dst=DNS6) / UDP(sport=5353, dport=53) / dns_q,
        e6(OUR_MAC) / IPv6(src=GUEST6, dst=GW6) / UDP(sport=40000, dport=PORT) / b"u6",
        e6(OUR_MAC) / IPv6(src=GUEST6, dst="::1") / UDP(sport=40001, dport=PORT),
        e6(OUR_MAC) / IPv6(src=GUEST6, dst=GW6) / ICMPv6EchoRequest(id=3, seq=1))
    out["shared-tcp4"] = tcp_session(SHARED, mac=OUR_MAC)
    out["shared-tcp4-dnsfwd"] = tcp_session(
        SHARED, dst=DNS_FWD, dport=53, mac=OUR_MAC,
        payload=struct.pack("!H", len(raw(dns_q))) + raw(dns_q))
    out["shared-tcp6"] = tcp_session(SHARED | IPV6, six=True, mac=OUR_MAC)
    for cfg, tag in ((SHARED | FWD, "fwd4"), (SHARED | FWD | IPV6, "fwd6")):
        out[f"shared-{tag}-tcp"], out[f"shared-{tag}-udp"] = fwd_sessions(
            cfg, peer4=MAP_GUEST, peer6=PEER_SUB6, mac=OUR_MAC)
    return out


def write(outdir: pathlib.Path) -> int:
    outdir.mkdir(parents=True, exist_ok=True)
    n = 0
    for name, seed in seeds().items():
        data = seed.data()
        digest = hashlib.sha1(data).hexdigest()[:12]
        (outdir / f"seed-{name}-{digest}").write_bytes(data)
        n += 1
    return n


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    n = write(pathlib.Path(argv[1]))
    print(f"wrote {n} seeds to {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
