"""gunicorn's configuration (docker-compose.yml: `gunicorn -c console/gunicorn_conf.py`), derived from the
platform's settings so that the two never disagree: a worker is never cut off while it holds a synchronous caller
within the platform's promised wait (SYNC_WAIT_MAX_S)."""

from __future__ import annotations

import os
import socket
import struct

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
django.setup()

from django.conf import settings  # noqa: E402 - after django.setup()

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", "3"))
# Waiting connections the kernel holds before refusing: enough for a burst of clients (runserver's 10 were not).
backlog = 2048
# Each thread holds one caller; a synchronous invoke holds its thread while it waits.
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
# The longest wait plus time to write the answer: past it gunicorn kills the worker and the caller gets nothing.
timeout = settings.SYNC_WAIT_MAX_S + 30
# On SIGTERM, calls in progress finish (within this) before the worker goes: a restart does not cut callers off.
graceful_timeout = 30
wsgi_app = "console.wsgi:application"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")
# One line per request, on stdout, where compose and `make run --verbose` show it.
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-") or None

# A client that stops sending its body mid-request (a Content-Length larger than what it sends, a slow upload that
# stalls) would hold a thread until it gives up; every read of the body waits at most this long for more bytes
# instead (then 408). A receive timeout only (SO_RCVTIMEO): a socket timeout would also bound each whole write, and
# cut a large response to a slow reader. Headers are read before this hook runs: gunicorn's own `timeout` and
# `keepalive` bound those.
read_timeout_s = float(os.environ.get("GUNICORN_READ_TIMEOUT_S", "30"))


def pre_request(worker: object, req: object) -> None:
    sock = getattr(getattr(req, "unreader", None), "sock", None)
    if sock is not None:
        seconds = int(read_timeout_s)
        timeout = struct.pack("ll", seconds, int((read_timeout_s - seconds) * 1_000_000))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeout)
