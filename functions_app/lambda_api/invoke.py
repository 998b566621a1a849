"""Invoke's wire details, shared by the operation (functions_app/lambda_api/operations.py) and its event-loop path
(functions_app/lambda_api/asgi.py): the invocation types, ClientContext, the SDK's retry id, and the answer of a
synchronous call as Lambda gives it (the function's errors are 200 with ``X-Amz-Function-Error``)."""

from __future__ import annotations

import base64
import binascii
import json

from functions_app.accept import DRY_RUN
from functions_app.lambda_api.errors import LambdaError
from functions_app.lifecycle import CAPACITY_EXCEEDED, InvocationOutcome
from functions_app.models import InvocationType

INVOCATION_TYPES = {"RequestResponse": InvocationType.SYNC, "Event": InvocationType.ASYNC, "DryRun": DRY_RUN}
CLIENT_CONTEXT_MAX_BYTES = 3583  # Lambda's limit on the decoded ClientContext


def client_context_of(header: str | None) -> str:
    """X-Amz-Client-Context (base64 of a JSON object) as the JSON text the handler's context gets; "" for none."""
    if not header:
        return ""
    try:
        text = base64.b64decode(header, validate=True).decode("utf-8")
        fields = json.loads(text)
    except (binascii.Error, ValueError, RecursionError):
        raise LambdaError(
            "InvalidRequestContentException", "Client context must be a valid Base64-encoded JSON object.", status=400
        ) from None
    if not isinstance(fields, dict) or len(text.encode()) > CLIENT_CONTEXT_MAX_BYTES:
        raise LambdaError(
            "InvalidRequestContentException",
            f"Client context must be a JSON object of at most {CLIENT_CONTEXT_MAX_BYTES} bytes.",
            status=400,
        )
    return text


def sdk_idempotency_key(headers: dict[str, str]) -> str:
    """The AWS SDKs send one ``amz-sdk-invocation-id`` for every attempt of a logical call: as the invocation's
    idempotency key, a retried Invoke (after a read timeout, say) attaches to the call already made instead of
    running the function again."""
    sdk_id = headers.get("amz-sdk-invocation-id", "")
    if not sdk_id or len(sdk_id) > 100 or not sdk_id.isprintable():
        return ""
    return f"aws-sdk:{sdk_id}"


def invoke_reply(outcome: InvocationOutcome, *, with_log: bool) -> tuple[int, bytes, dict[str, str]]:
    """A synchronous call's status, body and headers, as Lambda answers them."""
    headers = {"x-amzn-RequestId": outcome.invocation_id}
    if not outcome.finished:
        raise LambdaError(
            "ServiceException",
            f"Invocation {outcome.invocation_id} is still running past this server's wait; retrying the same call "
            "(the SDK's retry) waits for it again without running the function twice.",
            status=503,
            headers={"Retry-After": "1", **headers},
        )
    if outcome.platform_error:
        raise LambdaError(
            "ServiceException",
            f"The platform failed invocation {outcome.invocation_id} ({outcome.error_type}); it was not retried.",
            status=500,
            headers=headers,
        )
    if outcome.error_type == CAPACITY_EXCEEDED:
        raise LambdaError(
            "TooManyRequestsException",
            "Rate Exceeded.",
            status=429,
            fields={"Reason": "ConcurrentInvocationLimitExceeded"},
            headers={"Retry-After": "1", **headers},
        )
    headers["X-Amz-Executed-Version"] = outcome.executed_version
    headers["Content-Type"] = "application/json"
    if outcome.function_error:
        headers["X-Amz-Function-Error"] = "Unhandled"
    if with_log:
        headers["X-Amz-Log-Result"] = base64.b64encode(outcome.log_tail.encode()).decode()
    return 200, outcome.result.encode(), headers
