"""The caller's address behind a reverse proxy: forwarded headers believed only from TRUSTED_PROXIES.

As uvicorn's `forwarded_allow_ips`: a request whose peer (the TCP connection's other end) is a
trusted proxy gets its address from X-Forwarded-For, the right-most entry that is not itself a
trusted proxy (each proxy appends the address it saw, so the entries to the left of that are the
caller's own to write), else from X-Real-Ip; and its scheme from X-Forwarded-Proto. A request from
anyone else keeps its peer's address, whatever headers it sends, so nobody can pose as another
address (to the console login's throttle, the logs, the console). Tornado's `xheaders=True` would
believe the headers of any peer: this takes its place.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from tornado.httputil import HTTPHeaders, HTTPServerRequest

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_HOPS = 32  # X-Forwarded-For entries looked at, from the right


def parse_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP address written as text (an IPv4-mapped IPv6 one as its IPv4), or None for anything else."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """The proxies whose forwarded headers are believed (addresses or CIDRs; "*" for any)."""

    def __init__(self, networks: Iterable[str]) -> None:
        listed = tuple(networks)
        self.any = "*" in listed
        self.networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(item, strict=False) for item in listed if item != "*")

    def __bool__(self) -> bool:
        return self.any or bool(self.networks)

    def trusts(self, text: str | None) -> bool:
        if self.any:
            return True
        address = parse_address(text or "")
        return address is not None and any(address in network for network in self.networks)

    def client(self, peer: str | None, forwarded_for: str | None, real_ip: str | None) -> str | None:
        """The caller's address: `peer`, unless `peer` is a trusted proxy that says otherwise."""
        if not self or not self.trusts(peer):
            return peer
        if forwarded_for:
            hops = [hop.strip() for hop in forwarded_for.split(",")[-MAX_HOPS:]]
            if self.any:
                # Any peer is a proxy: only the hop the nearest one added is its word; what a caller
                # wrote to the left of it never is.
                address = parse_address(hops[-1])
                return str(address) if address is not None else peer
            candidate = None
            for hop in reversed(hops):
                address = parse_address(hop)
                if address is None:
                    break  # not an address: nothing to its left can be believed either
                candidate = str(address)
                if not self.trusts(candidate):
                    return candidate
            # Every hop a trusted proxy: the left-most of them; a right-most hop that is no address: the peer
            # (never the caller's own X-Real-Ip).
            return candidate if candidate is not None else peer
        address = parse_address(real_ip or "")
        return str(address) if address is not None else peer

    def apply(self, request: HTTPServerRequest) -> None:
        """Set the request's remote_ip (and protocol) from a trusted proxy's headers; before any handler."""
        if not self or not self.trusts(request.remote_ip):
            return
        headers = request.headers
        forwarded_for = ",".join(headers.get_list("X-Forwarded-For")) or None
        request.remote_ip = self.client(request.remote_ip, forwarded_for, headers.get("X-Real-Ip")) or ""
        scheme = forwarded_scheme(headers)
        if scheme is not None:
            request.protocol = scheme


def forwarded_scheme(headers: HTTPHeaders) -> str | None:
    """The scheme the nearest proxy says the caller used (X-Forwarded-Proto's last hop): "http", "https"
    or None. Believed for the request only from a trusted proxy (TrustedProxies.apply)."""
    scheme = headers.get("X-Forwarded-Proto", "").split(",")[-1].strip().lower()
    return scheme if scheme in ("http", "https") else None


def address_key(address: str | None) -> str:
    """The address as counted: an IPv6 address by its /64, anything unreadable as "?"."""
    parsed = parse_address(address or "")
    if parsed is None:
        return "?"
    if isinstance(parsed, ipaddress.IPv6Address):  # an IPv4-mapped one is already its IPv4
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)
