"""Ephemera's executor runtime: sandboxed, warm Python environments forked from a zygote.

Nothing outside this package imports its submodules; this is the whole interface.
It never imports Django or Celery.

    executor = Executor(RuntimeConfig(work_dir="var/runtime", layer_dirs=("var/layers/python",)))
    result = executor.invoke(spec, request)   # thread-safe; one invocation per environment
    executor.retire(lambda key: key.startswith(f"{function_id}:"), kill_busy=True)  # function deleted
    executor.environment_keys()               # what is warm, for periodic reconciliation
    production_shortfalls(sandbox_doctor())   # how this host falls short of the production shape
    executor.shutdown()                       # kills every sandbox, the zygote too

- ``invoke`` raises CapacityError, before reserving or starting anything, when
  the memory budget is held by busy environments: a clean, retryable refusal.
  Everything else is an InvokeResult: a result larger than
  ``InvokeRequest.response_max_bytes`` (default 6 MB, Lambda's sync limit) is
  status "failed", error_type "Function.ResponseSizeTooLarge"; a handler that
  exits is "crashed", "Runtime.ExitError", with Lambda's message ("Runtime
  exited with error: exit status 3", "…: signal: killed").
- ``retire(match, kill_busy=...)`` destroys the environments whose key
  ``match`` accepts (keys are the integrator's, "<function id>:<identity>"):
  idle ones at once; busy ones SIGKILLed now with ``kill_busy`` (their call
  ends "crashed"), else destroyed after their current call. Returns how many.
- Evicting, reaping and discarding environments never wait in the caller: a
  SIGKILL is synchronous (and the budget is released with it), the rest of the
  teardown runs on the executor's own thread.

What an environment gets:
- Frozen between invocations (cgroup freezer, v1 ``freezer.state`` or v2
  ``cgroup.freeze``; SIGSTOP of its process group where there is none) and a
  CPU quota of ``memory_mb / mb_per_vcpu`` vCPUs from its first invocation on
  (init runs unthrottled, bounded by init_timeout_s and billed as init):
  CPU outside a billed invocation is impossible. ``cpu_ms`` is the cgroup's
  count for every process of the environment while it was thawed.
- Pid 1 of its pid namespace is a reaper that reaps orphans continuously and
  reports the handler's exit status; the handler (pid 2) keeps its own
  children's statuses.
- ``/tmp`` is an ext4 filesystem of its own, ``tmp_mb`` large, on a loop
  device: disk, not memory (Lambda's ephemeral storage); ENOSPC past its size.
  Where loop devices or mkfs.ext4 are missing (the doctor says), a tmpfs whose
  size is added to the memory limit and budget. insecure-dev shares the host's.
- The function's code wins: /var/task comes first on sys.path, and a package
  it bundles that the zygote pre-imported from a layer (boto3, urllib3…) makes
  that environment forget every pre-imported layer module (a slower cold start
  for it alone). The runtime's own modules are the private package
  ``_ephemera_runtime`` at /var/runtime; layers are at /opt/python (then
  /opt/python-2…). No ``__file__``, command line or environment a function can
  read holds a host path (``/proc/self/mountinfo`` still shows the bind
  sources of /var/task and the layers).
- A network namespace of its own, always: only ``lo``. With
  ``FunctionSpec.network`` (and ``network_allowed``) also an ``eth0`` linked to
  the worker's namespace under the egress policy (network.py): no address of
  the host, private, shared, link-local (the metadata address) or reserved
  ranges, nor the worker's own networks, unless ``egress_allow`` lists it;
  public ones through the worker's address. Sockets: AF_UNIX and route
  netlink, plus AF_INET/AF_INET6 with the network.
- A seccomp allowlist, an empty capability bounding set, no_new_privs, and a
  host uid per tenant: ``sandbox_uid + int(tenant) % sandbox_uid_count``.
- A minimal root: /usr holds the interpreter, its stdlib, the shared libraries
  and a few tools (sandbox.RUNTIME_TOOLS); /etc only generated files; /dev
  null, zero, random, urandom and a /dev/shm tmpfs.
- The log keeps a short head and the tail of the output, ``log_cap_bytes`` in
  all, with a marker between them.

Operating notes:
- One Executor per worker process, shared by its threads: run Celery with
  ``--pool threads`` (a prefork pool would give every child its own zygote and pool).
- The namespaces tier needs root with the capabilities doctor.REQUIRED_CAPABILITIES
  names (it mounts, writes cgroupfs, attaches loop devices and drops to the
  tenants' uids itself) and the system ``/usr/bin/python3``; network-enabled
  functions also need CAP_NET_ADMIN, ``nft`` and IPv4 forwarding on the uplink.
  ``sandbox_doctor()`` says what the host supports; ``tier="insecure-dev"`` is
  never chosen automatically. insecure-dev isolates nothing: no namespaces,
  host paths, the host's /tmp and network.
- Layer directories must be readable by root; ``build_layer(dest)`` fills one
  with boto3. Work files live under ``work_dir`` (templates for /tmp, one per
  size, removed at shutdown); a dead worker's are removed by the next one.
"""

from __future__ import annotations

from .doctor import SandboxUnavailable, production_shortfalls, sandbox_doctor
from .interface import (
    INIT_TIMEOUT_S,
    SYNC_RESPONSE_MAX_BYTES,
    CapacityError,
    FunctionSpec,
    InvokeRequest,
    InvokeResult,
    RuntimeConfig,
)
from .layer import build_layer
from .network import EgressConfigError, parse_allow
from .pool import Executor

__all__ = [
    "INIT_TIMEOUT_S",
    "SYNC_RESPONSE_MAX_BYTES",
    "CapacityError",
    "EgressConfigError",
    "Executor",
    "FunctionSpec",
    "InvokeRequest",
    "InvokeResult",
    "RuntimeConfig",
    "SandboxUnavailable",
    "build_layer",
    "parse_allow",
    "production_shortfalls",
    "sandbox_doctor",
]
