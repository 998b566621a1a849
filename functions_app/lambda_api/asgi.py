"""Lambda's synchronous Invoke on the event loop (console/asgi.py), as the native invoke is
(functions_app/invoke_asgi.py): verified, parsed and accepted on a database thread, then awaited without a thread of
its own, and answered exactly as the Django view answers (functions_app/lambda_api/views.py). Any other request of
Lambda's API (an Event or DryRun invoke, a body without a length) is left to that view."""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Any

from console.asgi_io import Receive, Send, body_read, response_send
from console.db_threads import in_db_thread
from functions_app.invoke import sync_call_accept, sync_call_await
from functions_app.lambda_api.invoke import client_context_of, invoke_reply, sdk_idempotency_key
from functions_app.lambda_api.model import WireRequest, operation_input
from functions_app.lambda_api.operations import Reply, function_ref
from functions_app.lambda_api.surface import (
    INVOKE_REQUEST_MAX_BYTES,
    Incoming,
    caller_of,
    error_reply,
    header_dict,
    matched_of,
    query_lists,
    raw_path_of,
    reply_body,
    reply_headers,
)
from functions_app.models import Invocation

INVOKE_PATH = re.compile(r"^/2015-03-31/functions/[^/]+/invocations/?$")


async def lambda_invoke_serve(scope: dict[str, Any], receive: Receive, send: Send) -> bool:
    """Serve the request if it is a synchronous Invoke (True), else leave it (False)."""
    if scope["method"] != "POST" or not INVOKE_PATH.match(scope["path"]):
        return False
    headers = header_dict((name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"])
    length = headers.get("content-length", "")
    if (
        headers.get("x-amz-invocation-type", "RequestResponse") != "RequestResponse"
        or not length.isdigit()
        or int(length) > INVOKE_REQUEST_MAX_BYTES
    ):
        return False
    incoming = Incoming(
        method="POST",
        path=scope["path"],
        raw_path=raw_path_of(scope["path"], scope.get("raw_path")),
        query_string=scope.get("query_string", b"").decode("latin-1"),
        headers=headers,
        secure=scope.get("scheme") == "https",
    )
    body = await body_read(receive, INVOKE_REQUEST_MAX_BYTES) or b""  # its length was checked above
    try:
        reply = await _invoked(incoming, body)
    except Exception as exc:  # noqa: BLE001 - answered as AWS answers (error_reply logs bugs)
        reply = error_reply(exc)
    await response_send(send, reply.status, reply_headers(reply), reply_body(reply))
    return True


async def _invoked(incoming: Incoming, body: bytes) -> Reply:
    invocation, with_log = await in_db_thread(functools.partial(_accepted, incoming, body))
    answer = await sync_call_await(invocation=invocation, db=in_db_thread)
    assert answer.outcome is not None  # a sync call always has one
    status, payload, headers = invoke_reply(answer.outcome, with_log=with_log)
    return Reply(status, payload, headers)


def _accepted(incoming: Incoming, body: bytes) -> tuple[Invocation, bool]:
    """The call verified, read as the model describes Invoke, and accepted; and whether the log tail is asked for."""
    call = caller_of(incoming, hashlib.sha256(body).hexdigest())
    matched = matched_of(incoming)
    assert matched is not None and matched.operation.name == "Invoke"  # INVOKE_PATH is Invoke's route
    wire = WireRequest(matched.path_params, query_lists(incoming.query_string, strict=True), incoming.headers, body)
    params = operation_input(matched.operation, wire)
    ref = function_ref(call, params["FunctionName"], params.get("Qualifier"))
    invocation = sync_call_accept(
        owner=call.owner,
        function=ref.function,
        qualifier=ref.qualifier or "",
        raw_payload=params.get("Payload", b""),
        idempotency_key=sdk_idempotency_key(call.headers),
        client_context=client_context_of(params.get("ClientContext")),
    )
    return invocation, params.get("LogType") == "Tail"
