"""The fast lane, in process: what goes on it, how it is served, and the sweeper's view of it. Calls served from it
end to end by real workers are in test_invoke.py and test_delivery.py (every call there takes a lane)."""

from __future__ import annotations

import base64
import json
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from console.processes import INVOCATION_QUEUE, SYNC_QUEUE
from console.redis import as_text, redis_client
from functions_app.accept import invocation_accept
from functions_app.lane import (
    EVENT_LANE_KEY,
    HOST_LANE_KEY,
    POP_WAIT_S,
    SERVED_KEY,
    SYNC_LANE_KEY,
    lane_close,
    lane_mark_served,
    lane_open,
    lane_publish,
    lane_serve,
    lane_served_forget,
    lane_waiting,
    lane_wake,
)
from functions_app.models import Invocation, InvocationStatus, InvocationType
from functions_app.sweeper import BROKER_RUN_ID_KEY, invocations_sweep

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def served(clean_redis: None) -> None:
    """An executor host serves the lanes (what its worker says on start and with every heartbeat)."""
    lane_mark_served()


@pytest.fixture
def accept(django_capture_on_commit_callbacks: Any) -> Any:
    """invocation_accept, with its publish (which waits for the commit the test's transaction never makes)."""

    def accept(function: Any, kind: str) -> Invocation:
        with django_capture_on_commit_callbacks(execute=True):
            return invocation_accept(
                owner=function.owner, function=function, qualifier="", raw_payload=b"{}", invocation_type=kind
            )

    return accept


def published_ids(queue: str) -> list[str]:
    """The invocation ids of the Celery messages waiting in a queue (a message's body is [args, kwargs, embed])."""
    messages = [json.loads(raw) for raw in redis_client().lrange(queue, 0, -1)]
    return [json.loads(base64.b64decode(message["body"]))[0][0] for message in messages]


def lane(key: str = SYNC_LANE_KEY) -> list[str]:
    return [as_text(item) for item in redis_client().lrange(key, 0, -1)]


def test_a_sync_call_and_an_event_take_their_own_lanes_and_celery_carries_nothing(make_function, accept):
    function = make_function()
    call = accept(function, InvocationType.SYNC)
    event = accept(function, InvocationType.ASYNC)
    assert lane() == [str(call.pk)] and lane(EVENT_LANE_KEY) == [str(event.pk)]
    assert redis_client().llen(SYNC_QUEUE) == 0 and redis_client().llen(INVOCATION_QUEUE) == 0


def test_while_no_executor_serves_the_lanes_calls_go_through_celery_and_the_sweeper_counts_no_lane(
    make_function, accept
):
    function = make_function()
    stranded = accept(function, InvocationType.ASYNC)  # on the lane, whose last executor then went away
    redis_client().delete(SERVED_KEY)
    lane_served_forget()
    accept(function, InvocationType.SYNC)
    assert lane(EVENT_LANE_KEY) == [str(stranded.pk)] and lane() == []
    assert redis_client().llen(SYNC_QUEUE) == 1
    client = redis_client()
    client.set(BROKER_RUN_ID_KEY, client.info("server")["run_id"])  # this Redis did not restart
    Invocation.objects.filter(pk=stranded.pk).update(published_at=timezone.now() - timedelta(minutes=5))
    # Its id on the lane counts for nothing: the sweeper republishes it, through Celery.
    assert invocations_sweep()["published"] == 1 and published_ids(INVOCATION_QUEUE) == [str(stranded.pk)]


def test_with_the_fast_lane_off_calls_and_events_go_through_celerys_queues(make_function, settings, accept):
    settings.FAST_LANE = False
    function = make_function()
    accept(function, InvocationType.SYNC)
    accept(function, InvocationType.ASYNC)
    assert lane() == [] and lane(EVENT_LANE_KEY) == []
    assert redis_client().llen(SYNC_QUEUE) == 1 and redis_client().llen(INVOCATION_QUEUE) == 1


def test_a_lane_thread_serves_its_hosts_lane_then_sync_calls_then_events_and_stops_when_told():
    lane_publish(invocation_id="an-event", sync=False)
    lane_publish(invocation_id="for-anyone", sync=True)
    lane_publish(invocation_id="for-host-a", sync=True, host="a")
    stop = threading.Event()
    ran: list[tuple[str, bool]] = []

    def run(invocation_ids: list[str], sync: bool) -> None:
        ran.extend((invocation_id, sync) for invocation_id in invocation_ids)
        if len(ran) == 3:
            stop.set()

    lane_serve(host="a", run=run, stop=stop)
    assert ran == [("for-host-a", True), ("for-anyone", True), ("an-event", False)]


def test_a_lane_thread_takes_events_in_batches_of_what_waits_and_sync_calls_one_by_one():
    for number in range(5):
        lane_publish(invocation_id=f"event-{number}", sync=False)
    for name in ("call-1", "call-2"):
        lane_publish(invocation_id=name, sync=True)
    stop = threading.Event()
    runs: list[tuple[list[str], bool]] = []

    def run(invocation_ids: list[str], sync: bool) -> None:
        runs.append((invocation_ids, sync))
        if len(runs) == 4:
            stop.set()

    lane_serve(host="a", run=run, stop=stop, event_batch=lambda: 3)
    assert runs == [
        (["call-1"], True),
        (["call-2"], True),
        (["event-0", "event-1", "event-2"], False),
        (["event-3", "event-4"], False),  # what waits, never waiting for more
    ]


def test_a_batch_popped_as_the_stop_arrives_goes_back_to_the_front_of_its_lane_in_order(monkeypatch):
    from functions_app import lane as lane_module

    for number in range(4):
        lane_publish(invocation_id=f"event-{number}", sync=False)
    stop = threading.Event()
    pop = lane_module.blocking_pop

    def pop_as_the_stop_arrives(keys: list[str], timeout_s: float) -> Any:
        popped = pop(keys, timeout_s)
        stop.set()
        return popped

    monkeypatch.setattr(lane_module, "blocking_pop", pop_as_the_stop_arrives)
    ran: list[list[str]] = []
    lane_serve(host="a", run=lambda invocation_ids, sync: ran.append(invocation_ids), stop=stop, event_batch=lambda: 3)
    assert ran == []
    assert lane(EVENT_LANE_KEY) == ["event-0", "event-1", "event-2", "event-3"]


def test_an_id_popped_after_the_stop_goes_back_to_the_front_of_its_lane():
    lane_publish(invocation_id="first", sync=True)
    lane_publish(invocation_id="second", sync=True)
    stop = threading.Event()

    def run(invocation_ids: list[str], sync: bool) -> None:
        stop.set()  # the stop arrives while the first call runs; the thread must not take the second
        lane_publish(invocation_id="third", sync=True)

    lane_serve(host="a", run=run, stop=stop)
    assert lane() == ["second", "third"]


def test_a_failing_run_does_not_end_the_lane_thread():
    for name in ("boom", "fine"):
        lane_publish(invocation_id=name, sync=True)
    stop = threading.Event()
    ran: list[str] = []

    def run(invocation_ids: list[str], sync: bool) -> None:
        ran.extend(invocation_ids)
        if invocation_ids == ["boom"]:
            raise RuntimeError("a bug in the lifecycle")
        stop.set()

    lane_serve(host="a", run=run, stop=stop)
    assert ran == ["boom", "fine"]


def test_closing_a_hosts_lane_hands_its_waiting_calls_to_every_host():
    lane_open("a")
    lane_publish(invocation_id="shared", sync=True)
    for name in ("x", "y"):
        lane_publish(invocation_id=name, sync=True, host="a")
    assert lane_waiting() == 3
    lane_close("a")
    assert lane() == ["shared", "x", "y"] and lane(HOST_LANE_KEY.format(host="a")) == []
    assert lane_waiting() == 3


def test_the_sweeper_leaves_a_stale_sync_call_on_the_lane_and_republishes_one_the_lane_lost(make_function, accept):
    call = accept(make_function(), InvocationType.SYNC)
    stale = timezone.now() - timedelta(minutes=5)
    Invocation.objects.filter(pk=call.pk).update(published_at=stale)
    invocations_sweep()  # the first sweep of this Redis forgets every publish; its id is still on the lane
    Invocation.objects.filter(pk=call.pk).update(published_at=stale)
    assert invocations_sweep()["published"] == 0 and lane() == [str(call.pk)]
    redis_client().delete(SYNC_LANE_KEY)  # a worker popped it and died before its claim
    assert invocations_sweep()["published"] == 1
    assert lane() == [str(call.pk)]
    assert Invocation.objects.get(pk=call.pk).status == InvocationStatus.QUEUED


def test_a_lane_thread_blocked_on_empty_lanes_wakes_at_once_when_told_to_stop():
    stop = threading.Event()
    thread = threading.Thread(target=lane_serve, kwargs={"host": "a", "run": lambda *args: None, "stop": stop})
    thread.start()
    time.sleep(0.2)  # blocked in its pop
    stop.set()
    started = time.monotonic()
    lane_wake("a", 1)
    thread.join(timeout=5)
    assert not thread.is_alive() and time.monotonic() - started < POP_WAIT_S / 2
    lane_close("a")  # a wake-up is never handed on as a call
    assert lane() == []
