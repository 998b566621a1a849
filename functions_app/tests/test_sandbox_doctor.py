"""`manage.py sandbox_doctor` and the deployment check: this host's sandbox against the production shape."""

from __future__ import annotations

import json
import os

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError, SystemCheckError

from functions_app import worker

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="the production shape needs root"), pytest.mark.backend_free]

WEAK = {
    "tier": "insecure-dev",
    "secure": False,
    "reasons": ["seccomp filter unavailable (arch riscv64)"],
    "checks": {"seccomp": False, "veth": True, "egress_policy": None, "cgroup_capabilities": ["memory", "pids"]},
}


@pytest.fixture
def weak_host(monkeypatch):
    monkeypatch.setattr(worker, "sandbox_doctor", lambda: json.loads(json.dumps(WEAK)))


def test_the_doctor_finds_this_host_production_shaped(capsys):
    call_command("sandbox_doctor", "--strict")
    out = capsys.readouterr().out
    assert "tier: namespaces (secure)" in out
    assert "short of the production shape:\n  - nothing" in out


def test_the_strict_doctor_fails_on_a_host_without_seccomp_or_freezer(weak_host, capsys):
    with pytest.raises(CommandError) as caught:
        call_command("sandbox_doctor", "--strict")
    assert "no seccomp filter" in str(caught.value) and "no writable cgroup freezer" in str(caught.value)
    capsys.readouterr()
    call_command("sandbox_doctor", "--json")  # without --strict it only reports
    assert json.loads(capsys.readouterr().out)["production_shortfalls"][0].startswith("tier insecure-dev")


def test_the_doctor_counts_an_unusable_egress_allowlist_as_a_shortfall(settings):
    settings.EGRESS_ALLOW = ["127.0.0.1:5432"]
    with pytest.raises(CommandError, match="loopback is its own"):
        call_command("sandbox_doctor", "--strict")


def test_check_deploy_fails_in_production_on_a_host_weaker_than_the_production_shape(weak_host, settings):
    settings.PRODUCTION = True
    with pytest.raises(SystemCheckError, match=r"ephemera\.E001"):
        call_command("check", "--deploy")


def test_check_deploy_leaves_the_sandbox_alone_outside_production_and_where_no_executor_runs(weak_host, settings):
    settings.REDIS_URL = "redis://ephemera:a-password@127.0.0.1:6379/0"  # the production shape's, as checked apart
    settings.PRODUCTION = False
    call_command("check", "--deploy", "--fail-level", "ERROR")
    settings.PRODUCTION, settings.SANDBOX_DEPLOY_CHECK = True, False
    call_command("check", "--deploy", "--fail-level", "ERROR")
