"""The metering hook, wired for real: concurrent writers, and an invoke through a real Celery worker."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection

from metrics_app.models import Granularity, Rollup
from metrics_app.services import invocation_record, metering_flush
from metrics_app.tests.factories import T0, finish


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_never_lose_an_increment(make_function):
    function = make_function()
    invocations = [finish(function, at=T0, metered=False) for _ in range(60)]
    errors = []

    def meter(chunk):
        try:
            for invocation in chunk:
                invocation_record(event="finished", invocation=invocation)
        except Exception as exc:  # noqa: BLE001 - reported to the main thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=meter, args=(invocations[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Four flushers at once, in small batches: concurrent upserts of the same rows must not lose an increment.
    flushers = [threading.Thread(target=flush_all, args=(errors,)) for _ in range(4)]
    for thread in flushers:
        thread.start()
    for thread in flushers:
        thread.join()
    assert errors == []
    for granularity in Granularity:
        assert Rollup.objects.get(function=function, granularity=granularity).invocations == 60


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_real_invoke_lands_in_the_roll_ups(api, worker):
    body = {
        "name": "echo",
        "handler": "app.handler",
        "code": {"files": {"app.py": "def handler(e, c):\n    return e\n"}},
    }
    assert api.post("/api/v1/functions/", body, format="json").status_code == 201
    for _ in range(2):
        response = api.post("/api/v1/functions/echo/invoke/", "{}", content_type="application/json")
        assert response.status_code == 200, response.content
    # Metering is flushed by beat about once a second, after the callers were answered.
    deadline = time.monotonic() + 10
    while (total := Rollup.objects.filter(function_name="echo", granularity=Granularity.TOTAL).first()) is None or (
        total.invocations < 2
    ):
        assert time.monotonic() < deadline, "the invocations were never metered"
        time.sleep(0.05)
    assert (total.invocations, total.cold_starts, total.runs, total.errors) == (2, 1, 2, 0)
    assert total.billed_ms_sum >= 2 and total.init_usd > 0 and total.peak_memory_mb_max > 0


def flush_all(errors):
    try:
        while metering_flush(limit=7):
            pass
    except Exception as exc:  # noqa: BLE001 - reported to the main thread
        errors.append(exc)
    finally:
        connection.close()
