"""The invocation state machine in process: accept, claim, run through a fake executor, complete.

No worker process and no sandbox: these tests drive the services directly, so they are fast and exact about
what the rows hold. End-to-end behaviour through real workers is in test_invoke.py and test_delivery.py.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import close_old_connections
from django.utils import timezone

from functions_app import services
from functions_app.accept import invocation_accept
from functions_app.destinations import CHAIN_DEPTH_MAX, destination_payload
from functions_app.invoke import invocation_wait
from functions_app.lifecycle import CAPACITY_EXCEEDED, EXECUTOR_FAILED, invocation_claim, invocation_run
from functions_app.models import DeadLetter, Invocation, InvocationStatus, InvocationType
from functions_app.runtime import CapacityError, InvokeResult
from functions_app.worker import function_spec

pytestmark = pytest.mark.django_db


def accept(function: Any, *, kind: str = InvocationType.ASYNC, payload: bytes = b"{}", **extra: Any) -> Invocation:
    return invocation_accept(
        owner=function.owner, function=function, qualifier="", raw_payload=payload, invocation_type=kind, **extra
    )


def claim(invocation: Invocation) -> Invocation | None:
    return invocation_claim(invocation_id=str(invocation.pk), host="test:1")


def result(**overrides: Any) -> InvokeResult:
    fields: dict[str, Any] = {
        "status": "succeeded",
        "payload": b'{"ok": true}',
        "error_type": None,
        "is_cold": False,
        "init_ms": 0.0,
        "duration_ms": 12.3,
        "peak_memory_mb": 30.0,
        "cpu_ms": 5.0,
        "log": "hello\n",
        "environment_id": "env-1",
    }
    fields.update(overrides)
    return InvokeResult(**fields)


class FakeExecutor:
    """Answers every call with ``answer`` (an InvokeResult, or an exception to raise)."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.specs: list[Any] = []

    def has_room(self, memory_mb: int) -> bool:
        return True  # the claim's check passes; what invoke answers is the test's

    def can_ever_host(self, memory_mb: int) -> bool:
        return True

    def invoke(self, spec: Any, request: Any) -> InvokeResult:
        self.specs.append(spec)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_an_event_throttled_at_reserved_concurrency_zero_runs_once_concurrency_is_raised(make_function):
    function = make_function(reserved_concurrency=0)
    event = accept(function)
    assert claim(event) is None  # throttled: back in the queue
    services.function_update_configuration(function=function, reserved_concurrency=None)
    Invocation.objects.filter(pk=event.pk).update(available_at=timezone.now())  # its retry is due
    claimed = claim(event)
    assert claimed is not None and claimed.status == InvocationStatus.RUNNING


def test_the_run_is_sized_and_timed_by_the_configuration_it_was_accepted_with(make_function):
    function = make_function(memory_mb=128, timeout_s=3)
    call = accept(function, kind=InvocationType.SYNC)
    services.function_update_configuration(function=function, memory_mb=1024, timeout_s=30)
    spec = function_spec(claim(call))
    assert (spec.memory_mb, spec.timeout_s) == (128, 3.0)
    assert (call.memory_mb, call.timeout_s) == (128, 3)
    later = function_spec(claim(accept(function, kind=InvocationType.SYNC)))
    assert (later.memory_mb, later.timeout_s) == (1024, 30.0)
    assert later.environment_key != spec.environment_key


def test_a_sync_call_refused_for_executor_capacity_is_answered_at_once_and_nothing_ran(make_function):
    function = make_function()
    call = accept(function, kind=InvocationType.SYNC)
    invocation_run(invocation_id=str(call.pk), executor=FakeExecutor(CapacityError("memory budget taken")))
    outcome = invocation_wait(invocation=call, wait_s=1)
    assert outcome.finished and outcome.error_type == CAPACITY_EXCEEDED and not outcome.function_error
    row = Invocation.objects.get(pk=call.pk)
    assert row.status == InvocationStatus.FAILED and row.duration_ms is None and row.terminal_writes == 1


def test_an_event_refused_for_executor_capacity_waits_in_the_queue_without_losing_an_attempt(make_function):
    function = make_function()
    event = accept(function)
    invocation_run(invocation_id=str(event.pk), executor=FakeExecutor(CapacityError("memory budget taken")))
    row = Invocation.objects.get(pk=event.pk)
    assert row.status == InvocationStatus.QUEUED and row.error_type == CAPACITY_EXCEEDED
    assert row.max_attempts - row.attempt == 3  # all three attempts are still ahead of it
    Invocation.objects.filter(pk=event.pk).update(available_at=timezone.now())
    invocation_run(invocation_id=str(event.pk), executor=FakeExecutor(result()))
    assert Invocation.objects.get(pk=event.pk).status == InvocationStatus.SUCCEEDED


def test_the_log_carries_lambdas_start_end_and_report_lines(make_function):
    function = make_function(memory_mb=256)
    call = accept(function, kind=InvocationType.SYNC)
    invocation_run(invocation_id=str(call.pk), executor=FakeExecutor(result(is_cold=True, init_ms=4.56, log="hello\n")))
    log = Invocation.objects.get(pk=call.pk).log.splitlines()
    assert log[0] == f"START RequestId: {call.pk} Version: $LATEST"
    assert log[1] == "hello" and log[2] == f"END RequestId: {call.pk}"
    report = log[3].split("\t")
    assert report[0] == f"REPORT RequestId: {call.pk}" and report[1] == "Duration: 12.30 ms"
    assert report[2] == "Billed Duration: 17 ms"  # init is billed too: ceil(12.30 + 4.56)
    assert report[3:] == ["Memory Size: 256 MB", "Max Memory Used: 30 MB", "Init Duration: 4.56 ms"]


def test_a_timeout_is_written_to_the_log_as_lambda_words_it(make_function):
    function = make_function(timeout_s=2)
    call = accept(function, kind=InvocationType.SYNC)
    timed_out = result(status="timed_out", error_type="Sandbox.Timedout", duration_ms=2000.0, log="")
    invocation_run(invocation_id=str(call.pk), executor=FakeExecutor(timed_out))
    assert "Task timed out after 2.00 seconds" in Invocation.objects.get(pk=call.pk).log


def test_the_phases_of_an_invocation_add_up_to_its_time_from_accept_to_finish(make_function):
    function = make_function()
    call = accept(function, kind=InvocationType.SYNC)
    invocation_run(invocation_id=str(call.pk), executor=FakeExecutor(result(duration_ms=0.0)))
    row = Invocation.objects.get(pk=call.pk)
    phases = [row.queue_wait_ms, row.prepare_ms, row.init_ms, row.duration_ms, row.overhead_ms]
    assert all(ms is not None and ms >= 0 for ms in phases)
    total_ms = (row.finished_at - row.queued_at).total_seconds() * 1000
    assert abs(sum(phases) - total_ms) < 0.01


def test_a_destination_loop_stops_at_the_hop_limit_and_keeps_the_record_as_a_dead_letter(make_function):
    function = make_function(name="loop")
    services.function_update_configuration(function=function, on_success_destination="function:loop")
    event = accept(function, chain_depth=CHAIN_DEPTH_MAX)
    invocation_run(invocation_id=str(event.pk), executor=FakeExecutor(result()))
    assert Invocation.objects.count() == 1  # no further hop
    letter = DeadLetter.objects.get()
    assert letter.condition == "RecursiveLoopDetected" and letter.function_id == function.pk
    record = json.loads(letter.request_payload)
    assert record["requestContext"]["requestId"] == str(event.pk) and record["responsePayload"] == {"ok": True}


def test_a_destination_hop_below_the_limit_carries_the_chain_on(make_function):
    function = make_function(name="loop")
    services.function_update_configuration(function=function, on_success_destination="function:loop")
    event = accept(function, chain_depth=3)
    invocation_run(invocation_id=str(event.pk), executor=FakeExecutor(result()))
    follow_up = Invocation.objects.exclude(pk=event.pk).get()
    assert follow_up.chain_depth == 4 and not DeadLetter.objects.exists()


def test_a_destination_record_over_the_async_limit_stays_valid_json(make_function):
    big = "x" * (900 * 1024)
    record = {"requestContext": {"requestId": "r"}, "requestPayload": big, "responsePayload": big}
    payload = json.loads(destination_payload(record))
    assert payload["responsePayload"] is None and "responsePayloadOmitted" in payload
    assert payload["requestPayload"] == big and payload["requestContext"] == {"requestId": "r"}


def test_an_executor_that_raises_fails_a_sync_call_at_once_as_a_platform_error(make_function):
    function = make_function()
    call = accept(function, kind=InvocationType.SYNC)
    invocation_run(invocation_id=str(call.pk), executor=FakeExecutor(OSError(28, "No space left on device")))
    outcome = invocation_wait(invocation=call, wait_s=1)
    assert outcome.finished and outcome.platform_error and outcome.error_type == EXECUTOR_FAILED
    assert Invocation.objects.get(pk=call.pk).terminal_writes == 1


def test_an_executor_that_raises_on_an_event_uses_up_an_attempt_and_retries(make_function):
    function = make_function()
    event = accept(function)
    invocation_run(invocation_id=str(event.pk), executor=FakeExecutor(RuntimeError("bug")))
    row = Invocation.objects.get(pk=event.pk)
    assert row.status == InvocationStatus.QUEUED and row.attempt == 1 and row.max_attempts == 3


def test_a_payload_nested_too_deeply_is_refused_as_invalid_content(make_function):
    from console.exceptions import ServiceError

    with pytest.raises(ServiceError) as refused:
        accept(make_function(), payload=b"[" * 100_000 + b"]" * 100_000)
    assert refused.value.type == "InvalidRequestContent" and refused.value.status == 400


def test_a_sync_caller_reads_the_row_while_redis_is_down(make_function, monkeypatch):
    import redis

    from functions_app import invoke

    function = make_function()
    call = accept(function, kind=InvocationType.SYNC)
    invocation_run(invocation_id=str(call.pk), executor=FakeExecutor(result()))

    def down(*args, **kwargs):
        raise redis.ConnectionError("Redis is restarting")

    monkeypatch.setattr(invoke, "blocking_pop", down)
    outcome = invocation_wait(invocation=call, wait_s=5)
    assert outcome.finished and outcome.status == InvocationStatus.SUCCEEDED and json.loads(outcome.result)


def test_a_sync_caller_gets_503_with_the_invocation_id_while_the_database_is_down(make_function, monkeypatch, settings):
    import redis
    from django.db import OperationalError

    from console.exceptions import ServiceUnavailable
    from functions_app import invoke

    call = accept(make_function(), kind=InvocationType.SYNC)

    def down(*args, **kwargs):
        raise redis.ConnectionError("Redis is restarting")

    def database_down(self, *args, **kwargs):
        raise OperationalError("the connection is closed")

    settings.LEASE_S = 1  # the caller rides out an outage shorter than a lease
    monkeypatch.setattr(invoke, "blocking_pop", down)
    monkeypatch.setattr(Invocation, "refresh_from_db", database_down)
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as unavailable:
        invocation_wait(invocation=call, wait_s=5)
    assert 1 <= time.monotonic() - started < 3
    assert unavailable.value.status == 503 and unavailable.value.headers["Retry-After"] == "5"
    assert unavailable.value.details == {"invocation_id": str(call.pk)}


@pytest.mark.parametrize("payload", [b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -Infinity}', b'{"a": 1e400}'])
def test_a_payload_with_a_number_json_cannot_hold_is_refused(make_function, payload):
    from console.exceptions import ServiceError

    with pytest.raises(ServiceError) as refused:
        accept(make_function(), payload=payload)
    assert refused.value.type == "InvalidRequestContent"


def test_a_stored_result_holding_nan_is_shown_as_unparsed_text_not_a_server_error(make_function, api):
    function = make_function()
    call = accept(function, kind=InvocationType.SYNC)
    invocation_run(invocation_id=str(call.pk), executor=FakeExecutor(result(payload=b'{"x": NaN}')))
    response = api.get(f"/api/v1/invocations/{call.pk}/")
    assert response.status_code == 200
    assert response.json()["result"] is None and response.json()["unparsed"]["result"] == '{"x": NaN}'


class FakeCapacity:
    def __init__(self, *, room: bool, budget_mb: int = 10240) -> None:
        self.room, self.budget_mb = room, budget_mb

    def has_room(self, memory_mb: int) -> bool:
        return self.room

    def can_ever_host(self, memory_mb: int) -> bool:
        return memory_mb <= self.budget_mb


def test_an_event_the_host_has_no_room_for_waits_unclaimed_and_keeps_every_attempt(make_function):
    event = accept(make_function())
    assert invocation_claim(invocation_id=str(event.pk), host="t:1", capacity=FakeCapacity(room=False)) is None
    row = Invocation.objects.get(pk=event.pk)
    assert row.status == InvocationStatus.QUEUED and (row.attempt, row.max_attempts) == (0, 3)
    assert row.error_type == CAPACITY_EXCEEDED


def test_a_function_larger_than_the_hosts_budget_fails_at_once_with_a_clear_error(make_function):
    from functions_app.lifecycle import TOO_LARGE_FOR_HOSTS

    event = accept(make_function(memory_mb=4096))
    claimed = invocation_claim(
        invocation_id=str(event.pk), host="t:1", capacity=FakeCapacity(room=False, budget_mb=2048)
    )
    assert claimed is None
    row = Invocation.objects.get(pk=event.pk)
    assert row.status == InvocationStatus.FAILED and row.error_type == TOO_LARGE_FOR_HOSTS
    assert "4096 MB" in json.loads(row.result)["errorMessage"]


def test_code_that_cannot_be_prepared_fails_the_call_at_once_as_a_platform_error(make_function, monkeypatch):
    from functions_app import worker

    def unpack_fails(sha256):
        raise OSError(36, "File name too long")

    monkeypatch.setattr(worker, "code_extracted_dir", unpack_fails)
    call = accept(make_function(name="unpackable"), kind=InvocationType.SYNC)
    invocation_run(invocation_id=str(call.pk), executor=FakeExecutor(result()))
    outcome = invocation_wait(invocation=call, wait_s=1)
    assert outcome.platform_error and outcome.error_type == EXECUTOR_FAILED
    assert "File name too long" in json.loads(outcome.result)["errorMessage"]


# ---- outages of the database and Redis ----------------------------------------------------------------------


def test_a_finished_run_writes_its_result_once_the_database_answers_again(make_function, monkeypatch):
    from django.db import OperationalError

    from functions_app import lifecycle, outages

    call = accept(make_function(), kind=InvocationType.SYNC)
    write = lifecycle._terminal_write
    refusals = []

    def restarting(*args, **kwargs):
        if len(refusals) < 2:
            refusals.append(1)
            raise OperationalError("terminating connection due to administrator command")
        return write(*args, **kwargs)

    monkeypatch.setattr(outages, "DATABASE_RETRY_S", 0.01)
    monkeypatch.setattr(lifecycle, "_terminal_write", restarting)
    invocation_run(invocation_id=str(call.pk), executor=FakeExecutor(result()))
    row = Invocation.objects.get(pk=call.pk)
    assert len(refusals) == 2
    assert row.status == InvocationStatus.SUCCEEDED and row.terminal_writes == 1 and row.attempt == 1


def test_the_sweeper_leaves_expired_leases_to_their_heartbeats_just_after_a_database_outage(make_function, monkeypatch):
    from functions_app import lifecycle, outages, sweeper

    monkeypatch.setattr(outages, "database_outage", outages._OutageClock())
    call = accept(make_function(), kind=InvocationType.SYNC)
    claim(call)
    Invocation.objects.filter(pk=call.pk).update(lease_until=timezone.now() - timedelta(seconds=1))
    outages.database_outage.failed()  # the sweeper could not reach the database a moment ago
    assert sweeper.invocations_sweep()["leases_held"] == 1
    assert Invocation.objects.get(pk=call.pk).status == InvocationStatus.RUNNING
    monkeypatch.setattr(outages.database_outage, "_last_failure", time.monotonic() - 60)
    assert sweeper.invocations_sweep()["lost"] == 1
    assert Invocation.objects.get(pk=call.pk).error_type == lifecycle.WORKER_LOST


def test_a_sweep_that_cannot_reach_the_database_is_skipped_quietly(monkeypatch):
    from django.db import OperationalError

    from functions_app import outages, sweeper

    def down():
        raise OperationalError("connection refused")

    monkeypatch.setattr(outages, "database_outage", outages._OutageClock())
    monkeypatch.setattr(sweeper, "_sweep", down)
    assert sweeper.invocations_sweep() == {}
    assert not outages.leases_settled()


def test_after_a_redis_restart_the_sweeper_publishes_every_queued_invocation_at_once(make_function, monkeypatch):
    from console.redis import redis_client
    from functions_app import sweeper

    events = [accept(make_function(name=f"f{n}")) for n in range(3)]  # just published: not stale
    published = []
    monkeypatch.setattr(sweeper, "invocation_publish", lambda **kwargs: published.append(kwargs["invocation_id"]))
    sweeper.invocations_sweep()  # the first sweep of this Redis
    published.clear()
    assert sweeper.invocations_sweep()["published"] == 0
    redis_client().set(sweeper.BROKER_RUN_ID_KEY, "the run id of the Redis before its restart")
    assert sweeper.invocations_sweep()["published"] == 3
    assert sorted(published) == sorted(str(event.pk) for event in events)
    assert sweeper.invocations_sweep()["published"] == 0  # once


@pytest.mark.django_db(transaction=True)
def test_a_heartbeat_renews_leases_at_once_after_its_database_connection_was_broken(make_function):
    # What a PostgreSQL restart does to a long-lived thread's connection: the server ends its backend. The next
    # heartbeat must renew on its first try, not fail once and leave the lease a third of its length shorter.
    import queue
    import threading

    from django.db import connection

    from functions_app import worker
    from functions_app.worker import leases

    if connection.vendor != "postgresql":
        pytest.skip("needs a database server whose backends can be terminated")
    call = accept(make_function(), kind=InvocationType.SYNC)
    leases.add(str(call.pk), claim(call).attempt)
    steps: queue.Queue = queue.Queue()
    answers: queue.Queue = queue.Queue()

    def heartbeat_thread() -> None:  # connections are per thread: every beat runs in this one
        from django.db import connection as own

        while steps.get() is not None:
            ok = worker._duty(close_old_connections) and worker._duty(worker.leases_renew)
            answers.put((ok, own.connection.info.backend_pid if own.connection else None))

    thread = threading.Thread(target=heartbeat_thread)
    thread.start()
    try:
        steps.put("beat")
        renewed, backend = answers.get(timeout=10)
        assert renewed
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [backend])
        steps.put("beat")
        renewed, new_backend = answers.get(timeout=10)
        assert renewed and new_backend != backend
    finally:
        steps.put(None)
        thread.join(10)
        leases.remove(str(call.pk))


def test_a_delivery_whose_claim_finds_the_database_unreachable_is_retried_not_dropped(monkeypatch):
    # The message is acked either way: without the retry, the invocation waited REPUBLISH_AFTER_S for the sweeper.
    from celery.exceptions import Retry
    from django.db import OperationalError

    from functions_app import tasks

    def unreachable(**kwargs):
        raise OperationalError("connection refused")

    retries = []

    def retry(**kwargs):  # Celery's publishes the message again, due a second later
        retries.append(kwargs)
        return Retry("again", when=1)

    monkeypatch.setattr(tasks, "invocation_run", unreachable)
    monkeypatch.setattr(tasks.invocation_execute, "retry", retry)
    with pytest.raises(Retry):
        tasks.invocation_execute("an-invocation-id")
    assert len(retries) == 1 and isinstance(retries[0]["exc"], OperationalError)


def test_the_sweeper_republishes_only_what_the_broker_is_short_of_never_a_whole_backlog(make_function, settings):
    from datetime import timedelta

    from console.redis import redis_client
    from functions_app import sweeper
    from functions_app.lane import EVENT_LANE_KEY, lane_mark_served

    lane_mark_served()  # a host serves the lanes
    settings.REPUBLISH_AFTER_S = 30.0
    function = make_function()
    events = [accept(function, payload=json.dumps({"n": n}).encode()) for n in range(6)]
    long_ago = timezone.now() - timedelta(minutes=5)
    Invocation.objects.filter(pk__in=[e.pk for e in events]).update(published_at=long_ago)  # all stale
    sweeper.invocations_sweep()  # the first sweep of this Redis remembers its run id
    Invocation.objects.filter(pk__in=[e.pk for e in events]).update(published_at=long_ago)
    redis_client().delete("sync", "celery", EVENT_LANE_KEY)
    redis_client().rpush(EVENT_LANE_KEY, *[b"an id still waiting"] * 4)  # a backlog: 4 of the 6 ids are there
    assert sweeper.invocations_sweep()["published"] == 2  # only the 2 the broker is short of
    Invocation.objects.filter(pk__in=[e.pk for e in events]).update(published_at=long_ago)
    assert sweeper.invocations_sweep()["published"] == 0  # 6 messages for 6 rows: nothing is lost
