"""The demo tenant and example function that `manage.py standalone` creates on a fresh machine."""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction

from console.accounts import api_key_create
from functions_app import services
from functions_app.models import Function

DEMO_USERNAME = "demo"
EXAMPLE_SOURCE = """import json


def lambda_handler(event, context):
    name = (event or {}).get("name", "world")
    print(f"greeting {name} from {context.function_name}")
    return {"statusCode": 200, "body": json.dumps({"message": f"Hello, {name}!"})}
"""


@transaction.atomic
def demo_seed(*, reset_password: bool = False) -> dict[str, Any]:
    """Create the demo user, their first API key and a `hello` function once; later calls change nothing, except a
    new password when ``reset_password`` is asked for (the way back in for an operator who lost it).

    The demo user is staff: an embedded install has one operator, the person who ran it (and who can read every
    file under var/ anyway), and staff is what opens /metrics to their session. It is not a superuser: the
    admin site shows it nothing."""
    user_model = get_user_model()
    password = None
    user = user_model.objects.filter(username=DEMO_USERNAME).first()
    created = user is None
    if user is None:
        password = secrets.token_urlsafe(12)
        user = user_model.objects.create_user(DEMO_USERNAME, password=password, is_staff=True)
    elif reset_password:
        password = secrets.token_urlsafe(12)
        user.set_password(password)
        user.save(update_fields=["password"])
    # Keys are stored by hash: the demo key can be shown only when it is made, on the first run.
    key = api_key_create(owner=user, name="demo (first run)")[1] if created else None
    if not Function.objects.filter(owner=user, name="hello").exists():
        services.function_create(
            owner=user,
            name="hello",
            handler="lambda_function.lambda_handler",
            description="The example function: returns a greeting.",
            code=services.CodeUpload(files={"lambda_function.py": EXAMPLE_SOURCE}),
        )
    return {
        "created": created,
        "username": DEMO_USERNAME,
        "password": password,
        "token": key,
        "is_staff": user.is_staff,
    }
