"""Service errors and the one place that turns any failure into the API's error format.

Every API error is ``HTTP status + {"type": ..., "message": ..., "details": ...}``; the ``type`` strings are
stable (clients branch on them), the messages are for people.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.signals import got_request_exception
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpResponse, JsonResponse, UnreadablePostError
from django.urls import is_valid_path
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rest_framework import exceptions as drf
from rest_framework.response import Response

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """A rule of the domain was broken by the caller's input; raised by services, mapped to a 4xx."""

    status = 400
    type = "InvalidParameterValue"

    def __init__(
        self, message: str, *, details: Any = None, type: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}
        if type:
            self.type = type


class ResourceNotFound(ServiceError):
    status = 404
    type = "ResourceNotFound"


class ResourceConflict(ServiceError):
    status = 409
    type = "ResourceConflict"


class PreconditionFailed(ServiceError):
    status = 412
    type = "PreconditionFailed"


class RequestTooLarge(ServiceError):
    status = 413
    type = "RequestTooLarge"


class TooManyRequests(ServiceError):
    status = 429
    type = "TooManyRequests"


class CodeStorageError(ServiceError):
    type = "CodeStorageError"


class ServiceUnavailable(ServiceError):
    """A part the platform depends on (database, Redis) is down for now; the request may be retried."""

    status = 503
    type = "ServiceUnavailable"

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.headers.setdefault("Retry-After", str(OUTAGE_RETRY_AFTER_S))


# What a client is told to wait before retrying during an outage: about one database or Redis restart.
OUTAGE_RETRY_AFTER_S = 5
OUTAGE_MESSAGE = "A service the platform depends on is unavailable for a moment; retry shortly."


def is_outage(exc: BaseException | None) -> bool:
    """The database or Redis cannot be reached (restarting, say): not the request's fault, nor a bug."""
    return isinstance(exc, OperationalError | InterfaceError | RedisConnectionError | RedisTimeoutError)


# DRF's own exceptions, by class, to our stable types.
_DRF_TYPES: list[tuple[type[Exception], str]] = [
    (drf.ParseError, "InvalidRequestContent"),
    (drf.UnsupportedMediaType, "UnsupportedMediaType"),
    (drf.NotAuthenticated, "NotAuthenticated"),
    (drf.AuthenticationFailed, "AuthenticationFailed"),
    (drf.PermissionDenied, "AccessDenied"),
    (drf.NotFound, "ResourceNotFound"),
    (drf.MethodNotAllowed, "MethodNotAllowed"),
    (drf.NotAcceptable, "NotAcceptable"),
    (drf.Throttled, "TooManyRequests"),
    (drf.ValidationError, "InvalidParameterValue"),
]


def error_body(type_: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"type": type_, "message": message, "details": details if details is not None else {}}


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, UnreadablePostError | TimeoutError):
        # The client stopped sending its body (the server's read timeout): its fault, and it may not even listen.
        message = "The request body stopped arriving before it was complete."
        return Response(error_body("RequestTimeout", message), status=408)
    if is_outage(exc):
        logger.warning("Answering 503: %r", exc)
        exc = ServiceUnavailable(OUTAGE_MESSAGE)
    if isinstance(exc, ServiceError):
        return Response(error_body(exc.type, exc.message, exc.details), status=exc.status, headers=exc.headers)
    if isinstance(exc, Http404):
        return Response(error_body("ResourceNotFound", "The resource was not found."), status=404)
    if isinstance(exc, DjangoPermissionDenied):
        return Response(error_body("AccessDenied", "You may not do that."), status=403)
    if isinstance(exc, RequestDataTooBig):
        return Response(error_body("RequestTooLarge", "The request body is too large."), status=413)
    if isinstance(exc, DjangoValidationError):
        details = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        return Response(error_body("InvalidParameterValue", _first_message(details), details), status=400)
    if isinstance(exc, drf.UnsupportedMediaType):
        return _unsupported_media_type(context)
    if isinstance(exc, drf.APIException):
        return _drf_response(exc)
    return None


def _unsupported_media_type(context: dict[str, Any]) -> Response:
    # `curl -d '{...}'` labels JSON as a form: say what to send instead of what went wrong in parsing.
    got = context["request"].content_type
    expected = [parser.media_type for parser in context["view"].get_parsers()]
    message = (
        f"This endpoint takes {' or '.join(expected)}, not {got or 'a body without a Content-Type'}. Send JSON "
        "with the header Content-Type: application/json (with curl: --json, or -H 'Content-Type: application/json')."
    )
    return Response(error_body("UnsupportedMediaType", message, {"content_type": got, "expected": expected}), 415)


def _drf_response(exc: drf.APIException) -> Response:
    type_ = next((name for cls, name in _DRF_TYPES if isinstance(exc, cls)), "InvalidRequest")
    headers = {}
    # Throttled.__init__ sets ``wait``; djangorestframework-stubs do not declare it.
    wait = exc.wait if isinstance(exc, drf.Throttled) else None  # type: ignore[attr-defined]
    if wait:
        headers["Retry-After"] = str(int(wait))
    if isinstance(exc, drf.ValidationError):
        details = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        return Response(error_body(type_, _first_message(details), details), status=exc.status_code)
    return Response(error_body(type_, str(exc.detail)), status=exc.status_code, headers=headers)


def _first_message(details: Any, path: str = "") -> str:
    """A human sentence naming the first offending field, e.g. "memory_mb: Ensure this value ..."."""
    if isinstance(details, dict):
        for key, value in details.items():
            prefix = path if key == "non_field_errors" else (f"{path}.{key}" if path else str(key))
            return _first_message(value, prefix)
    if isinstance(details, list) and details:
        return _first_message(details[0], path)
    text = str(details)
    return f"{path}: {text}" if path else text


API_PREFIX = "/api/"
# Lambda's own API (functions_app/lambda_api): its clients parse only AWS's error shape.
LAMBDA_PATH_RE = re.compile(r"^/\d{4}-\d{2}-\d{2}/")

# What an error response Django made itself (not the API) means, by status.
_STATUS_ERRORS = {
    400: ("InvalidRequest", "The request is malformed."),
    401: ("NotAuthenticated", "Authentication credentials were not provided."),
    403: ("AccessDenied", "You may not do that."),
    405: ("MethodNotAllowed", "This method is not allowed here."),
    413: ("RequestTooLarge", "The request body is too large."),
}


class ApiMiddleware:
    """Under /api/, before anything else sees the request:

    - a path without its trailing slash is served as the path with it. Every API path ends with a slash, and
      Django's APPEND_SLASH would answer with a redirect (which drops a POST's body) or, in development, a 500.
    - an error response that Django made, not the API (an unknown path, a disallowed host, the debug pages of
      DEBUG=True, a crash), is replaced by the error format, so a client never parses HTML.

    Everywhere: a request that failed because the database or Redis is down (in a view or in a middleware, such
    as the session lookup) is answered 503 with Retry-After, not 500: the client should retry, not report a bug.
    """

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> HttpResponse:
        is_api = request.path_info.startswith(API_PREFIX)
        if LAMBDA_PATH_RE.match(request.path_info):
            return _lambda_errors_in_aws_shape(request, self.get_response)
        if _holds_nul(request):
            return _nul_response(is_api)
        if is_api:
            _slash_append(request)
        response = self.get_response(request)
        if response.status_code >= 500 and is_outage(getattr(request, OUTAGE_ATTRIBUTE, None)):
            return _outage_response(is_api)
        if (
            is_api
            and response.status_code >= 400
            and not response.get("Content-Type", "").startswith("application/json")
        ):
            return _as_error_format(request, response)
        return response


# The exception a Lambda client gets for an error Django made before Lambda's view could answer, by status.
_LAMBDA_ERRORS = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "UnknownOperationException",
    405: "UnknownOperationException",
    413: "RequestEntityTooLargeException",
}


def _lambda_errors_in_aws_shape(request: Any, get_response: Any) -> HttpResponse:
    """Lambda's paths: whatever refuses a request before Lambda's view (a Host this server does not serve, a NUL in
    the path) answers as AWS does, ``x-amzn-ErrorType`` and a JSON body, never an HTML page."""
    if _holds_nul(request):
        return _lambda_error(400, "The path or the query string holds a NUL character (%00).")
    response = get_response(request)
    if response.status_code < 400 or "x-amzn-ErrorType" in response:
        return response
    return _lambda_error(
        response.status_code, _LAMBDA_MESSAGES.get(response.status_code, "The request cannot be served.")
    )


_LAMBDA_MESSAGES = {
    400: "The request was refused before it reached Lambda's API (is its Host header one this server answers to?).",
    404: "No Lambda operation is served at this path.",
    503: OUTAGE_MESSAGE,
}


def _lambda_error(status: int, message: str) -> HttpResponse:
    code = _LAMBDA_ERRORS.get(status, "ServiceException")
    message_key = "Message" if code == "ServiceException" else "message"
    body = {"Type": "User" if status < 500 else "Service", message_key: message}
    response = HttpResponse(json.dumps(body), status=status, content_type="application/json")
    response["x-amzn-ErrorType"] = code
    return response


def _holds_nul(request: Any) -> bool:
    # No name, id or filter holds a NUL character, and PostgreSQL refuses one in a query (a DataError, a 500).
    return "\x00" in request.path_info or "\x00" in request.META.get("QUERY_STRING", "").replace("%00", "\x00")


def _nul_response(is_api: bool) -> HttpResponse:
    message = "The path or the query string holds a NUL character (%00), which no name, id or filter can hold."
    if is_api:
        return JsonResponse(error_body("InvalidRequest", message), status=400)
    return HttpResponse(message, status=400, content_type="text/plain; charset=utf-8")


# Where the request keeps the exception that Django turned into a 500 (see _remember_exception).
OUTAGE_ATTRIBUTE = "_ephemera_uncaught_exception"


def _remember_exception(sender: Any, request: Any = None, **_: Any) -> None:
    # Django converts an exception into a 500 response inside each middleware layer, so the middleware above
    # never sees it; this signal fires while it is being handled.
    if request is not None:
        setattr(request, OUTAGE_ATTRIBUTE, sys.exc_info()[1])


got_request_exception.connect(_remember_exception, dispatch_uid="ephemera-remember-exception")


def _outage_response(is_api: bool) -> HttpResponse:
    if is_api:
        response: HttpResponse = JsonResponse(error_body(ServiceUnavailable.type, OUTAGE_MESSAGE), status=503)
    else:
        response = HttpResponse(
            f"<!doctype html><title>Unavailable</title><h1>Unavailable for a moment</h1><p>{OUTAGE_MESSAGE}</p>",
            status=503,
        )
    response["Retry-After"] = str(OUTAGE_RETRY_AFTER_S)
    return response


def _slash_append(request: Any) -> None:
    urlconf = getattr(request, "urlconf", None)
    path = request.path_info
    if not path.endswith("/") and not is_valid_path(path, urlconf) and is_valid_path(f"{path}/", urlconf):
        request.path_info, request.path = f"{path}/", f"{request.path}/"


def _as_error_format(request: Any, response: HttpResponse) -> JsonResponse:
    """The error as JSON: the API's own error (rendered as HTML for a browser) keeps its type and message."""
    data = getattr(response, "data", None)
    body = data if isinstance(data, dict) and "type" in data else _error_for_status(request, response.status_code)
    replacement = JsonResponse(body, status=response.status_code)
    for header in ("Allow", "Retry-After", "WWW-Authenticate"):
        if header in response:
            replacement[header] = response[header]
    return replacement


def _error_for_status(request: Any, status: int) -> dict[str, Any]:
    if status == 404:
        return error_body(
            "ResourceNotFound", f"No API endpoint at {request.path}; the API is described at /api/v1/docs/."
        )
    if status >= 500:
        # Reached only on a bug: the message stays generic, the traceback is in the log (django.request).
        return error_body("InternalError", "Something went wrong on our side.")
    return error_body(*_STATUS_ERRORS.get(status, ("InvalidRequest", "The request cannot be served.")))
