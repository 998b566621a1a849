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
from typing import Any

from celery import signals
from django.conf import settings

from console.redis import redis_client
from functions_app.invocations import leases_renew
from functions_app.runtime import Executor, RuntimeConfig, build_layer, sandbox_doctor

logger = logging.getLogger(__name__)

HOST_KEY = "ephemera:hosts:{host}"
HEARTBEAT_S = 10

_executor: Executor | None = None
_lock = threading.Lock()


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
        region=settings.AWS_REGION,
        mb_per_vcpu=settings.RUNTIME_MB_PER_VCPU,
        ephemeral_storage=settings.RUNTIME_EPHEMERAL_STORAGE,
    )


def executor() -> Executor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = Executor(runtime_config())
        return _executor


def executor_shutdown() -> None:
    global _executor
    with _lock:
        if _executor is not None:
            _executor.shutdown()
            _executor = None


def host_health() -> dict[str, Any]:
    # Host name plus pid: several workers may share one machine.
    return {"host": f"{socket.gethostname()}:{os.getpid()}", "at": time.time(), **(executor().health())}


def _heartbeat(stop: threading.Event) -> None:
    # Renews the leases of running invocations (a paused or dead worker stops renewing, and the sweeper takes
    # them back) and publishes this host's health, which expires on its own when the worker dies.
    last_health = 0.0
    while not stop.is_set():
        try:
            leases_renew()
            if time.monotonic() - last_health >= HEARTBEAT_S:
                last_health = time.monotonic()
                executor().reap_idle()
                health = host_health()
                redis_client().set(HOST_KEY.format(host=health["host"]), json.dumps(health), ex=HEARTBEAT_S * 3)
        except Exception:
            logger.exception("Executor heartbeat failed")
        stop.wait(settings.LEASE_S / 3)


_stop_heartbeat = threading.Event()


@signals.worker_ready.connect
def _on_worker_ready(**_: Any) -> None:
    report = sandbox_doctor()
    level = logging.WARNING if report.get("tier") != "namespaces" else logging.INFO
    logger.log(level, "Sandbox doctor: tier=%s %s", report.get("tier"), json.dumps(report))
    executor()
    threading.Thread(target=_heartbeat, args=(_stop_heartbeat,), name="executor-heartbeat", daemon=True).start()


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    _stop_heartbeat.set()
    executor_shutdown()
    with contextlib.suppress(Exception):  # the key expires anyway
        redis_client().delete(HOST_KEY.format(host=f"{socket.gethostname()}:{os.getpid()}"))
