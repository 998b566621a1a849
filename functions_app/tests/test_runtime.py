"""The executor against real sandboxes: no mocks. Needs root and namespaces (else skipped)."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from functions_app.runtime import (
    CapacityError,
    Executor,
    FunctionSpec,
    InvokeRequest,
    RuntimeConfig,
    SandboxUnavailable,
    build_layer,
    sandbox_doctor,
)

# This run's own uids (console/pytest_env.py): every process with one of them is ours.
SANDBOX_UID = int(os.environ["SANDBOX_UID"])
SANDBOX_UID_COUNT = int(os.environ["SANDBOX_UID_COUNT"])
SANDBOX_UIDS = range(SANDBOX_UID, SANDBOX_UID + SANDBOX_UID_COUNT)
DOCTOR = sandbox_doctor()
pytestmark = [
    pytest.mark.skipif(
        DOCTOR["tier"] != "namespaces", reason="needs the namespaces tier: " + "; ".join(DOCTOR["reasons"])
    ),
    pytest.mark.backend_free,  # the executor knows no database or Redis
]


# ---------------------------------------------------------------- helpers


def make_code(root: Path, source: str, module: str = "app") -> str:
    """A root-owned code dir as the console would extract it."""
    code = root / f"code-{module}-{abs(hash(source))}"
    code.mkdir(parents=True, exist_ok=True)
    code.chmod(0o755)
    path = code / f"{module.replace('.', '/')}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return str(code)


def make_spec(code_dir: str, **overrides: object) -> FunctionSpec:
    fields: dict[str, Any] = {
        "environment_key": f"key-{code_dir}",
        "function_name": "fn",
        "function_version": "$LATEST",
        "code_dir": code_dir,
        "handler": "app.handler",
        "memory_mb": 128,
        "timeout_s": 3.0,
        "env": {},
    }
    fields.update(overrides)
    return FunctionSpec(**fields)


def make_config(work_dir: Path, **overrides: object) -> RuntimeConfig:
    """This run's sandbox uids, nothing pre-imported, ``work_dir``; ``overrides`` on top."""
    fields: dict[str, Any] = {"preload": (), "sandbox_uid": SANDBOX_UID, "sandbox_uid_count": SANDBOX_UID_COUNT}
    fields.update(overrides)
    return RuntimeConfig(work_dir=str(work_dir), **fields)


def make_request(event: object = None, **overrides: object) -> InvokeRequest:
    fields: dict[str, Any] = {
        "request_id": "req-1",
        "event": json.dumps(event if event is not None else {}).encode(),
        "invoked_function_arn": "arn:aws:lambda:us-east-1:000000000000:function:fn",
    }
    fields.update(overrides)
    return InvokeRequest(**fields)


def sandbox_processes() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["uids"]):
        uids = proc.info["uids"]
        if uids is not None and (uids.real in SANDBOX_UIDS or uids.effective in SANDBOX_UIDS):
            found.append(proc)
    return found


def running_sandbox_processes() -> list[psutil.Process]:
    """Zombies excluded: an orphan is reaped by the host's init, on its own schedule."""
    running = []
    for proc in sandbox_processes():
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.status() != psutil.STATUS_ZOMBIE:
                running.append(proc)
    return running


def wait_for(predicate, timeout_s: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def payload(result) -> object:
    return json.loads(result.payload)


REPO = str(Path(__file__).resolve().parents[2])


def worker_script(work_dir: Path, body: str, code: str = "", memory_mb: int = 128) -> str:
    """A worker of its own (python -c): an executor ``ex`` on ``work_dir``, a ``spec`` for ``code``, then ``body``."""
    prelude = f"""
        import json, resource, sys, threading, time
        sys.path.insert(0, {REPO!r})
        from functions_app.runtime import Executor, FunctionSpec, InvokeRequest, RuntimeConfig
        uids = {{"sandbox_uid": {SANDBOX_UID}, "sandbox_uid_count": {SANDBOX_UID_COUNT}}}
        ex = Executor(RuntimeConfig(work_dir={str(work_dir)!r}, preload=(), **uids))
        spec = FunctionSpec("k", "fn", "1", {code!r}, "app.handler", {memory_mb}, 30.0, {{}})
    """
    return textwrap.dedent(prelude) + textwrap.dedent(body)


@pytest.fixture
def executor(tmp_path):
    ex = Executor(make_config(tmp_path / "work", preload=("json",), log_cap_bytes=64 * 1024))
    yield ex
    ex.shutdown()
    assert wait_for(lambda: not sandbox_processes()), "sandbox processes survived shutdown"


@pytest.fixture
def run(executor, tmp_path):
    """run(source, event=None, **spec_overrides) -> InvokeResult."""

    def _run(source: str, event: object = None, request: InvokeRequest | None = None, **overrides: object):
        spec = make_spec(make_code(tmp_path, source), **overrides)
        return executor.invoke(spec, request or make_request(event))

    return _run


@pytest.fixture
def small_budget(tmp_path):
    """An executor with room for two 128 MB environments."""
    config = make_config(tmp_path / "w", memory_budget_mb=256)
    ex = Executor(config)
    yield ex
    ex.shutdown()


@pytest.fixture(scope="session")
def boto3_layer(tmp_path_factory) -> str:
    layer = tmp_path_factory.mktemp("layer") / "python"
    build_layer(str(layer))
    for d in (layer.parent, layer):
        d.chmod(0o755)
    return str(layer)


def test_workers_building_the_layer_at_once_all_get_the_whole_layer(tmp_path):
    # Workers starting together on a fresh host build it at the same moment (copytree raised FileExistsError).
    script = (
        "import sys, time; from functions_app.runtime.layer import build_layer; "
        "time.sleep(max(0, float(sys.argv[2]) - time.time())); build_layer(sys.argv[1])"
    )
    for attempt in range(3):
        dest = tmp_path / str(attempt) / "python"
        start_at = str(time.time() + 2)
        builders = [
            subprocess.Popen([sys.executable, "-c", script, str(dest), start_at], stderr=subprocess.PIPE, text=True)
            for _ in range(4)
        ]
        errors = [builder.communicate(timeout=120)[1] for builder in builders]
        assert [builder.returncode for builder in builders] == [0] * 4, errors
        assert sorted(os.listdir(dest)) == sorted(
            ["boto3", "botocore", "jmespath", "s3transfer", "dateutil", "six.py", "urllib3"]
        )
        assert (dest / "botocore" / "data" / "s3" / "2006-03-01" / "service-2.json.gz").exists()


COUNTER = """
    import os
    COUNT = 0
    def handler(event, context):
        global COUNT
        COUNT += 1
        return {"count": COUNT, "pid": os.getpid()}
"""


# ---------------------------------------------------------------- lifecycle


def test_the_doctor_picks_the_namespaces_tier_on_this_host():
    assert DOCTOR["tier"] == "namespaces"
    assert DOCTOR["secure"] is True
    assert DOCTOR["checks"]["seccomp"] is True


def test_the_first_invoke_is_cold_and_the_second_reuses_the_warm_environment_faster(executor, tmp_path):
    spec = make_spec(make_code(tmp_path, COUNTER))
    t0 = time.perf_counter()
    first = executor.invoke(spec, make_request())
    cold_wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    second = executor.invoke(spec, make_request())
    warm_wall = time.perf_counter() - t0

    assert first.status == second.status == "succeeded"
    assert first.is_cold and first.init_ms > 0
    assert not second.is_cold and second.init_ms == 0
    assert second.environment_id == first.environment_id
    assert payload(second)["count"] == 2
    assert warm_wall < cold_wall
    assert executor.health()["warm_environments"] == 1


def test_different_environment_keys_never_share_an_environment(executor, tmp_path):
    code = make_code(tmp_path, COUNTER)
    a = make_spec(code, environment_key="fn:1")
    b = make_spec(code, environment_key="fn:2")
    executor.invoke(a, make_request())
    executor.invoke(a, make_request())
    result = executor.invoke(b, make_request())
    assert payload(result)["count"] == 1
    assert result.is_cold


def test_module_state_and_tmp_persist_across_warm_invocations(run, executor, tmp_path):
    source = """
        import os
        def handler(event, context):
            path = "/tmp/state"
            seen = open(path).read() if os.path.exists(path) else ""
            with open(path, "a") as f:
                f.write("x")
            return seen
    """
    spec = make_spec(make_code(tmp_path, source))
    assert payload(executor.invoke(spec, make_request())) == ""
    assert payload(executor.invoke(spec, make_request())) == "x"


def test_concurrent_invocations_of_one_key_each_get_their_own_environment(executor, tmp_path):
    source = """
        import time
        def handler(event, context):
            time.sleep(0.3)
            return "ok"
    """
    spec = make_spec(make_code(tmp_path, source))
    results = []
    threads = [threading.Thread(target=lambda: results.append(executor.invoke(spec, make_request()))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status for r in results] == ["succeeded"] * 3
    assert len({r.environment_id for r in results}) == 3
    assert executor.health()["warm_environments"] == 3


def test_idle_environments_are_reaped_after_the_ttl(tmp_path):
    ex = Executor(make_config(tmp_path / "w", idle_ttl_s=0.1))
    try:
        ex.invoke(make_spec(make_code(tmp_path, COUNTER)), make_request())
        time.sleep(0.2)
        assert ex.reap_idle() == 1
        assert ex.health()["warm_environments"] == 0
        assert wait_for(lambda: not sandbox_processes())
    finally:
        ex.shutdown()


def test_the_memory_budget_evicts_the_least_recently_used_idle_environment(small_budget, tmp_path):
    ex = small_budget
    code = make_code(tmp_path, COUNTER)
    first = ex.invoke(make_spec(code, environment_key="a"), make_request())
    ex.invoke(make_spec(code, environment_key="b"), make_request())
    ex.invoke(make_spec(code, environment_key="c"), make_request())  # evicts "a"
    again = ex.invoke(make_spec(code, environment_key="a"), make_request())
    assert again.is_cold and again.environment_id != first.environment_id
    assert ex.health()["memory_reserved_mb"] == 256
    with pytest.raises(CapacityError):
        ex.invoke(make_spec(code, environment_key="huge", memory_mb=512), make_request())
    assert ex.health()["warm_environments"] == 2  # a request that cannot fit evicts nobody


def test_shutdown_leaves_no_process_behind(tmp_path):
    # Other fixtures (an embedded Redis) may own children of this process too: only new ones count.
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    ex = Executor(make_config(tmp_path / "w"))
    zygote = psutil.Process(ex.health()["zygote_pid"])
    ex.invoke(make_spec(make_code(tmp_path, COUNTER)), make_request())
    ex.shutdown()
    assert wait_for(lambda: not zygote.is_running() or zygote.status() == psutil.STATUS_ZOMBIE)
    assert wait_for(lambda: not {c.pid for c in psutil.Process().children(recursive=True)} - before)
    assert wait_for(lambda: not sandbox_processes()), [(p.pid, p.ppid(), p.status()) for p in sandbox_processes()]


def test_a_dead_zygote_is_restarted_on_the_next_cold_start(executor, tmp_path):
    old = executor.health()["zygote_pid"]
    psutil.Process(old).kill()
    assert wait_for(lambda: not executor.health()["zygote_alive"])
    result = executor.invoke(make_spec(make_code(tmp_path, COUNTER)), make_request())
    assert result.status == "succeeded"
    assert executor.health()["zygote_pid"] != old


def test_an_unknown_tier_is_refused(tmp_path):
    with pytest.raises(SandboxUnavailable):
        Executor(RuntimeConfig(work_dir=str(tmp_path / "w"), tier="bogus"))


def test_the_insecure_dev_tier_runs_only_when_asked_and_says_so_loudly(tmp_path):
    # No mount namespace here: the code must be reachable by the sandbox uid at
    # its host path, and pytest's tmp_path parents are 0700.
    code_root = Path(tempfile.mkdtemp(prefix="ephemera-insecure-"))
    code_root.chmod(0o755)
    ex = Executor(make_config(tmp_path / "w", tier="insecure-dev"))
    try:
        health = ex.health()
        assert health["tier"] == "insecure-dev" and health["secure"] is False
        assert health["reasons"][0].startswith("INSECURE")
        source = "import os\ndef handler(e, c):\n    return [os.getuid(), os.environ['LAMBDA_TASK_ROOT']]\n"
        code = make_code(code_root, source)
        result = ex.invoke(make_spec(code), make_request())
        uid, task_root = payload(result)
        assert uid in SANDBOX_UIDS and task_root == code
        slow = make_spec(make_code(code_root, "import time\ndef handler(e, c):\n    time.sleep(30)\n"), timeout_s=0.5)
        assert ex.invoke(slow, make_request()).status == "timed_out"
    finally:
        ex.shutdown()
        shutil.rmtree(code_root)
    assert wait_for(lambda: not sandbox_processes())


def test_it_pauses_an_insecure_dev_environment_with_sigstop_where_no_freezer_exists(tmp_path, monkeypatch):
    from functions_app.runtime import pool

    monkeypatch.setattr(pool, "detect_layout", lambda: None)  # as on a host without writable cgroups
    code_root = Path(tempfile.mkdtemp(prefix="ephemera-insecure-"))
    code_root.chmod(0o755)
    config = make_config(tmp_path / "w", tier="insecure-dev")
    ex = Executor(config)
    try:
        assert ex.health()["frozen_between_invocations"] == "SIGSTOP"
        spec = make_spec(make_code(code_root, SPINNER))
        assert ex.invoke(spec, make_request({"spawn": True})).status == "succeeded"
        before = sandbox_cpu_seconds()
        time.sleep(1.0)
        assert sandbox_cpu_seconds() - before < 0.1
        assert ex.invoke(spec, make_request()).status == "succeeded"
    finally:
        ex.shutdown()
        shutil.rmtree(code_root)
    assert wait_for(lambda: not sandbox_processes())


def test_killing_the_worker_takes_every_sandbox_with_it(tmp_path):
    code = make_code(tmp_path, "import time\ndef handler(e, c):\n    time.sleep(60)\n")
    quick = make_code(tmp_path, COUNTER)
    script = worker_script(
        tmp_path / "w",
        f"""
        idle = FunctionSpec("q", "fn", "1", {quick!r}, "app.handler", 128, 60.0, {{}})
        ex.invoke(idle, InvokeRequest("q", b"{{}}", "arn"))  # stays warm, frozen
        threading.Thread(target=ex.invoke, args=(spec, InvokeRequest("r", b"{{}}", "arn"))).start()
        """,
        code,
    )
    worker = subprocess.Popen([sys.executable, "-c", script])
    try:
        assert wait_for(lambda: len(sandbox_processes()) >= 4, timeout_s=10)  # two reapers, two handlers
    finally:
        worker.kill()
        worker.wait()
    # Frozen processes ignore SIGKILL until thawed: the reaper of the idle one must thaw it on its way out.
    assert wait_for(lambda: not running_sandbox_processes(), timeout_s=5), running_sandbox_processes()
    if DOCTOR["checks"]["cgroup"] != "v1":
        return
    # The next worker to start there removes the dead one's cgroups and storage templates.
    leftovers = f"/sys/fs/cgroup/memory/ephemera/env-{worker.pid}-*"
    assert glob.glob(leftovers)
    assert (tmp_path / "w" / f"storage-{worker.pid}").exists()
    Executor(make_config(tmp_path / "w")).shutdown()
    assert not glob.glob(leftovers)
    assert not (tmp_path / "w" / f"storage-{worker.pid}").exists()


def test_many_concurrent_cold_starts_all_succeed(executor, tmp_path):
    code = make_code(tmp_path, COUNTER)
    results = []

    def cold(i: int) -> None:
        results.append(executor.invoke(make_spec(code, environment_key=f"k{i}"), make_request()))

    threads = [threading.Thread(target=cold, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status for r in results] == ["succeeded"] * 8
    assert all(r.is_cold for r in results)
    assert len({json.loads(r.payload)["pid"] for r in results}) == 1  # every handler is pid 2 of its own namespace


def test_the_runtime_package_does_not_import_django():
    code = "import sys, functions_app.runtime; print('django' in sys.modules or 'celery' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_shutdown_during_an_invocation_reports_a_crash_and_leaves_nothing(tmp_path):
    ex = Executor(make_config(tmp_path / "w"))
    spec = make_spec(make_code(tmp_path, "import time\ndef handler(e, c):\n    time.sleep(30)\n"), timeout_s=30)
    results = []
    thread = threading.Thread(target=lambda: results.append(ex.invoke(spec, make_request())))
    thread.start()
    assert wait_for(lambda: ex.health()["busy_environments"] == 1 and sandbox_processes())
    ex.shutdown()
    thread.join(timeout=5)
    assert [r.status for r in results] == ["crashed"]
    assert wait_for(lambda: not sandbox_processes())


# ---------------------------------------------------------------- the Lambda contract


def test_a_handler_exception_returns_lambdas_error_shape(run):
    result = run("""
        def handler(event, context):
            raise ValueError("kaboom")
    """)
    body = payload(result)
    assert result.status == "failed"
    assert result.error_type == "ValueError"
    assert body["errorType"] == "ValueError" and body["errorMessage"] == "kaboom"
    assert any("app.py" in line and "handler" in line for line in body["stackTrace"])
    assert "bootstrap" not in "".join(body["stackTrace"])


def test_an_import_error_is_reported_on_every_invoke_of_the_environment(executor, tmp_path):
    spec = make_spec(make_code(tmp_path, "import not_a_module\ndef handler(e, c): return 1\n"))
    for _ in range(2):
        result = executor.invoke(spec, make_request())
        assert result.status == "failed"
        assert result.error_type == "Runtime.ImportModuleError"
        assert payload(result)["errorMessage"] == ("Unable to import module 'app': No module named 'not_a_module'")


def test_a_syntax_error_is_reported_as_user_code_syntax_error(run):
    result = run("def handler(event, context)\n    return 1\n")
    assert result.error_type == "Runtime.UserCodeSyntaxError"
    assert payload(result)["errorMessage"].startswith("Syntax error in module 'app'")


def test_a_missing_handler_function_is_reported_as_handler_not_found(run):
    result = run("def other(event, context):\n    return 1\n")
    assert result.error_type == "Runtime.HandlerNotFound"


def test_a_nested_handler_path_is_imported(executor, tmp_path):
    code = make_code(tmp_path, "def go(event, context):\n    return 'nested'\n", module="pkg.mod")
    for handler in ("pkg/mod.go", "pkg.mod.go"):
        result = executor.invoke(make_spec(code, handler=handler, environment_key=handler), make_request())
        assert payload(result) == "nested"


def test_a_result_that_is_not_json_is_a_marshal_error(run):
    result = run("def handler(event, context):\n    return object()\n")
    assert result.error_type == "Runtime.MarshalError"


def test_the_context_has_lambdas_fields_and_types(run):
    source = """
        import time
        def handler(event, context):
            first = context.get_remaining_time_in_millis()
            time.sleep(0.05)
            return {
                "first": first,
                "second": context.get_remaining_time_in_millis(),
                "memory": context.memory_limit_in_mb,
                "name": context.function_name,
                "version": context.function_version,
                "arn": context.invoked_function_arn,
                "request_id": context.aws_request_id,
                "group": context.log_group_name,
                "stream": context.log_stream_name,
                "attempt": context.attempt,
                "event": event,
            }
    """
    request = make_request({"k": "v"}, request_id="abc-123", attempt=2)
    result = run(source, request=request, timeout_s=3.0, function_name="orders", function_version="7")
    body = payload(result)
    assert body["memory"] == "128"
    assert 2500 < body["first"] <= 3000
    assert body["second"] < body["first"]
    assert (body["name"], body["version"], body["request_id"], body["attempt"]) == ("orders", "7", "abc-123", 2)
    assert body["arn"] == "arn:aws:lambda:us-east-1:000000000000:function:fn"
    assert body["group"] == "/aws/lambda/orders"
    assert re.fullmatch(r"\d{4}/\d{2}/\d{2}/\[7\][0-9a-f]{32}", body["stream"])
    assert body["event"] == {"k": "v"}


def test_the_handler_sees_only_its_variables_and_lambdas_reserved_ones(run, monkeypatch):
    monkeypatch.setenv("EPHEMERA_TEST_SECRET", "s3cr3t-marker")
    source = """
        import glob, os
        def handler(event, context):
            leaked = []
            for path in glob.glob("/proc/*/environ"):
                try:
                    if b"s3cr3t-marker" in open(path, "rb").read():
                        leaked.append(path)
                except OSError:
                    pass
            return {"env": dict(os.environ), "leaked": leaked}
    """
    body = payload(run(source, env={"GREETING": "hi"}))
    env = body["env"]
    assert body["leaked"] == []
    assert "EPHEMERA_TEST_SECRET" not in env
    assert env["GREETING"] == "hi"
    assert env["LAMBDA_TASK_ROOT"] == "/var/task"
    assert env["_HANDLER"] == "app.handler"
    assert env["TZ"] == ":UTC"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "128"
    assert {"AWS_REGION", "PATH", "AWS_LAMBDA_LOG_STREAM_NAME"} <= set(env)


def test_stdout_and_stderr_of_the_handler_and_its_children_are_the_log(run):
    result = run("""
        import subprocess, sys
        def handler(event, context):
            print("to stdout")
            print("to stderr", file=sys.stderr)
            subprocess.run(["/usr/bin/echo", "from a child"], check=True)
            return 1
    """)
    assert "to stdout" in result.log
    assert "to stderr" in result.log
    assert "from a child" in result.log


def test_an_output_flood_is_truncated_with_a_marker(run):
    result = run("""
        import sys
        def handler(event, context):
            for _ in range(300):
                sys.stdout.write("x" * 10000 + "\\n")
            return "done"
    """)
    assert result.status == "succeeded"
    assert "\n... [log truncated: " in result.log
    assert len(result.log) < 70 * 1024


def test_large_events_and_results_cross_the_pipes_intact(run):
    event = {"blob": "e" * (1 << 20)}
    result = run(
        "def handler(event, context):\n    return {'len': len(event['blob']), 'out': 'r' * (5 << 20)}\n", event
    )
    body = payload(result)
    assert body["len"] == 1 << 20
    assert len(body["out"]) == 5 << 20


def test_a_background_writer_cannot_hold_an_invocation_open(executor, tmp_path):
    source = """
        import sys, threading
        def spam():
            while True:
                sys.stdout.write("spam\\n")
        def handler(event, context):
            threading.Thread(target=spam, daemon=True).start()
            return "returned"
    """
    spec = make_spec(make_code(tmp_path, source))
    t0 = time.monotonic()
    assert payload(executor.invoke(spec, make_request())) == "returned"
    assert executor.invoke(spec, make_request()).status == "succeeded"
    assert time.monotonic() - t0 < 2.5


def test_metering_fields_are_filled(run):
    result = run("def handler(event, context):\n    return sum(range(200000))\n")
    assert result.duration_ms > 0
    assert result.cpu_ms >= 0
    assert result.peak_memory_mb > 0


# ---------------------------------------------------------------- limits


def test_a_handler_past_its_timeout_is_killed_with_its_whole_tree_and_the_next_call_is_cold(executor, tmp_path):
    source = """
        import subprocess, time
        def handler(event, context):
            subprocess.Popen(["/usr/bin/sleep", "60"])
            time.sleep(60)
    """
    spec = make_spec(make_code(tmp_path, source), timeout_s=1.0)
    t0 = time.monotonic()
    result = executor.invoke(spec, make_request())
    elapsed = time.monotonic() - t0
    assert result.status == "timed_out"
    assert result.error_type == "Sandbox.Timedout"
    assert payload(result)["errorMessage"] == "Task timed out after 1.00 seconds"
    assert elapsed < 2.0
    assert wait_for(lambda: not sandbox_processes(), timeout_s=1.0)
    assert executor.health()["warm_environments"] == 0
    assert executor.invoke(spec, make_request()).is_cold


def test_a_slow_init_is_cut_at_the_init_timeout(tmp_path):
    config = make_config(tmp_path / "w", init_timeout_s=0.5)
    ex = Executor(config)
    try:
        spec = make_spec(make_code(tmp_path, "import time\ntime.sleep(30)\ndef handler(e, c):\n    return 1\n"))
        t0 = time.monotonic()
        result = ex.invoke(spec, make_request())
        assert result.status == "timed_out"
        assert result.error_type == "Sandbox.Timedout"
        assert time.monotonic() - t0 < 1.5
        assert ex.health()["warm_environments"] == 0
    finally:
        ex.shutdown()


def test_a_crash_mid_invocation_is_an_exit_error_and_the_next_call_is_cold(executor, tmp_path):
    source = """
        import os
        def handler(event, context):
            if event.get("crash"):
                print("about to exit")
                os._exit(3)
            return "fine"
    """
    spec = make_spec(make_code(tmp_path, source))
    first = executor.invoke(spec, make_request())
    result = executor.invoke(spec, make_request({"crash": True}))
    assert result.status == "crashed"
    assert result.error_type == "Runtime.ExitError"
    assert "about to exit" in result.log
    after = executor.invoke(spec, make_request())
    assert after.is_cold and after.environment_id != first.environment_id


def test_a_module_that_exits_during_import_fails_fast(executor, tmp_path):
    spec = make_spec(make_code(tmp_path, "import os\nos._exit(1)\n"))
    t0 = time.monotonic()
    result = executor.invoke(spec, make_request())
    assert result.status == "crashed"
    assert result.error_type == "Runtime.ExitError"
    assert time.monotonic() - t0 < 2.0
    assert executor.health()["warm_environments"] == 0


def test_a_memory_hog_is_out_of_memory_and_the_executor_stays_healthy(executor, tmp_path):
    # A timeout far past what the kernel needs to kill it, even on a loaded machine: only the outcome's kind counts.
    hog = make_spec(make_code(tmp_path, "def handler(e, c):\n    return len(bytearray(400 << 20))\n"), timeout_s=30.0)
    result = executor.invoke(hog, make_request())
    assert result.status == "out_of_memory"
    assert result.error_type == "Runtime.OutOfMemory"
    assert wait_for(lambda: not sandbox_processes())
    ok = executor.invoke(make_spec(make_code(tmp_path, COUNTER)), make_request())
    assert ok.status == "succeeded"


def test_a_fork_bomb_is_contained_and_leaves_nothing_behind(executor, tmp_path):
    source = """
        import os, time
        def handler(event, context):
            forked = 0
            try:
                while forked < 10000:
                    if os.fork() == 0:
                        time.sleep(60)
                        os._exit(0)
                    forked += 1
            except OSError as exc:
                return {"forked": forked, "errno": exc.errno}
            return {"forked": forked}
    """
    spec = make_spec(make_code(tmp_path, source))
    body = payload(executor.invoke(spec, make_request()))
    assert body["forked"] < 64
    assert body["errno"] == 11  # EAGAIN from pids.max
    executor.shutdown()
    assert wait_for(lambda: not sandbox_processes())


def test_a_daemonised_child_does_not_survive_its_environment(executor, tmp_path):
    source = """
        import os, time
        def handler(event, context):
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    time.sleep(60)
                os._exit(0)
            time.sleep(0.1)
            return "daemonised"
    """
    spec = make_spec(make_code(tmp_path, source))
    assert payload(executor.invoke(spec, make_request())) == "daemonised"
    assert len(sandbox_processes()) >= 2  # the handler process and the daemon
    executor.shutdown()
    assert wait_for(lambda: not sandbox_processes())


def test_tmp_is_size_capped(run):
    result = run(
        """
        def handler(event, context):
            try:
                with open("/tmp/big", "wb") as f:
                    f.write(b"x" * (4 << 20))
            except OSError as exc:
                return exc.errno
    """,
        tmp_mb=2,
    )
    assert payload(result) == 28  # ENOSPC


# ---------------------------------------------------------------- escapes


def test_the_network_is_off_by_default(run):
    result = run("""
        import socket
        def handler(event, context):
            try:
                socket.create_connection(("1.1.1.1", 80), timeout=1)
            except OSError as exc:
                return exc.errno
    """)
    assert payload(result) == 97  # EAFNOSUPPORT from seccomp


def test_a_function_can_opt_into_the_network(run):
    result = run(
        """
        import socket
        def handler(event, context):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.close()
            return "ok"
    """,
        network=True,
    )
    assert payload(result) == "ok"


def test_host_secrets_and_other_paths_are_not_in_the_sandbox(run, tmp_path):
    secrets = tmp_path / "console"
    secrets.mkdir()
    secret = secrets / "db.sqlite3"
    secret.write_text("SECRET_KEY=do-not-leak")
    secret.chmod(0o600)
    result = run(
        """
        import os
        def handler(event, context):
            return {p: os.path.exists(p) for p in event["paths"]}
        """,
        event={"paths": [str(secret), str(secrets), "/work", "/root", "/etc/shadow", "/home", "/var/lib"]},
    )
    assert payload(result) == {p: False for p in payload(result)}
    assert len(payload(result)) == 7


def test_the_sandbox_has_its_own_passwd_not_the_hosts(run):
    result = run("""
        import getpass
        def handler(event, context):
            return {"user": getpass.getuser(), "passwd": open("/etc/passwd").read()}
    """)
    body = payload(result)
    assert body["user"] == "sbx_user"
    assert [line.split(":")[0] for line in body["passwd"].splitlines()] == ["root", "sbx_user"]


def test_another_functions_code_is_not_reachable(executor, tmp_path):
    other = make_code(tmp_path / "other", "TOKEN = 'other-function'\ndef handler(e, c): return 1\n")
    source = """
        import os
        def handler(event, context):
            return {"other": os.path.exists(event["other"]), "task": sorted(os.listdir("/var/task"))}
    """
    spec = make_spec(make_code(tmp_path / "mine", source))
    body = payload(executor.invoke(spec, make_request({"other": other})))
    assert body == {"other": False, "task": ["app.py"]}


def test_only_tmp_is_writable(run):
    result = run("""
        def handler(event, context):
            outcome = {}
            for path in ("/var/task/x", "/usr/x", "/x", "/etc/x", "/tmp/x"):
                try:
                    open(path, "w").close()
                    outcome[path] = "written"
                except OSError as exc:
                    outcome[path] = exc.errno
            return outcome
    """)
    body = payload(result)
    assert body.pop("/tmp/x") == "written"
    assert set(body.values()) <= {30, 13}  # EROFS or EACCES


def test_the_handler_runs_unprivileged_and_dangerous_syscalls_are_denied(run):
    result = run("""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        def handler(event, context):
            status = dict(l.split(":\\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\\t" in l)
            def errno_of(rc):
                return ctypes.get_errno() if rc == -1 else 0
            return {
                "uid": os.getuid(),
                "cap_eff": status["CapEff"].strip(),
                "no_new_privs": status["NoNewPrivs"].strip(),
                "seccomp": status["Seccomp"].strip(),
                "pid": os.getpid(),
                "unshare_user": errno_of(libc.unshare(0x10000000)),
                "ptrace": errno_of(libc.ptrace(16, 1, 0, 0)),
            }
    """)
    body = payload(result)
    assert body["uid"] in SANDBOX_UIDS
    assert body["cap_eff"] == "0000000000000000"
    assert body["no_new_privs"] == "1"
    assert body["seccomp"] == "2"
    assert body["pid"] == 2  # the handler process is pid 2 of its own namespace; pid 1 is its reaper
    assert body["unshare_user"] == 1 and body["ptrace"] == 1  # EPERM


# ---------------------------------------------------------------- boto3 layer


def test_a_handler_importing_boto3_cold_starts_from_the_layer(tmp_path, boto3_layer):
    config = make_config(tmp_path / "w", layer_dirs=(boto3_layer,), preload=("json", "boto3"))
    ex = Executor(config)
    try:
        assert "boto3" in ex.health()["preloaded"]
        source = """
            import boto3
            def handler(event, context):
                client = boto3.client("s3", region_name="us-east-1")
                return {"version": boto3.__version__, "service": client.meta.service_model.service_name}
        """
        result = ex.invoke(make_spec(make_code(tmp_path, source), memory_mb=256), make_request())
        assert result.status == "succeeded", result.payload
        assert payload(result)["service"] == "s3"
        print(f"boto3 handler cold start: init {result.init_ms:.1f} ms")
    finally:
        ex.shutdown()


# ---------------------------------------------------------------- freezing, CPU and reaping (issue #8 item 12)


def sandbox_cpu_seconds() -> float:
    total = 0.0
    for proc in sandbox_processes():
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


SPINNER = """
    import os, resource, time
    def handler(event, context):
        if event.get("spawn"):
            if os.fork() == 0:
                resource.setrlimit(resource.RLIMIT_CPU, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
                while True:
                    pass
        time.sleep(event.get("sleep", 0))
        return "ok"
"""


@pytest.fixture
def unthrottled(tmp_path):
    """An executor without a CPU quota, so that only freezing can stop background work."""
    ex = Executor(make_config(tmp_path / "u", mb_per_vcpu=0))
    yield ex
    ex.shutdown()


def test_it_freezes_background_work_between_invocations(unthrottled, tmp_path):
    spec = make_spec(make_code(tmp_path, SPINNER))
    assert unthrottled.invoke(spec, make_request({"spawn": True})).status == "succeeded"
    before = sandbox_cpu_seconds()
    time.sleep(1.0)
    assert sandbox_cpu_seconds() - before < 0.1
    assert unthrottled.invoke(spec, make_request()).status == "succeeded"  # thawed for the next event


def test_it_bills_background_cpu_measured_from_the_cgroup(unthrottled, tmp_path):
    spec = make_spec(make_code(tmp_path, SPINNER))
    unthrottled.invoke(spec, make_request({"spawn": True}))
    result = unthrottled.invoke(spec, make_request({"sleep": 1.0}))
    # The handler only sleeps; the child it left behind spins while the environment is thawed.
    assert result.cpu_ms > 100


def test_it_limits_cpu_in_proportion_to_memory(run):
    source = """
        import time
        def handler(event, context):
            t0, c0 = time.monotonic(), time.process_time()
            while time.monotonic() - t0 < 1.0:
                pass
            return (time.process_time() - c0) / (time.monotonic() - t0)
    """
    share = payload(run(source, memory_mb=128))  # 128 / 1769 of a vCPU, as on Lambda
    assert share < 0.2


def test_it_reaps_orphaned_zombies_during_an_invocation(run):
    result = run(
        """
        import os
        def handler(event, context):
            made = 0
            for _ in range(150):
                pid = os.fork()
                if pid == 0:
                    if os.fork() == 0:
                        os._exit(0)
                    os._exit(0)
                os.waitpid(pid, 0)
                made += 1
            return made
        """,
        memory_mb=1769,
    )
    assert payload(result) == 150, result.payload


def test_it_keeps_the_exit_status_of_the_handlers_own_children(executor, tmp_path):
    source = """
        import subprocess, time
        KEPT = []
        def handler(event, context):
            if event.get("start"):
                KEPT.append(subprocess.Popen(["/bin/sh", "-c", "exit 7"]))
                time.sleep(0.3)
                return subprocess.run(["/bin/sh", "-c", "exit 5"]).returncode
            return KEPT[0].wait()
    """
    spec = make_spec(make_code(tmp_path, source))
    assert payload(executor.invoke(spec, make_request({"start": True}))) == 5
    assert payload(executor.invoke(spec, make_request())) == 7


def fake_cgroup2(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    return root


def test_it_writes_cgroup_v2_limits_and_freezes_through_cgroup_freeze(tmp_path):
    from functions_app.runtime.cgroups import EnvCgroup, Limits, detect_layout

    layout = detect_layout(str(fake_cgroup2(tmp_path / "cgroupfs")))
    assert layout is not None and layout.version == "v2"
    layout.prepare()
    cgroup = EnvCgroup(layout, "env-1-abc", Limits(memory_mb=128, pids_max=64, cpus=128 / 1769))
    group = tmp_path / "cgroupfs" / "ephemera" / "env-1-abc"
    assert (group / "memory.max").read_text() == str(128 << 20)
    assert (group / "pids.max").read_text() == "64"
    quota, period = (group / "cpu.max").read_text().split()
    assert int(period) == 100_000 and int(quota) == round(100_000 * 128 / 1769)
    cgroup.freeze()
    assert (group / "cgroup.freeze").read_text() == "1"
    cgroup.thaw()
    assert (group / "cgroup.freeze").read_text() == "0"
    (group / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\n")
    assert cgroup.cpu_usage_ns() == 1_500_000


def test_it_freezes_real_processes_in_a_cgroup_v2(tmp_path):
    from functions_app.runtime.cgroups import EnvCgroup, Layout, Limits

    unified = "/sys/fs/cgroup/unified"
    if not os.access(f"{unified}/cgroup.procs", os.W_OK):
        pytest.skip("no writable cgroup2 hierarchy")
    parent = f"{unified}/ephemera-test-{os.getpid()}"
    os.makedirs(parent, exist_ok=True)
    layout = Layout(version="v2", parents={"freezer": parent, "cpuacct": parent})
    cgroup = EnvCgroup(layout, "env-0-freeze", Limits(memory_mb=0, pids_max=0, cpus=None))
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        Path(cgroup.procs_files[0]).write_text(str(spinner.pid))
        cgroup.freeze()
        assert wait_for(lambda: "frozen 1" in Path(parent, "env-0-freeze", "cgroup.events").read_text())
        used = psutil.Process(spinner.pid).cpu_times().user
        time.sleep(0.5)
        assert psutil.Process(spinner.pid).cpu_times().user - used < 0.05
        cgroup.thaw()
        time.sleep(0.5)
        assert psutil.Process(spinner.pid).cpu_times().user - used > 0.05
        assert cgroup.cpu_usage_ns() > 0
    finally:
        spinner.kill()
        spinner.wait()
        assert cgroup.remove()
        os.rmdir(parent)


# ---------------------------------------------------------------- ephemeral storage (item 13)

WRITER = """
    import errno
    def handler(event, context):
        chunk = b"x" * (1 << 20)
        written = 0
        try:
            with open("/tmp/big", "wb") as f:
                for _ in range(event["mb"]):
                    f.write(chunk)
                    written += 1
                f.flush()
        except OSError as exc:
            return {"written": written, "errno": exc.errno}
        return {"written": written, "errno": None}
"""


def test_it_writes_200_mb_to_tmp_in_a_128_mb_function(run):
    result = run(WRITER, {"mb": 200}, memory_mb=128, timeout_s=30)
    assert result.status == "succeeded", result.payload
    assert payload(result) == {"written": 200, "errno": None}


def test_it_fails_a_write_past_tmp_mb_with_enospc_not_out_of_memory(run):
    result = run(WRITER, {"mb": 400}, memory_mb=128, tmp_mb=256, timeout_s=30)
    assert result.status == "succeeded", result.payload
    body = payload(result)
    assert body["errno"] in (28, 122)  # ENOSPC, EDQUOT
    assert 200 <= body["written"] <= 256


def test_it_keeps_one_environments_tmp_invisible_to_another(executor, tmp_path):
    source = """
        import os
        def handler(event, context):
            if event.get("write"):
                open("/tmp/mine", "w").write("secret")
            return sorted(os.listdir("/tmp"))
    """
    code = make_code(tmp_path, source)
    assert payload(executor.invoke(make_spec(code, environment_key="a"), make_request({"write": True}))) == ["mine"]
    assert payload(executor.invoke(make_spec(code, environment_key="b"), make_request())) == []


def test_it_falls_back_loudly_to_a_tmpfs_with_the_memory_limit_raised_by_its_size(tmp_path):
    config = make_config(tmp_path / "w", ephemeral_storage="tmpfs")
    ex = Executor(config)
    try:
        health = ex.health()
        assert health["ephemeral_storage"] == "tmpfs"
        assert any("tmpfs charged to memory" in reason for reason in health["reasons"])
        spec = make_spec(make_code(tmp_path, WRITER), memory_mb=128, tmp_mb=256, timeout_s=30)
        assert payload(ex.invoke(spec, make_request({"mb": 200}))) == {"written": 200, "errno": None}
        assert ex.health()["memory_reserved_mb"] == 128 + 256
    finally:
        ex.shutdown()


def scratch_leftovers(work_dir: Path) -> list[str]:
    """Image files under the work dir and loop devices backed by anything in it."""
    found = [str(p) for p in work_dir.rglob("*.img") if "templates" not in p.parts]
    for backing in glob.glob("/sys/block/loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            if str(work_dir) in Path(backing).read_text():
                found.append(backing)
    return found


def test_it_leaves_nothing_of_tmp_on_disk_after_destroy_and_shutdown(tmp_path):
    work = tmp_path / "w"
    ex = Executor(make_config(work, idle_ttl_s=0))
    try:
        assert payload(ex.invoke(make_spec(make_code(tmp_path, WRITER)), make_request({"mb": 20})))["written"] == 20
        ex.reap_idle()
        assert wait_for(lambda: not sandbox_processes())
        assert wait_for(lambda: not scratch_leftovers(work)), scratch_leftovers(work)
    finally:
        ex.shutdown()
    assert not scratch_leftovers(work)
    assert not list(work.rglob("*.img"))


# ---------------------------------------------------------------- the function's code wins (item 14)


@pytest.mark.parametrize("module", ["protocol", "bootstrap", "sandbox", "zygote"])
def test_it_imports_a_handler_module_named_like_a_runtime_module(executor, tmp_path, module):
    code = make_code(tmp_path, "def handler(event, context):\n    return __name__\n", module=module)
    result = executor.invoke(make_spec(code, handler=f"{module}.handler"), make_request())
    assert payload(result) == module


@pytest.fixture
def layer_executor(tmp_path, boto3_layer):
    config = make_config(tmp_path / "lw", layer_dirs=(boto3_layer,), preload=("json", "boto3"))
    ex = Executor(config)
    yield ex
    ex.shutdown()


def test_it_imports_a_boto3_bundled_with_the_function_instead_of_the_layers(layer_executor, tmp_path):
    code = Path(
        make_code(tmp_path, "import boto3\ndef handler(event, context):\n    return [boto3.MARKER, boto3.__file__]\n")
    )
    (code / "boto3").mkdir()
    (code / "boto3" / "__init__.py").write_text("MARKER = 'bundled'\n")
    result = layer_executor.invoke(make_spec(str(code), memory_mb=256), make_request())
    assert payload(result) == ["bundled", "/var/task/boto3/__init__.py"], result.payload


def test_it_shows_no_host_path_inside_the_sandbox(layer_executor, tmp_path, boto3_layer):
    source = """
        import os, sys
        import boto3
        def read(path):
            try:
                return open(path, "rb").read().decode(errors="replace")
            except OSError as exc:
                return str(exc)
        def handler(event, context):
            return {
                "files": sorted({getattr(m, "__file__", None) or "" for m in list(sys.modules.values())} - {""}),
                "path": sys.path,
                "proc": [read(f"/proc/{pid}/{name}") for pid in ("self", "1") for name in ("cmdline", "environ")],
                "argv": sys.argv,
                "boto3": boto3.__file__,
            }
    """
    body = payload(layer_executor.invoke(make_spec(make_code(tmp_path, source), memory_mb=256), make_request()))
    assert body["boto3"] == "/opt/python/boto3/__init__.py"
    allowed = ("/var/task/", "/var/runtime/", "/opt/python/", "/usr/lib/python3")
    assert [f for f in body["files"] if not f.startswith(allowed)] == []
    host_markers = [REPO, str(tmp_path), boto3_layer, "/var/lib", "var/layers", "var/test"]
    text = json.dumps(body)
    assert [m for m in host_markers if m in text] == []


# ---------------------------------------------------------------- response size (item 4)


def test_it_refuses_a_result_larger_than_the_response_limit(executor, tmp_path):
    spec = make_spec(make_code(tmp_path, "def handler(event, context):\n    return 'x' * event['n']\n"))
    result = executor.invoke(spec, make_request({"n": 7 << 20}))
    assert result.status == "failed"
    assert result.error_type == "Function.ResponseSizeTooLarge"
    assert payload(result) == {
        "errorMessage": (
            f"Response payload size ({(7 << 20) + 2} bytes) exceeded maximum allowed payload size (6291456 bytes)."
        ),
        "errorType": "Function.ResponseSizeTooLarge",
        "stackTrace": [],
    }
    small = executor.invoke(spec, make_request({"n": 2000}, response_max_bytes=1000))
    assert small.error_type == "Function.ResponseSizeTooLarge" and not small.is_cold
    assert "(2002 bytes)" in payload(small)["errorMessage"]
    assert executor.invoke(spec, make_request({"n": 10})).status == "succeeded"


RAW_FRAME_HANDLER = """
    import fcntl, json, os, struct
    def _response_pipe():
        for fd in range(3, 256):
            try:
                if os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:"):
                    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY:
                        return fd
            except OSError:
                pass
    def handler(event, context):
        fd = _response_pipe()
        header = json.dumps({"type": "result", "ok": True, "error_type": None, "duration_ms": 1,
                             "cpu_ms": 1, "maxrss_kb": 1}).encode()
        os.write(fd, struct.pack(">I", len(header)) + header + struct.pack(">I", 40 << 20))
        chunk = b"x" * (1 << 20)
        for _ in range(40):
            os.write(fd, chunk)
        return "unreachable"
"""


def test_it_cuts_off_an_oversized_raw_frame_without_buffering_it(tmp_path):
    code = make_code(tmp_path, RAW_FRAME_HANDLER)
    script = worker_script(
        tmp_path / "w",
        """
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result = ex.invoke(spec, InvokeRequest("r", b"{}", "arn"))
        grew_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        again = ex.invoke(spec, InvokeRequest("r2", b"{}", "arn"))
        ex.shutdown()
        print(json.dumps({"status": result.status, "error_type": result.error_type, "grew_kb": grew_kb,
                          "payload": result.payload.decode(), "next_is_cold": again.is_cold}))
        """,
        code,
        memory_mb=1024,
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert (report["status"], report["error_type"]) == ("failed", "Function.ResponseSizeTooLarge")
    assert json.loads(report["payload"])["errorType"] == "Function.ResponseSizeTooLarge"
    print(f"worker peak RSS grew by {report['grew_kb']} KB")
    assert report["grew_kb"] < 16 * 1024, report  # the 40 MB body was never held
    assert report["next_is_cold"]  # the environment that wrote raw frames was discarded


# ---------------------------------------------------------------- logs and exit statuses (item 17)


def test_it_keeps_the_head_and_the_tail_of_a_flooded_log(run):
    result = run("""
        import sys
        def handler(event, context):
            print("FIRST LINE")
            for _ in range(300):
                sys.stdout.write("x" * 10000 + "\\n")
            print("LAST LINE")
            return "done"
    """)
    assert result.status == "succeeded"
    assert result.log.startswith("FIRST LINE\n")
    assert result.log.endswith("LAST LINE\n")
    assert "truncated" in result.log
    assert len(result.log) < 70 * 1024


def test_it_keeps_a_log_buffers_memory_bounded_whatever_the_flood():
    from functions_app.runtime.environment import LogBuffer

    log = LogBuffer(64 * 1024)
    chunks = [b"head\n", *(b"%06d" % i + b"y" * 50_000 for i in range(2000)), b"\ntail\n"]
    for chunk in chunks:
        log.feed(chunk)
        assert log.kept_bytes() <= 64 * 1024
    text = log.text()
    assert text.startswith("head\n") and text.endswith("\ntail\n")
    assert f"[log truncated: {sum(map(len, chunks)) - 64 * 1024} bytes omitted]" in text


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("import sys\n    sys.exit(3)", "Runtime exited with error: exit status 3"),
        ("import os\n    os._exit(3)", "Runtime exited with error: exit status 3"),
        ("import os, signal\n    os.kill(os.getpid(), signal.SIGKILL)", "Runtime exited with error: signal: killed"),
        ("import ctypes\n    ctypes.string_at(0)", "Runtime exited with error: signal: segmentation fault"),
    ],
)
def test_it_keeps_the_exit_status_of_a_handler_that_exits(run, body, message):
    result = run(f"def handler(event, context):\n    {body}\n    return 'survived'\n")
    assert (result.status, result.error_type) == ("crashed", "Runtime.ExitError"), result.payload
    assert payload(result)["errorMessage"] == message


@pytest.mark.parametrize("exit_call", ["import sys; sys.exit(3)", "import os; os._exit(3)"])
def test_it_keeps_the_exit_status_of_a_module_that_exits_during_init(run, exit_call):
    result = run(f"{exit_call}\ndef handler(event, context):\n    return 1\n")
    assert (result.status, result.error_type) == ("crashed", "Runtime.ExitError")
    assert payload(result)["errorMessage"] == "Runtime exited with error: exit status 3"


# ---------------------------------------------------------------- retiring environments (item 7)

DAEMON = """
    import os, time
    def handler(event, context):
        if event.get("daemon") and os.fork() == 0:
            os.setsid()
            time.sleep(600)
        time.sleep(event.get("sleep", 0))
        return os.getpid()
"""


def test_it_retires_idle_environments_at_once(executor, tmp_path):
    code = make_code(tmp_path, DAEMON)
    executor.invoke(make_spec(code, environment_key="f1:latest:1"), make_request({"daemon": True}))
    executor.invoke(make_spec(code, environment_key="f2:latest:1"), make_request())
    assert executor.environment_keys() == {"f1:latest:1", "f2:latest:1"}
    assert executor.retire(lambda key: key.startswith("f1:"), kill_busy=False) == 1
    assert executor.environment_keys() == {"f2:latest:1"}
    # f1's reaper, handler and daemon are gone; f2's reaper and handler stay.
    assert wait_for(lambda: len(running_sandbox_processes()) == 2)
    assert executor.invoke(make_spec(code, environment_key="f1:latest:1"), make_request()).is_cold


def test_it_retires_a_busy_environment_after_its_call_or_kills_it(executor, tmp_path):
    code = make_code(tmp_path, DAEMON)
    gentle, rough = make_spec(code, environment_key="f1:a"), make_spec(code, environment_key="f2:b")
    results = {}
    threads = [
        threading.Thread(target=lambda: results.update(gentle=executor.invoke(gentle, make_request({"sleep": 1})))),
        threading.Thread(target=lambda: results.update(rough=executor.invoke(rough, make_request({"sleep": 30})))),
    ]
    for thread in threads:
        thread.start()
    assert wait_for(lambda: executor.health()["busy_environments"] == 2, timeout_s=5)
    assert executor.retire(lambda key: key == "f1:a", kill_busy=False) == 1
    t0 = time.monotonic()
    assert executor.retire(lambda key: key == "f2:b", kill_busy=True) == 1
    for thread in threads:
        thread.join(timeout=10)
    assert time.monotonic() - t0 < 5
    assert results["gentle"].status == "succeeded"
    assert results["rough"].status == "crashed"
    assert executor.environment_keys() == set()
    assert executor.invoke(gentle, make_request()).is_cold


# ---------------------------------------------------------------- evictions and capacity (items 8, 9)


def test_it_evicts_without_waiting_for_a_slow_teardown(small_budget, tmp_path, monkeypatch):
    from functions_app.runtime import cgroups

    original = cgroups.EnvCgroup.remove
    slow_once = threading.Event()

    def slow_remove(self, timeout_s: float = 2.0) -> bool:
        if not slow_once.is_set():
            slow_once.set()
            time.sleep(2.0)
        return original(self, timeout_s)

    code = make_code(tmp_path, COUNTER)
    small_budget.invoke(make_spec(code, environment_key="a"), make_request())
    small_budget.invoke(make_spec(code, environment_key="b"), make_request())
    monkeypatch.setattr(cgroups.EnvCgroup, "remove", slow_remove)
    t0 = time.monotonic()
    result = small_budget.invoke(make_spec(code, environment_key="c"), make_request())  # evicts "a"
    assert result.status == "succeeded"
    assert time.monotonic() - t0 < 1.0
    assert slow_once.wait(timeout=5)
    assert small_budget.health()["memory_reserved_mb"] == 256


def cgroup_dirs() -> set[str]:
    return set(glob.glob(f"/sys/fs/cgroup/*/ephemera/env-{os.getpid()}-*"))


def test_it_raises_capacity_error_without_leaking_budget_or_a_half_created_environment(small_budget, tmp_path):
    ex = small_budget
    code = make_code(tmp_path, DAEMON)
    dead = ex.invoke(make_spec(code, environment_key="k"), make_request())
    busy = threading.Thread(target=ex.invoke, args=(make_spec(code, environment_key="x"), make_request({"sleep": 2})))
    busy.start()
    assert wait_for(lambda: ex.health()["busy_environments"] == 1)
    victim = psutil.Process(dead_pid(ex, dead.environment_id))
    victim.terminate()  # what its reaper gets when its keeper dies: an idle environment gone on its own
    victim.wait(timeout=5)
    dead_cgroups = {d for d in cgroup_dirs() if d.endswith(dead.environment_id)}
    assert dead_cgroups
    others = cgroup_dirs() - dead_cgroups
    with pytest.raises(CapacityError):
        ex.invoke(make_spec(code, environment_key="k", memory_mb=256), make_request())
    health = ex.health()
    assert health["memory_reserved_mb"] == 128  # the busy environment's, nothing reserved for the refused call
    assert health["warm_environments"] == 1
    assert wait_for(lambda: cgroup_dirs() == others)  # the dead one was torn down, not just forgotten
    assert not scratch_leftovers(tmp_path / "w")
    busy.join(timeout=10)
    assert ex.invoke(make_spec(code, environment_key="k", memory_mb=256), make_request()).status == "succeeded"
    ex.shutdown()
    assert not cgroup_dirs()


def dead_pid(ex: Executor, environment_id: str) -> int:
    return next(e.pid for group in ex._envs.values() for e in group if e.id == environment_id and e.pid)


# ---------------------------------------------------------------- Ctrl-C (item 23)


def test_it_stops_quietly_when_the_process_group_gets_sigint(tmp_path):
    code = make_code(tmp_path, COUNTER)
    script = worker_script(
        tmp_path / "w",
        """
        ex.invoke(spec, InvokeRequest("r", b"{}", "a"))
        print("ready", flush=True)
        try:
            time.sleep(60)
        except KeyboardInterrupt:
            ex.shutdown()
        """,
        code,
    )
    worker = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert worker.stdout.readline().strip() == "ready"
        time.sleep(0.3)  # the zygote has forked its next spare
        os.killpg(worker.pid, signal.SIGINT)
        _, stderr = worker.communicate(timeout=20)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
    assert worker.returncode == 0
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert wait_for(lambda: not sandbox_processes())


# ---------------------------------------------------------------- network namespaces and egress (issue #10)

# Addresses that a test-made namespace answers on, each routed there through a veth of the test's own: nothing a
# sandbox sends in these tests leaves this machine. 203.0.113.10 stands for the public Internet.
PUBLIC = "203.0.113.10"
ALLOWLISTED = "10.77.0.20"
FORBIDDEN = {
    "private 10/8": "10.77.0.10",
    "private 172.16/12": "172.16.0.10",
    "private 192.168/16": "192.168.0.10",
    "shared 100.64/10": "100.64.0.10",
    "metadata": "169.254.169.254",
}
OUTSIDE_SERVER = """
import socket, sys, threading
def serve(port):
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(64)
    while True:
        conn, peer = listener.accept()
        conn.sendall(f"{conn.getsockname()[0]}:{port} saw {peer[0]}".encode())
        conn.close()
for port in (80, 8080, 8081):
    threading.Thread(target=serve, args=(port,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""


def ip(*arguments: str, netns_of: int | None = None) -> None:
    """``ip`` in the host's network namespace, or in the one process ``netns_of`` is in."""
    inside = ["nsenter", "-t", str(netns_of), "-n"] if netns_of else []
    subprocess.run([*inside, "ip", *arguments], check=True, capture_output=True)


@pytest.fixture
def outside():
    """A server in a network namespace of the test's own, reachable from the host through a veth, at PUBLIC,
    ALLOWLISTED and every FORBIDDEN address (ports 80, 8080, 8081). Gone, routes and all, when its process dies."""
    from console.processes import die_with_parent

    server = subprocess.Popen(
        ["unshare", "--net", "--", "/usr/bin/python3", "-I", "-S", "-c", OUTSIDE_SERVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=die_with_parent,
    )
    link = f"ephtst{os.getpid() % 100000}"
    addresses = [PUBLIC, ALLOWLISTED, *FORBIDDEN.values()]
    try:
        assert server.stdout.readline().strip() == "ready"
        ip("link", "add", link, "type", "veth", "peer", "name", "up0", "netns", str(server.pid))
        ip("addr", "add", "198.51.100.1/32", "dev", link)
        ip("link", "set", link, "up")
        # Replies come back in through this link: forwarding on it alone, never on the host's real interfaces.
        Path(f"/proc/sys/net/ipv4/conf/{link}/forwarding").write_text("1")
        for address in addresses:
            ip("route", "add", f"{address}/32", "dev", link)
            ip("addr", "add", f"{address}/32", "dev", "up0", netns_of=server.pid)
        for device in ("lo", "up0"):
            ip("link", "set", device, "up", netns_of=server.pid)
        ip("route", "add", "198.51.100.1/32", "dev", "up0", netns_of=server.pid)
        ip("route", "add", "default", "via", "198.51.100.1", netns_of=server.pid)
        yield {"pid": server.pid, "link": link}
    finally:
        server.kill()
        server.wait()
        subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)


@pytest.fixture
def online(tmp_path):
    """An executor whose operator allowlists ALLOWLISTED:8080, with no DNS resolver (tests use addresses)."""
    config = make_config(tmp_path / "net", preload=("json",), egress_allow=(f"{ALLOWLISTED}:8080",), resolvers=())
    ex = Executor(config)
    yield ex
    ex.shutdown()
    assert wait_for(lambda: not sandbox_processes())


CONNECTOR = """
    import errno, socket
    def attempt(host, port):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.settimeout(2)
                s.connect((host, port))
                return "reached: " + s.recv(200).decode(errors="replace")
        except socket.timeout:
            return "timeout"
        except OSError as exc:
            return errno.errorcode.get(exc.errno, str(exc))
    def handler(event, context):
        return {f"{host}:{port}": attempt(host, port) for host, port in event["targets"]}
"""
REFUSED = {"ECONNREFUSED", "EHOSTUNREACH", "ENETUNREACH", "EACCES", "EPERM"}


def host_listening_ports() -> set[int]:
    """Every TCP port the host listens on, on any address (/proc/net/tcp and tcp6 of the host's namespace)."""
    ports = set()
    for name in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def host_addresses() -> list[str]:
    return [a.address for addrs in psutil.net_if_addrs().values() for a in addrs if a.family == socket.AF_INET]


def test_a_network_enabled_function_reaches_no_port_the_host_listens_on(online, outside, tmp_path):
    ports = sorted(host_listening_ports())
    assert 5432 in ports and 6379 in ports  # the host's PostgreSQL and Redis, as the issue found them
    addresses = sorted({"127.0.0.1", *host_addresses()})
    targets = [[address, port] for address in addresses for port in ports]
    targets += [["::1", port] for port in ports]
    spec = make_spec(make_code(tmp_path, CONNECTOR), network=True, timeout_s=60)
    result = online.invoke(spec, make_request({"targets": targets}))
    outcomes = payload(result)
    assert len(outcomes) == len(targets), result.payload
    assert {target: outcome for target, outcome in outcomes.items() if outcome not in REFUSED} == {}


def test_a_network_enabled_function_reaches_public_addresses_only_through_the_workers_address(
    online, outside, tmp_path
):
    targets = [[PUBLIC, 8080], [ALLOWLISTED, 8080], [ALLOWLISTED, 8081]]
    targets += [[address, port] for address in FORBIDDEN.values() for port in (80, 8080)]
    spec = make_spec(make_code(tmp_path, CONNECTOR), network=True, timeout_s=60)
    outcomes = payload(online.invoke(spec, make_request({"targets": targets})))
    # The outside sees the worker's masqueraded address, never the sandbox's own.
    assert outcomes.pop(f"{PUBLIC}:8080") == f"reached: {PUBLIC}:8080 saw 198.51.100.1"
    assert outcomes.pop(f"{ALLOWLISTED}:8080") == f"reached: {ALLOWLISTED}:8080 saw 198.51.100.1"
    assert {target: outcome for target, outcome in outcomes.items() if outcome not in REFUSED} == {}
    assert set(outcomes) == {f"{ALLOWLISTED}:8081", *(f"{a}:{p}" for a in FORBIDDEN.values() for p in (80, 8080))}


NOSY = """
    import os, socket
    def family(name, *args):
        try:
            socket.socket(*args).close()
            return "created"
        except OSError as exc:
            return exc.errno
    def handler(event, context):
        abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            abstract.connect(event["abstract"])
            reached = "connected"
        except OSError as exc:
            reached = exc.errno
        return {
            "abstract": reached,
            "unix_paths": {path: os.path.exists(path) for path in event["unix_paths"]},
            "interfaces": sorted(name for _, name in socket.if_nameindex()),
            "addresses": open("/proc/net/fib_trie").read() + open("/proc/net/arp").read(),
            "vsock": family("vsock", 40, socket.SOCK_STREAM),
            "packet": family("packet", 17, socket.SOCK_RAW),
            "netlink_sock_diag": family("diag", socket.AF_NETLINK, socket.SOCK_RAW, 4),
            "netlink_route": family("route", socket.AF_NETLINK, socket.SOCK_RAW, 0),
        }
"""


@pytest.mark.parametrize("network", [True, False], ids=["online", "offline"])
def test_a_function_sees_no_host_socket_interface_or_address_and_gets_no_exotic_socket(online, tmp_path, network):
    from django.conf import settings

    name = f"\0ephemera-test-{os.getpid()}"
    host_abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    host_abstract.bind(name)
    host_abstract.listen()
    unix_paths = [str(settings.REDIS_SOCKET), "/var/run/postgresql/.s.PGSQL.5432", "/run/redis/redis.sock"]
    try:
        event = {"abstract": name, "unix_paths": unix_paths}
        spec = make_spec(make_code(tmp_path, NOSY), network=network)
        body = payload(online.invoke(spec, make_request(event)))
    finally:
        host_abstract.close()
    assert body["abstract"] == 111  # ECONNREFUSED: abstract sockets belong to a network namespace, ours is empty
    assert body["unix_paths"] == dict.fromkeys(unix_paths, False)
    assert body["interfaces"] == (["eth0", "lo"] if network else ["lo"])
    host_addresses_seen = [a for a in host_addresses() if a != "127.0.0.1" and a in body["addresses"]]
    assert host_addresses_seen == []
    assert body["vsock"] == body["packet"] == body["netlink_sock_diag"] == 97  # EAFNOSUPPORT
    assert body["netlink_route"] == "created"  # getaddrinfo and if_nameindex need it; it sees only its own


LISTENER = """
    import socket
    KEPT = []
    def handler(event, context):
        listener = socket.socket()
        listener.bind(("0.0.0.0", event["port"]))
        listener.listen()
        KEPT.append(listener)
        return open("/proc/net/fib_trie").read()
"""


def test_a_network_enabled_function_that_listens_is_reachable_from_nowhere(online, outside, tmp_path):
    port = 18000 + os.getpid() % 1000
    spec = make_spec(make_code(tmp_path, LISTENER), network=True)
    result = online.invoke(spec, make_request({"port": port}))
    assert result.status == "succeeded", result.payload
    sandbox_address = re.findall(r"10\.213\.\d+\.\d+", payload(result))[0]
    # The port is the sandbox's own, not the host's...
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    # ...and nothing reaches it, from the worker's host or from outside.
    with pytest.raises(OSError), socket.create_connection((sandbox_address, port), timeout=2):
        pass
    probe = f"import socket; socket.create_connection(({sandbox_address!r}, {port}), timeout=2)"
    inside = subprocess.run(
        ["nsenter", "-t", str(outside["pid"]), "-n", "/usr/bin/python3", "-c", probe], capture_output=True, text=True
    )
    assert inside.returncode != 0 and "Error" in inside.stderr


def test_an_operator_can_keep_every_function_offline(tmp_path):
    config = make_config(tmp_path / "w", network_allowed=False)
    ex = Executor(config)
    try:
        assert ex.health()["network"]["allowed"] is False
        body = payload(
            ex.invoke(
                make_spec(make_code(tmp_path, NOSY), network=True),
                make_request({"abstract": "\0nothing", "unix_paths": []}),
            )
        )
        assert body["interfaces"] == ["lo"]
    finally:
        ex.shutdown()


def test_it_removes_its_egress_table_at_shutdown_and_a_dead_workers_at_start(tmp_path):
    def tables() -> str:
        return subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout

    config = make_config(tmp_path / "w")
    ex = Executor(config)
    table = ex.health()["network"]["egress_policy"]
    assert table in tables()
    ex.shutdown()
    assert table not in tables()
    gone = subprocess.Popen(["true"])
    gone.wait()
    leftover = f"ephemera_{gone.pid}_abcdef"  # as a worker that died without shutting down leaves it
    subprocess.run(["nft", "add", "table", "inet", leftover], check=True)
    Executor(config).shutdown()
    assert leftover not in tables()


# ---------------------------------------------------------------- a smaller attack surface (issue #10 item 4)

WORKLOAD = """
    import asyncio, concurrent.futures, ctypes, ctypes.util, decimal, hashlib, locale, multiprocessing, os, sqlite3
    import ssl, subprocess, sys, uuid, zlib, zoneinfo
    sys.path.insert(0, "/var/task/pure.zip")
    import boto3, psycopg, sqlparse, yaml
    from cryptography.fernet import Fernet
    from markupsafe import _speedups

    def square(x):
        return x * x

    async def gathered():
        return sum(await asyncio.gather(*(asyncio.sleep(0.01, result=i) for i in range(5))))

    def handler(event, context):
        db = sqlite3.connect("/tmp/db.sqlite3")
        db.execute("create table if not exists t(x)")
        db.execute("insert into t values (1)")
        db.commit()
        key = Fernet.generate_key()
        tls = ssl.create_default_context()
        shipped = subprocess.run(["/var/task/bin/b64"], input=b"hi", capture_output=True)
        with concurrent.futures.ThreadPoolExecutor(4) as threads, multiprocessing.get_context("fork").Pool(2) as pool:
            return {
                "decimal": [str(decimal.Decimal(1) / decimal.Decimal(7)), "_decimal" in sys.modules],
                "zlib": zlib.decompress(zlib.compress(b"x" * 1000)) == b"x" * 1000,
                "sqlite": db.execute("select count(*) from t").fetchone()[0],
                "tls": [tls.verify_mode == ssl.CERT_REQUIRED, tls.cert_store_stats()["x509_ca"] > 50],
                "hashlib": hashlib.scrypt(b"pw", salt=b"salt", n=16, r=8, p=1).hex()[:8],
                "ctypes": ctypes.CDLL(ctypes.util.find_library("c")).getpid() == os.getpid(),
                "threads": list(threads.map(square, range(6))),
                "processes": pool.map(square, range(6)),
                "shipped_binary": shipped.stdout.decode(),
                "shell": subprocess.run("echo hi | cat", shell=True, capture_output=True, text=True).stdout,
                "asyncio": asyncio.run(gathered()),
                "boto3": boto3.client("s3", region_name="us-east-1").meta.service_model.service_name,
                "zip_import": sqlparse.format("select x from t", keyword_case="upper"),
                "yaml_c": yaml.dump({"a": 1}, Dumper=yaml.CDumper),
                "markupsafe_c": _speedups._escape_inner("<b>"),
                "rust_and_cffi": Fernet(key).decrypt(Fernet(key).encrypt(b"secret")).decode(),
                "database_driver": [psycopg.pq.__impl__, psycopg.pq.version() > 100000],
                "uuid": len(str(uuid.uuid4())),
                "zoneinfo": str(zoneinfo.ZoneInfo("Europe/Paris")),
                "locale": locale.setlocale(locale.LC_ALL, "C.UTF-8"),
                "cpus": os.cpu_count() >= 1,
            }
"""


def workload_code(root: Path) -> str:
    """WORKLOAD with the worker's own copies of common libraries: pure Python in a zip, C, Rust and cffi
    extensions (a database driver with its bundled libpq among them), and a binary of its own."""
    import zipfile

    site = Path(psutil.__file__).parents[1]
    code = Path(make_code(root, WORKLOAD))
    for name in ("markupsafe", "yaml", "_yaml", "cryptography", "cffi", "pycparser", "psycopg", "psycopg_binary"):
        shutil.copytree(site / name, code / name, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    shutil.copytree(site / "psycopg_binary.libs", code / "psycopg_binary.libs", dirs_exist_ok=True)
    for single in (*site.glob("_cffi_backend*.so"), site / "typing_extensions.py"):
        shutil.copy2(single, code / single.name)
    with zipfile.ZipFile(code / "pure.zip", "w") as pure:
        for path in (site / "sqlparse").rglob("*.py"):
            pure.write(path, path.relative_to(site))
    (code / "bin").mkdir()
    shutil.copy2("/usr/bin/base64", code / "bin" / "b64")
    for path in [code, *code.rglob("*")]:
        path.chmod(0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644)
    return str(code)


def test_a_realistic_workload_runs_under_the_seccomp_allowlist(layer_executor, tmp_path):
    spec = make_spec(workload_code(tmp_path), memory_mb=512, timeout_s=60)
    result = layer_executor.invoke(spec, make_request())
    assert result.status == "succeeded", result.payload.decode() + result.log
    assert payload(result) == {
        "decimal": ["0.1428571428571428571428571429", True],
        "zlib": True,
        "sqlite": 1,
        "tls": [True, True],
        "hashlib": hashlib_scrypt_prefix(),
        "ctypes": True,
        "threads": [0, 1, 4, 9, 16, 25],
        "processes": [0, 1, 4, 9, 16, 25],
        "shipped_binary": "aGk=\n",
        "shell": "hi\n",
        "asyncio": 10,
        "boto3": "s3",
        "zip_import": "SELECT x FROM t",
        "yaml_c": "a: 1\n",
        "markupsafe_c": "&lt;b&gt;",
        "rust_and_cffi": "secret",
        "database_driver": ["binary", True],
        "uuid": 36,
        "zoneinfo": "Europe/Paris",
        "locale": "C.UTF-8",
        "cpus": True,
    }


def hashlib_scrypt_prefix() -> str:
    import hashlib

    return hashlib.scrypt(b"pw", salt=b"salt", n=16, r=8, p=1).hex()[:8]


def test_syscalls_outside_the_allowlist_fail_even_those_the_old_denylist_let_through(run):
    result = run("""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        def errno_of(*call):
            ctypes.set_errno(0)
            return ctypes.get_errno() if libc.syscall(*call) == -1 else 0
        def handler(event, context):
            pid = os.getpid()
            return {
                "kcmp": errno_of(312, pid, pid, 0, 0, 0),
                "personality": errno_of(135, 0xFFFFFFFF),
                "get_mempolicy": errno_of(239, 0, 0, 0, 0, 0),
                "process_vm_readv": errno_of(310, pid, 0, 0, 0, 0, 0),
                "remap_file_pages": errno_of(216, 0, 0, 0, 0, 0),
                "a_future_syscall": errno_of(470),
            }
    """)
    assert payload(result) == {
        "kcmp": 1,  # EPERM: named and refused
        "personality": 1,
        "get_mempolicy": 1,
        "process_vm_readv": 1,
        "remap_file_pages": 38,  # ENOSYS: simply not on the list
        "a_future_syscall": 38,
    }


def test_the_handler_can_never_regain_a_capability(run):
    result = run("""
        def handler(event, context):
            status = dict(l.split(":\\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\\t" in l)
            return [status[name].strip() for name in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")]
    """)
    assert payload(result) == ["0000000000000000"] * 5


def test_each_tenant_runs_as_a_host_uid_of_its_own(executor, tmp_path):
    source = "import os\ndef handler(e, c):\n    return [os.getuid(), os.getgid(), os.stat('/tmp').st_uid]\n"
    code = make_code(tmp_path, source)
    uids = {}
    for key, tenant in (("a", "7"), ("b", "8"), ("c", "7")):
        result = executor.invoke(make_spec(code, environment_key=key, tenant=tenant), make_request())
        uids[key] = payload(result)
    assert uids["a"] == [SANDBOX_UID + 7] * 3  # its /tmp is its own too
    assert uids["b"] == [SANDBOX_UID + 8] * 3
    assert uids["c"] == uids["a"]  # the same tenant, the same uid, on every host
    assert executor.health()["sandbox_uids"] == f"{SANDBOX_UID}-{SANDBOX_UID + SANDBOX_UID_COUNT - 1}"


def test_the_runtime_root_holds_the_interpreter_and_no_other_host_program(run):
    result = run("""
        import os
        def handler(event, context):
            mounts = open("/proc/self/mountinfo").read()
            return {
                "usr": sorted(os.listdir("/usr")),
                "lib": sorted(os.listdir("/usr/lib")),
                "bin": sorted(os.listdir("/usr/bin")),
                "etc": sorted(os.listdir("/etc")),
                "runtime_mount": [line.split()[3] for line in mounts.splitlines() if line.split()[4] == "/var/runtime"],
            }
    """)
    body = payload(result)
    assert body["usr"] == ["bin", "lib", "lib64", "sbin", "share"]  # no /usr/local, /usr/include, /usr/libexec
    assert "gcc" not in body["lib"] and "python3" not in body["lib"]  # no compilers, no dist-packages
    assert {"python3", "sh"} <= set(body["bin"]) and not {"gcc", "cc", "as", "ld", "perl", "apt"} & set(body["bin"])
    assert len(body["bin"]) <= 20
    assert body["etc"] == ["group", "hosts", "ld.so.cache", "nsswitch.conf", "passwd", "resolv.conf", "ssl"]
    assert body["runtime_mount"] == ["/var/runtime"]  # copied into the zygote's root: no host path behind it


def seccomp_verdict(program: bytes, nr: int, args: tuple[int, ...] = (0, 0, 0), arch: int | None = None) -> int:
    """Run a classic BPF seccomp program (the instructions sandbox.py emits) on one syscall."""
    import struct

    from functions_app.runtime._ephemera_runtime import sandbox

    words = {0: nr, 4: arch if arch is not None else sandbox._AUDIT_ARCH[platform.machine()]}
    words.update({16 + 8 * i: value for i, value in enumerate(args)})
    insns = [struct.unpack_from("=HBBI", program, offset) for offset in range(0, len(program), 8)]
    pc = acc = 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == 0x06:
            return k
        if code == 0x20:
            acc, pc = words[k], pc + 1
            continue
        taken = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
        pc += 1 + (jt if taken else jf)


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_the_seccomp_allowlist_gives_every_syscall_its_listed_verdict(machine):
    from functions_app.runtime._ephemera_runtime import sandbox, syscalls

    allow, eperm, enosys, eafnosupport = 0x7FFF0000, 0x50001, 0x50026, 0x50061
    numbers = syscalls.NUMBERS[machine]
    audit = sandbox._AUDIT_ARCH[machine]
    offline, online = (sandbox.build_seccomp_filter(network, machine) for network in (False, True))

    def verdict(name_or_nr, *args, program=offline):
        nr = numbers[name_or_nr] if isinstance(name_or_nr, str) else name_or_nr
        return seccomp_verdict(program, nr, args, audit)

    special = {"clone", "ioctl", "socket", "socketpair"}
    assert {name: verdict(name) for name in sandbox.ALLOWED if name in numbers and name not in special} == {
        name: allow for name in sandbox.ALLOWED if name in numbers and name not in special
    }
    assert {verdict(name) for name in sandbox.DENIED if name in numbers} == {eperm}
    listed = set(numbers.values())
    assert {verdict(nr) for nr in range(600) if nr not in listed} == {enosys}  # clone3 among them
    assert verdict("clone", 0x11) == allow and verdict("clone", 0x10000000) == eperm  # a thread; CLONE_NEWUSER
    assert verdict("ioctl", 0, 0x5412) == eperm and verdict("ioctl", 0, 0x5401) == allow  # TIOCSTI; TCGETS
    assert verdict("socket", 1) == allow and verdict("socket", 16, 3, 0) == allow  # AF_UNIX, route netlink
    assert verdict("socket", 16, 3, 4) == eafnosupport  # netlink sock_diag
    for family in (17, 40):  # packet, vsock
        assert verdict("socket", family) == verdict("socket", family, program=online) == eafnosupport
    assert verdict("socket", 2) == eafnosupport and verdict("socket", 2, program=online) == allow
    assert verdict("socketpair", 2, program=online) == eafnosupport
    assert seccomp_verdict(offline, numbers["read"], (), 0x40000003) == 0x80000000  # another ABI: killed
    if machine == "x86_64":
        assert verdict(0x40000000 + numbers["read"]) == eperm  # x32


# ---------------------------------------------------------------- a worker without `privileged` (issue #10 item 5)


WORKER_OUTCOMES = [["succeeded", "97"], ["succeeded", '"online"'], [DOCTOR["checks"]["cgroup"], "cgroup", "ext4"]]


def compose_worker_capabilities() -> list[str]:
    import yaml

    worker = yaml.safe_load((Path(REPO) / "docker-compose.yml").read_text())["services"]["worker"]
    assert worker["cap_drop"] == ["ALL"] and "privileged" not in worker
    return worker["cap_add"]


def run_worker_with_capabilities(tmp_path: Path, capabilities: list[str]) -> subprocess.CompletedProcess:
    """A worker of its own (root, as in the container) whose capabilities are only ``capabilities``: it starts an
    executor, runs one offline and one network-enabled function, and shuts down."""
    source = """
        import socket
        def handler(event, context):
            try:
                socket.socket().close()
                return "online"
            except OSError as exc:
                return exc.errno
    """
    code = make_code(tmp_path, source)
    script = worker_script(
        tmp_path / f"w-{len(capabilities)}",
        """
        online = FunctionSpec("n", "fn", "1", spec.code_dir, "app.handler", 128, 30.0, {}, network=True, tenant="5")
        results = [ex.invoke(s, InvokeRequest("r", b"{}", "arn")) for s in (spec, online)]
        health = ex.health()
        ex.shutdown()
        shape = [health[name] for name in ("cgroup", "frozen_between_invocations", "ephemeral_storage")]
        print(json.dumps([*([r.status, r.payload.decode()] for r in results), shape]))
        """,
        code,
    )
    bounding = ",".join(["-all", *(f"+{cap.lower()}" for cap in capabilities)])
    return subprocess.run(
        ["setpriv", f"--bounding-set={bounding}", "--inh-caps=-all", "--", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_worker_with_only_the_compose_files_capabilities_runs_offline_and_online_sandboxes(tmp_path):
    done = run_worker_with_capabilities(tmp_path, compose_worker_capabilities())
    assert done.returncode == 0, done.stderr[-2000:]
    # Only the network-enabled one may open an AF_INET socket; cgroups and the ext4 /tmp are there, not fallbacks.
    assert json.loads(done.stdout.splitlines()[-1]) == WORKER_OUTCOMES
    assert wait_for(lambda: not sandbox_processes())


# MKNOD only matters where /dev lacks the loop device's node (a container's /dev); this host's has them all.
@pytest.mark.parametrize("missing", sorted(set(compose_worker_capabilities()) - {"MKNOD"}))
def test_the_worker_needs_every_capability_the_compose_file_grants(tmp_path, missing):
    done = run_worker_with_capabilities(tmp_path, [c for c in compose_worker_capabilities() if c != missing])
    outcomes = json.loads(done.stdout.splitlines()[-1]) if done.returncode == 0 and done.stdout else None
    assert outcomes != WORKER_OUTCOMES, f"{missing} is not needed"
    assert wait_for(lambda: not sandbox_processes(), timeout_s=10)


# ---- streamed responses ------------------------------------------------------------------------------------------

STREAMING = """
def handler(event, context):
    yield {"statusCode": 201, "headers": {"content-type": "text/plain"}}
    yield "one "
    yield b"two"
    if event.get("fail"):
        raise RuntimeError("broke after two")
    yield ""
    yield "three" * event.get("repeat", 1)
"""


def streamed_request(event: object, chunks: list[tuple[str, bytes]], **overrides: object) -> InvokeRequest:
    return make_request(event, on_chunk=lambda kind, body: chunks.append((kind, body)), **overrides)


def test_a_streamed_call_hands_on_the_prelude_and_each_item_in_order_and_its_result_is_null(run):
    chunks: list[tuple[str, bytes]] = []
    result = run(STREAMING, request=streamed_request({}, chunks))
    assert result.status == "succeeded" and payload(result) is None
    assert chunks[0][0] == "prelude" and json.loads(chunks[0][1])["statusCode"] == 201
    # Items ready together reach the caller together: their bytes, in order, the empty item nothing.
    assert {kind for kind, _ in chunks[1:]} == {"data"} and b"".join(body for _, body in chunks[1:]) == b"one twothree"


def test_a_handler_that_fails_mid_stream_has_sent_what_it_yielded_and_fails(run):
    chunks: list[tuple[str, bytes]] = []
    result = run(STREAMING, request=streamed_request({"fail": True}, chunks))
    assert (result.status, result.error_type) == ("failed", "RuntimeError")
    assert payload(result)["errorMessage"] == "broke after two"
    assert b"".join(body for kind, body in chunks if kind == "data") == b"one two"


def test_a_stream_past_its_limit_is_cut_off_as_too_large(run):
    chunks: list[tuple[str, bytes]] = []
    result = run(STREAMING, request=streamed_request({"repeat": 100}, chunks, stream_max_bytes=64))
    assert (result.status, result.error_type) == ("failed", "Function.ResponseSizeTooLarge")
    assert sum(len(body) for kind, body in chunks if kind == "data") <= 64


def test_a_returned_value_is_the_result_of_a_streamed_call_and_a_generator_fails_an_unstreamed_one(run):
    chunks: list[tuple[str, bytes]] = []
    plain = run("def handler(event, context):\n    return {'ok': 1}\n", request=streamed_request({}, chunks))
    assert payload(plain) == {"ok": 1} and chunks == []
    unstreamed = run(STREAMING)
    assert unstreamed.error_type == "Runtime.MarshalError"
    assert "RESPONSE_STREAM" in payload(unstreamed)["errorMessage"]


def test_the_worker_counts_a_streams_data_itself_and_refuses_what_is_past_the_limit():
    # The bootstrap's own count is the sandbox's, which a handler could get around by writing frames itself.
    from functions_app.runtime._ephemera_runtime.protocol import FrameTooLarge
    from functions_app.runtime.pool import _StreamCounter

    taken: list[tuple[str, bytes]] = []
    counter = _StreamCounter(lambda kind, body: taken.append((kind, body)), limit=10)
    counter({"type": "chunk", "kind": "prelude"}, b"{}")
    counter({"type": "chunk", "kind": "data"}, b"x" * 4)
    counter({"type": "chunk", "kind": "data"}, b"x" * 6)
    counter.flush()  # what arrived together goes on as one piece
    with pytest.raises(FrameTooLarge):
        counter({"type": "chunk", "kind": "data"}, b"y")
    assert taken == [("prelude", b"{}"), ("data", b"x" * 10)]


def test_a_streamed_item_of_any_size_reaches_the_caller_whole_in_bounded_pieces(run):
    chunks: list[tuple[str, bytes]] = []
    source = "def handler(event, context):\n    yield b'z' * (3 * 1024 * 1024 + 5)\n"
    result = run(source, request=streamed_request({}, chunks))
    assert result.status == "succeeded"
    assert b"".join(body for _, body in chunks) == b"z" * (3 * 1024 * 1024 + 5)
    assert max(len(body) for _, body in chunks) <= 2 * 1024 * 1024
