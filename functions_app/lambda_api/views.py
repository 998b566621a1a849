"""Lambda's API at its dated paths (``/2015-03-31/functions…``): a plain Django view, no CSRF (requests are signed),
AWS's error bodies for everything (functions_app/lambda_api/surface.py does the work)."""

from __future__ import annotations

import hashlib

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from functions_app.lambda_api.operations import Reply
from functions_app.lambda_api.surface import (
    Incoming,
    body_limit,
    caller_of,
    error_reply,
    header_dict,
    matched_of,
    operation_call,
    raw_path_of,
    reply_body,
    reply_headers,
    too_large,
    unmatched,
)


@csrf_exempt
def lambda_api(request: HttpRequest) -> HttpResponse:
    incoming = Incoming(
        method=request.method or "GET",
        path=request.path,
        raw_path=raw_path_of(request.path, getattr(request, "scope", {}).get("raw_path")),
        query_string=request.META.get("QUERY_STRING", ""),
        headers=header_dict(request.headers.items()),
        secure=request.is_secure(),
    )
    try:
        reply = _served(request, incoming)
    except Exception as exc:  # noqa: BLE001 - every failure is answered as AWS answers it (error_reply logs bugs)
        reply = error_reply(exc)
    response = HttpResponse(reply_body(reply), status=reply.status, content_type="application/json")
    for name, value in reply_headers(reply):
        response[name] = value
    return response


def _served(request: HttpRequest, incoming: Incoming) -> Reply:
    matched = matched_of(incoming)
    operation = matched.operation.name if matched else None
    length = request.META.get("CONTENT_LENGTH") or "0"
    if length.isdigit() and int(length) > body_limit(operation):
        raise too_large(operation)
    body = request.body
    if len(body) > body_limit(operation):
        raise too_large(operation)
    call = caller_of(incoming, hashlib.sha256(body).hexdigest())
    if matched is None:
        raise unmatched(incoming)
    return operation_call(call, matched.operation, incoming, matched, body)
