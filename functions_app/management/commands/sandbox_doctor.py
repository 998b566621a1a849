"""`manage.py sandbox_doctor [--strict] [--json]`: what this host's sandbox is, and how it falls short of the
production shape. Run it where the executor runs (the worker's container or host). With --strict it exits non-zero
when anything falls short; `manage.py check --deploy` runs the same check when PRODUCTION=1."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from functions_app.worker import sandbox_report


class Command(BaseCommand):
    help = "Print the sandbox doctor's report; with --strict, fail when the host is weaker than production's shape."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--strict", action="store_true", help="Exit 1 when the sandbox falls short.")
        parser.add_argument("--json", action="store_true", help="The whole report as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        report = sandbox_report()
        if options["json"]:
            self.stdout.write(json.dumps(report, indent=2))
        else:
            self.stdout.write(_render(report))
        if options["strict"] and report["production_shortfalls"]:
            raise CommandError(
                "the sandbox is weaker than the production shape: " + "; ".join(report["production_shortfalls"])
            )


def _render(report: dict) -> str:
    checks = report["checks"]
    lines = [f"tier: {report['tier']} ({'secure' if report['secure'] else 'NOT SECURE'})"]
    lines += [f"  {name}: {value}" for name, value in checks.items()]
    lines += ["reasons:", *(f"  - {reason}" for reason in report["reasons"] or ["none"])]
    shortfalls = report["production_shortfalls"]
    lines += ["short of the production shape:", *(f"  - {s}" for s in shortfalls or ["nothing"])]
    return "\n".join(lines)
