"""REST API of bucket notifications (/api/v1/functions/{name}/bucket-notifications/) and the webhook that object
stores post their events to (/api/v1/bucket-events/{id}/, authenticated by the configuration's bearer token)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from console.auth import ApiRequest
from console.json_api import ERRORS, Boolean, Integer, JsonApi, StrictSerializer, Text, json_body
from functions_app import bucket_notifications as notifications
from functions_app import selectors
from functions_app.models import BucketNotification

EVENTS_HELP = "S3 event types: s3:ObjectCreated:*, s3:ObjectRemoved:*, or one kind (s3:ObjectCreated:Put…)."


class _Settings(StrictSerializer):
    bucket = Text(max_length=63)
    endpoint_url = Text(required=False, allow_blank=True, max_length=512, help_text="The store's S3 API; empty: AWS.")
    region = Text(required=False, max_length=32)
    access_key_id = Text(required=False, allow_blank=True, max_length=128)
    secret_access_key = Text(
        required=False, allow_blank=True, max_length=256, help_text="Stored encrypted, never shown."
    )
    events = serializers.ListField(child=Text(max_length=64), required=False, max_length=16, help_text=EVENTS_HELP)
    prefix = Text(required=False, allow_blank=True, max_length=1024)
    suffix = Text(required=False, allow_blank=True, max_length=1024)
    qualifier = Text(required=False, allow_blank=True, max_length=128, help_text="$LATEST, a version or an alias.")
    enabled = Boolean(required=False)
    poll_interval_s = Integer(required=False, help_text="Poll mode: seconds between listings (1-3600).")


class BucketNotificationCreateSerializer(_Settings):
    name = Text(max_length=64, help_text="1-64 letters, digits, '-', '_' or '.'; unique per function.")
    mode = Text(help_text="webhook (the store posts its events) or poll (the platform lists the bucket).")


class BucketNotificationUpdateSerializer(_Settings):
    bucket = Text(required=False, max_length=63)


class BucketNotificationOutputSerializer(serializers.Serializer):
    name = serializers.CharField()
    function = serializers.CharField(source="function.name")
    mode = serializers.CharField()
    bucket = serializers.CharField()
    endpoint_url = serializers.CharField()
    region = serializers.CharField()
    access_key_id = serializers.CharField()
    events = serializers.ListField(child=serializers.CharField())
    prefix = serializers.CharField()
    suffix = serializers.CharField()
    qualifier = serializers.SerializerMethodField()
    enabled = serializers.BooleanField()
    poll_interval_s = serializers.IntegerField()
    state = serializers.SerializerMethodField(help_text="ENABLED, DISABLED or FAILING (last_error says why).")
    webhook_url = serializers.SerializerMethodField(help_text="Webhook mode: where the store posts its events.")
    last_poll_at = serializers.DateTimeField()
    last_event_at = serializers.DateTimeField()
    last_error = serializers.CharField()
    delivered = serializers.IntegerField(help_text="Events sent to the function.")
    created_at = serializers.DateTimeField()

    def get_qualifier(self, notification: BucketNotification) -> str:
        return notification.qualifier or "$LATEST"

    def get_state(self, notification: BucketNotification) -> str:
        return notifications.bucket_notification_state(notification=notification)

    def get_webhook_url(self, notification: BucketNotification) -> str | None:
        request = self.context.get("request")
        if notification.mode != "webhook" or request is None:
            return None
        return request.build_absolute_uri(f"/api/v1/bucket-events/{notification.pk}/")


class BucketNotificationCreatedSerializer(BucketNotificationOutputSerializer):
    token = serializers.CharField(help_text="Webhook mode: the bearer token the store sends; shown only now.")


def _output(request: Request, notification: BucketNotification, **extra: Any) -> dict[str, Any]:
    return {**BucketNotificationOutputSerializer(notification, context={"request": request}).data, **extra}


class BucketNotificationListApi(JsonApi):
    @extend_schema(
        operation_id="bucket_notifications_list",
        responses={200: BucketNotificationOutputSerializer(many=True), **ERRORS},
    )
    def get(self, request: ApiRequest, name: str) -> Response:
        function = selectors.function_get(owner=request.user, name=name)
        found = notifications.bucket_notification_list(function=function)
        return Response([_output(request, notification) for notification in found])

    @extend_schema(
        operation_id="bucket_notifications_create",
        request=BucketNotificationCreateSerializer,
        responses={201: BucketNotificationCreatedSerializer, **ERRORS},
    )
    def post(self, request: ApiRequest, name: str) -> Response:
        function = selectors.function_get(owner=request.user, name=name)
        fields = json_body(BucketNotificationCreateSerializer, request)
        created, token = notifications.bucket_notification_create(function=function, **fields)
        body = _output(request, created, token=token) if token else _output(request, created)
        return Response(body, status=status.HTTP_201_CREATED)


class BucketNotificationDetailApi(JsonApi):
    @extend_schema(
        operation_id="bucket_notifications_retrieve", responses={200: BucketNotificationOutputSerializer, **ERRORS}
    )
    def get(self, request: ApiRequest, name: str, notification: str) -> Response:
        function = selectors.function_get(owner=request.user, name=name)
        return Response(_output(request, notifications.bucket_notification_get(function=function, name=notification)))

    @extend_schema(
        operation_id="bucket_notifications_update",
        request=BucketNotificationUpdateSerializer,
        responses={200: BucketNotificationOutputSerializer, **ERRORS},
    )
    def patch(self, request: ApiRequest, name: str, notification: str) -> Response:
        function = selectors.function_get(owner=request.user, name=name)
        found = notifications.bucket_notification_get(function=function, name=notification)
        changes = json_body(BucketNotificationUpdateSerializer, request)
        return Response(_output(request, notifications.bucket_notification_update(notification=found, **changes)))

    @extend_schema(operation_id="bucket_notifications_destroy", responses={204: None, **ERRORS})
    def delete(self, request: ApiRequest, name: str, notification: str) -> Response:
        function = selectors.function_get(owner=request.user, name=name)
        found = notifications.bucket_notification_get(function=function, name=notification)
        notifications.bucket_notification_delete(notification=found)
        return Response(status=status.HTTP_204_NO_CONTENT)


class BucketEventsWebhookApi(APIView):
    """An object store posts S3-format records here, with ``Authorization: Bearer <token>``: no API key, no
    session (the token is the configuration's own)."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="bucket_events_receive",
        request={"application/json": inline_serializer("S3Records", {"Records": serializers.ListField()})},
        responses={
            200: inline_serializer(
                "BucketEventsReceived",
                {
                    "accepted": serializers.IntegerField(),
                    "ignored": serializers.IntegerField(help_text="Another bucket, event type or key."),
                    "invalid": serializers.IntegerField(help_text="Records that could not be read."),
                    "duplicates": serializers.IntegerField(help_text="Delivered before (a store retrying)."),
                },
            ),
            **ERRORS,
        },
    )
    def post(self, request: Request, notification_id: int) -> Response:
        authorization = request.headers.get("Authorization", "")
        token = authorization.removeprefix("Bearer ").strip() if authorization.startswith("Bearer ") else ""
        counts = notifications.bucket_webhook_receive(
            notification_id=notification_id,
            token=token,
            read_body=lambda limit: request._request.read(limit),  # read only once the token holds, and capped
            length=_content_length(request),
        )
        return Response(counts)


def _content_length(request: Request) -> int | None:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None
