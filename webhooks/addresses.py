"""Which IP addresses a webhook may be delivered to: the SSRF address policy.

Pure functions, no I/O. `blocked_reason` is asked about every address a hostname resolves
to, at every attempt, just before connecting (see `webhooks.delivery`); `literal_ip` lets
endpoint creation refuse URLs whose host is already an address in a blocked range, including
the numeric spellings that libc's ``inet_aton`` (and therefore ``getaddrinfo``) accepts, such
as ``2130706433``, ``0x7f.1`` or ``0177.0.0.1`` for 127.0.0.1.

The rule is deliberately simple so that it is easy to trust: IPv6 forms that carry an IPv4
address (IPv4-mapped, IPv4-compatible, 6to4, NAT64) are unwrapped to that IPv4 address; the
address must then be outside every special-purpose range listed below and `is_global`
according to the standard library. `WEBHOOKS_ALLOWED_NETWORKS` opens ranges on purpose.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

__all__ = ["IPAddress", "IPNetwork", "blocked_reason", "literal_ip"]


def _v4(cidr: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(cidr)


def _v6(cidr: str) -> ipaddress.IPv6Network:
    return ipaddress.IPv6Network(cidr)


# Listed explicitly, most specific first, rather than trusting only `is_global`: the
# standard library's tables changed between patch releases (3.11.4, 3.12.4, 3.13), and an
# explicit list also gives the operator a precise reason.
_V4_BLOCKED: tuple[tuple[ipaddress.IPv4Network, str], ...] = (
    (_v4("0.0.0.0/32"), "the unspecified address"),
    (_v4("0.0.0.0/8"), "in 0.0.0.0/8 ('this network')"),
    (_v4("127.0.0.0/8"), "a loopback address"),
    (_v4("10.0.0.0/8"), "a private address (RFC 1918)"),
    (_v4("172.16.0.0/12"), "a private address (RFC 1918)"),
    (_v4("192.168.0.0/16"), "a private address (RFC 1918)"),
    (_v4("100.64.0.0/10"), "a carrier-grade NAT address (100.64.0.0/10)"),
    (_v4("169.254.169.254/32"), "the cloud metadata address (link-local)"),
    (_v4("169.254.0.0/16"), "a link-local address"),
    (_v4("192.0.0.0/24"), "an IETF protocol assignment (192.0.0.0/24)"),
    (_v4("192.0.2.0/24"), "a documentation address (TEST-NET-1)"),
    (_v4("198.51.100.0/24"), "a documentation address (TEST-NET-2)"),
    (_v4("203.0.113.0/24"), "a documentation address (TEST-NET-3)"),
    (_v4("192.88.99.0/24"), "a deprecated 6to4 relay anycast address"),
    (_v4("198.18.0.0/15"), "a benchmarking address (198.18.0.0/15)"),
    (_v4("224.0.0.0/4"), "a multicast address"),
    (_v4("255.255.255.255/32"), "the broadcast address"),
    (_v4("240.0.0.0/4"), "a reserved address (240.0.0.0/4)"),
)

_V6_BLOCKED: tuple[tuple[ipaddress.IPv6Network, str], ...] = (
    (_v6("::/128"), "the unspecified address"),
    (_v6("::1/128"), "a loopback address"),
    (_v6("64:ff9b:1::/48"), "a local-use NAT64 address"),
    (_v6("100::/64"), "a discard-only address"),
    (_v6("2001::/32"), "a Teredo tunnelling address"),
    (_v6("2001:2::/48"), "a benchmarking address"),
    (_v6("2001:db8::/32"), "a documentation address"),
    (_v6("3fff::/20"), "a documentation address"),
    (_v6("fc00::/7"), "a unique local address (fc00::/7)"),
    (_v6("fe80::/10"), "a link-local address"),
    (_v6("fec0::/10"), "a site-local address"),
    (_v6("ff00::/8"), "a multicast address"),
)

_NAT64 = _v6("64:ff9b::/96")
_IPV4_COMPATIBLE = _v6("::/96")


def _embedded_v4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address an IPv6 address carries, and the name of the form, if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, "IPv4-mapped"
    if ip.sixtofour is not None:
        return ip.sixtofour, "6to4"
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "NAT64"
    # :: and ::1 are themselves in ::/96; they are judged as IPv6 (unspecified, loopback).
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "IPv4-compatible"
    return None


def _is_allowed(ip: IPAddress, allowed: Sequence[IPNetwork]) -> bool:
    return any(ip.version == net.version and ip in net for net in allowed)


def _v4_reason(ip: ipaddress.IPv4Address) -> str | None:
    for network, reason in _V4_BLOCKED:
        if ip in network:
            return reason
    if not ip.is_global or ip.is_multicast or ip.is_reserved:
        return "not a public internet address"
    return None


def _v6_reason(ip: ipaddress.IPv6Address) -> str | None:
    for network, reason in _V6_BLOCKED:
        if ip in network:
            return reason
    if not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_site_local:
        return "not a public internet address"
    return None


def blocked_reason(ip: IPAddress, allowed: Sequence[IPNetwork] = ()) -> str | None:
    """Say why a webhook must not connect to `ip`, or return None if it may.

    Args:
        ip: the address about to be connected to (after DNS resolution).
        allowed: networks opened on purpose (``WEBHOOKS_ALLOWED_NETWORKS``); an address in
            any of them is permitted whatever its range. For IPv6 forms that carry an IPv4
            address, both the IPv6 address and the carried IPv4 address are looked up.

    Returns:
        None, or a short sentence such as ``"127.0.0.1 is a loopback address"``.
    """
    if _is_allowed(ip, allowed):
        return None
    if isinstance(ip, ipaddress.IPv4Address):
        reason = _v4_reason(ip)
        return None if reason is None else f"{ip} is {reason}"
    embedded = _embedded_v4(ip)
    if embedded is not None:
        # An IPv6 form of an IPv4 address reaches that IPv4 host (through the kernel, a
        # NAT64 gateway or a 6to4 relay), so it is judged as that host.
        v4, form = embedded
        if _is_allowed(v4, allowed):
            return None
        reason = _v4_reason(v4)
        return None if reason is None else f"{ip} is the {form} form of {v4}, which is {reason}"
    reason = _v6_reason(ip)
    return None if reason is None else f"{ip} is {reason}"


# One part of an inet_aton-style IPv4 address: hex, octal (leading 0) or decimal. ASCII only,
# because int() would otherwise accept non-ASCII digits and underscores.
_V4_PART = re.compile(r"(0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*)", re.ASCII)


def _parse_part(part: str) -> int | None:
    if not _V4_PART.fullmatch(part):
        return None
    if part[:2] in ("0x", "0X"):
        return int(part[2:] or "0", 16)
    if part.startswith("0"):
        return int(part, 8)
    return int(part)


def _inet_aton(host: str) -> ipaddress.IPv4Address | None:
    """Parse `host` the way libc's inet_aton does: 1 to 4 parts, the last fills the rest."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = [_parse_part(p) for p in parts]
    if any(v is None for v in values):
        return None
    numbers = [v for v in values if v is not None]
    *leading, last = numbers
    if any(v > 0xFF for v in leading) or last >= 1 << (8 * (5 - len(numbers))):
        return None
    value = 0
    for v in leading:
        value = (value << 8) | v
    value = (value << (8 * (5 - len(numbers)))) | last
    return ipaddress.IPv4Address(value)


def literal_ip(host: str) -> IPAddress | None:
    """Return the address `host` denotes if it is an IP literal, else None (a hostname).

    Recognises dotted quads, the shorter and numeric forms libc accepts (``127.1``,
    ``2130706433``, ``0x7f.1``, ``0177.0.0.1``, ``0``) and IPv6 literals with or without
    brackets (``[::ffff:127.0.0.1]``). Case and one trailing dot are ignored.

    Args:
        host: the host part of a URL, as typed by the user.
    """
    name = host.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
        # A zone id is written %25eth0 inside a URL (RFC 6874).
        name = name.replace("%25", "%", 1)
        try:
            return ipaddress.IPv6Address(name)
        except ValueError:
            return None
    if name.endswith(".") and not name.endswith(".."):
        name = name[:-1]
    if ":" in name:
        try:
            return ipaddress.IPv6Address(name)
        except ValueError:
            return None
    return _inet_aton(name)
