"""Invocation semantics under normal operation and under faults, through real workers, Redis and sandboxes.

Every wait is bounded; the cluster fixture uses 2 s leases and 0.5 s sweeps so that recovery takes seconds.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time

import pytest
from django.conf import settings

from console.redis import redis_client
from functions_app import concurrency, destinations, lifecycle
from functions_app.models import DeadLetter, Invocation

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SLEEPER = """
import time

def handler(event, context):
    time.sleep(event.get("sleep", 0))
    if event.get("fail"):
        raise RuntimeError("asked to fail")
    return {"attempt": context.attempt, "event": event}
"""


def create(api, name="fn", source=SLEEPER, **config):
    body = {"name": name, "handler": "app.handler", "code": {"files": {"app.py": source}}, **config}
    response = api.post("/api/v1/functions/", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def invoke(api, name="fn", event=None, kind="RequestResponse", **headers):
    extra = {f"HTTP_{key.upper().replace('-', '_')}": value for key, value in headers.items()}
    return api.post(
        f"/api/v1/functions/{name}/invoke/",
        json.dumps(event if event is not None else {}),
        content_type="application/json",
        HTTP_X_INVOCATION_TYPE=kind,
        **extra,
    )


def invoke_async(api, name="fn", event=None, **headers):
    response = invoke(api, name, event, kind="Event", **headers)
    assert response.status_code == 202, response.content
    return response.json()["invocation_id"]


def wait_for(predicate, timeout_s=30, interval_s=0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s} s")


def terminal(invocation_id, timeout_s=30):
    def done():
        row = Invocation.objects.get(pk=invocation_id)
        return row if row.is_terminal else None

    return wait_for(done, timeout_s)


def running(invocation_id, timeout_s=30):
    return wait_for(lambda: Invocation.objects.filter(pk=invocation_id, status="running").first(), timeout_s)


# ---- async, retries, destinations, dead letters -------------------------------------------------------------


def test_an_async_event_is_accepted_at_once_and_completes(api, module_worker):
    create(api)
    invocation_id = invoke_async(api, event={"x": 1})
    row = terminal(invocation_id)
    assert row.status == "succeeded" and row.attempt == 1 and row.invocation_type == "async"
    detail = api.get(f"/api/v1/invocations/{invocation_id}/").json()
    assert detail["result"] == {"attempt": 1, "event": {"x": 1}}


def test_an_async_payload_over_one_megabyte_is_refused(api):  # no worker: nothing may reach one
    create(api)
    response = invoke(api, event={"blob": "x" * (1024 * 1024)}, kind="Event")
    assert response.status_code == 413 and response.json()["type"] == "RequestTooLarge"
    assert not Invocation.objects.exists()


def test_a_failing_async_event_is_retried_twice_then_dead_lettered(api, module_worker):
    create(api)
    invocation_id = invoke_async(api, event={"fail": True})
    row = terminal(invocation_id)
    assert row.status == "failed" and row.attempt == 3 and row.error_type == "RuntimeError"
    letter = wait_for(lambda: DeadLetter.objects.filter(invocation_id=invocation_id).first())
    assert letter.condition == "RetriesExhausted" and letter.attempts == 3
    assert json.loads(letter.request_payload) == {"fail": True}


def test_retries_follow_the_functions_maximum_retry_attempts(api, module_worker):
    create(api, max_retry_attempts=0)
    row = terminal(invoke_async(api, event={"fail": True}))
    assert row.attempt == 1 and row.status == "failed"


def test_the_dead_letter_inbox_lists_filters_and_replays(api, other_api, module_worker):
    create(api)
    failed = invoke_async(api, event={"fail": True, "n": 1})
    terminal(failed)
    letters = wait_for(
        lambda: api.get("/api/v1/dead-letters/?condition=RetriesExhausted&function=fn").json()["results"]
    )
    assert [letter["invocation_id"] for letter in letters] == [failed]
    assert api.get("/api/v1/dead-letters/?condition=EventAgeExceeded").json()["count"] == 0
    assert other_api.get("/api/v1/dead-letters/").json()["count"] == 0
    assert other_api.post(f"/api/v1/dead-letters/{letters[0]['id']}/replay/").status_code == 404
    assert other_api.get(f"/api/v1/dead-letters/{letters[0]['id']}/").status_code == 404
    assert other_api.delete(f"/api/v1/dead-letters/{letters[0]['id']}/").status_code == 404
    assert other_api.get(f"/api/v1/invocations/{failed}/").status_code == 404

    api.put(
        "/api/v1/functions/fn/code/", {"files": {"app.py": "def handler(e, c):\n    return 'fixed'\n"}}, format="json"
    )
    replay = api.post(f"/api/v1/dead-letters/{letters[0]['id']}/replay/")
    assert replay.status_code == 202
    assert terminal(replay.json()["invocation_id"]).result == '"fixed"'
    assert api.get("/api/v1/dead-letters/?replayed=true").json()["count"] == 1


def test_an_on_success_destination_function_receives_lambdas_record(api, module_worker):
    create(api, name="sink", source="def handler(event, context):\n    return event\n")
    create(api, on_success_destination="function:sink")
    source_id = invoke_async(api, event={"order": 7})
    terminal(source_id)
    sink_row = terminal(wait_for(lambda: Invocation.objects.filter(function__name="sink").first()).pk)
    record = json.loads(sink_row.payload)
    assert record["requestContext"]["condition"] == "Success"
    assert record["requestContext"]["requestId"] == source_id
    assert record["requestPayload"] == {"order": 7}
    assert record["responsePayload"] == {"attempt": 1, "event": {"order": 7}}


def test_a_dry_run_validates_and_runs_nothing(api, module_worker):
    create(api)
    assert invoke(api, kind="DryRun").status_code == 204
    assert invoke(api, kind="DryRun", event=None).status_code == 204
    assert (
        api.post(
            "/api/v1/functions/fn/invoke/?qualifier=9",
            "{}",
            content_type="application/json",
            HTTP_X_INVOCATION_TYPE="DryRun",
        ).status_code
        == 404
    )
    assert invoke(api, kind="Sometimes").json()["type"] == "InvalidParameterValue"
    assert not Invocation.objects.exists()


def test_an_idempotency_key_returns_the_same_invocation_and_runs_once(api, module_worker):
    create(api)
    first = invoke(api, event={"a": 1}, **{"Idempotency-Key": "order-1"})
    again = invoke(api, event={"a": 1}, **{"Idempotency-Key": "order-1"})
    assert first.status_code == again.status_code == 200
    assert first["X-Invocation-Id"] == again["X-Invocation-Id"]
    assert Invocation.objects.count() == 1
    conflict = invoke(api, event={"a": 2}, **{"Idempotency-Key": "order-1"})
    assert conflict.status_code == 409 and conflict.json()["type"] == "IdempotencyConflict"


def test_concurrent_requests_with_one_idempotency_key_create_one_invocation(api, module_worker):
    create(api)
    ids = []

    def send():
        ids.append(invoke_async(api, event={"k": 1}, **{"Idempotency-Key": "same"}))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(set(ids)) == 1 and len(ids) == 4
    assert terminal(ids[0]).attempt == 1 and Invocation.objects.count() == 1


def test_async_events_over_the_limit_wait_in_the_queue_and_all_run(api, module_worker):
    create(api, reserved_concurrency=1)
    ids = [invoke_async(api, event={"sleep": 0.5, "n": n}) for n in range(3)]
    rows = [terminal(invocation_id) for invocation_id in ids]
    assert [row.status for row in rows] == ["succeeded"] * 3
    spans = sorted((row.started_at, row.finished_at) for row in rows)
    assert all(earlier[1] <= later[0] for earlier, later in itertools.pairwise(spans))


def test_a_function_naming_itself_as_destination_stops_after_the_hop_limit(api, module_worker):
    create(api, name="loop", source="def handler(event, context):\n    return {'hop': True}\n")
    patched = api.patch("/api/v1/functions/loop/", {"on_success_destination": "function:loop"}, format="json")
    assert patched.status_code == 200
    invoke_async(api, name="loop", event={"start": True})
    letter = wait_for(lambda: DeadLetter.objects.filter(condition="RecursiveLoopDetected").first(), timeout_s=60)
    time.sleep(1)  # a loop that did not stop would go on meanwhile
    rows = Invocation.objects.filter(function__name="loop")
    assert rows.count() == destinations.CHAIN_DEPTH_MAX + 1
    assert sorted(rows.values_list("chain_depth", flat=True)) == list(range(destinations.CHAIN_DEPTH_MAX + 1))
    assert letter.function.name == "loop" and letter.error_type == "RecursiveInvocationDropped"
    listed = api.get("/api/v1/dead-letters/?condition=RecursiveLoopDetected").json()
    assert listed["count"] == 1


def test_an_event_past_its_maximum_age_expires_without_running(api, cluster):
    create(api, max_event_age_s=60)
    invocation_id = invoke_async(api, event={"x": 1})  # no worker is running yet
    Invocation.objects.filter(pk=invocation_id).update(expires_at=Invocation.objects.get(pk=invocation_id).queued_at)
    cluster.start_worker()
    cluster.start_beat()
    row = terminal(invocation_id)
    assert row.status == "expired" and row.attempt == 0
    assert DeadLetter.objects.get(invocation_id=invocation_id).condition == "EventAgeExceeded"


# ---- sync semantics -----------------------------------------------------------------------------------------


def test_a_sync_call_outliving_the_wait_budget_gets_its_id_to_poll(api, worker, settings):
    create(api, timeout_s=10)
    settings.SYNC_WAIT_MAX_S = 1
    response = invoke(api, event={"sleep": 3})
    assert response.status_code == 202
    assert terminal(response.json()["invocation_id"]).status == "succeeded"


# ---- idempotency --------------------------------------------------------------------------------------------


# ---- concurrency --------------------------------------------------------------------------------------------


def test_reserved_concurrency_zero_throttles_every_call_and_runs_nothing(api):  # no worker: nothing may reach one
    create(api, reserved_concurrency=0)
    response = invoke(api)
    assert response.status_code == 429 and response["Retry-After"] == "1"
    body = response.json()
    assert body["type"] == "TooManyRequests"
    assert body["details"]["reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"
    assert not Invocation.objects.exists()


def test_a_sync_call_over_reserved_concurrency_is_refused_while_another_runs(api, worker):
    create(api, reserved_concurrency=1, timeout_s=10)
    slow = threading.Thread(target=invoke, args=(api,), kwargs={"event": {"sleep": 3}})
    slow.start()
    running(wait_for(lambda: Invocation.objects.first()).pk)
    refused = invoke(api)
    slow.join(30)
    assert refused.status_code == 429
    assert Invocation.objects.count() == 1
    assert invoke(api).status_code == 200  # the slot came back


def test_the_account_limit_applies_across_functions(api, worker, settings):
    settings.ACCOUNT_CONCURRENCY_LIMIT = 1
    create(api, timeout_s=10)
    create(api, name="other")
    slow = threading.Thread(target=invoke, args=(api,), kwargs={"event": {"sleep": 3}})
    slow.start()
    running(wait_for(lambda: Invocation.objects.first()).pk)
    refused = invoke(api, name="other")
    slow.join(30)
    assert refused.status_code == 429
    assert refused.json()["details"]["reason"] == "ConcurrentInvocationLimitExceeded"


def test_an_event_throttled_while_concurrency_is_zero_runs_as_soon_as_it_is_raised(api, worker):
    create(api, reserved_concurrency=0)
    invocation_id = invoke_async(api, event={"n": 1})
    wait_for(lambda: Invocation.objects.get(pk=invocation_id).error_type.startswith("Throttled."))
    assert api.patch("/api/v1/functions/fn/", {"reserved_concurrency": None}, format="json").status_code == 200
    assert terminal(invocation_id, timeout_s=15).status == "succeeded"


def test_a_call_finding_no_executor_capacity_is_throttled_at_once_not_lost(api, cluster):
    cluster.start_worker(RUNTIME_MEMORY_BUDGET_MB="256")
    cluster.start_beat()
    create(api, memory_mb=256, timeout_s=10)
    slow = threading.Thread(target=invoke, args=(api,), kwargs={"event": {"sleep": 4}})
    slow.start()
    running(wait_for(lambda: Invocation.objects.first()).pk)
    started = time.monotonic()
    refused = invoke(api)
    elapsed = time.monotonic() - started
    slow.join(30)
    assert refused.status_code == 429 and refused["Retry-After"] == "1", refused.content
    assert refused.json()["details"]["reason"] == "ExecutorCapacityExceeded"
    assert elapsed < 3  # not a lease expiry later
    event = invoke_async(api)  # an event waits for room instead, and runs
    assert terminal(event).status == "succeeded"


# ---- faults ---------------------------------------------------------------------------------------------------


def test_a_sandbox_killed_mid_run_is_a_clean_error_and_the_worker_stays_healthy(api, worker):
    create(
        api, source="import os, time\n\ndef handler(e, c):\n    time.sleep(e.get('sleep', 0))\n    return os.getpid()\n"
    )
    holder = {}
    thread = threading.Thread(target=lambda: holder.update(r=invoke(api, event={"sleep": 5})))
    thread.start()
    invocation = running(wait_for(lambda: Invocation.objects.first()).pk)
    time.sleep(0.5)
    import psutil

    sandboxes = [
        p for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real in settings.SANDBOX_UIDS
    ]
    assert sandboxes, "no sandbox process found"
    for process in sandboxes:
        process.kill()
    thread.join(30)
    response = holder["r"]
    assert response["X-Function-Error"] == "Unhandled" and response.json()["errorType"] == "Runtime.ExitError"
    assert Invocation.objects.get(pk=invocation.pk).status == "failed"
    assert invoke(api).status_code == 200


def test_a_sigkilled_worker_loses_no_async_event(api, cluster):
    create(api, timeout_s=30)
    first = cluster.start_worker()
    cluster.start_beat()
    invocation_id = invoke_async(api, event={"sleep": 3})
    running(invocation_id)
    first.kill()
    first.wait(10)
    cluster.start_worker()
    row = terminal(invocation_id, timeout_s=40)
    assert row.status == "succeeded" and row.attempt == 2
    assert json.loads(row.result)["attempt"] == 2


def test_when_one_of_two_workers_dies_the_other_finishes_its_work(api, cluster):
    create(api, timeout_s=30)
    workers = {str(process.pid): process for process in (cluster.start_worker(), cluster.start_worker())}
    cluster.start_beat()
    invocation_id = invoke_async(api, event={"sleep": 3})
    row = running(invocation_id)
    holder_pid = row.worker_host.rsplit(":", 1)[1]
    workers[holder_pid].kill()
    final = terminal(invocation_id, timeout_s=40)
    assert final.status == "succeeded" and final.attempt == 2
    assert final.worker_host.rsplit(":", 1)[1] != holder_pid
    assert concurrency.slots_in_use(function_id=final.function_id) == 0  # the dead worker's slot did not leak


def test_a_redelivery_while_the_first_attempt_runs_is_skipped(api, cluster, settings):
    settings.FAST_LANE = False  # Celery's redelivery past its visibility timeout (the lane never redelivers)
    create(api, timeout_s=30)
    redis_client().delete(lifecycle.SKIPPED_DELIVERIES_KEY)
    for _ in range(2):
        cluster.start_worker(BROKER_VISIBILITY_TIMEOUT_S="1")
    invocation_id = invoke_async(api, event={"sleep": 6})
    row = terminal(invocation_id, timeout_s=40)
    assert row.status == "succeeded" and row.attempt == 1
    assert int(redis_client().get(lifecycle.SKIPPED_DELIVERIES_KEY) or 0) >= 1


def test_a_publish_lost_after_commit_is_republished_by_the_sweeper(api, cluster, monkeypatch):
    from celery import current_app

    from functions_app import accept

    create(api)
    cluster.start_worker()
    cluster.start_beat()
    lost_publishes = []

    def lost(*args, **kwargs):
        lost_publishes.append(args)
        raise ConnectionError("the broker vanished")

    # The accept's own publish is lost (in this process); the sweeper runs in beat's process, unpatched.
    monkeypatch.setattr(accept, "lane_publish", lost)  # the fast lane's push, or (no executor serving it yet)
    monkeypatch.setattr(current_app, "send_task", lost)  # Celery's
    invocation_id = invoke_async(api, event={"x": 1})
    assert len(lost_publishes) == 1
    assert Invocation.objects.get(pk=invocation_id).status == "queued"  # nobody was told of it
    assert terminal(invocation_id, timeout_s=30).status == "succeeded"


def test_events_queued_when_redis_loses_its_queue_are_all_run(api, cluster, redis_server):
    create(api)
    ids = [invoke_async(api, event={"n": n}) for n in range(20)]  # no worker yet: they sit in Redis
    redis_client().flushdb()  # what a restart without persistence does to the queue
    cluster.start_worker()
    cluster.start_beat()
    rows = [terminal(invocation_id, timeout_s=60) for invocation_id in ids]
    assert {row.status for row in rows} == {"succeeded"} and {row.attempt for row in rows} == {1}


def test_a_paused_workers_late_result_is_fenced_out(api, cluster):
    create(api, timeout_s=30)
    paused = cluster.start_worker()
    invocation_id = invoke_async(api, event={"sleep": 2})
    running(invocation_id)
    os.kill(paused.pid, signal.SIGSTOP)  # its lease stops being renewed
    cluster.start_worker()
    cluster.start_beat()
    row = terminal(invocation_id, timeout_s=40)
    os.kill(paused.pid, signal.SIGCONT)  # the zombie attempt now finishes and tries to write
    time.sleep(4)
    final = Invocation.objects.get(pk=invocation_id)
    assert final.status == "succeeded" and final.attempt == 2
    assert json.loads(final.result)["attempt"] == 2 and final.finished_at == row.finished_at


def test_a_poison_event_stops_after_its_attempts_and_the_worker_stays_healthy(api, worker):
    hog = "def handler(event, context):\n    block = bytearray(512 * 1024 * 1024)\n    return len(block)\n"
    create(api, name="hog", source=hog, memory_mb=128)
    create(api)
    row = terminal(invoke_async(api, name="hog"), timeout_s=60)
    assert row.status == "failed" and row.attempt == 3 and row.error_type == "Runtime.OutOfMemory"
    assert DeadLetter.objects.get(invocation_id=row.pk).condition == "RetriesExhausted"
    assert invoke(api).status_code == 200


def test_a_sync_caller_whose_worker_dies_gets_worker_lost_quickly(api, cluster):
    create(api, timeout_s=60)
    victim = cluster.start_worker()
    cluster.start_beat()
    holder = {}
    thread = threading.Thread(target=lambda: holder.update(r=invoke(api, event={"sleep": 30})))
    thread.start()
    invocation_id = wait_for(lambda: Invocation.objects.first()).pk
    running(invocation_id)
    started = time.monotonic()
    victim.kill()
    thread.join(40)
    response = holder["r"]
    assert response.status_code == 502 and response.json()["type"] == "Platform.WorkerLost"
    assert time.monotonic() - started < 15
    row = Invocation.objects.get(pk=invocation_id)
    assert row.attempt == 1 and row.status == "failed" and row.error_type == "Platform.WorkerLost"
    assert concurrency.slots_in_use(function_id=row.function_id) == 0


def test_a_sync_call_does_not_queue_behind_a_backlog_of_events(api, cluster):
    cluster.start_worker(concurrency=2)
    cluster.start_beat()
    create(api, timeout_s=10)
    create(api, name="quick")
    backlog = [invoke_async(api, event={"sleep": 2, "n": n}) for n in range(12)]  # 12 s of work for 2 slots
    running(backlog[0])
    started = time.monotonic()
    answer = invoke(api, name="quick")
    waited = time.monotonic() - started
    assert answer.status_code == 200
    assert waited < 5, f"the sync call waited {waited:.1f} s behind the events"  # at most one event's end
    assert all(terminal(invocation_id, timeout_s=60).status == "succeeded" for invocation_id in backlog)


def test_two_workers_starting_together_on_a_fresh_var_dir_both_come_up(api, cluster, tmp_path, settings):
    # Everything a worker builds on first start (keys, the runtime layer, /tmp templates) is built by both at once.
    create(api)
    for attempt in range(3):
        var_dir = tmp_path / f"var{attempt}"
        fresh = {"EPHEMERA_VAR_DIR": str(var_dir), "REDIS_URL": settings.REDIS_URL}
        pair = [cluster.start_worker(wait=False, **fresh) for _ in range(2)]
        for process in pair:
            cluster.wait_ready(process)
        assert [process.poll() for process in pair] == [None, None]
    cluster.start_beat()
    assert terminal(invoke_async(api, event={"x": 1})).status == "succeeded"


def test_when_the_database_cuts_every_connection_leases_are_renewed_and_runs_finish_once(api, worker):
    # What a PostgreSQL restart does to the worker: every backend ends. The heartbeat renews on (a run longer than
    # the lease is not taken back), the running call writes its result, and the next call runs at once.
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("needs a database server whose backends can be terminated")
    create(api, timeout_s=30)
    long_call = invoke_async(api, event={"sleep": 5})  # 2.5 leases
    running(long_call)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    assert terminal(invoke_async(api, event={"n": 1}), timeout_s=10).attempt == 1
    row = terminal(long_call, timeout_s=20)
    assert row.status == "succeeded" and row.attempt == 1 and row.terminal_writes == 1


def test_a_lost_worker_is_recovered_within_the_bound_behind_a_backlog_of_ten_thousand_events(api, cluster, settings):
    from django.utils import timezone

    from functions_app.tasks import invocation_execute

    settings.FAST_LANE = False  # the backlog in Celery's queue, where a delivered message waits unacked
    create(api, timeout_s=60)
    first = cluster.start_worker(concurrency=1)
    cluster.start_beat()
    running_event = invoke_async(api, event={"sleep": 30})
    running(running_event)
    # The backlog: 10,000 events of another function, queued behind the running one (the only slot is busy).
    create(api, name="backlog")
    backlog_function = Invocation.objects.get(pk=running_event).function.owner.functions.get(name="backlog")
    now = timezone.now()
    rows = [
        Invocation(owner_id=backlog_function.owner_id, function=backlog_function, payload="{}", memory_mb=128,
                   invocation_type="async", max_attempts=3, queued_at=now, available_at=now, published_at=now)
        for _ in range(10_000)
    ]  # fmt: skip
    # Messages first: publishing 10,000 takes seconds, and rows without their message yet would be a loss to the
    # sweeper (as they would be in production, where the gap is a commit long).
    with invocation_execute.app.producer_or_acquire() as producer:
        for row in rows:
            invocation_execute.apply_async((str(row.pk),), producer=producer)
    Invocation.objects.bulk_create(rows, batch_size=2000)
    assert redis_client().llen("celery") >= 10_000
    first.kill()
    killed_at = time.monotonic()
    wait_for(lambda: Invocation.objects.get(pk=running_event).status == "queued", timeout_s=30)
    recovered_in = time.monotonic() - killed_at
    bound = settings.LEASE_S + settings.SWEEP_INTERVAL_S + 2
    assert recovered_in <= bound, f"recovered in {recovered_in:.1f} s, bound {bound} s"
    assert Invocation.objects.get(pk=running_event).attempt == 1  # requeued for its second attempt
    assert redis_client().llen("celery") < 10_500  # the sweeper did not publish the backlog again


def test_beat_embedded_in_a_killed_control_worker_ends_with_it(cluster):
    import psutil

    control = psutil.Process(cluster.start_beat().pid)
    beat = wait_for(lambda: control.children())[0]
    # Beat opens its schedule file once it is set up (after beat_init): then it is the beat that runs the tasks.
    wait_for(lambda: list(settings.VAR_DIR.glob(f"beat-{id(cluster)}*")))
    os.kill(control.pid, signal.SIGKILL)
    gone, alive = psutil.wait_procs([beat], timeout=10)
    assert beat in gone and not alive  # not orphaned, firing its schedule on
