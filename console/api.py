"""REST API for the caller's own API keys (/api/v1/api-keys/). A key is returned once, by the POST that makes it."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response

from console import accounts
from console.auth import ApiRequest
from console.json_api import ERRORS, JsonApi, StrictSerializer, Text, json_body, paginated, paginated_of


class ApiKeyOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    prefix = serializers.CharField(help_text="The key's first characters after `eph_`, to tell keys apart.")
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True, help_text="To the minute.")
    expires_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    active = serializers.BooleanField(source="is_active")


class ApiKeyCreatedSerializer(ApiKeyOutputSerializer):
    key = serializers.CharField(help_text="The key itself: shown in this response only, never again.")


class ApiKeyCreateSerializer(StrictSerializer):
    name = Text(max_length=accounts.NAME_MAX)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)


class ApiKeyListApi(JsonApi):
    @extend_schema(operation_id="api_keys_list", responses={200: paginated_of(ApiKeyOutputSerializer), **ERRORS})
    def get(self, request: ApiRequest) -> Response:
        return paginated(request, self, accounts.api_key_list(owner=request.user), ApiKeyOutputSerializer)

    @extend_schema(
        operation_id="api_keys_create",
        request=ApiKeyCreateSerializer,
        responses={201: ApiKeyCreatedSerializer, **ERRORS},
        description="Make a key; the response holds the key itself, which is stored only as a hash.",
    )
    def post(self, request: ApiRequest) -> Response:
        api_key, key = accounts.api_key_create(owner=request.user, **json_body(ApiKeyCreateSerializer, request))
        # The key is no column of the row (only its hash is): the response adds it to the row's fields.
        return Response({**ApiKeyOutputSerializer(api_key).data, "key": key}, status=status.HTTP_201_CREATED)


class ApiKeyDetailApi(JsonApi):
    @extend_schema(operation_id="api_keys_retrieve", responses={200: ApiKeyOutputSerializer, **ERRORS})
    def get(self, request: ApiRequest, key_id: int) -> Response:
        return Response(ApiKeyOutputSerializer(accounts.api_key_get(owner=request.user, pk=key_id)).data)

    @extend_schema(operation_id="api_keys_revoke", responses={204: None, **ERRORS}, description="Revoke the key.")
    def delete(self, request: ApiRequest, key_id: int) -> Response:
        accounts.api_key_revoke(api_key=accounts.api_key_get(owner=request.user, pk=key_id))
        return Response(status=status.HTTP_204_NO_CONTENT)
