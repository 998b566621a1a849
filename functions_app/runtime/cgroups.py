"""One cgroup per environment, written straight to cgroupfs (no systemd here).

It limits memory and pids (required), CPU in proportion to memory, measures the
CPU used, and freezes the environment between invocations (each optional, as
the host has them).

v2 (unified, stock Debian 12 with systemd) is used when /sys/fs/cgroup lists the
memory controller: one directory, ``memory.max``, ``pids.max``, ``cpu.max``,
``cpu.stat`` and the core ``cgroup.freeze``. Otherwise v1 (the CI-like VM), one
hierarchy per controller: /sys/fs/cgroup/{memory,pids,cpu,cpuacct,freezer},
co-mounted ones (``cpu,cpuacct``) counted once. Environments are long-lived, so
a cgroup is created once per environment, not per invocation; rmdir can return
EBUSY while a pid namespace tears down, hence the retry loop.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from dataclasses import dataclass

CGROUP_ROOT = "/sys/fs/cgroup"
GROUP = "ephemera"
CPU_PERIOD_US = 100_000  # the kernel's default CFS period
_MIN_QUOTA_US = 1000  # the kernel refuses less
REQUIRED = ("memory", "pids")
OPTIONAL = ("cpu", "cpuacct", "freezer")  # v1 names; on v2, cpu.stat and cgroup.freeze are always there


@dataclass(frozen=True)
class Limits:
    memory_mb: int
    pids_max: int
    cpus: float | None  # vCPUs (a CFS quota); None = unlimited


@dataclass(frozen=True)
class Layout:
    """Where this host lets us put environments: the parent cgroup of each capability we can use."""

    version: str  # "v1" | "v2"
    parents: dict[str, str]  # capability (memory, pids, cpu, cpuacct, freezer) -> parent directory

    def has(self, capability: str) -> bool:
        return capability in self.parents

    def directories(self) -> list[str]:
        """Each distinct parent once (co-mounted v1 controllers, or v2's single tree)."""
        seen: dict[str, str] = {}
        for parent in self.parents.values():
            seen.setdefault(os.path.realpath(parent), parent)
        return list(seen.values())

    def prepare(self) -> Layout:
        """Create the parent cgroups; on v2, delegate our controllers to them."""
        for parent in self.directories():
            os.makedirs(parent, exist_ok=True)
        if self.version == "v2":
            parent = self.directories()[0]
            wanted = " ".join(f"+{c}" for c in ("memory", "pids", "cpu") if c in self.parents)
            for path in (os.path.dirname(parent), parent):
                # Already enabled, or the limits written later will say why not.
                with contextlib.suppress(OSError):
                    _write(f"{path}/cgroup.subtree_control", wanted)
        return self


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _v2_layout(root: str) -> Layout | None:
    try:
        controllers = _read(f"{root}/cgroup.controllers").split()
    except OSError:
        return None
    if not all(c in controllers for c in REQUIRED) or not os.access(root, os.W_OK):
        return None
    wanted = [c for c in ("memory", "pids", "cpu") if c in controllers]
    return Layout("v2", dict.fromkeys((*wanted, "cpuacct", "freezer"), f"{root}/{GROUP}"))


def _v1_layout(root: str) -> Layout | None:
    usable = [c for c in (*REQUIRED, *OPTIONAL) if os.access(f"{root}/{c}", os.W_OK)]
    if not all(c in usable for c in REQUIRED):
        return None
    return Layout("v1", {c: f"{root}/{c}/{GROUP}" for c in usable})


def detect_layout(root: str = CGROUP_ROOT) -> Layout | None:
    """The host's layout (nothing created yet), or None when memory and pids cannot both be written."""
    return _v2_layout(root) or _v1_layout(root)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_orphans(layout: Layout) -> int:
    """Remove cgroups left by a worker that died without cleaning up; returns how many.

    Names carry the owning worker's pid (``env-<pid>-<id>``), so a live
    worker's freshly created, still empty cgroup is never touched.
    """
    removed = 0
    for parent in layout.directories():
        if not os.path.isdir(parent):
            continue
        capabilities = [c for c, p in layout.parents.items() if os.path.realpath(p) == os.path.realpath(parent)]
        for name in os.listdir(parent):
            parts = name.split("-")
            if len(parts) != 3 or parts[0] != "env" or not parts[1].isdigit() or _pid_alive(int(parts[1])):
                continue
            with contextlib.suppress(OSError):
                if EnvCgroup.adopt(layout, dict.fromkeys(capabilities, os.path.join(parent, name))).remove(0.5):
                    removed += 1
    return removed


class EnvCgroup:
    """The cgroup(s) of one environment."""

    def __init__(self, layout: Layout, name: str, limits: Limits) -> None:
        self.layout = layout
        self.dirs: dict[str, str] = {}  # capability -> this environment's directory
        self._fds: dict[str, int] = {}  # files read or written on every call, kept open (1 us a use, not 12)
        made: dict[str, str] = {}
        try:
            for capability, parent in layout.parents.items():
                real = os.path.realpath(parent)
                if real not in made:
                    os.mkdir(f"{parent}/{name}")
                    made[real] = f"{parent}/{name}"
                self.dirs[capability] = made[real]
            self._set_limits(limits)
        except OSError:
            self.remove(timeout_s=0)
            raise

    @classmethod
    def adopt(cls, layout: Layout, dirs: dict[str, str]) -> EnvCgroup:
        """An existing cgroup (a dead worker's), to remove."""
        cgroup = cls.__new__(cls)
        cgroup.layout, cgroup.dirs, cgroup._fds = layout, dirs, {}
        return cgroup

    def _set_limits(self, limits: Limits) -> None:
        limit = limits.memory_mb << 20
        if self.layout.version == "v2":
            self._write("memory", "memory.max", str(limit))
            if "memory" in self.dirs and os.path.exists(f"{self.dirs['memory']}/memory.swap.max"):
                _write(f"{self.dirs['memory']}/memory.swap.max", "0")
            self._write("pids", "pids.max", str(limits.pids_max))
        else:
            self._write("memory", "memory.limit_in_bytes", str(limit))
            # memsw must be >= the memory limit and is absent without swap accounting.
            if "memory" in self.dirs and os.path.exists(f"{self.dirs['memory']}/memory.memsw.limit_in_bytes"):
                _write(f"{self.dirs['memory']}/memory.memsw.limit_in_bytes", str(limit))
            self._write("pids", "pids.max", str(limits.pids_max))
        if limits.cpus:
            self.set_cpus(limits.cpus)

    def _write(self, capability: str, name: str, value: str) -> None:
        if capability in self.dirs:
            _write(f"{self.dirs[capability]}/{name}", value)

    def set_cpus(self, cpus: float | None) -> None:
        """A CFS quota of ``cpus`` vCPUs per period (None: unlimited)."""
        quota = max(_MIN_QUOTA_US, round(CPU_PERIOD_US * cpus)) if cpus else None
        if self.layout.version == "v2":
            self._write("cpu", "cpu.max", f"{quota or 'max'} {CPU_PERIOD_US}")
        else:
            # A new v1 cgroup's period is already the kernel's default, CPU_PERIOD_US.
            self._write("cpu", "cpu.cfs_quota_us", str(quota or -1))

    @property
    def attach_files(self) -> list[str]:
        """What a process writes "0" to in order to join: per-thread `tasks` on v1 (fast path)."""
        name = "cgroup.procs" if self.layout.version == "v2" else "tasks"
        return [f"{d}/{name}" for d in self._distinct()]

    @property
    def procs_files(self) -> list[str]:
        return [f"{d}/cgroup.procs" for d in self._distinct()]

    def _distinct(self) -> list[str]:
        return list(dict.fromkeys(self.dirs.values()))

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.procs_files:
            with contextlib.suppress(OSError):
                found.update(int(p) for p in _read(path).split())
        return found

    # ------------------------------------------------------------ freezing and metering

    @property
    def can_freeze(self) -> bool:
        return "freezer" in self.dirs

    @property
    def thaw_file(self) -> tuple[str, str] | None:
        """(path, value) that thaws the environment: its reaper keeps it open for when the worker dies."""
        if not self.can_freeze:
            return None
        if self.layout.version == "v2":
            return f"{self.dirs['freezer']}/cgroup.freeze", "0"
        return f"{self.dirs['freezer']}/freezer.state", "THAWED"

    def _hot(self, path: str, flags: int) -> int:
        fd = self._fds.get(path)
        if fd is None:
            # O_CREAT as open(path, "w") has: a no-op on cgroupfs, where the file always exists.
            create = os.O_CREAT if flags & os.O_WRONLY else 0
            fd = os.open(path, flags | create | os.O_CLOEXEC, 0o644)
            kept = self._fds.setdefault(path, fd)  # a killing thread may have opened it meanwhile
            if kept != fd:
                os.close(fd)
            fd = kept
        return fd

    def freeze(self) -> None:
        """Stop every process at once; the kernel finishes freezing them asynchronously (microseconds).

        On v1 a frozen task does not even die of SIGKILL until thawed (see kill_all).
        """
        if self.thaw_file is not None:  # the environment can be frozen
            path = self.thaw_file[0]
            os.pwrite(self._hot(path, os.O_WRONLY), b"1" if self.layout.version == "v2" else b"FROZEN", 0)

    def thaw(self) -> None:
        if self.thaw_file is not None:  # the environment can be frozen
            path, value = self.thaw_file
            os.pwrite(self._hot(path, os.O_WRONLY), value.encode(), 0)

    def cpu_usage_ns(self) -> int | None:
        """CPU time used by every process of the environment so far; None where not measured."""
        if "cpuacct" not in self.dirs:
            return None
        name = "cpuacct.usage" if self.layout.version == "v1" else "cpu.stat"
        try:
            text = os.pread(self._hot(f"{self.dirs['cpuacct']}/{name}", os.O_RDONLY), 4096, 0).decode()
            if self.layout.version == "v1":
                return int(text)
            for line in text.splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) * 1000
        except (OSError, ValueError):
            pass
        return None

    def reset_peak(self) -> None:
        # v1 lets us reset the high-water mark per invocation; v2's memory.peak
        # is per-open-file on new kernels, so we leave it cumulative there.
        if self.layout.version == "v1" and "memory" in self.dirs:
            with contextlib.suppress(OSError):
                os.pwrite(self._hot(f"{self.dirs['memory']}/memory.max_usage_in_bytes", os.O_RDWR), b"0", 0)

    def peak_bytes(self) -> int:
        if "memory" not in self.dirs:
            return 0
        if self.layout.version == "v2":
            path, flags = f"{self.dirs['memory']}/memory.peak", os.O_RDONLY
        else:
            path, flags = f"{self.dirs['memory']}/memory.max_usage_in_bytes", os.O_RDWR
        try:
            return int(os.pread(self._hot(path, flags), 64, 0))
        except (OSError, ValueError):
            return 0

    def oom_kills(self) -> int:
        if "memory" not in self.dirs:
            return 0
        name = "memory.events" if self.layout.version == "v2" else "memory.oom_control"
        try:
            text = os.pread(self._hot(f"{self.dirs['memory']}/{name}", os.O_RDONLY), 4096, 0).decode()
            for line in text.splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    # ------------------------------------------------------------ teardown

    def kill_all(self) -> None:
        """SIGKILL every process, then thaw: a frozen v1 task only dies once thawed."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.can_freeze:
            with contextlib.suppress(OSError):
                self.thaw()

    def remove(self, timeout_s: float = 2.0) -> bool:
        """Kill what is left and rmdir; False if still busy after timeout_s."""
        deadline = time.monotonic() + timeout_s
        remaining = dict(self.dirs)
        while remaining:
            self.kill_all()
            for capability, d in list(remaining.items()):
                try:
                    os.rmdir(d)
                    remaining.pop(capability)
                except FileNotFoundError:
                    remaining.pop(capability)
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        raise
            if remaining and time.monotonic() > deadline:
                self.dirs = remaining
                return False
            if remaining:
                time.sleep(0.01)
        self.dirs = {}
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}
        return True
