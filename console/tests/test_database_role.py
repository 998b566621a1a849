"""The production shape's database role (deploy/postgres/app-role.sql): it migrates and runs the platform, and it
is not a superuser. PostgreSQL only: the suite's second run (CI) is on PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.db import connection

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def app_database():
    if connection.vendor != "postgresql":
        pytest.skip("the role script is for PostgreSQL; this run is on SQLite")
    name = f"ephemera_role_{os.getpid()}"
    params = connection.settings_dict
    admin = ["psql", "-h", params["HOST"] or "127.0.0.1", "-p", str(params["PORT"] or 5432), "-U", params["USER"]]
    subprocess.run([*admin, "-d", "postgres", "-c", f'CREATE DATABASE "{name}"'], check=True, capture_output=True)
    script = settings.BASE_DIR / "deploy" / "postgres" / "app-role.sql"
    variables = ["-v", f"app_role={name}", "-v", "app_password=role-test-only", "-v", f"app_database={name}"]
    subprocess.run([*admin, "-d", name, "-v", "ON_ERROR_STOP=1", *variables, "-f", str(script)], check=True)
    host = params["HOST"] or "127.0.0.1"
    yield f"postgres://{name}:role-test-only@{host}:{params['PORT'] or 5432}/{name}", admin, name
    subprocess.run([*admin, "-d", "postgres", "-c", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'], check=False)
    subprocess.run([*admin, "-d", "postgres", "-c", f'DROP ROLE IF EXISTS "{name}"'], check=False)


def test_the_application_role_migrates_the_platform_and_is_not_a_superuser(app_database):
    url, admin, name = app_database
    env = {**os.environ, "DATABASE_URL": url}
    migrated = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"], cwd=settings.BASE_DIR, env=env, capture_output=True
    )
    assert migrated.returncode == 0, migrated.stderr.decode()[-2000:]
    as_role = [*admin[:-1], name, "-d", name, "-tA", "-c"]
    assert subprocess.run([*as_role, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"],
                          capture_output=True, text=True, check=True).stdout.strip() == "f"  # fmt: skip
    read_file = subprocess.run([*as_role, "SELECT pg_read_file('/etc/hostname')"], capture_output=True, text=True)
    assert read_file.returncode != 0 and "permission denied" in read_file.stderr


def test_the_deployment_check_refuses_a_superuser_role_when_it_may_look_at_the_database(app_database, settings):
    from console.checks import database_role_is_not_a_superuser

    settings.PRODUCTION = True
    assert database_role_is_not_a_superuser(None) == []  # not asked to look at the database
    # The test run's own connection is CI's superuser: exactly what production must not use.
    assert [error.id for error in database_role_is_not_a_superuser(None, databases=["default"])] == ["ephemera.E011"]
