"""HTTP requests as Lambda's events, and functions' results as HTTP responses: pure functions, field by field as
API Gateway's payload format 2.0 (HTTP APIs and function URLs) defines them, so handlers written for Lambda run
unchanged. docs/http-endpoints.md lists the rules and the choices made where Lambda leaves room."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import parse_qsl

# Bodies of these types reach the function as text (when they are UTF-8); any other body is base64.
TEXT_TYPES = ("text/", "json", "xml", "javascript", "application/x-www-form-urlencoded", "application/graphql")


@dataclass(frozen=True)
class HttpRequest:
    """What the platform received, independent of the web server: the path as sent (percent-encoding kept, the
    platform's own prefix removed), header pairs as received, in order."""

    method: str
    raw_path: str
    raw_query: str
    headers: list[tuple[str, str]]
    body: bytes
    source_ip: str
    received_at: datetime
    protocol: str = "HTTP/1.1"
    scheme: str = "http"
    port: int = 80

    def header(self, name: str) -> str | None:
        """The header's values, comma-joined (None when absent)."""
        values = [value for key, value in self.headers if key.lower() == name]
        return ",".join(values) if values else None


@dataclass(frozen=True)
class HttpTarget:
    """Where the request arrived, as the event's requestContext names it."""

    api_id: str
    domain_name: str
    domain_prefix: str
    request_id: str
    account_id: str = "anonymous"
    route_key: str = "$default"
    stage: str = "$default"
    path_parameters: dict[str, str] | None = None
    stage_variables: dict[str, str] | None = None
    authorizer: dict[str, Any] | None = None


class BodyStream(Protocol):
    """A response body sent as it is produced (functions_app.http_streams): its pieces, and how many bytes of
    them went out so far."""

    sent: int

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


@dataclass
class HttpAnswer:
    """A response to send: status, header pairs (a name may repeat, as Set-Cookie does) and the body, or the
    ``stream`` that produces it; and what to do once it is sent (``after_sent``: bookkeeping the client should not
    wait for)."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    after_sent: Callable[[], None] | None = None
    stream: BodyStream | None = None

    @property
    def size(self) -> int:
        """The body's bytes (of a stream: those sent so far)."""
        return self.stream.sent if self.stream is not None else len(self.body)


class MalformedResponse(ValueError):
    """The function's result cannot be an HTTP response; the message says why (it goes into the record)."""


def event_v2(request: HttpRequest, target: HttpTarget, *, extra_headers: dict[str, str] | None = None) -> dict:
    """The payload format 2.0 event: lower-case header names, repeated headers and query keys comma-joined, the
    Cookie header split out into ``cookies``, empty parts left out, a binary body base64-encoded."""
    headers, cookies = _headers_v2(request.headers)
    headers.update(extra_headers or {})
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": target.route_key,
        "rawPath": request.raw_path,
        "rawQueryString": request.raw_query,
    }
    if cookies:
        event["cookies"] = cookies
    event["headers"] = headers
    query = _query_v2(request.raw_query)
    if query:
        event["queryStringParameters"] = query
    event["requestContext"] = _request_context_v2(request, target, headers)
    if request.body:
        event["body"], event["isBase64Encoded"] = body_for_event(request.body, headers.get("content-type", ""))
    else:
        event["isBase64Encoded"] = False
    if target.path_parameters:
        event["pathParameters"] = target.path_parameters
    if target.stage_variables:
        event["stageVariables"] = target.stage_variables
    return event


def event_v1(request: HttpRequest, target: HttpTarget, *, resource: str) -> dict:
    """The payload format 1.0 event (REST API proxy): single values (the last of repeated ones) beside
    ``multiValue*`` lists, the Cookie header kept, absent parts null, ``requestContext.identity``."""
    multi_headers: dict[str, list[str]] = {}
    for name, value in request.headers:
        multi_headers.setdefault(name.lower(), []).append(value)
    multi_query: dict[str, list[str]] = {}
    for key, value in parse_qsl(request.raw_query, keep_blank_values=True):
        multi_query.setdefault(key, []).append(value)
    body, is_base64 = (None, False)
    if request.body:
        body, is_base64 = body_for_event(request.body, request.header("content-type") or "")
    user_agent = request.header("user-agent") or ""
    return {
        "version": "1.0",
        "resource": resource,
        "path": request.raw_path,
        "httpMethod": request.method,
        "headers": {name: values[-1] for name, values in multi_headers.items()},
        "multiValueHeaders": multi_headers,
        "queryStringParameters": {key: values[-1] for key, values in multi_query.items()} or None,
        "multiValueQueryStringParameters": multi_query or None,
        "requestContext": {
            "accountId": target.account_id,
            "apiId": target.api_id,
            "authorizer": target.authorizer,
            "domainName": target.domain_name,
            "domainPrefix": target.domain_prefix,
            "extendedRequestId": target.request_id,
            "httpMethod": request.method,
            "identity": {
                "accessKey": None,
                "accountId": None,
                "caller": None,
                "cognitoAuthenticationProvider": None,
                "cognitoAuthenticationType": None,
                "cognitoIdentityId": None,
                "cognitoIdentityPoolId": None,
                "principalOrgId": None,
                "sourceIp": request.source_ip,
                "user": None,
                "userAgent": user_agent,
                "userArn": None,
            },
            "path": request.raw_path,
            "protocol": request.protocol,
            "requestId": target.request_id,
            "requestTime": request.received_at.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "requestTimeEpoch": int(request.received_at.timestamp() * 1000),
            "resourceId": target.route_key,
            "resourcePath": resource,
            "stage": target.stage,
        },
        "pathParameters": target.path_parameters or None,
        "stageVariables": target.stage_variables or None,
        "body": body,
        "isBase64Encoded": is_base64,
    }


def _headers_v2(pairs: list[tuple[str, str]]) -> tuple[dict[str, str], list[str]]:
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in pairs:
        key = name.lower()
        if key == "cookie":  # repeated Cookie headers may arrive comma-joined
            cookies.extend(part.strip() for part in value.replace(",", ";").split(";") if part.strip())
            continue
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    return headers, cookies


def _query_v2(raw_query: str) -> dict[str, str]:
    query: dict[str, str] = {}
    for key, value in parse_qsl(raw_query, keep_blank_values=True):
        query[key] = f"{query[key]},{value}" if key in query else value
    return query


def _request_context_v2(request: HttpRequest, target: HttpTarget, headers: dict[str, str]) -> dict[str, Any]:
    context: dict[str, Any] = {
        "accountId": target.account_id,
        "apiId": target.api_id,
        "domainName": target.domain_name,
        "domainPrefix": target.domain_prefix,
        "http": {
            "method": request.method,
            "path": request.raw_path,
            "protocol": request.protocol,
            "sourceIp": request.source_ip,
            "userAgent": headers.get("user-agent", ""),
        },
        "requestId": target.request_id,
        "routeKey": target.route_key,
        "stage": target.stage,
        "time": request.received_at.strftime("%d/%b/%Y:%H:%M:%S +0000"),
        "timeEpoch": int(request.received_at.timestamp() * 1000),
    }
    if target.authorizer is not None:
        context["authorizer"] = target.authorizer
    return context


def body_for_event(body: bytes, content_type: str) -> tuple[str, bool]:
    """The body as the event carries it: text for a textual type in UTF-8, else base64 (and True)."""
    if any(kind in content_type.lower() for kind in TEXT_TYPES):
        try:
            return body.decode("utf-8"), False
        except UnicodeDecodeError:
            pass
    return base64.b64encode(body).decode("ascii"), True


def answer_v2(result: str) -> HttpAnswer:
    """The function's result (JSON text) as the response, by payload format 2.0's rules: an object with a
    ``statusCode`` is a response (headers, cookies, body, isBase64Encoded); any other JSON value is the body of
    a 200 ``application/json`` response (a string: its text). Raises MalformedResponse."""
    try:
        value = json.loads(result) if result else None
    except ValueError as exc:
        raise MalformedResponse(f"The result is not JSON: {exc}") from None
    if isinstance(value, dict) and "statusCode" in value:
        return _structured(value)
    body = value if isinstance(value, str) else result
    return HttpAnswer(200, [("Content-Type", "application/json")], body.encode())


def stream_head(prelude: bytes | None) -> HttpAnswer:
    """A streamed response's status and headers: from the handler's first item when that is a dict (its
    ``statusCode``, ``headers`` and ``cookies``, as Lambda's HttpResponseStream metadata), else 200; its
    Content-Type ``application/octet-stream`` unless the function names one. Raises MalformedResponse."""
    try:
        value = json.loads(prelude) if prelude else {}
    except ValueError as exc:
        raise MalformedResponse(f"The stream's first item is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise MalformedResponse("A stream's prelude is an object with statusCode, headers and cookies.")
    headers = value.get("headers") or {}
    bodiless = value.get("statusCode") in (204, 304)
    if isinstance(headers, dict) and not bodiless and not any(str(name).lower() == "content-type" for name in headers):
        headers = {**headers, "Content-Type": "application/octet-stream"}
    return _structured({"statusCode": 200, **value, "headers": headers, "body": None, "isBase64Encoded": False})


def answer_v1(result: str) -> HttpAnswer:
    """The function's result as the response by payload format 1.0's rules: it must be an object with a
    ``statusCode`` (headers, multiValueHeaders, body, isBase64Encoded). Raises MalformedResponse."""
    try:
        value = json.loads(result) if result else None
    except ValueError as exc:
        raise MalformedResponse(f"The result is not JSON: {exc}") from None
    if not isinstance(value, dict) or "statusCode" not in value:
        raise MalformedResponse("A payload format 1.0 response is an object with a statusCode.")
    return _structured(value)


# What the platform decides about a response, never the function: hop-by-hop headers (the connection is the
# server's), the length (the body's own) and the framing.
PLATFORM_RESPONSE_HEADERS = frozenset(
    ("connection", "keep-alive", "proxy-authenticate", "proxy-connection", "te", "trailer", "transfer-encoding",
     "upgrade", "content-length", "x-invocation-id")
)  # fmt: skip
TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _structured(value: dict[str, Any]) -> HttpAnswer:
    status = value["statusCode"]
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
        raise MalformedResponse(f"statusCode must be an integer from 200 to 599, not {status!r}.")
    headers = _response_headers(value.get("headers"), value.get("multiValueHeaders"))
    cookies = value.get("cookies") or []
    if not isinstance(cookies, list) or not all(isinstance(cookie, str) for cookie in cookies):
        raise MalformedResponse("cookies must be a list of strings.")
    for cookie in cookies:
        _check_value("Set-Cookie", cookie)
    headers.extend(("Set-Cookie", cookie) for cookie in cookies)
    if not any(name.lower() == "content-type" for name, _ in headers):
        headers.append(("Content-Type", "application/json"))  # never sniffed as a page: the function said nothing
    return HttpAnswer(status, headers, _response_body(value.get("body"), value.get("isBase64Encoded", False)))


def _response_headers(single: Any, multi: Any) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    if single is not None:
        if not isinstance(single, dict):
            raise MalformedResponse("headers must be an object of header names to values.")
        headers.extend((str(name), _header_value(name, value)) for name, value in single.items())
    if multi is not None:
        if not isinstance(multi, dict) or not all(isinstance(values, list) for values in multi.values()):
            raise MalformedResponse("multiValueHeaders must be an object of header names to lists of values.")
        named = {name.lower() for name, _ in headers}
        for name, values in multi.items():
            if str(name).lower() not in named:
                headers.extend((str(name), _header_value(name, value)) for value in values)
    for name, value in headers:
        if not name or not set(name) <= TOKEN_CHARS:
            raise MalformedResponse(f"{name!r} is not a header name (letters, digits and !#$%&'*+-.^_`|~ only).")
        _check_value(name, value)
    return [(name, value) for name, value in headers if name.lower() not in PLATFORM_RESPONSE_HEADERS]


def _check_value(name: str, value: str) -> None:
    """A header value is text without control characters (a tab allowed): no line break can split a response."""
    if any((ord(char) < 32 and char != "\t") or ord(char) == 127 for char in value):
        raise MalformedResponse(f"The header {name!r} has a control character or line break in its value.")


def _header_value(name: Any, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise MalformedResponse(f"The header {name!r} must have a string, number or boolean value.")


def _response_body(body: Any, is_base64: Any) -> bytes:
    if body is None:
        return b""
    if not isinstance(body, str):
        raise MalformedResponse(f"body must be a string, not {type(body).__name__} (json.dumps it).")
    if not is_base64:
        return body.encode()
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedResponse("isBase64Encoded is true but the body is not valid base64.") from None
