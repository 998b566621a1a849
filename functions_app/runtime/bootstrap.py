"""The in-sandbox runtime: imports the handler once, then serves invocations.

Runs in the environment's handler process, already isolated. Stdlib only; it is
pre-imported by the zygote (``python3 -I -S``), so it must not import the package.

Messages (see protocol.py), each a JSON header plus a raw body:
  -> worker  {"type": "ready", "init_error": null | {...}}            body: b""
  <- worker  {"request_id", "arn", "attempt", "deadline_ms"}          body: event JSON
  -> worker  {"type": "result", "ok", "error_type", "duration_ms",
              "cpu_ms", "maxrss_kb"}                                 body: result JSON or error JSON
"""

from __future__ import annotations

import importlib
import io
import json
import os
import resource
import sys
import time
import traceback

import protocol


class LambdaContext:
    """The attributes awslambdaric's context has, plus ``attempt`` for deduplication."""

    def __init__(self, header: dict) -> None:
        env = os.environ
        self.function_name = env["AWS_LAMBDA_FUNCTION_NAME"]
        self.function_version = env["AWS_LAMBDA_FUNCTION_VERSION"]
        # A string, exactly as the real runtime passes it through from the environment.
        self.memory_limit_in_mb = env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"]
        self.log_group_name = env["AWS_LAMBDA_LOG_GROUP_NAME"]
        self.log_stream_name = env["AWS_LAMBDA_LOG_STREAM_NAME"]
        self.invoked_function_arn = header["arn"]
        self.aws_request_id = header["request_id"]
        self.attempt = header["attempt"]
        self.identity = None
        self.client_context = None
        self._deadline_ms = header["deadline_ms"]

    def get_remaining_time_in_millis(self) -> int:
        return max(int(self._deadline_ms - time.time() * 1000), 0)


def _error(error_type: str, message: str, stack: list[str] | None = None) -> dict:
    return {"errorMessage": message, "errorType": error_type, "stackTrace": stack or []}


def _user_frames(exc: BaseException) -> list[str]:
    # Drop this file's frames: users should see their code, as on Lambda.
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != __file__]
    return traceback.format_list(frames)


def load_handler(handler: str) -> tuple[object | None, dict | None]:
    """Import ``module.function`` (or ``pkg/mod.function``); Lambda's error types on failure."""
    module_name, _, function_name = handler.rpartition(".")
    if not module_name or not function_name:
        return None, _error("Runtime.MalformedHandlerName", f"Bad handler '{handler}': not enough values to unpack")
    module_name = module_name.replace("/", ".")
    try:
        module = importlib.import_module(module_name)
    except SyntaxError as exc:
        detail = f"{exc.msg} ({os.path.basename(exc.filename or '?')}, line {exc.lineno})"
        return None, _error(
            "Runtime.UserCodeSyntaxError", f"Syntax error in module '{module_name}': {detail}", _user_frames(exc)
        )
    except ImportError as exc:
        return None, _error("Runtime.ImportModuleError", f"Unable to import module '{module_name}': {exc}")
    except Exception as exc:  # noqa: BLE001 - module-level user code may raise anything
        return None, _error(type(exc).__name__, str(exc), _user_frames(exc))
    function = getattr(module, function_name, None)
    if not callable(function):
        return None, _error("Runtime.HandlerNotFound", f"Handler '{function_name}' missing on module '{module_name}'")
    return function, None


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _cpu_backstop(timeout_s: float) -> None:
    # The parent enforces the wall clock; RLIMIT_CPU only catches a spinning
    # environment whose parent died. It is cumulative, so re-arm it per call.
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = int(usage.ru_utime + usage.ru_stime)
    resource.setrlimit(resource.RLIMIT_CPU, (used + int(timeout_s) + 2, resource.RLIM_INFINITY))


def invoke(function: object, header: dict, event_bytes: bytes) -> tuple[dict, bytes]:
    context = LambdaContext(header)
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    ok, error_type = True, None
    try:
        event = json.loads(event_bytes) if event_bytes else None
        result = function(event, context)
        try:
            body = json.dumps(result).encode()
        except (TypeError, ValueError, RecursionError) as exc:
            ok, error_type = False, "Runtime.MarshalError"
            body = json.dumps(_error(error_type, f"Unable to marshal response: {exc}")).encode()
    except Exception as exc:  # noqa: BLE001 - any handler exception is a function error
        ok, error_type = False, type(exc).__name__
        payload = _error(error_type, str(exc), _user_frames(exc))
        payload["requestId"] = header["request_id"]
        print(f"[ERROR] {error_type}: {exc}", file=sys.stderr)
        body = json.dumps(payload).encode()
    duration_ms = (time.perf_counter() - t0) * 1000
    meta = {
        "type": "result",
        "ok": ok,
        "error_type": error_type,
        "duration_ms": duration_ms,
        "cpu_ms": (_cpu_seconds() - cpu0) * 1000,
        "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    return meta, body


def _reap_orphans() -> None:
    """As pid 1 we inherit every orphan; reap the dead so they do not fill pids.max.

    The cost: a child the handler started but did not wait for is reaped here,
    and a later Popen.wait() sees returncode 0 (Python's ECHILD fallback).
    """
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _redirect_output(log_fd: int) -> None:
    # fd 1 and 2 themselves, so subprocesses' output is captured too.
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        stream = io.TextIOWrapper(
            io.FileIO(fd, "w", closefd=False), encoding="utf-8", errors="backslashreplace", line_buffering=True
        )
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _prepare_process(init: dict) -> None:
    # The zygote's environment (already empty) is replaced wholesale: putenv
    # happens too, so subprocesses see exactly the function's variables.
    os.environ.clear()
    os.environ.update(init["env"])
    task_root = init["task_root"]
    os.chdir(task_root)
    sys.path[:] = [task_root, *init["layer_dirs"], *[p for p in sys.path if p.startswith("/usr/lib/python3")]]
    sys.argv = ["/var/runtime/bootstrap"]
    importlib.invalidate_caches()


def serve(init: dict, req_fd: int, resp_fd: int, log_fd: int) -> None:
    """Never returns: serves until the worker closes the request pipe."""
    _redirect_output(log_fd)
    _prepare_process(init)
    function, init_error = load_handler(init["handler"])
    if init_error:
        print(f"[ERROR] {init_error['errorType']}: {init_error['errorMessage']}", file=sys.stderr)
    sys.stderr.flush()
    protocol.write_all(resp_fd, protocol.encode({"type": "ready", "init_error": init_error}))
    while True:
        try:
            header, event = protocol.read_message(req_fd)
        except EOFError:
            os._exit(0)
        if init_error:
            meta = {
                "type": "result",
                "ok": False,
                "error_type": init_error["errorType"],
                "duration_ms": 0.0,
                "cpu_ms": 0.0,
                "maxrss_kb": 0,
            }
            body = json.dumps(init_error).encode()
        else:
            _cpu_backstop(init["timeout_s"])
            meta, body = invoke(function, header, event)
        sys.stdout.flush()
        sys.stderr.flush()
        protocol.write_all(resp_fd, protocol.encode(meta, body))
        _reap_orphans()
