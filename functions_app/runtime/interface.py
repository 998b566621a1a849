"""The executor's public data types (re-exported by functions_app.runtime)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FunctionSpec:
    environment_key: str  # function version + config; environments are never shared across keys
    function_name: str
    function_version: str  # "$LATEST" or "3"
    code_dir: str  # extracted code, root-owned; appears read-only at /var/task
    handler: str  # "module.function", "pkg/mod.function" or "pkg.mod.function"
    memory_mb: int
    timeout_s: float
    env: dict[str, str] = field(default_factory=dict)
    network: bool = False
    tmp_mb: int = 512  # ephemeral storage: /tmp's size on disk, apart from memory (Lambda: 512-10240)
    tenant: str = ""


SYNC_RESPONSE_MAX_BYTES = 6 * 1024 * 1024  # Lambda's limit for a synchronous invocation's result
STREAM_RESPONSE_MAX_BYTES = 200 * 1024 * 1024  # Lambda's limit for a streamed response
INIT_TIMEOUT_S = 10.0  # Lambda's init phase limit


@dataclass(frozen=True)
class InvokeRequest:
    request_id: str
    event: bytes  # raw JSON
    invoked_function_arn: str
    attempt: int = 1
    client_context: str = ""  # Lambda's ClientContext, JSON ("" when none): the handler's context.client_context
    # A larger result fails as Function.ResponseSizeTooLarge and is never held by the worker.
    response_max_bytes: int = SYNC_RESPONSE_MAX_BYTES
    # A streamed call: a handler that returns an iterator has its items handed to ``on_chunk`` as they come
    # (kind "prelude": the first item, a dict, as JSON; kind "data": bytes), at most ``stream_max_bytes`` of data.
    on_chunk: Callable[[str, bytes], None] | None = None
    stream_max_bytes: int = STREAM_RESPONSE_MAX_BYTES


@dataclass
class InvokeResult:
    status: str  # succeeded | failed | timed_out | out_of_memory | crashed
    payload: bytes
    error_type: str | None
    is_cold: bool
    init_ms: float
    duration_ms: float
    peak_memory_mb: float
    cpu_ms: float  # every process of the environment while thawed for this call (cgroup), else the handler's own
    log: str  # a short head and the tail, with a marker between them when longer than log_cap_bytes
    environment_id: str


@dataclass(frozen=True)
class RuntimeConfig:
    work_dir: str
    layer_dirs: tuple[str, ...] = ()
    preload: tuple[str, ...] = ("json", "boto3")
    idle_ttl_s: float = 600
    memory_budget_mb: int = 4096
    log_cap_bytes: int = 1 << 20
    tier: str = "auto"  # "auto" | "namespaces" | "insecure-dev"
    # Environments run as host uid sandbox_uid + (tenant id mod sandbox_uid_count): one uid per tenant.
    sandbox_uid: int = 1_000_000
    sandbox_uid_count: int = 1_000_000
    # Additions to the agreed interface, all with safe defaults:
    region: str = "us-east-1"  # AWS_REGION / AWS_DEFAULT_REGION inside
    init_timeout_s: float = INIT_TIMEOUT_S
    pids_max: int = 64  # cgroup pids.max per environment (fork bombs)
    mb_per_vcpu: int = 1769  # CPU quota in proportion to memory, as Lambda (1,769 MB = 1 vCPU); 0 = unlimited
    ephemeral_storage: str = "auto"  # "auto": /tmp on its own ext4 where the host allows, else "tmpfs"
    # FunctionSpec.network: a link out through the worker's namespace under the egress policy (network.py).
    network_allowed: bool = True  # False: every environment stays offline, whatever its function asks
    egress_allow: tuple[str, ...] = ()  # "host:port" destinations reachable although private or the host's
    network_subnet: str = "10.213.0.0/16"  # the environments' own addresses (each a /32 on its link)
    resolvers: tuple[str, ...] | None = None  # DNS servers inside (allowed on port 53); None: the host's


class CapacityError(RuntimeError):
    """No room in the host's memory budget: every environment is busy. Retry later.

    Raised before anything is reserved or started for the call, so nothing needs undoing.
    """
