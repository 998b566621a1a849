"""P10: draining a Redis Stream in batches, against the per-event async path in the same run, as JSON.

Usage: .venv/bin/python bench/bench_streams.py [--records 100000] [--batch-size 100] [--events 2000]

One executor host (threads, c=8) and a no-op function. The baseline: ``--events`` async events handed over at
once (bench_async_throughput's backlog), their completions per second. Then ``--records`` records appended to a
stream, and an event source mapping (TRIM_HORIZON, ``--batch-size``) made for them: records committed per second
from the mapping's creation to its last commit, and the lag (records not yet committed) sampled every half second,
which is the curve the Monitor tab draws.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.django_env import backends, django_setup_in_temp_var_dir, platform_services, spawn
from bench.events import backlog, completions_per_s, drain, wait_serving

VAR_DIR = django_setup_in_temp_var_dir()

from django.core.management import call_command  # noqa: E402

from console.processes import stop_all  # noqa: E402

NOOP = "def handler(event, context):\n    return None\n"
WORKER_ARGS = ["--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "WARNING"]
APPEND_CHUNK = 5000


def append(owner_id: int, stream: str, count: int) -> None:
    """``count`` small records on the owner's stream, pipelined (what PutRecords does, 500 at a time)."""
    from console.redis import redis_client
    from functions_app.stream_sources import stream_key

    client, key = redis_client(), stream_key(owner_id=owner_id, name=stream)
    for start in range(0, count, APPEND_CHUNK):
        pipeline = client.pipeline(transaction=False)
        for number in range(start, min(start + APPEND_CHUNK, count)):
            pipeline.xadd(key, {"data": json.dumps({"n": number}).encode(), "partitionKey": b""})
        pipeline.execute()


def drain_stream(function, stream: str, records: int, batch_size: int) -> tuple[float, list[tuple[float, int]], int]:
    """Records/s of a mapping made for a stream holding ``records``, the lag samples (s since the start, records
    waiting) and the batches it took."""
    from functions_app import stream_sources
    from functions_app.models import EventSourceMapping

    samples: list[tuple[float, int]] = []
    started = time.monotonic()
    mapping = stream_sources.mapping_create(
        function=function, stream=stream, starting_position="TRIM_HORIZON", batch_size=batch_size
    )
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            lag = stream_sources.mapping_lag(mapping=mapping)
            samples.append((round(time.monotonic() - started, 1), lag if lag is not None else -1))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    deadline = started + 900
    while (current := EventSourceMapping.objects.get(pk=mapping.pk)).records < records:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{current.records} of {records} records committed; see {VAR_DIR}")
        time.sleep(0.1)
    elapsed = time.monotonic() - started
    done.set()
    sampler.join()
    samples.append((round(elapsed, 1), stream_sources.mapping_lag(mapping=mapping) or 0))
    return round(records / elapsed, 1), samples, current.batches


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args()
    with platform_services(VAR_DIR):
        call_command("migrate", verbosity=0)
        from django.contrib.auth import get_user_model

        from functions_app import services

        user = get_user_model().objects.create_user("bench")
        function = services.function_create(
            owner=user, name="noop", handler="app.handler", code=services.CodeUpload(files={"app.py": NOOP})
        )
        worker = spawn(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "console",
                "worker",
                "--pool",
                "threads",
                "-c",
                "8",
                "-n",
                "p10@%h",
                *WORKER_ARGS,
            ]
        )
        try:
            wait_serving(1, VAR_DIR)
            drain(backlog(user, function, 200), VAR_DIR)  # warm: the environments exist
            ids = backlog(user, function, args.events)
            drain(ids, VAR_DIR)
            events_per_s = completions_per_s(ids)
            append(user.pk, "bench", args.records)
            records_per_s, lag, batches = drain_stream(function, "bench", args.records, args.batch_size)
        finally:
            stop_all([worker])
    step = max(len(lag) // 20, 1)
    print(
        json.dumps(
            {
                "P10_stream_records_per_s": records_per_s,
                "baseline_async_events_completed_per_s": events_per_s,
                "ratio": round(records_per_s / events_per_s, 1) if events_per_s else None,
                "batches": batches,
                "lag_samples_s_records": lag[::step] + ([lag[-1]] if lag and lag[-1] not in lag[::step] else []),
                "goal": "records/s >= 10x the per-event async path's completions/s",
                "setup": f"{args.records} records on one stream, batch size {args.batch_size}, TRIM_HORIZON; baseline "
                f"{args.events} async no-op events at once; one executor host (threads c=8); {backends()}",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
