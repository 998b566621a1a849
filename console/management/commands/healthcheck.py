"""`manage.py healthcheck web|worker|control`: exit 0 when this container's own service is alive (the health
checks of docker-compose.yml). Each looks at its own part only, so a missing worker never marks the web
server unhealthy; /healthz is where the platform as a whole is reported."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from console.redis import redis_client
from console.views import SWEEPER_GRACE_S
from functions_app.selectors import sweeper_age_s
from functions_app.worker import HOST_KEY


class Command(BaseCommand):
    help = "Exit 0 when this container's service (web, worker or control) is alive."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("role", choices=["web", "worker", "control"])
        parser.add_argument("--port", type=int, default=8000, help="The web server's port (role web).")

    def handle(self, *args: Any, **options: Any) -> None:
        checks = {"web": lambda: _web_answers(options["port"]), "worker": _worker_reports, "control": _sweeper_runs}
        problem = checks[options["role"]]()
        if problem:
            raise CommandError(problem)
        self.stdout.write(f"{options['role']}: ok")


def _web_answers(port: int) -> str:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).close()
    except urllib.error.HTTPError:
        return ""  # it answered (503 names another part that is down, not this one)
    except OSError as exc:
        return f"the web server does not answer on port {port}: {exc}"
    return ""


def _worker_reports() -> str:
    # Executors of this host (container) publish their health under ephemera:hosts:<hostname>:<pid>.
    pattern = HOST_KEY.format(host=f"{socket.gethostname()}:*")
    if next(redis_client().scan_iter(match=pattern, count=100), None) is None:
        return f"no executor of host {socket.gethostname()} has reported its health"
    return ""


def _sweeper_runs() -> str:
    age = sweeper_age_s()
    if age is None or age > 3 * settings.SWEEP_INTERVAL_S + SWEEPER_GRACE_S:
        return f"the sweeper has not run for {'ever' if age is None else f'{age:.0f} s'}"
    return ""
