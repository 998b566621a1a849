"""System checks. With PRODUCTION=1, `manage.py check --deploy` fails on a host whose sandbox is weaker than the
production shape (the sandbox doctor's shortfalls), as `manage.py sandbox_doctor --strict` does."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, register


@register(Tags.security, deploy=True)
def sandbox_check(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    if not settings.PRODUCTION or not settings.SANDBOX_DEPLOY_CHECK:
        return []
    from functions_app.worker import sandbox_report  # the doctor probes the host: only when asked to

    return [
        Error(
            f"The sandbox on this host is weaker than the production shape: {shortfall}.",
            hint="Run `manage.py sandbox_doctor` on the executor host; docs/architecture.md §6 lists what it needs.",
            id="ephemera.E001",
        )
        for shortfall in sandbox_report()["production_shortfalls"]
    ]
