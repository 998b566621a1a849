"""Loaded by pytest before Django settings (``-p console.pytest_env`` in pyproject.toml): tests keep their
state, keys and embedded Redis socket under var/test, apart from a running `make run`.

On a shared host (CI's PostgreSQL and Redis servers, other engineers' runs), a test run keeps to what is its own:
its sandbox uid, its test database and its Redis database. Nothing here changes a deployment's settings.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

os.environ.setdefault("EPHEMERA_VAR_DIR", str(Path(__file__).resolve().parent.parent / "var" / "test"))
# Sandbox uids of this run's own (no account has them), so that tests counting or killing sandbox processes by uid
# see only their own, never another run's or the host's.
os.environ.setdefault("SANDBOX_UID", str(2_000_000 + os.getpid() % 5000 * 10_000))
os.environ.setdefault("SANDBOX_UID_COUNT", "10000")
# A test database of this run's own on a shared server (pytest-django would drop and recreate test_<name>, the same
# for every run, under another run's feet). Dropped at the end of the run, as usual.
os.environ.setdefault("EPHEMERA_TEST_DATABASE", f"test_ephemera_{os.getpid()}")


def _own_redis_database(url: str) -> str:
    """The same Redis server, on a database number of this run's own (2-15; 0 and 1 are left to deployments and
    CI's default): tests flush their database before each test, and workers consume its queue."""
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", "rediss"):
        return url
    return parsed._replace(path=f"/{2 + os.getpid() % 14}").geturl()


if os.environ.get("REDIS_URL"):
    os.environ["REDIS_URL"] = _own_redis_database(os.environ["REDIS_URL"])
