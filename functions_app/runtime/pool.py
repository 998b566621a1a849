"""The executor: a pool of warm environments forked from one zygote.

Thread-safe: Celery (``--pool threads``) calls ``invoke`` from several threads.
One lock guards the pool's bookkeeping only; starting and running environments
happen outside it, and tearing them down happens on a thread of its own: a
caller never waits for more than a SIGKILL.

The memory budget: ``_reserved_mb`` is the sum of ``budget_mb`` over the
environments in the pool (starting, busy or idle) plus the reservations of cold
starts not yet registered. An environment leaves the budget when it leaves the
pool, as it is SIGKILLed: the kernel frees its memory then, while waiting for
its exit and removing its cgroup hold none (they go to the teardown thread).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import queue
import resource
import signal
import threading
import time
import uuid
from collections.abc import Callable

from . import network
from ._ephemera_runtime import protocol
from .cgroups import EnvCgroup, Limits, detect_layout, sweep_orphans
from .doctor import PACKAGE_DIR, TIER_NAMESPACES, resolve_tier, sandbox_doctor
from .environment import DeadlineExceeded, Environment, EnvironmentGone, LogBuffer
from .interface import CapacityError, FunctionSpec, InvokeRequest, InvokeResult, RuntimeConfig
from .storage import Templates, storage_support
from .storage import sweep_orphans as sweep_storage
from .zygote_client import Zygote, ZygoteError

logger = logging.getLogger(__name__)

_REAP_EVERY_S = 1.0
_TEARDOWN_WAIT_S = 2.0
_STOP = object()  # tells the teardown thread to finish
# What the worker reads beyond response_max_bytes: room for an error object instead of the result.
_BODY_MARGIN = 64 << 10
_DEFAULT_TMP_MB = 512
INSECURE_WARNING = (
    "INSECURE sandbox tier insecure-dev: user code runs as a plain forked process with rlimits only "
    "(no namespaces, no seccomp, host filesystem, /tmp and network visible); never use it in production"
)
_PATH = "/usr/local/bin:/usr/bin:/bin"


def _error_payload(error_type: str, message: str) -> bytes:
    return json.dumps(protocol.error(error_type, message)).encode()


def _signal_name(signum: int) -> str:
    name = signal.strsignal(signum) or f"signal {signum}"
    # Lambda's runtime says "killed", "segmentation fault"; glibc capitalises the first word.
    return name if name[:2].isupper() else name[0].lower() + name[1:]


def _raise_fd_limit() -> None:
    # Each environment holds about ten fds (pipes, a pidfd, hot cgroup files): the usual soft limit of
    # 1024 would cap a host near a hundred environments. The sandbox sets its own limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def tenant_uid(tenant: str, base: int, count: int) -> int:
    """The host uid a tenant's environments run as: distinct per tenant id below ``count`` (ids are numbers)."""
    if tenant.isdigit():
        return base + int(tenant) % count
    return base + int.from_bytes(hashlib.sha256(tenant.encode()).digest()[:8], "big") % count


def exit_message(status: int | None) -> str:
    """Lambda's words for how the runtime process ended, from its wait status."""
    code = os.waitstatus_to_exitcode(status) if status is not None else 0
    if code > 0:
        return f"Runtime exited with error: exit status {code}"
    if code < 0:
        return f"Runtime exited with error: signal: {_signal_name(-code)}"
    return "Runtime exited without providing a reason"


class Executor:
    def __init__(self, config: RuntimeConfig) -> None:
        self.config = config
        _raise_fd_limit()
        self.doctor = sandbox_doctor()
        self.tier = resolve_tier(config.tier, self.doctor)
        self.reasons = list(self.doctor["reasons"])
        if self.tier != TIER_NAMESPACES:
            # Loud on purpose: this tier is for development only.
            self.reasons.insert(0, INSECURE_WARNING)
            logger.warning("%s (%s)", INSECURE_WARNING, "; ".join(self.reasons[1:]) or "chosen by configuration")
        layout = detect_layout() if os.geteuid() == 0 else None
        self.cgroups = layout.prepare() if layout else None
        if self.cgroups:
            sweep_orphans(self.cgroups)
        self._network_missing: str | None = None
        self._work_dir = os.path.abspath(config.work_dir)
        os.makedirs(os.path.join(self._work_dir, "zygote"), mode=0o700, exist_ok=True)
        self.egress = self._open_network()
        self.storage = self._open_storage()
        self._tmp_in_memory = self.tier == TIER_NAMESPACES and self.storage is None
        self._lock = threading.Lock()
        self._envs: dict[str, list[Environment]] = {}
        self._reserved_mb = 0
        self._stale_cgroups: list[EnvCgroup] = []
        self._last_reap = time.monotonic()
        self._closed = False
        self._teardowns: queue.Queue = queue.Queue()
        self._teardown_inline = False
        self._dying = 0
        self._zygote = Zygote(self._zygote_config())
        try:
            self._zygote.start()
        except BaseException:
            self._remove_storage()
            self._remove_network()
            raise
        self._teardown_thread = threading.Thread(target=self._teardown_loop, name="ephemera-teardown", daemon=True)
        self._teardown_thread.start()

    def _open_storage(self) -> Templates | None:
        """Per-environment ext4 /tmp where possible; else a tmpfs, charged to memory, said loudly."""
        if self.tier != TIER_NAMESPACES:
            return None  # insecure-dev has no mount namespace: the host's /tmp (INSECURE_WARNING says so)
        missing = storage_support()
        if self.config.ephemeral_storage != "auto":
            missing = [f"ephemeral_storage={self.config.ephemeral_storage!r}"]
        if missing:
            self._no_storage(missing)
            return None
        sweep_storage(self._work_dir)
        templates = Templates(self._work_dir)
        try:
            templates.ensure(_DEFAULT_TMP_MB)
        except OSError as exc:
            templates.remove()
            self._no_storage([str(exc)])
            return None
        return templates

    def _no_storage(self, why: list[str]) -> None:
        reason = f"ephemeral storage is a tmpfs charged to memory, its size added to the limit ({'; '.join(why)})"
        self.reasons.append(reason)
        logger.warning("%s", reason)

    def _open_network(self) -> network.EgressPolicy | None:
        """The egress policy for functions that opt into the network; None (and a reason) when there is none.

        A bad EGRESS_ALLOW entry or resolver raises: the operator meant something that cannot be honoured.
        """
        if self.tier != TIER_NAMESPACES:
            return None  # insecure-dev: the host's own network (INSECURE_WARNING says so)
        if not self.config.network_allowed:
            self.reasons.append("network opt-in is off (operator setting): every environment stays offline")
            return None
        policy = network.policy_for(self.config.egress_allow, self.config.resolvers, self.config.network_subnet)
        try:
            network.install(policy)
        except OSError as exc:
            self._network_missing = f"network-enabled functions cannot start: {exc}"
            self.reasons.append(self._network_missing)
            logger.warning("%s", self._network_missing)
            return None
        return policy  # the doctor's reasons say when forwarding is off on the uplink

    def _remove_network(self) -> None:
        if self.egress is not None:
            network.remove(self.egress)

    def _zygote_config(self) -> dict:
        return {
            "tier": self.tier,
            "preload": list(self.config.preload),
            "resolvers": list(self.egress.resolvers) if self.egress else [],
            "runtime_parent": os.path.dirname(PACKAGE_DIR),
            "runtime_package": PACKAGE_DIR,
            "layers": [os.path.abspath(d) for d in self.config.layer_dirs],
            "zygote_root": os.path.join(self._work_dir, "zygote"),
            "storage": {"dir": self.storage.root, "tmp_mb": _DEFAULT_TMP_MB} if self.storage else None,
            "host_prefix": "",
        }

    # ------------------------------------------------------------ public

    def invoke(self, spec: FunctionSpec, request: InvokeRequest) -> InvokeResult:
        if time.monotonic() - self._last_reap > _REAP_EVERY_S:
            self.reap_idle()  # finds them only; their teardown is not ours to wait for
        log = LogBuffer(self.config.log_cap_bytes)
        env, cold_ms, usable = self._acquire(spec, log)
        if not usable:
            self._discard(env)
            return self._setup_failure(env, cold_ms, log)
        try:
            result, keep = self._run(env, spec, request, log)
        except BaseException:
            self._discard(env)
            raise
        result.is_cold, result.init_ms = cold_ms is not None, cold_ms or 0.0
        if keep:
            self._release(env)
        else:
            self._discard(env)
        return result

    def retire(self, match: Callable[[str], bool], *, kill_busy: bool) -> int:
        """Destroy the environments whose key ``match`` accepts; returns how many matched.

        Idle ones go at once. Busy ones are SIGKILLed now if ``kill_busy`` (their
        call ends as a crash), else destroyed when their current call ends.
        """
        with self._lock:
            matched = [e for group in self._envs.values() for e in group if match(e.key)]
            busy = [e for e in matched if e.busy]  # starting ones too
            idle = [e for e in matched if not e.busy]
            for env in matched:
                env.retired = True
            for env in idle:
                self._forget(env)
        for env in idle:
            self._evict(env)
        for env in busy if kill_busy else []:
            env.kill()  # its invoking thread sees it die and discards it
        return len(matched)

    def has_room(self, memory_mb: int) -> bool:
        """Whether an environment of ``memory_mb`` would fit in the budget now (idle environments count as room:
        they would be evicted). A hint for callers deciding whether to take work; ``invoke`` decides for real."""
        with self._lock:
            idle = sum(e.budget_mb for group in self._envs.values() for e in group if not e.busy)
            return self._reserved_mb - idle + memory_mb <= self.config.memory_budget_mb

    def can_ever_host(self, memory_mb: int) -> bool:
        """Whether an environment of ``memory_mb`` fits in this host's whole budget at all."""
        return memory_mb <= self.config.memory_budget_mb

    def environment_keys(self) -> set[str]:
        """The keys of every environment in the pool (starting, busy or idle), for reconciliation."""
        with self._lock:
            return {key for key, group in self._envs.items() if group}

    def health(self) -> dict:
        with self._lock:
            envs = [e for group in self._envs.values() for e in group]
            reserved, dying = self._reserved_mb, self._dying
        layout = self.cgroups
        return {
            "tier": self.tier,
            "secure": self.tier == TIER_NAMESPACES,
            "reasons": self.reasons,
            "cgroup": layout.version if layout else None,
            "frozen_between_invocations": "cgroup" if layout and layout.has("freezer") else "SIGSTOP",
            "cpu_limit_mb_per_vcpu": self.config.mb_per_vcpu if layout and layout.has("cpu") else 0,
            "ephemeral_storage": "ext4" if self.storage else "tmpfs" if self._tmp_in_memory else "host /tmp",
            "network": self._network_health(),
            "sandbox_uids": f"{self.config.sandbox_uid}-{self.config.sandbox_uid + self.config.sandbox_uid_count - 1}",
            "warm_environments": len(envs),
            "busy_environments": sum(e.busy for e in envs),
            "dying_environments": dying,
            "memory_reserved_mb": reserved,
            "zygote_pid": self._zygote.pid,
            "zygote_alive": self._zygote.alive(),
            "preloaded": self._zygote.preloaded,
        }

    def _network_health(self) -> dict:
        policy = self.egress
        return {
            "allowed": self.config.network_allowed and self.tier == TIER_NAMESPACES,
            "egress_policy": policy.table if policy else None,
            "egress_allow": [f"{address}:{port}" for address, port in policy.allowed] if policy else [],
            "resolvers": list(policy.resolvers) if policy else [],
        }

    def reap_idle(self) -> int:
        """Evict environments idle past the TTL (or found dead); returns how many."""
        now = time.monotonic()
        self._last_reap = now
        with self._lock:
            victims = [
                e
                for group in self._envs.values()
                for e in group
                if not e.busy and (now - e.last_used > self.config.idle_ttl_s or not e.alive())
            ]
            for env in victims:
                self._forget(env)
        for env in victims:
            self._evict(env)
        return len(victims)

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            envs = [e for group in self._envs.values() for e in group]
            for env in envs:
                self._forget(env)
        for env in envs:
            if env.busy:
                # Its invoking thread is reading the pipes: closing them under
                # it could hand their numbers to new files. Kill only; that
                # thread sees EOF, reports a crash and discards it.
                env.kill()
            else:
                self._evict(env)
        with self._lock:
            self._teardown_inline = True  # from now on, whoever evicts tears down
        self._teardowns.put(_STOP)
        self._teardown_thread.join()
        self._zygote.stop()
        self._retry_stale_cgroups(timeout_s=2.0)
        self._remove_storage()
        self._remove_network()

    def _remove_storage(self) -> None:
        if self.storage is not None:
            self.storage.remove()

    # ------------------------------------------------------------ pool

    def _acquire(self, spec: FunctionSpec, log: LogBuffer) -> tuple[Environment, float | None, bool]:
        doomed: list[Environment] = []
        try:
            warm = self._pick(spec, doomed)
        finally:
            for env in doomed:  # dead ones and eviction victims, even when the budget said no
                self._evict(env)
        if warm is not None:
            return warm, None, True
        return self._cold_start(spec, log)

    def _pick(self, spec: FunctionSpec, doomed: list[Environment]) -> Environment | None:
        """Claim an idle warm environment, or reserve memory for a cold one (evicting LRU idle ones)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("executor is shut down")
            for env in reversed(list(self._envs.get(spec.environment_key, []))):  # most recently used first
                if env.busy:
                    continue
                if env.alive():
                    env.busy = True
                    return env
                self._forget(env)
                doomed.append(env)
            budget = self._budget_mb(spec)
            doomed.extend(self._make_room(budget))
            self._reserved_mb += budget
            return None

    def _budget_mb(self, spec: FunctionSpec) -> int:
        # A tmpfs /tmp lives in memory: its size joins the memory limit and the budget.
        return spec.memory_mb + (spec.tmp_mb if self._tmp_in_memory else 0)

    def _make_room(self, memory_mb: int) -> list[Environment]:
        """Pick idle environments, least recently used first, until memory_mb fits (lock held)."""
        budget = self.config.memory_budget_mb
        idle = sorted((e for g in self._envs.values() for e in g if not e.busy), key=lambda e: e.last_used)
        # Check first, so a request that cannot fit evicts nobody.
        if self._reserved_mb - sum(e.budget_mb for e in idle) + memory_mb > budget:
            raise CapacityError(
                f"memory budget {budget} MB is taken by busy environments ({self._reserved_mb} MB reserved)"
            )
        victims = []
        while self._reserved_mb + memory_mb > budget:
            env = idle.pop(0)
            self._forget(env)
            victims.append(env)
        return victims

    def _forget(self, env: Environment) -> None:
        """Take ``env`` out of the pool and the budget (lock held); a no-op when it already left."""
        group = self._envs.get(env.key, [])
        if env not in group:
            return
        group.remove(env)
        if not group:
            self._envs.pop(env.key, None)
        self._reserved_mb -= env.budget_mb

    def _release(self, env: Environment) -> None:
        with self._lock:
            env.busy = False
            env.last_used = time.monotonic()
            group = self._envs.get(env.key) or []
            keep = not self._closed and not env.retired and env in group
            if keep:
                group.remove(env)
                group.append(env)  # the end of the list is the most recently used
            else:
                self._forget(env)
        if not keep:
            self._evict(env)

    def _discard(self, env: Environment) -> None:
        with self._lock:
            self._forget(env)
        self._evict(env)

    # ------------------------------------------------------------ teardown

    def _evict(self, env: Environment) -> None:
        """SIGKILL now; waiting for the exit and cleaning up happen on the teardown thread."""
        if env.closed:
            return
        env.kill()
        with self._lock:
            inline = self._teardown_inline
            if not inline:
                self._dying += 1
        if inline:
            self._finish(env)
        else:
            self._teardowns.put(env)

    def _finish(self, env: Environment) -> None:
        env.wait_exit(_TEARDOWN_WAIT_S)
        env.close()
        if env.cgroup is not None and not env.cgroup.remove(timeout_s=0.5):
            with self._lock:
                self._stale_cgroups.append(env.cgroup)

    def _teardown_loop(self) -> None:
        while True:
            try:
                env = self._teardowns.get(timeout=_REAP_EVERY_S)
            except queue.Empty:
                self._retry_stale_cgroups()
                continue
            if env is _STOP:
                return
            try:
                self._finish(env)
            except Exception:
                logger.exception("Tearing down environment %s failed", env.id)
            finally:
                with self._lock:
                    self._dying -= 1

    def _retry_stale_cgroups(self, timeout_s: float = 0.0) -> None:
        with self._lock:
            stale, self._stale_cgroups = self._stale_cgroups, []
        still = [cg for cg in stale if not cg.remove(timeout_s=timeout_s)]
        with self._lock:
            self._stale_cgroups.extend(still)

    # ------------------------------------------------------------ cold start

    def _sandbox_env(self, spec: FunctionSpec, env_id: str, task_root: str) -> dict[str, str]:
        """The handler's whole environment: the user's variables plus Lambda's reserved ones."""
        today = datetime.datetime.now(datetime.UTC)
        variables = dict(spec.env)
        variables.update(
            {
                "AWS_LAMBDA_FUNCTION_NAME": spec.function_name,
                "AWS_LAMBDA_FUNCTION_VERSION": spec.function_version,
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
                "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{spec.function_name}",
                "AWS_LAMBDA_LOG_STREAM_NAME": f"{today:%Y/%m/%d}/[{spec.function_version}]{env_id}",
                "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
                "AWS_EXECUTION_ENV": "AWS_Lambda_python3.11",
                "AWS_REGION": self.config.region,
                "AWS_DEFAULT_REGION": self.config.region,
                "LAMBDA_TASK_ROOT": task_root,
                "LAMBDA_RUNTIME_DIR": "/var/runtime",
                "_HANDLER": spec.handler,
                "TZ": ":UTC",
                "PATH": _PATH,
                "LANG": "C.UTF-8",
            }
        )
        return variables

    def _zygote_spec(self, spec: FunctionSpec, env: Environment) -> dict:
        """What the zygote needs to start ``env``, in the worker's paths (the zygote maps them into its view)."""
        if self.storage is not None:
            self.storage.ensure(spec.tmp_mb)
        task_root = "/var/task" if self.tier == TIER_NAMESPACES else os.path.abspath(spec.code_dir)
        cgroup = env.cgroup
        uid = tenant_uid(spec.tenant, self.config.sandbox_uid, self.config.sandbox_uid_count)
        online = spec.network and self.config.network_allowed and self.tier == TIER_NAMESPACES
        return {
            "tier": self.tier,
            "code_dir": os.path.abspath(spec.code_dir),
            "task_root": task_root,
            "handler": spec.handler,
            "env": self._sandbox_env(spec, env.id, task_root),
            "tmp_mb": spec.tmp_mb,
            "scratch": self.storage is not None,
            "network": online,
            "link": self.egress.link if online and self.egress else None,
            "setup_error": self._network_missing if online and not self.egress else None,
            "uid": uid,
            "gid": uid,
            "shm_mb": spec.memory_mb,
            "cgroup_attach": cgroup.attach_files if cgroup else [],
            "thaw_file": cgroup.thaw_file if cgroup else None,
            "rlimit_as_mb": None if cgroup else spec.memory_mb,
            "rlimit_nproc": None if cgroup else 1024,
            "timeout_s": spec.timeout_s,
        }

    def _cpus(self, spec: FunctionSpec) -> float | None:
        per_vcpu = self.config.mb_per_vcpu
        return spec.memory_mb / per_vcpu if per_vcpu else None

    def _limits(self, spec: FunctionSpec) -> Limits:
        # No CPU quota during init (see _cold_start): it is set once the handler is imported.
        return Limits(memory_mb=self._budget_mb(spec), pids_max=self.config.pids_max, cpus=None)

    def _open_environment(self, spec: FunctionSpec) -> Environment:
        env_id = uuid.uuid4().hex
        cgroup = None
        if self.cgroups:
            cgroup = EnvCgroup(self.cgroups, f"env-{os.getpid()}-{env_id}", self._limits(spec))
        fields = {"id": env_id, "key": spec.environment_key, "memory_mb": spec.memory_mb}
        try:
            return Environment.open(**fields, budget_mb=self._budget_mb(spec), cgroup=cgroup, tier=self.tier)
        except BaseException:
            if cgroup is not None:
                cgroup.remove(timeout_s=0)
            raise

    def _new_environment(self, spec: FunctionSpec) -> Environment:
        """Create an environment and register it (busy): its cold start's reservation becomes its own."""
        try:
            env = self._open_environment(spec)
        except BaseException:
            with self._lock:
                self._reserved_mb -= self._budget_mb(spec)
            raise
        with self._lock:
            closed = self._closed
            if closed:
                self._reserved_mb -= env.budget_mb
            else:
                self._envs.setdefault(spec.environment_key, []).append(env)
        if closed:
            self._evict(env)
            raise RuntimeError("executor is shut down")
        return env

    def _cold_start(self, spec: FunctionSpec, log: LogBuffer) -> tuple[Environment, float, bool]:
        """Start an environment up to its handler's import; ``usable`` is False when it must be discarded.

        Init runs without the CPU quota, as Lambda boosts it: a 128 MB function
        importing a heavy library would otherwise need 14 times its CPU time in
        wall time, past the init timeout. It stays bounded by init_timeout_s and
        billed as init_ms; the quota applies from the first invocation on.
        """
        t0 = time.perf_counter()
        env = self._new_environment(spec)
        try:
            try:
                env.adopt_pid(self._zygote.spawn(self._zygote_spec(spec, env), env.sandbox_ends))
            finally:
                env.close_sandbox_ends()
            header, _ = env.exchange(b"", time.monotonic() + self.config.init_timeout_s, log, "ready")
            if env.cgroup is not None:
                env.cgroup.set_cpus(self._cpus(spec))
            env.init_error = header.get("init_error")
            usable = not env.init_error or env.init_error["errorType"] != "Sandbox.SetupError"
        except (ZygoteError, EnvironmentGone, DeadlineExceeded, protocol.ProtocolError, OSError) as exc:
            env.init_error = self._init_failure(env, exc)
            usable = False
        return env, (time.perf_counter() - t0) * 1000, usable

    def _init_failure(self, env: Environment, exc: Exception) -> dict:
        if isinstance(exc, DeadlineExceeded):
            message = f"Init timed out after {self.config.init_timeout_s:.2f} seconds"
            return protocol.error("Sandbox.Timedout", message)
        if isinstance(exc, EnvironmentGone):
            status = env.exit_status()
            env.kill()
            if env.cgroup is not None and env.cgroup.oom_kills() > 0:
                message = f"Runtime exited during init: signal: killed (memory limit {env.memory_mb} MB)"
                return protocol.error("Runtime.OutOfMemory", message)
            return protocol.error("Runtime.ExitError", exit_message(status))
        if isinstance(exc, protocol.ProtocolError):
            return protocol.error("Runtime.ExitError", f"Runtime exited without providing a reason ({exc})")
        return protocol.error("Sandbox.SetupError", f"cold start failed: {exc!r}")

    def _setup_failure(self, env: Environment, init_ms: float | None, log: LogBuffer) -> InvokeResult:
        error = env.init_error or protocol.error("Sandbox.SetupError", "unknown")
        statuses = {"Sandbox.Timedout": "timed_out", "Runtime.OutOfMemory": "out_of_memory"}
        status = statuses.get(error["errorType"], "crashed")
        return InvokeResult(
            status=status,
            payload=_error_payload(error["errorType"], error["errorMessage"]),
            error_type=error["errorType"],
            is_cold=True,
            init_ms=init_ms or 0.0,
            duration_ms=0.0,
            peak_memory_mb=0.0,
            cpu_ms=0.0,
            log=log.text(),
            environment_id=env.id,
        )

    # ------------------------------------------------------------ one invocation

    def _run(
        self, env: Environment, spec: FunctionSpec, request: InvokeRequest, log: LogBuffer
    ) -> tuple[InvokeResult, bool]:
        """One call; the flag says whether the environment may serve another."""
        limit = request.response_max_bytes
        header = {
            "request_id": request.request_id,
            "arn": request.invoked_function_arn,
            "attempt": request.attempt,
            "deadline_ms": int(time.time() * 1000 + spec.timeout_s * 1000),
            "response_max_bytes": limit,
        }
        if request.client_context:
            header["client_context"] = request.client_context
        on_chunk = None
        if request.on_chunk is not None:
            header["stream_max_bytes"] = request.stream_max_bytes
            on_chunk = _StreamCounter(request.on_chunk, request.stream_max_bytes)
        oom_before, cpu_before = self._meter_start(env)
        env.thaw()  # frozen since its last call: no CPU outside a billed invocation
        t0 = time.perf_counter()
        deadline = time.monotonic() + spec.timeout_s
        try:
            out = protocol.encode(header, request.event)
            meta, body = env.exchange(out, deadline, log, "result", limit + _BODY_MARGIN, on_chunk)
        except DeadlineExceeded:
            env.kill()
            env.drain_log(log)
            message = f"Task timed out after {spec.timeout_s:.2f} seconds"
            payload = _error_payload("Sandbox.Timedout", message)
            return self._result(env, "timed_out", payload, "Sandbox.Timedout", t0, log), False
        except protocol.FrameTooLarge:
            # Raw frames past the bootstrap's own check: cut off unread, so the size is unknown.
            env.kill()
            told = request.stream_max_bytes if on_chunk is not None else limit
            payload = json.dumps(protocol.response_too_large(None, told)).encode()
            return self._result(env, "failed", payload, protocol.RESPONSE_TOO_LARGE, t0, log), False
        except EnvironmentGone:
            return self._died(env, t0, log, oom_before), False
        env.freeze()
        status = "succeeded" if meta.get("ok") else "failed"
        # duration_ms stays the worker's own measure (billing must not trust the
        # sandbox); so does cpu_ms where the cgroup measures it.
        result = self._result(env, status, body, meta.get("error_type"), t0, log)
        result.cpu_ms = self._cpu_ms(env, cpu_before, meta)
        if not result.peak_memory_mb:
            result.peak_memory_mb = max(float(meta.get("maxrss_kb") or 0), 0.0) / 1024
        return result, True

    @staticmethod
    def _meter_start(env: Environment) -> tuple[int, int | None]:
        if env.cgroup is None:
            return 0, None
        env.cgroup.reset_peak()
        return env.cgroup.oom_kills(), env.cgroup.cpu_usage_ns()

    @staticmethod
    def _cpu_ms(env: Environment, cpu_before: int | None, meta: dict) -> float:
        cpu_after = env.cgroup.cpu_usage_ns() if env.cgroup is not None else None
        if cpu_before is None or cpu_after is None:
            return max(float(meta.get("cpu_ms") or 0), 0.0)  # informational: measured inside the sandbox
        return (cpu_after - cpu_before) / 1e6

    def _died(self, env: Environment, t0: float, log: LogBuffer, oom_before: int) -> InvokeResult:
        status = env.exit_status()
        env.kill()
        if env.cgroup is not None and env.cgroup.oom_kills() > oom_before:
            message = f"Runtime exited with error: signal: killed (memory limit {env.memory_mb} MB)"
            return self._result(
                env, "out_of_memory", _error_payload("Runtime.OutOfMemory", message), "Runtime.OutOfMemory", t0, log
            )
        payload = _error_payload("Runtime.ExitError", exit_message(status))
        return self._result(env, "crashed", payload, "Runtime.ExitError", t0, log)

    @staticmethod
    def _result(
        env: Environment, status: str, payload: bytes, error_type: str | None, t0: float, log: LogBuffer
    ) -> InvokeResult:
        peak = env.cgroup.peak_bytes() / (1 << 20) if env.cgroup is not None else 0.0
        return InvokeResult(
            status=status,
            payload=payload,
            error_type=error_type,
            is_cold=False,
            init_ms=0.0,
            duration_ms=(time.perf_counter() - t0) * 1000,
            peak_memory_mb=peak,
            cpu_ms=0.0,
            log=log.text(),
            environment_id=env.id,
        )


class _StreamCounter:
    """Hands a streamed call's chunks on, counting its data (past the limit the stream is cut off as too large,
    whatever the sandbox's own count said) and coalescing what arrives together: pieces yielded in a tight loop
    reach the caller as one, and each is handed on as soon as the sandbox has nothing more ready (``flush``)."""

    def __init__(self, on_chunk: Callable[[str, bytes], None], limit: int) -> None:
        self.on_chunk, self.limit, self.sent = on_chunk, limit, 0
        self.pending: list[bytes] = []
        self.pending_bytes = 0

    def __call__(self, header: dict, body: bytes) -> None:
        if header.get("kind") == "prelude":
            self.flush()
            self.on_chunk("prelude", body)
            return
        self.sent += len(body)
        if self.sent > self.limit:
            raise protocol.FrameTooLarge(self.sent, self.limit)
        self.pending.append(body)
        self.pending_bytes += len(body)
        if self.pending_bytes >= protocol.CHUNK_MAX_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            data, self.pending, self.pending_bytes = b"".join(self.pending), [], 0
            self.on_chunk("data", data)
