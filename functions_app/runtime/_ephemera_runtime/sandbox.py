"""Isolation steps applied inside a forked environment, through raw libc calls.

Runs in the zygote's children as root until the uid drop. Stdlib only.

Order matters and is the point of this file (zygote.py drives it):
  0. at start the zygote moves into a mount namespace of its own whose root
     holds the sandbox's paths (``enter_zygote_root``: a minimal /usr, the
     runtime, layers), the host's under /host;
  1. a zygote child (the "keeper") unshares the pid namespace and forks; only
     its child lives in the new pid namespace, as pid 1 (the reaper);
  2. that child unshares the mount, ipc, uts and net namespaces (a network
     namespace of its own for every environment: no host loopback, no host
     abstract sockets, no host interfaces) and forks the handler process. The
     handler gives its namespace a link to the worker's when the function opts
     into the network (netlink.connect), joins the environment's cgroups, then
     ``isolate``: a fresh root on a tmpfs, pivot_root, rlimits, an empty
     capability bounding set, the drop to the tenant's uid, no_new_privs and
     the seccomp allowlist. It then runs the bootstrap; every process the
     user's code forks inherits all of it.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
import resource
import struct

from . import syscalls

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
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
# SECBIT_NOROOT, SECBIT_NO_SETUID_FIXUP (off), SECBIT_KEEP_CAPS (off) and SECBIT_NO_CAP_AMBIENT_RAISE, all locked.
SECURE_BITS = 0x01 | 0x02 | 0x08 | 0x20 | 0x40 | 0x80
SECCOMP_MODE_FILTER = 2

# What an environment may call: CPython, its stdlib and common C extensions
# (numeric, crypto, database drivers), with glibc's fallbacks. Four take
# arguments into account (build_seccomp_filter). DENIED answers EPERM, as a
# clear refusal; anything else unknown answers ENOSYS, which makes libc fall
# back (clone3 to clone, for one) and keeps new kernels' syscalls out.
# fmt: off
ALLOWED = (
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2", "open",
    "openat", "openat2", "creat", "close", "close_range", "lseek", "stat", "fstat", "lstat", "newfstatat", "statx",
    "statfs", "fstatfs", "access", "faccessat", "faccessat2", "readlink", "readlinkat", "getdents", "getdents64",
    "getcwd", "chdir", "fchdir", "mkdir", "mkdirat", "rmdir", "rename", "renameat", "renameat2", "link", "linkat",
    "unlink", "unlinkat", "symlink", "symlinkat", "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown",
    "lchown", "fchownat", "umask", "truncate", "ftruncate", "fallocate", "fsync", "fdatasync", "sync", "syncfs",
    "sync_file_range", "utime", "utimes", "futimesat", "utimensat", "mknod", "mknodat", "getxattr", "lgetxattr",
    "fgetxattr", "listxattr", "llistxattr", "flistxattr", "setxattr", "lsetxattr", "fsetxattr", "removexattr",
    "lremovexattr", "fremovexattr", "dup", "dup2", "dup3", "pipe", "pipe2", "fcntl", "flock", "ioctl", "splice", "tee",
    "vmsplice", "copy_file_range", "sendfile", "readahead", "fadvise64", "mmap", "munmap", "mprotect", "mremap",
    "msync", "mincore", "madvise", "brk", "mlock", "mlock2", "munlock", "mlockall", "munlockall", "memfd_create",
    "pkey_mprotect", "pkey_alloc", "pkey_free", "membarrier", "mseal", "map_shadow_stack", "poll", "ppoll", "select",
    "pselect6", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "eventfd",
    "eventfd2", "signalfd", "signalfd4", "timerfd_create", "timerfd_settime", "timerfd_gettime", "inotify_init",
    "inotify_init1", "inotify_add_watch", "inotify_rm_watch", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn",
    "rt_sigpending", "rt_sigtimedwait", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "rt_sigsuspend", "sigaltstack", "kill",
    "tkill", "tgkill", "pause", "alarm", "getitimer", "setitimer", "nanosleep", "clock_nanosleep", "clock_gettime",
    "clock_getres", "gettimeofday", "time", "timer_create", "timer_settime", "timer_gettime", "timer_getoverrun",
    "timer_delete", "fork", "vfork", "clone", "execve", "execveat", "exit", "exit_group", "wait4", "waitid",
    "pidfd_open", "pidfd_send_signal", "getpid", "getppid", "gettid", "getpgid", "setpgid", "getpgrp", "getsid",
    "setsid", "getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid", "getgroups", "setuid", "setgid",
    "setreuid", "setregid", "setresuid", "setresgid", "setfsuid", "setfsgid", "setgroups", "capget", "capset",
    "getrlimit", "setrlimit", "prlimit64", "getrusage", "times", "sysinfo", "uname", "getpriority", "setpriority",
    "ioprio_get", "ioprio_set", "sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getparam",
    "sched_setparam", "sched_getscheduler", "sched_setscheduler", "sched_get_priority_max", "sched_get_priority_min",
    "sched_rr_get_interval", "sched_getattr", "sched_setattr", "getcpu", "futex", "futex_waitv", "futex_wake",
    "futex_wait", "futex_requeue", "set_robust_list", "get_robust_list", "set_tid_address", "arch_prctl", "prctl",
    "rseq", "restart_syscall", "getrandom", "seccomp", "landlock_create_ruleset", "landlock_add_rule",
    "landlock_restrict_self", "socket", "socketpair", "connect", "accept", "accept4", "bind", "listen", "getsockname",
    "getpeername", "sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "shutdown", "setsockopt",
    "getsockopt", "shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semtimedop", "semctl", "msgget", "msgsnd",
    "msgrcv", "msgctl", "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr",
    "io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents", "io_pgetevents", "cachestat",
)
# Each is a known way to reach other processes, the kernel's administration or a large attack surface.
DENIED = (
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp", "mount", "umount2", "pivot_root",
    "chroot", "unshare", "setns", "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
    "bpf", "userfaultfd", "perf_event_open", "keyctl", "add_key", "request_key", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "open_by_handle_at", "name_to_handle_at", "reboot", "swapon", "swapoff", "acct", "personality", "modify_ldt",
    "iopl", "ioperm", "quotactl", "syslog", "vhangup", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "sethostname", "setdomainname", "mbind", "set_mempolicy", "get_mempolicy", "migrate_pages", "move_pages",
    "set_mempolicy_home_node", "lookup_dcookie", "fanotify_init", "fanotify_mark", "process_madvise", "memfd_secret",
    "uselib", "ustat", "sysfs", "_sysctl",
)
# fmt: on
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
MACHINE = platform.machine() if platform.machine() in _AUDIT_ARCH else None


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
_OFF_NR, _OFF_ARCH, _OFF_ARG0, _OFF_ARG1, _OFF_ARG2 = 0, 4, 16, 24, 32  # struct seccomp_data, little-endian low words
TIOCSTI = 0x5412  # pushes bytes into a terminal's input (CVE-2017-5226)
TIOCLINUX = 0x541C  # the same through the Linux console's selection
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, NETLINK_ROUTE = 1, 2, 10, 16, 0


def _errno(code: int) -> int:
    return 0x00050000 | code


def _ret(action: int) -> list[tuple]:
    return [(_RET, 0, 0, action)]


def _arg_check(offset: int, allowed: tuple[int, ...], refusal: int) -> list[tuple]:
    """Allow when the argument at ``offset`` is one of ``allowed``, else ``refusal``."""
    block = [(_LD_ABS, 0, 0, offset)]
    for value in allowed:
        block += [(_JEQ, 0, 1, value), *_ret(RET_ALLOW)]
    return [*block, *_ret(refusal)]


def _socket_check(network: bool) -> list[tuple]:
    """AF_UNIX, route netlink (own namespace only), and AF_INET/AF_INET6 with the network: no vsock, no packet."""
    families = (AF_UNIX, AF_INET, AF_INET6) if network else (AF_UNIX,)
    block = _arg_check(_OFF_ARG0, families, _errno(errno.EAFNOSUPPORT))[:-1]
    return [
        *block,
        (_JEQ, 0, 3, AF_NETLINK),
        (_LD_ABS, 0, 0, _OFF_ARG2),
        (_JEQ, 0, 1, NETLINK_ROUTE),
        *_ret(RET_ALLOW),
        *_ret(_errno(errno.EAFNOSUPPORT)),
    ]


def _actions(numbers: dict[str, int], network: bool) -> dict[int, tuple]:
    """What each listed syscall number gets, as a block of instructions; anything else gets ENOSYS."""
    actions = {numbers[name]: tuple(_ret(RET_ALLOW)) for name in ALLOWED if name in numbers}
    actions.update({numbers[name]: tuple(_ret(_errno(errno.EPERM))) for name in DENIED if name in numbers})
    # clone() with namespace flags would undo the unshare denial (clone3 hides its flags: ENOSYS, libc falls back).
    clone = [(_LD_ABS, 0, 0, _OFF_ARG0), (_JSET, 0, 1, NAMESPACE_FLAGS), *_ret(_errno(errno.EPERM)), *_ret(RET_ALLOW)]
    ioctl = [(_LD_ABS, 0, 0, _OFF_ARG1), (_JEQ, 1, 0, TIOCSTI), (_JEQ, 0, 1, TIOCLINUX)]
    ioctl += [*_ret(_errno(errno.EPERM)), *_ret(RET_ALLOW)]
    actions[numbers["clone"]] = tuple(clone)
    actions[numbers["ioctl"]] = tuple(ioctl)
    actions[numbers["socket"]] = tuple(_socket_check(network))
    actions[numbers["socketpair"]] = tuple(_arg_check(_OFF_ARG0, (AF_UNIX,), _errno(errno.EAFNOSUPPORT)))
    return actions


def _ranges(actions: dict[int, tuple]) -> list[tuple[int, tuple]]:
    """(first number, block) for each run of numbers with the same block; from 0 up, ENOSYS past the last."""
    unknown = tuple(_ret(_errno(errno.ENOSYS)))
    ranges: list[tuple[int, tuple]] = []
    for number in range(max(actions) + 2):
        block = actions.get(number, unknown)
        if not ranges or ranges[-1][1] != block:
            ranges.append((number, block))
    return ranges


def _tree(ranges: list[tuple[int, tuple]]) -> list[tuple]:
    """A balanced search over the ranges: a handful of comparisons per syscall, whatever its number."""
    if len(ranges) == 1:
        return list(ranges[0][1])
    middle = len(ranges) // 2
    above, below = _tree(ranges[middle:]), _tree(ranges[:middle])
    if len(above) > 255:
        raise SandboxError(errno.E2BIG, "seccomp tree too deep for an 8-bit jump")
    return [(_JGE, 0, len(above), ranges[middle][0]), *above, *below]


@functools.cache
def build_seccomp_filter(network: bool, machine: str | None = MACHINE) -> bytes:
    """The allowlist (ALLOWED, with argument checks on four syscalls) as a packed sock_filter array.

    Cached: the zygote builds both before it forks anything (``warm``), so no environment pays for it.
    """
    if machine is None:
        raise SandboxError(errno.ENOSYS, f"no seccomp table for {platform.machine()}")
    prog = [
        (_LD_ABS, 0, 0, _OFF_ARCH),
        (_JEQ, 1, 0, _AUDIT_ARCH[machine]),  # another ABI would bring other syscall numbers
        *_ret(RET_KILL_PROCESS),
        (_LD_ABS, 0, 0, _OFF_NR),
    ]
    if machine == "x86_64":
        # x32 syscalls share the arch value but have bit 30 set.
        prog += [(_JGE, 0, 1, 0x40000000), *_ret(_errno(errno.EPERM))]
    prog += _tree(_ranges(_actions(syscalls.NUMBERS[machine], network)))
    return b"".join(struct.pack("=HBBI", *insn) for insn in prog)


def warm() -> None:
    """Build what every environment needs before the zygote forks: the filters."""
    if MACHINE is not None:
        build_seccomp_filter(network=False)
        build_seccomp_filter(network=True)


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

# The minimal runtime root. The zygote's /usr holds only the interpreter, its
# stdlib, the shared libraries, TLS roots and time zones, and a few basic tools
# (/bin/sh for subprocess(shell=True) and os.system): no /usr/local, no
# compilers, no other host programs. Every environment's /usr is a read-only
# copy of that tree.
_BASIC_TOOLS = ("python3", "sh", "env", "echo", "cat", "sleep", "true", "false", "ls", "mkdir", "rm", "cp", "mv")
RUNTIME_TOOLS = (*_BASIC_TOOLS, "uname", "ldconfig")  # ldconfig -p: ctypes.util.find_library
_USR_DIRS = ("lib/ssl", "lib/locale/C.utf8", "share/zoneinfo", "share/ca-certificates", "lib64")
# Generated by the zygote into its own root (never the host's /etc), then bound into each environment.
SANDBOX_ETC = "/sandbox-etc"
_ETC_FILES = ("resolv.conf", "hosts", "nsswitch.conf", "ld.so.cache")
_ETC_DIRS = ("/etc/ssl/certs",)  # /etc/ssl/private is deliberately absent
_DEVICES = ("null", "zero", "urandom", "random")


def _touch(path: str) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _write_identity(root: str, uid: int, gid: int) -> None:
    # Our own passwd/group, never the host's: libraries that look the user up
    # (getpass.getuser, pwd.getpwuid) work, and no host account is revealed.
    _write(
        f"{root}/etc/passwd",
        f"root:x:0:0:root:/root:/usr/sbin/nologin\nsbx_user:x:{uid}:{gid}::/tmp:/usr/sbin/nologin\n",
    )
    _write(f"{root}/etc/group", f"root:x:0:\nsbx_user:x:{gid}:\n")


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


def _mount_devices(root: str, spec: dict) -> None:
    for dev in _DEVICES:
        _touch(f"{root}/dev/{dev}")
        mount(f"/dev/{dev}", f"{root}/dev/{dev}", None, MS_BIND)
        mount(None, f"{root}/dev/{dev}", None, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NOEXEC)
    # POSIX semaphores and shared memory (multiprocessing); its pages count against the memory cgroup.
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    shm = f"{root}/dev/shm"  # noqa: S108 - the path is inside the new root
    mount("tmpfs", shm, "tmpfs", flags, f"size={spec.get('shm_mb', 64)}m,mode=1777")


def _populate_root(root: str, spec: dict) -> None:
    for d in ("usr", "proc", "dev/shm", "tmp", "etc/ssl/certs", "var/task", "var/runtime"):
        os.makedirs(f"{root}/{d}", exist_ok=True)
    _mirror_links(root)
    bind_readonly("/usr", f"{root}/usr")
    _write_identity(root, spec["uid"], spec["gid"])
    for name in _ETC_FILES:
        if os.path.exists(f"{SANDBOX_ETC}/{name}"):
            _touch(f"{root}/etc/{name}")
            bind_readonly(f"{SANDBOX_ETC}/{name}", f"{root}/etc/{name}")
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
    _mount_devices(root, spec)
    # A fresh procfs for the new pid namespace: only the sandbox's own processes.
    mount("proc", f"{root}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def runtime_usr() -> tuple[dict[str, str], dict[str, str]]:
    """What the minimal /usr holds, from the host's: ({path: host path} to bind, {path: symlink target})."""
    binds, links = {}, {}
    for tool in RUNTIME_TOOLS:
        for directory in ("/usr/bin", "/usr/sbin"):
            path = f"{directory}/{tool}"
            if os.path.exists(path):
                real = os.path.realpath(path)
                binds[real] = real
                if real != path:
                    links[path] = os.path.relpath(real, directory)
                break
    stdlib = os.path.dirname(os.__file__)  # the zygote is the system python: /usr/lib/python3.x
    multiarch = getattr(__import__("sys").implementation, "_multiarch", "")
    for path in (stdlib, f"/usr/lib/{multiarch}", *(f"/usr/{d}" for d in _USR_DIRS)):
        if os.path.isdir(path) and not os.path.islink(path):
            binds[path] = path
    return binds, links


def _build_usr(root: str) -> None:
    binds, links = runtime_usr()
    for target, source in binds.items():
        if os.path.isdir(source):
            os.makedirs(root + target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(root + target), exist_ok=True)
            _touch(root + target)
        bind_readonly(source, root + target)
    for path, target in links.items():
        os.symlink(target, root + path)


def _write_sandbox_etc(root: str, resolvers: list[str]) -> None:
    """The environments' resolv.conf, hosts and nsswitch.conf: nothing of the host's own."""
    etc = root + SANDBOX_ETC
    os.makedirs(etc)
    _write(f"{etc}/resolv.conf", "".join(f"nameserver {address}\n" for address in resolvers))
    _write(f"{etc}/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost\n")
    _write(f"{etc}/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n")
    if os.path.exists("/etc/ld.so.cache"):
        with open("/etc/ld.so.cache", "rb") as src, open(f"{etc}/ld.so.cache", "wb") as dst:
            dst.write(src.read())


def _copy_tree(source: str, target: str) -> None:
    """Copy a small tree of plain files (the runtime package), so that no bind mount shows its host path."""
    os.makedirs(target, exist_ok=True)
    for entry in os.scandir(source):
        if entry.is_dir(follow_symlinks=False) and entry.name != "__pycache__":
            _copy_tree(entry.path, f"{target}/{entry.name}")
        elif entry.is_file(follow_symlinks=False):
            with open(entry.path, "rb") as src, open(f"{target}/{entry.name}", "wb") as dst:
                dst.write(src.read())


def enter_zygote_root(root: str, paths: dict, resolvers: list[str]) -> None:
    """Give the zygote the sandbox's own paths before it imports anything (once, at its start).

    A private mount namespace whose root is a small tmpfs at ``root``: the
    minimal /usr (``runtime_usr``), /etc read-only (the zygote's own; an
    environment gets only SANDBOX_ETC's files), /dev, /proc and /sys as on the
    host, then ``paths``: "copy" (the runtime package, copied), "readonly" and
    "writable" ({path here: host path}, e.g. a layer at /opt/python); the
    host's own root stays reachable under /host. Modules imported afterwards
    keep these paths in ``__file__``, and so does every environment forked
    later; /rootfs and /scratch are mount points for the environments' roots
    and /tmp filesystems.
    """
    unshare(CLONE_NEWNS)
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=8m,mode=0755")
    for d in ("host", "rootfs", "scratch"):
        os.makedirs(f"{root}/{d}")
    _mirror_links(root)
    _build_usr(root)
    _write_sandbox_etc(root, resolvers)
    for target, source in paths.get("copy", {}).items():
        _copy_tree(source, root + target)
    for target, source in {"/etc": "/etc", **paths.get("readonly", {})}.items():
        os.makedirs(root + target, exist_ok=True)
        bind_readonly(source, root + target)
    for target, source in {"/dev": "/dev", "/proc": "/proc", "/sys": "/sys", **paths.get("writable", {})}.items():
        os.makedirs(root + target, exist_ok=True)
        mount(source, root + target, None, MS_BIND | MS_REC)
    os.chdir(root)
    _check(libc.syscall(_pivot_root_number(), b".", b"host"), "pivot_root")
    os.chdir("/")


def _pivot_root_number() -> int:
    # No tier that builds a root runs where the probe found no syscall table (see _probe_child).
    if MACHINE is None:
        raise SandboxError(errno.ENOSYS, f"no syscall table for {platform.machine()}")
    return syscalls.NUMBERS[MACHINE]["pivot_root"]


def build_root(spec: dict) -> None:
    """Replace the filesystem view with a tmpfs root holding only what the function needs."""
    root = spec["rootfs_dir"]
    # Nothing we mount may propagate back to the host namespace.
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    _populate_root(root, spec)
    os.chdir(root)
    _check(libc.syscall(_pivot_root_number(), b".", b"."), "pivot_root")
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


def drop_capability_bounding_set() -> None:
    """No capability can ever come back: an empty bounding set, no ambient ones, root's special rules off.

    Only what an execve could grant is gone: the caller keeps its effective capabilities (to mount, link,
    change uid) until its uid drop clears them. So the spare's reaper does it, before the handler forks.
    """
    cap = 0
    while libc.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0) == 0:
        cap += 1
    if ctypes.get_errno() != errno.EINVAL:  # EINVAL: past the kernel's last capability
        _check(-1, f"dropping capability {cap} from the bounding set")
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    prctl(PR_SET_SECUREBITS, SECURE_BITS)


def drop_privileges(uid: int, gid: int) -> None:
    if os.geteuid() != 0:
        return
    os.setgroups([])
    os.setgid(gid)
    # setuid from root to non-root clears every capability (no SECBIT_KEEP_CAPS).
    os.setuid(uid)


def isolate(spec: dict) -> None:
    """Everything after the namespaces exist; runs as pid 2 of the new pid namespace."""
    if spec["tier"] == "namespaces":
        build_root(spec)
        libc.sethostname(b"ephemera", 8)
    set_rlimits(spec)
    drop_privileges(spec["uid"], spec["gid"])
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    if spec["tier"] == "namespaces":
        load_seccomp(build_seccomp_filter(spec["network"]))


SANDBOX_NAMESPACES = CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET  # the reaper's; pid comes first


# ---------------------------------------------------------------- probe for the doctor


def _probe_veth() -> bool:
    """Whether this kernel gives us veth pairs (made and dropped inside a throwaway network namespace)."""
    from . import netlink

    link = netlink.Netlink()
    try:
        netns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        link.add_veth("probe0", bytes([2, 0, 0, 0, 0, 1]), "probe1", bytes([2, 0, 0, 0, 0, 2]), netns)
        return True
    except OSError:
        return False
    finally:
        link.close()


def _probe_child() -> int:
    try:
        unshare(CLONE_NEWPID | SANDBOX_NAMESPACES)
    except OSError:
        return 1
    if MACHINE is None:
        return 2
    veth = _probe_veth()
    try:
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        load_seccomp(build_seccomp_filter(network=False))
    except OSError:
        return 2
    import socket

    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        return 3
    except OSError as exc:
        if exc.errno != errno.EAFNOSUPPORT:
            return 4
    return 0 if veth else 5


def probe() -> dict:
    """Try each step in a throwaway child (namespaces, seccomp, a veth pair in a namespace of its own)."""
    result = {"root": os.geteuid() == 0, "arch": platform.machine(), "seccomp_table": MACHINE is not None}
    pid = os.fork()
    if pid == 0:
        os._exit(_probe_child())
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    result["namespaces"] = code != 1
    result["seccomp"] = code in (0, 5)
    result["veth"] = code == 0
    return result
