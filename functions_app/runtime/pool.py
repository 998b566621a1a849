"""The executor: a pool of warm environments forked from one zygote.

Thread-safe: Celery (``--pool threads``) calls ``invoke`` from several threads.
One lock guards the pool's bookkeeping only; starting, running and killing
environments happen outside it.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import threading
import time
import uuid

from .cgroups import EnvCgroup, detect_version, sweep_orphans
from .doctor import RUNTIME_DIR, TIER_NAMESPACES, resolve_tier, sandbox_doctor
from .environment import DeadlineExceeded, Environment, EnvironmentGone, LogBuffer
from .interface import CapacityError, FunctionSpec, InvokeRequest, InvokeResult, RuntimeConfig
from .protocol import encode
from .zygote_client import Zygote, ZygoteError

logger = logging.getLogger(__name__)

_REAP_EVERY_S = 1.0
INSECURE_WARNING = (
    "INSECURE sandbox tier insecure-dev: user code runs as a plain forked process with rlimits only "
    "(no namespaces, no seccomp, host filesystem and network visible); never use it in production"
)
_PATH = "/usr/local/bin:/usr/bin:/bin"


def _error_payload(error_type: str, message: str) -> bytes:
    return json.dumps({"errorMessage": message, "errorType": error_type, "stackTrace": []}).encode()


class Executor:
    def __init__(self, config: RuntimeConfig) -> None:
        self.config = config
        self.doctor = sandbox_doctor()
        self.tier = resolve_tier(config.tier, self.doctor)
        self.reasons = list(self.doctor["reasons"])
        if self.tier != TIER_NAMESPACES:
            # Loud on purpose: this tier is for development only.
            self.reasons.insert(0, INSECURE_WARNING)
            logger.warning("%s (%s)", INSECURE_WARNING, "; ".join(self.reasons[1:]) or "chosen by configuration")
        self.cgroup_version = detect_version() if os.geteuid() == 0 else None
        if self.cgroup_version:
            sweep_orphans(self.cgroup_version)
        self._rootfs = os.path.join(os.path.abspath(config.work_dir), "rootfs")
        os.makedirs(self._rootfs, mode=0o700, exist_ok=True)
        self._lock = threading.Lock()
        self._envs: dict[str, list[Environment]] = {}
        self._reserved_mb = 0
        self._stale_cgroups: list[EnvCgroup] = []
        self._last_reap = time.monotonic()
        self._closed = False
        self._zygote = Zygote(tuple(os.path.abspath(d) for d in config.layer_dirs), config.preload, self.tier)
        self._zygote.start()

    # ------------------------------------------------------------ public

    def invoke(self, spec: FunctionSpec, request: InvokeRequest) -> InvokeResult:
        if time.monotonic() - self._last_reap > _REAP_EVERY_S:
            self.reap_idle()
        log = LogBuffer(self.config.log_cap_bytes)
        env, cold_ms = self._acquire(spec, log)
        if env.closed:  # the cold start itself failed
            return self._setup_failure(env, cold_ms, log)
        try:
            result = self._run(env, spec, request, log)
        except BaseException:
            self._discard(env)
            raise
        result.is_cold, result.init_ms = cold_ms is not None, cold_ms or 0.0
        if result.status in ("succeeded", "failed"):
            self._release(env)
        else:
            self._discard(env)
        return result

    def health(self) -> dict:
        with self._lock:
            envs = [e for group in self._envs.values() for e in group]
        return {
            "tier": self.tier,
            "secure": self.tier == TIER_NAMESPACES,
            "reasons": self.reasons,
            "cgroup": self.cgroup_version,
            "warm_environments": len(envs),
            "busy_environments": sum(e.busy for e in envs),
            "memory_reserved_mb": self._reserved_mb,
            "zygote_pid": self._zygote.pid,
            "zygote_alive": self._zygote.alive(),
            "preloaded": self._zygote.preloaded,
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
            self._destroy(env)
        self._retry_stale_cgroups()
        return len(victims)

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            envs = [(e, e.busy) for group in self._envs.values() for e in group]
            for env, _ in envs:
                self._forget(env)
        for env, busy in envs:
            if busy:
                # Its invoking thread is reading the pipes: closing them under
                # it could hand their numbers to new files. Kill only; that
                # thread sees EOF, reports a crash and closes.
                env.kill(wait_s=0)
            else:
                self._destroy(env)
        self._zygote.stop()
        self._retry_stale_cgroups(timeout_s=2.0)

    # ------------------------------------------------------------ pool

    def _acquire(self, spec: FunctionSpec, log: LogBuffer) -> tuple[Environment, float | None]:
        warm, dead, victims = self._pick(spec)
        for env in dead + victims:
            self._destroy(env, release_budget=False)
        if warm is not None:
            return warm, None
        return self._cold_start(spec, log)

    def _pick(self, spec: FunctionSpec) -> tuple[Environment | None, list[Environment], list[Environment]]:
        """Claim an idle warm environment, or reserve memory for a cold one (evicting LRU idle ones)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("executor is shut down")
            dead = []
            for env in reversed(self._envs.get(spec.environment_key, [])):  # most recently used first
                if env.busy:
                    continue
                if env.alive():
                    env.busy = True
                    self._forget_dead(dead)
                    return env, dead, []
                dead.append(env)
            self._forget_dead(dead)
            victims = self._make_room(spec.memory_mb)
            self._reserved_mb += spec.memory_mb
            return None, dead, victims

    def _forget_dead(self, dead: list[Environment]) -> None:
        for env in dead:
            self._forget(env)
            self._reserved_mb -= env.memory_mb

    def _make_room(self, memory_mb: int) -> list[Environment]:
        """Pick idle environments, least recently used first, until memory_mb fits (lock held)."""
        budget = self.config.memory_budget_mb
        idle = sorted((e for g in self._envs.values() for e in g if not e.busy), key=lambda e: e.last_used)
        # Check first, so a request that cannot fit evicts nobody.
        if self._reserved_mb - sum(e.memory_mb for e in idle) + memory_mb > budget:
            raise CapacityError(
                f"memory budget {budget} MB is taken by busy environments ({self._reserved_mb} MB reserved)"
            )
        victims = []
        while self._reserved_mb + memory_mb > budget:
            env = idle.pop(0)
            self._forget(env)
            self._reserved_mb -= env.memory_mb
            victims.append(env)
        return victims

    def _forget(self, env: Environment) -> None:
        group = self._envs.get(env.key, [])
        if env in group:
            group.remove(env)
        if not group:
            self._envs.pop(env.key, None)

    def _release(self, env: Environment) -> None:
        with self._lock:
            env.busy = False
            env.last_used = time.monotonic()
            group = self._envs.get(env.key)
            keep = not self._closed and group is not None and env in group
            if keep:
                group.remove(env)
                group.append(env)  # the end of the list is the most recently used
        if not keep:
            self._destroy(env)

    def _discard(self, env: Environment) -> None:
        with self._lock:
            self._forget(env)
        self._destroy(env)

    def _destroy(self, env: Environment, release_budget: bool = True) -> None:
        if env.closed:
            return
        env.kill()
        env.close()
        if release_budget:
            with self._lock:
                self._reserved_mb -= env.memory_mb
        if env.cgroup is not None and not env.cgroup.remove(timeout_s=0.5):
            with self._lock:
                self._stale_cgroups.append(env.cgroup)

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

    def _zygote_spec(self, spec: FunctionSpec, env_id: str, cgroup: EnvCgroup | None) -> dict:
        task_root = "/var/task" if self.tier == TIER_NAMESPACES else os.path.abspath(spec.code_dir)
        return {
            "tier": self.tier,
            "code_dir": os.path.abspath(spec.code_dir),
            "task_root": task_root,
            "handler": spec.handler,
            "env": self._sandbox_env(spec, env_id, task_root),
            "tmp_mb": spec.tmp_mb,
            "network": spec.network,
            "uid": self.config.sandbox_uid,
            "gid": self.config.sandbox_uid,
            "cgroup_attach": cgroup.attach_files if cgroup else [],
            "rlimit_as_mb": None if cgroup else spec.memory_mb,
            "rlimit_nproc": None if cgroup else 1024,
            "layer_dirs": [os.path.abspath(d) for d in self.config.layer_dirs],
            "runtime_dir": RUNTIME_DIR,
            "rootfs_dir": self._rootfs,
            "timeout_s": spec.timeout_s,
        }

    def _cold_start(self, spec: FunctionSpec, log: LogBuffer) -> tuple[Environment, float]:
        t0 = time.perf_counter()
        env_id = uuid.uuid4().hex
        try:
            cgroup = (
                EnvCgroup(self.cgroup_version, f"env-{os.getpid()}-{env_id}", spec.memory_mb, self.config.pids_max)
                if self.cgroup_version
                else None
            )
        except OSError:
            with self._lock:
                self._reserved_mb -= spec.memory_mb
            raise
        req_r, req_w = os.pipe2(os.O_CLOEXEC)
        resp_r, resp_w = os.pipe2(os.O_CLOEXEC)
        log_r, log_w = os.pipe2(os.O_CLOEXEC)
        env = Environment(
            id=env_id,
            key=spec.environment_key,
            memory_mb=spec.memory_mb,
            req_w=req_w,
            resp_r=resp_r,
            log_r=log_r,
            cgroup=cgroup,
            tier=self.tier,
        )
        try:
            try:
                env.adopt_pid(self._zygote.spawn(self._zygote_spec(spec, env_id, cgroup), [req_r, resp_w, log_w]))
            finally:
                # The sandbox owns its ends now; ours would hide its EOF if it dies.
                for fd in (req_r, resp_w, log_w):
                    os.close(fd)
            header, _ = env.exchange(b"", time.monotonic() + self.config.init_timeout_s, log, "ready")
            env.init_error = header.get("init_error")
        except (ZygoteError, EnvironmentGone, DeadlineExceeded, OSError) as exc:
            env.init_error = self._init_failure(env, exc)
            self._destroy(env)
        init_ms = (time.perf_counter() - t0) * 1000
        if not env.closed:
            if env.init_error and env.init_error["errorType"] == "Sandbox.SetupError":
                self._destroy(env)
            else:
                with self._lock:
                    self._envs.setdefault(spec.environment_key, []).append(env)
        return env, init_ms

    def _init_failure(self, env: Environment, exc: Exception) -> dict:
        if isinstance(exc, DeadlineExceeded):
            message = f"Init timed out after {self.config.init_timeout_s:.2f} seconds"
            return {"errorType": "Sandbox.Timedout", "errorMessage": message}
        if isinstance(exc, EnvironmentGone):
            env.kill()
            if env.cgroup is not None and env.cgroup.oom_kills() > 0:
                message = f"Runtime exited during init: signal: killed (memory limit {env.memory_mb} MB)"
                return {"errorType": "Runtime.OutOfMemory", "errorMessage": message}
            return {"errorType": "Runtime.ExitError", "errorMessage": f"Runtime exited during init ({exc})"}
        return {"errorType": "Sandbox.SetupError", "errorMessage": f"cold start failed: {exc!r}"}

    def _setup_failure(self, env: Environment, init_ms: float | None, log: LogBuffer) -> InvokeResult:
        error = env.init_error or {"errorType": "Sandbox.SetupError", "errorMessage": "unknown"}
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

    def _run(self, env: Environment, spec: FunctionSpec, request: InvokeRequest, log: LogBuffer) -> InvokeResult:
        header = {
            "request_id": request.request_id,
            "arn": request.invoked_function_arn,
            "attempt": request.attempt,
            "deadline_ms": int(time.time() * 1000 + spec.timeout_s * 1000),
        }
        oom_before = 0
        if env.cgroup is not None:
            env.cgroup.reset_peak()
            oom_before = env.cgroup.oom_kills()
        t0 = time.perf_counter()
        deadline = time.monotonic() + spec.timeout_s
        try:
            meta, body = env.exchange(encode(header, request.event), deadline, log, "result")
        except DeadlineExceeded:
            env.kill()
            env.drain_log(log)
            message = f"Task timed out after {spec.timeout_s:.2f} seconds"
            return self._result(
                env, "timed_out", _error_payload("Sandbox.Timedout", message), "Sandbox.Timedout", t0, log
            )
        except EnvironmentGone as exc:
            return self._died(env, t0, log, str(exc), oom_before)
        status = "succeeded" if meta.get("ok") else "failed"
        # duration_ms stays the worker's own measure (billing must not trust the
        # sandbox); cpu and maxrss can only come from inside and are informational.
        result = self._result(env, status, body, meta.get("error_type"), t0, log)
        result.cpu_ms = max(float(meta.get("cpu_ms") or 0), 0.0)
        if not result.peak_memory_mb:
            result.peak_memory_mb = max(float(meta.get("maxrss_kb") or 0), 0.0) / 1024
        return result

    def _died(self, env: Environment, t0: float, log: LogBuffer, why: str, oom_before: int) -> InvokeResult:
        env.kill()
        if env.cgroup is not None and env.cgroup.oom_kills() > oom_before:
            message = f"Runtime exited with error: signal: killed (memory limit {env.memory_mb} MB)"
            return self._result(
                env, "out_of_memory", _error_payload("Runtime.OutOfMemory", message), "Runtime.OutOfMemory", t0, log
            )
        message = f"Runtime exited without providing a reason ({why})"
        return self._result(env, "crashed", _error_payload("Runtime.ExitError", message), "Runtime.ExitError", t0, log)

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
