"""One warm environment as the worker sees it: four pipes, a pid, a cgroup."""

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
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from ._ephemera_runtime.protocol import MessageBuffer, ProtocolError
from .cgroups import EnvCgroup

_READ_CHUNK = 1 << 16
_HEAD_MAX = 4096
# A message header is a few hundred bytes; an init error is capped at 64 KB by the bootstrap.
MAX_HEADER_BYTES = 1 << 20


class EnvironmentGone(Exception):
    """The environment exited (or broke the protocol) before answering."""


class DeadlineExceeded(Exception):
    pass


class LogBuffer:
    """Keeps a short head and the tail of the output, with a marker between them; memory stays under ``cap``.

    The tail matters most: it holds the last words of a failing handler (and is what ``?log=tail`` shows).
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._head_cap = min(_HEAD_MAX, cap // 4)
        self._tail_cap = cap - self._head_cap
        self._head = bytearray()
        self._tail: deque[bytes] = deque()
        self._tail_len = 0
        self.dropped = 0

    def feed(self, data: bytes) -> None:
        room = self._head_cap - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if len(data) >= self._tail_cap:
            self.dropped += self._tail_len + len(data) - self._tail_cap
            self._tail = deque([bytes(data[-self._tail_cap :])] if self._tail_cap else [])
            self._tail_len = self._tail_cap
            return
        if data:
            self._tail.append(bytes(data))
            self._tail_len += len(data)
        self._trim()

    def _trim(self) -> None:
        while self._tail_len > self._tail_cap:
            excess = self._tail_len - self._tail_cap
            first = self._tail[0]
            cut = min(excess, len(first))
            if cut == len(first):
                self._tail.popleft()
            else:
                self._tail[0] = first[cut:]
            self._tail_len -= cut
            self.dropped += cut

    @property
    def truncated(self) -> bool:
        return self.dropped > 0

    def kept_bytes(self) -> int:
        return len(self._head) + self._tail_len

    def text(self) -> str:
        head = bytes(self._head).decode("utf-8", errors="replace")
        tail = b"".join(self._tail).decode("utf-8", errors="replace")
        if not self.dropped:
            return head + tail
        return f"{head}\n... [log truncated: {self.dropped} bytes omitted] ...\n{tail}"


def _readable(fds: list[int], timeout_s: float) -> bool:
    """Whether any of ``fds`` becomes readable within ``timeout_s`` (poll: fd numbers past 1024 are fine)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout_s * 1000))


def _nonblocking(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)


def _pipe() -> tuple[int, int]:
    return os.pipe2(os.O_CLOEXEC)


@dataclass(eq=False)
class Environment:
    id: str
    key: str
    memory_mb: int
    budget_mb: int  # what it holds of the host's memory budget (memory, plus /tmp when that is a tmpfs)
    cgroup: EnvCgroup | None
    tier: str
    req_w: int = -1
    resp_r: int = -1
    log_r: int = -1
    status_r: int = -1
    sandbox_ends: list[int] = field(default_factory=list)  # handed to the zygote, closed once it has them
    pid: int | None = None  # the sandbox's reaper (pid 1 inside), in the worker's pid namespace
    pidfd: int | None = None
    busy: bool = True
    retired: bool = False  # never returned to the pool after its current call
    killed: bool = False  # a kill that came before the pid is carried out when it comes
    frozen: bool = False
    last_used: float = field(default_factory=time.monotonic)
    init_error: dict | None = None
    closed: bool = False
    _exited: bool = False
    _buffer: MessageBuffer = field(default_factory=MessageBuffer)

    @classmethod
    def open(cls, **fields: Any) -> Environment:
        """An environment with its pipes; the sandbox's ends are in ``sandbox_ends`` (req, resp, log, status)."""
        env = cls(**fields)
        try:
            for attr, sandbox_side in (("req_w", 0), ("resp_r", 1), ("log_r", 1), ("status_r", 1)):
                ends = _pipe()
                setattr(env, attr, ends[1 - sandbox_side])
                env.sandbox_ends.append(ends[sandbox_side])
        except OSError:
            env.close()
            raise
        for fd in (env.req_w, env.resp_r, env.log_r, env.status_r):
            _nonblocking(fd)
        return env

    def close_sandbox_ends(self) -> None:
        # The sandbox owns its ends now; ours would hide its EOF if it dies.
        for fd in self.sandbox_ends:
            os.close(fd)
        self.sandbox_ends = []

    # ------------------------------------------------------------ talking

    def exchange(
        self,
        out: bytes,
        deadline: float,
        log: LogBuffer,
        want: str,
        max_body: int = 0,
        on_chunk: ChunkTaker | None = None,
    ) -> tuple[dict, bytes]:
        """Send ``out`` and wait for a message of type ``want``, draining the log meanwhile; "chunk" messages on
        the way (a streamed response) go to ``on_chunk``, whose ``flush`` is called whenever no more are ready.

        A reply whose body is declared longer than ``max_body`` raises FrameTooLarge unread.
        """
        self._buffer.max_header, self._buffer.max_body = MAX_HEADER_BYTES, max_body
        pending = memoryview(out)
        with selectors.DefaultSelector() as sel:
            sel.register(self.resp_r, selectors.EVENT_READ, "resp")
            sel.register(self.log_r, selectors.EVENT_READ, "log")
            if self.pidfd is not None:
                sel.register(self.pidfd, selectors.EVENT_READ, "pid")
            if pending:
                sel.register(self.req_w, selectors.EVENT_WRITE, "req")
            while True:
                message = self._next_message(want, on_chunk)
                if on_chunk is not None:
                    on_chunk.flush()
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
                    pending = self._on_ready(sel, key, pending, log)

    def _on_ready(
        self, sel: selectors.BaseSelector, key: selectors.SelectorKey, pending: memoryview, log: LogBuffer
    ) -> memoryview:
        what = key.data
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
            sel.unregister(key.fileobj)
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

    def _next_message(self, want: str, on_chunk: ChunkTaker | None = None) -> tuple[dict, bytes] | None:
        while True:
            try:
                message = self._buffer.pop()
            except ProtocolError as exc:
                raise EnvironmentGone(str(exc)) from exc
            if message is None:
                return None
            if message[0].get("type") == "chunk" and on_chunk is not None:
                on_chunk(*message)
                continue
            if message[0].get("type") != want:
                raise EnvironmentGone(f"unexpected message {message[0].get('type')!r}")
            return message

    def adopt_pid(self, pid: int) -> None:
        self.pid = pid
        try:
            # A pidfd, so a later kill can never hit a recycled pid.
            self.pidfd = os.pidfd_open(pid)
        except OSError:
            self.pidfd = None
        if self.killed:
            self.kill()

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

    def exit_status(self, wait_s: float = 0.5) -> int | None:
        """The handler's wait status, as its reaper reports it on the way out; None if it did not.

        The response pipe closes as the handler dies, a moment before its reaper
        has reaped it: wait for the report, or for the reaper's own end.
        """
        _readable([fd for fd in (self.status_r, self.pidfd) if fd is not None], wait_s)
        try:
            return int(os.read(self.status_r, 64))
        except (OSError, ValueError):
            return None

    # ------------------------------------------------------------ freezing

    def freeze(self) -> None:
        """No CPU between invocations: the cgroup freezer, else SIGSTOP to the process group (insecure-dev)."""
        self._pause(True)

    def thaw(self) -> None:
        if self.frozen:
            self._pause(False)

    def _pause(self, frozen: bool) -> None:
        if self.cgroup is not None and self.cgroup.can_freeze:
            if frozen:
                self.cgroup.freeze()
            else:
                self.cgroup.thaw()
        elif self.pid is not None:
            _killpg(self.pid, signal.SIGSTOP if frozen else signal.SIGCONT)
        self.frozen = frozen

    # ------------------------------------------------------------ lifecycle

    def alive(self) -> bool:
        if self.closed or self.pidfd is None:
            return not self.closed
        return not _readable([self.pidfd], 0)

    def kill(self) -> None:
        """SIGKILL now, without waiting: the reaper (its pid namespace goes with it), the cgroup, the group."""
        self.killed = True
        if self.closed:
            return
        if self.pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        if self.tier != "namespaces" and self.pid is not None:
            _killpg(self.pid, signal.SIGKILL)  # insecure-dev: no pid namespace, so the process group
        if self.cgroup is not None:
            self.cgroup.kill_all()  # and thaws: a frozen v1 task dies only once thawed
        elif self.frozen and self.pid is not None:
            _killpg(self.pid, signal.SIGCONT)

    def wait_exit(self, timeout_s: float) -> None:
        if self.pidfd is not None and not self.closed:
            _readable([self.pidfd], timeout_s)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for fd in (self.req_w, self.resp_r, self.log_r, self.status_r, self.pidfd, *self.sandbox_ends):
            if fd is not None and fd >= 0:
                try:
                    os.close(fd)
                except OSError as exc:
                    if exc.errno != errno.EBADF:
                        raise
        self.sandbox_ends = []


class ChunkTaker(Protocol):
    """What takes a streamed call's chunk messages (functions_app.runtime.pool._StreamCounter)."""

    def __call__(self, header: dict, body: bytes) -> None: ...

    def flush(self) -> None: ...


def _killpg(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)
