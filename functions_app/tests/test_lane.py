"""The fast lane for synchronous calls, in process: what goes on it, how it is served, and the sweeper's view of it.
Calls served from it end to end by a real worker are in test_invoke.py (every sync call there takes the lane)."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from console.processes import INVOCATION_QUEUE, SYNC_QUEUE
from console.redis import redis_client
from functions_app.accept import invocation_accept
from functions_app.lane import HOST_LANE_KEY, LANE_KEY, lane_close, lane_open, lane_publish, lane_serve, lane_waiting
from functions_app.models import Invocation, InvocationStatus, InvocationType
from functions_app.sweeper import invocations_sweep

pytestmark = pytest.mark.django_db


@pytest.fixture
def accept(django_capture_on_commit_callbacks: Any) -> Any:
    """invocation_accept, with its publish (which waits for the commit the test's transaction never makes)."""

    def accept(function: Any, kind: str) -> Invocation:
        with django_capture_on_commit_callbacks(execute=True):
            return invocation_accept(
                owner=function.owner, function=function, qualifier="", raw_payload=b"{}", invocation_type=kind
            )

    return accept


def lane(key: str = LANE_KEY) -> list[str]:
    return [item.decode() for item in redis_client().lrange(key, 0, -1)]


def test_a_sync_call_takes_the_fast_lane_and_an_event_the_celery_queue(make_function, accept):
    function = make_function()
    call = accept(function, InvocationType.SYNC)
    accept(function, InvocationType.ASYNC)
    assert lane() == [str(call.pk)]
    assert redis_client().llen(SYNC_QUEUE) == 0 and redis_client().llen(INVOCATION_QUEUE) == 1


def test_with_the_fast_lane_off_a_sync_call_goes_through_celerys_sync_queue(make_function, settings, accept):
    settings.SYNC_FAST_LANE = False
    accept(make_function(), InvocationType.SYNC)
    assert lane() == [] and redis_client().llen(SYNC_QUEUE) == 1


def test_a_lane_thread_serves_its_hosts_own_lane_first_and_stops_when_told():
    lane_publish(invocation_id="for-anyone")
    lane_publish(invocation_id="for-host-a", host="a")
    stop = threading.Event()
    ran: list[str] = []

    def run(invocation_id: str) -> None:
        ran.append(invocation_id)
        if len(ran) == 2:
            stop.set()

    lane_serve(host="a", run=run, stop=stop)
    assert ran == ["for-host-a", "for-anyone"]


def test_an_id_popped_after_the_stop_goes_back_to_the_front_of_its_lane():
    lane_publish(invocation_id="first")
    lane_publish(invocation_id="second")
    stop = threading.Event()

    def run(invocation_id: str) -> None:
        stop.set()  # the stop arrives while the first call runs; the thread must not take the second
        lane_publish(invocation_id="third")

    lane_serve(host="a", run=run, stop=stop)
    assert lane() == ["second", "third"]


def test_a_failing_run_does_not_end_the_lane_thread():
    for name in ("boom", "fine"):
        lane_publish(invocation_id=name)
    stop = threading.Event()
    ran: list[str] = []

    def run(invocation_id: str) -> None:
        ran.append(invocation_id)
        if invocation_id == "boom":
            raise RuntimeError("a bug in the lifecycle")
        stop.set()

    lane_serve(host="a", run=run, stop=stop)
    assert ran == ["boom", "fine"]


def test_closing_a_hosts_lane_hands_its_waiting_calls_to_every_host():
    lane_open("a")
    lane_publish(invocation_id="shared")
    for name in ("x", "y"):
        lane_publish(invocation_id=name, host="a")
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
    redis_client().delete(LANE_KEY)  # a worker popped it and died before its claim
    assert invocations_sweep()["published"] == 1
    assert lane() == [str(call.pk)]
    assert Invocation.objects.get(pk=call.pk).status == InvocationStatus.QUEUED
