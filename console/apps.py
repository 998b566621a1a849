from __future__ import annotations

from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    name = "console"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.db.models.signals import post_delete, post_save

        from console import checks  # noqa: F401 - registers the deployment checks
        from console.accounts import api_keys_forget_checked
        from console.models import AccessKey, ApiKey

        # Cache invalidation, not logic: a key deleted (with its owner, or alone, in the admin) or an owner
        # deactivated must stop authenticating at once on every web process.
        post_delete.connect(api_keys_forget_checked, sender=ApiKey, dispatch_uid="api-key-deleted")
        post_delete.connect(_access_key_deleted, sender=AccessKey, dispatch_uid="access-key-deleted")
        post_save.connect(_owner_saved, sender=get_user_model(), dispatch_uid="api-key-owner-saved")


def _owner_saved(instance: object, created: bool = False, **_: object) -> None:
    from console.accounts import api_keys_forget_checked

    if not created and not getattr(instance, "is_active", True):
        api_keys_forget_checked()


def _access_key_deleted(**_: object) -> None:
    from console.access_keys import access_keys_forget_checked

    access_keys_forget_checked()
