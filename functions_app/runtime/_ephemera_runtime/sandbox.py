"""Isolation steps applied inside a forked environment, through raw libc calls.

Runs in the zygote's children as root until the uid drop. Stdlib only and no
package-relative imports (the zygote imports it as a top-level module).

Order matters and is the point of this file (zygote.py drives it):
  0. at start the zygote moves into a mount namespace of its own whose root
     holds the sandbox's paths (``enter_zygote_root``), the host's under /host;
  1. a zygote child (the "keeper") unshares the pid namespace and forks; only
     its child lives in the new pid namespace, as pid 1 (the reaper);
  2. that child unshares the mount, ipc, uts and (unless the function opts in)
     net namespaces and forks the handler process, which joins the
     environment's cgroups, then ``isolate``: a fresh root on a tmpfs,
     pivot_root, rlimits, the drop to the sandbox uid, no_new_privs and the
     seccomp filter. It then runs the bootstrap; every process the user's code
     forks inherits all of it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import resource
import struct

libc = ctypes.CDLL(None, use_errno=True)

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NAMESPACE_FLAGS = (
    CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
)

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2

# Syscall numbers per architecture, with the audit arch the filter checks first
# (a process could otherwise switch ABI to dodge a number-based denylist).
# fmt: off
_ARCHES = {
    "x86_64": {
        "audit": 0xC000003E,
        "pivot_root": 155,
        "socket": 41,
        "ioctl": 16,
        "clone": 56,
        "clone3": 435,
        "deny": {
            "ptrace": 101, "mount": 165, "umount2": 166, "pivot_root": 155, "unshare": 272, "setns": 308,
            "bpf": 321, "userfaultfd": 323, "keyctl": 250, "add_key": 248, "request_key": 249,
            "perf_event_open": 298, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
            "kexec_load": 246, "kexec_file_load": 320, "init_module": 175, "finit_module": 313,
            "delete_module": 176, "open_by_handle_at": 304, "reboot": 169, "swapon": 167, "swapoff": 168,
            "acct": 163, "chroot": 161, "fsopen": 430, "fsmount": 432, "move_mount": 429, "open_tree": 428,
        },
    },
    "aarch64": {
        "audit": 0xC00000B7,
        "pivot_root": 41,
        "socket": 198,
        "ioctl": 29,
        "clone": 220,
        "clone3": 435,
        "deny": {
            "ptrace": 117, "mount": 40, "umount2": 39, "pivot_root": 41, "unshare": 97, "setns": 268,
            "bpf": 280, "userfaultfd": 282, "keyctl": 219, "add_key": 217, "request_key": 218,
            "perf_event_open": 241, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
            "kexec_load": 104, "kexec_file_load": 294, "init_module": 105, "finit_module": 273,
            "delete_module": 106, "open_by_handle_at": 265, "reboot": 142, "swapon": 224, "swapoff": 225,
            "acct": 89, "chroot": 51, "fsopen": 430, "fsmount": 432, "move_mount": 429, "open_tree": 428,
        },
    },
}
# fmt: on
ARCH = _ARCHES.get(platform.machine())


class SandboxError(OSError):
    pass


def _check(result: int, what: str) -> int:
    if result == -1:
        err = ctypes.get_errno()
        raise SandboxError(err, f"{what}: {os.strerror(err)}")
    return result


def prctl(option: int, arg: int = 0) -> None:
    _check(libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), f"prctl({option})")


def unshare(flags: int) -> None:
    _check(libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(libc.setns(fd, nstype), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    args = [s.encode() if s is not None else None for s in (source, target, fstype)]
    _check(
        libc.mount(args[0], args[1], args[2], ctypes.c_ulong(flags), data.encode() if data else None),
        f"mount {target}",
    )


def umount(target: str) -> None:
    _check(libc.umount2(target.encode(), 0), f"umount {target}")


def bind_readonly(source: str, target: str) -> None:
    # A bind mount ignores MS_RDONLY on creation; read-only takes a second remount.
    mount(source, target, None, MS_BIND | MS_REC)
    mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


# ---------------------------------------------------------------- seccomp (hand-assembled classic BPF)

_LD_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_JSET = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_RET = 0x06  # BPF_RET | BPF_K
RET_ALLOW = 0x7FFF0000
RET_KILL_PROCESS = 0x80000000
_OFF_NR, _OFF_ARCH, _OFF_ARG0, _OFF_ARG1 = 0, 4, 16, 24  # struct seccomp_data, little-endian low words
TIOCSTI = 0x5412


def _errno(code: int) -> int:
    return 0x00050000 | code


def build_seccomp_filter(network: bool, arch: dict | None = ARCH) -> bytes:
    """The denylist as a packed sock_filter array; see module docstring for why each entry."""
    if arch is None:
        raise SandboxError(errno.ENOSYS, f"no seccomp table for {platform.machine()}")
    prog = [
        (_LD_ABS, 0, 0, _OFF_ARCH),
        (_JEQ, 1, 0, arch["audit"]),
        (_RET, 0, 0, RET_KILL_PROCESS),
        (_LD_ABS, 0, 0, _OFF_NR),
    ]
    if arch is _ARCHES["x86_64"]:
        # x32 syscalls share the arch value but have bit 30 set.
        prog += [(_JGE, 0, 1, 0x40000000), (_RET, 0, 0, _errno(errno.EPERM))]
    for nr in sorted(set(arch["deny"].values())):
        prog += [(_JEQ, 0, 1, nr), (_RET, 0, 0, _errno(errno.EPERM))]
    # clone3 passes flags in memory the filter cannot read: ENOSYS makes libc fall back to clone().
    prog += [(_JEQ, 0, 1, arch["clone3"]), (_RET, 0, 0, _errno(errno.ENOSYS))]
    # clone() with namespace flags would undo the unshare denial.
    prog += [
        (_JEQ, 0, 4, arch["clone"]),
        (_LD_ABS, 0, 0, _OFF_ARG0),
        (_JSET, 0, 1, NAMESPACE_FLAGS),
        (_RET, 0, 0, _errno(errno.EPERM)),
        (_RET, 0, 0, RET_ALLOW),
    ]
    # TIOCSTI pushes bytes into a terminal's input (CVE-2017-5226).
    prog += [
        (_JEQ, 0, 4, arch["ioctl"]),
        (_LD_ABS, 0, 0, _OFF_ARG1),
        (_JEQ, 0, 1, TIOCSTI),
        (_RET, 0, 0, _errno(errno.EPERM)),
        (_RET, 0, 0, RET_ALLOW),
    ]
    if not network:
        prog += [
            (_JEQ, 0, 4, arch["socket"]),
            (_LD_ABS, 0, 0, _OFF_ARG0),
            (_JEQ, 0, 1, 1),  # AF_UNIX
            (_RET, 0, 0, RET_ALLOW),
            (_RET, 0, 0, _errno(errno.EAFNOSUPPORT)),
        ]
    prog.append((_RET, 0, 0, RET_ALLOW))
    return b"".join(struct.pack("=HBBI", *insn) for insn in prog)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def load_seccomp(program: bytes) -> None:
    """Requires no_new_privs (or CAP_SYS_ADMIN); the filter is inherited by every descendant."""
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buf))
    _check(
        libc.prctl(PR_SET_SECCOMP, ctypes.c_ulong(SECCOMP_MODE_FILTER), ctypes.byref(fprog), 0, 0),
        "seccomp",
    )


# ---------------------------------------------------------------- filesystem

# Read-only host files that make DNS and TLS work when a function opts into the network.
# /etc/ssl/private is deliberately absent.
_ETC_FILES = ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf")
_ETC_DIRS = ("/etc/ssl/certs",)
_DEVICES = ("null", "zero", "urandom", "random")


def _touch(path: str) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))


def _write_identity(root: str, uid: int, gid: int) -> None:
    # Our own passwd/group, never the host's: libraries that look the user up
    # (getpass.getuser, pwd.getpwuid) work, and no host account is revealed.
    with open(f"{root}/etc/passwd", "w") as f:
        f.write(f"root:x:0:0:root:/root:/usr/sbin/nologin\nsbx_user:x:{uid}:{gid}::/tmp:/usr/sbin/nologin\n")
    with open(f"{root}/etc/group", "w") as f:
        f.write(f"root:x:0:\nsbx_user:x:{gid}:\n")


def _mirror_links(root: str) -> None:
    # Merged-/usr hosts link /bin, /lib… into /usr; the interpreter expects them.
    for link in ("bin", "lib", "lib64", "sbin"):
        if os.path.islink(f"/{link}"):
            os.symlink(os.readlink(f"/{link}"), f"{root}/{link}")


def _mount_tmp(root: str, spec: dict) -> None:
    """The function's private /tmp: its own ext4 (sized on disk, prepared by the reaper), else a tmpfs."""
    tmp = f"{root}/tmp"  # noqa: S108 - the path is inside the new root
    if spec.get("scratch"):
        mount(spec["scratch"], tmp, None, MS_MOVE)
    else:
        mount("tmpfs", tmp, "tmpfs", MS_NOSUID | MS_NODEV, f"size={spec['tmp_mb']}m,mode=1777")


def _populate_root(root: str, spec: dict) -> None:
    for d in ("usr", "proc", "dev", "tmp", "etc/ssl/certs", "var/task", "var/runtime"):
        os.makedirs(f"{root}/{d}", exist_ok=True)
    _mirror_links(root)
    bind_readonly("/usr", f"{root}/usr")
    _write_identity(root, spec["uid"], spec["gid"])
    for path in _ETC_FILES:
        if os.path.exists(path):
            _touch(root + path)
            bind_readonly(path, root + path)
    for path in _ETC_DIRS:
        if os.path.isdir(path):
            bind_readonly(path, root + path)
    bind_readonly(spec["code_dir"], f"{root}/var/task")
    bind_readonly(spec["runtime_dir"], f"{root}/var/runtime")
    _mount_tmp(root, spec)
    # Layers appear where the zygote imported them from (/opt/python…):
    # botocore finds its data files next to __file__.
    for layer in spec["layer_dirs"]:
        os.makedirs(root + layer, exist_ok=True)
        bind_readonly(layer, root + layer)
    for dev in _DEVICES:
        _touch(f"{root}/dev/{dev}")
        mount(f"/dev/{dev}", f"{root}/dev/{dev}", None, MS_BIND)
        mount(None, f"{root}/dev/{dev}", None, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NOEXEC)
    # A fresh procfs for the new pid namespace: only the sandbox's own processes.
    mount("proc", f"{root}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def enter_zygote_root(root: str, readonly: dict[str, str], writable: dict[str, str]) -> None:
    """Give the zygote the sandbox's own paths before it imports anything (once, at its start).

    A private mount namespace whose root is a small tmpfs at ``root``: /usr and
    /etc read-only, /dev, /proc and /sys as on the host, then ``readonly`` and
    ``writable`` ({path here: host path}), e.g. the runtime at /var/runtime and
    a layer at /opt/python; the host's own root stays reachable under /host.
    Modules imported afterwards keep these paths in ``__file__``, and so does
    every environment forked later; /rootfs and /scratch are mount points for
    the environments' roots and /tmp filesystems.
    """
    unshare(CLONE_NEWNS)
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    for d in ("host", "rootfs", "scratch"):
        os.makedirs(f"{root}/{d}")
    _mirror_links(root)
    for target, source in {"/usr": "/usr", "/etc": "/etc", **readonly}.items():
        os.makedirs(root + target, exist_ok=True)
        bind_readonly(source, root + target)
    for target, source in {"/dev": "/dev", "/proc": "/proc", "/sys": "/sys", **writable}.items():
        os.makedirs(root + target, exist_ok=True)
        mount(source, root + target, None, MS_BIND | MS_REC)
    os.chdir(root)
    _check(libc.syscall(ARCH["pivot_root"], b".", b"host"), "pivot_root")
    os.chdir("/")


def build_root(spec: dict) -> None:
    """Replace the filesystem view with a tmpfs root holding only what the function needs."""
    root = spec["rootfs_dir"]
    # Nothing we mount may propagate back to the host namespace.
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    _populate_root(root, spec)
    os.chdir(root)
    _check(libc.syscall(ARCH["pivot_root"], b".", b"."), "pivot_root")
    # The old root is now stacked under "."; detaching it removes every host path.
    _check(libc.umount2(b".", MNT_DETACH), "umount old root")
    os.chdir("/")
    mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


# ---------------------------------------------------------------- credentials and limits


def set_rlimits(spec: dict) -> None:
    mb = 1 << 20
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # Only /tmp is writable; this just stops one file from being the whole quota's worth of surprise.
    fsize = (spec["tmp_mb"] + 64) * mb
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    if spec.get("rlimit_nproc"):
        # No pids cgroup: NPROC counts every process of the uid host-wide, so
        # it is only a coarse, shared backstop against fork bombs.
        resource.setrlimit(resource.RLIMIT_NPROC, (spec["rlimit_nproc"], spec["rlimit_nproc"]))
    if spec.get("rlimit_as_mb"):
        # No cgroup: cap address space at what the forked zygote already maps
        # plus the function's memory. Coarse (it counts reservations), but a cap.
        with open("/proc/self/statm") as f:
            mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = mapped + spec["rlimit_as_mb"] * mb
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def drop_privileges(uid: int, gid: int) -> None:
    if os.geteuid() != 0:
        return
    os.setgroups([])
    os.setgid(gid)
    # setuid from root to non-root clears every capability (no SECBIT_KEEP_CAPS).
    os.setuid(uid)


def isolate(spec: dict) -> None:
    """Everything after the namespaces exist; runs as pid 1 of the new pid namespace."""
    if spec["tier"] == "namespaces":
        build_root(spec)
        libc.sethostname(b"ephemera", 8)
    set_rlimits(spec)
    drop_privileges(spec["uid"], spec["gid"])
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    if spec["tier"] == "namespaces":
        load_seccomp(build_seccomp_filter(spec["network"]))


def namespace_flags(network: bool) -> int:
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    return flags if network else flags | CLONE_NEWNET


# ---------------------------------------------------------------- probe for the doctor


def probe() -> dict:
    """Try each step in a throwaway child; run as `python3 -I -S sandbox.py`."""
    result = {"root": os.geteuid() == 0, "arch": platform.machine(), "seccomp_table": ARCH is not None}
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            unshare(namespace_flags(network=False))
        except OSError:
            code = 1
        if code == 0 and ARCH is not None:
            try:
                prctl(PR_SET_NO_NEW_PRIVS, 1)
                load_seccomp(build_seccomp_filter(network=False))
                import socket

                try:
                    socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    code = 3
                except OSError as exc:
                    code = 0 if exc.errno == errno.EAFNOSUPPORT else 4
            except OSError:
                code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    result["namespaces"] = code not in (1,)
    result["seccomp"] = code == 0
    return result


if __name__ == "__main__":
    import json
    import sys

    json.dump(probe(), sys.stdout)
