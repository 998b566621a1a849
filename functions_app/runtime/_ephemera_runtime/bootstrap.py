"""The in-sandbox runtime: imports the handler once, then serves invocations.

Runs in the environment's handler process, already isolated. Stdlib only; it is
pre-imported by the zygote (``python3 -I -S``).

Messages (see protocol.py), each a JSON header plus a raw body:
  -> worker  {"type": "ready", "init_error": null | {...}}            body: b""
  <- worker  {"request_id", "arn", "attempt", "deadline_ms",
              "response_max_bytes", "client_context"?}               body: event JSON
  -> worker  {"type": "result", "ok", "error_type", "duration_ms",
              "cpu_ms", "maxrss_kb"}                                 body: result JSON or error JSON

A streamed call (the request header has "stream_max_bytes") whose handler
returns an iterator (a generator that yields) sends its items before the
result, each as it is produced:
  -> worker  {"type": "chunk", "kind": "prelude"}                   body: the first item if a dict (JSON)
  -> worker  {"type": "chunk", "kind": "data"}                      body: an item's bytes (str as UTF-8)
and then a result whose body is ``null``.

A handler (or its module) that exits, by ``sys.exit`` or ``os._exit``, ends the
process with that status, which the reaper reports to the worker.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import resource
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator

from . import protocol

# typing is for the type checker only: nothing here imports more into a handler's interpreter than it needs.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn, TypeGuard

# A handler: called with the event (decoded JSON) and the context; returns what is encoded as the result.
Handler = Callable[[object, "LambdaContext"], object]

# Top-level names of the modules the zygote pre-imported from layers (set by the zygote).
LAYER_MODULES: frozenset[str] = frozenset()
_INIT_MESSAGE_CAP = 64 << 10  # an init error travels in a frame header, which the worker keeps small


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
        self.client_context = _client_context(header.get("client_context"))
        self._deadline_ms = header["deadline_ms"]

    def get_remaining_time_in_millis(self) -> int:
        return max(int(self._deadline_ms - time.time() * 1000), 0)


class ClientContext:
    """Lambda's ``context.client_context``: what the caller sent as ClientContext (X-Amz-Client-Context), split as
    awslambdaric splits it."""

    def __init__(self, fields: dict) -> None:
        self.client = fields.get("client")
        self.custom = fields.get("custom")
        self.env = fields.get("env")


def _client_context(text: str | None) -> ClientContext | None:
    if not text:
        return None
    fields = json.loads(text)
    return ClientContext(fields if isinstance(fields, dict) else {})


def exit_code(exc: SystemExit) -> int:
    """The status Python itself would exit with for ``exc``."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    print(exc.code, file=sys.stderr)
    return 1


def _exit(exc: SystemExit) -> NoReturn:
    code = exit_code(exc)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _user_frames(exc: BaseException) -> list[str]:
    # Drop this file's frames: users should see their code, as on Lambda.
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != __file__]
    return traceback.format_list(frames)


def load_handler(handler: str) -> tuple[Handler | None, dict | None]:
    """Import ``module.function`` (or ``pkg/mod.function``); Lambda's error types on failure."""
    module_name, _, function_name = handler.rpartition(".")
    if not module_name or not function_name:
        message = f"Bad handler '{handler}': not enough values to unpack"
        return None, protocol.error("Runtime.MalformedHandlerName", message)
    module_name = module_name.replace("/", ".")
    try:
        module = importlib.import_module(module_name)
    except SystemExit as exc:
        _exit(exc)
    except SyntaxError as exc:
        detail = f"{exc.msg} ({os.path.basename(exc.filename or '?')}, line {exc.lineno})"
        return None, protocol.error(
            "Runtime.UserCodeSyntaxError", f"Syntax error in module '{module_name}': {detail}", _user_frames(exc)
        )
    except ImportError as exc:
        return None, protocol.error("Runtime.ImportModuleError", f"Unable to import module '{module_name}': {exc}")
    except Exception as exc:  # noqa: BLE001 - module-level user code may raise anything
        return None, protocol.error(type(exc).__name__, str(exc), _user_frames(exc))
    function = getattr(module, function_name, None)
    if not callable(function):
        message = f"Handler '{function_name}' missing on module '{module_name}'"
        return None, protocol.error("Runtime.HandlerNotFound", message)
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


def _call(function: Handler, header: dict, event_bytes: bytes, resp_fd: int) -> tuple[bool, str | None, bytes]:
    context = LambdaContext(header)
    try:
        event = json.loads(event_bytes) if event_bytes else None
        result = function(event, context)
        if "stream_max_bytes" in header and _streamable(result):
            return _stream(result, header["stream_max_bytes"], resp_fd)
        try:
            # NaN and Infinity are not JSON: no client could read such a result back.
            return True, None, json.dumps(result, allow_nan=False).encode()
        except (TypeError, ValueError, RecursionError) as exc:
            error_type = "Runtime.MarshalError"
            error = protocol.error(error_type, f"Unable to marshal response: {exc}{_stream_hint(result)}")
            return False, error_type, json.dumps(error).encode()
    except SystemExit as exc:
        _exit(exc)
    except Exception as exc:  # noqa: BLE001 - any handler exception is a function error
        error_type = type(exc).__name__
        payload = protocol.error(error_type, str(exc), _user_frames(exc))
        payload["requestId"] = header["request_id"]
        print(f"[ERROR] {error_type}: {exc}", file=sys.stderr)
        return False, error_type, json.dumps(payload).encode()


def _streamable(result: object) -> TypeGuard[Iterator[object]]:
    """An iterator that is not a value: a generator, or what ``iter()`` of a handler's choosing returns."""
    return isinstance(result, Iterator) and not isinstance(result, (str, bytes, dict, list))


def _stream_hint(result: object) -> str:
    if _streamable(result):
        return " (a handler that yields streams only through a function URL whose invoke mode is RESPONSE_STREAM)"
    return ""


def _stream(items: Iterator[object], limit: int, resp_fd: int) -> tuple[bool, str | None, bytes]:
    """Send each item as it comes (the first may be a dict: the response's status, headers and cookies). An
    exception raised by the iterator propagates to ``_call`` as the handler's error, after what was sent."""
    sent = 0
    for position, item in enumerate(items):
        if position == 0 and isinstance(item, dict):
            prelude = json.dumps(item).encode()
            protocol.write_all(resp_fd, protocol.encode({"type": "chunk", "kind": "prelude"}, prelude))
            continue
        data = item.encode() if isinstance(item, str) else item
        if not isinstance(data, (bytes, bytearray, memoryview)):
            message = f"A streamed item must be bytes or str, not {type(item).__name__}"
            error = protocol.error("Runtime.MarshalError", message)
            return False, "Runtime.MarshalError", json.dumps(error).encode()
        sent += len(data)
        if sent > limit:
            error = protocol.response_too_large(sent, limit)
            return False, protocol.RESPONSE_TOO_LARGE, json.dumps(error).encode()
        view = memoryview(data)
        for start in range(0, len(view), protocol.CHUNK_MAX_BYTES):  # a large item in pieces: bounded frames
            piece = bytes(view[start : start + protocol.CHUNK_MAX_BYTES])
            protocol.write_all(resp_fd, protocol.encode({"type": "chunk", "kind": "data"}, piece))
    return True, None, b"null"


def invoke(function: Handler, header: dict, event_bytes: bytes, resp_fd: int) -> tuple[dict, bytes]:
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    ok, error_type, body = _call(function, header, event_bytes, resp_fd)
    limit = header["response_max_bytes"]
    if len(body) > limit:
        # Refused here, before a byte crosses the pipe; the worker would cut it off anyway.
        ok, error_type = False, protocol.RESPONSE_TOO_LARGE
        body = json.dumps(protocol.response_too_large(len(body), limit)).encode()
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


def _bundled_names(task_root: str) -> set[str]:
    """Top-level names the function's code provides: ``boto3/``, ``six.py``, ``x.cpython-311-….so``…"""
    try:
        return {entry.partition(".")[0] for entry in os.listdir(task_root)}
    except OSError:
        return set()


def _forget_layer_modules(layer_dirs: list[str]) -> None:
    """Drop every pre-imported layer module, so imports resolve on sys.path again, /var/task first.

    All of them, not only the shadowed one: a bundled botocore must not be
    mixed with the layer's boto3 that already holds the old one. Only functions
    that bundle such a package pay for it, with a slower cold start.
    """
    prefixes = tuple(f"{layer}/" for layer in layer_dirs)
    for name, module in list(sys.modules.items()):
        paths = [getattr(module, "__file__", None) or "", *(getattr(module, "__path__", None) or [])]
        if any(path.startswith(prefixes) for path in paths):
            del sys.modules[name]


def _prepare_process(init: dict) -> None:
    # The zygote's environment (already empty) is replaced wholesale: putenv
    # happens too, so subprocesses see exactly the function's variables.
    os.environ.clear()
    os.environ.update(init["env"])
    task_root = init["task_root"]
    os.chdir(task_root)
    sys.path[:] = [task_root, *init["layer_dirs"], *[p for p in sys.path if p.startswith("/usr/lib/python3")]]
    sys.argv = ["/var/runtime/bootstrap"]
    if LAYER_MODULES & _bundled_names(task_root):
        _forget_layer_modules(init["layer_dirs"])
    importlib.invalidate_caches()
    # The zygote ignores SIGINT (the worker's Ctrl-C is not ours); the function gets Python's usual behaviour.
    signal.signal(signal.SIGINT, signal.default_int_handler)


def serve(init: dict, req_fd: int, resp_fd: int, log_fd: int) -> None:
    """Never returns: serves until the worker closes the request pipe."""
    _redirect_output(log_fd)
    _prepare_process(init)
    function, init_error = load_handler(init["handler"])
    if init_error:
        print(f"[ERROR] {init_error['errorType']}: {init_error['errorMessage']}", file=sys.stderr)
        init_error["errorMessage"] = init_error["errorMessage"][:_INIT_MESSAGE_CAP]
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
            assert function is not None, "load_handler returns a handler or an init error"
            _cpu_backstop(init["timeout_s"])
            meta, body = invoke(function, header, event, resp_fd)
        sys.stdout.flush()
        sys.stderr.flush()
        protocol.write_all(resp_fd, protocol.encode(meta, body))
