"""One warm environment as the worker sees it: three pipes, a pid, a cgroup."""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import os
import select
import selectors
import signal
import termios
import time
from dataclasses import dataclass, field

from .cgroups import EnvCgroup
from .protocol import MessageBuffer, ProtocolError

_READ_CHUNK = 1 << 16


class EnvironmentGone(Exception):
    """The environment exited (or broke the protocol) before answering."""


class DeadlineExceeded(Exception):
    pass


class LogBuffer:
    """Keeps the first ``cap`` bytes and counts the rest, so a flood cannot cost memory."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._parts: list[bytes] = []
        self._kept = 0
        self.truncated = False

    def feed(self, data: bytes) -> None:
        room = self.cap - self._kept
        if len(data) > room:
            self.truncated = True
            data = data[: max(room, 0)]
        if data:
            self._parts.append(data)
            self._kept += len(data)

    def text(self) -> str:
        text = b"".join(self._parts).decode("utf-8", errors="replace")
        if self.truncated:
            text += f"\n... [log truncated at {self.cap} bytes]\n"
        return text


def _nonblocking(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)


@dataclass(eq=False)
class Environment:
    id: str
    key: str
    memory_mb: int
    req_w: int
    resp_r: int
    log_r: int
    cgroup: EnvCgroup | None
    tier: str
    pid: int | None = None  # the sandbox's pid 1, in the worker's pid namespace
    pidfd: int | None = None
    busy: bool = True
    last_used: float = field(default_factory=time.monotonic)
    init_error: dict | None = None
    closed: bool = False
    _exited: bool = False
    _buffer: MessageBuffer = field(default_factory=MessageBuffer)

    def __post_init__(self) -> None:
        for fd in (self.req_w, self.resp_r, self.log_r):
            _nonblocking(fd)

    # ------------------------------------------------------------ talking

    def exchange(self, out: bytes, deadline: float, log: LogBuffer, want: str) -> tuple[dict, bytes]:
        """Send ``out`` and wait for a message of type ``want``, draining the log meanwhile."""
        pending = memoryview(out)
        with selectors.DefaultSelector() as sel:
            sel.register(self.resp_r, selectors.EVENT_READ, "resp")
            sel.register(self.log_r, selectors.EVENT_READ, "log")
            if self.pidfd is not None:
                sel.register(self.pidfd, selectors.EVENT_READ, "pid")
            if pending:
                sel.register(self.req_w, selectors.EVENT_WRITE, "req")
            while True:
                message = self._next_message(want)
                if message is not None:
                    self.drain_log(log)
                    return message
                if self._exited:
                    self.drain_log(log)
                    raise EnvironmentGone("the sandbox exited")
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    raise DeadlineExceeded
                for key, _ in sel.select(timeout):
                    pending = self._on_ready(sel, key.data, pending, log)

    def _on_ready(self, sel: selectors.BaseSelector, what: str, pending: memoryview, log: LogBuffer) -> memoryview:
        if what == "req":
            try:
                pending = pending[os.write(self.req_w, pending[: 1 << 20]) :]
            except BrokenPipeError as exc:
                raise EnvironmentGone("request pipe closed") from exc
            if not pending:
                sel.unregister(self.req_w)
        elif what == "log":
            data = self._read(self.log_r)
            if data:
                log.feed(data)
            elif data is not None:
                sel.unregister(self.log_r)
        elif what == "resp":
            data = self._read(self.resp_r)
            if data is None:
                return pending
            if not data:
                self.drain_log(log)
                raise EnvironmentGone("response pipe closed")
            self._buffer.feed(data)
        elif what == "pid":
            # Pid 1 exited. Whatever it wrote last is already in the pipe; read
            # it, and if that is no complete message, the environment is gone
            # (in insecure-dev an escaped child could keep the pipe open).
            sel.unregister(self.pidfd)
            while data := self._read(self.resp_r):
                self._buffer.feed(data)
            self._exited = True
        return pending

    @staticmethod
    def _read(fd: int) -> bytes | None:
        try:
            return os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            return None  # spurious wake-up

    def _next_message(self, want: str) -> tuple[dict, bytes] | None:
        try:
            message = self._buffer.pop()
        except ProtocolError as exc:
            raise EnvironmentGone(str(exc)) from exc
        if message is not None and message[0].get("type") != want:
            raise EnvironmentGone(f"unexpected message {message[0].get('type')!r}")
        return message

    def adopt_pid(self, pid: int) -> None:
        self.pid = pid
        try:
            # A pidfd, so a later kill can never hit a recycled pid.
            self.pidfd = os.pidfd_open(pid)
        except OSError:
            self.pidfd = None

    def drain_log(self, log: LogBuffer) -> None:
        """Read what the pipe holds now: whatever the handler wrote before its reply.

        Bounded by FIONREAD, so a background process that never stops writing
        cannot keep us here; its later output goes to the next invocation.
        """
        available = array.array("i", [0])
        try:
            fcntl.ioctl(self.log_r, termios.FIONREAD, available)
        except OSError:
            return
        remaining = available[0]
        while remaining > 0:
            try:
                data = os.read(self.log_r, min(remaining, _READ_CHUNK))
            except BlockingIOError:
                return
            if not data:
                return
            log.feed(data)
            remaining -= len(data)

    # ------------------------------------------------------------ lifecycle

    def alive(self) -> bool:
        if self.closed or self.pidfd is None:
            return not self.closed
        readable, _, _ = select.select([self.pidfd], [], [], 0)
        return not readable

    def kill(self, wait_s: float = 1.0) -> None:
        """SIGKILL the sandbox's pid 1: the kernel then kills its whole pid namespace."""
        if self.closed:
            return
        if self.pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            select.select([self.pidfd], [], [], wait_s)
        if self.tier != "namespaces" and self.pid is not None:
            _killpg(self.pid)  # insecure-dev: no pid namespace, so the process group
        if self.cgroup is not None:
            self.cgroup.kill_all()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for fd in (self.req_w, self.resp_r, self.log_r, self.pidfd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError as exc:
                    if exc.errno != errno.EBADF:
                        raise


def _killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
