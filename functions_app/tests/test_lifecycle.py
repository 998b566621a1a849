"""The invocation lifecycle, in process: claims and their races, fencing, retries, expiry, reclaim and republish.

The invocation services (accept, lifecycle, sweeper) run against the real database and Redis; only the sandbox is a fake
(``FakeExecutor``). Time is moved by writing the row's clocks (``lease_until``, ``available_at``, ``expires_at``,
``published_at``), not by sleeping. In these tests ``transaction.on_commit`` callbacks never run, so an accepted
invocation's first message is never published: exactly a publish lost after the commit. Every later message
(requeues, republishes) really goes to Redis, where no worker consumes it.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from django.db import DatabaseError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from console.processes import CONTROL_QUEUE, INVOCATION_QUEUE, SYNC_QUEUE
from console.redis import as_text, redis_client
from functions_app.accept import invocation_accept, invocation_publish
from functions_app.concurrency import slot_acquire, slots_in_use
from functions_app.lane import EVENT_LANE_KEY, SYNC_LANE_KEY, lane_mark_served
from functions_app.lifecycle import (
    CAPACITY_EXCEEDED,
    EVENT_BATCH_BUDGET_S,
    EXECUTOR_FAILED,
    REPLY_KEY,
    SKIPPED_DELIVERIES_KEY,
    WORKER_LOST,
    _EventPace,
    invocation_claim,
    invocation_complete,
    invocation_reclaim,
    invocation_run,
    invocation_run_events,
)
from functions_app.models import DeadLetter, DeadLetterCondition, Function, Invocation, InvocationStatus, InvocationType
from functions_app.outages import _OutageClock
from functions_app.runtime import CapacityError, InvokeResult
from functions_app.sweeper import BROKER_RUN_ID_KEY, KOMBU_UNACKED_KEY, invocations_sweep
from functions_app.worker import leases, leases_renew

pytestmark = pytest.mark.django_db

ERROR_BODY = b'{"errorType": "RuntimeError", "errorMessage": "boom", "stackTrace": []}'
LONG_AGO = timedelta(minutes=5)


@pytest.fixture(autouse=True)
def settled_platform(clean_redis: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """No database outage was just seen by this process (an earlier test's would keep the sweeper off expired
    leases for half a lease), and the sweeper knows this Redis (its first sweep of a new Redis takes it for
    restarted and publishes every queued row again)."""
    monkeypatch.setattr("functions_app.outages.database_outage", _OutageClock())
    lane_mark_served()  # an executor host serves the fast lane
    client = redis_client()
    client.set(BROKER_RUN_ID_KEY, client.info("server")["run_id"])


# ---- the fake executor and small helpers ----------------------------------------------------------------------


def succeeded(**overrides: Any) -> InvokeResult:
    fields: dict[str, Any] = {
        "status": "succeeded",
        "payload": b'{"ok": true}',
        "error_type": None,
        "is_cold": False,
        "init_ms": 0.0,
        "duration_ms": 12.0,
        "peak_memory_mb": 30.0,
        "cpu_ms": 5.0,
        "log": "",
        "environment_id": "env-1",
    }
    fields.update(overrides)
    return InvokeResult(**fields)


def failed() -> InvokeResult:
    return succeeded(status="failed", payload=ERROR_BODY, error_type="RuntimeError")


Answer = InvokeResult | Exception | Callable[[], InvokeResult]


class FakeExecutor:
    """The sandbox's stand-in. Each call takes the next answer: an InvokeResult to return, an exception to raise, or
    a callable to run in place of the handler (for what happens meanwhile). ``room`` answers the claim's check."""

    def __init__(self, *answers: Answer, room: bool | Callable[[], bool] = True) -> None:
        self.answers = list(answers)
        self.room = room
        self.attempts: list[int] = []  # InvokeRequest.attempt of every call

    def has_room(self, memory_mb: int) -> bool:
        return self.room() if callable(self.room) else self.room

    def can_ever_host(self, memory_mb: int) -> bool:
        return True

    def invoke(self, spec: Any, request: Any) -> InvokeResult:
        self.attempts.append(request.attempt)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer() if callable(answer) else answer


def accept(function: Function, *, kind: str = InvocationType.ASYNC, payload: bytes = b'{"n": 1}') -> Invocation:
    return invocation_accept(
        owner=function.owner, function=function, qualifier="", raw_payload=payload, invocation_type=kind
    )


def claim(invocation: Invocation, host: str = "test:1") -> Invocation | None:
    return invocation_claim(invocation_id=str(invocation.pk), host=host)


def run(invocation: Invocation, executor: FakeExecutor) -> Invocation | None:
    return invocation_run(invocation_id=str(invocation.pk), executor=executor)


def row(invocation: Invocation) -> Invocation:
    return Invocation.objects.get(pk=invocation.pk)


def set_row(invocation: Invocation, **fields: Any) -> None:
    Invocation.objects.filter(pk=invocation.pk).update(**fields)


def make_due(invocation: Invocation) -> None:
    set_row(invocation, available_at=timezone.now())


def expire_lease(invocation: Invocation) -> None:
    set_row(invocation, lease_until=timezone.now() - timedelta(seconds=1))


def heartbeat(invocation: Invocation) -> int:
    """The running worker's heartbeat for this attempt: the real, fenced renewal. Returns how many it renewed."""
    leases.add(str(invocation.pk), invocation.attempt)
    try:
        return leases_renew()
    finally:
        leases.remove(str(invocation.pk))


def published_ids(queue: str = INVOCATION_QUEUE) -> list[str]:
    """The invocation ids of the messages waiting in a queue (Celery's message body is [args, kwargs, embed])."""
    messages = [json.loads(raw) for raw in redis_client().lrange(queue, 0, -1)]
    return [json.loads(base64.b64decode(message["body"]))[0][0] for message in messages]


def lane_ids(key: str = SYNC_LANE_KEY) -> list[str]:
    """The invocation ids waiting on a fast lane (sync calls', or events' with EVENT_LANE_KEY)."""
    return [as_text(raw) for raw in redis_client().lrange(key, 0, -1)]


def replies(invocation: Invocation) -> list[dict[str, Any]]:
    """The outcomes pushed to a synchronous caller's reply key."""
    return [json.loads(raw) for raw in redis_client().lrange(REPLY_KEY.format(id=invocation.pk), 0, -1)]


def unacked_entry(queue: str) -> str:
    """An entry of kombu's unacked hash: a message delivered from ``queue`` to a worker that has not acked it."""
    return json.dumps([{"body": "..."}, "", queue])


@contextmanager
def before_the_first_update(action: Callable[[], Any]) -> Iterator[None]:
    """Run ``action`` just before the first UPDATE this connection sends within the block: a rival slipping in
    between a read and the compare-and-set that follows it."""
    pending = [action]

    def wrapper(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        if pending and sql.lstrip().upper().startswith("UPDATE"):
            pending.pop()()
        return execute(sql, params, many, context)

    with connection.execute_wrapper(wrapper):
        yield


# ---- accept and claim -----------------------------------------------------------------------------------------


def test_an_accepted_event_is_queued_with_its_retry_budget_and_maximum_age(make_function):
    function = make_function(max_retry_attempts=1, max_event_age_s=120)
    event = row(accept(function))
    assert (event.status, event.attempt, event.max_attempts, event.terminal_writes) == (
        InvocationStatus.QUEUED,
        0,
        2,
        0,
    )
    assert event.expires_at - event.queued_at == timedelta(seconds=120)
    assert event.available_at == event.published_at == event.queued_at and event.lease_until is None
    call = row(accept(function, kind=InvocationType.SYNC))
    assert (call.status, call.max_attempts, call.expires_at) == (InvocationStatus.QUEUED, 1, None)
    assert slots_in_use(function_id=function.pk) == 1  # a sync call is admitted at the door; an event at its claim


def test_a_claim_takes_the_row_for_one_attempt_under_a_lease(make_function, settings):
    settings.LEASE_S = 10.0
    event = accept(make_function())
    claimed = claim(event)
    current = row(event)
    assert claimed is not None and claimed.attempt == current.attempt == 1
    assert (current.status, current.worker_host) == (InvocationStatus.RUNNING, "test:1")
    assert current.lease_until - current.started_at == timedelta(seconds=10)


def test_of_two_claims_racing_for_one_row_only_the_first_compare_and_set_wins(make_function):
    event = accept(make_function())
    rivals: list[Invocation | None] = []
    with before_the_first_update(lambda: rivals.append(claim(event, host="rival:2"))):
        mine = claim(event)  # read the row at attempt 0; the rival claimed it before this claim's update
    assert mine is None and rivals[0] is not None and rivals[0].attempt == 1
    current = row(event)
    assert (current.status, current.attempt, current.worker_host) == (InvocationStatus.RUNNING, 1, "rival:2")


def test_a_claim_that_read_the_row_before_a_whole_attempt_came_and_went_takes_nothing(make_function):
    event = accept(make_function())
    with before_the_first_update(lambda: run(event, FakeExecutor(failed()))):
        mine = claim(event)  # read the row at attempt 0; meanwhile attempt 1 ran, failed and put it back queued
    assert mine is None
    current = row(event)
    assert (current.status, current.attempt) == (InvocationStatus.QUEUED, 1) and current.worker_host != "test:1"
    assert current.available_at > timezone.now()  # its retry is not due yet: the stale claim did not run it early


def test_a_second_delivery_of_a_running_invocation_runs_nothing_and_is_counted(make_function):
    event = accept(make_function())
    claim(event)
    executor = FakeExecutor(succeeded())
    assert run(event, executor) is None
    assert executor.attempts == [] and int(redis_client().get(SKIPPED_DELIVERIES_KEY)) == 1
    current = row(event)
    assert (current.status, current.attempt, current.worker_host) == (InvocationStatus.RUNNING, 1, "test:1")


# ---- fencing --------------------------------------------------------------------------------------------------


def test_the_late_result_of_an_attempt_whose_lease_was_taken_over_writes_nothing(make_function):
    event = accept(make_function())
    first = claim(event)
    expire_lease(event)
    second = claim(event, host="test:2")  # a redelivery takes the expired lease over
    assert second is not None and second.attempt == 2
    assert invocation_complete(invocation=first, result=failed()) is False
    current = row(event)
    assert (current.status, current.attempt, current.terminal_writes) == (InvocationStatus.RUNNING, 2, 0)
    assert current.result == "" and not current.function_error and current.lease_until is not None
    assert invocation_complete(invocation=second, result=succeeded()) is True
    current = row(event)
    assert (current.status, current.attempt, current.terminal_writes) == (InvocationStatus.SUCCEEDED, 2, 1)


def stalled_past_its_lease(invocation: Invocation, sweeps: list[dict[str, int]]) -> Callable[[], InvokeResult]:
    """A handler still running when its worker's lease runs out (the worker was paused): the sweeper runs
    meanwhile; then the handler succeeds."""

    def handler() -> InvokeResult:
        expire_lease(invocation)
        sweeps.append(invocations_sweep())
        return succeeded()

    return handler


def test_an_event_reclaimed_by_the_sweeper_mid_run_is_requeued_and_its_late_result_discarded(make_function):
    event = accept(make_function())
    sweeps: list[dict[str, int]] = []
    run(event, FakeExecutor(stalled_past_its_lease(event, sweeps)))
    assert (sweeps[0]["requeued"], sweeps[0]["lost"]) == (1, 0)
    current = row(event)
    assert (current.status, current.attempt, current.terminal_writes) == (InvocationStatus.QUEUED, 1, 0)
    assert current.result == "" and current.lease_until is None and current.available_at <= timezone.now()
    assert lane_ids(EVENT_LANE_KEY) == [str(event.pk)] and published_ids() == []  # due at once: on the lane
    executor = FakeExecutor(succeeded())
    run(event, executor)
    current = row(event)
    assert (current.status, current.attempt, current.terminal_writes) == (InvocationStatus.SUCCEEDED, 2, 1)
    assert executor.attempts == [2]


def test_a_sync_call_whose_lease_runs_out_mid_run_fails_as_worker_lost_and_is_answered_once(make_function):
    call = accept(make_function(), kind=InvocationType.SYNC)
    sweeps: list[dict[str, int]] = []
    run(call, FakeExecutor(stalled_past_its_lease(call, sweeps)))
    assert sweeps[0]["lost"] == 1
    current = row(call)
    assert (current.status, current.error_type, current.terminal_writes) == (InvocationStatus.FAILED, WORKER_LOST, 1)
    assert current.function_error and json.loads(current.result)["errorType"] == WORKER_LOST
    assert [reply["error_type"] for reply in replies(call)] == [WORKER_LOST]  # the late success said nothing


@pytest.mark.parametrize("kind", [InvocationType.ASYNC, InvocationType.SYNC])
def test_a_lease_renewed_after_the_sweeper_read_it_is_not_taken_back(make_function, kind):
    invocation = accept(make_function(), kind=kind)
    claimed = claim(invocation)
    expire_lease(invocation)
    now = timezone.now()
    seen = row(invocation)  # what the sweeper read: a lease that ran out
    assert heartbeat(claimed) == 1  # the worker was only slow: its heartbeat renews the lease now
    assert invocation_reclaim(invocation=seen, now=now) == "raced"
    current = row(invocation)
    assert (current.status, current.attempt, current.terminal_writes) == (InvocationStatus.RUNNING, 1, 0)
    assert current.error_type == "" and current.lease_until > now
    assert invocation_complete(invocation=claimed, result=succeeded()) is True  # the live attempt's result counts


@pytest.mark.parametrize("room", [True, False], ids=["room", "no-room"])
def test_a_redelivery_leaves_alone_an_attempt_whose_lease_was_renewed_after_it_was_read(make_function, room):
    event = accept(make_function())
    first = claim(event)
    expire_lease(event)

    def heartbeat_lands_meanwhile() -> bool:  # the paused worker resumes while this host checks its room
        assert heartbeat(first) == 1
        return room

    rival = FakeExecutor(room=heartbeat_lands_meanwhile)
    assert invocation_claim(invocation_id=str(event.pk), host="test:2", capacity=rival) is None
    current = row(event)
    assert (current.status, current.attempt, current.worker_host) == (InvocationStatus.RUNNING, 1, "test:1")
    assert invocation_complete(invocation=first, result=succeeded()) is True  # not run twice, nor discarded


# ---- retries --------------------------------------------------------------------------------------------------


def test_a_failed_event_is_retried_after_a_backoff_that_doubles_with_each_attempt(make_function, settings):
    settings.RETRY_BACKOFF_S = 60.0
    function = make_function()
    event = accept(function)
    executor = FakeExecutor(failed(), failed())
    for attempt, backoff_s in ((1, 60), (2, 120)):
        before = timezone.now()
        run(event, executor)
        after = timezone.now()
        current = row(event)
        assert (current.status, current.attempt, current.terminal_writes) == (InvocationStatus.QUEUED, attempt, 0)
        assert current.function_error and current.error_type == "RuntimeError" and current.lease_until is None
        assert before + timedelta(seconds=backoff_s) <= current.available_at <= after + timedelta(seconds=backoff_s)
        assert current.published_at == current.available_at
        assert slots_in_use(function_id=function.pk) == 0  # no slot is held while it waits
        assert run(event, executor) is None  # an early duplicate waits for the retry's own message
        make_due(event)
    assert executor.attempts == [1, 2]
    assert published_ids() == [str(event.pk)] * 2  # one message per retry, with its countdown


def test_an_event_that_fails_every_attempt_is_dead_lettered_once(make_function):
    event = accept(make_function())  # 1 + 2 retries
    executor = FakeExecutor(failed(), failed(), failed())
    for _ in range(3):
        run(event, executor)
        make_due(event)
    assert run(event, executor) is None  # a late redelivery of a finished event
    current = row(event)
    assert (current.status, current.attempt, current.terminal_writes) == (InvocationStatus.FAILED, 3, 1)
    assert current.finished_at is not None and executor.attempts == [1, 2, 3]
    letter = DeadLetter.objects.get()
    assert letter.invocation_id == event.pk and letter.condition == DeadLetterCondition.RETRIES_EXHAUSTED
    assert letter.attempts == 3 and letter.request_payload == '{"n": 1}'
    assert letter.error_type == "RuntimeError" and letter.error_result == ERROR_BODY.decode()


def test_a_retry_that_succeeds_clears_the_failed_attempts_error(make_function):
    event = accept(make_function())
    executor = FakeExecutor(failed(), succeeded())
    run(event, executor)
    make_due(event)
    run(event, executor)
    current = row(event)
    assert (current.status, current.attempt, current.terminal_writes) == (InvocationStatus.SUCCEEDED, 2, 1)
    assert not current.function_error and current.error_type == "" and json.loads(current.result) == {"ok": True}
    assert not DeadLetter.objects.exists()


def test_a_sync_call_is_never_retried_by_the_platform(make_function):
    function = make_function()
    call = accept(function, kind=InvocationType.SYNC)
    run(call, FakeExecutor(failed()))
    current = row(call)
    assert (current.status, current.attempt, current.terminal_writes) == (InvocationStatus.FAILED, 1, 1)
    assert [reply["error_type"] for reply in replies(call)] == ["RuntimeError"]
    assert published_ids(SYNC_QUEUE) == [] and not DeadLetter.objects.exists()
    assert slots_in_use(function_id=function.pk) == 0


def test_after_its_last_attempt_an_event_goes_to_its_failure_destination_as_lambdas_record(make_function):
    make_function(name="failures")
    function = make_function(name="fn", max_retry_attempts=0, on_failure_destination="function:failures")
    event = accept(function)
    run(event, FakeExecutor(failed()))
    assert row(event).status == InvocationStatus.FAILED and not DeadLetter.objects.exists()
    follow_up = Invocation.objects.get(function__name="failures")
    assert follow_up.invocation_type == InvocationType.ASYNC and follow_up.status == InvocationStatus.QUEUED
    assert follow_up.chain_depth == 1
    record = json.loads(follow_up.payload)
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 1
    assert record["responseContext"]["functionError"] == "Unhandled"
    assert record["requestPayload"] == {"n": 1} and record["responsePayload"]["errorMessage"] == "boom"


def test_an_executor_that_raises_on_an_events_last_attempt_fails_it_as_a_platform_error(make_function):
    event = accept(make_function(max_retry_attempts=0))
    run(event, FakeExecutor(OSError(28, "No space left on device")))
    current = row(event)
    assert current.status == InvocationStatus.FAILED and current.error_type == EXECUTOR_FAILED
    assert current.terminal_writes == 1 and current.attempt == 1
    assert "No space left on device" in json.loads(current.result)["errorMessage"]
    letter = DeadLetter.objects.get()
    assert letter.condition == DeadLetterCondition.RETRIES_EXHAUSTED
    assert (letter.error_type, letter.attempts) == (EXECUTOR_FAILED, 1)


# ---- throttles and capacity -----------------------------------------------------------------------------------


def test_an_event_the_executor_had_no_room_for_keeps_its_whole_retry_budget(make_function, settings):
    settings.THROTTLE_RETRY_S = 30.0
    function = make_function(max_retry_attempts=1)
    event = accept(function)
    executor = FakeExecutor(CapacityError("memory budget taken"), failed(), failed())
    before = timezone.now()
    run(event, executor)
    current = row(event)
    assert (current.status, current.attempt, current.max_attempts) == (InvocationStatus.QUEUED, 1, 3)
    assert current.error_type == CAPACITY_EXCEEDED and not current.function_error
    assert current.available_at >= before + timedelta(seconds=30)
    assert slots_in_use(function_id=function.pk) == 0
    for _ in range(2):
        make_due(event)
        run(event, executor)
    current = row(event)
    assert (current.status, current.attempt, current.terminal_writes) == (InvocationStatus.FAILED, 3, 1)
    assert executor.attempts == [1, 2, 3]  # the refusal, then the 1 + 1 attempts the function allows


def test_an_event_over_its_reserved_concurrency_waits_unclaimed_until_the_sweeper_expires_it(make_function, settings):
    settings.THROTTLE_RETRY_S = 30.0
    event = accept(make_function(reserved_concurrency=0))
    executor = FakeExecutor(succeeded())
    before = timezone.now()
    assert run(event, executor) is None
    current = row(event)
    assert (current.status, current.attempt, executor.attempts) == (InvocationStatus.QUEUED, 0, [])
    assert current.error_type == "Throttled.ReservedFunctionConcurrentInvocationLimitExceeded"
    assert current.available_at >= before + timedelta(seconds=30) and published_ids() == [str(event.pk)]
    set_row(event, expires_at=timezone.now() - timedelta(seconds=1))
    assert invocations_sweep()["expired"] == 1
    current = row(event)
    assert current.status == InvocationStatus.EXPIRED and current.error_type == "EventAgeExceeded"
    assert current.terminal_writes == 1
    letter = DeadLetter.objects.get()
    assert letter.condition == DeadLetterCondition.EVENT_AGE_EXCEEDED
    assert (letter.error_type, letter.attempts) == ("EventAgeExceeded", 0)


# ---- events taken together from the fast lane ------------------------------------------------------------------


def run_events(events: list[Invocation], executor: FakeExecutor) -> None:
    invocation_run_events(invocation_ids=[str(event.pk) for event in events], executor=executor)


def claims_in(queries: CaptureQueriesContext) -> int:
    return sum("attempt = attempt + 1" in query["sql"] for query in queries.captured_queries)


def test_events_taken_together_are_claimed_in_one_statement_and_their_results_written_in_one_transaction(
    make_function,
):
    function = make_function()
    events = [accept(function) for _ in range(3)]
    executor = FakeExecutor(succeeded(), failed(), succeeded())
    with CaptureQueriesContext(connection) as queries:
        run_events(events, executor)
    assert claims_in(queries) == 1
    # One transaction for the three results (the test's own transaction makes it a savepoint).
    assert sum(query["sql"].startswith("SAVEPOINT") for query in queries.captured_queries) == 1
    assert executor.attempts == [1, 1, 1]
    first, second, third = (row(event) for event in events)
    assert (first.status, first.terminal_writes) == (InvocationStatus.SUCCEEDED, 1)
    assert (second.status, second.attempt, second.error_type) == (InvocationStatus.QUEUED, 1, "RuntimeError")
    assert published_ids() == [str(second.pk)]  # its retry, published after the batch's write
    assert (third.status, third.terminal_writes) == (InvocationStatus.SUCCEEDED, 1)
    assert slots_in_use(function_id=first.function_id) == 0 and leases.held() == []


def test_an_event_that_waited_its_turn_in_a_batch_counts_the_wait_as_queue_time(make_function, monkeypatch):
    monkeypatch.setattr("functions_app.lifecycle.EVENT_BATCH_BUDGET_S", 1.0)  # the slow first one keeps the batch
    function = make_function()
    events = [accept(function) for _ in range(2)]

    def slow() -> InvokeResult:
        time.sleep(0.2)
        return succeeded()

    run_events(events, FakeExecutor(slow, succeeded()))
    first, second = (row(event) for event in events)
    assert second.started_at - first.started_at >= timedelta(seconds=0.2)
    assert second.queue_wait_ms >= 200 and second.overhead_ms < 200


def test_the_events_behind_one_that_ran_long_go_back_to_the_queue_at_once_as_they_were(make_function):
    function = make_function(max_retry_attempts=1)
    slow, *behind = (accept(function) for _ in range(3))

    def long_run() -> InvokeResult:
        time.sleep(EVENT_BATCH_BUDGET_S * 2)
        return succeeded()

    executor = FakeExecutor(long_run)
    run_events([slow, *behind], executor)
    assert executor.attempts == [1] and row(slow).status == InvocationStatus.SUCCEEDED
    for event in map(row, behind):  # as before their claim: nothing was handed to the executor
        assert (event.status, event.attempt, event.max_attempts) == (InvocationStatus.QUEUED, 0, 2)
        assert event.available_at <= timezone.now() and event.error_type == ""
        assert event.started_at is None and event.worker_host == ""
    assert lane_ids(EVENT_LANE_KEY) == [str(event.pk) for event in behind]  # for the host's other threads
    assert leases.held() == []
    later = FakeExecutor(succeeded(), succeeded())
    run_events(behind, later)
    assert later.attempts == [1, 1]  # their handlers see their first attempt
    assert [row(event).status for event in behind] == [InvocationStatus.SUCCEEDED] * 2


def test_a_hosts_batches_shrink_as_its_events_run_longer(settings):
    settings.EVENT_BATCH_SIZE = 8
    pace = _EventPace()
    assert pace.batch_size() == 8
    for seconds, size in [(0.002, 8), (0.025, 2), (2.0, 1)]:
        pace.run_s = seconds
        assert pace.batch_size() == size
    pace.run_s = 0.0
    for _ in range(3):
        pace.record(2.0)  # slow events: one by one at once
    assert pace.batch_size() == 1
    for _ in range(40):
        pace.record(0.001)  # and many at a time again once they are fast
    assert pace.batch_size() == 8


def test_a_batch_leaves_duplicates_and_events_past_their_maximum_age_to_the_general_path(make_function):
    function = make_function()
    running, expired, plain = (accept(function) for _ in range(3))
    claim(running)
    set_row(expired, expires_at=timezone.now() - timedelta(seconds=1))
    executor = FakeExecutor(succeeded())
    run_events([running, expired, plain], executor)
    assert executor.attempts == [1]
    assert (row(running).status, row(running).attempt) == (InvocationStatus.RUNNING, 1)
    assert (row(expired).status, row(expired).terminal_writes) == (InvocationStatus.EXPIRED, 1)
    assert row(plain).status == InvocationStatus.SUCCEEDED
    assert int(redis_client().get(SKIPPED_DELIVERIES_KEY)) == 2  # the duplicate and the expired one: nothing ran


def test_a_batched_event_over_its_reserved_concurrency_goes_back_with_its_whole_retry_budget(make_function, settings):
    settings.THROTTLE_RETRY_S = 30.0
    function = make_function(reserved_concurrency=1, max_retry_attempts=1)
    events = [accept(function) for _ in range(2)]
    executor = FakeExecutor(succeeded(), succeeded())
    before = timezone.now()

    slot_acquire(  # another host runs one meanwhile
        function_id=function.pk, owner_id=function.owner_id, member="elsewhere", hold_s=60, reserved=1, account_limit=9
    )
    run_events(events, executor)
    assert executor.attempts == []
    for event in map(row, events):  # as before their claim: nothing ran
        assert (event.status, event.attempt, event.max_attempts) == (InvocationStatus.QUEUED, 0, 2)
        assert event.error_type == "Throttled.ReservedFunctionConcurrentInvocationLimitExceeded"
        assert event.available_at >= before + timedelta(seconds=30)


def test_events_of_one_function_with_a_reserved_concurrency_of_one_run_one_after_another_in_a_batch(make_function):
    function = make_function(reserved_concurrency=1)
    events = [accept(function) for _ in range(3)]
    executor = FakeExecutor(succeeded(), succeeded(), succeeded())
    run_events(events, executor)
    assert [row(event).status for event in events] == [InvocationStatus.SUCCEEDED] * 3
    assert slots_in_use(function_id=function.pk) == 0


def test_a_batch_whose_write_fails_is_written_again_whole_and_answered_once(make_function, monkeypatch):
    from functions_app import lifecycle

    monkeypatch.setattr(lifecycle, "database_retry", _retry_at_once)
    function = make_function()
    events = [accept(function) for _ in range(2)]
    completions = {"calls": 0}
    complete = lifecycle.invocation_complete

    def fails_once_on_the_second(*, invocation: Invocation, result: InvokeResult) -> bool:
        completions["calls"] += 1
        if completions["calls"] == 2:
            raise DatabaseError("the connection dropped mid-batch")
        return complete(invocation=invocation, result=result)

    monkeypatch.setattr(lifecycle, "invocation_complete", fails_once_on_the_second)
    answered: list[str] = []
    release_and_reply = lifecycle._release_and_reply
    monkeypatch.setattr(
        lifecycle,
        "_release_and_reply",
        lambda invocation: (answered.append(str(invocation.pk)), release_and_reply(invocation)),
    )
    run_events(events, FakeExecutor(succeeded(), succeeded()))
    assert completions["calls"] == 4  # the first transaction rolled back after one write; the second wrote both
    assert [(row(event).status, row(event).terminal_writes) for event in events] == [
        (InvocationStatus.SUCCEEDED, 1)
    ] * 2
    assert answered == [str(event.pk) for event in events]  # not the rolled-back write's


def _retry_at_once(action: Callable[[], Any], *, what: str, give_up_s: float = 1.0) -> Any:
    """database_retry without its pause: one failure, then the action again."""
    try:
        return action()
    except DatabaseError:
        return action()


# ---- maximum event age ----------------------------------------------------------------------------------------


def test_a_delivery_of_an_event_past_its_maximum_age_expires_it_without_running(make_function):
    event = accept(make_function())
    set_row(event, expires_at=timezone.now() - timedelta(seconds=1))
    executor = FakeExecutor(succeeded())
    assert run(event, executor) is None
    current = row(event)
    assert (current.status, current.attempt, current.terminal_writes) == (InvocationStatus.EXPIRED, 0, 1)
    assert executor.attempts == [] and current.finished_at is not None
    assert DeadLetter.objects.get().condition == DeadLetterCondition.EVENT_AGE_EXCEEDED


def test_an_event_that_fails_after_outliving_its_maximum_age_is_not_retried(make_function):
    event = accept(make_function())
    expires_at = timezone.now() + timedelta(seconds=0.5)
    set_row(event, expires_at=expires_at)

    def slow_failure() -> InvokeResult:  # the handler runs past the event's maximum age
        time.sleep(max((expires_at - timezone.now()).total_seconds(), 0) + 0.05)
        return failed()

    run(event, FakeExecutor(slow_failure))
    current = row(event)
    assert (current.status, current.attempt, current.terminal_writes) == (InvocationStatus.FAILED, 1, 1)
    assert DeadLetter.objects.get().attempts == 1


# ---- the sweeper: lost workers and lost messages --------------------------------------------------------------


def test_the_sweeper_fails_an_event_whose_last_attempt_lost_its_worker(make_function):
    event = accept(make_function(max_retry_attempts=0))
    claim(event)
    expire_lease(event)
    assert invocations_sweep()["lost"] == 1
    current = row(event)
    assert (current.status, current.error_type, current.terminal_writes) == (InvocationStatus.FAILED, WORKER_LOST, 1)
    assert current.function_error and current.lease_until is None
    letter = DeadLetter.objects.get()
    assert letter.condition == DeadLetterCondition.RETRIES_EXHAUSTED
    assert (letter.error_type, letter.attempts) == (WORKER_LOST, 1)


def test_a_poison_event_redelivered_after_its_last_attempt_died_fails_without_running(make_function):
    event = accept(make_function(max_retry_attempts=0))
    claim(event)
    expire_lease(event)  # its worker died (the handler killed it, say)
    executor = FakeExecutor(succeeded())
    assert run(event, executor) is None
    current = row(event)
    assert (current.status, current.error_type, current.terminal_writes) == (InvocationStatus.FAILED, WORKER_LOST, 1)
    assert executor.attempts == [] and DeadLetter.objects.get().attempts == 1


def test_the_sweeper_publishes_due_invocations_whose_message_was_lost_each_to_its_transport(make_function, settings):
    settings.REPUBLISH_AFTER_S = 30.0
    function = make_function()
    event, call = accept(function), accept(function, kind=InvocationType.SYNC)
    Invocation.objects.update(published_at=timezone.now() - LONG_AGO)
    before = timezone.now()
    assert invocations_sweep()["published"] == 2
    assert lane_ids(EVENT_LANE_KEY) == [str(event.pk)] and lane_ids() == [str(call.pk)]
    assert all(published_at >= before for published_at in Invocation.objects.values_list("published_at", flat=True))
    assert invocations_sweep()["published"] == 0  # once


def test_the_sweeper_republishes_only_what_the_broker_lacks_counting_messages_awaiting_their_ack(
    make_function, settings
):
    settings.FAST_LANE = False  # Celery's accounting: messages waiting, and delivered but not acked
    settings.REPUBLISH_AFTER_S = 30.0
    function = make_function()
    running, waiting = accept(function), accept(function, payload=b'{"n": 2}')
    claim(running)  # its message was delivered to a worker and is not acked yet
    client = redis_client()
    client.hset(KOMBU_UNACKED_KEY, mapping={"1": unacked_entry(INVOCATION_QUEUE), "2": unacked_entry(CONTROL_QUEUE)})
    invocation_publish(invocation_id=str(waiting.pk))  # behind a backlog: stale, but its message is there
    set_row(waiting, published_at=timezone.now() - LONG_AGO)
    assert invocations_sweep()["published"] == 0  # two live rows, two invocation messages: nothing is lost
    lost = accept(function, payload=b'{"n": 3}')  # its publish was lost (the control task's message is no stand-in)
    set_row(lost, published_at=timezone.now() - 2 * LONG_AGO)
    assert invocations_sweep()["published"] == 1  # the oldest of the two stale rows; the waiting one is left be
    assert sorted(published_ids()) == sorted([str(waiting.pk), str(lost.pk)])


def test_a_delayed_retrys_message_stands_for_its_row_not_for_a_lost_one_beside_it(make_function, settings):
    settings.FAST_LANE = False  # every message in Celery's queue, where a countdown message waits too
    settings.RETRY_BACKOFF_S = 60.0
    settings.REPUBLISH_AFTER_S = 30.0
    function = make_function()
    retried, lost = accept(function), accept(function, payload=b'{"n": 2}')
    redis_client().delete(INVOCATION_QUEUE)  # both publishes lost
    run(retried, FakeExecutor(failed()))  # back in the queue, due in a minute, with its countdown message
    set_row(lost, published_at=timezone.now() - LONG_AGO)
    assert invocations_sweep()["published"] == 1  # two live rows, one message: the lost one is published
    assert sorted(published_ids()) == sorted([str(retried.pk), str(lost.pk)])


def test_a_delayed_retry_whose_message_was_lost_is_republished_only_once_it_is_due(make_function, settings):
    settings.RETRY_BACKOFF_S = 60.0
    settings.REPUBLISH_AFTER_S = 30.0
    event = accept(make_function())
    run(event, FakeExecutor(failed()))  # back in the queue, due in a minute
    redis_client().delete(INVOCATION_QUEUE)  # its countdown message is lost
    set_row(event, published_at=timezone.now() - LONG_AGO)
    assert invocations_sweep()["published"] == 0
    make_due(event)
    assert invocations_sweep()["published"] == 1 and lane_ids(EVENT_LANE_KEY) == [str(event.pk)]
