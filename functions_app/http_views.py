"""The web side of HTTP triggers: which requests are a function URL's (by host or by the /fn/ prefix), the
request as the trigger service reads it, and its answer as Django's response."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
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
from functions_app.http_gateway import API_PREFIX, HTTP_API, http_api_find, http_api_plan
from functions_app.http_streams import stream_answer
from functions_app.http_triggers import (
    FUNCTION_URL,
    URL_PREFIX,
    PendingCall,
    call_answer,
    function_url_find,
    function_url_plan,
    message_answer,
)

# Served under the console's own origin (the /fn/ and /http/ prefixes), a function's page must not act as the
# console: in a sandbox without allow-same-origin its scripts run with an opaque origin, so they cannot read the
# console's cookies or storage, nor call its API as the signed-in user. On a trigger's own host it is left alone.
PREFIX_SANDBOX = "sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads"


class HttpTriggerMiddleware:
    """First in the chain: a request to a function URL or an HTTP API goes to it, whatever its path (on a
    trigger's own host, /api/ is the function's too), and nothing of the console (sessions, CSRF, its headers)
    applies."""

    def __init__(self, get_response: Callable[[DjangoRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: DjangoRequest) -> HttpResponse:
        route = trigger_route(request)
        if route is None:
            return self.get_response(request)
        return trigger_response(request, route)


@dataclass(frozen=True)
class TriggerRoute:
    kind: str  # FUNCTION_URL or HTTP_API
    trigger_id: str
    raw_path: str  # what follows the trigger's address
    on_own_host: bool


def trigger_route(request: DjangoRequest) -> TriggerRoute | None:
    return trigger_route_for(request.META.get("HTTP_HOST", ""), request.path, _raw_path(request))


def trigger_route_for(host: str, path: str, raw_path: str) -> TriggerRoute | None:
    """Where a trigger's request goes: by its host under FUNCTION_URL_DOMAIN (a url id has 32 characters, an
    API id 10), or by the /fn/ and /http/ prefixes (``path`` decoded, ``raw_path`` as sent)."""
    domain = settings.FUNCTION_URL_DOMAIN
    if domain:
        host = host.lower()
        if ":" not in domain:
            host = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        label = host[: -len(domain) - 1]
        if host.endswith(f".{domain}") and label and "." not in label:
            return TriggerRoute(FUNCTION_URL if len(label) == 32 else HTTP_API, label, raw_path, True)
    for prefix, kind in ((URL_PREFIX, FUNCTION_URL), (API_PREFIX, HTTP_API)):
        if path.startswith(prefix):
            trigger_id, _, rest = path[len(prefix) :].partition("/")
            raw_rest = raw_path[len(prefix) + len(trigger_id) :] if raw_path.startswith(prefix + trigger_id) else ""
            return TriggerRoute(kind, trigger_id, raw_rest or escape_uri_path(f"/{rest}"), False)
    return None


def _raw_path(request: DjangoRequest) -> str:
    """The path as the client sent it (percent-encoding kept: ``a%2Fb`` is one segment), where the server tells
    it (gunicorn's RAW_URI), else the decoded path encoded again."""
    raw = str(request.META.get("RAW_URI", "")).split("?", 1)[0]
    return raw if raw.startswith("/") else escape_uri_path(request.path)


def trigger_response(request: DjangoRequest, route: TriggerRoute) -> HttpResponse:
    facts, refusal = _request_facts(request, route.raw_path)
    answer = refusal or _planned_answer(trigger_plan(route, facts))
    return _django_response(answer_for(route, answer))


def _planned_answer(plan: HttpAnswer | PendingCall) -> HttpAnswer:
    if isinstance(plan, PendingCall) and plan.streamed:
        return stream_answer(plan)
    return call_answer(plan)


def trigger_plan(route: TriggerRoute, facts: HttpRequest) -> HttpAnswer | PendingCall:
    """The trigger's plan for the request (see ``function_url_plan``, ``http_api_plan``), or 404."""
    host = (facts.header("host") or "").rsplit(":", 1)[0]
    if route.kind == FUNCTION_URL:
        url = function_url_find(url_id=route.trigger_id)
        if url is None:
            return message_answer(404, "Not Found: no function URL has this address")
        return function_url_plan(url=url, request=facts, domain_name=host)
    api = http_api_find(api_id=route.trigger_id)
    if api is None:
        return message_answer(404, "Not Found: no HTTP API has this address")
    return http_api_plan(api=api, request=facts, domain_name=host)


def answer_for(route: TriggerRoute, answer: HttpAnswer) -> HttpAnswer:
    """The answer as sent: under the console's origin, kept to the trigger's path and sandboxed."""
    if route.on_own_host:
        return answer
    prefix = URL_PREFIX if route.kind == FUNCTION_URL else API_PREFIX
    headers = _confined(answer.headers, f"{prefix}{route.trigger_id}/")
    policies = [value for name, value in headers if name.lower() == "content-security-policy"]
    headers = [(name, value) for name, value in headers if name.lower() != "content-security-policy"]
    headers.append(("Content-Security-Policy", ", ".join([*policies, PREFIX_SANDBOX])))
    return dataclasses.replace(answer, headers=headers)


# Headers that act on the whole origin: a function under the console's origin may not send them.
ORIGIN_WIDE_HEADERS = frozenset(("clear-site-data", "strict-transport-security", "set-cookie2"))


def _confined(headers: list[tuple[str, str]], path: str) -> list[tuple[str, str]]:
    """A function's headers, under the console's origin, kept to its own address: its cookies get ``Path`` of it
    and no ``Domain`` (they can neither replace the console's session nor reach another function), cookies with
    the console's names are dropped, and origin-wide headers too."""
    platform_cookies = {settings.SESSION_COOKIE_NAME, settings.CSRF_COOKIE_NAME, "messages"}
    kept = []
    for name, value in headers:
        if name.lower() in ORIGIN_WIDE_HEADERS:
            continue
        if name.lower() == "set-cookie":
            pair, *attributes = [part.strip() for part in value.split(";")]
            if pair.split("=", 1)[0].strip() in platform_cookies:
                continue
            attributes = [a for a in attributes if a.split("=", 1)[0].strip().lower() not in ("path", "domain")]
            value = "; ".join([pair, *attributes, f"Path={path}"])
        kept.append((name, value))
    return kept


def _request_facts(request: DjangoRequest, raw_path: str) -> tuple[HttpRequest, HttpAnswer | None]:
    headers = [
        (key[5:].replace("_", "-").lower(), _as_sent(str(value)))
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


def _as_sent(value: str) -> str:
    """A header value as the client meant it: WSGI hands over its bytes as Latin-1, and they are most often
    UTF-8 (then decoded as such; anything else stays as it came)."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def _body(request: DjangoRequest) -> tuple[bytes, HttpAnswer | None]:
    """The body, unless it is over the limit (known from its length before reading it, or found reading a chunked
    one) or the client failed."""
    too_large = message_answer(413, f"Request Entity Too Large: the body is over {SYNC_PAYLOAD_MAX_BYTES} bytes")
    try:
        chunked = "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower()
        if chunked and not request.META.get("CONTENT_LENGTH"):
            # No length to go by: Django reads none of such a body, so read it from the server's stream.
            body = request.META["wsgi.input"].read(SYNC_PAYLOAD_MAX_BYTES + 1)
            return (b"", too_large) if len(body) > SYNC_PAYLOAD_MAX_BYTES else (body, None)
        if int(request.META.get("CONTENT_LENGTH") or 0) > SYNC_PAYLOAD_MAX_BYTES:
            return b"", too_large
        return request.body, None
    except ValueError:
        return b"", message_answer(400, "Bad Request: Content-Length is not a number")
    except RequestDataTooBig:
        return b"", too_large
    except (UnreadablePostError, OSError):
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
    for name, text in answer.headers:
        # WSGI sends header text as Latin-1: UTF-8 text goes out as its UTF-8 bytes, as Lambda sends it.
        value = text.encode("utf-8").decode("latin-1")
        if name.lower() == "set-cookie":
            dict.__setitem__(response.cookies, f"set-cookie-{len(response.cookies)}", _RawCookie(value))
        else:
            joined.setdefault(name.lower(), (name, []))[1].append(value)
    for name, values in joined.values():
        response.headers[name] = ", ".join(values)
    return response
