"""Run the whole platform as one process tree: embedded Redis, Celery worker, Celery beat and the web server.

Ctrl-C (or SIGTERM) stops every child; children also get SIGTERM from the kernel if this process is killed,
so nothing is orphaned either way.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from console.embedded import redis_start
from console.processes import die_with_parent, stop_all
from console.seed import demo_seed


class Command(BaseCommand):
    help = "Run web + worker + beat (+ embedded Redis) in one process tree. Ctrl-C stops everything."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--concurrency", type=int, default=4, help="Invocation slots of the worker.")
        parser.add_argument("--no-seed", action="store_true", help="Do not create the demo user and function.")

    def handle(self, *args: Any, **options: Any) -> None:
        self._stopping = False
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        infrastructure: list[subprocess.Popen] = []
        services: list[subprocess.Popen] = []
        try:
            if settings.EMBEDDED_REDIS:
                self._say(f"Starting embedded Redis on {settings.REDIS_SOCKET}")
                infrastructure.append(redis_start(settings.VAR_DIR, settings.REDIS_SOCKET))
            self._say("Applying migrations")
            call_command("migrate", interactive=False, verbosity=0)
            url = f"http://{options['host']}:{options['port']}/"
            if not options["no_seed"]:
                self._print_seed(demo_seed(), url)
            services = self._start_services(options)
            self._say(f"Ephemera is running at {url}  (API docs: {url}api/v1/docs/). Press Ctrl-C to stop.")
            self._supervise(services + infrastructure)
        finally:
            self._say("Stopping")
            stop_all(services)
            stop_all(infrastructure)
            self._say("Stopped")

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stopping = True

    def _start_services(self, options: dict[str, Any]) -> list[subprocess.Popen]:
        python = sys.executable
        celery = [python, "-m", "celery", "-A", "console"]
        commands = {
            "worker": [
                *celery,
                "worker",
                "--pool",
                "threads",
                "--concurrency",
                str(options["concurrency"]),
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            "beat": [
                *celery,
                "beat",
                "--loglevel",
                "INFO",
                "--schedule",
                str(settings.VAR_DIR / "celerybeat-schedule"),
            ],
            "web": [python, "manage.py", "runserver", "--noreload", f"{options['host']}:{options['port']}"],
        }
        started = []
        for name, command in commands.items():
            self._say(f"Starting {name}")
            started.append(subprocess.Popen(command, cwd=settings.BASE_DIR, preexec_fn=die_with_parent, env=os.environ))
        return started

    def _supervise(self, processes: list[subprocess.Popen]) -> None:
        while not self._stopping:
            for process in processes:
                if process.poll() is not None:
                    self._say(f"{' '.join(map(str, process.args[:4]))} exited with {process.returncode}; stopping all")
                    return
            time.sleep(0.2)

    def _print_seed(self, seed: dict[str, Any], url: str) -> None:
        if seed["created"]:
            self._say(f"Demo login: {seed['username']} / {seed['password']}  (shown once; change it in /admin/)")
        else:
            self._say(f"Demo login: {seed['username']} (password shown on the first run)")
        self._say(f"API token:  {seed['token']}")
        self._say(f"Try:        curl -H 'Authorization: Token {seed['token']}' {url}api/v1/functions/")

    def _say(self, message: str) -> None:
        self.stdout.write(f"[ephemera] {message}")
        self.stdout.flush()
