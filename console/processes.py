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
