"""REST API of HTTP triggers: a function's URL (/api/v1/functions/{name}/url/, ``?qualifier=`` for an alias's)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from console.auth import ApiRequest
from console.json_api import ERRORS, JsonApi, StrictSerializer, json_body
from functions_app import http_triggers, selectors
from functions_app.models import FunctionUrl, FunctionUrlAuth, InvokeMode


class CorsSerializer(StrictSerializer):
    allow_origins = serializers.ListField(child=serializers.CharField(), required=False, help_text="`*` or origins.")
    allow_methods = serializers.ListField(child=serializers.CharField(), required=False, help_text="`GET`, … or `*`.")
    allow_headers = serializers.ListField(child=serializers.CharField(), required=False)
    expose_headers = serializers.ListField(child=serializers.CharField(), required=False)
    max_age = serializers.IntegerField(required=False, help_text="Seconds a browser may cache a preflight (≤ 86400).")
    allow_credentials = serializers.BooleanField(required=False)


class FunctionUrlCreateSerializer(StrictSerializer):
    auth_type = serializers.ChoiceField(
        choices=FunctionUrlAuth.values, help_text="`NONE`: public. `TOKEN`: an API key of the function's owner."
    )
    cors = serializers.JSONField(required=False, help_text="See CorsSerializer; `{}` or absent: no CORS.")
    invoke_mode = serializers.ChoiceField(choices=InvokeMode.values, required=False)


class FunctionUrlUpdateSerializer(StrictSerializer):
    auth_type = serializers.ChoiceField(choices=FunctionUrlAuth.values, required=False)
    cors = serializers.JSONField(required=False)
    invoke_mode = serializers.ChoiceField(choices=InvokeMode.values, required=False)


class FunctionUrlOutputSerializer(serializers.Serializer):
    url = serializers.SerializerMethodField(help_text="The absolute address to call.")
    url_id = serializers.CharField()
    function = serializers.CharField(source="function.name")
    qualifier = serializers.CharField()
    auth_type = serializers.CharField()
    invoke_mode = serializers.CharField()
    cors = CorsSerializer()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def get_url(self, url: FunctionUrl) -> str:
        request: Request = self.context["request"]
        return http_triggers.function_url_address(url=url, scheme=request.scheme or "http", host=request.get_host())


QUALIFIER = OpenApiParameter("qualifier", str, description="`$LATEST` (default) or an alias name.")


def _output(request: Request, url: FunctionUrl, status_code: int = status.HTTP_200_OK) -> Response:
    return Response(FunctionUrlOutputSerializer(url, context={"request": request}).data, status=status_code)


class FunctionUrlApi(JsonApi):
    @extend_schema(
        operation_id="function_url_retrieve",
        parameters=[QUALIFIER],
        responses={200: FunctionUrlOutputSerializer, **ERRORS},
    )
    def get(self, request: ApiRequest, name: str) -> Response:
        function = selectors.function_get(owner=request.user, name=name)
        qualifier = request.query_params.get("qualifier", "")
        return _output(request, http_triggers.function_url_get(function=function, qualifier=qualifier))

    @extend_schema(
        operation_id="function_url_create",
        parameters=[QUALIFIER],
        request=FunctionUrlCreateSerializer,
        responses={201: FunctionUrlOutputSerializer, **ERRORS},
    )
    def post(self, request: ApiRequest, name: str) -> Response:
        function = selectors.function_get(owner=request.user, name=name)
        url = http_triggers.function_url_create(
            function=function,
            qualifier=request.query_params.get("qualifier", ""),
            **json_body(FunctionUrlCreateSerializer, request),
        )
        return _output(request, url, status.HTTP_201_CREATED)

    @extend_schema(
        operation_id="function_url_update",
        parameters=[QUALIFIER],
        request=FunctionUrlUpdateSerializer,
        responses={200: FunctionUrlOutputSerializer, **ERRORS},
    )
    def patch(self, request: ApiRequest, name: str) -> Response:
        function = selectors.function_get(owner=request.user, name=name)
        url = http_triggers.function_url_get(function=function, qualifier=request.query_params.get("qualifier", ""))
        updated = http_triggers.function_url_update(url=url, **json_body(FunctionUrlUpdateSerializer, request))
        return _output(request, updated)

    @extend_schema(operation_id="function_url_destroy", parameters=[QUALIFIER], responses={204: None, **ERRORS})
    def delete(self, request: ApiRequest, name: str) -> Response:
        function = selectors.function_get(owner=request.user, name=name)
        url = http_triggers.function_url_get(function=function, qualifier=request.query_params.get("qualifier", ""))
        http_triggers.function_url_delete(url=url)
        return Response(status=status.HTTP_204_NO_CONTENT)
