"""URLs of metrics_app: its REST endpoints (included under /api/v1/) and its console pages (under /)."""

from __future__ import annotations

from django.urls import path

from metrics_app import api, views

api_urlpatterns = [
    path("reports/usage/", api.UsageReportApi.as_view(), name="api-reports-usage"),
    path("functions/<str:name>/rightsizing/", api.RightsizingApi.as_view(), name="api-function-rightsizing"),
]
page_urlpatterns = [
    path("metrics", views.metrics, name="metrics"),
    path("reports/", views.usage_report_page, name="usage_report"),
    path("reports/usage.csv", views.usage_report_download, {"fmt": "csv"}, name="usage_report_csv"),
    path("reports/usage.json", views.usage_report_download, {"fmt": "json"}, name="usage_report_json"),
]
