"""Run the whole platform as one process tree: embedded Redis, the executor worker, the control worker (beat and
its tasks) and the web server.

Ctrl-C (or SIGTERM) stops every child; children also get SIGTERM from the kernel if this process is killed,
so nothing is orphaned either way. A child that exits on its own is restarted, after a backoff.

Quiet by default: the children log warnings and errors only (beat and the worker otherwise print several INFO
lines a second at idle), this command says one line per start and stop, and the sign-in banner comes last, once
the web server answers and the worker has reported in, so it stays on screen. ``--verbose`` or ``LOG_LEVEL``
brings the detail back.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from redis import RedisError

from console.embedded import redis_start
from console.processes import control_worker_args, die_with_parent, executor_worker_args, stop_all
from console.seed import demo_seed
from functions_app.selectors import executor_hosts

READY_TIMEOUT_S = 60
DETAILED_LEVELS = ("DEBUG", "INFO")


def log_level(*, verbose: bool) -> str:
    """The children's log level: INFO with --verbose, else LOG_LEVEL if set, else WARNING."""
    return "INFO" if verbose else os.environ.get("LOG_LEVEL", "").upper() or "WARNING"


def service_commands(*, python: str, options: dict[str, Any], level: str) -> dict[str, list[str]]:
    """The executor worker, control (beat + its tasks) and web command lines; below INFO, Celery's start-up
    banners are left out too."""
    celery = [python, "-m", "celery", "-A", "console", *([] if level in DETAILED_LEVELS else ["--quiet"])]
    schedule = str(settings.VAR_DIR / "celerybeat-schedule")
    return {
        "worker": [*celery, *executor_worker_args(level=level, concurrency=options["concurrency"])],
        "control": [*celery, *control_worker_args(level=level, schedule=schedule)],
        # The production server (compose runs the same config): many waiting callers, graceful stops.
        "web": [python, "-m", "gunicorn", "-c", str(settings.BASE_DIR / "console" / "gunicorn_conf.py")],
    }


def banner(seed: dict[str, Any] | None, url: str, *, metrics_token_set: bool, level: str) -> list[str]:
    """What a user needs after `make run`: how to sign in (and change or reset the password), the API token, how
    to reach /metrics, and where the logs went. Last, the address."""
    lines = []
    if seed:
        user = seed["username"]
        change = f"change it at {url}account/password/"
        if seed["password"] and seed["created"]:
            lines.append(f"Demo login: {user} / {seed['password']}  (shown once; {change})")
        elif seed["password"]:
            lines.append(f"Demo login: {user} / {seed['password']}  (a new password; {change})")
        else:
            lines.append(f"Demo login: {user}  (its password was shown on the first run; {change})")
        lines.append(
            f"Lost it?    make run RUN_ARGS=--reset-demo-password  (or: {_python()} manage.py changepassword {user})"
        )
        if seed["token"]:
            lines.append(f"API key:    {seed['token']}  (shown once: keep it; more keys under {url}account/)")
            lines.append(f"Try:        curl -H 'Authorization: Token {seed['token']}' {url}api/v1/functions/")
        else:
            lines.append(
                f"API key:    shown on the first run only; make another under {url}account/ "
                f"(or: {_python()} manage.py api_key_create {user})"
            )
    lines.append(_metrics_line(seed, url, metrics_token_set=metrics_token_set))
    if level not in DETAILED_LEVELS:
        lines.append(f"Logs:       {level.lower()} and above only; LOG_LEVEL=INFO or RUN_ARGS=--verbose for the detail")
    lines.append(f"Ephemera is running at {url}  (API docs: {url}api/v1/docs/). Press Ctrl-C to stop.")
    return lines


def _metrics_line(seed: dict[str, Any] | None, url: str, *, metrics_token_set: bool) -> str:
    scraper = (
        f'curl -H "Authorization: Bearer $METRICS_TOKEN" {url}metrics'
        if metrics_token_set
        else "for Prometheus, start with METRICS_TOKEN=<a long secret> and send 'Authorization: Bearer <that secret>'"
    )
    if seed and seed["is_staff"]:
        return f"Metrics:    {url}metrics opens signed in as {seed['username']}; {scraper}"
    return f"Metrics:    {url}metrics is for staff sessions; {scraper}"


def _python() -> str:
    """This interpreter as the user would type it: .venv/bin/python from the project, else its full path."""
    relative = os.path.relpath(sys.executable, settings.BASE_DIR)
    return sys.executable if relative.startswith("..") else relative


class Command(BaseCommand):
    help = "Run web + worker + beat (+ embedded Redis) in one process tree. Ctrl-C stops everything."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--concurrency", type=int, default=4, help="Invocation slots of the worker.")
        parser.add_argument("--no-seed", action="store_true", help="Do not create the demo user and function.")
        parser.add_argument(
            "--reset-demo-password", action="store_true", help="Give the demo user a new password and print it."
        )
        parser.add_argument(
            "--verbose", action="store_true", help="Every process logs at INFO (the default is warnings and errors)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["no_seed"] and options["reset_demo_password"]:
            raise CommandError("--reset-demo-password needs the demo user: leave out --no-seed.")
        self._lock = _only_instance(settings.VAR_DIR)
        _port_free(options["host"], options["port"])
        self._stopping = False
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        level = log_level(verbose=options["verbose"])
        children: list[subprocess.Popen] = []  # the services, then the embedded Redis; restarts replace entries
        try:
            if settings.EMBEDDED_REDIS:
                children.append(self._restart("redis"))
            self._say("Applying migrations")
            call_command("migrate", interactive=False, verbosity=0)
            seed = None if options["no_seed"] else demo_seed(reset_password=options["reset_demo_password"])
            children[:0] = self._start_services(options, level)
            self._wait_ready(children[0], children, options)
            url = f"http://{options['host']}:{options['port']}/"
            for line in banner(seed, url, metrics_token_set=bool(settings.METRICS_TOKEN), level=level):
                self._say(line)
            self._supervise(children)
        finally:
            self._say("Stopping")
            stop_all([child for child in children if _name(child) != "redis"])  # Redis last: they use it
            stop_all([child for child in children if _name(child) == "redis"])
            self._say("Stopped")

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stopping = True

    def _start_services(self, options: dict[str, Any], level: str) -> list[subprocess.Popen]:
        self._commands = service_commands(python=sys.executable, options=options, level=level)
        self._options = options
        self._level = level
        return [self._start(name) for name in self._commands]

    def _start(self, name: str) -> subprocess.Popen:
        quiet = self._level not in DETAILED_LEVELS
        env = {
            **os.environ,
            "LOG_LEVEL": self._level,
            "GUNICORN_BIND": f"{self._options['host']}:{self._options['port']}",
            "GUNICORN_WORKERS": "2",
            "GUNICORN_LOGLEVEL": self._level.lower(),
            "GUNICORN_ACCESSLOG": "" if quiet else "-",  # one line per request only when asked for
        }
        self._say(f"Starting {name}")
        process = subprocess.Popen(self._commands[name], cwd=settings.BASE_DIR, preexec_fn=die_with_parent, env=env)
        process.ephemera_name = name  # type: ignore[attr-defined]
        return process

    def _wait_ready(
        self, worker_process: subprocess.Popen, processes: list[subprocess.Popen], options: dict[str, Any]
    ) -> None:
        """Until the web server accepts connections and the worker has published its health, so that the banner
        is the last thing printed; a child that exits, Ctrl-C or the timeout end the wait early."""
        worker_host = f"{socket.gethostname()}:{worker_process.pid}"
        web = worker = None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self._stopping and time.monotonic() < deadline:
            if any(process.poll() is not None for process in processes):
                return
            web = web or _accepts(options["host"], options["port"])
            worker = worker or _health(worker_host)
            if web and worker:
                secure = "" if worker.get("secure") else ", NOT SECURE: user code is not isolated"
                self._say(f"Worker ready (sandbox tier: {worker.get('tier')}{secure})")
                return
            time.sleep(0.2)
        if not self._stopping:
            self._say(f"WARNING: the {'worker' if web else 'web server'} is not up after {READY_TIMEOUT_S} s")

    def _supervise(self, processes: list[subprocess.Popen]) -> None:
        """Restart a child that exits (a worker killed by a Redis restart, say) after a backoff that doubles
        with each quick crash, so one that cannot start does not spin. Ctrl-C or SIGTERM ends it."""
        restarts = {id(process): Restart() for process in processes}
        while not self._stopping:
            for position, process in enumerate(processes):
                if process.poll() is None:
                    continue
                restart = restarts.pop(id(process))
                name = _name(process)
                delay = restart.next_delay()
                self._say(f"{name} exited with code {process.returncode}; restarting it in {delay:.0f} s")
                if self._sleep(delay):
                    return
                replacement = self._restart(name)
                processes[position] = replacement
                restarts[id(replacement)] = restart
            time.sleep(0.2)

    def _restart(self, name: str) -> subprocess.Popen:
        if name != "redis":
            return self._start(name)
        self._say(f"Starting embedded Redis on {settings.REDIS_SOCKET}")
        process = redis_start(settings.VAR_DIR, settings.REDIS_SOCKET)
        process.ephemera_name = "redis"  # type: ignore[attr-defined]
        return process

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless asked to stop meanwhile; True when stopping."""
        deadline = time.monotonic() + seconds
        while not self._stopping and time.monotonic() < deadline:
            time.sleep(0.1)
        return self._stopping

    def _say(self, message: str) -> None:
        self.stdout.write(f"[ephemera] {message}")
        self.stdout.flush()


def _only_instance(var_dir: Path) -> int:
    """Hold var/'s lock for as long as this process lives: a second `make run` on the same var/ would share its
    database and replace its Redis socket (and remove it on exit), breaking the first."""
    path = var_dir / "standalone.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise CommandError(
            f"Ephemera is already running on {var_dir} (pid {holder}). Stop it first (Ctrl-C), or give this one "
            "a directory of its own: EPHEMERA_VAR_DIR=/some/other/dir make run"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise CommandError(
                f"Port {port} on {host} is taken ({exc.strerror}). Stop what uses it, or pick another port: "
                f"make run RUN_ARGS='--port {port + 123}'"
            ) from None


def _name(process: subprocess.Popen) -> str:
    return process.ephemera_name  # type: ignore[attr-defined]


class Restart:
    """The backoff of one child: 1 s, doubling up to 30 s while it keeps crashing within a minute of its start."""

    FIRST_S, MAX_S, STABLE_S = 1.0, 30.0, 60.0

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.delay = 0.0

    def next_delay(self) -> float:
        stable = time.monotonic() - self.started > self.STABLE_S
        self.delay = self.FIRST_S if stable or not self.delay else min(self.delay * 2, self.MAX_S)
        self.started = time.monotonic() + self.delay
        return self.delay


def _health(host: str) -> dict[str, Any] | None:
    """The health a worker publishes once its executor is up (sandbox tier), or None before that."""
    try:
        return next((health for health in executor_hosts() if health.get("host") == host), None)
    except RedisError:
        return None


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
