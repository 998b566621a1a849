"""A seeded chaos soak: hundreds of async invocations over two workers while a nemesis SIGKILLs a random worker
every few seconds; then a history checker verifies the delivery invariants (isolation-and-delivery.md §11).

`make chaos` runs it on a fresh embedded platform under var/chaos. Exit status 1 if any invariant is broken.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from typing import Any

import psutil
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db.models import Count

from console.embedded import redis_start
from console.processes import control_worker_args, die_with_parent, executor_worker_args, stop_all
from console.redis import redis_client
from functions_app import services
from functions_app.invocations import invocation_accept
from functions_app.models import Invocation, InvocationType

HANDLER = """
import random, time

def handler(event, context):
    rng = random.Random(event["n"] * 1000 + context.attempt)
    time.sleep(rng.uniform(0.05, 0.6))
    if event["poison"]:
        raise RuntimeError("poison event %d" % event["n"])
    return {"n": event["n"], "attempt": context.attempt}
"""

# Fast leases and sweeps so that a killed worker's invocations are taken back within seconds.
CHAOS_ENV = {
    "LEASE_S": "2",
    "SWEEP_INTERVAL_S": "0.5",
    "REPUBLISH_AFTER_S": "3",
    "RETRY_BACKOFF_S": "0.3",
}


class Command(BaseCommand):
    help = "Seeded chaos soak: async invocations while workers are SIGKILLed; prints the history check."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--seed", type=int, default=7)
        parser.add_argument("--invocations", type=int, default=300)
        parser.add_argument("--duration", type=float, default=60.0, help="Seconds of nemesis.")
        parser.add_argument("--workers", type=int, default=2)
        parser.add_argument("--drain-timeout", type=float, default=180.0)

    def handle(self, *args: Any, **options: Any) -> None:
        os.environ.update(CHAOS_ENV)
        for name, value in CHAOS_ENV.items():
            setattr(settings, name, float(value))
        rng = random.Random(options["seed"])
        infrastructure = [redis_start(settings.VAR_DIR, settings.REDIS_SOCKET)] if settings.EMBEDDED_REDIS else []
        workers: list[subprocess.Popen] = []
        try:
            call_command("migrate", interactive=False, verbosity=0)
            workers = [self._worker(index) for index in range(options["workers"])]
            beat = self._spawn(control_worker_args(level="WARNING", schedule=str(settings.VAR_DIR / "chaos-beat")))
            accepted = self._soak(rng, workers, options)
            self._say("nemesis done; waiting for the queue to drain")
            self._drain(accepted, options["drain_timeout"])
            stop_all([*workers, beat], grace_s=20)
            report = self._check(accepted)
        finally:
            stop_all([w for w in workers if w.poll() is None], grace_s=5)
            stop_all(infrastructure)
        self.stdout.write(json.dumps(report, indent=2))
        violations = {k: v for k, v in report["violations"].items() if v}
        if violations:
            raise CommandError(f"chaos check failed: {violations}")
        self._say("chaos check passed: 0 lost, 0 duplicated, 0 over-attempted, queue drained, no sandbox left")

    def _spawn(self, arguments: list[str]) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "console", *arguments],
            cwd=settings.BASE_DIR,
            env=os.environ.copy(),
            preexec_fn=die_with_parent,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _worker(self, index: int) -> subprocess.Popen:
        return self._spawn(executor_worker_args(level="WARNING", name=f"chaos{index}-{time.time_ns()}@%h"))

    def _soak(self, rng: random.Random, workers: list[subprocess.Popen], options: dict[str, Any]) -> list[str]:
        """Submit the invocations spread over the nemesis period, killing and restarting workers as it goes."""
        user = get_user_model().objects.create_user(f"chaos-{options['seed']}-{time.time_ns()}")
        function = services.function_create(
            owner=user,
            name="chaos",
            handler="app.handler",
            timeout_s=10,
            code=services.CodeUpload(files={"app.py": HANDLER}),
        )
        total, duration = options["invocations"], options["duration"]
        started = time.monotonic()
        next_kill = started + rng.uniform(3, 7)
        accepted: list[str] = []
        kills = 0
        while time.monotonic() - started < duration or len(accepted) < total:
            due = min(total, int(total * (time.monotonic() - started) / duration) + 1)
            while len(accepted) < due:
                n = len(accepted)
                event = json.dumps({"n": n, "poison": rng.random() < 0.05}).encode()
                invocation = invocation_accept(
                    owner=user,
                    function=function,
                    qualifier="",
                    raw_payload=event,
                    invocation_type=InvocationType.ASYNC,
                )
                accepted.append(str(invocation.id))
            if time.monotonic() >= next_kill and time.monotonic() - started < duration:
                victim = rng.randrange(len(workers))
                workers[victim].kill()
                workers[victim].wait()
                workers[victim] = self._worker(victim)
                kills += 1
                self._say(f"nemesis: SIGKILLed worker {victim} ({kills} so far), {len(accepted)} accepted")
                next_kill = time.monotonic() + rng.uniform(3, 7)
            time.sleep(0.05)
        self.kills = kills
        return accepted

    def _drain(self, accepted: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            open_rows = (
                Invocation.objects.filter(pk__in=accepted)
                .exclude(status__in=["succeeded", "failed", "timed_out", "expired"])
                .count()
            )
            if open_rows == 0:
                return
            time.sleep(1)

    def _check(self, accepted: list[str]) -> dict[str, Any]:
        rows = {str(row.pk): row for row in Invocation.objects.filter(pk__in=accepted)}
        terminal = {"succeeded", "failed", "timed_out", "expired"}
        # The server's own history: the fenced terminal write increments terminal_writes in the same UPDATE.
        writes = {i: row.terminal_writes for i, row in rows.items()}
        lost = [i for i in accepted if i not in rows or rows[i].status not in terminal]
        duplicated = [i for i in accepted if writes.get(i, 0) > 1]
        unrecorded = [i for i in accepted if i in rows and rows[i].status in terminal and writes.get(i, 0) != 1]
        over_attempted = [i for i, row in rows.items() if row.attempt > row.max_attempts]
        queue_left = redis_client().llen("celery")
        sandboxes_left = [
            p.pid
            for p in psutil.process_iter(["uids"])
            if p.info["uids"] and p.info["uids"].real in settings.SANDBOX_UIDS
        ]
        statuses = dict(Invocation.objects.filter(pk__in=accepted).values_list("status").annotate(n=Count("pk")))
        return {
            "accepted": len(accepted),
            "workers_killed": self.kills,
            "statuses": statuses,
            "retried": sum(1 for row in rows.values() if row.attempt > 1),
            "violations": {
                "lost": len(lost),
                "duplicated": len(duplicated),
                "terminal_writes_not_one": len(unrecorded),
                "over_attempted": len(over_attempted),
                "queue_not_drained": queue_left,
                "sandbox_processes_left": len(sandboxes_left),
            },
        }

    def _say(self, message: str) -> None:
        self.stdout.write(f"[chaos] {message}")
        self.stdout.flush()
