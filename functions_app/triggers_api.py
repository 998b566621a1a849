"""REST API of HTTP triggers: a function's URL (/api/v1/functions/{name}/url/, ``?qualifier=`` for an alias's)
and HTTP APIs (/api/v1/http-apis/), each a whole definition of routes, stages, authorizers and CORS."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from console.auth import ApiRequest
from console.json_api import ERRORS, JsonApi, StrictSerializer, json_body
from functions_app import http_apis, http_triggers, selectors
from functions_app.models import FunctionUrl, FunctionUrlAuth, HttpApi, InvokeMode


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


# ---- HTTP APIs -------------------------------------------------------------------------------------------------


class HttpApiCreateSerializer(StrictSerializer):
    name = serializers.CharField(max_length=128)
    description = serializers.CharField(required=False, allow_blank=True, max_length=1024)
    definition = serializers.JSONField(
        required=False,
        help_text="{routes: [{route_key, function, qualifier, payload_format, timeout_ms, authorizer, "
        "authorization_scopes, throttle}], stages: [{name, variables, throttle}], authorizers: [{name, type, "
        "function, identity_sources, ttl_s, issuer, audience, jwks_url}], cors, not_found}: see the README.",
    )


class HttpApiUpdateSerializer(StrictSerializer):
    description = serializers.CharField(required=False, allow_blank=True, max_length=1024)
    definition = serializers.JSONField(required=False, help_text="Replaces the whole definition.")


class HttpApiOutputSerializer(serializers.Serializer):
    name = serializers.CharField()
    api_id = serializers.CharField()
    description = serializers.CharField()
    definition = serializers.JSONField()
    stages = serializers.SerializerMethodField(help_text="Each stage's name and invoke URL.")
    routes = serializers.SerializerMethodField(help_text="Each route with a curl line for its stages' URLs.")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def get_stages(self, api: HttpApi) -> list[dict[str, str]]:
        request: Request = self.context["request"]
        stages = http_apis.http_api_stages(api=api, scheme=request.scheme or "http", host=request.get_host())
        return [{"name": name, "url": url} for name, url in stages]

    def get_routes(self, api: HttpApi) -> list[dict[str, str]]:
        first_stage = self.get_stages(api)[0]["url"]
        return [
            {
                "route_key": route["route_key"],
                "function": route["function"],
                "curl": http_apis.route_curl(first_stage, route["route_key"]),
            }
            for route in api.definition.get("routes", [])
        ]


def _api_output(request: Request, api: HttpApi, status_code: int = status.HTTP_200_OK) -> Response:
    return Response(HttpApiOutputSerializer(api, context={"request": request}).data, status=status_code)


class HttpApiListApi(JsonApi):
    @extend_schema(operation_id="http_apis_list", responses={200: HttpApiOutputSerializer(many=True), **ERRORS})
    def get(self, request: ApiRequest) -> Response:
        apis = http_apis.http_api_list(owner=request.user)
        return Response(HttpApiOutputSerializer(apis, many=True, context={"request": request}).data)

    @extend_schema(
        operation_id="http_apis_create",
        request=HttpApiCreateSerializer,
        responses={201: HttpApiOutputSerializer, **ERRORS},
    )
    def post(self, request: ApiRequest) -> Response:
        api = http_apis.http_api_create(owner=request.user, **json_body(HttpApiCreateSerializer, request))
        return _api_output(request, api, status.HTTP_201_CREATED)


class HttpApiDetailApi(JsonApi):
    @extend_schema(operation_id="http_apis_retrieve", responses={200: HttpApiOutputSerializer, **ERRORS})
    def get(self, request: ApiRequest, name: str) -> Response:
        return _api_output(request, http_apis.http_api_get(owner=request.user, name=name))

    @extend_schema(
        operation_id="http_apis_update",
        request=HttpApiUpdateSerializer,
        responses={200: HttpApiOutputSerializer, **ERRORS},
    )
    def patch(self, request: ApiRequest, name: str) -> Response:
        api = http_apis.http_api_get(owner=request.user, name=name)
        updated = http_apis.http_api_update(api=api, **json_body(HttpApiUpdateSerializer, request))
        return _api_output(request, updated)

    @extend_schema(operation_id="http_apis_destroy", responses={204: None, **ERRORS})
    def delete(self, request: ApiRequest, name: str) -> Response:
        http_apis.http_api_delete(api=http_apis.http_api_get(owner=request.user, name=name))
        return Response(status=status.HTTP_204_NO_CONTENT)
