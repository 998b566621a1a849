"""An environment's link to the outside: a veth pair, configured through raw rtnetlink (stdlib only).

Runs as root in the environment's handler process before it isolates itself,
when the function opts into the network. The handler is already in a network
namespace of its own; it creates the pair from the worker's namespace, with
one end moved straight into its own as ``eth0``:

    sandbox netns                          worker netns
    eth0  <ip>/32  ── veth ──  <prefix><random>  (no address)
    default via 169.254.1.1 onlink          route <ip>/32 dev <prefix>…
    static neighbour for the gateway        static neighbour for <ip>

No ARP and no IPv6 addresses on either end (address generation off). The
route of ``<ip>/32`` is the allocator: it is added with NLM_F_EXCL, so two
environments (or two workers sharing the namespace) can never hold one
address; a collision retries with another. The kernel removes the pair, its
route and neighbours when the sandbox's namespace dies: nothing to clean up.
Forwarding is turned on for the worker's end only; what may leave, and where
to, is the worker's nftables table (functions_app/runtime/network.py).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Callable

from . import sandbox

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_GETLINK, RTM_SETLINK = 16, 18, 19
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
RTM_NEWNEIGH = 28
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
IFF_UP = 0x1
IFLA_ADDRESS, IFLA_IFNAME, IFLA_LINKINFO, IFLA_AF_SPEC, IFLA_NET_NS_FD = 1, 3, 18, 26, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFLA_INET_CONF, IPV4_DEVCONF_FORWARDING, IPV4_DEVCONF_SEND_REDIRECTS = 1, 1, 6
IFLA_INET6_ADDR_GEN_MODE, IN6_ADDR_GEN_MODE_NONE = 8, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5
RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RTN_UNICAST = 254, 4, 0, 253, 1
RTNH_F_ONLINK = 4
NDA_DST, NDA_LLADDR, NUD_PERMANENT = 1, 2, 0x80

GATEWAY = "169.254.1.1"  # link-local: what the sandbox routes through; no host holds it
SANDBOX_IF = "eth0"
_ATTEMPTS = 16

_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_NDMSG = struct.Struct("=BxxxiHBB")


def _attr(kind: int, value: bytes) -> bytes:
    length = 4 + len(value)
    return struct.pack("=HH", length, kind) + value + b"\0" * (-length % 4)


def _nested(kind: int, *attrs: bytes) -> bytes:
    return _attr(kind, b"".join(attrs))


def _name(value: str) -> bytes:
    return value.encode() + b"\0"


class Netlink:
    """A NETLINK_ROUTE socket of the network namespace its creator was in."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def request(self, kind: int, body: bytes, flags: int = 0) -> bytes:
        """Send one request; returns the first reply's payload (b"" for a bare ACK). OSError on a NACK."""
        self._seq += 1
        header = struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_ACK | flags, self._seq, 0)
        self.sock.send(header + body)
        reply = b""
        while True:
            data = self.sock.recv(1 << 16)
            offset = 0
            while offset < len(data):
                length, msg_type, _flags, seq = struct.unpack_from("=IHHI", data, offset)
                payload = data[offset + 16 : offset + length]
                offset += (length + 3) & ~3
                if seq != self._seq:
                    continue
                if msg_type != NLMSG_ERROR:
                    reply = reply or payload
                    continue
                code = -struct.unpack_from("=i", payload)[0]
                if code:
                    raise OSError(code, f"rtnetlink {kind}: {os.strerror(code)}")
                return reply

    def index(self, name: str) -> int:
        payload = self.request(
            RTM_GETLINK, _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(IFLA_IFNAME, _name(name))
        )
        return _IFINFO.unpack_from(payload)[2]

    def set_link(self, index: int, *attrs: bytes, up: bool = False) -> None:
        flags = IFF_UP if up else 0
        self.request(
            RTM_NEWLINK, _IFINFO.pack(socket.AF_UNSPEC, 0, index, flags, IFF_UP if up else 0) + b"".join(attrs)
        )

    def add_address(self, index: int, address: str) -> None:
        packed = socket.inet_aton(address)
        body = _IFADDR.pack(socket.AF_INET, 32, 0, RT_SCOPE_UNIVERSE, index)
        body += _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed)
        self.request(RTM_NEWADDR, body, NLM_F_CREATE | NLM_F_EXCL)

    def add_route(self, index: int, dst: str | None = None, gateway: str | None = None) -> None:
        scope = RT_SCOPE_LINK if gateway is None else RT_SCOPE_UNIVERSE
        flags = RTNH_F_ONLINK if gateway else 0
        body = _RTMSG.pack(
            socket.AF_INET, 32 if dst else 0, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC, scope, RTN_UNICAST, flags
        )
        if dst:
            body += _attr(RTA_DST, socket.inet_aton(dst))
        if gateway:
            body += _attr(RTA_GATEWAY, socket.inet_aton(gateway))
        body += _attr(RTA_OIF, struct.pack("=i", index))
        self.request(RTM_NEWROUTE, body, NLM_F_CREATE | NLM_F_EXCL)

    def add_neighbour(self, index: int, address: str, mac: bytes) -> None:
        body = _NDMSG.pack(socket.AF_INET, index, NUD_PERMANENT, 0, 0)
        body += _attr(NDA_DST, socket.inet_aton(address)) + _attr(NDA_LLADDR, mac)
        self.request(RTM_NEWNEIGH, body, NLM_F_CREATE | NLM_F_EXCL)

    def add_veth(self, name: str, mac: bytes, peer: str, peer_mac: bytes, peer_netns_fd: int) -> None:
        peer_info = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        peer_info += _attr(IFLA_IFNAME, _name(peer)) + _attr(IFLA_ADDRESS, peer_mac)
        peer_info += _attr(IFLA_NET_NS_FD, struct.pack("=I", peer_netns_fd))
        linkinfo = _nested(
            IFLA_LINKINFO, _attr(IFLA_INFO_KIND, b"veth"), _nested(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer_info))
        )
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(IFLA_IFNAME, _name(name))
        body += _attr(IFLA_ADDRESS, mac) + linkinfo
        self.request(RTM_NEWLINK, body, NLM_F_CREATE | NLM_F_EXCL)


def _af_spec(forwarding: bool) -> bytes:
    """No IPv6 address on the link (so no IPv6 at all); IPv4 forwarding on or off, and never a redirect."""
    inet = _nested(
        IFLA_INET_CONF,
        _attr(IPV4_DEVCONF_FORWARDING, struct.pack("=I", int(forwarding))),
        _attr(IPV4_DEVCONF_SEND_REDIRECTS, struct.pack("=I", 0)),
    )
    inet6 = _attr(IFLA_INET6_ADDR_GEN_MODE, bytes([IN6_ADDR_GEN_MODE_NONE]))
    return _nested(IFLA_AF_SPEC, _nested(socket.AF_INET, inet), _nested(socket.AF_INET6, inet6))


def _mac() -> bytes:
    return bytes([0x02, *os.urandom(5)])  # locally administered, unicast


def _random_address(subnet: ipaddress.IPv4Network) -> str:
    offset = int.from_bytes(os.urandom(4), "big") % (subnet.num_addresses - 2)
    return str(subnet.network_address + 1 + offset)


def _retrying(attempt: Callable[[], str]) -> str:
    for _ in range(_ATTEMPTS):
        try:
            return attempt()
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
    raise sandbox.SandboxError(errno.EADDRINUSE, "no free interface name or address for the sandbox's link")


def _host_side(host: Netlink, own_netns: int, config: dict, macs: tuple[bytes, bytes]) -> str:
    """Create the pair and route the sandbox's address to it; returns that address."""
    host_mac, sandbox_mac = macs
    subnet = ipaddress.IPv4Network(config["subnet"])

    def create() -> str:
        name = config["prefix"] + os.urandom(8).hex()[: 15 - len(config["prefix"])]
        host.add_veth(name, host_mac, SANDBOX_IF, sandbox_mac, own_netns)
        return name

    index = host.index(_retrying(create))
    host.set_link(index, _af_spec(forwarding=True))
    host.set_link(index, up=True)

    def route() -> str:
        address = _random_address(subnet)
        host.add_route(index, dst=address)
        return address

    address = _retrying(route)
    host.add_neighbour(index, address, sandbox_mac)
    return address


def _sandbox_side(own: Netlink, address: str, host_mac: bytes) -> None:
    own.set_link(1, up=True)  # lo
    index = own.index(SANDBOX_IF)
    own.set_link(index, _af_spec(forwarding=False))
    own.add_address(index, address)
    own.set_link(index, up=True)
    own.add_neighbour(index, GATEWAY, host_mac)
    own.add_route(index, gateway=GATEWAY)


def connect(config: dict, host_netns: int) -> str:
    """Give the calling process's network namespace a link to the worker's; returns its address.

    ``config``: {"prefix": interface name prefix the worker's rules match, "subnet": "a.b.c.d/n"}.
    """
    own_netns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    own = Netlink()
    try:
        sandbox.setns(host_netns, sandbox.CLONE_NEWNET)
        try:
            host = Netlink()
        finally:
            sandbox.setns(own_netns, sandbox.CLONE_NEWNET)
        macs = (_mac(), _mac())
        try:
            address = _host_side(host, own_netns, config, macs)
        finally:
            host.close()
        _sandbox_side(own, address, macs[0])
        return address
    finally:
        own.close()
        os.close(own_netns)
