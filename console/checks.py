"""Deployment checks (`manage.py check --deploy`): credentials the production shape must have."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import Error, Tags, register
from django.db import DatabaseError, connection


@register(Tags.security, deploy=True)
def redis_has_credentials(app_configs: Any, **kwargs: Any) -> list[Error]:
    url = urlsplit(settings.REDIS_URL)
    if not settings.PRODUCTION or url.scheme == "unix" or url.password:
        return []
    return [
        Error(
            "REDIS_URL has no password: anything that reaches Redis could read other tenants' results and forge tasks.",
            hint="Run Redis with an ACL user (deploy/redis/acl-rules) and put it in the URL: "
            "redis://ephemera:<password>@host:6379/0.",
            id="ephemera.E010",
        )
    ]


@register(Tags.security, Tags.database, deploy=True)
def database_role_is_not_a_superuser(app_configs: Any, databases: Any = None, **kwargs: Any) -> list[Error]:
    # Only when asked to look at the database (`check --deploy --database default`), as Django's own do.
    if not settings.PRODUCTION or connection.vendor != "postgresql" or "default" not in (databases or ()):
        return []
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            row = cursor.fetchone()
    except DatabaseError:
        return []  # unreachable now: nothing to say about its role
    if not row or not row[0]:
        return []
    return [
        Error(
            "The application reaches PostgreSQL as a superuser, which can read the server's files and run programs "
            "on its host.",
            hint="Make a role of its own with deploy/postgres/app-role.sql and use it in DATABASE_URL.",
            id="ephemera.E011",
        )
    ]


@register(Tags.security, deploy=True)
def lambda_api_verifies_signatures(app_configs: Any, **kwargs: Any) -> list[Error]:
    if not settings.PRODUCTION or settings.LAMBDA_API_VERIFY_SIGNATURES:
        return []
    return [
        Error(
            "LAMBDA_API_VERIFY_SIGNATURES is off: anyone who knows an access key id could act as its owner on "
            "Lambda's API.",
            hint="Remove LAMBDA_API_VERIFY_SIGNATURES=0 (it is a development switch).",
            id="ephemera.E012",
        )
    ]
