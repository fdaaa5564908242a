"""Services the daemon offers the guest on the slow path, as sans-IO cores with
small asyncio edges: `dhcp` (the DHCP server) and `dns` (the DNS forwarder).
"""
