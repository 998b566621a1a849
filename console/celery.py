"""The Celery app: transport for invocation ids. Settings live in console/settings.py as CELERY_*."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

app = Celery("ephemera")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
