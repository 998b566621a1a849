"""Shared fixtures: a real Redis (embedded or REDIS_URL), users, API clients and `make_function`."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from fnmatch import fnmatch
from typing import Any

import pytest

BACKEND_FIXTURES = {"db", "transactional_db", "django_db_reset_sequences", "live_server", "cluster", "worker"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test marked backend_free must not reach for the database (CI runs such tests on one backend only)."""
    for item in items:
        if item.get_closest_marker("backend_free") is None:
            continue
        if item.get_closest_marker("django_db") or BACKEND_FIXTURES & set(getattr(item, "fixturenames", ())):
            raise pytest.UsageError(f"{item.nodeid} is marked backend_free but uses the database")


@pytest.fixture(scope="session", autouse=True)
def redis_server() -> Iterator[str]:
    """The embedded redis-server on a socket under var/test, or the server REDIS_URL names (as on CI)."""
    from django.conf import settings

    from console.embedded import redis_start, redis_wait
    from console.processes import stop_all

    if not settings.EMBEDDED_REDIS:
        redis_wait(settings.REDIS_URL, 10)
        yield settings.REDIS_URL
        return
    process = redis_start(settings.VAR_DIR, settings.REDIS_SOCKET)
    yield settings.REDIS_URL
    stop_all([process])


@pytest.fixture(autouse=True)
def clean_redis(redis_server: str, request: pytest.FixtureRequest) -> None:
    """Each test starts with an empty Redis database: no pending metering, slots or messages of earlier tests
    (database ids are reused after a flush, so their leftovers would land on this test's objects). Under a module's
    shared worker, what that running worker and its beat keep there stays (see ``module_worker``)."""
    from console.redis import redis_client
    from functions_app.lane import lane_served_forget

    client = redis_client()
    if "module_worker" in request.fixturenames:
        kept = _kept_for_a_running_worker()
        doomed = [key for key in client.scan_iter(count=1000) if not any(fnmatch(key.decode(), p) for p in kept)]
        if doomed:
            client.delete(*doomed)
    else:
        client.flushdb()
    lane_served_forget()


def _kept_for_a_running_worker() -> tuple[str, ...]:
    """Redis keys a running worker and beat rely on between tests: kombu's queue bindings, the hosts' health and
    lanes, the lane's served mark, and the broker's run id (without it the sweeper takes Redis for restarted)."""
    from functions_app.lane import HOST_LANES_KEY, SERVED_KEY
    from functions_app.sweeper import BROKER_RUN_ID_KEY
    from functions_app.worker import HOST_KEY

    return ("_kombu.binding.*", HOST_KEY.format(host="*"), HOST_LANES_KEY, SERVED_KEY, BROKER_RUN_ID_KEY)


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: Any) -> None:
    # PBKDF2's deliberate slowness costs ~0.3 s per test user and protects nothing here.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(scope="session")
def code_storage_dir(tmp_path_factory: pytest.TempPathFactory) -> Any:
    # One directory for the whole run: artifacts are content-addressed, and worker processes must see it too.
    return tmp_path_factory.mktemp("code")


@pytest.fixture(autouse=True)
def isolated_code_storage(settings: Any, code_storage_dir: Any) -> Iterator[None]:
    from functions_app.code_storage import code_store

    settings.CODE_STORAGE_DIR = code_storage_dir
    code_store.cache_clear()
    yield
    code_store.cache_clear()


@pytest.fixture
def make_user(db: None) -> Any:
    from django.contrib.auth import get_user_model

    counter = iter(range(1, 10_000))

    def make(username: str | None = None) -> Any:
        return get_user_model().objects.create_user(username or f"user{next(counter)}", password="pw-for-tests-only")

    return make


@pytest.fixture
def user(make_user: Any) -> Any:
    return make_user("alice")


@pytest.fixture
def other_user(make_user: Any) -> Any:
    return make_user("mallory")


def _token_client(account: Any) -> Any:
    from rest_framework.test import APIClient

    from console.accounts import api_key_create

    client = APIClient()
    _, key = api_key_create(owner=account, name="tests")
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


@pytest.fixture
def api(user: Any) -> Any:
    return _token_client(user)


@pytest.fixture
def other_api(other_user: Any) -> Any:
    return _token_client(other_user)


HELLO_SOURCE = "def handler(event, context):\n    return {'hello': event}\n"


@pytest.fixture
def make_function(user: Any) -> Any:
    from functions_app import services

    def make(**overrides: Any) -> Any:
        fields: dict[str, Any] = {
            "owner": user,
            "name": "hello",
            "handler": "app.handler",
            "code": services.CodeUpload(files={"app.py": HELLO_SOURCE}),
        }
        fields.update(overrides)
        return services.function_create(**fields)

    return make


def _database_url(settings_dict: dict) -> str:
    if settings_dict["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{settings_dict['NAME']}"
    auth = settings_dict["USER"] + (f":{settings_dict['PASSWORD']}" if settings_dict["PASSWORD"] else "")
    return f"postgres://{auth}@{settings_dict['HOST']}:{settings_dict['PORT']}/{settings_dict['NAME']}"


FAST_DELIVERY = {
    # Short leases and sweeps so that fault tests recover in seconds; production defaults are in settings.py.
    "LEASE_S": "2",
    "SWEEP_INTERVAL_S": "0.5",
    "REPUBLISH_AFTER_S": "2",
    "RETRY_BACKOFF_S": "0.2",
    "THROTTLE_RETRY_S": "0.2",
}


class Cluster:
    """Real Celery workers (threads pool, one executor each) and beat, as separate processes on the test database
    and Redis. Tests start, kill, pause and restart them."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.workers: list[Any] = []
        self.beat: Any = None

    def _spawn(self, arguments: list[str], **extra: str) -> Any:
        import subprocess
        import sys

        from django.conf import settings

        from console.processes import die_with_parent

        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "console", *arguments],
            cwd=settings.BASE_DIR,
            env={**self.env, **extra},
            preexec_fn=die_with_parent,
        )

    def start_worker(self, concurrency: int = 4, wait: bool = True, **extra: str) -> Any:
        from console.processes import executor_worker_args

        arguments = executor_worker_args(level="INFO", concurrency=concurrency, name=f"w{len(self.workers)}@%h")
        process = self._spawn(arguments, **extra)
        self.workers.append(process)
        if wait:
            self.wait_ready(process)
        return process

    def wait_ready(self, process: Any, timeout_s: float = 60) -> dict:
        import json
        import socket
        import time

        from console.redis import redis_client

        key = f"ephemera:hosts:{socket.gethostname()}:{process.pid}"
        deadline = time.monotonic() + timeout_s
        while (raw := redis_client().get(key)) is None:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the Celery worker did not come up")
            time.sleep(0.05)
        return json.loads(raw)

    def start_beat(self) -> Any:
        """Beat and the consumer of its (control) tasks, as in every deployment."""
        from django.conf import settings

        from console.processes import control_worker_args

        schedule = settings.VAR_DIR / f"beat-{id(self)}"
        self.beat = self._spawn(control_worker_args(level="INFO", schedule=str(schedule)))
        return self.beat

    def stop(self) -> None:
        from console.processes import stop_all

        processes = [p for p in [*self.workers, self.beat] if p is not None]
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGCONT)  # a paused worker cannot stop
        stop_all(processes, grace_s=20)


def _cluster_env(code_storage_dir: Any) -> dict[str, str]:
    from django.conf import settings
    from django.db import connection

    env = dict(os.environ)
    env.update(
        DATABASE_URL=_database_url(connection.settings_dict),
        CODE_STORAGE_DIR=str(code_storage_dir),
        EPHEMERA_TEST_MARKER="worker-secret-marker",  # must never be visible inside a sandbox
        # The tests' S3-API servers listen on this host: the workers poll them as an in-house store's.
        SOURCE_ENDPOINT_ALLOW_PRIVATE="1",
        **FAST_DELIVERY,
    )
    if not settings.EMBEDDED_REDIS:
        env["REDIS_URL"] = settings.REDIS_URL
    return env


def _fast_delivery(settings: Any) -> None:
    for name, value in FAST_DELIVERY.items():
        setattr(settings, name, float(value))


class SharedWorker:
    """A module's worker and beat, started when a test first asks for them and stopped before any test that starts
    workers of its own (fault tests must see only theirs)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.cluster: Cluster | None = None
        self.report: dict = {}

    def start(self) -> dict:
        if self.cluster is None:
            self.cluster = Cluster(self.env)
            self.report = self.cluster.wait_ready(self.cluster.start_worker())
            self.cluster.start_beat()
        return self.report

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None


@pytest.fixture(scope="module")
def _shared_worker(django_db_setup, redis_server, code_storage_dir) -> Iterator[SharedWorker]:
    shared = SharedWorker(_cluster_env(code_storage_dir))
    yield shared
    shared.stop()


@pytest.fixture
def cluster(transactional_db, redis_server, code_storage_dir, settings, _shared_worker) -> Iterator[Cluster]:
    _shared_worker.stop()
    _fast_delivery(settings)
    group = Cluster(_cluster_env(code_storage_dir))
    yield group
    group.stop()


@pytest.fixture
def worker(cluster: Cluster) -> dict:
    """One running worker and beat (as in every deployment); returns the worker's health report."""
    report = cluster.wait_ready(cluster.start_worker())
    cluster.start_beat()
    return report


@pytest.fixture
def module_worker(_shared_worker: SharedWorker, clean_redis: None, transactional_db: None, settings: Any) -> dict:
    """A worker and beat shared by the tests of a module that only use them (no kill, pause or restart, no count
    of the host's environments): started once, not once per test. Between tests the database is emptied and Redis
    too, but for what the running worker keeps there; every test makes functions of its own (ids are never reused),
    so nothing warm of an earlier test is ever picked. Returns the worker's health report."""
    from functions_app.lane import lane_mark_served

    _fast_delivery(settings)
    report = _shared_worker.start()
    lane_mark_served()  # as its next heartbeat would
    return report


@pytest.fixture(scope="module")
def aws_server() -> Iterator[str]:
    """A real server of the S3 and SQS APIs (moto's) on a local port, for bucket notifications and queue mappings:
    its address."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
