"""What slirpy tells a person about its traffic: flow lines and the summary.

This module owns the text of `-v`'s per-flow lines (`flow_line`) and of the
traffic summary printed at exit (`stats_table`). It formats; it must not
print, count or decide when (the daemon does).
"""

from __future__ import annotations

from typing import Any

from slirpy.engine import EV_FLOW_OPEN


def _endpoint(addr: object, port: int | None) -> str:
    if port is None:
        return str(addr)
    return f"[{addr}]:{port}" if ":" in str(addr) else f"{addr}:{port}"


def _duration_text(ns: int) -> str:
    if ns < 1_000_000:
        return f"{ns / 1000:.0f} us"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.1f} ms"
    return f"{ns / 1e9:.1f} s"


def flow_line(ev: Any) -> str:
    """One line for a FLOW_OPEN or FLOW_CLOSE event (slirpy.engine.Event).

    ``->`` is a flow the guest opened, ``<-`` one opened through a published
    port; the guest's end is always on the left. A close adds why, how long
    the flow lived and, for TCP, the bytes each way ("out" = from the guest).
    """
    proto = {6: "tcp", 17: "udp"}.get(ev.proto, "icmp")
    info = ev.flow
    inbound = bool(info and info.inbound)
    if proto == "icmp":  # sport is the echo id; no ports
        guest, remote = str(ev.src), f"{ev.dst} id {ev.sport}"
    else:
        guest, remote = _endpoint(ev.src, ev.sport), _endpoint(ev.dst, ev.dport)
    text = f"{proto} {guest} {'<-' if inbound else '->'} {remote}"
    if ev.type == EV_FLOW_OPEN:
        return f"flow open  {text}"
    text = f"flow close {text} {info.reason if info else 'closed'}"
    if info is not None:
        text += f" after {_duration_text(info.duration_ns)}"
        if info.bytes_to_host is not None:
            text += f", out {info.bytes_to_host} B, in {info.bytes_to_guest} B"
    return text


def stats_table(counters: dict[str, int], services: dict[str, Any]) -> str:
    """The --stats summary: traffic each way, flows, drops by reason."""
    c = counters.get
    rows = [
        ("guest -> slirpy", f"{c('frames_in', 0)} frames", f"{c('bytes_in', 0)} bytes"),
        ("slirpy -> guest", f"{c('frames_out', 0)} frames", f"{c('bytes_out', 0)} bytes"),
        ("tcp to host / to guest", f"{c('tcp_bytes_to_host', 0)} bytes",
         f"{c('tcp_bytes_to_guest', 0)} bytes"),
        ("udp to host / to guest", f"{c('udp_datagrams_to_host', 0)} datagrams",
         f"{c('udp_datagrams_to_guest', 0)} datagrams"),
        ("tcp flows", f"{c('tcp_flows_opened', 0)} opened",
         f"{c('tcp_flows_inbound', 0)} inbound, {c('tcp_retransmits', 0)} retransmits"),
        ("udp flows", f"{c('udp_flows_opened', 0)} opened", ""),
        ("icmp flows", f"{c('icmp_flows_opened', 0)} opened",
         f"{c('icmp_echo_local', 0)} echoes answered by slirpy"),
    ]
    dns = services.get("dns")
    if isinstance(dns, dict) and dns:
        queries = int(dns.get("udp_queries", 0)) + int(dns.get("tcp_queries", 0))
        answered = int(dns.get("udp_answered", 0)) + int(dns.get("tcp_answered", 0))
        rows.append(("dns queries", f"{queries} queries", f"{answered} answered"))
    drops = {k: v for k, v in counters.items() if k.startswith("drop_") and v}
    lines = ["slirpy: statistics"]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines += [f"  {a:<{w0}}  {b:>{w1}}  {d}".rstrip() for a, b, d in rows]
    lines.append(f"  {'drops':<{w0}}  {sum(drops.values()):>{w1}}")
    lines += [f"    {k[5:]:<{w0 - 2}}  {v:>{w1}}" for k, v in sorted(drops.items())]
    return "\n".join(lines) + "\n"
