"""Roll-ups: per function, version and memory size, per minute / hour / day (and one running total), the counts,
sums and log-scale histograms that every chart, report, right-sizing table and /metrics read; and per HTTP trigger
and route, per minute / hour / day, the requests, error statuses and latencies of the Monitor's HTTP table.

Rows are maintained as invocations finish (``metrics_app.services``) by atomic ``UPDATE … SET x = x + …``
increments, so they merge by plain sums; no page or report scans raw invocation rows.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from metrics_app.histograms import DURATION, SCALES

LATEST = "$LATEST"
# Throttles are refused before a qualifier is resolved to a version; they are counted under this label.
UNRESOLVED = "-"


class Granularity(models.TextChoices):
    MINUTE = "minute", "Minute"
    HOUR = "hour", "Hour"
    DAY = "day", "Day"
    # One row per key for all time (never deleted by retention): monotonic counters for /metrics.
    TOTAL = "total", "Total"


class Rollup(models.Model):
    granularity = models.CharField(max_length=8, choices=Granularity.choices)
    bucket_start = models.DateTimeField()
    # SET_NULL with the name kept: cost history outlives a deleted function.
    function = models.ForeignKey(
        "functions_app.Function", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    function_name = models.CharField(max_length=64)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    version = models.CharField(max_length=16, default=LATEST)
    # Part of the key: GB-seconds are billed_ms_sum x memory_mb, and right-sizing needs durations per size.
    memory_mb = models.PositiveIntegerField()

    invocations = models.BigIntegerField(default=0)  # terminal invocations (ran or expired)
    errors = models.BigIntegerField(default=0)  # failed, timed out or expired
    timeouts = models.BigIntegerField(default=0)
    throttles = models.BigIntegerField(default=0)
    cold_starts = models.BigIntegerField(default=0)
    runs = models.BigIntegerField(default=0)  # invocations with a recorded duration (the denominator of averages)
    duration_ms_sum = models.FloatField(default=0.0)
    duration_ms_max = models.FloatField(default=0.0)
    init_ms_sum = models.FloatField(default=0.0)
    queue_wait_ms_sum = models.FloatField(default=0.0)
    # The other phases of an invocation's time (functions_app.models.Invocation): summed over runs.
    prepare_ms_sum = models.FloatField(default=0.0)
    overhead_ms_sum = models.FloatField(default=0.0)
    cpu_ms_sum = models.FloatField(default=0.0)
    peak_memory_mb_max = models.FloatField(default=0.0)
    billed_ms_sum = models.BigIntegerField(default=0)
    request_usd = models.DecimalField(max_digits=24, decimal_places=12, default=0)
    run_usd = models.DecimalField(max_digits=24, decimal_places=12, default=0)
    init_usd = models.DecimalField(max_digits=24, decimal_places=12, default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["function", "version", "memory_mb", "granularity", "bucket_start"], name="rollup_key_unique"
            )
        ]
        indexes = [
            models.Index(fields=["function", "granularity", "bucket_start"], name="rollup_function_time"),
            models.Index(fields=["owner", "granularity", "bucket_start"], name="rollup_owner_time"),
            models.Index(fields=["granularity", "bucket_start"], name="rollup_time"),
        ]

    def __str__(self) -> str:
        return f"{self.function_name}:{self.version} {self.granularity} {self.bucket_start:%Y-%m-%d %H:%M}"

    @property
    def gb_seconds(self) -> float:
        return self.billed_ms_sum * self.memory_mb / 1024 / 1000


# One column per histogram bucket (d00…d69 duration, i00…i59 init, m00…m65 peak memory): increments stay
# single-column F() updates, and merging rows is a SUM per column.
for _scale in SCALES:
    for _name in _scale.columns:
        Rollup.add_to_class(_name, models.IntegerField(default=0))

ADDITIVE_FIELDS = [
    "invocations",
    "errors",
    "timeouts",
    "throttles",
    "cold_starts",
    "runs",
    "duration_ms_sum",
    "init_ms_sum",
    "queue_wait_ms_sum",
    "prepare_ms_sum",
    "overhead_ms_sum",
    "cpu_ms_sum",
    "billed_ms_sum",
    "request_usd",
    "run_usd",
    "init_usd",
    *(name for scale in SCALES for name in scale.columns),
]
MAX_FIELDS = ["duration_ms_max", "peak_memory_mb_max"]


# HTTP API requests no route matched (404s, and what is answered before routing: CORS preflights, refusals).
UNMATCHED_ROUTE = "$unmatched"


class TriggerRollup(models.Model):
    """Requests to one HTTP trigger: a function URL (``route`` "") or one route of an HTTP API (its route key, or
    UNMATCHED_ROUTE), with the function they counted against. Unlike Rollup there is no running total: nothing
    reads one. A NULL function never matches in the unique key, so two writers may both insert such a row:
    readers always sum rows, never pick one."""

    granularity = models.CharField(max_length=8, choices=Granularity.choices)
    bucket_start = models.DateTimeField()
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    # NULL for requests no route matched; SET_NULL so that an API's history outlives a route's deleted function.
    function = models.ForeignKey(
        "functions_app.Function", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    trigger_type = models.CharField(max_length=16)  # functions_app's FUNCTION_URL or HTTP_API
    trigger_id = models.CharField(max_length=32)  # the URL's url_id or the API's api_id
    route = models.CharField(max_length=1024, blank=True)

    requests = models.BigIntegerField(default=0)
    status_4xx = models.BigIntegerField(default=0)
    status_5xx = models.BigIntegerField(default=0)
    # From the request's arrival at the web to its answer (the function's run included), as the access log has it.
    latency_ms_sum = models.FloatField(default=0.0)
    latency_ms_max = models.FloatField(default=0.0)
    response_bytes_sum = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["trigger_type", "trigger_id", "route", "function", "granularity", "bucket_start"],
                name="trigger_rollup_key_unique",
            )
        ]
        indexes = [
            models.Index(fields=["function", "granularity", "bucket_start"], name="trigger_rollup_function_time"),
            models.Index(fields=["trigger_id", "granularity", "bucket_start"], name="trigger_rollup_trigger_time"),
            models.Index(fields=["granularity", "bucket_start"], name="trigger_rollup_time"),
        ]

    def __str__(self) -> str:
        return f"{self.trigger_id} {self.route} {self.granularity} {self.bucket_start:%Y-%m-%d %H:%M}"


# Latency in the run-duration scale's columns (d00…d69): 0.1 ms … 1,000 s covers any answer's wait.
for _name in DURATION.columns:
    TriggerRollup.add_to_class(_name, models.IntegerField(default=0))

TRIGGER_ADDITIVE_FIELDS = [
    "requests",
    "status_4xx",
    "status_5xx",
    "latency_ms_sum",
    "response_bytes_sum",
    *DURATION.columns,
]
TRIGGER_MAX_FIELDS = ["latency_ms_max"]


class StreamRollup(models.Model):
    """Batches of one event source mapping per minute, hour or day: what the Monitor's stream charts draw (records
    per batch, iterator age, records waiting). Keyed as TriggerRollup is (a NULL function never matches: readers
    sum rows)."""

    granularity = models.CharField(max_length=8, choices=Granularity.choices)
    bucket_start = models.DateTimeField()
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    function = models.ForeignKey(
        "functions_app.Function", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    mapping = models.CharField(max_length=36)  # the mapping's uuid (its history outlives it)
    stream = models.CharField(max_length=128)

    batches = models.BigIntegerField(default=0)
    failed_batches = models.BigIntegerField(default=0)
    records = models.BigIntegerField(default=0)
    # The age of the newest record of a batch when it committed (Lambda's IteratorAge), and records still waiting.
    iterator_age_ms_max = models.FloatField(default=0.0)
    lag_max = models.FloatField(default=0.0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["mapping", "function", "granularity", "bucket_start"], name="stream_rollup_key_unique"
            )
        ]
        indexes = [models.Index(fields=["function", "granularity", "bucket_start"], name="stream_rollup_function_time")]

    def __str__(self) -> str:
        return f"{self.mapping} {self.granularity} {self.bucket_start:%Y-%m-%d %H:%M}"
