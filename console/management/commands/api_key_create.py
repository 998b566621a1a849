"""`manage.py api_key_create <username> [--name N] [--days D]`: make an API key from the shell and print it once
(for an operator without a browser session, or a user who lost theirs)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from console.accounts import api_key_create


class Command(BaseCommand):
    help = "Make an API key for a user and print it (it is shown this once)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="made with manage.py")
        parser.add_argument("--days", type=int, default=None, help="Expire after this many days (default: never).")

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"No user named {options['username']!r}.")
        expires_at = timezone.now() + timedelta(days=options["days"]) if options["days"] else None
        api_key, key = api_key_create(owner=user, name=options["name"], expires_at=expires_at)
        self.stdout.write(f"API key {api_key.name!r} for {user.get_username()} (shown once): {key}")
