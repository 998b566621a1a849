"""Process-tree helpers: children that die with their parent, and a stop that leaves nothing behind."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: the kernel sends SIGTERM to this child when its parent dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def stop_all(processes: list[subprocess.Popen], grace_s: float = 10.0) -> None:
    """SIGTERM in reverse start order, wait up to ``grace_s``, then SIGKILL what is left."""
    for process in reversed(processes):
        if process.poll() is None:
            _signal(process, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in processes:
        remaining = max(0.0, deadline - time.monotonic())
        try:
            process.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            _signal(process, signal.SIGKILL)
            process.wait()


def _signal(process: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signum)


# The queues. Events go to the executors' queue, sync calls to theirs, which executors drain first (a caller
# waiting on the line never queues behind a backlog of events); the sweeper, the metering flush and retention go
# to the control queue, which only the control worker consumes: a backlog of invocations never delays a sweep.
SYNC_QUEUE = "sync"
INVOCATION_QUEUE = "celery"
CONTROL_QUEUE = "control"
_WORKER_FLAGS = ["--pool", "threads", "--without-gossip", "--without-mingle", "--without-heartbeat"]


def executor_worker_args(*, level: str, concurrency: int = 4, name: str | None = None) -> list[str]:
    """`celery -A console` arguments of an executor host: one process, one zygote, ``concurrency`` slots."""
    named = ["-n", name] if name else []
    return [
        "worker",
        *_WORKER_FLAGS,
        "--concurrency",
        str(concurrency),
        "-Q",
        f"{SYNC_QUEUE},{INVOCATION_QUEUE}",  # in this order: see queue_order_strategy in console/settings.py
        "--loglevel",
        level,
        *named,
    ]


def control_worker_args(*, level: str, schedule: str) -> list[str]:
    """`celery -A console` arguments of the control worker: beat's schedule plus the consumer of its tasks, in
    one process (one is enough; a second is harmless, as every control task is idempotent)."""
    return [
        "worker",
        "--beat",
        "--schedule",
        schedule,
        *_WORKER_FLAGS,
        "--concurrency",
        "2",
        "-Q",
        CONTROL_QUEUE,
        "-n",
        f"control-{os.getpid()}@%h",
        "--loglevel",
        level,
    ]
