"""REST API for the caller's access keys (Lambda's API, docs/lambda-api.md) and account: /api/v1/access-keys/ and
/api/v1/account/. A key's secret is returned once, by the POST that makes (or rotates) it."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response

from console import access_keys
from console.accounts import NAME_MAX
from console.auth import ApiRequest
from console.json_api import ERRORS, Integer, JsonApi, StrictSerializer, Text, json_body, paginated, paginated_of
from console.models import AccessKey


class AccessKeyOutputSerializer(serializers.Serializer):
    access_key_id = serializers.CharField()
    name = serializers.CharField()
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True, help_text="To the minute.")
    expires_at = serializers.DateTimeField(allow_null=True, help_text="Set when the key was rotated with a grace.")
    revoked_at = serializers.DateTimeField(allow_null=True)
    active = serializers.BooleanField(source="is_active")


class AccessKeyCreatedSerializer(AccessKeyOutputSerializer):
    secret_access_key = serializers.CharField(help_text="The secret: shown in this response only, never again.")


class AccessKeyCreateSerializer(StrictSerializer):
    name = Text(max_length=NAME_MAX)


class AccessKeyRotateSerializer(StrictSerializer):
    grace_s = Integer(
        required=False, default=0, help_text="How long the old key keeps working (0: revoked now; at most 7 days)."
    )


def _created(key: AccessKey, secret: str) -> Response:
    # The secret is no column of the row (only its ciphertext is): the response adds it to the row's fields.
    body = {**AccessKeyOutputSerializer(key).data, "secret_access_key": secret}
    return Response(body, status=status.HTTP_201_CREATED)


class AccessKeyListApi(JsonApi):
    @extend_schema(operation_id="access_keys_list", responses={200: paginated_of(AccessKeyOutputSerializer), **ERRORS})
    def get(self, request: ApiRequest) -> Response:
        return paginated(request, self, access_keys.access_key_list(owner=request.user), AccessKeyOutputSerializer)

    @extend_schema(
        operation_id="access_keys_create",
        request=AccessKeyCreateSerializer,
        responses={201: AccessKeyCreatedSerializer, **ERRORS},
        description="Make an access key for Lambda's API (SigV4); the response holds its secret, shown once.",
    )
    def post(self, request: ApiRequest) -> Response:
        return _created(
            *access_keys.access_key_create(owner=request.user, **json_body(AccessKeyCreateSerializer, request))
        )


class AccessKeyDetailApi(JsonApi):
    @extend_schema(operation_id="access_keys_retrieve", responses={200: AccessKeyOutputSerializer, **ERRORS})
    def get(self, request: ApiRequest, access_key_id: str) -> Response:
        key = access_keys.access_key_get(owner=request.user, access_key_id=access_key_id)
        return Response(AccessKeyOutputSerializer(key).data)

    @extend_schema(operation_id="access_keys_revoke", responses={204: None, **ERRORS}, description="Revoke the key.")
    def delete(self, request: ApiRequest, access_key_id: str) -> Response:
        access_keys.access_key_revoke(
            access_key=access_keys.access_key_get(owner=request.user, access_key_id=access_key_id)
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class AccessKeyRotateApi(JsonApi):
    @extend_schema(
        operation_id="access_keys_rotate",
        request=AccessKeyRotateSerializer,
        responses={201: AccessKeyCreatedSerializer, **ERRORS},
        description="A new key of the same name (its secret shown once); the old one works grace_s seconds more.",
    )
    def post(self, request: ApiRequest, access_key_id: str) -> Response:
        key = access_keys.access_key_get(owner=request.user, access_key_id=access_key_id)
        # No body at all is {}; anything else must be a JSON object (json_body refuses an array, a string, …).
        fields = {} if request.data == {} else json_body(AccessKeyRotateSerializer, request)
        return _created(*access_keys.access_key_rotate(access_key=key, **fields))


ACCOUNT = inline_serializer(
    "Account",
    fields={
        "account_id": serializers.CharField(help_text="The 12-digit id in your ARNs."),
        "region": serializers.CharField(),
        "lambda_endpoint": serializers.CharField(help_text="AWS_ENDPOINT_URL_LAMBDA for the AWS CLI and SDKs."),
    },
)


class AccountApi(JsonApi):
    @extend_schema(operation_id="account_retrieve", responses={200: ACCOUNT, **ERRORS})
    def get(self, request: ApiRequest) -> Response:
        return Response(
            {
                "account_id": access_keys.account_id_of(request.user),
                "region": settings.AWS_REGION,
                "lambda_endpoint": request.build_absolute_uri("/").rstrip("/"),
            }
        )
