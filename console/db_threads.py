"""Database work of requests served on the event loop (ASGI): it runs on a few threads of its own, so a thousand
requests waiting for their functions hold no thread and at most this many database connections."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import TypeVar

from django.conf import settings
from django.db import close_old_connections

T = TypeVar("T")


@lru_cache(maxsize=1)
def _executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=settings.WEB_DB_THREADS, thread_name_prefix="ephemera-db")


async def in_db_thread(call: Callable[[], T]) -> T:
    """Run ``call`` on a database thread, with Django's connection bookkeeping of a request around it (a broken
    or expired connection is replaced first and let go after)."""
    return await asyncio.get_running_loop().run_in_executor(_executor(), _as_request, call)


def _as_request(call: Callable[[], T]) -> T:
    close_old_connections()
    try:
        return call()
    finally:
        close_old_connections()
