"""The worker's handle on its zygote process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading

from ._ephemera_runtime.zygote import BOOT_STUB
from .doctor import SANDBOX_PYTHON

_START_TIMEOUT_S = 60.0
_SPAWN_TIMEOUT_S = 10.0


class ZygoteError(RuntimeError):
    pass


class Zygote:
    """Starts the zygote (see _ephemera_runtime/zygote.py) and forwards spawn requests to it, one at a time.

    ``config`` is the zygote's: tier, preload, owner, runtime_package, runtime_parent, layers, zygote_root, storage.
    """

    def __init__(self, config: dict) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self.preloaded: list[str] = []

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _launch(self, child_sock: socket.socket, started: threading.Event) -> None:
        # PR_SET_PDEATHSIG fires when the *thread* that forked the zygote exits,
        # so a dedicated thread launches it and lives as long as it does. A
        # Celery thread that happened to start the executor may come and go.
        config = {**self._config, "worker_pid": os.getpid(), "control_fd": child_sock.fileno()}
        try:
            self._proc = subprocess.Popen(
                [SANDBOX_PYTHON, "-I", "-S", "-c", BOOT_STUB, json.dumps(config)],
                env={},  # no secrets: the worker's environment never reaches the zygote
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=(child_sock.fileno(),),
            )
        finally:
            started.set()
        self._proc.wait()

    def start(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        started = threading.Event()
        threading.Thread(target=self._launch, args=(child, started), name="ephemera-zygote", daemon=True).start()
        started.wait()
        child.close()
        parent.settimeout(_START_TIMEOUT_S)
        try:
            hello = json.loads(parent.recv(1 << 16) or b"null")
        except (OSError, ValueError) as exc:
            raise ZygoteError(f"zygote did not start: {exc}") from exc
        if not hello:
            raise ZygoteError("zygote exited during start-up (see the worker's stderr)")
        parent.settimeout(_SPAWN_TIMEOUT_S)
        self._sock = parent
        self.preloaded = hello["preloaded"]

    def _request(self, spec: dict, fds: list[int]) -> int:
        assert self._sock is not None
        socket.send_fds(self._sock, [json.dumps(spec).encode()], fds)
        reply = self._sock.recv(1 << 16)
        if not reply:
            raise ZygoteError("zygote closed its control channel")
        answer = json.loads(reply)
        if not answer.get("ok"):
            raise ZygoteError(f"zygote could not spawn: {answer.get('error')}")
        return answer["pid"]

    def spawn(self, spec: dict, fds: list[int]) -> int:
        """Start an environment; returns its reaper's host pid. Restarts a dead zygote."""
        with self._lock:
            if not self.alive():
                self.stop()
                self.start()
            try:
                return self._request(spec, fds)
            except OSError as exc:
                raise ZygoteError(f"zygote spawn failed: {exc}") from exc

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()  # the zygote exits on EOF
            self._sock = None
        if self._proc is not None:
            # The zygote exits by itself once its keepers have reaped their sandboxes.
            try:
                self._proc.wait(timeout=4)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
