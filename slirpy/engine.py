"""The Python face of the C engine: the only module that touches ffi/lib.

It owns the translation between Python values and the engine's C interface:
the engine configuration, return codes turned into exceptions, buffers passed
with ``ffi.from_buffer``, punt-queue events turned into `Event` objects and
counters into a dict. It must not do protocol work or I/O of its own: the
engine does the data path, `slirpy.daemon` decides what to do with events.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_address

from slirpy._engine import ffi, lib
from slirpy.config import NetworkModel

VNET_HDR_LEN = 10
EV_DHCP = lib.SL_EV_DHCP
EV_FLOW_OPEN = lib.SL_EV_FLOW_OPEN
EV_FLOW_CLOSE = lib.SL_EV_FLOW_CLOSE
EV_NOTICE = lib.SL_EV_NOTICE
EV_TAP_DOWN = lib.SL_EV_TAP_DOWN
EV_POLICY_DENY = lib.SL_EV_POLICY_DENY
PROTO_TCP = lib.SL_TCP
PROTO_UDP = lib.SL_UDP
# enum sl_flow_close_reason, as -v prints them.
CLOSE_REASONS = {
    lib.SL_FC_UNSPEC: "closed",
    lib.SL_FC_FIN: "fin",
    lib.SL_FC_RST: "rst",
    lib.SL_FC_HOST_RST: "host-rst",
    lib.SL_FC_TIMEOUT: "timeout",
    lib.SL_FC_EVICTED: "evicted",
    lib.SL_FC_REFUSED: "refused",
    lib.SL_FC_POLICY: "policy",
}


# Egress policy (csrc/policy.c): struct sl_policy_rule's enums.
POLICY_ALLOW = lib.SL_POLICY_ALLOW
POLICY_DENY = lib.SL_POLICY_DENY
PP_TCP = lib.SL_PP_TCP
PP_UDP = lib.SL_PP_UDP
PP_ICMP = lib.SL_PP_ICMP
PM_CIDR = lib.SL_PM_CIDR
PM_HOST = lib.SL_PM_HOST
POLICY_MAX_RULES = lib.SL_POLICY_MAX_RULES
# SL_EV_POLICY_DENY's data when the default action decided.
POLICY_DEFAULT_RULE = 0xFFFFFFFF


class EngineError(OSError):
    """A C entry point returned -errno."""


class FdConsumedError(EngineError):
    """add_listener failed after the engine took the fd: it is closed already."""


class TunError(OSError):
    """The TAP device could not be opened; str() says what to do."""


@dataclass(frozen=True)
class Limits:
    """Hard caps on what a guest can make the engine hold (0 = default)."""

    # The engine's defaults (csrc/engine.c): 3840 flow sockets in all, plus
    # 256 descriptors for Python, keep slirpy under 4096 fds whatever
    # RLIMIT_NOFILE is. Larger values must be asked for (--limit).
    max_tcp_flows: int = 1856
    max_udp_flows: int = 1856
    max_icmp_flows: int = 128
    max_half_open: int = 512
    udp_idle_s: int = 60
    tcp_idle_s: int = 7200


@dataclass(frozen=True)
class FlowInfo:
    """What FLOW_OPEN / FLOW_CLOSE events carry besides the 5-tuple.

    ``duration_ns``, ``reason`` and the byte counts are set at close only;
    the byte counts are None where the engine has none (UDP, ICMP: counting
    them would be per-packet work).
    """

    inbound: bool
    duration_ns: int = 0
    reason: str = ""
    bytes_to_host: int | None = None
    bytes_to_guest: int | None = None


@dataclass(frozen=True)
class PolicyRule:
    """One compiled egress rule: struct sl_policy_rule, field for field.

    ``match`` is PM_CIDR (``family``/``prefix_len``/``addr``: the network's
    packed bytes, 4 or 16) or PM_HOST (any destination that reaches the
    host; the address fields are ignored). ``proto_mask``: PP_* bits, 0 =
    any. Ports are inclusive; ICMP has none, so a rule narrower than
    0-65535 never matches it. ``rule_id`` indexes the hit counters.
    """

    rule_id: int
    action: int
    match: int = PM_CIDR
    family: int = 4
    prefix_len: int = 0
    addr: bytes = b""
    proto_mask: int = 0
    port_lo: int = 0
    port_hi: int = 65535


@dataclass(frozen=True)
class Event:
    """One slow-path event from the engine's punt queue."""

    type: int
    family: int
    proto: int
    mac: bytes
    src: IPv4Address | IPv6Address | None
    dst: IPv4Address | IPv6Address | None
    sport: int
    dport: int
    data: bytes
    flow: FlowInfo | None = None


def _check(rc: int, what: str) -> int:
    if rc < 0:
        raise EngineError(-rc, f"{what}: {os.strerror(-rc)}")
    return rc


def _addr_bytes(addr: IPv4Address | IPv6Address | str | None, size: int) -> bytes:
    if addr is None or addr == "":
        return bytes(size)
    return ip_address(addr).packed


def _events_hook_failed(exc_type: type, exc: BaseException, tb: object) -> None:
    """An exception in the events callback: report it as add_reader would have."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # called outside a loop: nobody else would say it
        sys.stderr.write(f"slirpy: error in the engine's events callback: {exc!r}\n")
        return
    loop.call_exception_handler({"message": "Exception in the engine's events callback",
                                 "exception": exc})


@functools.cache
def _install_events_hook() -> None:
    """Attach the Python side of sl_py_events (once; at first use, not at import)."""

    @ffi.def_extern(name="sl_py_events", onerror=_events_hook_failed)
    def _on_events(ctx: object) -> None:
        ffi.from_handle(ctx)()


def _event_addr(raw: bytes, family: int) -> IPv4Address | IPv6Address | None:
    if family == 4:
        return IPv4Address(raw[:4])
    if family == 6:
        return IPv6Address(raw[:16])
    return None


# Listener modes (enum sl_listener_mode), by add_listener's `mode` name.
LISTENER_MODES = {
    "tap": lib.SL_LM_TAP,
    "splice": lib.SL_LM_SPLICE,
    "split": lib.SL_LM_SPLIT,
    "to_host_lo": lib.SL_LM_TO_HOST_LO,
}
MAX_ADDR_MAPS = 8  # SL_MAX_ADDR_MAPS
_Addr = IPv4Address | IPv6Address | str | None


@dataclass(frozen=True)
class AddrMap:
    """One entry of the engine's address-map table (struct sl_addr_map).

    A guest packet to `match` goes to `target` (same family; 127.0.0.1/::1
    is the host's loopback) and its replies come from `match`. `dns_only`:
    only TCP/UDP ports 53 and 853 are mapped, the rest refused.
    `target_port` 0 keeps the port.
    """

    family: int
    match: IPv4Address | IPv6Address | str
    target: IPv4Address | IPv6Address | str
    dns_only: bool = False
    target_port: int = 0


def _fill_addr_map(c: object, family: int, match: _Addr, target: _Addr, dns_only: bool,
                   target_port: int) -> None:
    """Fill the struct sl_addr_map `c`; a None match or target clears it."""
    size = 4 if family == 4 else 16
    if match is None or target is None or family == 0:
        c.family = 0
        return
    c.family = family
    c.dns_only = int(dns_only)
    c.target_port = target_port
    c.match = _addr_bytes(match, size).ljust(16, b"\0")
    c.target = _addr_bytes(target, size).ljust(16, b"\0")


class Engine:
    """One C engine instance: one epoll fd, the TAP, every flow."""

    def __init__(
        self,
        net: NetworkModel,
        *,
        vnet_hdr: bool = True,
        offload: bool = True,
        dns_udp_port: int = 0,
        dns_tcp_port: int = 0,
        outbound4: str | None = None,
        outbound6: str | None = None,
        limits: Limits | None = None,
        flow_events: bool = False,
        shared: bool = False,
        our_mac: bytes | None = None,
        guest4: _Addr = None,
        guest6: _Addr = None,
        gateway4: _Addr = None,
        gateway6: _Addr = None,
        dns4: _Addr = None,
        prefix6: IPv6Network | str | None = None,
        peer_sub4: _Addr = None,
        peer_sub6: _Addr = None,
        mtu: int | None = None,
        ipv4: bool = True,
        ipv6: bool | None = None,
        no_ra: bool = False,
        maps: Sequence[AddrMap] = (),
    ) -> None:
        """`net` gives slirp4netns's model (N+2 gateway, N+3 DNS, N+100 guest).

        Shared-address mode (pasta's model), `shared=True`: the guest owns
        the host's addresses and every address on the TAP answers ARP/NDP
        with `our_mac` (None or zeros: derived MACs). Then `guest4`/`guest6`
        are the guest's (= the host's) addresses, `gateway4`/`gateway6` the
        real gateways, `dns4` the --dns-forward address (all three unset:
        0.0.0.0), `prefix6` the IPv6 /64 (default: guest6's), `peer_sub4`/
        `peer_sub6` how a loopback client, or one using the guest's own
        address, appears on the TAP path (--map-guest-addr; default: the
        gateway), `ipv4`/`ipv6` which families exist, `no_ra` no
        unsolicited router advertisements, `mtu` overrides `net.mtu`.
        `maps`: the initial address-map table (see `set_addr_map`; it
        applies in both modes). Other keywords left at None take `net`'s.
        """
        limits = limits or Limits()
        cfg = ffi.new("struct sl_config *")
        cfg.net4 = net.cidr.network_address.packed
        cfg.prefix4 = net.prefixlen
        cfg.gw4 = net.gateway.packed
        cfg.dns4 = net.dns.packed
        cfg.guest4 = net.guest.packed
        cfg.ipv6 = int(net.ipv6)
        cfg.prefix6 = net.prefix6.network_address.packed
        cfg.mtu = net.mtu
        cfg.host_loopback = int(net.host_loopback)
        cfg.dns_enabled = int(net.dns_enabled)
        cfg.dns_udp_port = dns_udp_port
        cfg.dns_tcp_port = dns_tcp_port
        cfg.vnet_hdr_len = VNET_HDR_LEN if vnet_hdr else 0
        cfg.offload = int(offload and vnet_hdr)
        cfg.outbound4 = _addr_bytes(outbound4, 4)
        cfg.outbound6 = _addr_bytes(outbound6, 16)
        cfg.max_tcp_flows = limits.max_tcp_flows
        cfg.max_udp_flows = limits.max_udp_flows
        cfg.max_icmp_flows = limits.max_icmp_flows
        cfg.max_half_open = limits.max_half_open
        cfg.udp_idle_s = limits.udp_idle_s
        cfg.tcp_idle_s = limits.tcp_idle_s
        # Off by default: the engine then does no flow-event work at all.
        cfg.flow_events = int(flow_events)
        if mtu is not None:
            cfg.mtu = mtu
        if ipv6 is not None:
            cfg.ipv6 = int(ipv6)
        if prefix6 is not None:
            cfg.prefix6 = IPv6Network(prefix6, strict=False).network_address.packed
        for field, value in (("guest4", guest4), ("gw4", gateway4), ("dns4", dns4)):
            # Shared mode has no N+x addresses: what is not given is 0.0.0.0.
            if value is not None or shared:
                setattr(cfg, field, _addr_bytes(value, 4))
        if shared:
            cfg.shared_addr = 1
            cfg.no_ipv4 = int(not ipv4)
            cfg.guest6 = _addr_bytes(guest6, 16)
            cfg.peer_sub4 = _addr_bytes(peer_sub4 or gateway4, 4)
            cfg.peer_sub6 = _addr_bytes(peer_sub6 or gateway6, 16)
            if prefix6 is None and guest6:
                cfg.prefix6 = IPv6Network(f"{guest6}/64", strict=False).network_address.packed
        if our_mac is not None:
            cfg.our_mac = bytes(our_mac)
        cfg.no_ra = int(no_ra)
        if len(maps) > MAX_ADDR_MAPS:
            raise EngineError(errno.E2BIG, f"at most {MAX_ADDR_MAPS} address maps")
        for i, m in enumerate(maps):
            _fill_addr_map(cfg.maps[i], m.family, m.match, m.target, m.dns_only, m.target_port)
        ptr = lib.sl_engine_new(cfg)
        if ptr == ffi.NULL:
            raise EngineError(errno.ENOMEM, "cannot create the slirpy engine")
        self._e = ptr
        self.vnet_hdr = vnet_hdr
        self._ev = ffi.new("struct sl_event *")
        self._outbuf = bytearray(70000)
        self._names = [
            ffi.string(lib.sl_counter_name(i)).decode() for i in range(lib.sl_engine_ncounters())
        ]
        self._ctr = ffi.new("uint64_t[]", len(self._names))
        self._info = ffi.new("struct sl_flow_info *")

    def close(self) -> None:
        if self._e is not None:
            lib.sl_engine_free(self._e)
            self._e = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        return lib.sl_engine_fd(self._e)

    def set_tap(self, fd: int) -> None:
        """Give the engine the TAP fd; the engine owns (and closes) it."""
        os.set_blocking(fd, False)
        _check(lib.sl_engine_set_tap(self._e, fd), "attach TAP")

    def set_guest_mac(self, mac: bytes) -> None:
        lib.sl_engine_set_guest_mac(self._e, mac)

    def set_shared_addrs(self, guest4: _Addr, guest6: _Addr,
                         peer_sub4: _Addr, peer_sub6: _Addr) -> None:
        """Shared mode: the guest's addresses and the peer substitutes after a
        host address change (None: none). EngineError outside shared mode."""
        _check(lib.sl_engine_set_shared_addrs(
            self._e, _addr_bytes(guest4, 4), _addr_bytes(guest6, 16),
            _addr_bytes(peer_sub4, 4), _addr_bytes(peer_sub6, 16)), "set shared addresses")

    def poll(self, now_ns: int, budget: int = 256) -> int:
        return lib.sl_engine_poll(self._e, now_ns, budget)

    def reader(self, on_events: Callable[[], None], budget: int = 256) -> Callable[[], None]:
        """The callback for ``loop.add_reader(engine.fileno(), ...)``.

        It is C all the way down: it polls on CLOCK_MONOTONIC and calls
        @on_events (which drains `events`) only when the punt queue has any,
        so a wake-up that is pure data path runs no Python frame. Remove the
        reader before `close`: it holds the engine's raw pointer.
        """
        _install_events_hook()
        handle = ffi.new_handle(on_events)
        return functools.partial(lib.sl_engine_on_ready, self._e, budget, handle)

    def input_frame(self, frame: bytes, now_ns: int) -> None:
        _check(
            lib.sl_engine_input_frame(self._e, now_ns, ffi.from_buffer(frame), len(frame)),
            "input frame",
        )

    def flush(self, now_ns: int) -> None:
        lib.sl_engine_flush(self._e, now_ns)

    def take_output(self) -> list[bytes]:
        """Frames the engine sent while no TAP is attached (tests)."""
        out = []
        buf = ffi.from_buffer(self._outbuf)
        while True:
            n = lib.sl_engine_take_output(self._e, buf, len(self._outbuf))
            if n == 0:
                return out
            out.append(bytes(self._outbuf[:n]))

    def events(self) -> Iterator[Event]:
        ev = self._ev
        while lib.sl_engine_next_event(self._e, ev):
            fam = ev.family
            flow = None
            if ev.type in (EV_FLOW_OPEN, EV_FLOW_CLOSE):
                flow = self._flow_info(ev)
            yield Event(
                type=ev.type,
                family=fam,
                proto=ev.proto,
                mac=bytes(ffi.buffer(ev.mac, 6)),
                src=_event_addr(bytes(ffi.buffer(ev.src, 16)), fam),
                dst=_event_addr(bytes(ffi.buffer(ev.dst, 16)), fam),
                sport=ev.sport,
                dport=ev.dport,
                data=bytes(ffi.buffer(ev.data, ev.len)),
                flow=flow,
            )

    def _flow_info(self, ev: object) -> FlowInfo:
        info = self._info
        size = ffi.sizeof("struct sl_flow_info")
        ffi.memmove(info, ev.data, min(size, ev.len))
        has_bytes = bool(info.flags & lib.SL_FI_BYTES)
        closing = ev.type == EV_FLOW_CLOSE
        return FlowInfo(
            inbound=bool(info.flags & lib.SL_FI_INBOUND),
            duration_ns=int(info.duration_ns),
            reason=CLOSE_REASONS.get(info.reason, "closed") if closing else "",
            bytes_to_host=int(info.bytes_to_host) if has_bytes else None,
            bytes_to_guest=int(info.bytes_to_guest) if has_bytes else None,
        )

    def send_udp4(
        self,
        dst_mac: bytes | None,
        src: IPv4Address,
        sport: int,
        dst: IPv4Address,
        dport: int,
        payload: bytes,
    ) -> None:
        mac = ffi.NULL if dst_mac is None else dst_mac
        lib.sl_engine_send_udp4(
            self._e, mac, src.packed, sport, dst.packed, dport, payload, len(payload)
        )

    def add_listener(
        self, fd: int, proto: int, guest_addr: IPv4Address | IPv6Address, guest_port: int,
        fwd_id: int, *, splice: bool = False, mode: str | None = None,
        splice_to_loopback: bool = False,
    ) -> None:
        """Hand a bound, listening (TCP) or bound (UDP) socket fd to the engine.

        `mode` (None: "splice" if `splice` else "tap"; UDP: "tap" or
        "to_host_lo" only):
        "tap": through the TAP as a flow; "splice": relay by splice()
        through sockets of the namespace helper (set_ns_helper first);
        "split": loopback clients as "splice" (the guest sees `guest_addr`,
        pass its own address, as pasta does), the others through the TAP
        with their own address; "to_host_lo": `fd` listens in the guest's
        namespace (see `ns_loopback_socket`) and each connection is spliced
        to the host's 127.0.0.1/::1 (`guest_addr`'s family) at `guest_port`
        (pasta's -T; for UDP, pasta's -U: `fd` is a bound UDP socket of
        the namespace and each of its peers' datagrams are relayed to the
        host's loopback port and the answers back). `splice_to_loopback`
        ("splice"/"split" only; pasta's --host-lo-to-ns-lo): spliced
        connections go to the namespace's 127.0.0.1/::1 (`guest_addr`'s
        family) instead of `guest_addr`, so the guest sees its loopback as
        the peer; TAP clients are unchanged. FdConsumedError: the engine
        took and closed `fd`.
        """
        if mode is None:
            mode = "splice" if splice else "tap"
        if mode not in LISTENER_MODES:
            raise ValueError(f"listener mode must be one of {sorted(LISTENER_MODES)}, "
                             f"got {mode!r}")
        if splice_to_loopback and mode not in ("splice", "split"):
            raise ValueError(f"splice_to_loopback needs mode 'splice' or 'split', got {mode!r}")
        fam = 4 if guest_addr.version == 4 else 6
        os.set_blocking(fd, False)
        _check(
            lib.sl_engine_add_listener(self._e, fd, proto, guest_addr.packed, fam, guest_port,
                                       fwd_id),
            "add listener",
        )
        if mode != "tap":
            rc = lib.sl_engine_set_listener_splice(self._e, fwd_id, LISTENER_MODES[mode])
            if rc < 0:
                # The engine owns fd now: take it back out (it closes it).
                lib.sl_engine_remove_listener(self._e, fwd_id)
                raise FdConsumedError(-rc, f"{mode} listener: {os.strerror(-rc)}")
        if splice_to_loopback:
            lo = (IPv4Address("127.0.0.1") if fam == 4 else IPv6Address("::1")).packed
            rc = lib.sl_engine_set_listener_splice_addr(self._e, fwd_id, lo, fam)
            if rc < 0:
                lib.sl_engine_remove_listener(self._e, fwd_id)
                raise FdConsumedError(-rc, f"splice address: {os.strerror(-rc)}")

    def set_addr_map(
        self, idx: int, family: int, match: _Addr, target: _Addr, *,
        dns_only: bool = False, target_port: int = 0,
    ) -> None:
        """Set entry `idx` (0..MAX_ADDR_MAPS-1) of the address-map table.

        A guest packet to `match` then goes to `target` (same family); a
        None `match` or `target` (or family 0) clears the entry. New flows
        follow it at once; existing flows keep their sockets.
        """
        m = ffi.new("struct sl_addr_map *")
        _fill_addr_map(m, family, match, target, dns_only, target_port)
        _check(lib.sl_engine_set_addr_map(self._e, idx, m), "set address map")

    def set_ns_helper(self, fd: int) -> None:
        """Give the engine the socket to the namespace helper (it owns it then)."""
        _check(lib.sl_engine_set_ns_helper(self._e, fd), "set namespace helper")

    def set_ns_fds(self, netfd: int, userfd: int | None) -> None:
        """Let the engine make its spliced forwards' sockets in the guest's
        network namespace `netfd` itself (joining the user namespace
        `userfd` first, None: none), with no helper process; it owns the
        fds once this returns. Tried once here: EngineError if setns() is
        not possible (then the fds are still the caller's). Not once
        confined: use set_ns_helper there.
        """
        _check(lib.sl_engine_set_ns_fds(self._e, netfd, -1 if userfd is None else userfd),
               "set namespace fds")

    def remove_listener(self, fwd_id: int) -> None:
        _check(lib.sl_engine_remove_listener(self._e, fwd_id), "remove listener")

    def counters(self) -> dict[str, int]:
        n = lib.sl_engine_counters(self._e, self._ctr, len(self._names))
        return {self._names[i]: int(self._ctr[i]) for i in range(n)}

    def flows(self) -> list[dict[str, object]]:
        import json

        buf = ffi.new("char[]", 1 << 20)
        n = lib.sl_engine_list_flows(self._e, buf, 1 << 20)
        text = ffi.buffer(buf, n)[:].decode()
        return [json.loads(line) for line in text.splitlines() if line]

    def set_fault(self, drop_in_permille: int, drop_out_permille: int, seed: int = 1) -> None:
        """Deterministic random drop of frames in each direction (tests)."""
        lib.sl_engine_set_fault(self._e, drop_in_permille, drop_out_permille, seed)

    def set_policy(
        self, rules: Sequence[PolicyRule], default_allow: bool, nids: int,
        now_ns: int | None = None,
    ) -> None:
        """Replace the egress policy atomically (first match wins, then the default).

        `nids`: the number of distinct rule ids (the hit counters, reset here).
        Outbound flows the new policy denies are closed. No rules and
        `default_allow` is no policy at all. EngineError (EINVAL: a malformed
        rule, E2BIG: too many) leaves the old policy in place.
        """
        n = len(rules)
        arr = ffi.new("struct sl_policy_rule[]", max(n, 1))
        for i, r in enumerate(rules):
            c = arr[i]
            c.rule_id = r.rule_id
            c.match = r.match
            c.family = r.family
            c.prefix_len = r.prefix_len
            c.action = r.action
            c.proto_mask = r.proto_mask
            c.port_lo = r.port_lo
            c.port_hi = r.port_hi
            if r.match == PM_CIDR:
                if len(r.addr) != (4 if r.family == 4 else 16):
                    raise EngineError(errno.EINVAL, f"set policy: rule {i}: bad address")
                ffi.memmove(c.addr, r.addr, len(r.addr))
        now = time.monotonic_ns() if now_ns is None else now_ns
        action = POLICY_ALLOW if default_allow else POLICY_DENY
        _check(lib.sl_engine_set_policy(self._e, now, arr, n, nids, action), "set policy")

    def policy_hits(self, nids: int) -> list[int]:
        """Flows per rule id (0..nids-1), then those the default action decided."""
        out = ffi.new("uint64_t[]", nids + 1)
        n = _check(lib.sl_engine_policy_hits(self._e, out, nids + 1), "policy hits")
        return [int(out[i]) for i in range(n)] + [0] * (nids + 1 - n)


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the kernel (csrc/sys.c): once, when ready."""
    lib.sl_release_free_memory()


def setns(fd: int, nstype: int = 0) -> None:
    rc = lib.sl_setns(fd, nstype)
    if rc < 0:
        raise OSError(-rc, os.strerror(-rc))


def inotify_watch(path: str, mask: int) -> int:
    """A non-blocking inotify fd with one watch on `path` (IN_* `mask`); OSError."""
    fd = lib.sl_inotify_watch(os.fsencode(path), mask)
    if fd < 0:
        raise OSError(-fd, os.strerror(-fd), path)
    return int(fd)


def ns_helper_serve(sock: int, pidfd: int = -1) -> int:
    """The namespace helper's loop (csrc/splice.c); returns when told to stop."""
    return int(lib.sl_ns_helper_serve(sock, pidfd))


def ns_loopback_socket(helper: socket.socket, proto: int, family: int, port: int) -> int:
    """A socket of the guest's netns bound to its loopback at `port`, made
    by a namespace helper (`ns_helper_serve`) on the blocking `helper`
    socket: listening for PROTO_TCP (for add_listener(mode="to_host_lo"),
    pasta's -T), bound for PROTO_UDP. Ask a helper of your own: the
    engine's (set_ns_helper) answers the engine only. OSError on failure.
    """
    kind = b"L" if proto == PROTO_TCP else b"U"
    helper.send(kind + bytes([family]) + port.to_bytes(2, "big"))
    data, fds, _flags, _addr = socket.recv_fds(helper, 1, 1)
    if not data or data[0] != 0 or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        code = data[0] if data and data[0] else errno.EPROTO
        raise OSError(code, f"namespace loopback socket on port {port}: {os.strerror(code)}")
    return fds[0]


def tun_open(name: str, *, vnet_hdr: bool = True, offload: bool = True) -> int:
    err = ffi.new("char[]", 512)
    fd = lib.sl_tun_open(name.encode(), int(vnet_hdr), int(offload and vnet_hdr), err, 512)
    if fd < 0:
        raise TunError(-fd, ffi.string(err).decode())
    return fd


def sandbox_apply(extra_dirs: list[str]) -> None:
    """--enable-sandbox (csrc/sandbox.c); raises OSError with one line."""
    err = ffi.new("char[]", 512)
    keep = [ffi.new("char[]", d.encode()) for d in extra_dirs]
    arr = ffi.new("const char *[]", keep) if keep else ffi.NULL
    rc = lib.sl_sandbox_apply(arr, len(keep), err, 512)
    if rc < 0:
        raise OSError(-rc, ffi.string(err).decode())


def seccomp_apply() -> None:
    """--enable-seccomp (csrc/sandbox.c); raises OSError with one line."""
    err = ffi.new("char[]", 512)
    rc = lib.sl_seccomp_apply(err, 512)
    if rc < 0:
        raise OSError(-rc, ffi.string(err).decode())


def ns_loopback_socket_at(netfd: int, userfd: int | None, proto: int, family: int,
                          port: int) -> int:
    """As `ns_loopback_socket`, made without a helper process: a short-lived
    clone() child joins the user namespace `userfd` (None: none) and the
    network namespace `netfd` (csrc/nssock.c). Not once confined. OSError.
    """
    fd = lib.sl_ns_loopback_socket(netfd, -1 if userfd is None else userfd,
                                   int(proto == PROTO_TCP), family, port)
    if fd < 0:
        raise OSError(-fd, f"namespace loopback socket on port {port}: {os.strerror(-fd)}")
    return int(fd)


def ns_tcp_sockets(netfd: int, userfd: int | None, family: int, n: int) -> list[int]:
    """Up to `n` (at most 32) non-blocking TCP sockets of `family` (4/6) in the
    network namespace `netfd`: one round of what spliced forwards' pool does
    (tests, measurements). OSError.
    """
    fds = ffi.new("int[]", max(n, 1))
    got = lib.sl_ns_make_sockets(netfd, -1 if userfd is None else userfd, family, fds, n)
    if got < 0:
        raise OSError(-got, f"namespace sockets: {os.strerror(-got)}")
    return [int(fds[i]) for i in range(got)]
