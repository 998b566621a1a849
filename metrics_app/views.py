"""Console-side views of metrics_app: the cost and usage report page with its CSV / JSON downloads, and the
Prometheus scrape endpoint."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse, QueryDict
from django.shortcuts import render
from django.utils import timezone
from django.utils.crypto import constant_time_compare
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.http import require_GET

from console.auth import SignedInRequest
from console.exceptions import ServiceError
from metrics_app import reports
from metrics_app.charts import report_figure, report_keys
from metrics_app.prometheus import CONTENT_TYPE, prometheus_scrape


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text format, for a staff session or ``Authorization: Bearer <METRICS_TOKEN>``.

    No credentials is 401 (with a Bearer challenge); a wrong token or a non-staff session is 403. With
    METRICS_TOKEN unset, only staff sessions get in.
    """
    header = request.headers.get("Authorization", "")
    token = settings.METRICS_TOKEN
    if header.startswith("Bearer "):
        if not token or not constant_time_compare(header.removeprefix("Bearer ").strip(), token):
            return HttpResponse("Forbidden: wrong metrics token.\n", status=403, content_type="text/plain")
    elif not request.user.is_authenticated:
        response = HttpResponse("Unauthorized: a staff session or a bearer token is needed.\n", status=401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    elif not request.user.is_staff:
        return HttpResponse("Forbidden: staff only.\n", status=403, content_type="text/plain")
    return HttpResponse(prometheus_scrape(), content_type=CONTENT_TYPE)


# ---- the cost and usage report ----------------------------------------------------------------------------------


def _day(text: str, name: str) -> datetime:
    try:
        return datetime.combine(date.fromisoformat(text), datetime.min.time(), tzinfo=UTC)
    except ValueError:
        raise reports.InvalidReportPeriod(f"{name} must be a date like 2026-11-05, not {text!r}.") from None


def report_period(query: QueryDict) -> tuple[datetime, datetime]:
    """``start`` and ``end`` dates (both inclusive, UTC) when either is given, else ``month`` (default this one)."""
    start_text, end_text = query.get("start", "").strip(), query.get("end", "").strip()
    if start_text or end_text:
        if not (start_text and end_text):
            raise reports.InvalidReportPeriod("A custom period needs both a start and an end date.")
        return _day(start_text, "start"), _day(end_text, "end") + timedelta(days=1)
    return reports.month_period(query.get("month", "").strip() or f"{timezone.now():%Y-%m}")


def _report(request: SignedInRequest) -> reports.UsageReport:
    """The report the query asks for: the caller's own functions, or every owner's for staff grouping by owner."""
    start, end = report_period(request.GET)
    group_by = request.GET.get("group_by", "function")
    everyone = group_by == "owner" and request.user.is_staff
    return reports.usage_report(owner=None if everyone else request.user, start=start, end=end, group_by=group_by)


def _figure_json(figure: dict[str, Any]) -> SafeString:
    """A figure as JSON safe inside a <script type="application/json"> element."""
    text = json.dumps(figure)
    return mark_safe(text.replace("<", "\\u003C").replace(">", "\\u003E").replace("&", "\\u0026"))  # noqa: S308


@login_required
@require_GET
def usage_report_page(request: SignedInRequest) -> HttpResponse:
    """The report page; bad input (a malformed month, an end before the start, an unknown grouping) is a message
    above the form."""
    context: dict[str, Any] = {
        "query": request.GET,
        "group_by": request.GET.get("group_by", "function"),
        "groupings": list(reports.GROUPINGS),
        "month": request.GET.get("month", "") or f"{timezone.now():%Y-%m}",
        "downloads": request.GET.urlencode(),
    }
    try:
        report = _report(request)
    except ServiceError as error:
        return render(request, "metrics_app/report.html", {**context, "error": error.message}, status=400)
    keys = report_keys(report)
    rows = [{"labels": [row[key] for key in keys], **row} for row in report.rows]
    context.update(
        report=report,
        keys=keys,
        rows=rows,
        last_day=report.end - timedelta(days=1),
        figure=_figure_json(report_figure(report)) if rows else None,
    )
    return render(request, "metrics_app/report.html", context)


@login_required
@require_GET
def usage_report_download(request: SignedInRequest, fmt: str) -> HttpResponse:
    """The page's report as CSV or JSON (the API's renderings); bad input is a plain-text 400."""
    try:
        report = _report(request)
    except ServiceError as error:
        return HttpResponse(f"{error.message}\n", status=400, content_type="text/plain; charset=utf-8")
    if fmt == "csv":
        response = HttpResponse(reports.report_csv(report), content_type="text/csv; charset=utf-8")
    else:
        response = JsonResponse(reports.report_json(report))
    response["Content-Disposition"] = f'attachment; filename="usage-{report.start:%Y%m%d}-{report.end:%Y%m%d}.{fmt}"'
    return response
