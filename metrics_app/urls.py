"""URLs of metrics_app: its REST endpoints (included under /api/v1/) and its console pages (under /)."""

from __future__ import annotations

api_urlpatterns: list = []
page_urlpatterns: list = []
