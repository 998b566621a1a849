"""Re-encrypt every stored environment and secret with the newest key in FERNET_KEYS (put the new key first, run this,
then drop the old key)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from functions_app.services import environments_reencrypt


class Command(BaseCommand):
    help = "Re-encrypt all function and version environment variables with the newest FERNET_KEYS key."

    def handle(self, *args: Any, **options: Any) -> None:
        counts = environments_reencrypt(progress=lambda done: self.stderr.write(f"re-encrypted {done} rows"))
        secrets = counts["bucket_notifications"] + counts["event_source_mappings"] + counts["access_keys"]
        self.stdout.write(
            f"Re-encrypted {counts['functions']} functions and {counts['versions']} versions, and {secrets} stored "
            "secrets (buckets' and queues' keys, access keys)."
        )
