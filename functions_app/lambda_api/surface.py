"""One request to Lambda's API, from the wire to the answer: its operation (by method and dated path), its size
limit, the caller (SigV4 with an access key, functions_app/lambda_api/sigv4.py), its input (botocore's model),
the operation itself, and any failure as AWS's error. Served by a Django view (functions_app/lambda_api/views.py)
and, for a synchronous Invoke, on the event loop (functions_app/lambda_api/asgi.py)."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from botocore.model import OperationModel
from django.conf import settings
from django.contrib.auth.models import User
from django.db import DatabaseError
from django.utils import timezone
from redis.exceptions import RedisError

from console.exceptions import OUTAGE_MESSAGE, ServiceError
from functions_app.lambda_api import trigger_operations  # noqa: F401 - registers its operations
from functions_app.lambda_api.errors import LambdaError, from_service_error, service_unavailable
from functions_app.lambda_api.model import Matched, WireRequest, json_dumps, operation_input, route_match
from functions_app.lambda_api.operations import OPERATIONS, Call, Reply
from functions_app.lambda_api.shapes import Account
from functions_app.lambda_api.sigv4 import SignedRequest, query_pairs, signature_verify

logger = logging.getLogger(__name__)

# Lambda's request limits: a CreateFunction or UpdateFunctionCode carries a 50 MB zip in base64 inside JSON; an
# Invoke at most 6 MB of payload; anything else is small.
CODE_REQUEST_MAX_BYTES = 70_167_211
INVOKE_REQUEST_MAX_BYTES = 6 * 1024 * 1024
OTHER_REQUEST_MAX_BYTES = 6 * 1024 * 1024
_CODE_OPERATIONS = frozenset({"CreateFunction", "UpdateFunctionCode"})


@dataclass(frozen=True)
class Incoming:
    method: str
    path: str  # decoded
    raw_path: str  # as sent
    query_string: str
    headers: dict[str, str]  # lower-case names
    secure: bool


def body_limit(operation: str | None) -> int:
    if operation in _CODE_OPERATIONS:
        return CODE_REQUEST_MAX_BYTES
    return INVOKE_REQUEST_MAX_BYTES if operation == "Invoke" else OTHER_REQUEST_MAX_BYTES


def too_large(operation: str | None) -> LambdaError:
    limit = body_limit(operation)
    code = "RequestTooLargeException" if operation == "Invoke" else "RequestEntityTooLargeException"
    name = "InvokeFunction" if operation == "Invoke" else operation or "this"
    return LambdaError(code, f"Request must be smaller than {limit} bytes for the {name} operation", status=413)


def raw_path_of(path: str, raw_path: bytes | None) -> str:
    """The path as the client sent it: the server's raw path, else the decoded path encoded as AWS's SDKs encode
    it (everything outside RFC 3986's unreserved characters)."""
    if raw_path:
        return raw_path.decode("latin-1").partition("?")[0]
    return quote(path, safe="/-_.~")


def matched_of(incoming: Incoming) -> Matched | None:
    return route_match(incoming.method, incoming.raw_path, query_lists(incoming.query_string))


def query_lists(query_string: str, *, strict: bool = False) -> dict[str, list[str]]:
    """The query's values by name; ``strict``: a value that is not UTF-8 is a ValidationException (an operation's
    input), not a replacement character."""
    lists: dict[str, list[str]] = {}
    for name, value in query_pairs(query_string, strict=strict):
        lists.setdefault(name, []).append(value)
    return lists


def caller_of(incoming: Incoming, body_sha256: str) -> Call:
    """Who signed the request (the account the call acts in), or the error AWS gives."""
    from console.access_keys import access_key_secret  # the console's accounts; imported once needed

    signed = SignedRequest(
        method=incoming.method,
        raw_path=incoming.raw_path,
        raw_query=incoming.query_string,
        headers=incoming.headers,
        body_sha256=body_sha256,
        secure=incoming.secure,
    )
    verified = signature_verify(
        signed,
        secret_for=lambda key_id: access_key_secret(access_key_id=key_id),
        region=settings.AWS_REGION,
        now=timezone.now(),
        check_signature=settings.LAMBDA_API_VERIFY_SIGNATURES,
    )
    owner: User = verified.owner
    account = Account(f"{owner.pk:012d}", settings.AWS_REGION)
    return Call(owner, account, incoming.headers, "https" if incoming.secure else "http")


def operation_call(call: Call, operation: OperationModel, incoming: Incoming, matched: Matched, body: bytes) -> Reply:
    handler = OPERATIONS.get(operation.name)
    if handler is None:
        raise LambdaError(
            "NotImplemented",
            f"Ephemera does not implement the Lambda operation {operation.name}; docs/lambda-api.md lists those it "
            "does.",
            status=501,
        )
    wire = WireRequest(matched.path_params, query_lists(incoming.query_string, strict=True), incoming.headers, body)
    return handler(call, operation_input(operation, wire))


def unmatched(incoming: Incoming) -> LambdaError:
    return LambdaError(
        "UnknownOperationException",
        f"No Lambda operation is served at {incoming.method} {incoming.path}.",
        status=404,
    )


def error_reply(exc: Exception) -> Reply:
    """Any failure of a request as AWS's error: a service's rule, an outage (retry), or a bug (logged)."""
    if isinstance(exc, ServiceError):
        exc = from_service_error(exc)
    elif isinstance(exc, DatabaseError | RedisError):
        logger.warning("Lambda API: a service the platform depends on failed: %r", exc)
        exc = service_unavailable(OUTAGE_MESSAGE)
    elif not isinstance(exc, LambdaError):
        logger.exception("Lambda API: an unexpected error")
        exc = LambdaError("ServiceException", "Something went wrong on our side.", status=500)
    headers = {"x-amzn-ErrorType": exc.code, "Content-Type": "application/json", **exc.headers}
    return Reply(exc.status, json_dumps(exc.body()), headers)


def reply_headers(reply: Reply) -> list[tuple[str, str]]:
    headers = dict(reply.headers)
    headers.setdefault("x-amzn-RequestId", str(uuid.uuid4()))
    if isinstance(reply.body, dict):
        headers["Content-Type"] = "application/json"
    return list(headers.items())


def reply_body(reply: Reply) -> bytes:
    if isinstance(reply.body, dict):
        return json_dumps(reply.body)
    return reply.body or b""


def header_dict(pairs: Any) -> dict[str, str]:
    return {str(name).lower(): str(value) for name, value in pairs}
