"""The chaos soak's history checker: the clients' history (every answer), the witness's (every run a handler
started and finished), the nemesis's (every fault) and the database's rows, checked against the delivery invariants
(no loss, one visible result, attempts within bounds, no false WorkerLost, bounded recovery, outages answered 503 with
Retry-After) and for leftovers (queue, sandbox processes, cgroups, tracebacks in any process's output)."""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from django.conf import settings

from functions_app.lifecycle import WORKER_LOST
from functions_app.models import Invocation
from functions_app.soak import Call, Fault

TERMINAL = {"succeeded", "failed", "timed_out", "expired"}


def recovery_bound_s() -> float:
    """What the design promises: a lease, a sweep, and two seconds of slack."""
    return settings.LEASE_S + settings.SWEEP_INTERVAL_S + 2


def history_check(
    *,
    calls: list[Call],
    heard: list[tuple[str, str, int, float]],
    faults: list[Fault],
    log_dir: Path,
) -> dict[str, Any]:
    acknowledged = {call.invocation_id: call for call in calls if call.invocation_id}
    rows = {str(row.pk): row for row in Invocation.objects.filter(pk__in=list(acknowledged))}
    starts = Counter((invocation_id, attempt) for phase, invocation_id, attempt, _ in heard if phase == "start")
    done = {(invocation_id, attempt): at for phase, invocation_id, attempt, at in heard if phase == "done"}
    executions = Counter(invocation_id for invocation_id, _ in starts)
    kills = sorted((fault.at, fault.killed_pid) for fault in faults if fault.killed_pid)

    lost = [i for i in acknowledged if i not in rows or rows[i].status not in TERMINAL]
    false_lost, true_lost = _worker_lost(rows, done, kills)
    rerun = _completed_then_rerun(rows, done, kills)
    violations = {
        "lost": len(lost),
        "duplicated": sum(1 for row in rows.values() if row.terminal_writes > 1),
        "terminal_writes_not_one": sum(
            1 for row in rows.values() if row.status in TERMINAL and row.terminal_writes != 1
        ),
        "over_attempted": sum(
            1 for i, row in rows.items() if row.attempt > row.max_attempts or executions[i] > row.max_attempts
        ),
        "result_not_of_the_last_attempt": sum(1 for row in rows.values() if _result_attempt_differs(row)),
        "false_worker_lost": len(false_lost),
        "completed_then_rerun_without_a_kill": len(rerun),
        "recovery_over_bound": sum(1 for fault in _faults(faults, rows) if fault["over_bound"]),
        "bad_5xx": 0,
        "witness_heard_nothing": int(not heard),
    }
    http = _http_causes(calls, faults, rows, false_lost)
    violations["bad_5xx"] = sum(n for cause, n in http.items() if cause.startswith("BAD"))
    return {
        "settings": {
            "LEASE_S": settings.LEASE_S,
            "SWEEP_INTERVAL_S": settings.SWEEP_INTERVAL_S,
            "recovery_bound_s": recovery_bound_s(),
        },
        "traffic": {
            "calls": len(calls),
            "async": sum(1 for call in calls if call.kind == "async"),
            "sync": sum(1 for call in calls if call.kind == "sync"),
            "acknowledged": len(acknowledged),
            "never_acknowledged": len(calls) - len(acknowledged),
            "longer_than_a_lease": sum(1 for call in calls if call.sleep > settings.LEASE_S),
            "statuses": dict(Counter(row.status for row in rows.values())),
            "retried": sum(1 for row in rows.values() if row.attempt > 1),
            "executions_heard": sum(executions.values()),
            "worker_lost_with_their_worker": len(true_lost),
        },
        "faults": _faults(faults, rows),
        "http_non_2xx": http,
        "tracebacks": tracebacks(log_dir),
        "violations": violations,
        "examples": {"lost": lost[:5], "false_worker_lost": false_lost[:5], "rerun": rerun[:5]},
    }


def _result_attempt_differs(row: Invocation) -> bool:
    if row.status != "succeeded":
        return False
    try:
        return json.loads(row.result)["attempt"] != row.attempt
    except (ValueError, KeyError, TypeError):
        return True


def _killed_after(kills: list[tuple[float, int]], pid: int | None, since: float) -> bool:
    return any(killed_pid == pid and at >= since for at, killed_pid in kills)


def _worker_lost(
    rows: dict[str, Invocation], done: dict[tuple[str, int], float], kills: list[tuple[float, int]]
) -> tuple[list[str], list[str]]:
    """WorkerLost rows split by the witness: false if the handler finished and its worker was not killed after."""
    false_lost, true_lost = [], []
    for i, row in rows.items():
        if row.error_type != WORKER_LOST:
            continue
        finished = done.get((i, row.attempt))
        pid = int(row.worker_host.rsplit(":", 1)[1]) if row.worker_host else None
        if finished is not None and not _killed_after(kills, pid, finished):
            false_lost.append(i)
        else:
            true_lost.append(i)
    return false_lost, true_lost


def _completed_then_rerun(
    rows: dict[str, Invocation], done: dict[tuple[str, int], float], kills: list[tuple[float, int]]
) -> list[str]:
    """Attempts that finished (the witness heard them) yet the invocation ran again, with no worker killed in the
    moment between the handler's end and its result's write: a result lost by the platform, not by a crash."""
    rerun = []
    for (i, attempt), at in done.items():
        row = rows.get(i)
        if row is None or row.attempt <= attempt:
            continue
        if not any(at - 1 <= killed_at <= at + 3 for killed_at, _ in kills):
            rerun.append(i)
    return rerun


def _faults(faults: list[Fault], rows: dict[str, Invocation]) -> list[dict[str, Any]]:
    finished = sorted(row.finished_at.timestamp() for row in rows.values() if row.finished_at)
    report = []
    for fault in faults:
        first = next((at for at in finished if at > fault.at), None)
        first_s = round(first - fault.at, 2) if first else None
        leases_s = round(fault.leases_recovered_at - fault.at, 2) if fault.leases_recovered_at else None
        worst = max(value if value is not None else float("inf") for value in (first_s, leases_s))
        report.append(
            {
                "kind": fault.kind,
                "detail": fault.detail,
                "outage_s": round(fault.back_at - fault.at, 2) if fault.back_at else None,
                "running_at_injection": len(fault.held),
                "first_completion_s": first_s,
                "leases_recovered_s": leases_s,
                "over_bound": worst > recovery_bound_s(),
            }
        )
    return report


def _http_causes(
    calls: list[Call], faults: list[Fault], rows: dict[str, Invocation], false_lost: list[str]
) -> dict[str, int]:
    """Every non-2xx answer by cause, and the fault it came during. BAD marks a 5xx an outage must not produce: any
    but 503 with Retry-After, and 502 Platform.WorkerLost where the worker was not lost."""
    causes: Counter = Counter()
    for call in calls:
        for answer in call.answers:
            status = answer["status"]
            if 200 <= status < 300:
                continue
            during = _during(faults, answer["at"])
            cause = f"{status} {answer.get('type', '')}".strip()
            if status == 503:
                cause += " +Retry-After" if answer.get("retry_after") else " without Retry-After"
            bad = status == 0 or (status >= 500 and not (status == 503 and answer.get("retry_after")))
            if status == 502 and answer.get("type") == WORKER_LOST and call.invocation_id not in false_lost:
                bad = False  # its worker was SIGKILLed mid-run: the caller is told so, as designed
            causes[f"{'BAD ' if bad else ''}{cause} ({during})"] += 1
    return dict(causes)


def _during(faults: list[Fault], at: float) -> str:
    for fault in faults:
        if fault.at - 1 <= at <= fault.at + recovery_bound_s():
            return f"during {fault.kind}"
    return "no fault"


# A log entry's first line: "[2026-11-27 15:53:58,167: ERROR/Beat] message"; its traceback follows it.
_ENTRY = re.compile(r"^\[\d{4}-\d\d-\d\d [^\]]*\] ", re.MULTILINE)
# Tracebacks an outage explains, by the message of their log entry: Celery logs them with their traceback.
EXPLAINED = {
    # A task finished while Redis was away: its late ack is lost with the connection. The message stays unacked in
    # Redis, comes back after the visibility timeout, and its claim finds the invocation finished.
    "Couldn't ack": "a late ack lost with its broker connection",
    # Beat could not publish a tick while Redis was away; the next tick is published on time.
    "Couldn't apply scheduled task": "a beat tick not published while Redis was away",
}


def tracebacks(log_dir: Path) -> dict[str, dict[str, int]]:
    """Log entries with a traceback in every process's output, by message and final exception: those an outage
    explains, and the others (each one a violation)."""
    found: dict[str, Counter] = {"explained": Counter(), "unexplained": Counter()}
    for path in sorted(log_dir.glob("*.log")):
        text = path.read_text(errors="replace")
        bounds = [0, *(match.start() for match in _ENTRY.finditer(text)), len(text)]
        for start, end in itertools.pairwise(bounds):
            entry = text[start:end]
            if "Traceback (most recent call last)" not in entry:
                continue
            lines = [line for line in entry.splitlines() if line.strip()]
            message = _ENTRY.sub("", lines[0])[:100]
            exception = [line for line in lines if not line[0].isspace()][-1][:120]
            reason = next((why for marker, why in EXPLAINED.items() if marker in message), None)
            key = f"{path.name.split('.')[0]}: {reason or message} -> {exception}"
            found["explained" if reason else "unexplained"][key] += 1
    return {kind: dict(counter) for kind, counter in found.items()}
