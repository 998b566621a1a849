"""Functions, their code artifacts, immutable versions, aliases and saved test events.

State changes only through ``functions_app.services``; ranges that must always hold are database constraints.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

if TYPE_CHECKING:
    from functions_app.lifecycle import RunTimings

LATEST = "$LATEST"
MEMORY_MIN_MB, MEMORY_MAX_MB = 128, 10240
TIMEOUT_MIN_S, TIMEOUT_MAX_S = 1, 900
EPHEMERAL_MIN_MB, EPHEMERAL_MAX_MB = 512, 10240
RETRIES_MAX = 2
EVENT_AGE_MIN_S, EVENT_AGE_MAX_S = 60, 21600
DEAD_LETTER = "dead-letter"


class Runtime(models.TextChoices):
    PYTHON311 = "python3.11", "Python 3.11"


class CodeArtifact(models.Model):
    """A deployment package (always stored as a zip), addressed by the sha256 of its bytes.

    Artifacts are shared infrastructure, reachable only through a function or version that its owner can see.
    """

    sha256 = models.CharField(max_length=64, unique=True)
    size_bytes = models.BigIntegerField()
    unzipped_bytes = models.BigIntegerField()
    file_count = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.sha256[:12]


class FunctionConfig(models.Model):
    """The configuration shared by `$LATEST` (Function) and its immutable snapshots (Version)."""

    description = models.CharField(max_length=256, blank=True)
    runtime = models.CharField(max_length=32, choices=Runtime.choices, default=Runtime.PYTHON311)
    handler = models.CharField(max_length=128)
    memory_mb = models.PositiveIntegerField(default=128)
    timeout_s = models.PositiveIntegerField(default=3)
    ephemeral_storage_mb = models.PositiveIntegerField(default=512)
    network_enabled = models.BooleanField(default=False)
    # A MultiFernet token of the JSON variables map; never plaintext (see functions_app.secrets).
    environment_ciphertext = models.TextField(blank=True)
    environment_keys = models.JSONField(default=list, blank=True)
    code = models.ForeignKey(CodeArtifact, on_delete=models.PROTECT, related_name="+")
    # What Lambda's API was told and echoes back (functions_app/lambda_api): the execution role's ARN (no IAM here:
    # kept so that tools comparing it see what they set) and the Python runtime named (every python3.x label runs
    # on the platform's Python runtime, ``runtime``).
    role = models.CharField(max_length=256, blank=True)
    runtime_label = models.CharField(max_length=32, blank=True)

    class Meta:
        abstract = True


class Function(FunctionConfig):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="functions")
    name = models.CharField(max_length=64)
    reserved_concurrency = models.PositiveIntegerField(null=True, blank=True)
    max_retry_attempts = models.PositiveSmallIntegerField(default=RETRIES_MAX)
    max_event_age_s = models.PositiveIntegerField(default=EVENT_AGE_MAX_S)
    # Async destinations: "" (none), "dead-letter" (the owner's inbox) or "function:<name>" (same owner).
    on_success_destination = models.CharField(max_length=80, blank=True)
    on_failure_destination = models.CharField(max_length=80, blank=True, default=DEAD_LETTER)
    # When the async settings above were last set through Lambda's API (PutFunctionEventInvokeConfig); None: they
    # are the defaults, and GetFunctionEventInvokeConfig answers 404 as Lambda does.
    event_invoke_config_at = models.DateTimeField(null=True, blank=True)
    tags = models.JSONField(default=dict, blank=True)
    # Lambda's resource policy (AddPermission): kept and shown, for the tools that manage it; calls are authorised
    # by tenancy, never by these statements.
    policy_statements = models.JSONField(default=list, blank=True)
    revision_id = models.UUIDField(default=uuid.uuid4)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="function_name_unique_per_owner"),
            models.CheckConstraint(
                condition=Q(memory_mb__gte=MEMORY_MIN_MB, memory_mb__lte=MEMORY_MAX_MB), name="function_memory_range"
            ),
            models.CheckConstraint(
                condition=Q(timeout_s__gte=TIMEOUT_MIN_S, timeout_s__lte=TIMEOUT_MAX_S), name="function_timeout_range"
            ),
            models.CheckConstraint(
                condition=Q(ephemeral_storage_mb__gte=EPHEMERAL_MIN_MB, ephemeral_storage_mb__lte=EPHEMERAL_MAX_MB),
                name="function_ephemeral_range",
            ),
            models.CheckConstraint(condition=Q(max_retry_attempts__lte=RETRIES_MAX), name="function_retries_range"),
            models.CheckConstraint(
                condition=Q(max_event_age_s__gte=EVENT_AGE_MIN_S, max_event_age_s__lte=EVENT_AGE_MAX_S),
                name="function_event_age_range",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Version(FunctionConfig):
    """An immutable snapshot of a function's code and configuration, numbered 1, 2, … per function."""

    function = models.ForeignKey(Function, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    # Hash of code + configuration: publishing an unchanged `$LATEST` returns this version (as Lambda does).
    config_sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["function", "number"]
        constraints = [
            models.UniqueConstraint(fields=["function", "number"], name="version_number_unique_per_function"),
            models.CheckConstraint(condition=Q(number__gte=1), name="version_number_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.function.name}:{self.number}"


class Alias(models.Model):
    """A name for a version, optionally routing ``additional_weight`` of traffic to a second version."""

    function = models.ForeignKey(Function, on_delete=models.CASCADE, related_name="aliases")
    name = models.CharField(max_length=128)
    description = models.CharField(max_length=256, blank=True)
    version = models.ForeignKey(Version, on_delete=models.PROTECT, related_name="+")
    additional_version = models.ForeignKey(Version, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    additional_weight = models.FloatField(default=0.0)
    revision_id = models.UUIDField(default=uuid.uuid4)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["function", "name"]
        verbose_name_plural = "aliases"
        constraints = [
            models.UniqueConstraint(fields=["function", "name"], name="alias_name_unique_per_function"),
            models.CheckConstraint(
                condition=Q(additional_weight__gte=0.0, additional_weight__lte=1.0), name="alias_weight_range"
            ),
            models.CheckConstraint(
                condition=Q(additional_version__isnull=True) | ~Q(additional_version=models.F("version")),
                name="alias_versions_differ",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.function.name}:{self.name}"


class FunctionUrlAuth(models.TextChoices):
    NONE = "NONE", "Public"
    # A platform API key of the function's owner in Authorization: the analogue of Lambda's AWS_IAM.
    TOKEN = "TOKEN", "API key"


class InvokeMode(models.TextChoices):
    BUFFERED = "BUFFERED", "Buffered"
    RESPONSE_STREAM = "RESPONSE_STREAM", "Streamed"


class FunctionUrl(models.Model):
    """A function's own HTTPS endpoint (of `$LATEST`, or of an alias): any request to it runs the function with
    the HTTP event (payload format 2.0) and answers with the function's mapped response."""

    function = models.ForeignKey(Function, on_delete=models.CASCADE, related_name="urls")
    # None serves `$LATEST`; deleting the alias deletes its URL (nothing would be left to serve).
    alias = models.ForeignKey(Alias, on_delete=models.CASCADE, null=True, blank=True, related_name="urls")
    # 32 lowercase letters and digits, as Lambda's url-id: the path segment or host label it is served under.
    url_id = models.CharField(max_length=32, unique=True)
    auth_type = models.CharField(max_length=8, choices=FunctionUrlAuth.choices)
    invoke_mode = models.CharField(max_length=16, choices=InvokeMode.choices, default=InvokeMode.BUFFERED)
    # {allow_origins, allow_methods, allow_headers, expose_headers, max_age, allow_credentials}; {} for no CORS.
    cors = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["function", "alias__name"]
        constraints = [
            models.UniqueConstraint(
                fields=["function"], condition=Q(alias__isnull=True), name="function_url_one_for_latest"
            ),
            models.UniqueConstraint(fields=["function", "alias"], name="function_url_one_per_alias"),
        ]

    def __str__(self) -> str:
        return f"{self.function.name}:{self.qualifier} {self.url_id}"

    @property
    def qualifier(self) -> str:
        return self.alias.name if self.alias else LATEST


class HttpApi(models.Model):
    """An HTTP API: routes (``GET /items/{id}``, ``ANY /{proxy+}``, ``$default``) to functions, with stages,
    authorizers and CORS, kept as one validated definition (``functions_app.http_apis`` reads and checks it)."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="http_apis")
    name = models.CharField(max_length=128)
    # 10 lower-case letters and digits, as API Gateway's api-id: the path segment or host label it is served under.
    api_id = models.CharField(max_length=10, unique=True)
    description = models.CharField(max_length=1024, blank=True)
    # {routes, stages, authorizers, cors, not_found}: see functions_app.http_apis.definition_validate.
    definition = models.JSONField(default=dict)
    revision_id = models.UUIDField(default=uuid.uuid4)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="http_api_name_unique_per_owner")]

    def __str__(self) -> str:
        return f"{self.name} {self.api_id}"


class Schedule(models.Model):
    """A function's schedule, as EventBridge Scheduler's: an expression (rate, cron or at) in a time zone. Each
    fire time (a tick) runs the function once, as an asynchronous invocation (``functions_app.schedules``)."""

    function = models.ForeignKey(Function, on_delete=models.CASCADE, related_name="schedules")
    name = models.CharField(max_length=64)
    expression = models.CharField(max_length=256)
    timezone = models.CharField(max_length=64, default="UTC")  # an IANA name
    qualifier = models.CharField(max_length=128, blank=True, default="")  # "" runs $LATEST
    # The event: None sends EventBridge's "Scheduled Event"; anything else is sent as it is (a constant input).
    input = models.JSONField(null=True, blank=True)
    enabled = models.BooleanField(default=True)
    # Ticks missed while the platform was down still fire, late, when at most this old; older ones are skipped.
    grace_s = models.PositiveIntegerField(default=0)
    # Where a rate counts from: the schedule's creation, or when it was last enabled or given a new expression.
    anchor = models.DateTimeField()
    # The next tick; None once nothing is left to fire (an at() past, a cron's last year gone) or when disabled.
    next_fire_at = models.DateTimeField(null=True, blank=True)
    last_fired_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    fired = models.BigIntegerField(default=0)
    skipped = models.BigIntegerField(default=0)
    revision_id = models.UUIDField(default=uuid.uuid4)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["function", "name"]
        constraints = [models.UniqueConstraint(fields=["function", "name"], name="schedule_name_unique_per_function")]
        indexes = [models.Index(fields=["enabled", "next_fire_at"], name="schedule_due")]

    def __str__(self) -> str:
        return f"{self.function.name}:{self.name} {self.expression}"


class ScheduleTick(models.Model):
    """One fired tick: its row and its invocation are written in one transaction, and a tick has one row, so a
    tick fires exactly once whatever the number of processes firing schedules."""

    schedule = models.ForeignKey(Schedule, on_delete=models.CASCADE, related_name="ticks")
    tick_at = models.DateTimeField()
    # When its invocation was published; None while it waits for its time (committed a moment ahead), or when
    # the firer stopped before (the sweeper then publishes the invocation).
    fired_at = models.DateTimeField(null=True, blank=True)
    invocation = models.ForeignKey("Invocation", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["schedule", "tick_at"], name="schedule_tick_once")]

    @property
    def late_ms(self) -> float | None:
        return None if self.fired_at is None else (self.fired_at - self.tick_at).total_seconds() * 1000


class BucketNotificationMode(models.TextChoices):
    WEBHOOK = "webhook", "Webhook"
    POLL = "poll", "Poll"


class BucketNotification(models.Model):
    """A bucket's object events running a function, as S3's event notifications: each event one asynchronous
    invocation with Lambda's S3 record. The store posts its events to a webhook, or a poller lists the bucket
    (``functions_app.bucket_notifications``)."""

    function = models.ForeignKey(Function, on_delete=models.CASCADE, related_name="bucket_notifications")
    name = models.CharField(max_length=64)
    mode = models.CharField(max_length=8, choices=BucketNotificationMode.choices)
    bucket = models.CharField(max_length=63)
    # The store's S3 API (MinIO, Ceph RGW, …); empty for AWS S3 itself.
    endpoint_url = models.CharField(max_length=512, blank=True, default="")
    region = models.CharField(max_length=32, default="us-east-1")
    access_key_id = models.CharField(max_length=128, blank=True, default="")
    secret_access_key = models.TextField(blank=True, default="")  # encrypted (functions_app.secrets)
    events = models.JSONField(default=list)  # e.g. ["s3:ObjectCreated:*", "s3:ObjectRemoved:Delete"]
    prefix = models.CharField(max_length=1024, blank=True, default="")
    suffix = models.CharField(max_length=1024, blank=True, default="")
    qualifier = models.CharField(max_length=128, blank=True, default="")  # "" runs $LATEST
    enabled = models.BooleanField(default=True)
    # The webhook's bearer token, as its SHA-256 (the token is shown once, when made).
    token_sha256 = models.CharField(max_length=64, blank=True, default="")
    poll_interval_s = models.PositiveIntegerField(default=10)
    # Poll state. The first listing is the baseline: objects last modified before ``baseline_from`` (the
    # configuration's creation, or the last change of where it looks, or its enabling) are recorded, not sent.
    baseline_from = models.DateTimeField(default=timezone.now)
    baseline_at = models.DateTimeField(null=True, blank=True)
    # Bumped with baseline_from: a poll that began before it writes nothing (its rows and events are of the past).
    generation = models.PositiveIntegerField(default=0)
    next_poll_at = models.DateTimeField(null=True, blank=True)
    lease_owner = models.CharField(max_length=128, blank=True, default="")
    lease_until = models.DateTimeField(null=True, blank=True)
    last_poll_at = models.DateTimeField(null=True, blank=True)
    last_event_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    delivered = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["function", "name"]
        constraints = [
            models.UniqueConstraint(fields=["function", "name"], name="bucket_notification_name_unique_per_function")
        ]
        indexes = [models.Index(fields=["mode", "enabled", "next_poll_at"], name="bucket_notification_due")]

    def __str__(self) -> str:
        return f"{self.function.name}:{self.name} s3://{self.bucket}/{self.prefix}"


class BucketObject(models.Model):
    """The poller's knowledge of one object: the version it last saw. A new version is one event, because the
    row's conditional write and the event's invocation commit together."""

    notification = models.ForeignKey(BucketNotification, on_delete=models.CASCADE, related_name="seen_objects")
    key = models.CharField(max_length=1024)
    etag = models.CharField(max_length=128)
    last_modified = models.DateTimeField()
    size = models.BigIntegerField()
    recorded_at = models.DateTimeField(default=timezone.now)  # a listing older than this says nothing of it

    class Meta:
        constraints = [models.UniqueConstraint(fields=["notification", "key"], name="bucket_object_once")]


class EventSourceKind(models.TextChoices):
    REDIS_STREAM = "redis-stream", "Redis Stream"
    SQS = "sqs", "SQS queue"


class StartingPosition(models.TextChoices):
    LATEST = "LATEST", "Latest (records added from now on)"
    TRIM_HORIZON = "TRIM_HORIZON", "Trim horizon (every record the stream holds)"


class EventSourceMapping(models.Model):
    """A stream read in batches by a function, as Lambda's event source mappings: each batch one synchronous call,
    the stream's checkpoint moved only after it succeeds (``functions_app.stream_sources``)."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True)
    function = models.ForeignKey(Function, on_delete=models.CASCADE, related_name="event_source_mappings")
    kind = models.CharField(max_length=16, choices=EventSourceKind.choices)
    source = models.CharField(max_length=512)  # the stream's name, or the queue's URL
    # An SQS queue's: its region and keys (the secret encrypted, functions_app.secrets), and how many batches of it
    # may run at once.
    region = models.CharField(max_length=32, blank=True, default="")
    access_key_id = models.CharField(max_length=128, blank=True, default="")
    secret_access_key = models.TextField(blank=True, default="")
    max_concurrency = models.PositiveIntegerField(default=2)
    qualifier = models.CharField(max_length=128, blank=True, default="")
    starting_position = models.CharField(max_length=16, choices=StartingPosition.choices, blank=True)
    batch_size = models.PositiveIntegerField(default=100)
    batching_window_s = models.PositiveIntegerField(default=0)
    # -1: retried until the records expire (or for ever, with max_record_age_s -1), as Lambda's defaults.
    max_retry_attempts = models.IntegerField(default=-1)
    max_record_age_s = models.IntegerField(default=-1)
    bisect_on_error = models.BooleanField(default=False)
    report_batch_item_failures = models.BooleanField(default=False)
    on_failure = models.CharField(max_length=80, default="dead-letter")  # dead-letter or function:<name>
    enabled = models.BooleanField(default=True)
    lease_owner = models.CharField(max_length=128, blank=True, default="")
    lease_until = models.DateTimeField(null=True, blank=True)
    # The last record id committed: it only moves forward.
    checkpoint = models.CharField(max_length=48, blank=True, default="")
    # Retrying a failed batch: how many records it holds now (bisected) and how many attempts it has had.
    retry_batch_size = models.PositiveIntegerField(null=True, blank=True)
    batch_attempts = models.PositiveIntegerField(default=0)
    last_batch_at = models.DateTimeField(null=True, blank=True)
    last_processing_result = models.CharField(max_length=64, blank=True, default="")
    last_error = models.TextField(blank=True, default="")
    batches = models.BigIntegerField(default=0)
    records = models.BigIntegerField(default=0)
    iterator_age_ms = models.BigIntegerField(null=True, blank=True)
    # Records (or messages) waiting, as the poller last sampled them: pages read this, never the source itself.
    lag = models.BigIntegerField(null=True, blank=True)
    lag_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["function", "created_at"]
        indexes = [models.Index(fields=["kind", "enabled"], name="event_source_mapping_polled")]

    def __str__(self) -> str:
        return f"{self.function.name} <- {self.kind}:{self.source}"


class TestEvent(models.Model):
    """A saved event for the console's Test tab and the API."""

    __test__ = False  # not a pytest test class despite the name

    function = models.ForeignKey(Function, on_delete=models.CASCADE, related_name="test_events")
    name = models.CharField(max_length=25)
    # The event as the JSON text the user saved (any JSON value, byte-for-byte what the handler receives).
    event_json = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["function", "name"]
        constraints = [models.UniqueConstraint(fields=["function", "name"], name="test_event_name_unique_per_function")]

    def __str__(self) -> str:
        return f"{self.function.name}/{self.name}"


class InvocationStatus(models.TextChoices):
    # The colour is for the console's badges (NetBox style: the status carries its colour).
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    TIMED_OUT = "timed_out", "Timed out"
    EXPIRED = "expired", "Expired"

    @property
    def colour(self) -> str:
        return {"queued": "grey", "running": "blue", "succeeded": "green", "expired": "orange"}.get(self.value, "red")


TERMINAL_STATUSES = (
    InvocationStatus.SUCCEEDED,
    InvocationStatus.FAILED,
    InvocationStatus.TIMED_OUT,
    InvocationStatus.EXPIRED,
)


class InvocationType(models.TextChoices):
    SYNC = "sync", "Request-response"
    ASYNC = "async", "Event"


class Invocation(models.Model):
    """One request to run a function, from acceptance to its single terminal result, with its metering.

    The row is the source of truth; Celery only carries its id. A worker claims it by a conditional update
    that bumps ``attempt``, and writes the result only while it still holds that attempt (a fenced write).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="invocations")
    function = models.ForeignKey(Function, on_delete=models.CASCADE, related_name="invocations")
    version = models.ForeignKey(Version, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    qualifier = models.CharField(max_length=128, default=LATEST)
    # The function's revision when accepted: lets a worker reuse its cached copy of the configuration.
    config_revision = models.UUIDField(null=True, blank=True)
    executed_version = models.CharField(max_length=16, default=LATEST)
    invocation_type = models.CharField(max_length=8, choices=InvocationType.choices, default=InvocationType.SYNC)
    status = models.CharField(max_length=16, choices=InvocationStatus.choices, default=InvocationStatus.QUEUED)
    payload = models.TextField()
    result = models.TextField(blank=True)
    function_error = models.BooleanField(default=False)
    error_type = models.CharField(max_length=128, blank=True)
    log = models.TextField(blank=True)

    attempt = models.PositiveIntegerField(default=0)
    # Incremented by the (fenced) write that makes the row terminal: exactly 1 for every finished invocation.
    terminal_writes = models.PositiveSmallIntegerField(default=0)
    # Sync calls get one attempt (no platform retries); async get 1 + the function's maximum retry attempts.
    max_attempts = models.PositiveSmallIntegerField(default=1)
    # Not before this time (retry backoff, throttled async events); the sweeper publishes what is due.
    available_at = models.DateTimeField(default=timezone.now)
    published_at = models.DateTimeField(null=True, blank=True)
    # Async only: past this an event is EXPIRED without running (Lambda's maximum event age).
    expires_at = models.DateTimeField(null=True, blank=True)
    idempotency_key = models.CharField(max_length=128, blank=True)
    # Lambda's ClientContext (JSON, from the Invoke call's X-Amz-Client-Context): the handler's context.client_context.
    client_context = models.TextField(blank=True)
    # How many destination hops led here (0 for a call from outside): a loop of destinations stops at a limit.
    chain_depth = models.PositiveSmallIntegerField(default=0)
    payload_sha256 = models.CharField(max_length=64, blank=True)
    # What made the call when it was not the API: an HTTP trigger's {type, id, method, path, route}, and, once
    # answered, its status and response size (functions_app.http_triggers).
    trigger = models.JSONField(null=True, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    worker_host = models.CharField(max_length=255, blank=True)
    environment_id = models.CharField(max_length=64, blank=True)

    queued_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The configuration's limits when accepted: the run is sized, timed and billed by these, never by a later edit.
    memory_mb = models.PositiveIntegerField()
    timeout_s = models.PositiveIntegerField(default=3)
    is_cold = models.BooleanField(default=False)
    queue_wait_ms = models.FloatField(null=True, blank=True)
    # From the claim to the call into the sandbox, outside init: configuration, code download and extraction.
    prepare_ms = models.FloatField(null=True, blank=True)
    # What is left of started..finished after prepare, init and run: handing the event over and the answer back.
    # queue wait + prepare + init + duration + overhead = finished_at - queued_at, to the millisecond.
    overhead_ms = models.FloatField(null=True, blank=True)
    init_ms = models.FloatField(default=0.0)
    duration_ms = models.FloatField(null=True, blank=True)
    billed_ms = models.PositiveIntegerField(null=True, blank=True)
    peak_memory_mb = models.FloatField(null=True, blank=True)
    cpu_ms = models.FloatField(null=True, blank=True)
    cost_usd = models.DecimalField(max_digits=20, decimal_places=12, null=True, blank=True)
    # The same cost in Lambda's parts: the request charge, the run's compute, and the cold start's (init) compute.
    cost_request_usd = models.DecimalField(max_digits=20, decimal_places=12, null=True, blank=True)
    cost_run_usd = models.DecimalField(max_digits=20, decimal_places=12, null=True, blank=True)
    cost_init_usd = models.DecimalField(max_digits=20, decimal_places=12, null=True, blank=True)

    # Not columns: what the worker that claimed the row keeps on it in memory (functions_app.lifecycle). The
    # function's revision as the claim read it, which picks the cached configuration; a sync call's timings.
    current_revision: uuid.UUID
    timings: RunTimings | None = None
    # Set once a batched event's slot was freed at the end of its run: its completion has nothing left to free.
    slot_released: bool = False

    class Meta:
        ordering = ["-queued_at"]
        indexes = [
            models.Index(fields=["owner", "-queued_at"], name="invocation_owner_recent"),
            models.Index(fields=["function", "-queued_at"], name="invocation_function_recent"),
            models.Index(fields=["status", "available_at"], name="invocation_status_due"),
            models.Index(fields=["status", "lease_until"], name="invocation_status_lease"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "function", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="invocation_idempotency_key_unique",
            )
        ]

    def __str__(self) -> str:
        return str(self.id)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def function_arn(self) -> str:
        """The ARN the function was invoked by (its qualifier included), as Lambda's context and records carry it."""
        base = f"arn:aws:lambda:{settings.AWS_REGION}:{self.owner_id:012d}:function:{self.function.name}"
        return base if self.qualifier == LATEST else f"{base}:{self.qualifier}"


class DeadLetterCondition(models.TextChoices):
    RETRIES_EXHAUSTED = "RetriesExhausted", "Retries exhausted"
    EVENT_AGE_EXCEEDED = "EventAgeExceeded", "Event age exceeded"
    # A destination chain reached the hop limit: the record it would have sent is kept here instead.
    RECURSIVE_LOOP = "RecursiveLoopDetected", "Recursive loop detected"


class DeadLetter(models.Model):
    """An async event that could not be delivered, kept in its owner's inbox until replayed or deleted."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="dead_letters")
    function = models.ForeignKey(Function, on_delete=models.CASCADE, related_name="dead_letters")
    invocation = models.OneToOneField(Invocation, on_delete=models.CASCADE, related_name="dead_letter")
    condition = models.CharField(max_length=32, choices=DeadLetterCondition.choices)
    request_payload = models.TextField()
    error_type = models.CharField(max_length=128, blank=True)
    error_result = models.TextField(blank=True)
    attempts = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    replayed_as = models.ForeignKey(Invocation, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "-created_at"], name="dead_letter_owner_recent")]

    def __str__(self) -> str:
        return f"{self.function.name} {self.condition} {self.invocation_id}"
