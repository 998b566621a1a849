"""Ephemeral storage: each environment's /tmp is an ext4 filesystem of its own on a loop device.

Lambda's /tmp is disk, sized apart from memory. A tmpfs would charge every byte
to the memory cgroup, and this kernel has no ext4/XFS project quotas (no
CONFIG_QFMT_V2, no CONFIG_XFS_QUOTA), so the size is enforced the plain way: a
filesystem exactly ``tmp_mb`` large. Writing past it fails with ENOSPC; its page
cache is reclaimable (written back through the loop device with direct I/O), so
it never ends in an OOM kill.

The worker formats one sparse template per size (mkfs.ext4, once). Making an
environment's filesystem costs no subprocess: copy the template's few hundred
KB of metadata into a new sparse file, attach it to a free loop device with
AUTOCLEAR, unlink the file, mount. From then on the mount alone holds the
device, and the device alone holds the file: when the environment's mount
namespace dies, the kernel unmounts, detaches and frees every block. Nothing is
left on disk, even after a crash.

Runs as root in the reaper, before the environment's spec arrives (off the cold
start's critical path) for the size the last environment used.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import struct

from . import sandbox

LOOP_MAJOR = 7
LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_AUTOCLEAR = 4
LO_FLAGS_DIRECT_IO = 16
# struct loop_config: fd, block_size, struct loop_info64 (lo_flags is its 9th field), 64 reserved bytes.
_LOOP_CONFIG = struct.Struct("=II QQQQQ IIII 64s64s32s 16s 64s")


def copy_sparse(src: str, dst: str) -> None:
    """Copy only the data extents of ``src`` (mkfs writes a few hundred KB of a sparse image)."""
    fin = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fin).st_size
            offset = 0
            while offset < size:
                try:
                    start = os.lseek(fin, offset, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:  # only a hole remains
                        break
                    raise
                offset = os.lseek(fin, start, os.SEEK_HOLE)
                position = start
                while position < offset:
                    position += os.copy_file_range(fin, fout, offset - position, position, position)
            os.ftruncate(fout, size)
        finally:
            os.close(fout)
    finally:
        os.close(fin)


def _configure(device_fd: int, image_fd: int) -> None:
    flags = LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO
    config = _LOOP_CONFIG.pack(image_fd, 0, 0, 0, 0, 0, 0, 0, 0, 0, flags, b"", b"", b"", b"", b"")
    fcntl.ioctl(device_fd, LOOP_CONFIGURE, config)


def _open_device(device: str, number: int) -> int:
    try:
        return os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        # A container's /dev holds only the nodes it was given, while the kernel's loop devices are the
        # host's: make this one (CAP_MKNOD, and a device cgroup rule for block major 7).
        with contextlib.suppress(FileExistsError):
            os.mknod(device, 0o660 | stat.S_IFBLK, os.makedev(LOOP_MAJOR, number))
        return os.open(device, os.O_RDWR | os.O_CLOEXEC)


def attach(image: str, attempts: int = 8) -> tuple[int, str]:
    """Bind ``image`` to a free loop device; returns (an open fd on it, its path)."""
    image_fd = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    try:
        for _ in range(attempts):
            control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
            try:
                number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
            finally:
                os.close(control)
            device = f"/dev/loop{number}"
            device_fd = _open_device(device, number)
            try:
                _configure(device_fd, image_fd)
                return device_fd, device
            except OSError as exc:
                os.close(device_fd)
                if exc.errno != errno.EBUSY:  # another process took the device between the two calls
                    raise
        raise sandbox.SandboxError(errno.EBUSY, "no free loop device")
    finally:
        os.close(image_fd)


def mount_scratch(template: str, image_dir: str, target: str) -> None:
    """A fresh filesystem from ``template`` at ``target``, without lost+found (its owner is set for the tenant)."""
    image = f"{image_dir}/{os.urandom(8).hex()}.img"
    copy_sparse(template, image)
    try:
        device_fd, device = attach(image)
    finally:
        os.unlink(image)  # the loop device keeps the file; its blocks go with the device
    try:
        flags = sandbox.MS_NOSUID | sandbox.MS_NODEV
        # noinit_itable: no background zeroing of inode tables in a filesystem this short-lived.
        sandbox.mount(device, target, "ext4", flags, "noinit_itable")
    finally:
        os.close(device_fd)  # AUTOCLEAR: from now on the mount alone holds the device
    os.rmdir(f"{target}/lost+found")


def unmount_scratch(target: str) -> None:
    sandbox.umount(target)


def template_path(storage_dir: str, tmp_mb: int) -> str:
    """Where the worker keeps the formatted, empty image of one size."""
    return f"{storage_dir}/templates/{tmp_mb}.img"


def images_dir(storage_dir: str) -> str:
    """Where an environment's image lives for the few microseconds between its copy and its unlink."""
    return f"{storage_dir}/images"
