"""REST API of event source mappings (/api/v1/event-source-mappings/: streams and SQS queues) and of the streams
they read (/api/v1/streams/{name}/records/, Kinesis's PutRecords)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response

from console.auth import ApiRequest
from console.json_api import ERRORS, Boolean, Integer, JsonApi, StrictSerializer, Text, json_body
from functions_app import event_sources, selectors
from functions_app import stream_sources as streams
from functions_app.models import EventSourceKind, EventSourceMapping, Function


class _Settings(StrictSerializer):
    qualifier = Text(required=False, allow_blank=True, max_length=128, help_text="$LATEST, a version or an alias.")
    batch_size = Integer(required=False, help_text="Records per call, 1-10000 (100).")
    batching_window_s = Integer(required=False, help_text="Wait up to this for a full batch, 0-300 s (0).")
    max_retry_attempts = Integer(required=False, help_text="-1 (until the records expire) or 0-10000.")
    max_record_age_s = Integer(required=False, help_text="-1 (never) or 60-604800: older records go to on_failure.")
    bisect_on_error = Boolean(required=False, help_text="Halve a failed batch before retrying it.")
    report_batch_item_failures = Boolean(
        required=False, help_text='The function answers {"batchItemFailures": [{"itemIdentifier": seq}]}.'
    )
    on_failure = Text(required=False, max_length=80, help_text='"dead-letter" (the inbox) or "function:<name>".')
    enabled = Boolean(required=False)


class _QueueSettings(_Settings):
    access_key_id = Text(required=False, max_length=128, help_text="A queue's: the keys it is read with.")
    secret_access_key = Text(required=False, max_length=256, help_text="Stored encrypted, never shown.")
    region = Text(required=False, max_length=32)
    max_concurrency = Integer(required=False, help_text="A queue's: batches at once, 2-1000 (2).")


class MappingCreateSerializer(_QueueSettings):
    function = Text(max_length=64)
    stream = Text(
        required=False, max_length=128, help_text="Your stream (written through /api/v1/streams/{name}/records/)."
    )
    queue_url = Text(required=False, max_length=512, help_text="Or an SQS queue's URL (AWS, ElasticMQ, …).")
    starting_position = Text(required=False, help_text="A stream's: LATEST (default) or TRIM_HORIZON.")


class MappingOutputSerializer(serializers.Serializer):
    uuid = serializers.UUIDField()
    function = serializers.CharField(source="function.name")
    kind = serializers.CharField(help_text="redis-stream or sqs.")
    stream = serializers.SerializerMethodField(help_text="A stream mapping's stream.")
    queue_url = serializers.SerializerMethodField(help_text="A queue mapping's queue.")
    max_concurrency = serializers.IntegerField()
    qualifier = serializers.SerializerMethodField()
    starting_position = serializers.CharField()
    batch_size = serializers.IntegerField()
    batching_window_s = serializers.IntegerField()
    max_retry_attempts = serializers.IntegerField()
    max_record_age_s = serializers.IntegerField()
    bisect_on_error = serializers.BooleanField()
    report_batch_item_failures = serializers.BooleanField()
    on_failure = serializers.CharField()
    enabled = serializers.BooleanField()
    state = serializers.SerializerMethodField(help_text="Enabled, Disabled or Failing (last_error says why).")
    lag = serializers.SerializerMethodField(help_text="Records waiting: not yet delivered, or delivered and unsettled.")
    checkpoint = serializers.CharField(help_text="The last record committed (its sequence number).")
    iterator_age_ms = serializers.IntegerField(allow_null=True, help_text="Age of the last record committed.")
    last_batch_at = serializers.DateTimeField(allow_null=True)
    last_processing_result = serializers.CharField()
    last_error = serializers.CharField()
    batches = serializers.IntegerField()
    records = serializers.IntegerField()
    created_at = serializers.DateTimeField()

    def get_qualifier(self, mapping: EventSourceMapping) -> str:
        return mapping.qualifier or "$LATEST"

    def get_stream(self, mapping: EventSourceMapping) -> str | None:
        return mapping.source if mapping.kind == EventSourceKind.REDIS_STREAM else None

    def get_queue_url(self, mapping: EventSourceMapping) -> str | None:
        return mapping.source if mapping.kind == EventSourceKind.SQS else None

    def get_state(self, mapping: EventSourceMapping) -> str:
        return streams.mapping_state(mapping=mapping)

    def get_lag(self, mapping: EventSourceMapping) -> int | None:
        return event_sources.mapping_lag(mapping=mapping)


class MappingListApi(JsonApi):
    @extend_schema(
        operation_id="event_source_mappings_list",
        parameters=[OpenApiParameter("function", str, description="Only this function's mappings.")],
        responses={200: MappingOutputSerializer(many=True), **ERRORS},
    )
    def get(self, request: ApiRequest) -> Response:
        name = request.query_params.get("function", "")
        functions: list[Function] = (
            [selectors.function_get(owner=request.user, name=name)]
            if name
            else list(selectors.function_list(owner=request.user))
        )
        found = [mapping for function in functions for mapping in streams.mapping_list(function=function)]
        return Response(MappingOutputSerializer(found, many=True).data)

    @extend_schema(
        operation_id="event_source_mappings_create",
        request=MappingCreateSerializer,
        responses={201: MappingOutputSerializer, **ERRORS},
    )
    def post(self, request: ApiRequest) -> Response:
        fields = json_body(MappingCreateSerializer, request)
        function = selectors.function_get(owner=request.user, name=fields.pop("function"))
        created = event_sources.mapping_create(function=function, **fields)
        return Response(MappingOutputSerializer(created).data, status=status.HTTP_201_CREATED)


class MappingDetailApi(JsonApi):
    @extend_schema(operation_id="event_source_mappings_retrieve", responses={200: MappingOutputSerializer, **ERRORS})
    def get(self, request: ApiRequest, uuid: str) -> Response:
        return Response(MappingOutputSerializer(streams.mapping_get(owner_id=request.user.pk, uuid=uuid)).data)

    @extend_schema(
        operation_id="event_source_mappings_update",
        request=_QueueSettings,
        responses={200: MappingOutputSerializer, **ERRORS},
    )
    def patch(self, request: ApiRequest, uuid: str) -> Response:
        mapping = streams.mapping_get(owner_id=request.user.pk, uuid=uuid)
        changed = event_sources.mapping_update(mapping=mapping, **json_body(_QueueSettings, request))
        return Response(MappingOutputSerializer(changed).data)

    @extend_schema(operation_id="event_source_mappings_destroy", responses={204: None, **ERRORS})
    def delete(self, request: ApiRequest, uuid: str) -> Response:
        streams.mapping_delete(mapping=streams.mapping_get(owner_id=request.user.pk, uuid=uuid))
        return Response(status=status.HTTP_204_NO_CONTENT)


class RecordsSerializer(StrictSerializer):
    records = serializers.ListField(
        child=serializers.JSONField(),
        help_text='Up to 500: {"data": any JSON} or {"data_base64": "…"}, and an optional "partition_key".',
    )


class StreamRecordsApi(JsonApi):
    @extend_schema(
        operation_id="stream_records_put",
        request=RecordsSerializer,
        responses={
            200: inline_serializer("StreamRecordsPut", {"sequence_numbers": serializers.ListField()}),
            **ERRORS,
        },
    )
    def post(self, request: ApiRequest, stream: str) -> Response:
        records: Any = json_body(RecordsSerializer, request)["records"]
        sequences = streams.stream_records_put(owner_id=request.user.pk, stream=stream, records=records)
        return Response({"sequence_numbers": sequences})
