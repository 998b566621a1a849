from __future__ import annotations

from django.contrib import admin

from functions_app.models import Alias, CodeArtifact, Function, TestEvent, Version

# Environment ciphertext is never shown; versions and artifacts are immutable, so read-only here too.


@admin.register(CodeArtifact)
class CodeArtifactAdmin(admin.ModelAdmin):
    list_display = ["sha256", "size_bytes", "unzipped_bytes", "file_count", "created_at"]
    search_fields = ["sha256"]

    def has_change_permission(self, request, obj=None) -> bool:  # noqa: ANN001
        return False


@admin.register(Function)
class FunctionAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "runtime", "handler", "memory_mb", "timeout_s", "updated_at"]
    list_filter = ["runtime"]
    search_fields = ["name", "owner__username"]
    exclude = ["environment_ciphertext"]
    readonly_fields = ["environment_keys", "code", "revision_id"]
    raw_id_fields = ["owner"]


@admin.register(Version)
class VersionAdmin(admin.ModelAdmin):
    list_display = ["function", "number", "handler", "memory_mb", "created_at"]
    exclude = ["environment_ciphertext"]

    def has_change_permission(self, request, obj=None) -> bool:  # noqa: ANN001
        return False


@admin.register(Alias)
class AliasAdmin(admin.ModelAdmin):
    list_display = ["function", "name", "version", "additional_version", "additional_weight"]
    raw_id_fields = ["function", "version", "additional_version"]


@admin.register(TestEvent)
class TestEventAdmin(admin.ModelAdmin):
    list_display = ["function", "name", "updated_at"]
    raw_id_fields = ["function"]
