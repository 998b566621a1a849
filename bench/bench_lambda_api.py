"""P12: a synchronous Invoke through Lambda's API, SigV4-signed, against the native synchronous invoke of the same
no-op function on the same production web server (gunicorn's ASGI worker, console/gunicorn_conf.py).

Usage: .venv/bin/python bench/bench_lambda_api.py [--runs 400]

Both go over a keep-alive connection of their own, alternating. Each Lambda request is signed anew by botocore's
own SigV4 signer, as boto3 signs it (the signing time is the client's, outside the measured round trip); the server
verifies every signature. Prints JSON.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.django_env import backends, django_setup_in_temp_var_dir, free_port, platform_services, spawn, summary

VAR_DIR = django_setup_in_temp_var_dir()

from django.core.management import call_command  # noqa: E402

from console.processes import executor_worker_args, stop_all  # noqa: E402

NOOP = "def handler(event, context):\n    return {'ok': True}\n"
LAMBDA_PATH = "/2015-03-31/functions/noop/invocations"
NATIVE_PATH = "/api/v1/functions/noop/invoke/"


def seed() -> tuple[str, Credentials]:
    """The bench user's API key and access key, and its no-op function."""
    from django.contrib.auth import get_user_model

    from console.access_keys import access_key_create
    from console.accounts import api_key_create
    from functions_app import services

    user = get_user_model().objects.create_user("bench")
    services.function_create(
        owner=user, name="noop", handler="app.handler", code=services.CodeUpload(files={"app.py": NOOP})
    )
    access_key, secret = access_key_create(owner=user, name="bench")
    return api_key_create(owner=user, name="bench")[1], Credentials(access_key.access_key_id, secret)


def signed_headers(port: int, credentials: Credentials) -> dict[str, str]:
    request = AWSRequest(method="POST", url=f"http://127.0.0.1:{port}{LAMBDA_PATH}", data=b"{}")
    SigV4Auth(credentials, "lambda", "us-east-1").add_auth(request)
    return dict(request.headers.items())


def timed(connection: http.client.HTTPConnection, path: str, headers: dict[str, str]) -> float:
    started = time.perf_counter()
    connection.request("POST", path, body=b"{}", headers=headers)
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"POST {path}: {response.status} {body[:300]!r}")
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=400)
    args = parser.parse_args()
    processes: list[subprocess.Popen] = []
    with platform_services(VAR_DIR):
        try:
            call_command("migrate", verbosity=0)
            token, credentials = seed()
            port = free_port()
            python = sys.executable
            processes.append(
                spawn(
                    [python, "-m", "gunicorn", "-c", "console/gunicorn_conf.py"],
                    GUNICORN_BIND=f"127.0.0.1:{port}",
                    GUNICORN_WORKERS="2",
                    GUNICORN_ACCESSLOG="",
                    GUNICORN_LOGLEVEL="warning",
                )
            )
            worker = executor_worker_args(level="WARNING", concurrency=4)
            processes.append(spawn([python, "-m", "celery", "-A", "console", *worker]))
            native_headers = {"Authorization": f"Token {token}"}
            native = _ready(port, NATIVE_PATH, native_headers)
            aws = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            for _ in range(30):
                timed(native, NATIVE_PATH, native_headers)
                timed(aws, LAMBDA_PATH, signed_headers(port, credentials))
            native_ms, lambda_ms = [], []
            for _ in range(args.runs):
                native_ms.append(timed(native, NATIVE_PATH, native_headers))
                lambda_ms.append(timed(aws, LAMBDA_PATH, signed_headers(port, credentials)))
            print(
                json.dumps(
                    {
                        "P12_lambda_api_invoke_sigv4_ms": summary(lambda_ms),
                        "baseline_native_sync_invoke_ms": summary(native_ms),
                        "ratio_p50": round(statistics.median(lambda_ms) / statistics.median(native_ms), 3),
                        "goal": "ratio_p50 <= 1.1",
                        "setup": "gunicorn ASGI worker x2 (console/gunicorn_conf.py), one keep-alive connection each, "
                        "alternating; every Lambda request signed anew (botocore's SigV4Auth) and verified; one "
                        f"executor host with 4 slots; {backends()}",
                    },
                    indent=2,
                )
            )
        finally:
            stop_all(processes)


def _ready(port: int, path: str, headers: dict[str, str], timeout_s: float = 90) -> http.client.HTTPConnection:
    deadline = time.monotonic() + timeout_s
    while True:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            timed(connection, path, headers)
            return connection
        except (OSError, RuntimeError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


if __name__ == "__main__":
    main()
