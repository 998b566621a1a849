from __future__ import annotations

from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect

from console.redis import redis_client
from functions_app.selectors import executor_hosts


def home(request: HttpRequest) -> HttpResponse:
    return redirect("function_list")


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness of the parts the web process depends on; 503 when one is down."""
    checks = {"database": _database_ok(), "redis": _redis_ok()}
    healthy = all(checks.values())
    body = {"status": "ok" if healthy else "degraded", "checks": checks, "executors": _executors() if healthy else []}
    return JsonResponse(body, status=200 if healthy else 503)


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except Exception:  # noqa: BLE001 - any failure means "down" on a health page
        return False


def _executors() -> list[dict]:
    # Each worker's sandbox tier is shown here; an insecure tier says so in its own "secure": false.
    return [
        {key: host.get(key) for key in ("host", "tier", "secure", "reasons", "warm_environments", "zygote_pid")}
        for host in executor_hosts()
    ]


def _redis_ok() -> bool:
    try:
        return bool(redis_client().ping())
    except Exception:  # noqa: BLE001
        return False
