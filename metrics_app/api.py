"""REST API of metrics_app (/api/v1/): usage reports and memory right-sizing. Views parse, call one selector or
service, render; every error is a ServiceError mapped by console.exceptions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.http import Http404
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions as drf
from rest_framework import serializers
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from console.auth import ApiRequest
from console.exceptions import ServiceError
from console.json_api import ERRORS
from functions_app.selectors import function_get
from metrics_app import reports, rightsizing


class AccessDenied(ServiceError):
    status = 403
    type = "AccessDenied"


class CSVRenderer(BaseRenderer):
    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        return data.encode() if isinstance(data, str) else b""


class JsonOrCsvApi(APIView):
    """Answers JSON, or CSV for ``?format=csv``; errors are always JSON in the project's format."""

    renderer_classes = [JSONRenderer, CSVRenderer]

    def perform_content_negotiation(self, request: Request, force: bool = False) -> tuple[BaseRenderer, str]:
        try:
            return super().perform_content_negotiation(request, force)
        except (Http404, drf.NotFound, drf.NotAcceptable):  # DRF's answer to an unknown ?format= is a 404
            raise ServiceError("format must be json or csv.", details={"format": ["json", "csv"]}) from None

    def handle_exception(self, exc: Exception) -> Response:
        self.request.accepted_renderer = JSONRenderer()
        self.request.accepted_media_type = JSONRenderer.media_type
        return super().handle_exception(exc)


def _query(serializer_class: type[serializers.Serializer], request: Request) -> dict[str, Any]:
    serializer = serializer_class(data=request.query_params)
    if not serializer.is_valid():
        field, problems = next(iter(serializer.errors.items()))
        raise ServiceError(f"{field}: {problems[0]}", details=serializer.errors)
    return dict(serializer.validated_data)


class UsageReportQuerySerializer(serializers.Serializer):
    start = serializers.DateTimeField(required=False, help_text="Inclusive; default the start of this month (UTC).")
    end = serializers.DateTimeField(required=False, help_text="Exclusive; default the start of next month (UTC).")
    group_by = serializers.ChoiceField(choices=list(reports.GROUPINGS), default="function")
    scope = serializers.ChoiceField(
        choices=["own", "all"], default="own", help_text="'all' (every owner) is for staff only."
    )


class UsageRowSerializer(serializers.Serializer):
    owner = serializers.CharField()
    function = serializers.CharField(required=False)
    version = serializers.CharField(required=False)
    invocations = serializers.IntegerField()
    # DRF's metaclass moves declared fields out of the class, so this does not shadow Serializer.errors.
    errors = serializers.IntegerField()  # type: ignore[assignment]
    throttles = serializers.IntegerField()
    cold_starts = serializers.IntegerField()
    gb_seconds = serializers.FloatField()
    request_usd = serializers.DecimalField(max_digits=24, decimal_places=12)
    run_usd = serializers.DecimalField(max_digits=24, decimal_places=12, help_text="Compute of the run phase.")
    init_usd = serializers.DecimalField(max_digits=24, decimal_places=12, help_text="Compute of cold-start init.")
    total_usd = serializers.DecimalField(max_digits=24, decimal_places=12)
    cold_start_share = serializers.FloatField(help_text="init_usd / (run_usd + init_usd).")


class ForecastSerializer(serializers.Serializer):
    month = serializers.CharField()
    month_to_date_usd = serializers.DecimalField(max_digits=24, decimal_places=12)
    elapsed_fraction = serializers.FloatField()
    forecast_usd = serializers.DecimalField(max_digits=24, decimal_places=12)
    method = serializers.CharField()


class UsageReportSerializer(serializers.Serializer):
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    group_by = serializers.CharField()
    granularity = serializers.CharField(help_text="Roll-ups summed, coarsest first, e.g. 'day' or 'day+hour+minute'.")
    scope = serializers.CharField()
    rows = UsageRowSerializer(many=True)
    totals = serializers.DictField(help_text="The row measures summed, plus volume_discount_usd.")
    forecast = ForecastSerializer(allow_null=True, help_text="Only when the period includes the present.")
    notes = serializers.CharField()


class UsageReportApi(JsonOrCsvApi):
    @extend_schema(
        operation_id="reports_usage",
        description="Cost and usage by function, version or owner over [start, end), from roll-ups: request, run "
        "and cold-start (init) cost, GB-seconds, totals, and a linear month-end forecast when the period includes "
        "the present. Your own functions only, unless you are staff (scope=all, or group_by=owner).",
        parameters=[
            UsageReportQuerySerializer,
            OpenApiParameter("format", str, enum=["json", "csv"], description="Default json."),
        ],
        responses={(200, "application/json"): UsageReportSerializer, (200, "text/csv"): OpenApiTypes.STR, **ERRORS},
    )
    def get(self, request: ApiRequest) -> Response:
        query = _query(UsageReportQuerySerializer, request)
        everyone = query["scope"] == "all" or (query["group_by"] == "owner" and request.user.is_staff)
        if everyone and not request.user.is_staff:
            raise AccessDenied("Only staff may report on every owner.")
        month_start = timezone.now().astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        start = query.get("start") or month_start
        end = query.get("end") or reports.month_period(f"{month_start:%Y-%m}")[1]
        report = reports.usage_report(
            owner=None if everyone else request.user, start=start, end=end, group_by=query["group_by"]
        )
        if request.accepted_renderer.format == "csv":
            filename = f"usage-{_stamp(report.start)}-{_stamp(report.end)}.csv"
            return Response(
                reports.report_csv(report), headers={"Content-Disposition": f'attachment; filename="{filename}"'}
            )
        return Response(reports.report_json(report))


def _stamp(moment: datetime) -> str:
    return f"{moment:%Y%m%dT%H%M}"


class SizeRowSerializer(serializers.Serializer):
    memory_mb = serializers.IntegerField()
    duration_ms = serializers.FloatField(help_text="Modelled average run time at this size.")
    cost_per_invocation_usd = serializers.FloatField()
    cost_per_million_usd = serializers.FloatField()
    monthly_cost_usd = serializers.FloatField()
    oom_risk = serializers.BooleanField(help_text="Observed peak memory reaches 90% of this size.")
    current = serializers.BooleanField()


class RightsizingSerializer(serializers.Serializer):
    function = serializers.CharField()
    configured_memory_mb = serializers.IntegerField()
    baseline_memory_mb = serializers.IntegerField(allow_null=True, help_text="The size the telemetry comes from.")
    window_days = serializers.FloatField()
    invocations_observed = serializers.IntegerField()
    monthly_invocations = serializers.FloatField()
    avg_duration_ms = serializers.FloatField()
    avg_cpu_ms = serializers.FloatField()
    avg_init_ms = serializers.FloatField()
    peak_memory_p99_mb = serializers.FloatField(allow_null=True)
    peak_memory_max_mb = serializers.FloatField()
    rows = SizeRowSerializer(many=True)
    recommended_mb = serializers.IntegerField(allow_null=True)
    expected_monthly_saving_usd = serializers.FloatField()
    reason = serializers.CharField()
    model = serializers.CharField(help_text="The model behind the what-if figures, in one paragraph.")


class RightsizingApi(APIView):
    @extend_schema(
        operation_id="functions_rightsizing",
        description="A what-if table of modelled duration and cost at memory sizes from 128 to 10,240 MB, from the "
        "last 14 days of telemetry, with OOM-risk flags and a recommendation; `model` states the assumptions.",
        responses={200: RightsizingSerializer, **ERRORS},
    )
    def get(self, request: ApiRequest, name: str) -> Response:
        function = function_get(owner=request.user, name=name)
        analysis = rightsizing.function_rightsizing(function=function)
        body = {"function": function.name, "configured_memory_mb": function.memory_mb, **analysis.as_dict()}
        return Response(RightsizingSerializer(body).data)
