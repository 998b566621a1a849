"""The egress policy of network-enabled environments, enforced in the worker's network namespace.

Every environment has a network namespace of its own. One that opts into the
network also gets a veth pair to the worker's namespace (made by the
environment itself, _ephemera_runtime/netlink.py), named ``<prefix>…``. This
module owns what those links may do: one nftables table per executor, matched
on its interface prefix, so that two executors on one host (or two test runs)
never judge each other's environments, and removed at shutdown (a dead
worker's by the next executor, by the pid in its name).

From an environment's link:
- nothing reaches the worker's host itself (any of its addresses: loopback,
  Redis, PostgreSQL, the console), nor another environment;
- nothing reaches private, shared, link-local, multicast or reserved IPv4
  ranges (BLOCKED_V4, the metadata address 169.254.169.254 among them), nor
  the networks the worker is attached to;
- but ``allowed`` destinations (the operator's EGRESS_ALLOW, host:port, and
  the DNS resolvers) are reachable, TCP and UDP, even there;
- everything else (the public Internet) leaves masqueraded behind the
  worker's address. IPv6 never leaves: the link has no IPv6 address.
Nothing comes in but replies.

The sandbox cannot change any of it: the rules live in the worker's namespace,
and a sandbox holds no capability anywhere. Netfilter verdicts of other tables
still apply after ours: a host whose own FORWARD policy drops (Docker sets
that) must accept these links' traffic there too (docs/architecture.md §6).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import shutil
import socket
import subprocess
import textwrap
from dataclasses import dataclass, field

from .cgroups import _pid_alive

NFT = "nft"
TABLE_PREFIX = "ephemera_"
DEFAULT_SUBNET = "10.213.0.0/16"
# Private (RFC 1918), CGNAT, loopback, link-local (metadata), IETF protocol assignments, benchmarking,
# multicast, reserved and broadcast, and "this network".
BLOCKED_V4 = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/3",
)
_RTF_UP = 0x1
_RTF_GATEWAY = 0x2


class EgressConfigError(ValueError):
    """An EGRESS_ALLOW entry or resolver that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class EgressPolicy:
    table: str
    prefix: str  # of the worker-side interface of every link this table judges
    subnet: str  # where the environments' addresses come from
    allowed: tuple[tuple[str, int], ...]  # (IPv4 address, port), TCP and UDP
    resolvers: tuple[str, ...]
    blocked: tuple[str, ...] = field(default=BLOCKED_V4)

    @property
    def link(self) -> dict:
        """What the zygote needs to make an environment's link."""
        return {"prefix": self.prefix, "subnet": self.subnet}


def parse_allow(entries: tuple[str, ...] | list[str]) -> tuple[tuple[str, int], ...]:
    """``host:port`` entries as (IPv4 address, port) pairs; a host name counts with every address it has now."""
    pairs: list[tuple[str, int]] = []
    for entry in entries:
        host, _, port = entry.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise EgressConfigError(f"EGRESS_ALLOW entry {entry!r}: expected host:port")
        for address in _ipv4_addresses(host.strip("[]"), entry):
            if ipaddress.IPv4Address(address).is_loopback:
                raise EgressConfigError(
                    f"EGRESS_ALLOW entry {entry!r}: an environment's loopback is its own; "
                    "allow the service at one of the host's other addresses"
                )
            pairs.append((address, int(port)))
    return tuple(dict.fromkeys(pairs))


def _ipv4_addresses(host: str, entry: str) -> list[str]:
    try:
        return [str(ipaddress.IPv4Address(host))]
    except ValueError:
        pass
    if ":" in host:
        raise EgressConfigError(f"EGRESS_ALLOW entry {entry!r}: IPv6 never leaves an environment")
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:
        raise EgressConfigError(f"EGRESS_ALLOW entry {entry!r}: {exc}") from exc
    return sorted({str(info[4][0]) for info in infos})


def host_resolvers(path: str = "/etc/resolv.conf") -> tuple[str, ...]:
    """The host's IPv4 name servers an environment can reach (loopback ones are the host's own)."""
    found = []
    with contextlib.suppress(OSError), open(path) as f:
        for line in f:
            words = line.split()
            if len(words) >= 2 and words[0] == "nameserver":
                with contextlib.suppress(ValueError):
                    address = ipaddress.IPv4Address(words[1])
                    if not address.is_loopback:
                        found.append(str(address))
    return tuple(found)


def _routes() -> list[dict]:
    """The worker namespace's IPv4 main table, as /proc/net/route has it."""
    routes = []
    with contextlib.suppress(OSError), open("/proc/net/route") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if len(fields) < 8:
                continue
            destination, gateway, flags, mask = (int(fields[i], 16) for i in (1, 2, 3, 7))
            routes.append({"iface": fields[0], "dst": destination, "gw": gateway, "flags": flags, "mask": mask})
    return routes


def _address(little_endian: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(little_endian.to_bytes(4, "little"))


def attached_networks() -> tuple[str, ...]:
    """The networks the worker is directly attached to (its LAN: where the platform's own services live)."""
    networks = []
    for route in _routes():
        if route["flags"] & _RTF_GATEWAY or route["mask"] in (0, 0xFFFFFFFF):
            continue
        networks.append(str(ipaddress.IPv4Network((_address(route["dst"]), str(_address(route["mask"]))))))
    return tuple(dict.fromkeys(networks))


def uplinks_without_forwarding() -> list[str]:
    """Interfaces of the default route whose IPv4 forwarding is off: replies from outside stop there."""
    off = []
    for route in _routes():
        if route["mask"] == 0 and route["flags"] & _RTF_UP and route["iface"] not in off:
            with contextlib.suppress(OSError), open(f"/proc/sys/net/ipv4/conf/{route['iface']}/forwarding") as f:
                if f.read().strip() == "0":
                    off.append(route["iface"])
    return off


def _elements(items: list[str]) -> str:
    return f"elements = {{ {', '.join(items)} }}" if items else ""


def ruleset(policy: EgressPolicy) -> str:
    """The policy's nftables table, as `nft -f` reads it."""
    links = f'"{policy.prefix}*"'
    blocked = sorted({*policy.blocked, policy.subnet, *attached_networks()})
    pairs = sorted({*policy.allowed, *((resolver, 53) for resolver in policy.resolvers)})
    allowed = [f"{address} . {proto} . {port}" for address, port in pairs for proto in ("tcp", "udp")]
    refuse = "reject with icmpx type admin-prohibited"
    return textwrap.dedent(f"""\
        table inet {policy.table} {{
            set blocked {{
                type ipv4_addr; flags interval; auto-merge;
                {_elements(blocked)}
            }}
            set allowed {{
                type ipv4_addr . inet_proto . inet_service;
                {_elements(allowed)}
            }}
            chain input {{
                type filter hook input priority filter - 10; policy accept;
                iifname {links} ip daddr . meta l4proto . th dport @allowed accept
                iifname {links} {refuse}
            }}
            chain forward {{
                type filter hook forward priority filter - 10; policy accept;
                iifname {links} jump from_sandbox
                oifname {links} ct state established,related accept
                oifname {links} {refuse}
            }}
            chain from_sandbox {{
                oifname {links} {refuse}
                meta nfproto ipv6 {refuse}
                ip daddr . meta l4proto . th dport @allowed accept
                ip daddr @blocked {refuse}
                accept
            }}
            chain postrouting {{
                type nat hook postrouting priority srcnat; policy accept;
                iifname {links} oifname != {links} masquerade
            }}
        }}
        """)


def _nft(arguments: list[str], script: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_nft_path() or NFT, *arguments], input=script, capture_output=True, text=True, timeout=30, check=False, env={}
    )


def _nft_path() -> str | None:
    # /usr/sbin is often missing from a service's PATH.
    return shutil.which(NFT, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")


def sweep_orphans() -> int:
    """Delete the tables of executors whose worker died without removing its own; returns how many."""
    listed = _nft(["list", "tables", "inet"])
    removed = 0
    for name in re.findall(rf"^table inet ({TABLE_PREFIX}(\d+)_\w+)$", listed.stdout, re.MULTILINE):
        table, pid = name
        if not _pid_alive(int(pid)) and _nft(["delete", "table", "inet", table]).returncode == 0:
            removed += 1
    return removed


def policy_for(allow: tuple[str, ...], resolvers: tuple[str, ...] | None, subnet: str = DEFAULT_SUBNET) -> EgressPolicy:
    """A policy with a fresh table name and interface prefix (not yet installed)."""
    tag = secrets.token_hex(3)
    chosen = host_resolvers() if resolvers is None else resolvers
    for resolver in chosen:
        try:
            ipaddress.IPv4Address(resolver)
        except ValueError as exc:
            raise EgressConfigError(f"resolver {resolver!r}: an IPv4 address, please") from exc
    network = ipaddress.IPv4Network(subnet)
    if network.num_addresses < 4:
        raise EgressConfigError(f"network subnet {subnet} is too small")
    return EgressPolicy(
        table=f"{TABLE_PREFIX}{os.getpid()}_{tag}",
        prefix=f"e{tag}",
        subnet=str(network),
        allowed=parse_allow(allow),
        resolvers=tuple(chosen),
    )


def check(policy: EgressPolicy) -> str | None:
    """Why this host cannot enforce ``policy`` (no nft, no nat, ...), or None: a dry run, nothing installed."""
    if _nft_path() is None:
        return f"no {NFT} (the nftables package)"
    done = _nft(["--check", "-f", "-"], ruleset(policy))
    return None if done.returncode == 0 else f"{NFT} refused the egress policy: {done.stderr.strip()[-300:]}"


def install(policy: EgressPolicy) -> None:
    """Load ``policy``'s table; OSError with nft's words when the host cannot."""
    if _nft_path() is None:
        raise OSError(f"no {NFT} (the nftables package)")
    sweep_orphans()
    done = _nft(["-f", "-"], ruleset(policy))
    if done.returncode != 0:
        raise OSError(f"{NFT} refused the egress policy: {done.stderr.strip()[-300:]}")


def remove(policy: EgressPolicy) -> None:
    _nft(["delete", "table", "inet", policy.table])
