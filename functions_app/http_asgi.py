"""HTTP triggers on the event loop (console/asgi.py): a request to a function URL or an HTTP API is read, planned
and accepted on a database thread, and then waits for its function without a thread of its own, so one web
process holds thousands of such requests (the WSGI path, http_views.py, serves the same plans in a thread)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from django.utils import timezone

from console.asgi_io import Receive, Send, body_read, response_send, response_stream_send
from console.db_threads import in_db_thread
from functions_app.accept import SYNC_PAYLOAD_MAX_BYTES
from functions_app.http_events import HttpAnswer, HttpRequest
from functions_app.http_streams import StreamBroken, stream_answer_async
from functions_app.http_triggers import PendingCall, call_answer_async, message_answer
from functions_app.http_views import TriggerRoute, answer_for, trigger_plan, trigger_route_for

logger = logging.getLogger(__name__)


async def trigger_serve(scope: dict[str, Any], receive: Receive, send: Send) -> bool:
    """Serve the request if it is a trigger's (True), else leave it to Django (False)."""
    headers = [(_text(name), _text(value)) for name, value in scope["headers"]]
    host = next((value for name, value in headers if name == "host"), "")
    raw_path = scope.get("raw_path", b"").decode("latin-1").split("?", 1)[0] or scope["path"]
    route = trigger_route_for(host, scope["path"], raw_path)
    if route is None:
        return False
    body = await body_read(receive, SYNC_PAYLOAD_MAX_BYTES)
    if body is None:
        answer = message_answer(413, f"Request Entity Too Large: the body is over {SYNC_PAYLOAD_MAX_BYTES} bytes")
    else:
        answer = await _answer(scope, route, headers, body)
    sent = answer_for(route, answer)
    try:
        if sent.stream is None:
            await response_send(send, sent.status, sent.headers, sent.body)
        else:
            await _stream_send(send, sent)
    except asyncio.CancelledError:  # the client left (the server cancels the request): still counted
        _bookkeeping_later(answer)
        raise
    if answer.after_sent is not None:
        await in_db_thread(answer.after_sent)
    return True


# Bookkeeping of requests whose task was cancelled, run on tasks of their own (kept here until done).
_bookkeeping: set[asyncio.Task] = set()


def _bookkeeping_later(answer: HttpAnswer) -> None:
    if answer.after_sent is None:
        return
    task = asyncio.get_running_loop().create_task(in_db_thread(answer.after_sent))
    _bookkeeping.add(task)
    task.add_done_callback(_bookkeeping.discard)


async def _stream_send(send: Send, answer: HttpAnswer) -> None:
    """A streamed answer sent as it comes; a call that fails on the way leaves it incomplete (see ChunkStream)."""
    assert answer.stream is not None
    try:
        await response_stream_send(send, answer.status, answer.headers, answer.stream)
    except StreamBroken as exc:
        logger.warning("A streamed response was cut short: %s", exc)
    finally:
        await answer.stream.aclose()


async def _answer(
    scope: dict[str, Any], route: TriggerRoute, headers: list[tuple[str, str]], body: bytes
) -> HttpAnswer:
    client = scope.get("client") or ("", 0)
    server = scope.get("server") or ("", 80)
    facts = HttpRequest(
        method=scope["method"],
        raw_path=route.raw_path,
        raw_query=scope.get("query_string", b"").decode("latin-1"),
        headers=headers,
        body=body,
        source_ip=client[0],
        received_at=timezone.now(),
        protocol=f"HTTP/{scope.get('http_version', '1.1')}",
        scheme=scope.get("scheme", "http"),
        port=int(server[1] or 80),
    )
    plan = await in_db_thread(lambda: trigger_plan(route, facts))
    try:
        if isinstance(plan, PendingCall) and plan.streamed:
            return await stream_answer_async(plan, db=in_db_thread)
        return await call_answer_async(plan, db=in_db_thread)
    except asyncio.CancelledError:
        if isinstance(plan, PendingCall):  # the client left before the answer: logged and counted as nginx's 499
            _bookkeeping_later(plan.finish(message_answer(499, "Client Closed Request"), None))
        raise


def _text(raw: bytes) -> str:
    """Header bytes as text: UTF-8 as most clients mean it, else Latin-1 (every byte kept)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")
