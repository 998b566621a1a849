"""The Celery app: transport for invocation ids. Settings live in console/settings.py as CELERY_*."""

from __future__ import annotations

import os
import warnings
from typing import Any

from celery import Celery, signals
from celery.exceptions import CPendingDeprecationWarning
from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError

from console.processes import die_with_parent

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")


def _connparams_of_a_live_connection(original: Any) -> Any:
    """kombu's Redis channel, closed after its broker connection died, may try to restore its unacked messages
    through a connection kombu has already detached (``connection.client`` is None): an AttributeError that
    Celery's connection-error handling does not catch, so the worker exited ("Unrecoverable error: 'NoneType'
    object has no attribute 'hostname'") on a Redis restart. It is a connection error, raised as one: Celery then
    reconnects, and the messages stay in Redis's unacked set, which kombu restores after the visibility timeout
    (long before that the database's sweeper republishes their invocations)."""

    def _connparams(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.connection is None or self.connection.client is None:
            raise RedisConnectionError("the broker connection was closed")
        return original(self, *args, **kwargs)

    _connparams.ephemera_patched = True  # type: ignore[attr-defined]
    return _connparams


if not getattr(kombu_redis.Channel._connparams, "ephemera_patched", False):
    # A deliberate patch of kombu's method (see above), which the type checker rightly flags as unusual.
    kombu_redis.Channel._connparams = _connparams_of_a_live_connection(  # type: ignore[method-assign]
        kombu_redis.Channel._connparams
    )

# Said on every lost broker connection because of worker_cancel_long_running_tasks_on_connection_loss=False, which
# is deliberate (console/settings.py).
warnings.filterwarnings(
    "ignore", message="(?s).*worker_cancel_long_running_tasks_on_connection_loss", category=CPendingDeprecationWarning
)

app = Celery("ephemera")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.beat_init.connect
def _beat_dies_with_its_worker(sender: Any = None, **_: Any) -> None:
    """Beat embedded in the control worker (``worker --beat``) is a forked child, which does not inherit the
    worker's own death signal: should the worker be killed, beat would live on, orphaned, firing its tasks. It
    is told to end with its parent instead (and ends now if the parent is already gone: adopted by init)."""
    die_with_parent()
    if os.getppid() == 1:
        raise SystemExit("beat's worker is gone")
