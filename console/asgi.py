"""The web's ASGI application (gunicorn's asgi worker, console/gunicorn_conf.py): HTTP triggers and synchronous
invokes, native and Lambda's, are served on the event loop (functions_app/http_asgi.py, functions_app/invoke_asgi.py,
functions_app/lambda_api/asgi.py), everything else by Django; and a request body that stops arriving is answered
408 after GUNICORN_READ_TIMEOUT_S instead of being waited for."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
django_application = get_asgi_application()

from django.conf import settings  # noqa: E402 - after Django is set up

from console.asgi_io import Receive, Scope, Send, response_send  # noqa: E402
from functions_app.http_asgi import trigger_serve  # noqa: E402
from functions_app.invoke_asgi import invoke_serve  # noqa: E402
from functions_app.lambda_api.asgi import lambda_invoke_serve  # noqa: E402


async def application(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        await django_application(scope, receive, send)
        return
    receive = _with_read_timeout(receive, send)
    for serve in (trigger_serve, invoke_serve, lambda_invoke_serve):
        if await serve(scope, receive, send):
            return
    await django_application(scope, receive, send)


def _with_read_timeout(receive: Receive, send: Send) -> Receive:
    """``receive`` that gives up on a body that stops arriving for the read timeout: it answers 408 itself and
    tells the application the client is gone (so it answers nothing). Once the body is in, ``receive`` only
    waits for the client to leave, for as long as the application runs."""
    timeout_s = settings.WEB_READ_TIMEOUT_S
    body_done = False

    async def receive_in_time() -> dict[str, Any]:
        nonlocal body_done
        if body_done:
            return await receive()
        try:
            message = await asyncio.wait_for(receive(), timeout_s)
        except TimeoutError:
            body_done = True
            await _request_timeout(send, timeout_s)
            return {"type": "http.disconnect"}
        body_done = message["type"] != "http.request" or not message.get("more_body", False)
        return message

    return receive_in_time


async def _request_timeout(send: Send, timeout_s: float) -> None:
    message = f"The request body stopped arriving for {timeout_s:g} s."
    body = json.dumps({"type": "RequestTimeout", "message": message}).encode()
    await response_send(send, 408, [("Content-Type", "application/json"), ("Connection", "close")], body)
