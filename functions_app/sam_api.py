"""REST API for importing AWS SAM templates (functions_app/sam.py, docs/sam.md)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from console.auth import ApiRequest
from console.exceptions import RequestTooLarge, ServiceError
from console.json_api import ERRORS, JsonApi, StrictJSONParser, StrictSerializer, Text, json_body
from functions_app.code import ZIPPED_MAX_BYTES
from functions_app.sam import TEMPLATE_MAX_BYTES, SamImportReport, queue_keys_of, sam_import, sam_project_import


class SamImportSerializer(StrictSerializer):
    template = Text(required=False, help_text="The template's text (YAML or JSON); code inline (InlineCode).")
    stack_name = Text(required=False, default="sam", max_length=128, help_text="Names the HTTP API of its routes.")
    dry_run = serializers.BooleanField(required=False, default=False)
    sqs_access_key_id = Text(required=False, default="", max_length=128, help_text="Keys for SQS events' queues.")
    sqs_secret_access_key = Text(required=False, default="", max_length=256)
    sqs_endpoint_url = Text(required=False, default="", max_length=512, help_text="An SQS-API server not AWS's.")


class SamUploadSerializer(StrictSerializer):
    template = serializers.FileField(required=False, help_text="template.yaml alone (code inline).")
    project = serializers.FileField(required=False, help_text="A zip: template.yaml at its top, code folders beside.")
    stack_name = serializers.CharField(required=False, default="sam", max_length=128)
    dry_run = serializers.BooleanField(required=False, default=False)
    sqs_access_key_id = serializers.CharField(required=False, default="", max_length=128)
    sqs_secret_access_key = serializers.CharField(required=False, default="", max_length=256)
    sqs_endpoint_url = serializers.CharField(required=False, default="", max_length=512)


def _options(data: dict[str, Any]) -> dict[str, Any]:
    keys = queue_keys_of(data["sqs_access_key_id"], data["sqs_secret_access_key"], data["sqs_endpoint_url"])
    return {"stack_name": data["stack_name"], "dry_run": data["dry_run"], "queue_keys": keys}


REPORT = inline_serializer(
    "SamImportReport",
    fields={
        "created": serializers.ListField(child=serializers.CharField()),
        "updated": serializers.ListField(child=serializers.CharField()),
        "unchanged": serializers.ListField(child=serializers.CharField()),
        "triggers": serializers.ListField(child=serializers.CharField()),
        "skipped": serializers.ListField(child=serializers.DictField(child=serializers.CharField())),
        "notes": serializers.ListField(child=serializers.CharField()),
        "dry_run": serializers.BooleanField(),
    },
)


class SamImportApi(JsonApi):
    parser_classes = [StrictJSONParser, MultiPartParser]

    @extend_schema(
        operation_id="sam_imports_create",
        request={"application/json": SamImportSerializer, "multipart/form-data": SamUploadSerializer},
        responses={200: REPORT, **ERRORS},
        description="Create or update the functions of an AWS SAM template, with their triggers; the report lists "
        "what was made and what was skipped, and why.",
    )
    def post(self, request: ApiRequest) -> Response:
        return Response(_imported(request, request.user).as_dict())


def _imported(request: Request, owner: User) -> SamImportReport:
    if not request.content_type.startswith("multipart/"):
        data = json_body(SamImportSerializer, request)
        if not data.get("template"):
            raise ServiceError("template: send the template's text.", details={"template": ["Required."]})
        return sam_import(owner=owner, template_text=data["template"], **_options(data))
    data = json_body(SamUploadSerializer, request)
    if bool(data.get("template")) == bool(data.get("project")):
        raise ServiceError("Upload a template file or a project zip (one of them).", details={"project": ["one of"]})
    if data.get("project"):
        upload = data["project"]
        if upload.size > ZIPPED_MAX_BYTES:
            raise RequestTooLarge(f"The project zip is {upload.size} bytes; the limit is {ZIPPED_MAX_BYTES} bytes.")
        return sam_project_import(owner=owner, project_zip=upload.read(), **_options(data))
    upload = data["template"]
    if upload.size > TEMPLATE_MAX_BYTES:
        raise RequestTooLarge(f"The template is {upload.size} bytes; the limit is {TEMPLATE_MAX_BYTES} bytes.")
    try:
        text = upload.read().decode("utf-8")
    except UnicodeDecodeError:
        raise ServiceError("The template is not UTF-8 text.", type="InvalidTemplate") from None
    return sam_import(owner=owner, template_text=text, **_options(data))
