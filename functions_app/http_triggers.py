"""HTTP triggers: function URLs (configured here, planned by ``function_url_plan``). A request becomes the payload
format 2.0 event, runs through the one invoke service (admission, limits, metering as any call) and comes back as
the function's mapped response; what answers instead of the function (CORS preflight, auth, a refused or failed
call) answers with API Gateway's bodies, ``{"message": …}``."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction

from console.auth import api_key_owner
from console.exceptions import ResourceConflict, ResourceNotFound, ServiceError
from functions_app import selectors
from functions_app.accept import SYNC_PAYLOAD_MAX_BYTES
from functions_app.cors import cors_decorate, cors_preflight, cors_validate
from functions_app.http_events import HttpAnswer, HttpRequest, HttpTarget, MalformedResponse, answer_v2, event_v2
from functions_app.invoke import DatabaseRunner, InvokeAnswer, function_invoke, function_invoke_async
from functions_app.lifecycle import CAPACITY_EXCEEDED, InvocationOutcome
from functions_app.models import (
    LATEST,
    Alias,
    Function,
    FunctionUrl,
    FunctionUrlAuth,
    Invocation,
    InvocationStatus,
    InvocationType,
    InvokeMode,
)
from functions_app.outages import DATABASE_ERRORS
from metrics_app.services import http_request_record

logger = logging.getLogger("ephemera.http")

FUNCTION_URL = "function-url"
URL_PREFIX = "/fn/"


# ---- configuration ------------------------------------------------------------------------------------------


def function_url_get(*, function: Function, qualifier: str = "") -> FunctionUrl:
    alias = _alias_of(function, qualifier)
    url = FunctionUrl.objects.select_related("alias").filter(function=function, alias=alias).first()
    if url is None:
        raise ResourceNotFound(f"{function.name}:{qualifier or LATEST} has no function URL.")
    return url


def function_url_by_id(*, function: Function, url_id: str) -> FunctionUrl:
    url = FunctionUrl.objects.select_related("alias").filter(function=function, url_id=url_id).first()
    if url is None:
        raise ResourceNotFound(f"{function.name} has no function URL {url_id}.")
    return url


def function_url_list(*, function: Function) -> list[FunctionUrl]:
    return list(FunctionUrl.objects.select_related("alias").filter(function=function))


def function_url_create(
    *, function: Function, qualifier: str = "", auth_type: str, cors: Any = None, invoke_mode: str = "BUFFERED"
) -> FunctionUrl:
    fields = {"auth_type": _auth_type(auth_type), "cors": cors_validate(cors), "invoke_mode": _invoke_mode(invoke_mode)}
    alias = _alias_of(function, qualifier)
    try:
        with transaction.atomic():
            return FunctionUrl.objects.create(function=function, alias=alias, url_id=_new_url_id(), **fields)
    except IntegrityError:
        raise ResourceConflict(
            f"{function.name}:{qualifier or LATEST} already has a function URL: update or delete it."
        ) from None


def function_url_update(*, url: FunctionUrl, **changes: Any) -> FunctionUrl:
    unknown = set(changes) - {"auth_type", "cors", "invoke_mode"}
    if unknown:
        raise ServiceError(f"Unknown fields: {', '.join(sorted(unknown))}.")
    if "auth_type" in changes:
        url.auth_type = _auth_type(changes["auth_type"])
    if "cors" in changes:
        url.cors = cors_validate(changes["cors"])
    if "invoke_mode" in changes:
        url.invoke_mode = _invoke_mode(changes["invoke_mode"])
    url.save()
    return url


def function_url_delete(*, url: FunctionUrl) -> None:
    url.delete()


def function_url_address(*, url: FunctionUrl, scheme: str, host: str) -> str:
    """The absolute URL to call: ``{url_id}.{FUNCTION_URL_DOMAIN}`` where a wildcard domain is set, else the
    path under this server's own address (``host`` is the console's, port included)."""
    if settings.FUNCTION_URL_DOMAIN:
        return f"{scheme}://{url.url_id}.{settings.FUNCTION_URL_DOMAIN}/"
    return f"{scheme}://{host}{URL_PREFIX}{url.url_id}/"


def _alias_of(function: Function, qualifier: str) -> Alias | None:
    if qualifier in ("", LATEST):
        return None
    if qualifier.isdigit():
        raise ServiceError(
            "A function URL serves $LATEST or an alias, not a version number: make an alias for the version.",
            details={"qualifier": ["Use $LATEST or an alias name."]},
        )
    return selectors.alias_get(function=function, name=qualifier)


def _auth_type(value: Any) -> str:
    if value not in FunctionUrlAuth.values:
        raise ServiceError(
            "auth_type is NONE (public) or TOKEN (an API key of the function's owner).",
            details={"auth_type": list(FunctionUrlAuth.values)},
        )
    return str(value)


def _invoke_mode(value: Any) -> str:
    if value not in InvokeMode.values:
        raise ServiceError(
            "invoke_mode is BUFFERED (the whole response at once) or RESPONSE_STREAM (sent as the handler yields it).",
            details={"invoke_mode": list(InvokeMode.values)},
        )
    return str(value)


def _new_url_id() -> str:
    return secrets.token_hex(16)  # 32 lower-case hex digits: a valid DNS label


# ---- serving ------------------------------------------------------------------------------------------------


def function_url_find(*, url_id: str) -> FunctionUrl | None:
    if len(url_id) != 32 or not url_id.isalnum():
        return None
    return FunctionUrl.objects.select_related("function__owner", "alias").filter(url_id=url_id).first()


def function_url_plan(*, url: FunctionUrl, request: HttpRequest, domain_name: str) -> HttpAnswer | PendingCall:
    """What a request to a function URL needs: an answer at once (a CORS preflight, a missing key, a refused
    request), or a call of the function (payload format 2.0) whose outcome is the answer."""
    started = time.perf_counter()
    label = URL_PREFIX + url.url_id
    meter = TriggerMeter(FUNCTION_URL, url.url_id, url.function.owner_id, function_id=url.function_id)
    preflight = cors_preflight(url.cors, request)
    if preflight is not None:
        return answer_logged(label, meter, request, preflight, started, None)
    refusal = _key_refusal(url, request) or request_refusal(request)
    if refusal is not None:
        return answer_logged(label, meter, request, cors_decorate(url.cors, request, refusal), started, None)
    target = HttpTarget(
        api_id=url.url_id, domain_name=domain_name, domain_prefix=url.url_id, request_id=str(uuid.uuid4())
    )
    for_function = request_for_function(request, strip_authorization=url.auth_type == FunctionUrlAuth.TOKEN)
    function = url.function
    return PendingCall(
        owner=function.owner,
        function=function,
        qualifier=url.qualifier,
        event=event_v2(for_function, target, extra_headers=forwarded_headers(request)),
        trigger={
            "type": FUNCTION_URL,
            "id": url.url_id,
            "method": request.method,
            "path": request.raw_path,
            **({"stream": True} if url.invoke_mode == InvokeMode.RESPONSE_STREAM else {}),
        },
        finish=lambda answer, invocation: answer_logged(
            label, meter, request, cors_decorate(url.cors, request, answer), started, invocation
        ),
    )


def _key_refusal(url: FunctionUrl, request: HttpRequest) -> HttpAnswer | None:
    if url.auth_type != FunctionUrlAuth.TOKEN:
        return None
    owner = api_key_owner(request.header("authorization") or "")
    if owner is None or owner.pk != url.function.owner_id:
        return message_answer(403, "Forbidden: send an API key of the function's owner: Authorization: Token <key>")
    return None


# ---- what every HTTP trigger shares -----------------------------------------------------------------------------


def request_refusal(request: HttpRequest) -> HttpAnswer | None:
    """Why a request is for no function: a '.' or '..' path segment (encoded or not), a body too large."""
    if any(segment in (".", "..") for segment in unquote(request.raw_path).split("/")):
        return message_answer(400, "Bad Request: the path holds a '.' or '..' segment")
    if len(request.body) > SYNC_PAYLOAD_MAX_BYTES:
        return message_answer(413, f"Request Entity Too Large: the body is over {SYNC_PAYLOAD_MAX_BYTES} bytes")
    return None


def request_for_function(request: HttpRequest, *, strip_authorization: bool) -> HttpRequest:
    """The request without what belongs to the platform: the console's session and CSRF cookies never reach a
    function, nor the platform's own Authorization header (``strip_authorization``)."""
    platform_cookies = {settings.SESSION_COOKIE_NAME, settings.CSRF_COOKIE_NAME}
    headers: list[tuple[str, str]] = []
    for name, value in request.headers:
        key = name.lower()
        if key == "authorization" and strip_authorization:
            continue
        if key == "cookie":
            # Repeated Cookie headers arrive comma-joined (a cookie's value never holds a comma).
            parts = value.replace(",", ";").split(";")
            kept = [part for part in parts if part.strip().split("=", 1)[0].strip() not in platform_cookies]
            if not kept:
                continue
            value = ";".join(kept)
        headers.append((name, value))
    return dataclasses.replace(request, headers=headers)


def forwarded_headers(request: HttpRequest) -> dict[str, str]:
    earlier = request.header("x-forwarded-for")
    return {
        "x-forwarded-proto": request.scheme,
        "x-forwarded-port": str(request.port),
        "x-forwarded-for": f"{earlier}, {request.source_ip}" if earlier else request.source_ip,
    }


@dataclass
class TriggerMeter:
    """What a request to an HTTP trigger is metered under: the trigger, and (for an HTTP API, filled in as the
    request is routed) the route and the function it counts against. Requests no route matches stay under
    UNMATCHED_ROUTE, with no function."""

    trigger_type: str
    trigger_id: str
    owner_id: int
    route: str = ""
    function_id: int | None = None


@dataclass(frozen=True)
class PendingCall:
    """A trigger's call of its function, ready to go through the one invoke service (synchronously, waiting at
    most ``wait_s``); ``to_answer`` maps its result by the payload format's rules, ``finish`` adds what the
    trigger adds to any answer (CORS, the access log, the record)."""

    owner: User
    function: Function
    qualifier: str
    event: dict[str, Any]
    trigger: dict[str, Any]
    finish: Callable[[HttpAnswer, Invocation | None], HttpAnswer]
    to_answer: Callable[[str], HttpAnswer] = answer_v2
    wait_s: float | None = None

    @property
    def streamed(self) -> bool:
        """Whether the response goes out as the function produces it (see functions_app.http_streams)."""
        return bool(self.trigger.get("stream"))

    def invoke_arguments(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "function": self.function,
            "qualifier": self.qualifier,
            "raw_payload": json.dumps(self.event).encode(),
            "trigger": self.trigger,
            "wait_s": self.wait_s,
        }

    def answered(self, answer: InvokeAnswer) -> HttpAnswer:
        assert answer.outcome is not None  # a sync call always has one
        return self.finish(_mapped(answer.outcome, answer.invocation, self.to_answer), answer.invocation)

    def refused(self, exc: ServiceError) -> HttpAnswer:
        return self.finish(refused_answer(exc), None)


def call_answer(plan: HttpAnswer | PendingCall) -> HttpAnswer:
    """The answer of a plan, the call made and waited for in this thread."""
    if isinstance(plan, HttpAnswer):
        return plan
    try:
        invoked = function_invoke(invocation_type=InvocationType.SYNC, **plan.invoke_arguments())
    except ServiceError as exc:
        return plan.refused(exc)
    return plan.answered(invoked)


async def call_answer_async(plan: HttpAnswer | PendingCall, *, db: DatabaseRunner) -> HttpAnswer:
    """The answer of a plan on an event loop: the call accepted through ``db``, its outcome awaited."""
    if isinstance(plan, HttpAnswer):
        return plan
    try:
        invoked = await function_invoke_async(db=db, **plan.invoke_arguments())
    except ServiceError as exc:
        return await db(functools.partial(plan.refused, exc))
    return await db(functools.partial(plan.answered, invoked))


def _mapped(
    outcome: InvocationOutcome, invocation: Invocation | None, to_answer: Callable[[str], HttpAnswer]
) -> HttpAnswer:
    """The outcome as the HTTP response: the function's own, or API Gateway's for what went wrong."""
    if not outcome.finished:
        answer = message_answer(504, "Endpoint request timed out")
    elif outcome.error_type == CAPACITY_EXCEEDED:
        answer = message_answer(429, "Too Many Requests", [("Retry-After", "1")])
    elif outcome.status == InvocationStatus.TIMED_OUT:
        answer = message_answer(504, "Endpoint request timed out")
    elif outcome.function_error or outcome.platform_error:
        answer = message_answer(502, "Internal Server Error")
    else:
        try:
            answer = to_answer(outcome.result)
        except MalformedResponse as exc:
            if invocation is not None:
                invocation.trigger = {**(invocation.trigger or {}), "error": str(exc)}
            answer = message_answer(502, "Internal Server Error")
    answer.headers.append(("X-Invocation-Id", outcome.invocation_id))
    return answer


def refused_answer(exc: ServiceError) -> HttpAnswer:
    messages = {413: "Request Entity Too Large", 429: "Too Many Requests", 503: "Service Unavailable"}
    message = messages.get(exc.status, "Bad Request" if exc.status < 500 else "Internal Server Error")
    return message_answer(exc.status, f"{message}: {exc.message}", list(exc.headers.items()))


def message_answer(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> HttpAnswer:
    """API Gateway's own answer: ``{"message": …}`` as JSON."""
    body = json.dumps({"message": message}).encode()
    return HttpAnswer(status, [("Content-Type", "application/json"), *(headers or [])], body)


def answer_logged(
    label: str,
    meter: TriggerMeter,
    request: HttpRequest,
    answer: HttpAnswer,
    started: float,
    invocation: Invocation | None,
) -> HttpAnswer:
    """One access-log line per request (``label``: the trigger's address; a streamed body's size is "stream", not
    known yet); once the answer is sent, the request metered under ``meter`` and the answer's status and size on
    the invocation's record."""
    elapsed_ms = (time.perf_counter() - started) * 1000
    logger.info(
        "%s %s %s%s %s %s %.1fms %s",
        request.source_ip,
        request.method,
        label,
        request.raw_path,
        answer.status,
        answer.size if answer.stream is None else "stream",
        elapsed_ms,
        invocation.pk if invocation else "-",
    )
    answer.after_sent = functools.partial(_after_sent, meter, answer, elapsed_ms, invocation)
    return answer


def _after_sent(meter: TriggerMeter, answer: HttpAnswer, latency_ms: float, invocation: Invocation | None) -> None:
    """The request's bookkeeping, off the client's wait (a streamed body's size is known by then): one RPUSH (which
    logs its own failures and never raises for Redis) and the invocation's record."""
    metered = dataclasses.asdict(meter)
    http_request_record(**metered, status=answer.status, latency_ms=latency_ms, response_bytes=answer.size)
    if invocation is not None:
        _trigger_record(invocation, answer)


def _trigger_record(invocation: Invocation, answer: HttpAnswer) -> None:
    """The answer's status and size on the invocation's record, once the client has it: a write it never waits
    for. A database that fails it loses only these two facts (logged); the call itself is recorded."""
    trigger = {**(invocation.trigger or {}), "status": answer.status, "response_bytes": answer.size}
    try:
        Invocation.objects.filter(pk=invocation.pk).update(trigger=trigger)
    except DATABASE_ERRORS as exc:
        logger.warning("Invocation %s: its HTTP status was not recorded (%r)", invocation.pk, exc)
