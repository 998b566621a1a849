"""Ephemera's executor runtime: sandboxed, warm Python environments forked from a zygote.

Nothing outside this package imports its submodules; this is the whole interface.
It never imports Django or Celery.

    executor = Executor(RuntimeConfig(work_dir="var/runtime", layer_dirs=("var/layers/boto3",)))
    result = executor.invoke(spec, request)   # thread-safe; one invocation per environment
    executor.shutdown()                       # kills every sandbox, the zygote too

Operating notes:
- One Executor per worker process, shared by its threads: run Celery with
  ``--pool threads`` (a prefork pool would give every child its own zygote and pool).
- The namespaces tier needs root (it mounts, writes cgroupfs and drops to
  ``sandbox_uid`` itself) and the system ``/usr/bin/python3``; no extra packages.
  ``sandbox_doctor()`` says what the host supports; ``tier="insecure-dev"`` is
  never chosen automatically.
- Layer directories appear inside the sandbox at their host path (read-only),
  so modules the zygote pre-imported keep finding their files; keep them outside
  /tmp and readable by ``sandbox_uid``. ``build_layer(dest)`` fills one with boto3.
- On cgroup hosts, files in the function's /tmp are tmpfs pages and count
  towards its memory limit.
"""

from __future__ import annotations

from .doctor import SandboxUnavailable, sandbox_doctor
from .interface import CapacityError, FunctionSpec, InvokeRequest, InvokeResult, RuntimeConfig
from .layer import build_layer
from .pool import Executor

__all__ = [
    "CapacityError",
    "Executor",
    "FunctionSpec",
    "InvokeRequest",
    "InvokeResult",
    "RuntimeConfig",
    "SandboxUnavailable",
    "build_layer",
    "sandbox_doctor",
]
