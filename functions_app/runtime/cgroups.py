"""One memory+pids cgroup per environment, written straight to cgroupfs (no systemd here).

v2 (unified, stock Debian 12 with systemd) is used when /sys/fs/cgroup lists the
memory controller; otherwise v1 (the CI-like VM: /sys/fs/cgroup/{memory,pids}).
Environments are long-lived, so a cgroup is created once per environment, not
per invocation; rmdir can return EBUSY while a pid namespace tears down, hence
the retry loop.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time

CGROUP_ROOT = "/sys/fs/cgroup"
GROUP = "ephemera"


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def detect_version(root: str = CGROUP_ROOT) -> str | None:
    """'v2', 'v1' or None when neither memory nor pids can be written."""
    try:
        controllers = _read(f"{root}/cgroup.controllers").split()
        if "memory" in controllers and "pids" in controllers and os.access(root, os.W_OK):
            return "v2"
    except OSError:
        pass
    if all(os.access(f"{root}/{c}", os.W_OK) for c in ("memory", "pids")):
        return "v1"
    return None


def _ensure_parent(version: str, root: str) -> list[str]:
    if version == "v2":
        parent = f"{root}/{GROUP}"
        os.makedirs(parent, exist_ok=True)
        for path in (root, parent):
            # Already enabled, or the limits written below will say why not.
            with contextlib.suppress(OSError):
                _write(f"{path}/cgroup.subtree_control", "+memory +pids")
        return [parent]
    parents = [f"{root}/memory/{GROUP}", f"{root}/pids/{GROUP}"]
    for parent in parents:
        os.makedirs(parent, exist_ok=True)
    return parents


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_orphans(version: str, root: str = CGROUP_ROOT) -> int:
    """Remove cgroups left by a worker that died without cleaning up; returns how many.

    Names carry the owning worker's pid (``env-<pid>-<id>``), so a live
    worker's freshly created, still empty cgroup is never touched.
    """
    removed = 0
    for parent in _ensure_parent(version, root):
        for name in os.listdir(parent):
            parts = name.split("-")
            if len(parts) != 3 or parts[0] != "env" or not parts[1].isdigit() or _pid_alive(int(parts[1])):
                continue
            with contextlib.suppress(OSError):
                cgroup = EnvCgroup.__new__(EnvCgroup)
                cgroup.version, cgroup.dirs = version, [os.path.join(parent, name)]
                if cgroup.remove(timeout_s=0.5):
                    removed += 1
    return removed


class EnvCgroup:
    """The cgroup(s) of one environment."""

    def __init__(self, version: str, name: str, memory_mb: int, pids_max: int, root: str = CGROUP_ROOT) -> None:
        self.version = version
        self.dirs = [f"{parent}/{name}" for parent in _ensure_parent(version, root)]
        for d in self.dirs:
            os.mkdir(d)
        try:
            self._set_limits(memory_mb << 20, pids_max)
        except OSError:
            self.remove()
            raise

    def _set_limits(self, limit: int, pids_max: int) -> None:
        if self.version == "v2":
            d = self.dirs[0]
            _write(f"{d}/memory.max", str(limit))
            if os.path.exists(f"{d}/memory.swap.max"):
                _write(f"{d}/memory.swap.max", "0")
            _write(f"{d}/pids.max", str(pids_max))
            return
        mem, pids = self.dirs
        _write(f"{mem}/memory.limit_in_bytes", str(limit))
        # memsw must be >= the memory limit and is absent without swap accounting.
        if os.path.exists(f"{mem}/memory.memsw.limit_in_bytes"):
            _write(f"{mem}/memory.memsw.limit_in_bytes", str(limit))
        _write(f"{pids}/pids.max", str(pids_max))

    @property
    def attach_files(self) -> list[str]:
        """What a process writes "0" to in order to join: per-thread `tasks` on v1 (fast path)."""
        name = "cgroup.procs" if self.version == "v2" else "tasks"
        return [f"{d}/{name}" for d in self.dirs]

    @property
    def procs_files(self) -> list[str]:
        return [f"{d}/cgroup.procs" for d in self.dirs]

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.procs_files:
            with contextlib.suppress(OSError):
                found.update(int(p) for p in _read(path).split())
        return found

    def reset_peak(self) -> None:
        # v1 lets us reset the high-water mark per invocation; v2's memory.peak
        # is per-open-file on new kernels, so we leave it cumulative there.
        if self.version == "v1":
            with contextlib.suppress(OSError):
                _write(f"{self.dirs[0]}/memory.max_usage_in_bytes", "0")

    def peak_bytes(self) -> int:
        name = "memory.peak" if self.version == "v2" else "memory.max_usage_in_bytes"
        try:
            return int(_read(f"{self.dirs[0]}/{name}"))
        except (OSError, ValueError):
            return 0

    def oom_kills(self) -> int:
        name = "memory.events" if self.version == "v2" else "memory.oom_control"
        try:
            for line in _read(f"{self.dirs[0]}/{name}").splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def kill_all(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def remove(self, timeout_s: float = 2.0) -> bool:
        """Kill what is left and rmdir; False if still busy after timeout_s."""
        deadline = time.monotonic() + timeout_s
        remaining = list(self.dirs)
        while remaining:
            self.kill_all()
            for d in list(remaining):
                try:
                    os.rmdir(d)
                    remaining.remove(d)
                except FileNotFoundError:
                    remaining.remove(d)
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        raise
            if remaining and time.monotonic() > deadline:
                self.dirs = remaining
                return False
            if remaining:
                time.sleep(0.01)
        self.dirs = []
        return True
