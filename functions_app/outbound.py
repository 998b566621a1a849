"""Calls the platform makes to addresses its users name (a JWT authorizer's key set, a bucket's endpoint): never to
the platform's own network (loopback, private, link-local, shared and other non-global addresses: the metadata
services, Redis, the database) unless the operator allows it for that kind of call."""

from __future__ import annotations

import ipaddress
import socket

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class PrivateAddress(ValueError):
    """The host is on the platform's own network, or cannot be resolved; the message says which."""


def is_public(ip: IpAddress) -> bool:
    """A globally routable unicast address, and so is any IPv4 address an IPv6 one carries (::ffff:a.b.c.d, 6to4,
    Teredo): those reach IPv4 hosts too."""
    if not ip.is_global or ip.is_multicast:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.is_site_local:  # fec0::/10: deprecated, yet Python counts it global
            return False
        carried = [ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())]
        return all(is_public(inner) for inner in carried if inner is not None)
    return True


def host_refuse_private(host: str) -> None:
    """PrivateAddress when ``host`` does not resolve, or any of its addresses is not public."""
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError) as exc:
        raise PrivateAddress(f"{host!r} does not resolve ({exc})") from None
    for info in infos:
        address = str(info[4][0]).split("%")[0]
        if not is_public(ipaddress.ip_address(address)):
            raise PrivateAddress(f"{host!r} is on a private network ({address})")
