"""Usage and cost of every owner for a month (or any period), as CSV or JSON on stdout; progress on stderr."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from console.exceptions import ServiceError
from metrics_app import reports


class Command(BaseCommand):
    help = "Print a usage and cost report from the roll-ups, e.g. usage_report --month 2026-11 --format csv."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--month", help="A calendar month, e.g. 2026-11 (UTC).")
        parser.add_argument("--start", help="ISO date-time, with --end, instead of --month.")
        parser.add_argument("--end", help="ISO date-time (exclusive).")
        parser.add_argument("--group-by", choices=list(reports.GROUPINGS), default="function")
        parser.add_argument("--format", choices=["csv", "json"], default="csv")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            start, end = self._period(options)
            self.stderr.write(f"Reporting {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC by {options['group_by']}…")
            report = reports.usage_report(owner=None, start=start, end=end, group_by=options["group_by"])
        except ServiceError as exc:
            raise CommandError(exc.message) from None
        self.stderr.write(
            f"{len(report.rows)} rows from {report.granularity} roll-ups; total ${report.totals['total_usd']}"
        )
        if options["format"] == "json":
            self.stdout.write(json.dumps(reports.report_json(report), indent=2))
        else:
            self.stdout.write(reports.report_csv(report), ending="")

    def _period(self, options: dict[str, Any]) -> tuple[datetime, datetime]:
        if options["month"]:
            return reports.month_period(options["month"])
        if not (options["start"] and options["end"]):
            raise CommandError("Give --month, or both --start and --end.")
        try:
            start, end = (datetime.fromisoformat(options[name]) for name in ("start", "end"))
        except ValueError as exc:
            raise CommandError(f"Not an ISO date-time: {exc}") from None
        start, end = (moment if moment.tzinfo else moment.replace(tzinfo=UTC) for moment in (start, end))
        return start, end
