"""REST API for the function registry (/api/v1/). Views parse input, call one service or selector, render."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from console.auth import ApiRequest
from console.exceptions import RequestTooLarge, ServiceError
from console.json_api import (
    ERRORS,
    Boolean,
    Integer,
    JsonApi,
    JsonTextSerializer,
    Number,
    StrictJSONParser,
    StrictSerializer,
    Text,
    Uuid,
    json_body,
    paginated,
    paginated_of,
    unparsed_field,
)
from functions_app import selectors, services
from functions_app.code import ZIPPED_MAX_BYTES
from functions_app.models import LATEST, Alias, Function, Version
from functions_app.secrets import env_masked

VERSION_LABEL = "^[1-9][0-9]*$"


@extend_schema_field({"oneOf": [{"type": "integer", "minimum": 1}, {"type": "string", "pattern": VERSION_LABEL}]})
class VersionNumber(serializers.Field):
    """A published version as output shows it, the label "1", or as the number 1; `$LATEST` is not one."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, str) and re.fullmatch(VERSION_LABEL, data):
            return int(data)
        if isinstance(data, int) and not isinstance(data, bool) and data >= 1:
            return data
        if data == LATEST:
            raise serializers.ValidationError("An alias points at a published version, not $LATEST; publish one.")
        raise serializers.ValidationError('Must be a published version: its label ("1") or its number (1).')

    def to_representation(self, value: int) -> str:
        return str(value)


# ---- serializers --------------------------------------------------------------------------------------------


class CodeInputSerializer(StrictSerializer):
    zip_base64 = Text(required=False, help_text="A .zip, base64-encoded.")
    files = serializers.DictField(
        child=Text(allow_blank=True),
        required=False,
        help_text='Inline source by file name, e.g. {"lambda_function.py": "def lambda_handler(event, context): ..."}.',
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("zip_base64" in attrs) == ("files" in attrs):
            raise serializers.ValidationError({"code": ["Give exactly one of zip_base64 or files."]})
        return attrs


def code_upload_from(data: dict[str, Any]) -> services.CodeUpload:
    if "files" in data:
        return services.CodeUpload(files=dict(data["files"]))
    try:
        return services.CodeUpload(zip_bytes=base64.b64decode(data["zip_base64"], validate=True))
    except (binascii.Error, ValueError):
        raise ServiceError("zip_base64 is not valid base64.", details={"zip_base64": ["Invalid base64."]}) from None


class CodeUpdateSerializer(CodeInputSerializer):
    revision_id = Uuid(required=False)


class CodeUploadSerializer(StrictSerializer):
    """A multipart upload: form fields are text by nature, so revision_id is taken as text here."""

    zip = serializers.FileField()
    revision_id = serializers.UUIDField(required=False)


class ConfigFieldsSerializer(StrictSerializer):
    description = Text(required=False, allow_blank=True, max_length=256)
    runtime = Text(required=False)
    handler = Text(required=False, max_length=128)
    memory_mb = Integer(required=False)
    timeout_s = Integer(required=False)
    ephemeral_storage_mb = Integer(required=False)
    network_enabled = Boolean(required=False)
    environment = serializers.DictField(child=Text(allow_blank=True), required=False)
    reserved_concurrency = Integer(required=False, allow_null=True)
    max_retry_attempts = Integer(required=False)
    max_event_age_s = Integer(required=False)
    on_success_destination = Text(
        required=False, allow_blank=True, help_text='"", "dead-letter" or "function:<name>" (an existing function).'
    )
    on_failure_destination = Text(
        required=False, allow_blank=True, help_text='"", "dead-letter" or "function:<name>" (an existing function).'
    )


class FunctionCreateSerializer(ConfigFieldsSerializer):
    name = Text(max_length=64)
    handler = Text(max_length=128)
    code = CodeInputSerializer()


class FunctionUpdateSerializer(ConfigFieldsSerializer):
    revision_id = Uuid(required=False)


class FunctionOutputSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    runtime = serializers.CharField()
    handler = serializers.CharField()
    memory_mb = serializers.IntegerField()
    timeout_s = serializers.IntegerField()
    ephemeral_storage_mb = serializers.IntegerField()
    network_enabled = serializers.BooleanField()
    environment = serializers.SerializerMethodField(help_text="Variable names; values are write-only and masked.")
    reserved_concurrency = serializers.IntegerField(allow_null=True)
    max_retry_attempts = serializers.IntegerField()
    max_event_age_s = serializers.IntegerField()
    on_success_destination = serializers.CharField()
    on_failure_destination = serializers.CharField()
    code_sha256 = serializers.CharField(source="code.sha256")
    code_size = serializers.IntegerField(source="code.size_bytes")
    version = serializers.SerializerMethodField()
    revision_id = serializers.UUIDField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def get_environment(self, function: Function) -> dict[str, str]:
        return env_masked(function.environment_keys)

    def get_version(self, function: Function) -> str:
        return "$LATEST"


class VersionOutputSerializer(serializers.Serializer):
    version = serializers.CharField(source="number", help_text='The label, e.g. "1" (as in aliases and invocations).')
    description = serializers.CharField()
    runtime = serializers.CharField()
    handler = serializers.CharField()
    memory_mb = serializers.IntegerField()
    timeout_s = serializers.IntegerField()
    ephemeral_storage_mb = serializers.IntegerField()
    network_enabled = serializers.BooleanField()
    environment = serializers.SerializerMethodField()
    code_sha256 = serializers.CharField(source="code.sha256")
    code_size = serializers.IntegerField(source="code.size_bytes")
    created_at = serializers.DateTimeField()

    def get_environment(self, version: Version) -> dict[str, str]:
        return env_masked(version.environment_keys)


class PublishSerializer(StrictSerializer):
    description = Text(required=False, allow_blank=True, max_length=256)
    revision_id = Uuid(required=False)


class AliasCreateSerializer(StrictSerializer):
    name = Text(max_length=128)
    version = VersionNumber()
    description = Text(required=False, allow_blank=True, max_length=256)
    additional_version = VersionNumber(required=False, allow_null=True)
    additional_weight = Number(required=False, allow_null=True)


class AliasUpdateSerializer(StrictSerializer):
    version = VersionNumber(required=False)
    description = Text(required=False, allow_blank=True, max_length=256)
    additional_version = VersionNumber(required=False, allow_null=True)
    additional_weight = Number(required=False, allow_null=True)
    revision_id = Uuid(required=False)


class AliasOutputSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    version = serializers.CharField(source="version.number", help_text='The version\'s label, e.g. "1".')
    additional_version = serializers.CharField(source="additional_version.number", allow_null=True, default=None)
    additional_weight = serializers.FloatField()
    revision_id = serializers.UUIDField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class TestEventCreateSerializer(StrictSerializer):
    __test__ = False
    name = Text(max_length=25)
    event = serializers.JSONField()


class TestEventUpdateSerializer(StrictSerializer):
    __test__ = False
    event = serializers.JSONField()


class TestEventOutputSerializer(JsonTextSerializer):
    __test__ = False
    json_text_fields = ("event",)
    name = serializers.CharField()
    event = serializers.JSONField(source="event_json", help_text="The event, any JSON value.")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    unparsed = unparsed_field()


# ---- views --------------------------------------------------------------------------------------------------


class FunctionListApi(JsonApi):
    @extend_schema(
        operation_id="functions_list",
        parameters=[
            OpenApiParameter("search", str, description="Substring of the name or description."),
            OpenApiParameter("runtime", str, description="Only functions with this runtime."),
        ],
        responses={200: paginated_of(FunctionOutputSerializer), **ERRORS},
    )
    def get(self, request: ApiRequest) -> Response:
        functions = selectors.function_list(
            owner=request.user,
            search=request.query_params.get("search", ""),
            runtime=request.query_params.get("runtime", ""),
        )
        return paginated(request, self, functions, FunctionOutputSerializer)

    @extend_schema(
        operation_id="functions_create",
        request=FunctionCreateSerializer,
        responses={201: FunctionOutputSerializer, **ERRORS},
    )
    def post(self, request: ApiRequest) -> Response:
        data = json_body(FunctionCreateSerializer, request)
        code = code_upload_from(data.pop("code"))
        function = services.function_create(owner=request.user, code=code, **data)
        return Response(FunctionOutputSerializer(function).data, status=status.HTTP_201_CREATED)


class FunctionDetailApi(JsonApi):
    @extend_schema(operation_id="functions_retrieve", responses={200: FunctionOutputSerializer, **ERRORS})
    def get(self, request: ApiRequest, name: str) -> Response:
        function = selectors.function_get(owner=request.user, name=name)
        return Response(FunctionOutputSerializer(function).data)

    @extend_schema(
        operation_id="functions_update_configuration",
        request=FunctionUpdateSerializer,
        responses={200: FunctionOutputSerializer, **ERRORS},
    )
    def patch(self, request: ApiRequest, name: str) -> Response:
        function = selectors.function_get(owner=request.user, name=name)
        data = json_body(FunctionUpdateSerializer, request)
        function = services.function_update_configuration(function=function, **data)
        return Response(FunctionOutputSerializer(function).data)

    @extend_schema(operation_id="functions_destroy", responses={204: None, **ERRORS})
    def delete(self, request: ApiRequest, name: str) -> Response:
        services.function_delete(function=selectors.function_get(owner=request.user, name=name))
        return Response(status=status.HTTP_204_NO_CONTENT)


class FunctionCodeApi(JsonApi):
    parser_classes = [StrictJSONParser, MultiPartParser]

    @extend_schema(
        operation_id="functions_update_code",
        request={"application/json": CodeUpdateSerializer, "multipart/form-data": CodeUploadSerializer},
        responses={200: FunctionOutputSerializer, **ERRORS},
        description="Replace the code of `$LATEST`: a multipart `zip` file, base64 zip in JSON, or inline files.",
    )
    def put(self, request: ApiRequest, name: str) -> Response:
        function = selectors.function_get(owner=request.user, name=name)
        code, revision_id = self._code_from(request)
        function = services.function_update_code(function=function, code=code, revision_id=revision_id)
        return Response(FunctionOutputSerializer(function).data)

    def _code_from(self, request: Request) -> tuple[services.CodeUpload, str | None]:
        if request.content_type.startswith("multipart/"):
            data = json_body(CodeUploadSerializer, request)
            upload = data["zip"]
            if upload.size > ZIPPED_MAX_BYTES:
                raise RequestTooLarge(f"The zip is {upload.size} bytes; the limit is 50 MB.")
            return services.CodeUpload(zip_bytes=upload.read()), data.get("revision_id")
        data = json_body(CodeUpdateSerializer, request)
        return code_upload_from(data), data.get("revision_id")


class VersionListApi(JsonApi):
    @extend_schema(operation_id="versions_list", responses={200: paginated_of(VersionOutputSerializer), **ERRORS})
    def get(self, request: ApiRequest, name: str) -> Response:
        function = selectors.function_get(owner=request.user, name=name)
        return paginated(request, self, selectors.version_list(function=function), VersionOutputSerializer)

    @extend_schema(
        operation_id="versions_publish",
        request=PublishSerializer,
        responses={201: VersionOutputSerializer, 200: VersionOutputSerializer, **ERRORS},
        description="Publish `$LATEST` as a new immutable version; unchanged code and configuration return the "
        "latest version with 200.",
    )
    def post(self, request: ApiRequest, name: str) -> Response:
        function = selectors.function_get(owner=request.user, name=name)
        data = json_body(PublishSerializer, request)
        version, created = services.version_publish(function=function, **data)
        return Response(VersionOutputSerializer(version).data, status=201 if created else 200)


class VersionDetailApi(JsonApi):
    @extend_schema(operation_id="versions_retrieve", responses={200: VersionOutputSerializer, **ERRORS})
    def get(self, request: ApiRequest, name: str, number: int) -> Response:
        function = selectors.function_get(owner=request.user, name=name)
        return Response(VersionOutputSerializer(selectors.version_get(function=function, number=number)).data)


class AliasListApi(JsonApi):
    @extend_schema(operation_id="aliases_list", responses={200: paginated_of(AliasOutputSerializer), **ERRORS})
    def get(self, request: ApiRequest, name: str) -> Response:
        function = selectors.function_get(owner=request.user, name=name)
        return paginated(request, self, selectors.alias_list(function=function), AliasOutputSerializer)

    @extend_schema(
        operation_id="aliases_create", request=AliasCreateSerializer, responses={201: AliasOutputSerializer, **ERRORS}
    )
    def post(self, request: ApiRequest, name: str) -> Response:
        function = selectors.function_get(owner=request.user, name=name)
        alias: Alias = services.alias_create(function=function, **json_body(AliasCreateSerializer, request))
        return Response(AliasOutputSerializer(alias).data, status=status.HTTP_201_CREATED)


class AliasDetailApi(JsonApi):
    @extend_schema(operation_id="aliases_retrieve", responses={200: AliasOutputSerializer, **ERRORS})
    def get(self, request: ApiRequest, name: str, alias: str) -> Response:
        function = selectors.function_get(owner=request.user, name=name)
        return Response(AliasOutputSerializer(selectors.alias_get(function=function, name=alias)).data)

    @extend_schema(
        operation_id="aliases_update", request=AliasUpdateSerializer, responses={200: AliasOutputSerializer, **ERRORS}
    )
    def patch(self, request: ApiRequest, name: str, alias: str) -> Response:
        function = selectors.function_get(owner=request.user, name=name)
        target = selectors.alias_get(function=function, name=alias)
        updated = services.alias_update(alias=target, **json_body(AliasUpdateSerializer, request))
        return Response(AliasOutputSerializer(updated).data)

    @extend_schema(operation_id="aliases_destroy", responses={204: None, **ERRORS})
    def delete(self, request: ApiRequest, name: str, alias: str) -> Response:
        function = selectors.function_get(owner=request.user, name=name)
        services.alias_delete(alias=selectors.alias_get(function=function, name=alias))
        return Response(status=status.HTTP_204_NO_CONTENT)


class TestEventListApi(JsonApi):
    @extend_schema(operation_id="test_events_list", responses={200: paginated_of(TestEventOutputSerializer), **ERRORS})
    def get(self, request: ApiRequest, name: str) -> Response:
        function = selectors.function_get(owner=request.user, name=name)
        return paginated(request, self, selectors.test_event_list(function=function), TestEventOutputSerializer)

    @extend_schema(
        operation_id="test_events_create",
        request=TestEventCreateSerializer,
        responses={201: TestEventOutputSerializer, **ERRORS},
    )
    def post(self, request: ApiRequest, name: str) -> Response:
        function = selectors.function_get(owner=request.user, name=name)
        test_event = services.test_event_create(function=function, **json_body(TestEventCreateSerializer, request))
        return Response(TestEventOutputSerializer(test_event).data, status=status.HTTP_201_CREATED)


class TestEventDetailApi(JsonApi):
    @extend_schema(operation_id="test_events_retrieve", responses={200: TestEventOutputSerializer, **ERRORS})
    def get(self, request: ApiRequest, name: str, event: str) -> Response:
        function = selectors.function_get(owner=request.user, name=name)
        return Response(TestEventOutputSerializer(selectors.test_event_get(function=function, name=event)).data)

    @extend_schema(
        operation_id="test_events_update",
        request=TestEventUpdateSerializer,
        responses={200: TestEventOutputSerializer, **ERRORS},
    )
    def put(self, request: ApiRequest, name: str, event: str) -> Response:
        function = selectors.function_get(owner=request.user, name=name)
        target = selectors.test_event_get(function=function, name=event)
        updated = services.test_event_update(test_event=target, **json_body(TestEventUpdateSerializer, request))
        return Response(TestEventOutputSerializer(updated).data)

    @extend_schema(operation_id="test_events_destroy", responses={204: None, **ERRORS})
    def delete(self, request: ApiRequest, name: str, event: str) -> Response:
        function = selectors.function_get(owner=request.user, name=name)
        services.test_event_delete(test_event=selectors.test_event_get(function=function, name=event))
        return Response(status=status.HTTP_204_NO_CONTENT)
