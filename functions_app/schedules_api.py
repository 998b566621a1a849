"""REST API of schedules: a function's schedules (/api/v1/functions/{name}/schedules/), the next fire times of an
expression before it is saved (/api/v1/schedule-preview/), and every trigger of a function in one list
(/api/v1/functions/{name}/triggers/)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response

from console.auth import ApiRequest
from console.json_api import ERRORS, Boolean, Integer, JsonApi, StrictSerializer, Text, json_body
from functions_app import schedules, selectors
from functions_app.models import Schedule
from functions_app.schedule_expressions import EXPRESSION_MAX_CHARS
from functions_app.triggers import function_triggers

EXPRESSION_HELP = "rate(5 minutes), cron(0 12 * * ? *) (day-of-week 1-7 = SUN-SAT) or at(2027-01-31T09:30:00)."


class ScheduleCreateSerializer(StrictSerializer):
    name = Text(max_length=64, help_text="1-64 letters, digits, '-', '_' or '.'; unique per function.")
    expression = Text(max_length=EXPRESSION_MAX_CHARS, help_text=EXPRESSION_HELP)
    timezone = Text(required=False, max_length=64, help_text="An IANA time zone; UTC by default.")
    qualifier = Text(required=False, allow_blank=True, max_length=128, help_text="$LATEST, a version or an alias.")
    input = serializers.JSONField(required=False, help_text="The event; absent or null: EventBridge's Scheduled Event.")
    enabled = Boolean(required=False)
    grace_s = Integer(
        required=False, help_text="A tick missed while the platform was down still fires within this many seconds."
    )


class ScheduleUpdateSerializer(StrictSerializer):
    expression = Text(required=False, max_length=EXPRESSION_MAX_CHARS, help_text=EXPRESSION_HELP)
    timezone = Text(required=False, max_length=64)
    qualifier = Text(required=False, allow_blank=True, max_length=128)
    input = serializers.JSONField(required=False, allow_null=True)
    enabled = Boolean(required=False)
    grace_s = Integer(required=False)


class ScheduleOutputSerializer(serializers.Serializer):
    name = serializers.CharField()
    function = serializers.CharField(source="function.name")
    expression = serializers.CharField()
    timezone = serializers.CharField()
    qualifier = serializers.SerializerMethodField()
    input = serializers.JSONField()
    enabled = serializers.BooleanField()
    grace_s = serializers.IntegerField()
    state = serializers.SerializerMethodField(help_text="ENABLED, DISABLED, FAILING (last_error says why) or DONE.")
    next_fire_times = serializers.SerializerMethodField(help_text="The next ten ticks.")
    last_fired_at = serializers.DateTimeField()
    last_error = serializers.CharField()
    fired = serializers.IntegerField(help_text="Ticks fired.")
    skipped = serializers.IntegerField(help_text="Ticks missed past their grace while the platform was down.")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def get_qualifier(self, schedule: Schedule) -> str:
        return schedule.qualifier or "$LATEST"

    def get_state(self, schedule: Schedule) -> str:
        return schedules.schedule_state(schedule=schedule)

    def get_next_fire_times(self, schedule: Schedule) -> list[str]:
        return [moment.isoformat() for moment in schedules.schedule_upcoming(schedule=schedule)]


def _changes(data: dict) -> dict:
    """The serializer's field names as the service's (``timezone`` is ``timezone_name`` there)."""
    if "timezone" in data:
        data["timezone_name"] = data.pop("timezone")
    return data


class ScheduleListApi(JsonApi):
    @extend_schema(operation_id="schedules_list", responses={200: ScheduleOutputSerializer(many=True), **ERRORS})
    def get(self, request: ApiRequest, name: str) -> Response:
        function = selectors.function_get(owner=request.user, name=name)
        return Response(ScheduleOutputSerializer(schedules.schedule_list(function=function), many=True).data)

    @extend_schema(
        operation_id="schedules_create",
        request=ScheduleCreateSerializer,
        responses={201: ScheduleOutputSerializer, **ERRORS},
    )
    def post(self, request: ApiRequest, name: str) -> Response:
        function = selectors.function_get(owner=request.user, name=name)
        created = schedules.schedule_create(function=function, **_changes(json_body(ScheduleCreateSerializer, request)))
        return Response(ScheduleOutputSerializer(created).data, status=status.HTTP_201_CREATED)


class ScheduleDetailApi(JsonApi):
    @extend_schema(operation_id="schedules_retrieve", responses={200: ScheduleOutputSerializer, **ERRORS})
    def get(self, request: ApiRequest, name: str, schedule: str) -> Response:
        function = selectors.function_get(owner=request.user, name=name)
        return Response(ScheduleOutputSerializer(schedules.schedule_get(function=function, name=schedule)).data)

    @extend_schema(
        operation_id="schedules_update",
        request=ScheduleUpdateSerializer,
        responses={200: ScheduleOutputSerializer, **ERRORS},
    )
    def patch(self, request: ApiRequest, name: str, schedule: str) -> Response:
        function = selectors.function_get(owner=request.user, name=name)
        found = schedules.schedule_get(function=function, name=schedule)
        changes = _changes(json_body(ScheduleUpdateSerializer, request))
        return Response(ScheduleOutputSerializer(schedules.schedule_update(schedule=found, **changes)).data)

    @extend_schema(operation_id="schedules_destroy", responses={204: None, **ERRORS})
    def delete(self, request: ApiRequest, name: str, schedule: str) -> Response:
        function = selectors.function_get(owner=request.user, name=name)
        schedules.schedule_delete(schedule=schedules.schedule_get(function=function, name=schedule))
        return Response(status=status.HTTP_204_NO_CONTENT)


class SchedulePreviewSerializer(serializers.Serializer):
    fire_times = serializers.ListField(child=serializers.DateTimeField())


class SchedulePreviewApi(JsonApi):
    @extend_schema(
        operation_id="schedule_preview",
        parameters=[
            OpenApiParameter("expression", str, required=True, description=EXPRESSION_HELP),
            OpenApiParameter("timezone", str, description="An IANA time zone; UTC by default."),
        ],
        responses={200: SchedulePreviewSerializer, **ERRORS},
    )
    def get(self, request: ApiRequest) -> Response:
        moments = schedules.schedule_preview(
            expression=request.query_params.get("expression", ""),
            timezone_name=request.query_params.get("timezone", "UTC"),
        )
        return Response({"fire_times": [moment.isoformat() for moment in moments]})


class TriggerSerializer(serializers.Serializer):
    type = serializers.CharField(
        help_text="function-url, http-api-route, schedule, bucket-notification or event-source-mapping."
    )
    id = serializers.CharField(help_text="The URL's id, the API's id or the schedule's name.")
    qualifier = serializers.CharField()
    state = serializers.CharField(help_text="ENABLED; a schedule's may be DISABLED, FAILING or DONE.")
    url = serializers.CharField(required=False, help_text="A function URL's address.")
    auth_type = serializers.CharField(required=False)
    invoke_mode = serializers.CharField(required=False)
    api = serializers.CharField(required=False, help_text="An HTTP API route's API.")
    route_key = serializers.CharField(required=False)
    urls = serializers.ListField(child=serializers.CharField(), required=False, help_text="Its stages' addresses.")
    expression = serializers.CharField(required=False)
    timezone = serializers.CharField(required=False)
    next_fire_at = serializers.DateTimeField(required=False, allow_null=True)
    last_fired_at = serializers.DateTimeField(required=False, allow_null=True)
    last_error = serializers.CharField(required=False, allow_blank=True)
    mode = serializers.CharField(required=False, help_text="A bucket notification's: webhook or poll.")
    bucket = serializers.CharField(required=False)
    events = serializers.ListField(child=serializers.CharField(), required=False)
    last_poll_at = serializers.DateTimeField(required=False, allow_null=True)
    last_event_at = serializers.DateTimeField(required=False, allow_null=True)
    kind = serializers.CharField(required=False, help_text="An event source mapping's: redis-stream or sqs.")
    stream = serializers.CharField(required=False, help_text="A stream mapping's stream.")
    queue_url = serializers.CharField(required=False, help_text="A queue mapping's queue.")
    lag = serializers.IntegerField(required=False, allow_null=True, help_text="Records waiting in the stream.")
    last_batch_at = serializers.DateTimeField(required=False, allow_null=True)


class FunctionTriggersApi(JsonApi):
    @extend_schema(operation_id="function_triggers_list", responses={200: TriggerSerializer(many=True), **ERRORS})
    def get(self, request: ApiRequest, name: str) -> Response:
        function = selectors.function_get(owner=request.user, name=name)
        found = function_triggers(function=function, scheme=request.scheme or "http", host=request.get_host())
        return Response(TriggerSerializer(found, many=True).data)
