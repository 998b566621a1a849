"""Synchronous invocation end to end: HTTP API → Redis → a real Celery worker process → a real sandbox → reply."""

from __future__ import annotations

import base64
import json
from decimal import Decimal

import pytest

from functions_app.models import Invocation

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ECHO = """
import os, time
COUNTER = {"calls": 0}

def handler(event, context):
    COUNTER["calls"] += 1
    print("calls so far", COUNTER["calls"])
    return {
        "event": event,
        "calls": COUNTER["calls"],
        "function_name": context.function_name,
        "function_version": context.function_version,
        "memory": context.memory_limit_in_mb,
        "arn": context.invoked_function_arn,
        "request_id": context.aws_request_id,
        "remaining": context.get_remaining_time_in_millis(),
        "env": os.environ.get("GREETING"),
    }
"""


def create(api, name="echo", source=ECHO, **config):
    body = {"name": name, "handler": "app.handler", "code": {"files": {"app.py": source}}, **config}
    response = api.post("/api/v1/functions/", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def invoke(api, name="echo", event=None, **params):
    query = "&".join(f"{key}={value}" for key, value in params.items())
    return api.post(
        f"/api/v1/functions/{name}/invoke/?{query}", json.dumps(event or {}), content_type="application/json"
    )


def test_the_first_call_is_cold_and_the_second_warm_in_the_same_environment(api, module_worker):
    create(api, environment={"GREETING": "hi"})
    first = invoke(api, event={"n": 1}, log="tail")
    second = invoke(api, event={"n": 2})
    assert first.status_code == second.status_code == 200, first.content
    assert first["X-Cold-Start"] == "true" and second["X-Cold-Start"] == "false"
    body = second.json()
    assert body["event"] == {"n": 2} and body["calls"] == 2 and body["env"] == "hi"
    assert body["function_name"] == "echo" and body["function_version"] == "$LATEST" and body["memory"] == "128"
    assert body["request_id"] == second["X-Invocation-Id"]
    assert 0 < body["remaining"] <= 3000
    assert "calls so far 1" in base64.b64decode(first["X-Log-Result"]).decode()

    cold, warm = (Invocation.objects.get(pk=r["X-Invocation-Id"]) for r in (first, second))
    assert cold.is_cold and cold.init_ms > 0 and not warm.is_cold and warm.init_ms == 0
    assert cold.environment_id == warm.environment_id
    assert warm.status == "succeeded" and warm.attempt == 1 and warm.worker_host
    assert warm.billed_ms >= 1 and warm.cost_usd > 0 and warm.queue_wait_ms >= 0 and warm.duration_ms > 0
    assert cold.cost_init_usd > 0 and warm.cost_init_usd == 0
    parts = cold.cost_request_usd + cold.cost_run_usd + cold.cost_init_usd
    assert abs(parts - cold.cost_usd) <= Decimal("3e-12")  # each part is rounded to 12 places


def test_a_sync_call_says_where_its_milliseconds_went_in_server_timing(api, module_worker):
    create(api)
    invoke(api)
    response = invoke(api)
    assert response.status_code == 200, response.content
    phases = dict(entry.split(";dur=") for entry in response["Server-Timing"].split(", "))
    durations = {name: float(value) for name, value in phases.items()}
    web = ["auth", "validate", "admission", "persist", "publish"]
    worker_side = ["queue", "claim", "prepare", "run", "complete", "reply"]
    assert list(durations) == [*web, *worker_side, "total"]
    assert all(value >= 0 for value in durations.values())
    # They account for the request without overlapping (each is rounded to a microsecond).
    assert sum(durations[name] for name in web + worker_side) <= durations["total"] + 0.001 * len(durations)
    warm = Invocation.objects.get(pk=response["X-Invocation-Id"])
    # The executor's call holds the handler's run; but when the worker took the id before the web had returned from
    # publishing it, that overlap is web time already counted and is taken off the worker's first phases (claim,
    # then prepare, then run: see invoke._record_wait_phases), so run is shortened only once those two are spent.
    overlapped_into_run = durations["claim"] == 0 and durations["prepare"] == 0
    assert durations["run"] >= warm.duration_ms or overlapped_into_run


def test_a_new_version_or_another_function_never_shares_an_environment(api, module_worker):
    create(api)
    create(api, name="other")
    latest = invoke(api)
    api.post("/api/v1/functions/echo/versions/", {}, format="json")
    version = invoke(api, qualifier="1")
    other = invoke(api, name="other")
    assert version["X-Executed-Version"] == "1"
    assert version["X-Cold-Start"] == other["X-Cold-Start"] == "true"
    environments = {Invocation.objects.get(pk=r["X-Invocation-Id"]).environment_id for r in (latest, version, other)}
    assert len(environments) == 3
    assert version.json()["calls"] == 1 and other.json()["calls"] == 1


def test_an_alias_runs_the_version_it_points_to(api, module_worker):
    create(api)
    api.post("/api/v1/functions/echo/versions/", {}, format="json")
    api.post("/api/v1/functions/echo/aliases/", {"name": "live", "version": 1}, format="json")
    response = invoke(api, qualifier="live")
    assert response["X-Executed-Version"] == "1"
    assert response.json()["arn"].endswith(":function:echo:live")


def test_a_handler_error_comes_back_as_lambdas_error_shape(api, module_worker):
    create(api, source="def handler(event, context):\n    raise ValueError('bad input')\n")
    response = invoke(api)
    assert response.status_code == 200 and response["X-Function-Error"] == "Unhandled"
    body = response.json()
    assert body["errorType"] == "ValueError" and body["errorMessage"] == "bad input"
    assert isinstance(body["stackTrace"], list)
    record = api.get(f"/api/v1/invocations/{response['X-Invocation-Id']}/").json()
    assert record["status"] == "failed" and record["error_type"] == "ValueError"


def test_a_timeout_is_reported_and_the_next_call_is_cold(api, module_worker):
    create(
        api,
        source="import time\n\ndef handler(event, context):\n    time.sleep(event.get('s', 0))\n    return 1\n",
        timeout_s=1,
    )
    assert invoke(api)["X-Cold-Start"] == "true"
    slow = invoke(api, event={"s": 5})
    assert slow["X-Function-Error"] == "Unhandled" and slow.json()["errorType"] == "Sandbox.Timedout"
    assert Invocation.objects.get(pk=slow["X-Invocation-Id"]).status == "timed_out"
    assert invoke(api)["X-Cold-Start"] == "true"


def test_bad_payloads_are_refused_before_anything_runs(api):  # no worker: nothing may reach one
    create(api)
    not_json = api.post("/api/v1/functions/echo/invoke/", "{nope", content_type="application/json")
    assert not_json.status_code == 400 and not_json.json()["type"] == "InvalidRequestContent"
    huge = api.post(
        "/api/v1/functions/echo/invoke/", b'"' + b"x" * (6 * 1024 * 1024) + b'"', content_type="application/json"
    )
    assert huge.status_code == 413 and huge.json()["type"] == "RequestTooLarge"
    assert invoke(api, qualifier="nope").status_code == 404
    assert not Invocation.objects.exists()


def test_another_tenant_cannot_invoke_or_read_invocations(api, other_api, module_worker):
    create(api)
    mine = invoke(api)
    assert invoke(other_api).status_code == 404
    assert other_api.get(f"/api/v1/invocations/{mine['X-Invocation-Id']}/").status_code == 404
    assert other_api.get("/api/v1/invocations/").json()["count"] == 0
    listed = api.get("/api/v1/invocations/?function=echo&status=succeeded").json()
    assert [row["id"] for row in listed["results"]] == [mine["X-Invocation-Id"]]


PROBE = """
import os, socket

def attempt(action):
    try:
        return "allowed: " + str(action())[:80]
    except Exception as exc:
        return "denied: " + type(exc).__name__

def handler(event, context):
    results = {path: attempt(lambda p=path: open(p, "rb").read(64)) for path in event["paths"]}
    results["network"] = attempt(lambda: socket.create_connection(("127.0.0.1", 6379), timeout=1))
    results["redis_socket"] = attempt(lambda: socket.socket(socket.AF_UNIX).connect(event["redis_socket"]))
    results["write_task"] = attempt(lambda: open("/var/task/x", "w"))
    results["environ"] = sorted(os.environ)
    # pid 1 in the sandbox's own pid namespace is its reaper, which even the handler may not inspect.
    results["proc_1_environ"] = attempt(lambda: open("/proc/1/environ", "rb").read().decode(errors="replace"))
    results["proc_pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    return results
"""


SLEEPER = """import time

def handler(event, context):
    time.sleep(event.get("s", 0))
    return {"slept": event.get("s", 0)}
"""


def test_a_sync_call_longer_than_the_redis_socket_timeout_gets_its_result(api, module_worker, settings):
    # The waiting side uses the production lease, so one blocking pop outlasts redis-py's 5 s socket timeout.
    settings.LEASE_S = 10.0
    create(api, name="slow", source=SLEEPER, timeout_s=10)
    response = invoke(api, name="slow", event={"s": 7})
    assert response.status_code == 200, response.content
    assert response.json() == {"slept": 7}


def test_a_result_over_six_megabytes_is_a_function_error_and_is_never_stored(api, module_worker):
    create(api, name="big", source="def handler(event, context):\n    return 'x' * (7 * 1024 * 1024)\n")
    response = invoke(api, name="big")
    assert response.status_code == 200 and response["X-Function-Error"] == "Unhandled"
    body = response.json()
    assert body["errorType"] == "Function.ResponseSizeTooLarge" and "6291456 bytes" in body["errorMessage"]
    row = Invocation.objects.get(pk=response["X-Invocation-Id"])
    assert row.status == "failed" and len(row.result) < 1024


def test_a_result_that_json_cannot_hold_is_a_marshal_error(api, module_worker):
    create(api, name="nan", source="def handler(event, context):\n    return {'x': float('nan')}\n")
    response = invoke(api, name="nan")
    assert response.status_code == 200 and response["X-Function-Error"] == "Unhandled"
    assert response.json()["errorType"] == "Runtime.MarshalError"


def environment_cgroups(environment_id: str) -> list[str]:
    import glob

    return glob.glob(f"/sys/fs/cgroup/*/ephemera/env-*-{environment_id}") + glob.glob(
        f"/sys/fs/cgroup/ephemera/env-*-{environment_id}"
    )


def wait_until(predicate, timeout_s: float = 10) -> bool:
    import time

    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


DAEMON = """
import subprocess

def handler(event, context):
    subprocess.Popen(["/usr/bin/python3", "-c", "import time\\nwhile True: time.sleep(0.1)"])
    return "started"
"""


def test_deleting_a_function_destroys_its_environments_and_their_daemons_at_once(api, worker):
    create(api, name="daemon", source=DAEMON)
    first = invoke(api, name="daemon")
    environment = Invocation.objects.get(pk=first["X-Invocation-Id"]).environment_id
    assert environment_cgroups(environment), "the environment has no cgroup to watch"
    assert api.delete("/api/v1/functions/daemon/").status_code == 204
    assert wait_until(lambda: not environment_cgroups(environment), timeout_s=10)


def test_changing_a_functions_configuration_retires_its_old_environments_at_once(api, worker):
    create(api, name="changing", source=DAEMON)
    first = invoke(api, name="changing")
    environment = Invocation.objects.get(pk=first["X-Invocation-Id"]).environment_id
    assert api.patch("/api/v1/functions/changing/", {"memory_mb": 256}, format="json").status_code == 200
    assert wait_until(lambda: not environment_cgroups(environment), timeout_s=10)
    again = invoke(api, name="changing")
    assert again["X-Cold-Start"] == "true" and again.status_code == 200


def test_a_handler_cannot_reach_the_consoles_secrets_database_redis_or_other_code(api, other_api, settings, worker):
    from django.db import connection

    theirs = create(other_api, name="theirs", source="SECRET = 'other tenant code'\ndef handler(e, c):\n    return 1\n")
    invoke(other_api, name="theirs")
    their_code = Invocation.objects.get(function__name="theirs").function.code.sha256
    create(api, name="probe", source=PROBE)
    paths = [
        str(settings.VAR_DIR / "secret_key"),
        str(settings.VAR_DIR / "fernet_key"),
        str(settings.BASE_DIR / "console" / "settings.py"),
        str(settings.CODE_STORAGE_DIR / "extracted" / their_code / "app.py"),
    ]
    if connection.vendor == "sqlite":
        paths.append(str(connection.settings_dict["NAME"]))
    response = invoke(api, name="probe", event={"paths": paths, "redis_socket": str(settings.REDIS_SOCKET)})
    assert response.status_code == 200 and not response.has_header("X-Function-Error"), response.content
    results = response.json()
    leaked = {key: value for key, value in results.items() if isinstance(value, str) and value.startswith("allowed")}
    assert leaked == {}
    assert "worker-secret-marker" not in response.content.decode()
    assert "SECRET_KEY" not in results["proc_1_environ"]
    assert max(results["proc_pids"]) < 10  # only the sandbox's own processes are visible
    assert not {"SECRET_KEY", "FERNET_KEYS", "DATABASE_URL", "REDIS_URL", "EPHEMERA_VAR_DIR"} & set(results["environ"])
    assert theirs["name"] == "theirs"
