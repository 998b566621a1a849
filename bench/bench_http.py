"""P8 and P9: HTTP triggers on the production web server (gunicorn's ASGI worker, console/gunicorn_conf.py).

Usage: .venv/bin/python bench/bench_http.py [--runs 300] [--clients 200] [--duration 30] [--slow 1000]

- P8 latency: a warm request through a function URL against the native sync invoke of the same no-op function,
  alternating, each on its own keep-alive connection; then `--clients` keep-alive clients for `--duration` s
  (an asyncio client: the load generator must not be the bottleneck), errors counted.
- P9: `--slow` requests at once to a function that sleeps 1 s, the executor given as many slots as the machine
  allows (stated); statuses counted and the web processes' memory (RSS) read at the peak.
Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.django_env import backends, django_setup_in_temp_var_dir, free_port, platform_services, spawn, summary

VAR_DIR = django_setup_in_temp_var_dir()

from django.core.management import call_command  # noqa: E402

from console.processes import executor_worker_args, stop_all  # noqa: E402

NOOP = "def handler(event, context):\n    return {'statusCode': 200, 'body': 'ok'}\n"
SLEEPY = "import time\n\ndef handler(event, context):\n    time.sleep(1)\n    return 'slept'\n"


def seed() -> tuple[str, str, str]:
    """The bench user's key and the paths of the no-op's and the sleeper's function URLs."""
    from django.contrib.auth import get_user_model

    from console.accounts import api_key_create
    from functions_app import http_triggers, services

    user = get_user_model().objects.create_user("bench")
    paths = []
    for name, source in (("noop", NOOP), ("sleepy", SLEEPY)):
        function = services.function_create(
            owner=user,
            name=name,
            handler="app.handler",
            timeout_s=30,
            code=services.CodeUpload(files={"app.py": source}),
        )
        url = http_triggers.function_url_create(function=function, auth_type="NONE")
        paths.append(f"{http_triggers.URL_PREFIX}{url.url_id}/")
    return api_key_create(owner=user, name="bench")[1], paths[0], paths[1]


def timed(connection: http.client.HTTPConnection, method: str, path: str, **kwargs: object) -> float:
    started = time.perf_counter()
    connection.request(method, path, **kwargs)  # type: ignore[arg-type]
    response = connection.getresponse()
    response.read()
    if response.status != 200:
        raise RuntimeError(f"{method} {path}: {response.status}")
    return (time.perf_counter() - started) * 1000


async def keep_alive_load(port: int, path: str, clients: int, duration_s: float) -> dict:
    """``clients`` connections, each sending its next request as soon as the last is answered."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    deadline = time.monotonic() + duration_s
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                if status == 200:
                    latencies.append((time.perf_counter() - started) * 1000)
                else:
                    errors[str(status)] += 1
        except (OSError, asyncio.IncompleteReadError, ValueError, StopIteration) as exc:
            errors[type(exc).__name__] += 1
        finally:
            writer.close()

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.monotonic() - started
    return {
        "clients": clients,
        "duration_s": round(elapsed, 1),
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "latency_ms": summary(latencies) if latencies else None,
        "errors": dict(errors),
    }


async def at_once(port: int, path: str, count: int, web_pids: list[int]) -> dict:
    """``count`` requests at once, each on its own connection; the web's memory read while they wait."""
    statuses: Counter[str] = Counter()
    peak_rss = 0

    async def one() -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            statuses[head.split(b" ", 2)[1].decode()] += 1
            writer.close()
        except (OSError, asyncio.IncompleteReadError) as exc:
            statuses[type(exc).__name__] += 1

    async def sample() -> None:
        nonlocal peak_rss
        while True:
            peak_rss = max(peak_rss, sum(_rss(pid) for pid in web_pids))
            await asyncio.sleep(0.2)

    sampler = asyncio.create_task(sample())
    started = time.monotonic()
    await asyncio.gather(*(one() for _ in range(count)))
    sampler.cancel()
    return {
        "requests": count,
        "statuses": dict(statuses),
        "all_answered_s": round(time.monotonic() - started, 1),
        "web_rss_peak_mb": round(peak_rss / 2**20, 1),
    }


def _rss(pid: int) -> int:
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--duration", type=float, default=30)
    parser.add_argument("--slow", type=int, default=1000)
    parser.add_argument("--slots", type=int, default=256, help="the executor's slots for P9")
    args = parser.parse_args()
    processes: list[subprocess.Popen] = []
    with platform_services(VAR_DIR):
        try:
            call_command("migrate", verbosity=0)
            token, noop_path, sleepy_path = seed()
            port = free_port()
            python = sys.executable
            web = spawn(
                [python, "-m", "gunicorn", "-c", "console/gunicorn_conf.py"],
                GUNICORN_BIND=f"127.0.0.1:{port}",
                GUNICORN_WORKERS="2",
                GUNICORN_ACCESSLOG="",
                GUNICORN_LOGLEVEL="warning",
            )
            processes.append(web)
            # P8 on an executor host as P2 measures it (a few slots); P9 on one with as many as the machine allows.
            small = spawn(
                [python, "-m", "celery", "-A", "console", *executor_worker_args(level="WARNING", concurrency=4)]
            )
            processes.append(small)
            url_connection = _ready(port, noop_path)
            invoke_connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            invoke = {"body": b"{}", "headers": {"Authorization": f"Token {token}"}}
            for _ in range(30):
                timed(url_connection, "GET", noop_path)
                timed(invoke_connection, "POST", "/api/v1/functions/noop/invoke/", **invoke)
            url_ms, invoke_ms = [], []
            for _ in range(args.runs):
                url_ms.append(timed(url_connection, "GET", noop_path))
                invoke_ms.append(timed(invoke_connection, "POST", "/api/v1/functions/noop/invoke/", **invoke))
            load = asyncio.run(keep_alive_load(port, noop_path, args.clients, args.duration))
            stop_all([small])
            # Every slot may hold a 128 MB environment: the budget says so, the sleepers use little of it.
            worker = executor_worker_args(level="WARNING", concurrency=args.slots)
            budget = str(args.slots * 128 + 1024)
            processes.append(spawn([python, "-m", "celery", "-A", "console", *worker], RUNTIME_MEMORY_BUDGET_MB=budget))
            _ready(port, sleepy_path)
            web_pids = [web.pid, *(child.pid for child in psutil.Process(web.pid).children(recursive=True))]
            slow = asyncio.run(at_once(port, sleepy_path, args.slow, web_pids))
            print(
                json.dumps(
                    {
                        "P8_function_url_ms": summary(url_ms),
                        "baseline_native_sync_invoke_ms": summary(invoke_ms),
                        "ratio_p50": round(statistics.median(url_ms) / statistics.median(invoke_ms), 3),
                        "goal": "ratio_p50 <= 1.2 (stretch 1.0)",
                        "P8_keep_alive_load": load,
                        "P9_one_second_function_at_once": {**slow, "executor_slots": args.slots},
                        "setup": "gunicorn ASGI worker x2 (console/gunicorn_conf.py), keep-alive connections; P8 on "
                        f"one executor host with 4 slots, P9 on one with {args.slots}; {backends()}",
                    },
                    indent=2,
                )
            )
        finally:
            stop_all(processes)


def _ready(port: int, path: str, timeout_s: float = 90) -> http.client.HTTPConnection:
    deadline = time.monotonic() + timeout_s
    while True:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            timed(connection, "GET", path)
            return connection
        except (OSError, RuntimeError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


if __name__ == "__main__":
    main()
