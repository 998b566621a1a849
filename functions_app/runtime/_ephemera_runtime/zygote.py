"""The zygote: a pre-warmed interpreter that forks environments on request.

Started by the worker as ``/usr/bin/python3 -I -S -c BOOT_STUB <config json>``
with an empty environment. In the namespaces tier, ``boot`` first moves into a
mount namespace whose root has the sandbox's own paths (this package at
/var/runtime/_ephemera_runtime, layers at /opt/python, the host under /host) and
starts again there, so that nothing it imports, nor its command line, carries a
host path into an environment. It holds no secrets, sockets (other than its
control channel) or threads, so a fork of it is a clean start for one function.

With boto3 pre-imported each fork costs 1.5-3 ms here, and an environment needs
three (unshare(CLONE_NEWPID) only applies to the caller's children, and pid 1
is a reaper). So the zygote keeps one *spare* ready, off the critical path:

  zygote ─fork─▶ keeper: unshare(NEWPID), fork, wait, exit
                   └─▶ reaper, pid 1 of the new pid namespace: setsid, unshare
                       the mount/ipc/uts/net namespaces, fork, wait
                         └─▶ handler, pid 2: mount a /tmp filesystem, block
                             on the spare's command socket

A spawn request (a JSON spec plus four pipe fds over SCM_RIGHTS) goes to the
spare's handler process. It passes the fourth fd (the exit status pipe) and the
environment's thaw switch to its reaper, joins the environment's cgroups,
isolates itself (sandbox.isolate) and runs bootstrap.serve. The reaper drops
its privileges and reaps orphans for as long as the handler lives, so zombies
never fill pids.max while the handler's own children keep their exit statuses.
When the handler exits, the reaper writes its wait status and exits; the
kernel then kills whatever is left in the namespace. The zygote answers the
worker with the reaper's host pid and forks the next spare.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import select
import signal
import socket
import sys
import time
import traceback

from . import bootstrap, loopfs, netlink, protocol, sandbox

NAMESPACES = "namespaces"
SANDBOX_PYTHON = "/usr/bin/python3"
RUNTIME_PARENT = "/var/runtime"
PACKAGE = __name__.rpartition(".")[0]
# Paths in the zygote's own root (see sandbox.enter_zygote_root).
HOST = "/host"
STORAGE = "/storage"
ROOTFS = "/rootfs"
SCRATCH = "/scratch"

# The zygote's whole command line. It ignores Ctrl-C before anything else: when
# `make run` stops, its process group gets SIGINT, and the worker decides when
# we go (we exit when it closes the control channel, or dies).
BOOT_STUB = (
    "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "import json, sys\n"
    "config = json.loads(sys.argv[1])\n"
    "sys.path.insert(0, config['runtime_parent'])\n"
    "from _ephemera_runtime.zygote import boot\n"
    "boot(config)\n"
)

# This zygote's configuration, in its own view of paths; inherited by every fork.
_config: dict = {}


def layer_targets(count: int) -> list[str]:
    """Where layers appear, as on Lambda: the first at /opt/python."""
    return ["/opt/python" if i == 1 else f"/opt/python-{i}" for i in range(1, count + 1)]


def boot(config: dict) -> None:
    """First start, from the worker's paths: enter the zygote root, then start again from inside it."""
    _die_with(config["worker_pid"])
    if config["tier"] != NAMESPACES or config.get("entered"):
        main(config)
        return
    inside = _enter_root(config)
    os.execv(SANDBOX_PYTHON, [SANDBOX_PYTHON, "-I", "-S", "-c", BOOT_STUB, json.dumps(inside)])  # noqa: S606


def _enter_root(config: dict) -> dict:
    """Mount the zygote root; returns the configuration as seen from inside (no host path left in it)."""
    layers = layer_targets(len(config["layers"]))
    storage = config.get("storage")
    paths = {
        "copy": {f"{RUNTIME_PARENT}/{PACKAGE}": config["runtime_package"]},
        "readonly": dict(zip(layers, config["layers"], strict=True)),
        "writable": {STORAGE: storage["dir"]} if storage else {},
    }
    sandbox.enter_zygote_root(config["zygote_root"], paths, config.get("resolvers", []))
    os.set_inheritable(config["control_fd"], True)
    keep = ("worker_pid", "control_fd", "tier", "preload")
    inside = {name: config[name] for name in keep}
    inside.update(entered=True, runtime_parent=RUNTIME_PARENT, layers=layers, host_prefix=HOST)
    inside["storage"] = {"dir": STORAGE, "tmp_mb": storage["tmp_mb"]} if storage else None
    return inside


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


# ---------------------------------------------------------------- /tmp


def _mount_scratch(tmp_mb: int) -> int:
    storage = _config["storage"]
    template = loopfs.template_path(storage["dir"], tmp_mb)
    loopfs.mount_scratch(template, loopfs.images_dir(storage["dir"]), SCRATCH)
    return tmp_mb


def _prepare_scratch(tmp_mb: int | None) -> int | None:
    """Mount the next environment's /tmp ahead of its spec, at the size the last one used; None if not."""
    if not _config.get("storage") or _config["tier"] != NAMESPACES or tmp_mb is None:
        return None
    try:
        return _mount_scratch(tmp_mb)
    except OSError:
        return None  # tried again once the spec says which size, and reported then


def _scratch_for(spec: dict, mounted: int | None) -> None:
    """Make /scratch the size the spec asks for (on the critical path only when sizes change)."""
    if not spec.get("scratch"):
        return
    try:
        if mounted != spec["tmp_mb"]:
            if mounted is not None:
                loopfs.unmount_scratch(SCRATCH)
            _mount_scratch(spec["tmp_mb"])
        os.chown(SCRATCH, spec["uid"], spec["gid"])  # the tenant's, known only now
        spec["scratch"] = SCRATCH
    except OSError as exc:
        spec["setup_error"] = f"ephemeral storage: {exc}"


# ---------------------------------------------------------------- the handler process


def _in_this_view(spec: dict) -> dict:
    """The worker's paths as this zygote sees them, plus the ones it mounted itself."""
    spec["code_dir"] = _config["host_prefix"] + spec["code_dir"]
    spec["layer_dirs"] = _config["layers"]
    spec["runtime_dir"] = _config["runtime_parent"]
    spec["rootfs_dir"] = ROOTFS
    return spec


def _serve_as_sandbox(spec: dict, fds: list[int], host_netns: int) -> None:
    """Become one function's environment."""
    req_fd, resp_fd, log_fd = fds
    try:
        if spec.get("setup_error"):
            raise sandbox.SandboxError(0, spec["setup_error"])
        if spec["tier"] == NAMESPACES and spec["network"]:
            netlink.connect(spec["link"], host_netns)
        os.close(host_netns)
        _join_cgroups(spec["cgroup_attach"])
        sandbox.isolate(_in_this_view(spec))
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


def _hand_to_reaper(link: socket.socket, spec: dict, status_fd: int) -> None:
    """Give the reaper what it needs once we are gone: the status pipe, the environment's thaw switch, its uid.

    The switch is opened here, as root and before the pivot: afterwards only the fd reaches it.
    """
    fds, value = [status_fd], None
    if spec.get("thaw_file"):
        path, value = spec["thaw_file"]
        with contextlib.suppress(OSError):
            fds.append(os.open(path, os.O_WRONLY | os.O_CLOEXEC))
    message = {"thaw": value, "uid": spec["uid"], "gid": spec["gid"]}
    socket.send_fds(link, [json.dumps(message).encode()], fds)
    for fd in fds:
        os.close(fd)
    link.close()


def _run_handler(
    command: socket.socket, link: socket.socket, host_netns: int, reaper_pid: int, tmp_mb: int | None
) -> None:
    """Pid 2: prepares /tmp, waits for its spec, then serves it until the worker hangs up."""
    _die_with(reaper_pid)
    mounted = _prepare_scratch(tmp_mb)
    data, fds, _flags, _addr = socket.recv_fds(command, 1 << 20, 4)
    if not data:
        os._exit(0)  # the zygote retired the spare; the reaper follows
    command.close()
    spec = json.loads(data)
    _hand_to_reaper(link, spec, fds[3])
    _scratch_for(spec, mounted)
    try:
        _serve_as_sandbox(spec, fds[:3], host_netns)
    except BaseException:  # noqa: BLE001 - a runtime bug: say so in the function's log, exit like Python
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)


# ---------------------------------------------------------------- the reaper (pid 1)


def _abandon(handler_pid: int, thaw: tuple[int, bytes] | None) -> None:
    """The keeper died (so did the zygote or the worker): take the environment down, frozen or not.

    A task frozen by the v1 freezer ignores SIGKILL until thawed, and nobody
    else is left to thaw it: kill everything, then thaw, then go.
    """
    targets = -1 if _config["tier"] == NAMESPACES else handler_pid  # -1: all of our pid namespace but us
    with contextlib.suppress(OSError):
        os.kill(targets, signal.SIGKILL)
    if thaw is not None:
        with contextlib.suppress(OSError):
            os.write(*thaw)
    os._exit(0)


def _reap_for(handler_pid: int, status_fd: int, thaw: tuple[int, bytes] | None, owner: tuple[int, int]) -> None:
    """Reap every orphan until the handler exits, then report its wait status and go.

    The handler's own children are not ours, so ``Popen.wait()`` in the handler
    still gets their status; orphans are, and never pile up as zombies.
    """
    signal.signal(signal.SIGTERM, lambda *_: _abandon(handler_pid, thaw))
    sandbox.drop_privileges(*owner)
    sandbox.prctl(sandbox.PR_SET_NO_NEW_PRIVS, 1)
    # The uid change cleared the parent-death signal; this one we handle, as pid 1 must.
    sandbox.prctl(sandbox.PR_SET_PDEATHSIG, signal.SIGTERM)
    while True:
        pid, status = os.wait()
        if pid == handler_pid:
            protocol.write_all(status_fd, str(status).encode())
            os._exit(0)


def _fork_handler(command: socket.socket, host_netns: int, tmp_mb: int | None) -> tuple[int, socket.socket]:
    link, handler_link = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    reaper_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        link.close()
        try:
            _run_handler(command, handler_link, host_netns, reaper_pid, tmp_mb)
        finally:
            os._exit(71)
    command.close()
    handler_link.close()
    os.close(host_netns)
    return pid, link


def _run_reaper(command: socket.socket, tmp_mb: int | None) -> None:
    """Pid 1 of a fresh pid namespace: forks the environment-to-be, then reaps for it."""
    sandbox.prctl(sandbox.PR_SET_PDEATHSIG, signal.SIGKILL)
    os.setsid()  # out of the worker's process group: its Ctrl-C never reaches a sandbox
    host_netns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    if _config["tier"] == NAMESPACES:
        sandbox.unshare(sandbox.SANDBOX_NAMESPACES)
        sandbox.drop_capability_bounding_set()  # for the handler too: it forks after
    else:
        sandbox.prctl(sandbox.PR_SET_CHILD_SUBREAPER, 1)  # no pid namespace: adopt the orphans ourselves
    handler_pid, link = _fork_handler(command, host_netns, tmp_mb)
    data, fds, _flags, _addr = socket.recv_fds(link, 1 << 10, 2)
    if not data:
        os._exit(0)  # retired, or the handler died before its spec: the namespace goes with us
    link.close()
    message = json.loads(data)
    thaw = (fds[1], message["thaw"].encode()) if len(fds) > 1 else None
    _reap_for(handler_pid, fds[0], thaw, (message["uid"], message["gid"]))


def _run_keeper(command: socket.socket, zygote_pid: int, tmp_mb: int | None) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    _die_with(zygote_pid)
    if _config["tier"] == NAMESPACES:
        sandbox.unshare(sandbox.CLONE_NEWPID)
    pid = os.fork()
    if pid == 0:
        try:
            _run_reaper(command, tmp_mb)
        finally:
            os._exit(71)
    command.send(json.dumps({"pid": pid}).encode())
    command.close()
    os.waitpid(pid, 0)
    os._exit(0)


# ---------------------------------------------------------------- the zygote


class Spares:
    """One pre-forked environment-to-be; refilled after every spawn."""

    def __init__(self, tmp_mb: int | None) -> None:
        self._zygote_pid = os.getpid()
        self._spare: socket.socket | None = None
        self.tmp_mb = tmp_mb  # the /tmp size the next spare prepares: the last one asked for

    def fill(self, control: socket.socket) -> socket.socket:
        """The spare's command socket, forking a new spare when there is none."""
        if self._spare is not None:
            return self._spare
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if os.fork() == 0:
            control.close()
            ours.close()
            try:
                _run_keeper(theirs, self._zygote_pid, self.tmp_mb)
            finally:
                os._exit(72)
        theirs.close()
        self._spare = ours
        return ours

    def retire(self) -> None:
        """Close the spare's command socket: it exits on EOF, and its keeper after it."""
        if self._spare is not None:
            self._spare.close()
            self._spare = None

    def hand_over(self, control: socket.socket, data: bytes, fds: list[int]) -> int:
        """Give the spec to the spare; returns its host pid. Retries once with a fresh spare."""
        self.tmp_mb = json.loads(data).get("tmp_mb", self.tmp_mb)
        for _attempt in range(2):
            spare, self._spare = self.fill(control), None
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
    data, fds, _flags, _addr = socket.recv_fds(control, 1 << 20, 4)
    if not data:
        spares.retire()
        _exit_after_keepers()
    try:
        reply: dict[str, object] = {"ok": True, "pid": spares.hand_over(control, data, fds)}
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


def _layer_modules(layers: list[str]) -> frozenset[str]:
    """Top-level names of the modules imported from layers (what a function's own copy must replace)."""
    prefixes = tuple(f"{layer}/" for layer in layers)
    names = set()
    for name, module in list(sys.modules.items()):
        if (getattr(module, "__file__", None) or "").startswith(prefixes):
            names.add(name.partition(".")[0])
    return frozenset(names)


def main(config: dict) -> None:
    _config.update(config)
    _die_with(config["worker_pid"])
    sys.path[1:1] = config["layers"]
    control = socket.socket(fileno=config["control_fd"])
    loaded = _preload(config["preload"])
    sandbox.warm()
    bootstrap.LAYER_MODULES = _layer_modules(config["layers"])
    signal.signal(signal.SIGCHLD, _reap)
    # Freeze everything imported so far: forked children then never touch these
    # objects' GC headers, which keeps their pages shared (smaller PSS per env).
    gc.freeze()
    spares = Spares((config.get("storage") or {}).get("tmp_mb"))
    spares.fill(control)
    control.send(json.dumps({"ok": True, "preloaded": loaded}).encode())
    while True:
        ready, _, _ = select.select([control], [], [], 5.0)
        if ready:
            _spawn(control, spares)
        _reap()
