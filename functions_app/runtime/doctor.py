"""The sandbox doctor: which isolation tier this host supports, and why."""

from __future__ import annotations

import copy
import functools
import json
import os
import subprocess

from . import cgroups, network
from .storage import storage_support

SANDBOX_PYTHON = "/usr/bin/python3"
PACKAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ephemera_runtime")

# What the worker itself must hold (docker-compose.yml's cap_add): to build namespaces and mounts, make cgroups
# under the controllers' root-only (0555) directories, drop each sandbox to its tenant's uid with an empty
# bounding set, give it its /tmp, signal it, and link it to the network.
REQUIRED_CAPABILITIES = {
    "CHOWN": 0,
    "DAC_OVERRIDE": 1,
    "KILL": 5,
    "SETGID": 6,
    "SETUID": 7,
    "SETPCAP": 8,
    "SYS_ADMIN": 21,
}
NETWORK_CAPABILITIES = {"NET_ADMIN": 12}

TIER_NAMESPACES = "namespaces"
TIER_INSECURE = "insecure-dev"


class SandboxUnavailable(RuntimeError):
    """The requested tier cannot run on this host; the message lists the reasons."""


def _probe() -> dict:
    # A separate interpreter: the probe forks and unshares, which we never do in
    # the (multi-threaded) worker process itself.
    script = f"import json, sys; sys.path.insert(0, {os.path.dirname(PACKAGE_DIR)!r}); " + (
        "from _ephemera_runtime.sandbox import probe; json.dump(probe(), sys.stdout)"
    )
    out = subprocess.run(
        [SANDBOX_PYTHON, "-I", "-S", "-B", "-c", script],
        capture_output=True,
        env={},
        timeout=30,
        check=False,
    )
    try:
        return json.loads(out.stdout)
    except ValueError:
        return {"error": out.stderr.decode(errors="replace")[-500:]}


def missing_capabilities(wanted: dict[str, int]) -> list[str]:
    """Which of ``wanted`` this process lacks (its effective set, as /proc/self/status has it)."""
    try:
        with open("/proc/self/status") as f:
            effective = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        return sorted(wanted)
    return [name for name, bit in wanted.items() if not effective >> bit & 1]


def _cgroup_reasons(layout: cgroups.Layout | None) -> list[str]:
    if layout is None:
        return ["no writable cgroup memory+pids controllers: memory falls back to RLIMIT_AS, nothing is frozen"]
    reasons = []
    if not layout.has("freezer"):
        reasons.append("no cgroup freezer: idle environments are paused with SIGSTOP, which setsid escapes")
    if not layout.has("cpu"):
        reasons.append("no cgroup cpu controller: CPU is not limited in proportion to memory")
    if not layout.has("cpuacct"):
        reasons.append("no cgroup cpuacct: CPU time is measured inside the sandbox")
    return reasons


def _network_reasons(checks: dict) -> list[str]:
    checks["egress_policy"] = network.check(network.policy_for((), ()))
    checks["uplinks_without_forwarding"] = network.uplinks_without_forwarding()
    reasons = []
    if "NET_ADMIN" in checks.get("missing_capabilities", []):
        reasons.append("the worker lacks CAP_NET_ADMIN: network-enabled functions cannot start")
    if not checks.get("veth"):
        reasons.append("no veth pairs: network-enabled functions cannot start")
    if checks["egress_policy"]:
        reasons.append(f"no egress policy ({checks['egress_policy']}): network-enabled functions cannot start")
    for uplink in checks["uplinks_without_forwarding"]:
        reasons.append(
            f"IPv4 forwarding is off on {uplink}: network-enabled functions cannot reach outside "
            f"(sysctl net.ipv4.conf.{uplink}.forwarding=1 in the worker's network namespace)"
        )
    return reasons


def sandbox_doctor() -> dict:
    """Probe the host and pick the strongest tier; ``reasons`` explains each shortfall. The probe runs once per
    process (a worker's start asks three times: to log it, to pick the tier, to build the executor); each caller
    gets its own copy of the report."""
    return copy.deepcopy(_sandbox_doctor_once())


@functools.cache
def _sandbox_doctor_once() -> dict:
    reasons: list[str] = []
    if not os.access(SANDBOX_PYTHON, os.X_OK):
        return {"tier": None, "secure": False, "reasons": [f"{SANDBOX_PYTHON} is missing"], "checks": {}}
    checks = _probe()
    layout = cgroups.detect_layout()
    checks["cgroup"] = layout.version if layout else None
    checks["cgroup_capabilities"] = sorted(layout.parents) if layout else []
    checks["ephemeral_storage_missing"] = storage_support()
    if "error" in checks:
        reasons.append(f"probe failed: {checks['error']}")
    if not checks.get("root"):
        reasons.append("not root: the namespaces tier mounts and drops to the sandbox uid itself")
    checks["missing_capabilities"] = missing_capabilities({**REQUIRED_CAPABILITIES, **NETWORK_CAPABILITIES})
    lacking = [c for c in checks["missing_capabilities"] if c in REQUIRED_CAPABILITIES]
    if checks.get("root") and lacking:
        reasons.append(f"the worker lacks capabilities {', '.join(f'CAP_{c}' for c in lacking)}")
    if not checks.get("namespaces"):
        reasons.append("unshare(mount, pid, net, ipc, uts) failed")
    if not checks.get("seccomp"):
        reasons.append(f"seccomp filter unavailable (arch {checks.get('arch')})")
    secure = not reasons
    reasons += _cgroup_reasons(layout)
    reasons += _network_reasons(checks)
    if checks["ephemeral_storage_missing"]:
        missing = ", ".join(checks["ephemeral_storage_missing"])
        reasons.append(f"ephemeral storage falls back to a tmpfs charged to memory ({missing})")
    if secure:
        return {"tier": TIER_NAMESPACES, "secure": True, "reasons": reasons, "checks": checks}
    reasons.append("only the insecure-dev tier (plain fork + rlimits) is possible; it must be chosen explicitly")
    return {"tier": TIER_INSECURE, "secure": False, "reasons": reasons, "checks": checks}


def production_shortfalls(report: dict, network_allowed: bool = True) -> list[str]:
    """How this host's sandbox falls short of the production shape (empty: it does not).

    The shape: the namespaces tier with seccomp, cgroup memory, pids and
    freezer, and, where functions may opt into the network, veth pairs and an
    enforceable egress policy. Forwarding on the uplink is the operator's
    business (a function without it is only offline), so it is not counted.
    """
    checks = report.get("checks", {})
    shortfalls = []
    if report.get("tier") != TIER_NAMESPACES:
        shortfalls.append(f"tier {report.get('tier')}: no namespaces tier on this host")
    if not checks.get("seccomp"):
        shortfalls.append("no seccomp filter")
    missing = [c for c in ("memory", "pids", "freezer") if c not in checks.get("cgroup_capabilities", [])]
    if missing:
        shortfalls.append(f"no writable cgroup {', '.join(missing)}")
    if network_allowed and not checks.get("veth"):
        shortfalls.append("no veth pairs for network-enabled functions")
    if network_allowed and checks.get("egress_policy", "not checked"):
        shortfalls.append(f"no egress policy: {checks.get('egress_policy', 'not checked')}")
    return shortfalls


def resolve_tier(requested: str, report: dict) -> str:
    """The tier to run, honouring an explicit request; never silently downgrade."""
    if requested == TIER_INSECURE:
        return TIER_INSECURE
    if requested in ("auto", TIER_NAMESPACES) and report["tier"] == TIER_NAMESPACES:
        return TIER_NAMESPACES
    if requested not in ("auto", TIER_NAMESPACES):
        raise SandboxUnavailable(f"unknown sandbox tier {requested!r}")
    raise SandboxUnavailable("no secure sandbox on this host: " + "; ".join(report["reasons"]))
