"""Database work of requests served on the event loop (ASGI): it runs on a few threads of its own, so a thousand
requests waiting for their functions hold no thread and only as many database connections as there are threads."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import TypeVar

from django.conf import settings
from django.db import connections

T = TypeVar("T")


@lru_cache(maxsize=1)
def _executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=settings.WEB_DB_THREADS, thread_name_prefix="ephemera-db")


async def in_db_thread(call: Callable[[], T]) -> T:
    """Run ``call`` on a database thread. Each of these threads keeps its connection from call to call (opening
    one costs more than most calls: SQLite's registers its functions, PostgreSQL's takes one from the pool), and
    drops it once an error left it unusable."""
    # In the caller's context: what it collects (the Server-Timing phases) sees what the call marks.
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(_executor(), context.run, _on_a_sound_connection, call)


def _on_a_sound_connection(call: Callable[[], T]) -> T:
    for connection in connections.all(initialized_only=True):
        if connection.connection is None or not connection.errors_occurred:
            continue
        if connection.is_usable():
            connection.errors_occurred = False
        else:
            connection.close()
    return call()
