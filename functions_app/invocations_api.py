"""REST API for running functions and reading invocation records."""

from __future__ import annotations

import base64
from typing import Any

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.parsers import BaseParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from console.auth import ApiRequest
from console.exceptions import ServiceError, error_body
from console.json_api import ERRORS, JsonTextSerializer, paginated, paginated_of, unparsed_field
from functions_app import selectors
from functions_app.accept import DRY_RUN
from functions_app.destinations import dead_letter_delete, dead_letter_replay_once
from functions_app.invoke import function_invoke
from functions_app.lifecycle import (
    CAPACITY_EXCEEDED,
    EXECUTOR_FAILED,
    TOO_LARGE_FOR_HOSTS,
    WORKER_LOST,
    InvocationOutcome,
)
from functions_app.models import DeadLetterCondition, InvocationStatus, InvocationType


class RawBodyParser(BaseParser):
    """The event is passed through byte-for-byte; the service validates it as JSON."""

    media_type = "*/*"

    # DRF hands on whatever a parser returns as request.data; its stubs expect a mapping.
    def parse(self, stream, media_type=None, parser_context=None) -> bytes:  # type: ignore[override]  # noqa: ANN001
        return stream.read() if stream else b""


RESPONSE_HEADERS = [
    OpenApiParameter("X-Invocation-Id", str, OpenApiParameter.HEADER, response=True, description="The invocation."),
    OpenApiParameter("X-Executed-Version", str, OpenApiParameter.HEADER, response=True, description="`$LATEST` or N."),
    OpenApiParameter(
        "X-Function-Error",
        str,
        OpenApiParameter.HEADER,
        response=True,
        description="`Unhandled` when the handler raised, timed out, ran out of memory or exited; the body is "
        "then `{errorType, errorMessage, stackTrace}`.",
    ),
    OpenApiParameter("X-Cold-Start", str, OpenApiParameter.HEADER, response=True, description="`true` or `false`."),
    OpenApiParameter(
        "X-Log-Result", str, OpenApiParameter.HEADER, response=True, description="Base64 of the last 4 KB of log."
    ),
]


PLATFORM_ERROR_MESSAGES = {
    WORKER_LOST: "The worker running this invocation was lost; it was not retried.",
    EXECUTOR_FAILED: "The executor could not run this invocation (see the worker's log); it was not retried.",
    TOO_LARGE_FOR_HOSTS: "This function needs more memory than an executor host offers; nothing ran.",
}

ACCEPTED = inline_serializer(
    "Accepted",
    fields={
        "invocation_id": serializers.UUIDField(),
        "status": serializers.ChoiceField(choices=InvocationStatus.values, help_text="Its status at this moment."),
    },
)

INVOCATION_TYPES = {
    "RequestResponse": InvocationType.SYNC,
    "Event": InvocationType.ASYNC,
    "DryRun": DRY_RUN,
}


class InvokeApi(APIView):
    parser_classes = [RawBodyParser]

    @extend_schema(
        operation_id="functions_invoke",
        request={"application/json": OpenApiTypes.ANY},
        parameters=[
            OpenApiParameter("qualifier", str, description="`$LATEST` (default), a version number or an alias."),
            OpenApiParameter("log", str, enum=["none", "tail"], description="`tail` adds X-Log-Result (sync)."),
            OpenApiParameter(
                "X-Invocation-Type",
                str,
                OpenApiParameter.HEADER,
                enum=list(INVOCATION_TYPES),
                description="`RequestResponse` (default: wait for the result, payload ≤ 6 MB), `Event` (queue it, "
                "202 at once, payload ≤ 1 MB, retried and dead-lettered as Lambda does) or `DryRun` (validate only).",
            ),
            OpenApiParameter(
                "Idempotency-Key",
                str,
                OpenApiParameter.HEADER,
                description="A retried request with the same key returns the same invocation; another payload is 409.",
            ),
            *RESPONSE_HEADERS,
        ],
        responses={
            200: OpenApiResponse(OpenApiTypes.ANY, description="The function's result (or its error object)."),
            202: OpenApiResponse(
                ACCEPTED,
                description="`Event` accepted, or a sync call still running past the wait budget: "
                "`{invocation_id, status}` to poll.",
            ),
            204: OpenApiResponse(description="`DryRun`: the request is valid and you may invoke the function."),
            429: ERRORS[400],
            502: ERRORS[400],
            **ERRORS,
        },
        description="Run the function. Errors of the platform use the error format; errors of the function come "
        "back with 200 and `X-Function-Error: Unhandled`, as on Lambda.",
    )
    def post(self, request: ApiRequest, name: str) -> HttpResponse:
        function = selectors.function_get(owner=request.user, name=name)
        invocation_type = _invocation_type(request)
        log_mode = request.query_params.get("log", "none")
        if log_mode not in ("none", "tail"):
            raise ServiceError("log must be 'none' or 'tail'.", details={"log": ["Expected none or tail."]})
        answer = function_invoke(
            owner=request.user,
            function=function,
            qualifier=request.query_params.get("qualifier", ""),
            raw_payload=request.data if isinstance(request.data, bytes) else b"",
            invocation_type=invocation_type,
            idempotency_key=_idempotency_key(request),
        )
        if answer.invocation is None:
            return Response(status=204)
        if answer.outcome is None:
            return _accepted(str(answer.invocation.id), answer.invocation.status)
        return invoke_response(answer.outcome, with_log=log_mode == "tail")


def _invocation_type(request: Request) -> str:
    name = request.headers.get("X-Invocation-Type", "RequestResponse")
    if name not in INVOCATION_TYPES:
        raise ServiceError(
            f"X-Invocation-Type must be one of {', '.join(INVOCATION_TYPES)}.",
            details={"X-Invocation-Type": list(INVOCATION_TYPES)},
        )
    return INVOCATION_TYPES[name]


def _idempotency_key(request: Request) -> str:
    key = request.headers.get("Idempotency-Key", "")
    if len(key) > 128 or (key and not key.isprintable()):
        raise ServiceError("Idempotency-Key must be at most 128 printable characters.")
    return key


def _accepted(invocation_id: str, invocation_status: str, status: int = 202) -> Response:
    response = Response({"invocation_id": invocation_id, "status": invocation_status}, status=status)
    response["Location"] = f"/api/v1/invocations/{invocation_id}/"
    response["X-Invocation-Id"] = invocation_id
    return response


def invoke_response(outcome: InvocationOutcome, *, with_log: bool) -> HttpResponse:
    """A synchronous call's answer (also on the event loop: functions_app/invoke_asgi.py)."""
    if not outcome.finished:
        return _accepted(outcome.invocation_id, outcome.status)
    if outcome.platform_error:
        message = PLATFORM_ERROR_MESSAGES.get(outcome.error_type, "The platform failed this call; it was not retried.")
        body = error_body(outcome.error_type, message)
        response: HttpResponse = Response({**body, "details": {"invocation_id": outcome.invocation_id}}, status=502)
    elif outcome.error_type == CAPACITY_EXCEEDED:
        message = "Rate exceeded: no executor has room for another environment now; nothing ran. Retry shortly."
        reason = CAPACITY_EXCEEDED.removeprefix("Throttled.")
        details = {"reason": reason, "retry_after_s": 1, "invocation_id": outcome.invocation_id}
        response = Response({**error_body("TooManyRequests", message), "details": details}, status=429)
        response["Retry-After"] = "1"
    else:
        response = HttpResponse(outcome.result, content_type="application/json", status=200)
        if outcome.function_error:
            response["X-Function-Error"] = "Unhandled"
        response["X-Cold-Start"] = "true" if outcome.is_cold else "false"
    response["X-Invocation-Id"] = outcome.invocation_id
    response["X-Executed-Version"] = outcome.executed_version
    if with_log:
        response["X-Log-Result"] = base64.b64encode(outcome.log_tail.encode()).decode()
    return response


class InvocationOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    function = serializers.CharField(source="function.name")
    qualifier = serializers.CharField()
    executed_version = serializers.CharField()
    invocation_type = serializers.CharField()
    status = serializers.CharField()
    function_error = serializers.BooleanField()
    error_type = serializers.CharField()
    attempt = serializers.IntegerField()
    queued_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    is_cold = serializers.BooleanField()
    queue_wait_ms = serializers.FloatField(allow_null=True)
    init_ms = serializers.FloatField()
    duration_ms = serializers.FloatField(allow_null=True)
    billed_ms = serializers.IntegerField(allow_null=True)
    memory_mb = serializers.IntegerField()
    peak_memory_mb = serializers.FloatField(allow_null=True)
    cpu_ms = serializers.FloatField(allow_null=True)
    cost_usd = serializers.DecimalField(max_digits=20, decimal_places=12, allow_null=True)
    cost_request_usd = serializers.DecimalField(max_digits=20, decimal_places=12, allow_null=True)
    cost_run_usd = serializers.DecimalField(max_digits=20, decimal_places=12, allow_null=True)
    cost_init_usd = serializers.DecimalField(max_digits=20, decimal_places=12, allow_null=True)
    worker_host = serializers.CharField()
    environment_id = serializers.CharField()
    trigger = serializers.JSONField(
        allow_null=True,
        help_text="What made the call, when not the API: an HTTP trigger's `{type, id, method, path, status, "
        "response_bytes}` (status and size once answered; `error` when the result was not a response).",
    )


class InvocationDetailSerializer(JsonTextSerializer, InvocationOutputSerializer):
    """An invocation with its event, result and log. `payload` and `result` are JSON values, not JSON text."""

    json_text_fields = ("payload", "result")
    payload = serializers.JSONField(help_text="The event.")
    result = serializers.JSONField(
        help_text="The handler's return value, or Lambda's error object when `function_error`; null until finished."
    )
    log = serializers.CharField()
    unparsed = unparsed_field()


def _choice_param(params: Any, name: str, choices: list[str]) -> str:
    """A filter that must be one of ``choices`` (empty means no filter)."""
    value = params.get(name, "")
    if value and value not in choices:
        raise ServiceError(f"{name}: {value!r} is not one of {', '.join(choices)}.", details={name: choices})
    return value


def _bool_param(params: Any, name: str) -> bool | None:
    """``true`` / ``false`` filters; absent or empty means no filter, anything else is refused."""
    value = _choice_param(params, name, ["true", "false"])
    return {"true": True, "false": False}.get(value)


class InvocationListApi(APIView):
    @extend_schema(
        operation_id="invocations_list",
        parameters=[
            OpenApiParameter("function", str, description="Only this function's invocations."),
            OpenApiParameter("status", str, enum=InvocationStatus.values),
            OpenApiParameter("cold", bool, description="Only cold (true) or warm (false) starts."),
        ],
        responses={200: paginated_of(InvocationOutputSerializer), **ERRORS},
    )
    def get(self, request: ApiRequest) -> Response:
        params = request.query_params
        invocations = selectors.invocation_list(
            owner=request.user,
            function_name=params.get("function", ""),
            status=_choice_param(params, "status", InvocationStatus.values),
            is_cold=_bool_param(params, "cold"),
        )
        return paginated(request, self, invocations, InvocationOutputSerializer)


class InvocationDetailApi(APIView):
    @extend_schema(operation_id="invocations_retrieve", responses={200: InvocationDetailSerializer, **ERRORS})
    def get(self, request: ApiRequest, invocation_id: str) -> Response:
        invocation = selectors.invocation_get(owner=request.user, invocation_id=invocation_id)
        return Response(InvocationDetailSerializer(invocation).data)


class DeadLetterOutputSerializer(JsonTextSerializer):
    """An event that was not delivered. `request_payload` and `error_result` are JSON values, not JSON text."""

    json_text_fields = ("request_payload", "error_result")
    id = serializers.IntegerField()
    function = serializers.CharField(source="function.name")
    invocation_id = serializers.UUIDField()
    condition = serializers.CharField()
    request_payload = serializers.JSONField(help_text="The event.")
    error_type = serializers.CharField()
    error_result = serializers.JSONField(help_text="The last attempt's error object; null if it never ran.")
    attempts = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    replayed_as = serializers.UUIDField(source="replayed_as_id", allow_null=True)
    unparsed = unparsed_field()


class DeadLetterListApi(APIView):
    @extend_schema(
        operation_id="dead_letters_list",
        parameters=[
            OpenApiParameter("function", str, description="Only this function's dead letters."),
            OpenApiParameter("condition", str, enum=DeadLetterCondition.values),
            OpenApiParameter("replayed", bool, description="Only replayed (true) or not yet replayed (false)."),
        ],
        responses={200: paginated_of(DeadLetterOutputSerializer), **ERRORS},
    )
    def get(self, request: ApiRequest) -> Response:
        params = request.query_params
        letters = selectors.dead_letter_list(
            owner=request.user,
            function_name=params.get("function", ""),
            condition=_choice_param(params, "condition", DeadLetterCondition.values),
            replayed=_bool_param(params, "replayed"),
        )
        return paginated(request, self, letters, DeadLetterOutputSerializer)


class DeadLetterDetailApi(APIView):
    @extend_schema(operation_id="dead_letters_retrieve", responses={200: DeadLetterOutputSerializer, **ERRORS})
    def get(self, request: ApiRequest, letter_id: int) -> Response:
        return Response(DeadLetterOutputSerializer(selectors.dead_letter_get(owner=request.user, pk=letter_id)).data)

    @extend_schema(operation_id="dead_letters_destroy", responses={204: None, **ERRORS})
    def delete(self, request: ApiRequest, letter_id: int) -> Response:
        dead_letter_delete(dead_letter=selectors.dead_letter_get(owner=request.user, pk=letter_id))
        return Response(status=204)


class DeadLetterReplayApi(APIView):
    @extend_schema(
        operation_id="dead_letters_replay",
        request=None,
        responses={
            202: OpenApiResponse(ACCEPTED, description="Replayed: the new invocation."),
            200: OpenApiResponse(ACCEPTED, description="Replayed before: the invocation of the first replay."),
            **ERRORS,
        },
        description="Run the stored event again as a new async invocation of the function's `$LATEST`. A letter "
        "runs once: replaying it again answers 200 with the invocation of its first replay (`replayed_as`).",
    )
    def post(self, request: ApiRequest, letter_id: int) -> Response:
        letter = selectors.dead_letter_get(owner=request.user, pk=letter_id)
        invocation, created = dead_letter_replay_once(dead_letter=letter)
        return _accepted(str(invocation.id), invocation.status, status=202 if created else 200)
