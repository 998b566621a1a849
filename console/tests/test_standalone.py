"""`manage.py standalone` (what `make run` calls), driven as a user would: start it, use it, Ctrl-C it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

BASE_DIR = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_platform(var_dir: Path, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["EPHEMERA_VAR_DIR"] = str(var_dir)
    return subprocess.Popen(
        [sys.executable, "manage.py", "standalone", "--port", str(port), "--concurrency", "1"],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def read_until_running(process: subprocess.Popen, timeout_s: float = 90) -> str:
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        seen.append(line)
        if "is running at" in line:
            return "".join(seen)
    raise AssertionError("the platform did not start:\n" + "".join(seen))


def get_json(url: str, token: str, timeout_s: float = 30) -> dict:
    deadline = time.monotonic() + timeout_s
    request = urllib.request.Request(url, headers={"Authorization": f"Token {token}"})
    while True:
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return json.load(response)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def wait_gone(processes: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout_s
    while alive(processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive(processes)


@pytest.fixture
def platform(tmp_path):
    port = free_port()
    process = start_platform(tmp_path / "var", port)
    try:
        output = read_until_running(process)
        yield process, port, output
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def test_it_serves_the_seeded_function_to_the_printed_token_and_ctrl_c_stops_every_process(platform):
    process, port, output = platform
    token = re.search(r"API token:\s+([0-9a-f]{40})", output).group(1)
    assert re.search(r"Demo login: demo / \S+", output)
    listed = get_json(f"http://127.0.0.1:{port}/api/v1/functions/", token)
    assert [function["name"] for function in listed["results"]] == ["hello"]
    health = get_json(f"http://127.0.0.1:{port}/healthz", token)
    assert health["checks"] == {"database": True, "redis": True}
    deadline = time.monotonic() + 30
    while not health["executors"] and time.monotonic() < deadline:
        time.sleep(0.5)
        health = get_json(f"http://127.0.0.1:{port}/healthz", token)
    assert health["executors"][0]["tier"] in ("namespaces", "insecure-dev")

    tree = psutil.Process(process.pid).children(recursive=True)
    names = " ".join(" ".join(p.cmdline()) for p in tree)
    assert "redis-server" in names and "worker" in names and "beat" in names and "runserver" in names

    process.send_signal(signal.SIGINT)
    process.wait(timeout=60)
    assert wait_gone(tree, 10) == []
    assert process.returncode == 0


def test_killing_the_platform_outright_still_leaves_no_orphan(platform):
    process, _, _ = platform
    tree = psutil.Process(process.pid).children(recursive=True)
    assert len(tree) >= 4
    process.kill()
    process.wait(timeout=10)
    assert wait_gone(tree, 20) == []
