"""Schedules: configured through the REST API, fired exactly once per tick as asynchronous invocations (with a
controlled clock, and for one real minute by a real worker)."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest
from django.db import close_old_connections

from console.exceptions import ServiceError
from functions_app import schedules, sweeper
from functions_app.models import Invocation, InvocationStatus, Schedule, ScheduleTick

pytestmark = [pytest.mark.django_db(transaction=True)]


def make_schedule(function, **overrides) -> Schedule:
    fields = {"function": function, "name": "tick", "expression": "rate(1 minute)", **overrides}
    return schedules.schedule_create(**fields)


def fired(schedule: Schedule) -> list[Invocation]:
    return list(Invocation.objects.filter(trigger__name=schedule.name).order_by("queued_at"))


def test_a_due_tick_fires_once_as_an_async_invocation_with_the_scheduled_event(make_function):
    function = make_function()
    schedule = make_schedule(function)
    tick = schedule.anchor + timedelta(minutes=1)
    assert schedule.next_fire_at == tick
    assert schedules.schedules_fire(now=tick - timedelta(seconds=5)) > 0  # not due yet: a pause until it is
    assert fired(schedule) == []
    schedules.schedules_fire(now=tick + timedelta(milliseconds=300))
    schedules.schedules_fire(now=tick + timedelta(milliseconds=600))  # the same tick again: nothing more
    (invocation,) = fired(schedule)
    event = json.loads(invocation.payload)
    assert invocation.invocation_type == "async" and invocation.trigger["type"] == "schedule"
    assert event["detail-type"] == "Scheduled Event" and event["source"] == "aws.events" and event["detail"] == {}
    assert event["time"] == tick.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert event["resources"] == [f"arn:aws:events:us-east-1:{function.owner_id:012d}:rule/tick"]
    schedule.refresh_from_db()
    assert schedule.next_fire_at == tick + timedelta(minutes=1) and schedule.fired == 1
    assert ScheduleTick.objects.get().invocation_id == invocation.pk


def test_firers_racing_for_the_same_ticks_fire_each_once(make_function):
    function = make_function()
    created = [make_schedule(function, name=f"s{number}") for number in range(5)]
    now = max(schedule.anchor for schedule in created) + timedelta(minutes=1, seconds=1)
    start = threading.Barrier(4)

    def fire() -> None:
        start.wait()
        try:
            schedules.schedules_fire(now=now)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=fire) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Invocation.objects.count() == 5 and ScheduleTick.objects.count() == 5
    assert sorted(Schedule.objects.values_list("fired", flat=True)) == [1] * 5


def test_ticks_missed_past_the_grace_are_skipped_and_those_within_it_fire_late(make_function):
    function = make_function()
    schedule = make_schedule(function, grace_s=150)
    first = schedule.anchor + timedelta(minutes=1)
    back = first + timedelta(minutes=9, seconds=30)  # down for ten ticks
    while schedules.schedules_fire(now=back) == 0.0 or Schedule.objects.get().next_fire_at <= back:
        pass
    schedule.refresh_from_db()
    # Ticks older than 150 s (7 of them) are skipped; the 3 within it fire, late, each once.
    assert (schedule.skipped, schedule.fired) == (7, 3)
    ticks = sorted(ScheduleTick.objects.values_list("tick_at", flat=True))
    assert ticks == [first + timedelta(minutes=minute) for minute in (7, 8, 9)]
    assert schedule.next_fire_at == first + timedelta(minutes=10)


def test_a_disabled_schedule_never_fires_and_enabling_starts_it_afresh(make_function):
    schedule = make_schedule(make_function(), enabled=False)
    assert schedule.next_fire_at is None and schedules.schedule_state(schedule=schedule) == "DISABLED"
    schedules.schedules_fire(now=schedule.anchor + timedelta(hours=1))
    assert fired(schedule) == []
    enabled = schedules.schedule_update(schedule=schedule, enabled=True)
    assert enabled.anchor > schedule.created_at and enabled.next_fire_at == enabled.anchor + timedelta(minutes=1)


def test_a_constant_input_is_the_event_and_a_tick_the_function_cannot_take_is_its_last_error(make_function, api):
    function = make_function()
    assert api.post("/api/v1/functions/hello/versions/", {}, format="json").status_code == 201
    assert (
        api.post("/api/v1/functions/hello/aliases/", {"name": "live", "version": 1}, format="json").status_code == 201
    )
    schedule = make_schedule(function, input={"job": "report"}, qualifier="live")
    tick = schedule.next_fire_at
    schedules.schedules_fire(now=tick)
    assert json.loads(fired(schedule)[0].payload) == {"job": "report"}
    assert api.delete("/api/v1/functions/hello/aliases/live/").status_code == 204
    schedules.schedules_fire(now=tick + timedelta(minutes=1))
    schedule.refresh_from_db()
    assert schedules.schedule_state(schedule=schedule) == "FAILING" and "live" in schedule.last_error
    assert schedule.fired == 2 and len(fired(schedule)) == 1  # the tick is spent, visibly failed


def test_an_at_schedule_fires_once_and_is_done(make_function):
    schedule = make_schedule(make_function(), expression="at(2099-01-01T00:00:00)", timezone_name="Asia/Tokyo")
    assert schedule.next_fire_at.isoformat() == "2098-12-31T15:00:00+00:00"
    schedules.schedules_fire(now=schedule.next_fire_at)
    schedule.refresh_from_db()
    assert schedule.fired == 1 and schedules.schedule_state(schedule=schedule) == "DONE"


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        ({"expression": "cron(0 12 * * * *)"}, "expression"),
        ({"expression": "at(2001-01-01T00:00:00)"}, "expression"),
        ({"timezone_name": "Mars/Olympus"}, "timezone"),
        ({"name": "no spaces"}, "name"),
        ({"grace_s": 0}, "grace_s"),
        ({"input": "x" * 9000}, "input"),
    ],
)
def test_bad_schedules_get_a_clear_error_and_save_nothing(make_function, fields, detail):
    with pytest.raises(ServiceError) as refused:
        make_schedule(make_function(), **fields)
    assert detail in refused.value.details and not Schedule.objects.exists()


def test_schedules_are_managed_through_the_api(api, other_api, make_function):
    make_function()
    body = {"name": "nightly", "expression": "cron(0 2 * * ? *)", "timezone": "Europe/Paris"}
    created = api.post("/api/v1/functions/hello/schedules/", body, format="json")
    assert created.status_code == 201, created.content
    shown = created.json()
    assert shown["state"] == "ENABLED" and shown["qualifier"] == "$LATEST" and len(shown["next_fire_times"]) == 10
    assert all(moment.endswith(("T01:00:00+00:00", "T00:00:00+00:00")) for moment in shown["next_fire_times"])
    again = api.post("/api/v1/functions/hello/schedules/", body, format="json")
    assert again.status_code == 409 and again.json()["type"] == "ResourceConflict"
    bad_body = {**body, "name": "x", "expression": "rate(1 minutes)"}
    bad = api.post("/api/v1/functions/hello/schedules/", bad_body, format="json")
    assert bad.status_code == 400 and "write rate(1 minute)" in bad.json()["message"]
    assert api.get("/api/v1/functions/hello/schedules/").json()[0]["name"] == "nightly"
    paused = api.patch("/api/v1/functions/hello/schedules/nightly/", {"enabled": False}, format="json")
    assert paused.json()["state"] == "DISABLED" and paused.json()["next_fire_times"] == []
    assert other_api.get("/api/v1/functions/hello/schedules/nightly/").status_code == 404
    assert api.delete("/api/v1/functions/hello/schedules/nightly/").status_code == 204
    assert api.get("/api/v1/functions/hello/schedules/nightly/").status_code == 404


def test_the_preview_gives_the_next_ten_fire_times_or_the_precise_reason(api):
    preview = api.get("/api/v1/schedule-preview/", {"expression": "cron(0 9 ? * MON-FRI *)", "timezone": "UTC"})
    assert preview.status_code == 200 and len(preview.json()["fire_times"]) == 10
    assert all("T09:00:00" in moment for moment in preview.json()["fire_times"])
    refused = api.get("/api/v1/schedule-preview/", {"expression": "cron(0 9 ? * MON-FRI)"})
    assert refused.status_code == 400 and "6 fields" in refused.json()["message"]


def test_a_function_deleted_with_its_schedules_leaves_nothing_to_fire(make_function, api):
    schedule = make_schedule(make_function())
    assert api.delete("/api/v1/functions/hello/").status_code == 204
    assert not Schedule.objects.exists()
    schedules.schedules_fire(now=schedule.next_fire_at)
    assert not Invocation.objects.exists()


ECHO_EVENT = "def handler(event, context):\n    return event\n"


@pytest.mark.slow
def test_for_one_real_minute_a_worker_fires_a_schedule_at_its_tick(api, module_worker):
    body = {"name": "echo", "handler": "app.handler", "code": {"files": {"app.py": ECHO_EVENT}}}
    assert api.post("/api/v1/functions/", body, format="json").status_code == 201
    every_minute = {"name": "minutely", "expression": "cron(* * * * ? *)"}
    created = api.post("/api/v1/functions/echo/schedules/", every_minute, format="json").json()
    tick = created["next_fire_times"][0]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        done = Invocation.objects.filter(trigger__name="minutely", status=InvocationStatus.SUCCEEDED).first()
        if done:
            break
        time.sleep(0.5)
    assert done is not None, "the tick did not fire within 90 s"
    assert json.loads(done.result)["time"] == tick.replace("+00:00", "Z")
    late = ScheduleTick.objects.get(invocation=done).late_ms
    assert 0 <= late < 5000, late


def test_tick_rows_are_pruned_with_old_invocations(make_function, settings):
    from functions_app import services

    schedule = make_schedule(make_function())
    schedules.schedules_fire(now=schedule.next_fire_at)
    assert ScheduleTick.objects.count() == 1
    services.invocations_prune(now=schedule.next_fire_at + timedelta(days=settings.INVOCATION_RETENTION_DAYS - 1))
    assert ScheduleTick.objects.count() == 1
    services.invocations_prune(now=schedule.next_fire_at + timedelta(days=settings.INVOCATION_RETENTION_DAYS + 1))
    assert not ScheduleTick.objects.exists()


def test_a_tick_is_committed_just_before_its_time_and_published_at_it_or_by_the_sweeper(make_function, settings):
    schedule = make_schedule(make_function())
    tick = schedule.next_fire_at
    # A firer that stops between the two steps: the sweeper publishes the call once it is due and stale.
    schedules.ScheduleFirer().fire(now=tick - timedelta(seconds=1))
    (invocation,) = fired(schedule)
    assert invocation.available_at == tick and invocation.queued_at == tick
    assert ScheduleTick.objects.get().fired_at is None
    assert sweeper._republish_due(tick - timedelta(seconds=1)) == 0  # not due: it has no message, and needs none
    assert sweeper._republish_due(tick + timedelta(seconds=settings.REPUBLISH_AFTER_S + 1)) == 1

    firer = schedules.ScheduleFirer()
    second = tick + timedelta(minutes=1)
    pause = firer.fire(now=second - timedelta(seconds=1))  # within the staging window: written, not published
    assert 0 < pause <= 1 and firer.staged and ScheduleTick.objects.get(tick_at=second).fired_at is None
    firer.publish_due(second + timedelta(milliseconds=5))
    assert ScheduleTick.objects.get(tick_at=second).fired_at == second + timedelta(milliseconds=5)
    assert firer.staged == []


def test_every_trigger_of_a_function_is_listed_in_one_place(api, other_api, make_function):
    make_function()
    assert api.post("/api/v1/functions/hello/url/", {"auth_type": "NONE"}, format="json").status_code == 201
    definition = {"routes": [{"route_key": "GET /hi", "function": "hello"}]}
    created = api.post("/api/v1/http-apis/", {"name": "greet", "definition": definition}, format="json")
    assert created.status_code == 201
    schedule = {"name": "hourly", "expression": "rate(1 hour)", "enabled": False}
    assert api.post("/api/v1/functions/hello/schedules/", schedule, format="json").status_code == 201
    listed = api.get("/api/v1/functions/hello/triggers/")
    assert listed.status_code == 200
    by_type = {item["type"]: item for item in listed.json()}
    assert set(by_type) == {"function-url", "http-api-route", "schedule"}
    assert by_type["function-url"]["url"].startswith("http://testserver/fn/")
    assert by_type["http-api-route"]["api"] == "greet" and by_type["http-api-route"]["route_key"] == "GET /hi"
    assert by_type["schedule"]["state"] == "DISABLED" and by_type["schedule"]["next_fire_at"] is None
    assert other_api.get("/api/v1/functions/hello/triggers/").status_code == 404


def test_a_tick_already_fired_when_the_schedule_comes_back_to_it_is_passed_not_fired_again(make_function):
    schedule = make_schedule(make_function())
    tick = schedule.next_fire_at
    schedules.ScheduleFirer().fire(now=tick - timedelta(seconds=1))  # committed ahead of its time
    # Disabled and enabled again within that second: the schedule starts afresh, from the same tick.
    Schedule.objects.filter(pk=schedule.pk).update(next_fire_at=tick)
    pause = schedules.ScheduleFirer().fire(now=tick)
    schedule.refresh_from_db()
    assert schedule.next_fire_at == tick + timedelta(minutes=1) and schedule.fired == 1
    assert ScheduleTick.objects.count() == 1 and len(fired(schedule)) == 1
    assert pause >= schedules.PAUSE_MIN_S  # and the loop does not spin


def test_a_change_read_before_a_tick_fired_does_not_bring_the_tick_back(make_function):
    schedule = make_schedule(make_function())
    tick = schedule.next_fire_at
    schedules.schedules_fire(now=tick)  # fired by a loop after the console read the schedule
    schedules.schedule_update(schedule=schedule, grace_s=300)
    stored = Schedule.objects.get()
    assert stored.grace_s == 300 and stored.next_fire_at == tick + timedelta(minutes=1) and stored.fired == 1
    schedules.schedules_fire(now=tick + timedelta(seconds=1))
    assert len(fired(schedule)) == 1


def test_a_schedule_whose_alias_was_deleted_can_still_be_disabled(make_function, api):
    function = make_function()
    assert api.post("/api/v1/functions/hello/versions/", {}, format="json").status_code == 201
    assert (
        api.post("/api/v1/functions/hello/aliases/", {"name": "live", "version": 1}, format="json").status_code == 201
    )
    make_schedule(function, qualifier="live")
    assert api.delete("/api/v1/functions/hello/aliases/live/").status_code == 204
    paused = api.patch("/api/v1/functions/hello/schedules/tick/", {"enabled": False}, format="json")
    assert paused.status_code == 200 and paused.json()["state"] == "DISABLED"
    moved = api.patch("/api/v1/functions/hello/schedules/tick/", {"qualifier": "live"}, format="json")
    assert moved.status_code == 404 and "live" in moved.json()["message"]


def test_enabling_a_schedule_that_never_fires_again_is_a_message_on_the_console_not_a_500(client, user, make_function):
    function = make_function()
    schedule = make_schedule(function, expression="at(2099-01-01T00:00:00)", enabled=False)
    Schedule.objects.filter(pk=schedule.pk).update(expression="at(2001-01-01T00:00:00)")  # its moment since past
    client.force_login(user)
    page = client.post(f"/functions/{function.name}/triggers/schedules/tick/toggle/", follow=True)
    assert page.status_code == 200 and "never fires after now" in page.content.decode()
    assert Schedule.objects.get().enabled is False


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "a", "expression": "rate(1 minute)", "enabled": "yes"}, "enabled"),
        ({"name": "a", "expression": "rate(1 minute)", "grace_s": "60"}, "grace_s"),
        ({"name": "a", "expression": "rate(" + "1" * 300 + " minutes)"}, "expression"),
        ({"name": 7, "expression": "rate(1 minute)"}, "name"),
        ({"name": "a", "expression": "rate(\u00b2 minutes)"}, "expression"),
        ({"name": "a", "expression": "rate(99999999999999999999 days)"}, "expression"),
        ({"name": "a", "expression": "at(9999-12-31T23:59:59)", "timezone": "Pacific/Kiritimati"}, "expression"),
    ],
)
def test_the_api_refuses_a_bad_schedule_with_a_clear_400(api, make_function, body, field):
    make_function()
    refused = api.post("/api/v1/functions/hello/schedules/", body, format="json")
    assert refused.status_code == 400, refused.content
    assert field in refused.json()["details"] and not Schedule.objects.exists()


def test_the_console_form_refuses_an_event_that_is_not_strict_json(client, user, make_function):
    function = make_function()
    client.force_login(user)
    for text, reason in [("NaN", "Not JSON"), ("1e400", "Not JSON"), ("[" * 100_000 + "]" * 100_000, "Not JSON")]:
        form = {"name": "s", "expression": "rate(1 minute)", "timezone": "UTC", "input": text, "grace_s": 60}
        page = client.post(f"/functions/{function.name}/triggers/schedules/", form)
        assert page.status_code == 400 and reason in page.content.decode()
    assert not Schedule.objects.exists()
