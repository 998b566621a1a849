from __future__ import annotations

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect

from console.redis import redis_client
from functions_app.selectors import executor_hosts, sweeper_age_s


def home(request: HttpRequest) -> HttpResponse:
    return redirect("function_list")


def healthz(request: HttpRequest) -> JsonResponse:
    """The platform's health: the database and Redis reachable, at least one executor host reporting, and the
    sweeper (the control worker) running on time. 503 when any of them is not, naming which. Staff also see each
    executor host's sandbox report."""
    checks = {"database": _database_ok(), "redis": _redis_ok()}
    executors = _executors() if checks["redis"] else []
    if checks["redis"]:
        checks["executors"] = bool(executors)
        checks["sweeper"] = _sweeper_ok()
    healthy = all(checks.values())
    body: dict = {"status": "ok" if healthy else "degraded", "checks": checks}
    if request.user.is_authenticated and request.user.is_staff:
        # Which hosts run, and their sandbox tier and its shortcomings, tell an attacker what to aim at.
        body["executors"] = executors
    return JsonResponse(body, status=200 if healthy else 503)


def _sweeper_ok() -> bool:
    # Late by more than three intervals (plus a start-up allowance) means the control worker is not running.
    age = sweeper_age_s()
    return age is not None and age <= 3 * settings.SWEEP_INTERVAL_S + SWEEPER_GRACE_S


SWEEPER_GRACE_S = 10


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
