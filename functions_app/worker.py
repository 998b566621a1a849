"""The executor host: one Executor per Celery worker process (the worker runs the threads pool, so every
invocation slot shares one zygote and one pool of warm environments)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from celery import signals
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone
from redis.exceptions import RedisError

from console.processes import INVOCATION_QUEUE, SYNC_QUEUE
from console.redis import redis_client
from functions_app.bucket_notifications import bucket_pollers_serve
from functions_app.code_storage import code_extracted_dir
from functions_app.lane import lane_close, lane_mark_served, lane_open, lane_serve, lane_wake
from functions_app.models import Function, Invocation, InvocationStatus, Version
from functions_app.notices import FUNCTION_CHANGED_CHANNEL
from functions_app.outages import DATABASE_ERRORS, database_unreachable
from functions_app.runtime import (
    EgressConfigError,
    Executor,
    FunctionSpec,
    RuntimeConfig,
    build_layer,
    parse_allow,
    production_shortfalls,
    sandbox_doctor,
)
from functions_app.schedules import schedules_serve
from functions_app.secrets import env_decrypt

logger = logging.getLogger(__name__)

HOST_KEY = "ephemera:hosts:{host}"
HEARTBEAT_S = 10

_executor: Executor | None = None
_lock = threading.Lock()


class _ConfigCache:
    """Function and version rows by (function, version, current revision): a warm invocation needs no join to run.

    Every configuration change gives the function a new revision_id, and the claim reads the function's current
    revision with the row, so an entry is never stale: a change made while an event waits in the queue (reserved
    concurrency raised, say) applies to it at once.
    """

    def __init__(self, size: int = 512) -> None:
        self._entries: OrderedDict[tuple, tuple[Function, Any]] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def attach(self, invocation: Invocation, revision: Any) -> None:
        key = (invocation.function_id, invocation.version_id, revision)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        if entry is None:
            entry = self._load(invocation)
            with self._lock:
                self._entries[key] = entry
                while len(self._entries) > self._size:
                    self._entries.popitem(last=False)
        invocation.function, version = entry
        if version is not None:
            invocation.version = version

    def _load(self, invocation: Invocation) -> tuple[Function, Any]:
        function = Function.objects.select_related("code").get(pk=invocation.function_id)
        version = None
        if invocation.version_id is not None:
            version = Version.objects.select_related("code").get(pk=invocation.version_id)
        return function, version


configs = _ConfigCache()


class _Leases:
    """The attempts this process is running, so its heartbeat can renew their leases."""

    def __init__(self) -> None:
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, invocation_id: str, attempt: int) -> None:
        with self._lock:
            self._held[invocation_id] = attempt

    def remove(self, invocation_id: str) -> None:
        with self._lock:
            self._held.pop(invocation_id, None)

    def held(self) -> list[tuple[str, int]]:
        with self._lock:
            return list(self._held.items())


leases = _Leases()


def leases_renew() -> int:
    """Extend the leases this process holds; a fenced update, so a lease already taken over stays lost."""
    until = timezone.now() + timedelta(seconds=settings.LEASE_S)
    renewed = 0
    for invocation_id, attempt in leases.held():
        renewed += Invocation.objects.filter(pk=invocation_id, status=InvocationStatus.RUNNING, attempt=attempt).update(
            lease_until=until
        )
    return renewed


def function_spec(invocation: Invocation) -> FunctionSpec:
    """The sandbox's view of what to run: never shared across versions, configurations or tenants.

    Memory and timeout come from the invocation row (what was configured when it was accepted, and what it is
    billed for); code, handler and environment from the version, or from `$LATEST` as it is now.
    """
    function, version = invocation.function, invocation.version
    identity = f"v{version.number}:{version.config_sha256[:16]}" if version else f"latest:{function.revision_id}"
    key = f"{function.pk}:{identity}:{invocation.memory_mb}mb:{invocation.timeout_s}s"  # see environment_key_owner
    with _specs_lock:
        spec = _specs.get(key)
    if spec is None:
        spec = _spec_build(invocation, key)
        with _specs_lock:
            _specs[key] = spec
            while len(_specs) > 512:
                _specs.popitem(last=False)
    return spec


def environment_key_owner(key: str) -> tuple[int, str | None]:
    """(function id, the `$LATEST` revision it was built from, or None for a published version) of a key that
    ``function_spec`` made: versions never change, `$LATEST` environments go stale with every change."""
    function_id, kind, detail, *_ = key.split(":")
    return int(function_id), detail if kind == "latest" else None


# Built specs by environment key (which changes with every configuration change): a warm call decrypts nothing.
_specs: OrderedDict[str, FunctionSpec] = OrderedDict()
_specs_lock = threading.Lock()


def _spec_build(invocation: Invocation, key: str) -> FunctionSpec:
    function = invocation.function
    config = invocation.version or function
    return FunctionSpec(
        environment_key=key,
        function_name=function.name,
        function_version=invocation.executed_version,
        code_dir=str(code_extracted_dir(config.code.sha256)),
        handler=config.handler,
        memory_mb=invocation.memory_mb,
        timeout_s=float(invocation.timeout_s),
        env=env_decrypt(config.environment_ciphertext),
        network=config.network_enabled,
        tmp_mb=config.ephemeral_storage_mb,
        tenant=str(invocation.owner_id),
    )


def sandbox_tier() -> str:
    """The configured tier; in development "auto" falls back to insecure-dev (loudly) where no secure tier
    exists, so `make run` works on a laptop. Production never falls back: the executor refuses to start."""
    if settings.SANDBOX_TIER != "auto" or settings.PRODUCTION:
        return settings.SANDBOX_TIER
    report = sandbox_doctor()
    if report.get("secure"):
        return "auto"
    logger.warning(
        "NO SECURE SANDBOX ON THIS HOST (%s). Development mode: running user code in the INSECURE-DEV tier.",
        "; ".join(report.get("reasons", [])),
    )
    return "insecure-dev"


def runtime_config() -> RuntimeConfig:
    settings.RUNTIME_WORK_DIR.mkdir(parents=True, exist_ok=True)
    return RuntimeConfig(
        work_dir=str(settings.RUNTIME_WORK_DIR),
        layer_dirs=(build_layer(str(settings.RUNTIME_LAYER_DIR)),),
        preload=tuple(settings.RUNTIME_PRELOAD),
        idle_ttl_s=settings.RUNTIME_IDLE_TTL_S,
        memory_budget_mb=settings.RUNTIME_MEMORY_BUDGET_MB,
        log_cap_bytes=settings.RUNTIME_LOG_CAP_BYTES,
        tier=sandbox_tier(),
        sandbox_uid=settings.SANDBOX_UID,
        sandbox_uid_count=settings.SANDBOX_UID_COUNT,
        region=settings.AWS_REGION,
        mb_per_vcpu=settings.RUNTIME_MB_PER_VCPU,
        ephemeral_storage=settings.RUNTIME_EPHEMERAL_STORAGE,
        network_allowed=settings.FUNCTION_NETWORK_ALLOWED,
        egress_allow=tuple(settings.EGRESS_ALLOW),
        network_subnet=settings.SANDBOX_NETWORK_SUBNET,
        resolvers=tuple(settings.SANDBOX_RESOLVERS) or None,
    )


def sandbox_report() -> dict[str, Any]:
    """The sandbox doctor's report for this host, with how it falls short of the production shape."""
    report = sandbox_doctor()
    report["production_shortfalls"] = production_shortfalls(report, network_allowed=settings.FUNCTION_NETWORK_ALLOWED)
    try:
        parse_allow(tuple(settings.EGRESS_ALLOW))
    except EgressConfigError as exc:
        report["production_shortfalls"].append(str(exc))
    return report


def executor() -> Executor:
    global _executor
    with _lock:
        if _executor is None:
            if _closed.is_set():
                raise RuntimeError("The executor host is shutting down.")
            _executor = Executor(runtime_config())
        return _executor


def executor_shutdown() -> None:
    global _executor
    with _lock:
        _closed.set()
        if _executor is not None:
            _executor.shutdown()
            _executor = None


_closed = threading.Event()


def executor_started() -> bool:
    return _executor is not None


def host_health() -> dict[str, Any]:
    return {"host": host_name(), "at": time.time(), **(executor().health())}


def environments_reconcile(function_ids: set[int] | None = None) -> int:
    """Retire environments that no longer match their function: all of a deleted function's at once (its
    invocations were deleted with it, so a running call has nowhere to report), and those of a `$LATEST` whose
    code or configuration changed once their current call ends. Returns how many were retired."""
    pool = executor()
    owners = {key: environment_key_owner(key) for key in pool.environment_keys()}
    if function_ids is not None:
        owners = {key: owner for key, owner in owners.items() if owner[0] in function_ids}
    if not owners:
        return 0
    wanted = {function_id for function_id, _ in owners.values()}
    current = {
        pk: str(revision) for pk, revision in Function.objects.filter(pk__in=wanted).values_list("pk", "revision_id")
    }
    gone = {key for key, (function_id, _) in owners.items() if function_id not in current}
    stale = {
        key
        for key, (function_id, revision) in owners.items()
        if function_id in current and revision is not None and revision != current[function_id]
    }
    return pool.retire(gone.__contains__, kill_busy=True) + pool.retire(stale.__contains__, kill_busy=False)


def _prefetch_code(function_ids: set[int]) -> None:
    # Unpacked now, the first call after a deploy does not pay for it.
    for sha256 in Function.objects.filter(pk__in=function_ids).values_list("code__sha256", flat=True):
        code_extracted_dir(sha256)


# What an outage of the platform's own services raises: logged as a warning (no traceback), then retried.
OUTAGE_ERRORS = (RedisError, *DATABASE_ERRORS)


def _on_function_changes(stop: threading.Event) -> None:
    """Listen for registry notices (functions_app.notices) and act on them at once; reconnect after a failure.
    Each (re)subscription starts with a full reconciliation, which covers whatever was missed meanwhile."""
    while not stop.is_set():
        try:
            subscription = redis_client().pubsub(ignore_subscribe_messages=True)
            subscription.subscribe(FUNCTION_CHANGED_CHANNEL)
            close_old_connections()
            environments_reconcile()
            while not stop.is_set():
                message = subscription.get_message(timeout=1.0)
                if message is None:
                    continue
                close_old_connections()
                changed = {int(json.loads(message["data"])["function_id"])}
                environments_reconcile(changed)
                _prefetch_code(changed)
        except OUTAGE_ERRORS as exc:
            logger.warning("Listening for function changes failed (%r); retrying in a second", exc)
            stop.wait(1.0)
        except Exception:
            logger.exception("Listening for function changes failed; retrying in a second")
            stop.wait(1.0)


def _heartbeat(stop: threading.Event) -> None:
    # Renews the leases of running invocations (a paused or dead worker stops renewing, and the sweeper takes
    # them back) and publishes this host's health, which expires on its own when the worker dies. Each duty
    # fails alone: a broken reconciliation must not stop the leases. A long-lived thread keeps its database
    # connection across iterations: close_old_connections() makes the next query check it (CONN_HEALTH_CHECKS)
    # and reconnect if a database restart broke it. Leases not renewed are tried again within a second.
    last_health = 0.0
    while not stop.is_set():
        _duty(close_old_connections)
        renewed = _duty(leases_renew)
        if time.monotonic() - last_health >= HEARTBEAT_S:
            last_health = time.monotonic()
            _duty(executor().reap_idle)
            _duty(environments_reconcile)
            _duty(_publish_health)
        stop.wait(settings.LEASE_S / 3 if renewed else min(settings.LEASE_S / 3, RENEW_RETRY_S))


# After a failed renewal: the next try, so that leases are renewed within a second of the database's return.
RENEW_RETRY_S = 0.5


def _duty(action: Callable[[], Any]) -> bool:
    """Run one heartbeat duty; False if it failed (logged)."""
    name = getattr(action, "__name__", action)
    try:
        action()
    except OUTAGE_ERRORS as exc:
        logger.warning("Executor heartbeat: %s failed (%r)", name, exc)
        if isinstance(exc, DATABASE_ERRORS):
            database_unreachable(exc)
        return False
    except Exception:
        logger.exception("Executor heartbeat: %s failed", name)
        return False
    return True


def _publish_health() -> None:
    health = host_health()
    redis_client().set(HOST_KEY.format(host=health["host"]), json.dumps(health), ex=HEARTBEAT_S * 3)
    if lane_threads and not lane_stopping.is_set():
        lane_mark_served()


# Set when the worker shuts down, once its calls are over: the heartbeat and the change listener stop.
stopping = threading.Event()
# Set as soon as a warm shutdown begins: the lane threads take no new call and end with their current one.
lane_stopping = threading.Event()
# The lane threads (functions_app/lane.py), joined, while the heartbeat still renews their leases, before the
# executor shuts down; a call still running when the supervisor's grace runs out dies with the process, as a
# Celery task would, and is reported by the sweeper.
lane_threads: list[threading.Thread] = []


def lanes_serve(run: Callable[[list[str], bool], object], *, threads: int, event_batch: Callable[[], int]) -> None:
    """Serve the fast lane with ``threads`` threads, each running ``run(invocation_ids, sync)`` on a sync call or on
    up to ``event_batch()`` events."""
    host = host_name()
    lane_open(host)
    lane_mark_served()
    serving = {"host": host, "run": run, "stop": lane_stopping, "event_batch": event_batch}
    for number in range(threads):
        thread = threading.Thread(target=lane_serve, kwargs=serving, name=f"lane-{number}")
        thread.daemon = True
        lane_threads.append(thread)
        thread.start()


def host_name() -> str:
    # Host name plus pid: several workers may share one machine.
    return f"{socket.gethostname()}:{os.getpid()}"


def runs_invocations(consumer: Any) -> bool:
    """Whether this worker consumes the invocation queue (the control worker does not: it needs no executor)."""
    queues = consumer.app.amqp.queues.consume_from or consumer.app.amqp.queues
    return INVOCATION_QUEUE in queues or SYNC_QUEUE in queues


@signals.worker_ready.connect
def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    if sender is not None and not runs_invocations(sender):
        return
    report = sandbox_doctor()
    level = logging.WARNING if report.get("tier") != "namespaces" else logging.INFO
    logger.log(level, "Sandbox doctor: tier=%s %s", report.get("tier"), json.dumps(report))
    executor()
    threading.Thread(target=_heartbeat, args=(stopping,), name="executor-heartbeat", daemon=True).start()
    threading.Thread(
        target=_on_function_changes, args=(stopping,), name="executor-function-changes", daemon=True
    ).start()
    # Every host fires schedules: a tick fires once whichever gets it (functions_app/schedules.py).
    threading.Thread(target=schedules_serve, args=(stopping,), name="schedules", daemon=True).start()
    # Bucket pollers: each configuration held by one host at a time, through a lease (bucket_notifications.py).
    threading.Thread(
        target=bucket_pollers_serve, args=(stopping, host_name()), name="bucket-pollers", daemon=True
    ).start()
    # Stream pollers: each event source mapping read by one host at a time. Imported here: stream_sources calls
    # the invoke service, which this module's importers reach first.
    from functions_app.queue_sources import queue_pollers_serve
    from functions_app.stream_sources import stream_pollers_serve

    threading.Thread(
        target=stream_pollers_serve, args=(stopping, host_name()), name="stream-pollers", daemon=True
    ).start()
    threading.Thread(
        target=queue_pollers_serve, args=(stopping, host_name()), name="queue-pollers", daemon=True
    ).start()


@signals.worker_shutting_down.connect
def _on_worker_shutting_down(**_: Any) -> None:
    # Sent as a warm shutdown begins (Celery then stops consuming and waits for its tasks): the lanes stop taking
    # calls at the same moment, so a host going away does not keep accepting work other hosts could do.
    lane_stopping.set()


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    """In this order: no new lane call; the running ones finish (their leases still renewed); then the heartbeat
    stops, the executor shuts down, and what waits in this host's own lane goes to every host."""
    lane_stopping.set()
    if lane_threads:
        with contextlib.suppress(RedisError):  # without it, each thread notices within a second
            lane_wake(host_name(), len(lane_threads))
    for thread in lane_threads:
        thread.join()
    stopping.set()
    if _executor is None:
        return  # the control worker, or an executor that never started
    executor_shutdown()
    with contextlib.suppress(Exception):  # the key expires anyway; what waits in the host's lane is republished
        if lane_threads:
            lane_close(host_name())
        redis_client().delete(HOST_KEY.format(host=host_name()))
