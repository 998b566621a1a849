from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

BASE_DIR = Path(__file__).resolve().parents[2]
STRONG_KEY = "k" * 20 + "Zq8#pW3!vL0@xR6$tN1%" + "m" * 20


def run_manage(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DEBUG", "PRODUCTION", "FERNET_KEYS")}
    clean.update({"EPHEMERA_VAR_DIR": str(tmp_path), **env})
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=BASE_DIR, env=clean, capture_output=True, text=True, timeout=60
    )


def test_with_no_environment_it_generates_a_development_key_once(tmp_path):
    first = run_manage(
        tmp_path, "shell", "-v", "0", "-c", "from django.conf import settings; print(settings.SECRET_KEY)"
    )
    second = run_manage(
        tmp_path, "shell", "-v", "0", "-c", "from django.conf import settings; print(settings.SECRET_KEY)"
    )
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    assert first.stdout.startswith("dev-insecure-")
    assert oct((tmp_path / "secret_key").stat().st_mode & 0o777) == "0o600"


def test_with_no_environment_it_uses_sqlite_and_embedded_redis_under_var(tmp_path):
    script = "from django.conf import settings; print(settings.DATABASES['default']['NAME'], settings.REDIS_URL)"
    result = run_manage(tmp_path, "shell", "-v", "0", "-c", script, DATABASE_URL="", REDIS_URL="")
    database, redis_url = result.stdout.split()
    assert database == str(tmp_path / "ephemera.sqlite3")
    assert redis_url == f"unix://{tmp_path / 'redis.sock'}?db=0"


def test_database_and_redis_urls_select_postgres_and_a_redis_server(tmp_path):
    script = (
        "from django.conf import settings; print(settings.DATABASES['default']['ENGINE'], settings.CELERY_BROKER_URL)"
    )
    result = run_manage(
        tmp_path,
        "shell",
        "-v",
        "0",
        "-c",
        script,
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/ephemera",
        REDIS_URL="redis://127.0.0.1:6379/3",
    )
    assert result.stdout.split() == ["django.db.backends.postgresql", "redis://127.0.0.1:6379/3"]


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"DEBUG": "true", "SECRET_KEY": STRONG_KEY}, "DEBUG=True"),
        ({}, "SECRET_KEY"),
        ({"SECRET_KEY": "dev-insecure-" + "x" * 60}, "SECRET_KEY"),
        ({"SECRET_KEY": "short"}, "SECRET_KEY"),
        ({"SECRET_KEY": STRONG_KEY}, "FERNET_KEYS"),
    ],
)
def test_production_refuses_to_start_with_development_settings(tmp_path, env, complaint):
    result = run_manage(tmp_path, "check", PRODUCTION="1", **env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and complaint in result.stderr


def test_production_settings_pass_the_deployment_checklist(tmp_path):
    result = run_manage(
        tmp_path,
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        PRODUCTION="1",
        SECRET_KEY=STRONG_KEY,
        FERNET_KEYS=Fernet.generate_key().decode(),
        ALLOWED_HOSTS="ephemera.example.com",
        REDIS_URL="redis://ephemera:a-password@127.0.0.1:6379/0",  # (not reached: the checks read the settings)
        # The sandbox's own deployment check (functions_app/tests/test_sandbox_doctor.py) needs a root executor host.
        SANDBOX_DEPLOY_CHECK="1" if os.geteuid() == 0 else "0",
    )
    assert result.returncode == 0, result.stderr + result.stdout


def test_gunicorn_serves_asgi_holding_a_thousand_callers_and_outlasting_the_longest_wait(settings):
    import runpy
    from unittest import mock

    from django.conf import settings as live

    with mock.patch.dict(os.environ):  # the configuration marks its own process as the web's
        config = runpy.run_path(str(live.BASE_DIR / "console" / "gunicorn_conf.py"))
        assert os.environ["EPHEMERA_WEB_ASGI"] == "1"
    assert config["timeout"] >= live.SYNC_WAIT_MAX_S + 30
    assert config["wsgi_app"] == "console.asgi:application" and config["worker_class"] == "asgi"
    assert config["worker_connections"] >= 1000


def test_a_fresh_var_directory_its_keys_and_database_are_readable_by_the_platform_only(tmp_path):
    import stat
    import subprocess
    import sys

    from django.conf import settings as live

    var = tmp_path / "var"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SECRET_KEY", "FERNET_KEYS")}
    env.update(EPHEMERA_VAR_DIR=str(var), DJANGO_SETTINGS_MODULE="console.settings")
    subprocess.run([sys.executable, "-c", "import django; django.setup()"], cwd=live.BASE_DIR, env=env, check=True)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in [var, *var.iterdir()]}
    assert modes == {"var": 0o700, "secret_key": 0o600, "fernet_key": 0o600, "ephemera.sqlite3": 0o600}


def test_the_deployment_check_refuses_redis_without_a_password_in_production(settings):
    from console.checks import redis_has_credentials

    settings.PRODUCTION = True
    settings.REDIS_URL = "redis://127.0.0.1:6379/0"
    assert [error.id for error in redis_has_credentials(None)] == ["ephemera.E010"]
    settings.REDIS_URL = "redis://ephemera:s3cret@127.0.0.1:6379/0"
    assert redis_has_credentials(None) == []
    settings.REDIS_URL = "unix:///var/lib/ephemera/redis.sock?db=0"
    assert redis_has_credentials(None) == []


def test_processes_starting_together_on_a_fresh_var_dir_share_one_key(tmp_path):
    # Workers of a fresh embedded platform import the settings at the same moment: none may fail on the key
    # another is writing (FileExistsError) or read it half-written.
    start_at = time.time() + 3
    script = (
        "import sys, time, cryptography.fernet, dj_database_url; "
        "time.sleep(max(0, float(sys.argv[1]) - time.time())); "
        "import console.settings as s; print(s.SECRET_KEY, s.FERNET_KEYS[0])"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "FERNET_KEYS")}
    for attempt in range(3):
        var_dir = tmp_path / str(attempt)
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", script, str(start_at + attempt)],
                cwd=BASE_DIR,
                env={**env, "EPHEMERA_VAR_DIR": str(var_dir)},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(6)
        ]
        outputs = [process.communicate(timeout=60) for process in processes]
        assert [process.returncode for process in processes] == [0] * 6, [err for _, err in outputs]
        keys = {out for out, _ in outputs}
        assert len(keys) == 1 and len(next(iter(keys)).split()) == 2
        assert not [path for path in var_dir.iterdir() if path.name.startswith(".")]  # no staging file left


def test_under_asgi_the_web_keeps_no_connection_past_a_request_and_pools_postgresqls():
    import json
    import subprocess
    import sys

    from django.conf import settings as live

    script = (
        "import json, django; django.setup(); from django.conf import settings; "
        "db = settings.DATABASES['default']; print(json.dumps([db['CONN_MAX_AGE'], db.get('OPTIONS', {}).get('pool')]))"
    )

    def database(**env: str) -> list:
        environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "console.settings", **env}
        run = subprocess.run([sys.executable, "-c", script], cwd=live.BASE_DIR, env=environment, capture_output=True)
        assert run.returncode == 0, run.stderr
        return json.loads(run.stdout)

    postgres = "postgres://app@127.0.0.1:5432/ephemera"
    assert database(DATABASE_URL=postgres, EPHEMERA_WEB_ASGI="1") == [0, {"min_size": 1, "max_size": 20, "timeout": 10}]
    assert database(DATABASE_URL=postgres, EPHEMERA_WEB_ASGI="0")[1] is None  # workers keep their connections
