"""The zygote: a pre-warmed interpreter that forks environments on request.

Started by the worker as
``/usr/bin/python3 -I -S zygote.py <worker pid> <control fd> <layers json> <preload json> <tier>``
with an empty environment. It holds no secrets, sockets (other than its control
channel) or threads, so a fork of it is a clean start for one function.

With boto3 pre-imported each fork costs 1.5-3 ms here, and a pid namespace
needs two of them (unshare(CLONE_NEWPID) only applies to the caller's
children). So the zygote keeps one *spare* ready, off the critical path:

  zygote ─fork─▶ keeper: unshare(NEWPID), fork, wait, exit
                   └─▶ spare: pid 1 of the new pid namespace; unshares the
                       mount/ipc/uts/net namespaces, then blocks on its
                       command socket

A spawn request (a JSON spec plus three pipe fds over SCM_RIGHTS) is forwarded
to the spare, which joins the environment's cgroups, isolates itself
(sandbox.isolate) and runs bootstrap.serve; the zygote answers the worker with
the spare's host pid and forks the next spare. When the handler process (pid 1)
dies, the kernel kills everything left in its namespace.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import select
import signal
import socket
import sys
import time

# -I drops the script's directory from sys.path (safe_path); the siblings are
# stdlib-only modules meant to be imported from here.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bootstrap
import protocol
import sandbox

NAMESPACES = "namespaces"


def _reap(*_: object) -> None:
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _exit_after_keepers(grace_s: float = 3.0) -> None:
    """The worker hung up: let keepers reap their (already killed) sandboxes first.

    If we died at once, PDEATHSIG would kill the keepers before they reap, and
    the sandboxes would linger as zombies under the host's init.
    """
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.01)
    os._exit(0)


def _die_with(parent_pid: int) -> None:
    sandbox.prctl(sandbox.PR_SET_PDEATHSIG, signal.SIGKILL)
    # The parent may have died before prctl took effect.
    if os.getppid() != parent_pid:
        os._exit(1)


def _join_cgroups(paths: list[str]) -> None:
    # Writing "0" to v1's per-thread `tasks` file moves only the caller, which
    # skips the global threadgroup rwsem (an RCU grace period, 5-15 ms here);
    # moving a pid through cgroup.procs takes it. Everything forked later is
    # born inside the cgroups.
    for path in paths:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)


def _serve_as_sandbox(spec: dict, fds: list[int], host_netns: int) -> None:
    """The spare's second half: become one function's environment."""
    req_fd, resp_fd, log_fd = fds
    try:
        if spec["tier"] == NAMESPACES and spec["network"]:
            sandbox.setns(host_netns, sandbox.CLONE_NEWNET)
        os.close(host_netns)
        _join_cgroups(spec["cgroup_attach"])
        os.setsid()
        sandbox.isolate(spec)
        # Credential changes clear the parent-death signal; set it again as the sandbox uid.
        sandbox.prctl(sandbox.PR_SET_PDEATHSIG, signal.SIGKILL)
        # setuid made us non-dumpable, which makes /proc/self root-owned; ptrace is
        # denied by seccomp and no other uid shares the namespace, so undo it.
        sandbox.prctl(sandbox.PR_SET_DUMPABLE, 1)
    except BaseException as exc:  # noqa: BLE001 - report and die; the worker sees EOF
        error = {"errorType": "Sandbox.SetupError", "errorMessage": repr(exc), "stackTrace": []}
        protocol.write_all(resp_fd, protocol.encode({"type": "ready", "init_error": error}))
        os._exit(70)
    bootstrap.serve(spec, req_fd, resp_fd, log_fd)


def _run_spare(command: socket.socket, tier: str) -> None:
    """Pid 1 of a fresh pid namespace, waiting for the spec it will serve."""
    sandbox.prctl(sandbox.PR_SET_PDEATHSIG, signal.SIGKILL)
    host_netns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    if tier == NAMESPACES:
        flags = sandbox.CLONE_NEWNS | sandbox.CLONE_NEWIPC | sandbox.CLONE_NEWUTS | sandbox.CLONE_NEWNET
        sandbox.unshare(flags)
    data, fds, _flags, _addr = socket.recv_fds(command, 1 << 20, 3)
    if not data:
        os._exit(0)  # the zygote retired us
    command.close()
    _serve_as_sandbox(json.loads(data), fds, host_netns)


def _run_keeper(command: socket.socket, tier: str, zygote_pid: int) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    _die_with(zygote_pid)
    if tier == NAMESPACES:
        sandbox.unshare(sandbox.CLONE_NEWPID)
    pid = os.fork()
    if pid == 0:
        try:
            _run_spare(command, tier)
        finally:
            os._exit(71)
    command.send(json.dumps({"pid": pid}).encode())
    command.close()
    os.waitpid(pid, 0)
    os._exit(0)


class Spares:
    """One pre-forked environment-to-be; refilled after every spawn."""

    def __init__(self, tier: str) -> None:
        self.tier = tier
        self._zygote_pid = os.getpid()
        self._spare: socket.socket | None = None

    def fill(self, control: socket.socket) -> None:
        if self._spare is not None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if os.fork() == 0:
            control.close()
            ours.close()
            try:
                _run_keeper(theirs, self.tier, self._zygote_pid)
            finally:
                os._exit(72)
        theirs.close()
        self._spare = ours

    def retire(self) -> None:
        """Close the spare's command socket: it exits on EOF, and its keeper after it."""
        if self._spare is not None:
            self._spare.close()
            self._spare = None

    def hand_over(self, control: socket.socket, data: bytes, fds: list[int]) -> int:
        """Give the spec to the spare; returns its host pid. Retries once with a fresh spare."""
        for _attempt in range(2):
            self.fill(control)
            spare, self._spare = self._spare, None
            try:
                reply = spare.recv(1 << 10)
                if reply:
                    socket.send_fds(spare, [data], fds)
                    return json.loads(reply)["pid"]
            except OSError:
                pass
            finally:
                spare.close()
        raise RuntimeError("could not start a spare environment")


def _spawn(control: socket.socket, spares: Spares) -> None:
    data, fds, _flags, _addr = socket.recv_fds(control, 1 << 20, 3)
    if not data:
        spares.retire()
        _exit_after_keepers()
    try:
        reply = {"ok": True, "pid": spares.hand_over(control, data, fds)}
    except Exception as exc:  # noqa: BLE001 - tell the worker rather than die
        reply = {"ok": False, "error": repr(exc)}
    finally:
        for fd in fds:
            os.close(fd)
    control.send(json.dumps(reply).encode())
    spares.fill(control)


def _preload(modules: list[str]) -> list[str]:
    loaded = []
    for name in modules:
        try:
            importlib.import_module(name)
            loaded.append(name)
        except Exception:  # noqa: BLE001,S112 - a missing preload only makes cold starts slower
            continue
    return loaded


def main() -> None:
    worker_pid, control_fd = int(sys.argv[1]), int(sys.argv[2])
    layers, preload, tier = json.loads(sys.argv[3]), json.loads(sys.argv[4]), sys.argv[5]
    _die_with(worker_pid)
    sys.path[1:1] = layers
    control = socket.socket(fileno=control_fd)
    loaded = _preload(preload)
    signal.signal(signal.SIGCHLD, _reap)
    # Freeze everything imported so far: forked children then never touch these
    # objects' GC headers, which keeps their pages shared (smaller PSS per env).
    gc.freeze()
    spares = Spares(tier)
    spares.fill(control)
    control.send(json.dumps({"ok": True, "preloaded": loaded}).encode())
    while True:
        ready, _, _ = select.select([control], [], [], 5.0)
        if ready:
            _spawn(control, spares)
        _reap()


if __name__ == "__main__":
    main()
