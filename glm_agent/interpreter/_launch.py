"""Kernel launcher and supervisor: runs as its own script, before and around ipykernel.

Started by the host as ``python _launch.py SPEC_JSON`` (stdlib only, so that it starts fast
and can create namespaces while it is still single-threaded). It

1. creates the session's cgroups (``pids.max``, the memory limit) as children of the host
   process's own, when the spec asks for them;
2. optionally (``isolate``) enters new mount, network, PID, IPC and UTS namespaces and builds
   the kernel's root filesystem from an allowlist (:func:`build_root`), then ``pivot_root``s
   into it: nothing else of the host is reachable;
3. forks the kernel process, which joins the cgroups, starts its own session (process
   group), mounts its own ``/proc`` (isolated), applies the rlimits, drops every capability,
   sets ``no_new_privs`` and loads the seccomp filter (``_seccomp.py``, isolated) and execs
   ipykernel with exactly the environment in the spec (never the host's);
4. stays behind as the kernel's supervisor: forwards SIGINT to the kernel's process group
   (the host's interrupt), watches the *lifeline* pipe (end of file = the host is gone),
   and when the kernel ends kills everything the kernel started, removes the cgroups, and
   exits with the kernel's own status (re-raising its signal), so the host sees how it died.

Without isolation the supervisor is a child subreaper: processes the kernel started that
outlive it are re-parented here and killed.  With isolation the kernel is PID 1 of its
PID namespace, so the Linux kernel itself kills every process in it when it ends.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import resource
import select
import shutil
import signal
import socket
import sys
import time
from typing import Any, TypedDict

MNT_DATA = "/mnt/data"  # the workspace inside the sandbox (this script imports no package: its own copy)
CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUTS = 0x04000000
MNT_DETACH = 2
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(os.uname().machine, 155)
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_MOUNT_FLAG_OPTIONS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}
_RLIMITS = {
    "memory_bytes": resource.RLIMIT_AS,
    "cpu_seconds": resource.RLIMIT_CPU,
    "open_files": resource.RLIMIT_NOFILE,
    "file_size_bytes": resource.RLIMIT_FSIZE,
}


class LaunchSpec(TypedDict, total=False):
    """The launcher's contract: the JSON the host passes as the one argument (built by
    ``_launcher.launch_spec``; the host side of the contract lives in ``_launcher.py``)."""

    isolate: bool  # namespaces and the allowlisted root, or a plain supervised process
    workspace: str  # the host folder that is /mnt/data
    runtime_dir: str  # the kernel's sockets, connection file, scratch space and log
    runtime_dir_inside: str  # where an isolated kernel sees runtime_dir
    tmp_dir: str | None  # the host folder that becomes the sandbox's /tmp and /dev/shm (the session's tmpfs)
    workspace_bytes: int | None
    workspace_quota: bool  # the workspace lives on the size-limited tmpfs too
    cwd: str
    env: dict[str, str]  # the kernel's whole environment
    argv: list[str]  # the kernel command (ipykernel)
    limits: dict[str, int | None]  # rlimits: Limits.rlimits()
    cgroups: dict[str, Any]  # the session's cgroups to create (CgroupPlan.spec()), or {}
    remove_if_orphaned: list[str]  # removed by the supervisor if the host dies first
    unmount_if_orphaned: list[str]
    readonly_paths: list[str]  # host folders the isolated kernel may read
    seccomp: bool
    lifeline_fd: int  # the pipe whose end of file means the host is gone (added by the starter)
    probe: bool  # the isolation probe: run the checks instead of the kernel
    probe_port: int
    probe_hidden: list[str]
    runtime_dir_fd: int  # set by the launcher itself
    cgroup_files: dict[str, str]  # set by the launcher itself: cgroup counters shown to the kernel


_libc = ctypes.CDLL(None, use_errno=True)
_SECCOMP = None  # the _seccomp module, loaded before the sandbox hides this directory


def _prctl(option: int, arg: int) -> int:
    """prctl(2) where it exists (Linux); elsewhere a no-op that reports failure."""
    prctl = getattr(_libc, "prctl", None)
    return -1 if prctl is None else prctl(option, arg, 0, 0, 0)


class SetupError(Exception):
    """The sandbox could not be built; the message says which step failed."""


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(err)} (errno {err})")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(text: str | None) -> bytes | None:
        return None if text is None else text.encode()

    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _mount_points() -> list[tuple[str, int]]:
    """(mount point, per-mount flags to keep) for every mount, parents first."""
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            fields = line.split()
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])  # \040 = space
            flags = 0
            for opt in fields[5].split(","):
                flags |= _MOUNT_FLAG_OPTIONS.get(opt, 0)
            out.append((point, flags))
    return out


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


#: /etc entries libraries read (TLS, fonts, time zone, dynamic linker, name service, mime types);
#: passwd, group, hosts and hostname are written fresh instead of bound
ETC_ALLOWED = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "nsswitch.conf",
    "host.conf",
    "gai.conf",
    "protocols",
    "services",
    "localtime",
    "timezone",
    "ssl",
    "pki",
    "ca-certificates",
    "ca-certificates.conf",
    "crypto-policies",
    "fonts",
    "mime.types",
    "magic",
    "magic.mime",
    "os-release",
    "alternatives",
    "locale.alias",
    "locale.conf",
    "matplotlibrc",
)
_ETC_WRITTEN = {
    "passwd": "root:x:0:0:sandbox:/mnt/data:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    "group": "root:x:0:\nnogroup:x:65534:\n",
    "hostname": "sandbox\n",
    "hosts": "127.0.0.1 localhost sandbox\n::1 localhost\n",
}
#: top-level system directories (or their merged-/usr symlinks) the kernel's programs need
SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
_DEVICES = ("null", "zero", "full", "random", "urandom")
#: cgroup counters shown (read-only) to the kernel at /run/glm-agent/, so it can say what hit a limit
_CGROUP_COUNTERS = {
    "memory": ("memory.oom_control", "memory.events", "memory.limit_in_bytes", "memory.max"),
    "pids": ("pids.events", "pids.max", "pids.current"),
}
SANDBOX_INFO_DIR = "/run/glm-agent"


def _bind(source: str, target: str, *, readonly: bool, recursive: bool = True, extra: int = 0) -> None:
    """Bind ``source`` on ``target`` (created like it), then set its flags (read-only, nosuid, nodev)."""
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    elif not os.path.exists(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
    _mount(source, target, None, MS_BIND | (MS_REC if recursive else 0))
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | extra | (MS_RDONLY if readonly else 0)
    _mount(None, target, None, flags)


def _copy_link_or_bind(source: str, target: str) -> None:
    """A symlink is recreated as a symlink (its target must be visible itself); anything else is bound read-only."""
    if os.path.islink(source):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.symlink(os.readlink(source), target)
    elif os.path.exists(source):
        _bind(source, target, readonly=True, extra=MS_NODEV)


def _cover(paths: list[str]) -> list[str]:
    """The shortest set of paths covering ``paths`` (a path under another one is dropped)."""
    kept: list[str] = []
    for path in sorted({os.path.normpath(p) for p in paths}, key=len):
        if not any(_under(path, k) for k in kept):
            kept.append(path)
    return kept


def build_root(spec: LaunchSpec) -> dict[str, Any]:
    """Build the kernel's root filesystem (in a fresh, private mount namespace) and pivot into it.

    An allowlist: a tmpfs with the system directories (``/usr`` and its symlinks), chosen
    ``/etc`` files, the kernel's Python (``readonly_paths``: prefixes, site-packages, and the
    user's extra read-only folders), basic devices, ``/proc`` (mounted by the kernel in its
    PID namespace), ``/tmp`` + ``/dev/shm`` (the session's ``tmp_dir``, or a fresh tmpfs),
    the workspace read-write at ``/mnt/data`` and the kernel's runtime directory (sockets)
    at its own path. Everything but the workspace, ``/tmp`` and the runtime directory is
    read-only; nothing else of the host is reachable. Returns what was set up (for the report).
    """
    _mount("none", "/", None, MS_REC | MS_PRIVATE)  # nothing we do here reaches the host
    new_root = os.path.join(spec["runtime_dir"], "root")
    os.makedirs(new_root, exist_ok=True)
    _mount("tmpfs", new_root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1048576,mode=755")

    def inside(path: str) -> str:
        return new_root + os.path.normpath(path)

    for name in SYSTEM_DIRS:
        _copy_link_or_bind("/" + name, inside("/" + name))
    os.makedirs(inside("/etc"))
    for name in ETC_ALLOWED:
        _copy_link_or_bind("/etc/" + name, inside("/etc/" + name))
    for name, text in _ETC_WRITTEN.items():
        with open(inside("/etc/" + name), "w", encoding="utf-8") as fh:
            fh.write(text)
    for name in _DEVICES:
        if os.path.exists("/dev/" + name):
            _bind("/dev/" + name, inside("/dev/" + name), readonly=True, recursive=False)
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(target, inside("/dev/" + name))
    os.makedirs(inside("/proc"))
    tmp = inside("/tmp")
    tmp_dir = spec.get("tmp_dir")
    if tmp_dir:
        _bind(tmp_dir, tmp, readonly=False, recursive=False, extra=MS_NODEV)
    else:
        size = spec.get("workspace_bytes")
        os.makedirs(tmp)
        _mount("tmpfs", tmp, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={size}" if size else "mode=1777")
    _bind(tmp, inside("/dev/shm"), readonly=False, recursive=False, extra=MS_NODEV)
    python_and_extra = _cover([p for p in spec.get("readonly_paths", []) if os.path.exists(p)])
    system = ["/" + name for name in SYSTEM_DIRS] + ["/etc"]
    for path in python_and_extra:
        if not any(_under(path, s) and not os.path.islink(s) for s in system):
            _bind(path, inside(path), readonly=True, extra=MS_NODEV)
    _bind(spec["workspace"], inside(MNT_DATA), readonly=False, recursive=False, extra=MS_NODEV)
    _bind(spec["runtime_dir"], inside(spec["runtime_dir_inside"]), readonly=False, recursive=False, extra=MS_NODEV)
    for path, name in spec.get("cgroup_files", {}).items():
        _bind(path, inside(f"{SANDBOX_INFO_DIR}/{name}"), readonly=True, recursive=False)
    # submounts that came along with recursive binds (say /usr/local on its own) are read-only too
    writable = [inside(p) for p in ("/tmp", "/dev/shm", MNT_DATA, spec["runtime_dir_inside"])]
    for point, flags in _mount_points():
        if _under(point, new_root) and point != new_root and not any(_under(point, w) for w in writable):
            if not _under(point, inside("/dev")):
                flags |= MS_NODEV
            _mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | flags)
    os.chdir(new_root)
    os.mkdir(".old-root")
    _check(_libc.syscall(SYS_PIVOT_ROOT, b".", b".old-root"), "pivot_root")
    _check(_libc.umount2(b"/.old-root", MNT_DETACH), "umount the old root")
    os.rmdir("/.old-root")
    os.chdir("/")
    _mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    return {"readonly_paths": python_and_extra}


def mount_proc() -> None:
    """The PID namespace's own /proc, with the host-wide knobs in it read-only (root may not write sysctls)."""
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for path in ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs"):
        if os.path.exists(path):
            _mount(path, path, None, MS_BIND | MS_REC)
            _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)


class SessionCgroups:
    """The kernel's cgroups (children of the host process's own): created, joined by the kernel, removed."""

    def __init__(self, spec: dict[str, Any]) -> None:  # LaunchSpec['cgroups']
        self.dirs: dict[str, str] = dict(spec.get("dirs", {}))
        self.created: list[tuple[int, str]] = []  # (parent dir fd, name): removable after pivot_root
        self.procs_fds: list[int] = []
        self.counter_files: dict[str, str] = {}
        self.applied: dict[str, int] = {}
        for controller, path in self.dirs.items():
            parent, name = os.path.split(path)
            os.mkdir(path)
            self.created.append((os.open(parent, os.O_RDONLY | os.O_DIRECTORY), name))
            if controller == "pids":
                self._write(path, "pids.max", spec["max_processes"])
                self.applied["max_processes"] = spec["max_processes"]
            elif controller == "memory":
                limit_files = ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.max", "memory.swap.max")
                written = [self._write(path, f, spec["memory_bytes"] if "swap" not in f else 0) for f in limit_files]
                if not any(written[:1] + written[2:3]):
                    raise SetupError(f"could not set a memory limit in {path}")
                self.applied["total_memory_bytes"] = spec["memory_bytes"]
            self.procs_fds.append(os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY))
            for counter in _CGROUP_COUNTERS[controller]:
                if os.path.exists(os.path.join(path, counter)):
                    self.counter_files[os.path.join(path, counter)] = counter

    @staticmethod
    def _write(path: str, name: str, value: int) -> bool:
        try:
            with open(os.path.join(path, name), "w") as fh:
                fh.write(str(value))
            return True
        except OSError:
            return False

    def join(self) -> None:
        """In the kernel process: move into the cgroups (before anything else starts)."""
        for fd in self.procs_fds:
            os.write(fd, b"0")
            os.close(fd)
        self.procs_fds = []

    def oom_kills(self) -> int:
        """How many processes the memory limit killed (0 where unknown)."""
        for parent_fd, name in self.created:
            for counter, key in (("memory.oom_control", "oom_kill"), ("memory.events", "oom_kill")):
                try:
                    fd = os.open(f"{name}/{counter}", os.O_RDONLY, dir_fd=parent_fd)
                except OSError:
                    continue
                with os.fdopen(fd) as fh:
                    for line in fh:
                        if line.startswith(key + " "):
                            return int(line.split()[1])
        return 0

    def remove(self) -> None:
        """After the kernel ended (its PID namespace is empty by then): rmdir, retrying briefly."""
        for fd in self.procs_fds:
            os.close(fd)
        deadline = time.monotonic() + 2
        for parent_fd, name in self.created:
            while True:
                try:
                    os.rmdir(name, dir_fd=parent_fd)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        sys.stderr.write(f"glm-agent kernel launcher: could not remove cgroup {name}\n")
                        break
                    time.sleep(0.02)
            os.close(parent_fd)
        self.created = []


def drop_privileges(seccomp: bool) -> bool:
    """Drop every capability for good, set no_new_privs, and (``seccomp``) load the syscall filter.

    Root in the sandbox then can no longer remount, leave its namespaces, trace, load modules
    or raise its limits; setuid programs give no privileges. Returns whether a filter is loaded.
    """
    cap = 0
    while _prctl(PR_CAPBSET_DROP, cap) == 0:
        cap += 1
    if ctypes.get_errno() != errno.EINVAL or cap == 0:
        raise SetupError(f"could not drop capability {cap}: {os.strerror(ctypes.get_errno())}")
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    header = Header(0x20080522, 0)
    data = (Data * 2)()
    _check(_libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")
    _check(_prctl(PR_SET_NO_NEW_PRIVS, 1), "no_new_privs")
    if not seccomp:
        return False
    try:
        return bool(_SECCOMP is not None and _SECCOMP.install())
    except OSError as exc:
        raise SetupError(str(exc)) from exc


def _load_sibling(name: str):  # type: ignore[no-untyped-def]
    """A stdlib-only module next to this script (the launcher runs with -I: no package imports)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(__file__), name + ".py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def apply_limits(limits: dict[str, int | None]) -> None:
    """setrlimit, soft = hard, so that code in the kernel cannot raise them again."""
    for name, value in limits.items():
        if value is None:
            continue
        which = _RLIMITS[name]
        hard = value + 5 if which == resource.RLIMIT_CPU else value  # SIGXCPU first, SIGKILL 5 s later
        resource.setrlimit(which, (value, hard))


def _kernel_child(
    spec: LaunchSpec, supervisor_pid: int, cgroups: SessionCgroups | None, report: dict[str, Any]
) -> None:
    """In the forked child: become the kernel. Never returns."""
    try:
        if cgroups is not None:
            cgroups.join()
        os.setsid()
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if not spec["isolate"] and os.getppid() != supervisor_pid:
            os._exit(1)  # the supervisor died before we armed the death signal
        os.close(spec["lifeline_fd"])
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        if spec["isolate"]:
            mount_proc()
        apply_limits(spec["limits"])
        if spec["isolate"]:
            report["seccomp"] = drop_privileges(spec.get("seccomp", True))
            report["privileges"] = True
        os.chdir(spec["cwd"])
        env = dict(spec["env"])
        env["GLM_AGENT_SANDBOX"] = json.dumps(report, separators=(",", ":"))
        if spec.get("probe"):
            os._exit(_probe_checks(spec, report))
        os.execve(spec["argv"][0], spec["argv"], env)
    except BaseException as exc:
        sys.stderr.write(f"glm-agent kernel launcher: {type(exc).__name__}: {exc}\n")
        sys.stderr.flush()
        os._exit(127)


def _probe_checks(spec: LaunchSpec, report: dict[str, Any]) -> int:
    """Isolation probe: verify the sandbox from inside; 0 = all good. Prints the report as JSON."""
    problems = []
    try:
        with socket.create_connection(("127.0.0.1", spec["probe_port"]), timeout=1):
            problems.append("127.0.0.1 is reachable from the sandbox")
    except OSError:
        pass
    try:
        with open("/mnt/data/.probe", "w") as fh:
            fh.write("ok")
    except OSError as exc:
        problems.append(f"/mnt/data is not writable ({exc})")
    for path in spec.get("probe_hidden", []):
        if os.path.lexists(path):
            problems.append(f"{path} is visible in the sandbox")
    probe_dir = f"/usr/.glm-agent-probe-{os.getpid()}-{time.time_ns()}"
    try:
        os.mkdir(probe_dir)
    except OSError:
        pass
    else:
        os.rmdir(probe_dir)
        problems.append("the system directories are writable from the sandbox")
    if os.getpid() != 1:
        problems.append("no PID namespace")
    if not os.access(spec["argv"][0] if spec["argv"] else sys.executable, os.X_OK):
        problems.append(f"the kernel's Python ({sys.executable}) is not visible in the sandbox")
    for problem in problems:
        sys.stderr.write(problem + "\n")
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    return 1 if problems else 0


def _children_of(pid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if int(fields[1]) == pid:
            out.append(int(name))
    return out


def _kill_descendants(kernel_pid: int) -> None:
    """Without a PID namespace: kill the kernel's group and every orphan re-parented to us."""
    try:
        os.killpg(kernel_pid, signal.SIGKILL)
    except OSError:
        pass
    me = os.getpid()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        children = _children_of(me)
        if not children:
            break
        for child in children:
            for kill in (os.killpg, os.kill):
                try:
                    kill(child, signal.SIGKILL)
                except OSError:
                    pass
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        time.sleep(0.01)


def _supervise(
    kernel_pid: int,
    spec: LaunchSpec,
    orphans: tuple[list[tuple[int, str]], list[str], int | None],
    cgroups: SessionCgroups | None,
) -> None:
    """Wait for the kernel or the host's end; clean up; exit as the kernel did. Never returns.

    The host writes ``q`` to the lifeline before closing it on purpose (close, restart);
    end of file without it means the host died, and the directories in ``orphans`` (runtime
    dir, a temporary workspace, the session's tmpfs, unmounted in the host's mount namespace
    first) are removed too. The cgroups are removed in every case; if the memory limit killed
    processes, ``runtime_dir/oom_kills`` says how many (the host reads it to explain a death).
    """
    orphan_dirs, orphan_mounts, host_mnt_ns = orphans
    isolate = spec["isolate"]

    def forward(signum: int, _frame: object) -> None:
        try:
            os.killpg(kernel_pid, signum)
        except OSError:
            pass

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(kernel_pid, signal.SIGKILL))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    lifeline = spec["lifeline_fd"]
    try:
        watch = [os.pidfd_open(kernel_pid)]  # readable when the kernel ends
    except (AttributeError, OSError):
        watch = []  # no pidfd (old kernel, not Linux): poll
    status = None
    deliberate = host_gone = False
    while status is None:
        ready, _, _ = select.select([*watch, lifeline], [], [], None if watch else 0.1)
        data = os.read(lifeline, 64) if lifeline in ready else b"-"
        deliberate = deliberate or b"q" in data
        if not data:
            os.kill(kernel_pid, signal.SIGKILL)  # the host is gone or closed us: stop now
            status = os.waitpid(kernel_pid, 0)[1]
            host_gone = not deliberate
        elif watch and watch[0] in ready:
            status = os.waitpid(kernel_pid, 0)[1]
        elif not watch:
            pid, wait_status = os.waitpid(kernel_pid, os.WNOHANG)
            status = wait_status if pid else None
    if not isolate:
        _kill_descendants(kernel_pid)
    if cgroups is not None:
        kills = cgroups.oom_kills()
        if kills and not host_gone and spec.get("runtime_dir_fd") is not None:
            try:
                fd = os.open(
                    "oom_kills",
                    os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                    0o600,
                    dir_fd=spec["runtime_dir_fd"],
                )
                os.write(fd, str(kills).encode())
                os.close(fd)
            except OSError:
                pass
        cgroups.remove()
    if host_gone:
        if host_mnt_ns is not None and orphan_mounts:
            if _libc.setns(host_mnt_ns, CLONE_NEWNS) == 0:  # (os.setns is Python 3.12+)
                for point in orphan_mounts:
                    _libc.umount2(point.encode(), MNT_DETACH)
        for dir_fd, name in orphan_dirs:
            shutil.rmtree(name, dir_fd=dir_fd, ignore_errors=True)  # type: ignore[call-arg]  # (3.11+)
    sys.stderr.flush()
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        time.sleep(1)
        os._exit(128 + sig)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def main(argv: list[str]) -> None:
    spec: LaunchSpec = json.loads(argv[1])
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core files in anyone's workspace
    orphan_dirs = []  # opened before any mount, so that they can be removed from any view
    for path in spec.get("remove_if_orphaned", []):
        parent, name = os.path.split(os.path.normpath(path))
        orphan_dirs.append((os.open(parent, os.O_RDONLY | os.O_DIRECTORY), name))
    global _SECCOMP
    if spec["isolate"] and spec.get("seccomp", True):
        _SECCOMP = _load_sibling("_seccomp")  # now: the package's files are out of sight after pivot_root
    host_mnt_ns = None
    cgroups = None
    report: dict[str, Any] = {"isolated": bool(spec["isolate"]), "environment": True}
    try:
        if spec.get("cgroups", {}).get("dirs"):
            cgroups = SessionCgroups(spec["cgroups"])
            report.update(cgroups.applied)
        if spec["isolate"]:
            spec["runtime_dir_fd"] = os.open(spec["runtime_dir"], os.O_RDONLY | os.O_DIRECTORY)
            if spec.get("unmount_if_orphaned"):
                host_mnt_ns = os.open("/proc/self/ns/mnt", os.O_RDONLY)
            if cgroups is not None:
                spec["cgroup_files"] = cgroups.counter_files
            _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS), "unshare")
            report.update(build_root(spec))
            report.update(network=True, filesystem=True, processes=True)
            report["workspace_bytes"] = spec.get("workspace_bytes") if spec.get("workspace_quota") else None
            report["tmp_bytes"] = spec.get("workspace_bytes")
        else:
            _prctl(PR_SET_CHILD_SUBREAPER, 1)
    except (SetupError, OSError) as exc:
        sys.stderr.write(f"glm-agent kernel launcher: sandbox setup failed: {exc}\n")
        if cgroups is not None:
            cgroups.remove()
        os._exit(126)
    supervisor_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        _kernel_child(spec, supervisor_pid, cgroups, report)
    if cgroups is not None:
        for fd in cgroups.procs_fds:
            os.close(fd)
        cgroups.procs_fds = []
    _supervise(pid, spec, (orphan_dirs, spec.get("unmount_if_orphaned", []), host_mnt_ns), cgroups)


if __name__ == "__main__":
    main(sys.argv)
