"""Ephemeral storage, the worker's half: one formatted ext4 template per /tmp size (see _ephemera_runtime/loopfs.py).

The executor keeps them under ``<work_dir>/storage-<worker pid>``, removed at shutdown; a dead worker's are
removed by the next executor that starts there. Environments' own images never outlive their mount.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading

from ._ephemera_runtime import loopfs
from .cgroups import _pid_alive

MKFS = "mkfs.ext4"
_PREFIX = "storage-"


def storage_support() -> list[str]:
    """Why this host cannot give each environment a /tmp filesystem of its own (empty: it can)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("not root")
    if not os.path.exists("/dev/loop-control"):
        missing.append("no loop devices (/dev/loop-control)")
    if shutil.which(MKFS) is None:
        missing.append(f"no {MKFS}")
    try:
        with open("/proc/filesystems") as f:
            if "ext4" not in f.read().split():
                missing.append("no ext4 in the kernel")
    except OSError:
        missing.append("no /proc/filesystems")
    return missing


def sweep_orphans(work_dir: str) -> None:
    """Remove the templates of workers that died without shutting down."""
    with contextlib.suppress(OSError):
        for name in os.listdir(work_dir):
            pid = name.removeprefix(_PREFIX)
            if name.startswith(_PREFIX) and pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(os.path.join(work_dir, name), ignore_errors=True)


class Templates:
    """Sparse, empty ext4 images, one per /tmp size, each made once with mkfs.ext4 (its only subprocess)."""

    def __init__(self, work_dir: str) -> None:
        self.root = os.path.join(work_dir, f"{_PREFIX}{os.getpid()}")
        for path in (os.path.dirname(loopfs.template_path(self.root, 0)), loopfs.images_dir(self.root)):
            os.makedirs(path, mode=0o700, exist_ok=True)
        self._made: set[int] = set()
        self._lock = threading.Lock()

    def ensure(self, tmp_mb: int) -> None:
        """Make the template for ``tmp_mb`` unless it exists; OSError if mkfs fails."""
        if tmp_mb in self._made:
            return
        with self._lock:
            if tmp_mb not in self._made:
                self._make(tmp_mb)
                self._made.add(tmp_mb)

    def _make(self, tmp_mb: int) -> None:
        path = loopfs.template_path(self.root, tmp_mb)
        partial = f"{path}.partial"
        with open(partial, "wb") as f:
            f.truncate(tmp_mb << 20)
        # No journal (nothing here survives a crash anyway) and lazy inode tables: a few hundred KB are written.
        command = [MKFS, "-q", "-F", "-O", "^has_journal", "-E", "lazy_itable_init=1,nodiscard", "-m", "0", partial]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            os.unlink(partial)
            raise OSError(f"{MKFS} failed for {tmp_mb} MB: {done.stderr.strip()}")
        os.replace(partial, path)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
