"""gunicorn's configuration (docker-compose.yml and `make run`: `gunicorn -c console/gunicorn_conf.py`), derived from
the platform's settings so that the two never disagree.

The web serves ASGI (console/asgi.py) on gunicorn's asyncio worker: a synchronous invoke or an HTTP trigger waits
for its function without holding a thread, so each process holds `GUNICORN_CONNECTIONS` callers at once; the
console's and the API's other views run on threads Django gives them one request at a time."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
# Read by console/settings.py: no database connection outlives the request (thread) that opened it.
os.environ["EPHEMERA_WEB_ASGI"] = "1"

import django

django.setup()

from django.conf import settings  # noqa: E402 - after django.setup()

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", "3"))
worker_class = "asgi"
wsgi_app = "console.asgi:application"
# Callers one process holds at once (waiting ones included); past it new connections wait in the backlog.
worker_connections = int(os.environ.get("GUNICORN_CONNECTIONS", "2000"))
# Waiting connections the kernel holds before refusing: enough for a burst of clients.
backlog = 2048
# The longest wait plus time to write the answer: past it gunicorn restarts a worker that stopped answering.
timeout = settings.SYNC_WAIT_MAX_S + 30
# On SIGTERM, calls in progress finish (within this) before the worker goes: a restart does not cut callers off.
graceful_timeout = 30
keepalive = 5
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")
# One line per request, on stdout, where compose and `make run --verbose` show it.
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-") or None
