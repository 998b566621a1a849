"""Schedules: a function run at the ticks of a rate, cron or at expression (``schedule_expressions``), each tick
exactly once, as an asynchronous invocation with EventBridge's "Scheduled Event" (or a constant input).

Every executor host runs a loop (``schedules_serve``) that fires what is due. Two loops, or two hosts, may find
the same tick due: the one whose conditional update moves the schedule's ``next_fire_at`` on fires it, in the
same transaction as the tick's row (unique per schedule and tick) and its invocation, so a tick fires once, and a
fired tick is never lost to a crash (nothing of it is written, and it fires again). docs/event-sources.md
describes the rules and the downtime policy.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings
from django.db import IntegrityError, close_old_connections, transaction
from django.db.models import F
from django.utils import timezone

from console.exceptions import ResourceConflict, ResourceNotFound, ServiceError
from functions_app.accept import invocation_accept, invocations_publish
from functions_app.models import LATEST, Function, Invocation, InvocationType, Schedule, ScheduleTick
from functions_app.outages import DATABASE_ERRORS, database_unreachable
from functions_app.schedule_expressions import (
    Expression,
    InvalidExpression,
    expression_parse,
    fire_count,
    fire_times,
    next_fire,
)
from functions_app.selectors import qualifier_resolve

logger = logging.getLogger(__name__)

SCHEDULE = "schedule"  # an invocation's trigger type
NAME_PATTERN = re.compile(r"[0-9A-Za-z_][0-9A-Za-z_.-]{0,63}")  # not "." or "..": they would vanish from URLs
ZONE_MAX_CHARS = 64
INPUT_MAX_CHARS = 8192  # EventBridge Scheduler's limit for a target's input
GRACE_MAX_S = 86_400
GRACE_DEFAULT_S = 60
# The most a firing loop sleeps: how soon it sees a schedule created or changed meanwhile.
FIRE_POLL_S = 1.0
# Ticks fired per round, oldest first; a backlog fires over several rounds without a pause.
FIRE_BATCH = 500
# Ticks written per transaction.
COMMIT_BATCH = 100
# How long before its time a tick is committed (then only published at its time): a disabled or changed schedule
# may still fire a tick this close.
STAGE_AHEAD = timedelta(seconds=2)
# Skipped ticks of a cron counted one by one up to this many (a long outage of a frequent schedule).
SKIP_COUNT_MAX = 100_000
# The least a firing loop sleeps between rounds (a moment just past is no reason to spin).
PAUSE_MIN_S = 0.05
CONFIG_FIELDS = ("expression", "timezone", "qualifier", "input", "enabled", "grace_s", "last_error")


# ---- configuration ----------------------------------------------------------------------------------------------


def schedule_list(*, function: Function) -> list[Schedule]:
    return list(function.schedules.all())


def schedule_get(*, function: Function, name: str) -> Schedule:
    try:
        return function.schedules.get(name=name)
    except Schedule.DoesNotExist:
        raise ResourceNotFound(f"{function.name} has no schedule {name!r}.") from None


def schedule_create(
    *,
    function: Function,
    name: str,
    expression: str,
    timezone_name: str = "UTC",
    qualifier: str = "",
    input: Any = None,
    enabled: bool = True,
    grace_s: int = GRACE_DEFAULT_S,
) -> Schedule:
    schedule = Schedule(function=function, name=_name(name))
    _configure(
        schedule,
        expression=expression,
        timezone_name=timezone_name,
        qualifier=qualifier,
        input=input,
        enabled=enabled,
        grace_s=grace_s,
    )
    try:
        with transaction.atomic():
            schedule.save()
    except IntegrityError:
        raise ResourceConflict(f"{function.name} already has a schedule named {name!r}.") from None
    return schedule


def schedule_update(*, schedule: Schedule, **changes: Any) -> Schedule:
    """Change any of expression, timezone_name, qualifier, input, enabled, grace_s. A new expression, time zone
    or enabling starts the schedule afresh from now (a rate counts from now; ticks before now never fire)."""
    unknown = set(changes) - {"expression", "timezone_name", "qualifier", "input", "enabled", "grace_s"}
    if unknown:
        raise ServiceError(f"Unknown fields: {', '.join(sorted(unknown))}.")
    current: dict[str, Any] = {
        "expression": schedule.expression,
        "timezone_name": schedule.timezone,
        "qualifier": schedule.qualifier,
        "input": schedule.input,
        "enabled": schedule.enabled,
        "grace_s": schedule.grace_s,
    }
    restart = any(changes.get(key, current[key]) != current[key] for key in ("expression", "timezone_name", "enabled"))
    # The stored qualifier is checked only when it changes: a schedule whose alias is gone can still be disabled.
    _configure(schedule, **(current | changes), restart=restart, check_qualifier="qualifier" in changes)
    schedule.revision_id = uuid.uuid4()
    # Only what the change is about: a firer may have moved next_fire_at since this row was read, and writing the
    # stale value back would bring a fired tick round again.
    moved = ("anchor", "next_fire_at") if restart else ()
    schedule.save(update_fields=[*CONFIG_FIELDS, *moved, "revision_id", "updated_at"])
    return schedule


def schedule_delete(*, schedule: Schedule) -> None:
    schedule.delete()


def _configure(
    schedule: Schedule,
    *,
    expression: str,
    timezone_name: str,
    qualifier: str,
    input: Any,
    enabled: bool,
    grace_s: int,
    restart: bool = True,
    check_qualifier: bool = True,
) -> None:
    parsed = _expression(expression)
    zone = _zone(timezone_name)
    if qualifier and check_qualifier:
        qualifier_resolve(function=schedule.function, qualifier=qualifier)  # 404 for an unknown alias or version
    schedule.expression, schedule.timezone = expression.strip(), zone
    schedule.qualifier = "" if qualifier == LATEST else qualifier
    schedule.input = _input(input)
    schedule.enabled = _flag(enabled)
    schedule.grace_s = _grace(grace_s)
    if restart or schedule.anchor is None:
        now = timezone.now()
        schedule.anchor = now
        schedule.next_fire_at = next_fire(parsed, zone=zone, anchor=now, after=now) if schedule.enabled else None
        if schedule.enabled and schedule.next_fire_at is None:
            raise ServiceError(
                f"{expression.strip()} never fires after now ({zone}).", details={"expression": ["never fires"]}
            )
    schedule.last_error = ""


def _name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ServiceError(
            "A schedule's name is 1-64 letters, digits, '-', '_' or '.', not starting with '.'.",
            details={"name": ["invalid name"]},
        )
    return name


def _expression(expression: Any) -> Expression:
    if not isinstance(expression, str):
        raise ServiceError("expression is a string: rate(…), cron(…) or at(…).", details={"expression": ["required"]})
    try:
        return expression_parse(expression)
    except InvalidExpression as exc:
        raise ServiceError(f"Invalid expression: {exc}", details={"expression": [str(exc)]}) from None


def _zone(name: Any) -> str:
    try:
        if not isinstance(name, str) or len(name) > ZONE_MAX_CHARS:
            raise ValueError(name)
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, RecursionError):  # a long enough path recurses in zoneinfo
        raise ServiceError(
            f"{name!r} is not an IANA time zone (e.g. UTC, Europe/Paris, America/New_York).",
            details={"timezone": ["unknown time zone"]},
        ) from None
    return str(name)


def _input(value: Any) -> Any:
    if value is not None and len(json.dumps(value)) > INPUT_MAX_CHARS:
        raise ServiceError(f"input is over {INPUT_MAX_CHARS} characters as JSON.", details={"input": ["too large"]})
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ServiceError("enabled is true or false.", details={"enabled": ["a boolean"]})
    return value


def _grace(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= GRACE_MAX_S:
        raise ServiceError(
            f"grace_s is a whole number of seconds from 1 to {GRACE_MAX_S}.", details={"grace_s": ["out of range"]}
        )
    return value


def schedule_state(*, schedule: Schedule) -> str:
    """ENABLED, DISABLED, FAILING (its last tick could not run: ``last_error``) or DONE (nothing left to fire)."""
    if not schedule.enabled:
        return "DISABLED"
    if schedule.next_fire_at is None:
        return "DONE"
    return "FAILING" if schedule.last_error else "ENABLED"


def schedule_preview(*, expression: str, timezone_name: str = "UTC", count: int = 10) -> list[datetime]:
    """The next ``count`` fire times of an expression from now (a rate counted from now), or the precise error."""
    parsed, zone, now = _expression(expression), _zone(timezone_name), timezone.now()
    return fire_times(parsed, zone=zone, anchor=now, after=now, count=count)


def schedule_upcoming(*, schedule: Schedule, count: int = 10) -> list[datetime]:
    """The schedule's next ``count`` ticks (none when disabled)."""
    if not schedule.enabled or schedule.next_fire_at is None:
        return []
    parsed = expression_parse(schedule.expression)
    after = schedule.next_fire_at - timedelta(microseconds=1)
    return fire_times(parsed, zone=schedule.timezone, anchor=schedule.anchor, after=after, count=count)


# ---- firing -----------------------------------------------------------------------------------------------------


class ScheduleFirer:
    """Fires ticks in two steps. A tick is committed (its row, and its invocation due at the tick) up to
    STAGE_AHEAD before its time, many in one transaction; at its time only its doorbell is rung (one Redis round
    trip for all the ticks of that moment). So a minute's thousand ticks cost their writes before the minute, and
    fire at it. The firer keeps what it committed and has yet to publish; should it stop meanwhile, the sweeper
    publishes those invocations (late, never lost, never twice)."""

    def __init__(self) -> None:
        self.staged: list[tuple[datetime, str]] = []  # (tick, invocation id), committed and not yet published

    def fire(self, now: datetime | None = None) -> float:
        """Commit the ticks due by ``now + STAGE_AHEAD`` (oldest first, up to FIRE_BATCH), publish those due at
        ``now``; returns how long to sleep before the next round (at most FIRE_POLL_S, nothing with a backlog)."""
        now = now or timezone.now()
        due = list(
            Schedule.objects.filter(enabled=True, next_fire_at__lte=now + STAGE_AHEAD)
            .select_related("function__owner")
            .order_by("next_fire_at")[:FIRE_BATCH]
        )
        # One transaction per batch (a savepoint per tick): the commit, not the ticks, is what a round pays for.
        for start in range(0, len(due), COMMIT_BATCH):
            with transaction.atomic():
                committed = [_fire(schedule, now) for schedule in due[start : start + COMMIT_BATCH]]
            self.staged += [tick for tick in committed if tick is not None]
        self.publish_due(now)
        if len(due) == FIRE_BATCH:
            return 0.0
        return self._pause(now)

    def publish_due(self, now: datetime) -> None:
        """Ring the doorbells of the committed ticks whose time has come, and note when."""
        current = max(now, timezone.now())  # ``now`` is the round's start, or a test's clock
        ready = [invocation_id for tick_at, invocation_id in self.staged if tick_at <= current]
        if not ready:
            return
        self.staged = [(tick_at, invocation_id) for tick_at, invocation_id in self.staged if tick_at > current]
        # Marked published first: the sweeper counts a published row as one whose message is in the broker.
        Invocation.objects.filter(pk__in=ready, published_at__isnull=True).update(published_at=current)
        invocations_publish(invocation_ids=ready)
        ScheduleTick.objects.filter(invocation_id__in=ready).update(fired_at=current)

    def _pause(self, now: datetime) -> float:
        upcoming = (
            Schedule.objects.filter(enabled=True, next_fire_at__isnull=False)
            .order_by("next_fire_at")
            .values_list("next_fire_at", flat=True)
            .first()
        )
        moments = [tick_at for tick_at, _ in self.staged]
        if upcoming is not None:
            moments.append(upcoming - STAGE_AHEAD)
        current = max(now, timezone.now())
        pause = min([FIRE_POLL_S, *((moment - current).total_seconds() for moment in moments)])
        return max(pause, PAUSE_MIN_S)


def schedules_fire(*, now: datetime | None = None) -> float:
    """One round of a fresh firer (see ScheduleFirer.fire): what a test or a one-off caller uses; ticks committed
    for later than ``now`` are left to the sweeper."""
    return ScheduleFirer().fire(now)


def _fire(schedule: Schedule, now: datetime) -> tuple[datetime, str] | None:
    """Commit the schedule's next tick (returned with its invocation's id, to publish at its time), or skip it (and
    every tick up to ``now - grace``) when it is older than its grace: the platform was down. Another firer that got
    there first makes this one do nothing."""
    tick_at = schedule.next_fire_at
    assert tick_at is not None  # selected by next_fire_at <= now
    parsed = expression_parse(schedule.expression)
    grace = timedelta(seconds=schedule.grace_s)
    fires = now - tick_at <= grace
    # Skipping: the next tick is the first one still within the grace (at now - grace exactly, too).
    after = tick_at if fires else now - grace - timedelta(microseconds=1)
    following = next_fire(parsed, zone=schedule.timezone, anchor=schedule.anchor, after=after)
    moved: dict[str, Any] = {"next_fire_at": following}
    if fires:
        moved |= {"last_fired_at": tick_at, "fired": F("fired") + 1}
    else:
        moved["skipped"] = F("skipped") + _skipped(schedule, parsed, tick_at, after)
    staged = None
    try:
        with transaction.atomic():
            if not Schedule.objects.filter(pk=schedule.pk, next_fire_at=tick_at, enabled=True).update(**moved):
                return None  # fired by another loop, or changed since it was read
            if fires:
                invocation = _invoke(schedule, tick_at)
                ScheduleTick.objects.create(schedule=schedule, tick_at=tick_at, invocation=invocation)
                staged = (tick_at, str(invocation.pk)) if invocation is not None else None
    except IntegrityError:
        # The tick has a row already (the schedule re-enabled just after that tick was committed): it does not fire
        # again, and the schedule moves on past it, or it would come round on every round.
        logger.info("Schedule %s: the tick %s had already fired", schedule.pk, tick_at.isoformat())
        Schedule.objects.filter(pk=schedule.pk, next_fire_at=tick_at).update(next_fire_at=following)
        return None
    if not fires:
        logger.warning(
            "Schedule %s of %s: ticks from %s to %s were missed (older than its %d s grace) and skipped",
            schedule.name,
            schedule.function.name,
            tick_at.isoformat(),
            after.isoformat(),
            schedule.grace_s,
        )
    return staged


def _skipped(schedule: Schedule, parsed: Expression, first: datetime, last: datetime) -> int:
    """How many ticks from ``first`` to ``last`` (inclusive) are skipped (``first`` is one)."""
    count = fire_count(
        parsed, zone=schedule.timezone, anchor=schedule.anchor, first=first, last=last, limit=SKIP_COUNT_MAX
    )
    return max(count, 1)


def _invoke(schedule: Schedule, tick_at: datetime) -> Invocation | None:
    """The tick's asynchronous invocation, in the caller's transaction. A call the function cannot take (its
    alias deleted, the event too large) is the schedule's last error (None); the tick counts as fired."""
    function = schedule.function
    event = scheduled_event(schedule, tick_at) if schedule.input is None else schedule.input
    trigger = {"type": SCHEDULE, "id": schedule.pk, "name": schedule.name, "tick": tick_at.isoformat()}
    try:
        with transaction.atomic():
            invocation = invocation_accept(
                owner=function.owner,
                function=function,
                qualifier=schedule.qualifier,
                raw_payload=json.dumps(event).encode(),
                invocation_type=InvocationType.ASYNC,
                trigger=trigger,
                due_at=tick_at,
            )
    except ServiceError as exc:
        Schedule.objects.filter(pk=schedule.pk).update(last_error=f"{tick_at.isoformat()}: {exc.message}")
        return None
    if schedule.last_error:
        Schedule.objects.filter(pk=schedule.pk).update(last_error="")
    return invocation


def scheduled_event(schedule: Schedule, tick_at: datetime) -> dict[str, Any]:
    """EventBridge's "Scheduled Event" for a tick; its id is the same for every delivery of the tick, so that a
    handler can de-duplicate retried attempts."""
    account = f"{schedule.function.owner_id:012d}"
    region = settings.AWS_REGION
    return {
        "version": "0",
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"ephemera:schedule:{schedule.pk}:{tick_at.isoformat()}")),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": account,
        "time": tick_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [f"arn:aws:events:{region}:{account}:rule/{schedule.name}"],
        "detail": {},
    }


def schedules_serve(stop: threading.Event) -> None:
    """The firing loop of an executor host: fire what is due, sleep until the next tick (at most FIRE_POLL_S).
    The database down, it tries again after a pause; ticks it could not fire fire late (within their grace)."""
    firer = ScheduleFirer()
    while not stop.is_set():
        close_old_connections()
        try:
            pause = firer.fire()
        except DATABASE_ERRORS as exc:
            logger.warning("Firing schedules failed (%r); trying again in a second", exc)
            database_unreachable(exc)
            pause = FIRE_POLL_S
        except Exception:
            logger.exception("Firing schedules failed; trying again in a second")
            pause = FIRE_POLL_S
        stop.wait(pause)
