"""The OpenAPI schema fuzzed with schemathesis: no 5xx, and every response conforms to the schema."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from functions_app import services

pytestmark = pytest.mark.django_db(transaction=True)

SOURCE = "def handler(event, context):\n    return event\n"


@pytest.fixture
def token(user, settings):
    from console.accounts import api_key_create

    # A sync invoke that no worker answers returns 202 at once instead of holding the fuzzer for minutes.
    settings.SYNC_WAIT_MAX_S = 0.01
    function = services.function_create(
        owner=user, name="fuzz", handler="app.handler", code=services.CodeUpload(files={"app.py": SOURCE})
    )
    services.version_publish(function=function)
    return api_key_create(owner=user, name="tests")[1]


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_the_api_never_fails_with_a_server_error_and_matches_its_schema(token):
    from console.wsgi import application

    schema = schemathesis.openapi.from_wsgi("/api/v1/schema/?format=json", application)
    failures = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case):
            case.call_and_validate(headers={"Authorization": f"Token {token}"}, checks=CHECKS)

        try:
            fuzz()
        except Exception as exc:  # noqa: BLE001 - collect every operation's failure, then report them all
            failures[operation.label] = _summary(exc)
    assert failures == {}


def _summary(exc: BaseException) -> str:
    """The first lines of each failure schemathesis found, without the long schema dumps."""
    parts = [exc, *getattr(exc, "exceptions", [])]
    return " | ".join(str(part).strip().splitlines()[0][:300] for part in parts if str(part).strip())
