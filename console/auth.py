"""The REST API's key authentication: ``Authorization: Token <key>`` (or ``Bearer <key>``), checked by hash; and
the request types of signed-in pages and API calls."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.http import HttpRequest
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from console.accounts import api_key_authenticate
from console.timing import phase

KEYWORDS = ("token", "bearer")


# Annotations only: Django and DRF build their requests as always. A console page runs behind login_required and
# every API view behind IsAuthenticated (REST_FRAMEWORK in console/settings.py), so the user they see is an
# account, never AnonymousUser: these say so to the type checker, and the owner reaches selectors as a User.
class SignedInRequest(HttpRequest):
    user: User


class ApiRequest(Request):
    user: User


def api_key_owner(authorization: str) -> User | None:
    """The account whose API key an ``Authorization`` header carries (``Token <key>`` or ``Bearer <key>``), or
    None (another scheme, no key, or a key no longer good): for what is served outside DRF."""
    parts = authorization.split()
    if len(parts) != 2 or parts[0].lower() not in KEYWORDS:
        return None
    with phase("auth"):
        return api_key_authenticate(key=parts[1])


class ApiKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[Any, None] | None:
        parts = authentication.get_authorization_header(request).split()
        if not parts or parts[0].lower().decode(errors="replace") not in KEYWORDS:
            return None  # another scheme, or none: the session may still authenticate
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Send one API key: Authorization: Token <key>.")
        try:
            key = parts[1].decode()
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("The API key is not text.") from None
        with phase("auth"):
            user = api_key_authenticate(key=key)
        if user is None:
            raise exceptions.AuthenticationFailed("Invalid, expired or revoked API key.")
        return user, None

    def authenticate_header(self, request: Request) -> str:
        return "Token"


class ApiKeyScheme(OpenApiAuthenticationExtension):
    """How the OpenAPI schema describes this authentication (drf-spectacular finds it by its target class)."""

    target_class = "console.auth.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Token <key>` (or `Bearer <key>`): a key made on the console's account page or with "
            "POST /api/v1/api-keys/.",
        }
