"""Lambda's errors as AWS sends them: the status, ``x-amzn-ErrorType: <exception name>`` (botocore matches client
exceptions on that exact string) and a JSON body of the exception's shape. The native services' errors are mapped
here, so the operations raise what they always raise."""

from __future__ import annotations

from typing import Any

from console.exceptions import (
    PreconditionFailed,
    RequestTooLarge,
    ResourceConflict,
    ResourceNotFound,
    ServiceError,
    ServiceUnavailable,
    TooManyRequests,
)
from functions_app.accept import IdempotencyConflict, InvalidRequestContent

# The two exception shapes whose message member is spelled with a capital M (botocore reads either).
_CAPITAL_MESSAGE = frozenset({"ResourceNotFoundException", "ServiceException"})


class LambdaError(Exception):
    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int,
        fields: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.fields = fields or {}
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        message_key = "Message" if self.code in _CAPITAL_MESSAGE else "message"
        return {"Type": "User" if self.status < 500 else "Service", message_key: self.message, **self.fields}


def not_found(message: str) -> LambdaError:
    return LambdaError("ResourceNotFoundException", message, status=404)


def invalid(message: str) -> LambdaError:
    return LambdaError("InvalidParameterValueException", message, status=400)


def conflict(message: str) -> LambdaError:
    return LambdaError("ResourceConflictException", message, status=409)


# The native services name fields as the native API does; Lambda's callers know them by Lambda's member names.
_MEMBER_NAMES = {
    "memory_mb": "MemorySize",
    "timeout_s": "Timeout",
    "ephemeral_storage_mb": "EphemeralStorage.Size",
    "description": "Description",
    "runtime_label": "Runtime",
    "role": "Role",
    "handler": "Handler",
    "environment": "Environment.Variables",
    "name": "FunctionName",
    "reserved_concurrency": "ReservedConcurrentExecutions",
    "max_retry_attempts": "MaximumRetryAttempts",
    "max_event_age_s": "MaximumEventAgeInSeconds",
    "on_success_destination": "DestinationConfig.OnSuccess.Destination",
    "on_failure_destination": "DestinationConfig.OnFailure.Destination",
    "version": "FunctionVersion",
    "additional_version": "RoutingConfig.AdditionalVersionWeights",
    "additional_weight": "RoutingConfig.AdditionalVersionWeights",
    "tags": "Tags",
    "batch_size": "BatchSize",
    "batching_window_s": "MaximumBatchingWindowInSeconds",
    "max_record_age_s": "MaximumRecordAgeInSeconds",
    "starting_position": "StartingPosition",
    "auth_type": "AuthType",
    "invoke_mode": "InvokeMode",
    "cors": "Cors",
}


def in_lambda_words(message: str) -> str:
    """``memory_mb: Must be …`` as ``MemorySize: Must be …``."""
    field, colon, rest = message.partition(": ")
    root = field.split(".", 1)[0]
    if colon and root in _MEMBER_NAMES:
        return f"{_MEMBER_NAMES[root]}{field[len(root) :]}: {rest}"
    return message


def from_service_error(exc: ServiceError) -> LambdaError:
    """The Lambda exception for a native service's error (by its class; a plain ServiceError is a bad parameter)."""
    if isinstance(exc, IdempotencyConflict):
        return conflict(
            "This amz-sdk-invocation-id was already used by a call with another payload: an SDK's retry sends the "
            "same payload, and a new call needs an id of its own."
        )
    if isinstance(exc, ResourceNotFound):
        return not_found(exc.message)
    if isinstance(exc, PreconditionFailed):
        return LambdaError("PreconditionFailedException", exc.message, status=412)
    if isinstance(exc, ResourceConflict):
        return conflict(exc.message)
    if isinstance(exc, RequestTooLarge):
        return LambdaError("RequestTooLargeException", exc.message, status=413)
    if isinstance(exc, TooManyRequests):
        reason = (exc.details or {}).get("reason", "") if isinstance(exc.details, dict) else ""
        fields = {"Reason": reason} if reason else {}
        return LambdaError("TooManyRequestsException", "Rate Exceeded.", status=429, fields=fields, headers=exc.headers)
    if isinstance(exc, InvalidRequestContent):
        return LambdaError("InvalidRequestContentException", exc.message, status=400)
    if isinstance(exc, ServiceUnavailable):
        return service_unavailable(exc.message)
    return invalid(in_lambda_words(exc.message))


def service_unavailable(message: str) -> LambdaError:
    # ServiceException is Lambda's own "try again" error; botocore retries a 503 (and 500).
    return LambdaError("ServiceException", message, status=503, headers={"Retry-After": "5"})
