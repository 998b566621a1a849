"""The web side of HTTP triggers: which requests are a function URL's (by host or by the /fn/ prefix), the
request as the trigger service reads it, and its answer as Django's response."""

from __future__ import annotations

from collections.abc import Callable
from http.cookies import Morsel
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest as DjangoRequest
from django.http import HttpResponse, UnreadablePostError
from django.utils import timezone
from django.utils.encoding import escape_uri_path

from functions_app.accept import SYNC_PAYLOAD_MAX_BYTES
from functions_app.http_events import HttpAnswer, HttpRequest
from functions_app.http_triggers import URL_PREFIX, function_url_find, function_url_serve, message_answer

# Served under the console's own origin (the /fn/ prefix), a function's page must not act as the console: in a
# sandbox without allow-same-origin its scripts run with an opaque origin, so they cannot read the console's
# cookies or storage, nor call its API as the signed-in user. A function URL under its own host is left alone.
PREFIX_SANDBOX = "sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads"


class HttpTriggerMiddleware:
    """First in the chain: a function URL's request goes to its function, whatever its path (on a function's own
    host, /api/ is the function's too), and nothing of the console (sessions, CSRF, its headers) applies."""

    def __init__(self, get_response: Callable[[DjangoRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: DjangoRequest) -> HttpResponse:
        route = function_url_route(request)
        if route is None:
            return self.get_response(request)
        url_id, raw_path, on_own_host = route
        return function_url_response(request, url_id=url_id, raw_path=raw_path, on_own_host=on_own_host)


def function_url_route(request: DjangoRequest) -> tuple[str, str, bool] | None:
    """(url id, the path the function sees, whether on the URL's own host) for a function URL's request."""
    domain = settings.FUNCTION_URL_DOMAIN
    if domain:
        host = request.META.get("HTTP_HOST", "").lower()
        if ":" not in domain:
            host = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if host.endswith(f".{domain}") and "." not in host[: -len(domain) - 1]:
            return host[: -len(domain) - 1], escape_uri_path(request.path), True
    if request.path.startswith(URL_PREFIX):
        url_id, _, rest = request.path[len(URL_PREFIX) :].partition("/")
        return url_id, escape_uri_path(f"/{rest}"), False
    return None


def function_url_response(request: DjangoRequest, *, url_id: str, raw_path: str, on_own_host: bool) -> HttpResponse:
    url = function_url_find(url_id=url_id)
    if url is None:
        answer = message_answer(404, "Not Found: no function URL has this address")
    else:
        facts, refusal = _request_facts(request, raw_path)
        host = request.META.get("HTTP_HOST", "").rsplit(":", 1)[0]
        answer = refusal or function_url_serve(url=url, request=facts, domain_name=host)
    response = _django_response(answer)
    if not on_own_host:
        response.headers["Content-Security-Policy"] = ", ".join(
            value for value in (response.headers.get("Content-Security-Policy"), PREFIX_SANDBOX) if value
        )
    return response


def _request_facts(request: DjangoRequest, raw_path: str) -> tuple[HttpRequest, HttpAnswer | None]:
    headers = [
        (key[5:].replace("_", "-").lower(), str(value))
        for key, value in request.META.items()
        if key.startswith("HTTP_")
    ]
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if request.META.get(key):
            headers.append((key.replace("_", "-").lower(), str(request.META[key])))
    body, refusal = _body(request)
    facts = HttpRequest(
        method=request.method or "GET",
        raw_path=raw_path,
        raw_query=request.META.get("QUERY_STRING", ""),
        headers=headers,
        body=body,
        source_ip=request.META.get("REMOTE_ADDR", ""),
        received_at=timezone.now(),
        protocol=request.META.get("SERVER_PROTOCOL", "HTTP/1.1"),
        scheme=request.scheme or "http",
        port=int(request.get_port() or 80),
    )
    return facts, refusal


def _body(request: DjangoRequest) -> tuple[bytes, HttpAnswer | None]:
    """The body, unless it is over the limit (known from its length before reading it) or the client failed."""
    too_large = message_answer(413, f"Request Entity Too Large: the body is over {SYNC_PAYLOAD_MAX_BYTES} bytes")
    try:
        if int(request.META.get("CONTENT_LENGTH") or 0) > SYNC_PAYLOAD_MAX_BYTES:
            return b"", too_large
        return request.body, None
    except ValueError:
        return b"", message_answer(400, "Bad Request: Content-Length is not a number")
    except RequestDataTooBig:
        return b"", too_large
    except UnreadablePostError:
        return b"", message_answer(400, "Bad Request: the body could not be read")


class _RawCookie(Morsel):
    """A Set-Cookie line passed on as the function wrote it (Django otherwise re-renders cookies it parsed)."""

    def __init__(self, line: str) -> None:
        super().__init__()
        self.line = line

    def output(self, attrs: Any = None, header: str = "Set-Cookie:") -> str:
        return f"{header} {self.line}".lstrip()

    def OutputString(self, attrs: Any = None) -> str:
        return self.line


class _AnsweredResponse(HttpResponse):
    """A response that runs its answer's ``after_sent`` once the server has sent it (WSGI calls close() then)."""

    after_sent: Callable[[], None] | None = None

    def close(self) -> None:
        try:
            if self.after_sent is not None:
                self.after_sent()
        finally:
            super().close()


def _django_response(answer: HttpAnswer) -> HttpResponse:
    response = _AnsweredResponse(answer.body, status=answer.status)
    response.after_sent = answer.after_sent
    del response.headers["Content-Type"]
    response.headers["Content-Length"] = str(len(answer.body))
    joined: dict[str, tuple[str, list[str]]] = {}  # a repeated header is one, its values comma-joined
    for name, value in answer.headers:
        if name.lower() == "set-cookie":
            dict.__setitem__(response.cookies, f"set-cookie-{len(response.cookies)}", _RawCookie(value))
        else:
            joined.setdefault(name.lower(), (name, []))[1].append(value)
    for name, values in joined.values():
        response.headers[name] = ", ".join(values)
    return response
