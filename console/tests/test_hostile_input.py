"""A corpus of hostile requests against every API path and the console's pages: none may end in a 5xx.

Each path template is filled with hostile segments (NUL, traversal, over-long, non-ASCII, huge numbers), each query
filter with hostile values, and each writing method sent hostile bodies (deep nesting, NUL, lone surrogates, wrong
types, not JSON). The suite runs it on SQLite and on PostgreSQL (CI), whose text type refuses NUL.
"""

from __future__ import annotations

import itertools
import json
import re

import pytest
from django.test import Client

from functions_app.urls import api_urlpatterns
from metrics_app.urls import api_urlpatterns as metrics_api_urlpatterns

pytestmark = pytest.mark.django_db

SEGMENTS = [
    "%00",
    "a%00b",
    "..",
    "%2e%2e",
    "x" * 300,
    "%F0%9F%98%80",
    "%C0%AF",
    "%C2%B2",
    "%20",
    "'%3B--",
    "%3Cscript%3E",
    "-1",
    "99999999999999999999999",
    "$LATEST",
    "hello",
]
QUERY_VALUES = ["%00", "x%00", "%FF", "-1", "1e400", "99999999999999999999999", "true%00", "%27", "x" * 2000, ""]
QUERY_NAMES = ["search", "runtime", "qualifier", "function", "status", "cold", "replayed", "condition", "limit",
               "offset", "log", "range", "month", "group_by", "format", "start", "end"]  # fmt: skip
BODIES = [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b'{"name": "x\\u0000", "handler": "app.handler", "code": {"files": {"app.py": "x"}}}',
    b'{"name": "fn", "handler": "app.handler", "code": {"files": {"a\\u0000.py": "x"}}}',
    b'{"description": "\\ud800"}',
    b'{"memory_mb": 1e400}',
    b'{"memory_mb": 99999999999999999999999999}',
    b'{"environment": {"A": "\\u0000"}}',
    b'{"zip_base64": "%%%"}',
    b"\x00\x01\x02",
    b"not json",
    b"[]",
    b"null",
]
API_TEMPLATES = [f"/api/v1/{pattern.pattern}" for pattern in [*api_urlpatterns, *metrics_api_urlpatterns]]
PAGES = ["/functions/{x}/", "/functions/{x}/test/", "/functions/{x}/monitor/", "/invocations/{x}/",
         "/functions/?q={x}", "/dead-letters/?function={x}", "/reports/?month={x}"]  # fmt: skip


def filled(template: str, segment: str) -> str:
    return re.sub(r"<(?:str|int):\w+>", segment, template)


def hostile_requests() -> list[tuple[str, str, bytes | None, str]]:
    requests: list[tuple[str, str, bytes | None, str]] = []
    for template, segment in itertools.product(API_TEMPLATES, SEGMENTS):
        for method in ("get", "delete"):
            requests.append((method, filled(template, segment), None, ""))
    for template, (name, value) in itertools.product(API_TEMPLATES, itertools.product(QUERY_NAMES, QUERY_VALUES)):
        requests.append(("get", f"{filled(template, 'hello')}?{name}={value}", None, ""))
    for template, body in itertools.product(API_TEMPLATES, BODIES):
        for method in ("post", "patch", "put"):
            requests.append((method, filled(template, "hello"), body, "application/json"))
    for page, segment in itertools.product(PAGES, SEGMENTS):
        requests.append(("get", page.format(x=segment), None, ""))
    return requests


def test_a_corpus_of_hostile_requests_never_gets_a_server_error(user, make_function, settings):
    settings.SYNC_WAIT_MAX_S = 0  # a sync invoke answers 202 at once: no worker runs in this test
    make_function()
    client = Client(raise_request_exception=False)  # as a real server: an exception becomes a 500 response
    client.force_login(user)
    corpus = hostile_requests()
    assert len(corpus) >= 1000
    failures = []
    for method, path, body, content_type in corpus:
        extra = {"data": body, "content_type": content_type} if body is not None else {}
        response = getattr(client, method)(path, **extra)
        if response.status_code >= 500:
            failures.append((method, path[:120], (body or b"")[:60], response.status_code))
        elif path.startswith("/api/") and response.status_code >= 400:
            assert json.loads(response.content)["type"], (method, path)
    assert failures == [], f"{len(failures)} of {len(corpus)} hostile requests got a 5xx: {failures[:20]}"
