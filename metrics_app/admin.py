from __future__ import annotations

from django.contrib import admin

from metrics_app.models import Rollup


@admin.register(Rollup)
class RollupAdmin(admin.ModelAdmin):
    """Read-only: roll-ups change only through metering (or ``rollups_rebuild``)."""

    list_display = ["function_name", "version", "memory_mb", "granularity", "bucket_start", "invocations", "errors"]
    list_filter = ["granularity"]
    search_fields = ["function_name"]
    date_hierarchy = "bucket_start"
    fields = ["function_name", "owner", "version", "memory_mb", "granularity", "bucket_start", "invocations"]

    def has_add_permission(self, request: object) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False
