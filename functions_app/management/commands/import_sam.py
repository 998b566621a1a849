"""Import an AWS SAM template: its functions are created or updated, with the triggers Ephemera has for their events
(functions_app/sam.py, docs/sam.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from console.exceptions import ServiceError
from console.seed import DEMO_USERNAME
from functions_app.sam import queue_keys_of, sam_import


class Command(BaseCommand):
    help = "Create or update the functions of an AWS SAM template (template.yaml), with their triggers."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("template", type=Path, help="the template; CodeUri folders are read beside it")
        parser.add_argument(
            "--owner", default=DEMO_USERNAME, help=f"whose functions they are (default {DEMO_USERNAME})"
        )
        parser.add_argument("--stack-name", default="", help="names the HTTP API of the routes (default: the folder)")
        parser.add_argument("--dry-run", action="store_true", help="check the template and say what would change")
        parser.add_argument("--sqs-access-key-id", default="", help="the keys SQS events' queues are read with")
        parser.add_argument("--sqs-secret-access-key", default="")
        parser.add_argument("--sqs-endpoint-url", default="", help="an SQS-API server other than AWS's (ElasticMQ)")

    def handle(self, *args: Any, **options: Any) -> None:
        path: Path = options["template"]
        owner = get_user_model().objects.filter(username=options["owner"]).first()
        if owner is None:
            raise CommandError(f"No user {options['owner']!r}: pass --owner <username>.")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"Cannot read {path}: {exc}") from None
        try:
            report = sam_import(
                owner=owner,
                template_text=text,
                base_dir=path.resolve().parent,
                stack_name=options["stack_name"] or path.resolve().parent.name,
                dry_run=options["dry_run"],
                queue_keys=queue_keys_of(
                    options["sqs_access_key_id"], options["sqs_secret_access_key"], options["sqs_endpoint_url"]
                ),
                progress=lambda line: self.stderr.write(f"importing {line}"),
            )
        except ServiceError as exc:
            raise CommandError(exc.message) from None
        verb = "would be" if report.dry_run else "were"
        for title, names in (("created", report.created), ("updated", report.updated), ("unchanged", report.unchanged)):
            if names:
                self.stdout.write(f"Functions that {verb} {title}: {', '.join(names)}")
        for line in report.triggers:
            self.stdout.write(f"  {line}")
        for skipped in report.skipped:
            self.stdout.write(f"Skipped {skipped['item']}: {skipped['reason']}")
