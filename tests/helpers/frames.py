"""Composable frame builders and checks for the engine's packet-level tests.

Builders return scapy packets (or raw bytes for the bulk paths, where scapy is
too slow); checks take what the engine sent (`Out`) and assert on it. Every
checksum check recomputes the sum independently (checksum.py's RFC 1071
code), so a test never trusts the engine's own arithmetic.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

# Re-exported: tests take their scapy layers from here, one import line.
from scapy.all import ARP, ICMP, IP, TCP, UDP, Ether, IPv6, raw  # noqa: F401
from scapy.layers.inet6 import (  # noqa: F401
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptRDNSS,
    ICMPv6NDOptSrcLLAddr,
)

from tests.helpers.checksum import rfc1071

GUEST_MAC = "52:54:00:12:34:56"
GW_MAC = "52:55:0a:00:02:02"
DNS_MAC = "52:55:0a:00:02:03"
GW6_MAC = "52:56:00:00:00:02"
DNS6_MAC = "52:56:00:00:00:03"
BCAST = "ff:ff:ff:ff:ff:ff"
GUEST = "10.0.2.100"
GW = "10.0.2.2"
DNS = "10.0.2.3"
GUEST6 = "fd00::100"
GW6 = "fd00::2"
DNS6 = "fd00::3"

# struct virtio_net_hdr, native (little-endian) byte order as the TAP uses it
VNET = struct.Struct("<BBHHHH")
VNET_F_NEEDS_CSUM = 1
GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6 = 0, 1, 3, 4
TCP_FLAGS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20}


@dataclass(frozen=True)
class Vnet:
    flags: int = 0
    gso_type: int = 0
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    def pack(self) -> bytes:
        return VNET.pack(self.flags, self.gso_type, self.hdr_len, self.gso_size,
                         self.csum_start, self.csum_offset)


@dataclass
class Out:
    """One frame the engine sent: the raw Ethernet bytes, the virtio header
    (None without vnet_hdr) and the scapy dissection."""

    data: bytes
    vnet: Vnet | None
    pkt: Ether

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Out({self.vnet}, {self.pkt.summary()})"


def split_out(frame: bytes, vnet_hdr: bool) -> Out:
    vh = None
    if vnet_hdr:
        vh = Vnet(*VNET.unpack_from(frame))
        frame = frame[VNET.size:]
    return Out(frame, vh, Ether(frame))


# ------------------------------------------------------------------ builders


def eth(dst: str = GW_MAC, src: str = GUEST_MAC) -> Ether:
    return Ether(dst=dst, src=src)


def arp_request(target: str, *, sender: str = GUEST, mac: str = GUEST_MAC) -> Ether:
    return Ether(dst=BCAST, src=mac) / ARP(op=1, hwsrc=mac, psrc=sender, pdst=target)


def ip4(dst: str = GW, src: str = GUEST, **kw) -> Ether:
    return eth() / IP(src=src, dst=dst, **kw)


def ip6(dst: str = GW6, src: str = GUEST6, **kw) -> Ether:
    return eth(dst=GW6_MAC) / IPv6(src=src, dst=dst, **kw)


def tcp4(dport: int, *, sport: int = 40000, flags: str = "S", seq: int = 1000,
         ack: int = 0, window: int = 65535, options=None, payload: bytes = b"",
         dst: str = GW, src: str = GUEST) -> Ether:
    t = TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, window=window,
            options=options or [])
    return ip4(dst, src) / t / payload if payload else ip4(dst, src) / t


def tcp6(dport: int, *, sport: int = 40000, flags: str = "S", seq: int = 1000,
         ack: int = 0, window: int = 65535, options=None, payload: bytes = b"",
         dst: str = GW6, src: str = GUEST6) -> Ether:
    t = TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, window=window,
            options=options or [])
    return ip6(dst, src) / t / payload if payload else ip6(dst, src) / t


def udp4(dport: int, payload: bytes = b"", *, sport: int = 40000, dst: str = GW,
         src: str = GUEST) -> Ether:
    return ip4(dst, src) / UDP(sport=sport, dport=dport) / payload


def csum16(data: bytes) -> int:
    """RFC 1071 checksum of @data, as stored in a header."""
    return rfc1071(data)


def _a4(a: str) -> bytes:
    return ipaddress.IPv4Address(a).packed


def _a6(a: str) -> bytes:
    return ipaddress.IPv6Address(a).packed


def pseudo4(src: str, dst: str, proto: int, length: int) -> bytes:
    return _a4(src) + _a4(dst) + struct.pack("!BBH", 0, proto, length)


def pseudo6(src: str, dst: str, proto: int, length: int) -> bytes:
    return _a6(src) + _a6(dst) + struct.pack("!I3xB", length, proto)


def raw_tcp4(dport: int, seq: int, ack: int, payload: bytes = b"", *, flags: int = 0x10,
             window: int = 65535, sport: int = 40000, dst: str = GW, src: str = GUEST,
             vnet: bytes | None = None) -> bytes:
    """A TCP/IPv4 frame built with struct, for the bulk paths (fast)."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                      5 << 4, flags, window, 0, 0)
    seg = tcp + payload
    c = csum16(pseudo4(src, dst, 6, len(seg)) + seg)
    seg = seg[:16] + struct.pack("!H", c) + seg[18:]
    iph = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(seg), 0, 0x4000, 64, 6, 0,
                      _a4(src), _a4(dst))
    iph = iph[:10] + struct.pack("!H", csum16(iph)) + iph[12:]
    mac = bytes.fromhex(GW_MAC.replace(":", "")) + bytes.fromhex(GUEST_MAC.replace(":", ""))
    frame = mac + b"\x08\x00" + iph + seg
    return (vnet or b"") + frame


# ------------------------------------------------------------------- checks


def check_ipv4_header(pkt: Ether) -> None:
    ip = pkt[IP]
    hdr = raw(ip)[: ip.ihl * 4]
    assert csum16(hdr) == 0, f"bad IPv4 header checksum in {pkt.summary()}"


def check_l4_csum(pkt: Ether) -> None:
    """The transport checksum (TCP, UDP, ICMP, ICMPv6) is complete and right."""
    if IP in pkt:
        ip = pkt[IP]
        check_ipv4_header(pkt)
        l4 = raw(ip.payload)[: ip.len - ip.ihl * 4]
        if ip.proto == 1:
            assert csum16(l4) == 0, f"bad ICMP checksum in {pkt.summary()}"
            return
        ps = pseudo4(ip.src, ip.dst, ip.proto, len(l4))
    else:
        ip6_ = pkt[IPv6]
        l4 = raw(ip6_.payload)[: ip6_.plen]
        ps = pseudo6(ip6_.src, ip6_.dst, ip6_.nh, len(l4))
    assert csum16(ps + l4) == 0, f"bad L4 checksum in {pkt.summary()}"


def l4_bytes(out: Out) -> tuple[bytes, bytes]:
    """(pseudo-header, transport bytes) of an IPv4 or IPv6 frame."""
    pkt = out.pkt
    if IP in pkt:
        ip = pkt[IP]
        l4 = raw(ip.payload)[: ip.len - ip.ihl * 4]
        return pseudo4(ip.src, ip.dst, ip.proto, len(l4)), l4
    ip6_ = pkt[IPv6]
    l4 = raw(ip6_.payload)[: ip6_.plen]
    return pseudo6(ip6_.src, ip6_.dst, ip6_.nh, len(l4)), l4


def check_partial_csum(out: Out) -> None:
    """A NEEDS_CSUM frame: the field holds the folded pseudo-header sum (not
    inverted), and finishing it the way the guest's kernel would gives a
    correct checksum."""
    vh = out.vnet
    assert vh is not None and vh.flags & VNET_F_NEEDS_CSUM
    ps, l4 = l4_bytes(out)
    start = vh.csum_start
    assert out.data[start:start + len(l4)] == l4, "csum_start is not the L4 header"
    field = struct.unpack_from("!H", l4, vh.csum_offset)[0]
    assert field == (~csum16(ps)) & 0xFFFF, "partial csum is not the pseudo-header sum"
    done = csum16(l4)  # the device's job: sum from csum_start, store at offset
    fixed = l4[: vh.csum_offset] + struct.pack("!H", done) + l4[vh.csum_offset + 2:]
    assert csum16(ps + fixed) == 0


def check_csum(out: Out) -> None:
    """Whatever the framing, the checksum is right: complete, or partial with
    NEEDS_CSUM."""
    if out.vnet is not None and out.vnet.flags & VNET_F_NEEDS_CSUM:
        if IP in out.pkt:
            check_ipv4_header(out.pkt)
        check_partial_csum(out)
    else:
        check_l4_csum(out.pkt)


def tcp_flags(pkt: Ether) -> str:
    return str(pkt[TCP].flags)


def tcp_payload(pkt: Ether) -> bytes:
    if IP in pkt:
        ip = pkt[IP]
        seg = raw(ip.payload)[: ip.len - ip.ihl * 4]
    else:
        seg = raw(pkt[IPv6].payload)[: pkt[IPv6].plen]
    return seg[pkt[TCP].dataofs * 4:]


def tcp_options(pkt: Ether) -> dict:
    return {k: v for k, v in pkt[TCP].options}
