"""The sandbox doctor: which isolation tier this host supports, and why."""

from __future__ import annotations

import json
import os
import subprocess

from . import cgroups

SANDBOX_PYTHON = "/usr/bin/python3"
RUNTIME_DIR = os.path.dirname(os.path.abspath(__file__))

TIER_NAMESPACES = "namespaces"
TIER_INSECURE = "insecure-dev"


class SandboxUnavailable(RuntimeError):
    """The requested tier cannot run on this host; the message lists the reasons."""


def _probe() -> dict:
    # A separate interpreter: the probe forks and unshares, which we never do in
    # the (multi-threaded) worker process itself.
    out = subprocess.run(
        [SANDBOX_PYTHON, "-I", "-S", os.path.join(RUNTIME_DIR, "sandbox.py")],
        capture_output=True,
        env={},
        timeout=30,
        check=False,
    )
    try:
        return json.loads(out.stdout)
    except ValueError:
        return {"error": out.stderr.decode(errors="replace")[-500:]}


def sandbox_doctor() -> dict:
    """Probe the host and pick the strongest tier; ``reasons`` explains each shortfall."""
    reasons: list[str] = []
    if not os.access(SANDBOX_PYTHON, os.X_OK):
        return {"tier": None, "secure": False, "reasons": [f"{SANDBOX_PYTHON} is missing"], "checks": {}}
    checks = _probe()
    checks["cgroup"] = cgroups.detect_version()
    if "error" in checks:
        reasons.append(f"probe failed: {checks['error']}")
    if not checks.get("root"):
        reasons.append("not root: the namespaces tier mounts and drops to the sandbox uid itself")
    if not checks.get("namespaces"):
        reasons.append("unshare(mount, pid, net, ipc, uts) failed")
    if not checks.get("seccomp"):
        reasons.append(f"seccomp filter unavailable (arch {checks.get('arch')})")
    secure = not reasons
    if checks["cgroup"] is None:
        reasons.append("no writable cgroup memory+pids controllers: memory falls back to RLIMIT_AS")
    if secure:
        return {"tier": TIER_NAMESPACES, "secure": True, "reasons": reasons, "checks": checks}
    reasons.append("only the insecure-dev tier (plain fork + rlimits) is possible; it must be chosen explicitly")
    return {"tier": TIER_INSECURE, "secure": False, "reasons": reasons, "checks": checks}


def resolve_tier(requested: str, report: dict) -> str:
    """The tier to run, honouring an explicit request; never silently downgrade."""
    if requested == TIER_INSECURE:
        return TIER_INSECURE
    if requested in ("auto", TIER_NAMESPACES) and report["tier"] == TIER_NAMESPACES:
        return TIER_NAMESPACES
    if requested not in ("auto", TIER_NAMESPACES):
        raise SandboxUnavailable(f"unknown sandbox tier {requested!r}")
    raise SandboxUnavailable("no secure sandbox on this host: " + "; ".join(report["reasons"]))
