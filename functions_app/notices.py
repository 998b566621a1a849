"""Notices from the registry to every executor host: "this function changed (or is gone)".

A host that hears one retires the function's environments that no longer match it at once, instead of at the
end of their idle time, and unpacks new code before the first call needs it. Pub/sub delivers to the hosts
listening now; a host that missed a notice (a Redis restart, say) catches up within one heartbeat, when it
compares all its environments with the database (``functions_app.worker.environments_reconcile``).
"""

from __future__ import annotations

import json
import logging

from django.db import transaction

from console.redis import redis_client

logger = logging.getLogger(__name__)

FUNCTION_CHANGED_CHANNEL = "ephemera:functions:changed"


def function_changed(*, function_id: int) -> None:
    """Tell the executor hosts, once the current transaction commits, that the function changed or is gone."""
    transaction.on_commit(lambda: _publish(function_id))


def _publish(function_id: int) -> None:
    try:
        redis_client().publish(FUNCTION_CHANGED_CHANNEL, json.dumps({"function_id": function_id}))
    except Exception:  # the change itself is committed; the hosts' heartbeat reconciliation catches up
        logger.exception("Could not tell the executor hosts that function %s changed", function_id)
