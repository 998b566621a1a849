"""The chaos soak's event sources: schedules ticking every minute and a stream fed all along, on a function of
their own, while the nemesis kills workers and restarts Redis and the database; then their checks: every tick that
fell within the soak fired exactly once and ran, every record the stream took was processed at least once (none
skipped), and the mapping's committed checkpoint never went backwards."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta
from typing import Any

from django.db import close_old_connections
from django.utils import timezone
from redis.exceptions import RedisError

from console.redis import as_text, redis_client
from functions_app import schedules, stream_sources
from functions_app.models import EventSourceMapping, Function, Invocation, Schedule, ScheduleTick
from functions_app.outages import DATABASE_ERRORS
from functions_app.schedule_expressions import expression_parse, fire_times

TICK_HANDLER = (
    "def handler(event, context):\n    return len(event.get('Records', [])) if isinstance(event, dict) else 0\n"
)
SCHEDULES = 10
STREAM = "chaos"
RECORDS_PER_S = 5.0
# A tick this close to the soak's end may not have fired yet when the check runs: not counted.
TICK_MARGIN = timedelta(seconds=5)


class EventSources:
    """Schedules and a stream mapping on ``function``; a producer appending records and a sampler reading the
    mapping's checkpoint while the soak runs."""

    def __init__(self, function: Function) -> None:
        self.function = function
        self.started = timezone.now()
        self.schedules = [
            schedules.schedule_create(function=function, name=f"tick-{n}", expression="cron(* * * * ? *)")
            for n in range(SCHEDULES)
        ]
        self.mapping = stream_sources.mapping_create(
            function=function, stream=STREAM, starting_position="TRIM_HORIZON", batch_size=10
        )
        self.key = stream_sources.stream_key(owner_id=function.owner_id, name=STREAM)
        self.produced: list[tuple[str, float]] = []  # (id, when XADD answered)
        self.checkpoints: list[str] = []
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=self._produce, name="soak-producer", daemon=True),
            threading.Thread(target=self._sample, name="soak-checkpoints", daemon=True),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join()
        self.ended = timezone.now()

    def _produce(self) -> None:
        number = 0
        while not self.stopping.wait(1 / RECORDS_PER_S):
            try:
                sequence = redis_client().xadd(self.key, {"data": json.dumps({"n": number}).encode()})
            except RedisError:
                continue  # Redis is away: the record was not taken (and is not counted)
            self.produced.append((as_text(sequence), time.time()))
            number += 1

    def _sample(self) -> None:
        while not self.stopping.wait(0.5):
            try:
                close_old_connections()
                checkpoint = EventSourceMapping.objects.values_list("checkpoint", flat=True).get(pk=self.mapping.pk)
            except DATABASE_ERRORS:
                continue
            if checkpoint:
                self.checkpoints.append(checkpoint)
        close_old_connections()

    def drained(self, timeout_s: float) -> bool:
        """Whether the mapping committed the last record produced (within ``timeout_s``)."""
        if not self.produced:
            return True
        last = stream_sources.sequence_order(self.produced[-1][0])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            close_old_connections()
            checkpoint = EventSourceMapping.objects.values_list("checkpoint", flat=True).get(pk=self.mapping.pk)
            if checkpoint and stream_sources.sequence_order(checkpoint) >= last:
                return True
            time.sleep(1)
        return False


def event_sources_check(sources: EventSources, *, hard_redis_restarts: list[float]) -> dict[str, Any]:
    """The checks' counts: ``violations`` (each 0 when every invariant held) and what explains the rest."""
    ticks = _ticks_check(sources)
    stream = _stream_check(sources, hard_redis_restarts)
    backwards = sum(
        1
        for before, after in zip(sources.checkpoints, sources.checkpoints[1:], strict=False)
        if stream_sources.sequence_order(after) < stream_sources.sequence_order(before)
    )
    return {
        "ticks": ticks,
        "stream": stream,
        "violations": {
            "ticks_not_fired": ticks["missed"],
            "ticks_fired_twice": ticks["twice"],
            "ticks_not_run": ticks["not_run"],
            "records_skipped": stream["skipped"],
            "records_lost_unexplained": stream["lost_unexplained"],
            "checkpoint_went_backwards": backwards,
        },
    }


def _ticks_check(sources: EventSources) -> dict[str, int]:
    expected = missed = twice = not_run = 0
    until = sources.ended - TICK_MARGIN
    for schedule in Schedule.objects.filter(pk__in=[s.pk for s in sources.schedules]):
        due = _ticks_between(schedule, schedule.anchor, until)
        rows = list(ScheduleTick.objects.filter(schedule=schedule, tick_at__lte=until).select_related("invocation"))
        fired: dict[datetime, int] = {}
        for row in rows:
            fired[row.tick_at] = fired.get(row.tick_at, 0) + 1
        expected += len(due)
        missed += sum(1 for tick in due if tick not in fired)
        twice += sum(1 for count in fired.values() if count > 1)
        not_run += sum(1 for row in rows if row.invocation is None or row.invocation.status != "succeeded")
    return {"expected": expected, "missed": missed, "twice": twice, "not_run": not_run}


def _ticks_between(schedule: Schedule, start: datetime, end: datetime) -> list[datetime]:
    moments = fire_times(
        expression_parse(schedule.expression), zone=schedule.timezone, anchor=schedule.anchor, after=start, count=1000
    )
    return [moment for moment in moments if moment <= end]


def _stream_check(sources: EventSources, hard_redis_restarts: list[float]) -> dict[str, int]:
    """A record the stream still holds must have been processed (else skipped). One it no longer holds was lost by
    Redis itself when it was taken within a second before a hard restart (appendfsync everysec); any other loss is
    unexplained."""
    produced = {sequence: at for sequence, at in sources.produced}
    entries = redis_client().xrange(sources.key, min="-", max="+") or []
    held = {as_text(entry[0]) for entry in entries if entry[0] is not None}
    processed: set[str] = set()
    calls = Invocation.objects.filter(function=sources.function, trigger__type="event-source-mapping")
    for payload in calls.filter(status="succeeded").values_list("payload", flat=True):
        processed.update(record["kinesis"]["sequenceNumber"] for record in json.loads(payload)["Records"])
    skipped = [sequence for sequence in produced if sequence in held and sequence not in processed]
    gone = [sequence for sequence in produced if sequence not in held and sequence not in processed]
    explained = [s for s in gone if any(-0.5 <= restart - produced[s] <= 1.5 for restart in hard_redis_restarts)]
    return {
        "produced": len(produced),
        "processed": len(processed & set(produced)),
        "skipped": len(skipped),
        "lost_by_redis_hard_restart": len(explained),
        "lost_unexplained": len(gone) - len(explained),
    }
