"""Kernel launcher and supervisor: runs as its own script, before and around ipykernel.

Started by the host as ``python _launch.py SPEC_JSON`` (stdlib only, so that it starts fast
and can create namespaces while it is still single-threaded). It

1. optionally enters new mount, network and PID namespaces (``isolate``) and builds the
   sandbox's filesystem view: every existing mount read-only, private ``/tmp`` and
   ``/dev/shm``, the workspace bind-mounted read-write on ``/mnt/data`` and the runtime
   directory (ZMQ ``ipc`` sockets, scratch) read-write at its own path;
2. forks the kernel process, which starts its own session (process group), mounts a fresh
   ``/proc`` (isolated), applies the resource limits, drops every capability (isolated)
   and execs ipykernel;
3. stays behind as the kernel's supervisor: forwards SIGINT to the kernel's process group
   (the host's interrupt), watches the *lifeline* pipe (end of file = the host is gone),
   and when the kernel ends kills everything the kernel started, then exits with the
   kernel's own status (re-raising its signal), so the host sees how it died.

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

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000
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

_libc = ctypes.CDLL(None, use_errno=True)


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
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
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


def setup_filesystem(workspace: str, runtime_dir: str, tmpfs_bytes: int, readonly_paths: list[str] = ()) -> None:
    """Build the isolated filesystem view (in a fresh mount namespace).

    ``readonly_paths`` are directories the kernel's Python needs that the private ``/tmp``,
    ``/dev/shm`` or ``/mnt`` would hide (a virtual environment or checkout under ``/tmp``):
    they are bound back, read-only, at the same paths.
    """
    _mount("none", "/", None, MS_REC | MS_PRIVATE)  # nothing we do here reaches the host
    keep_fds = {
        "/mnt/data": os.open(workspace, os.O_PATH | os.O_DIRECTORY),
        runtime_dir: os.open(runtime_dir, os.O_PATH | os.O_DIRECTORY),
    }
    readonly_fds = {path: os.open(path, os.O_PATH | os.O_DIRECTORY) for path in readonly_paths}
    for point, flags in _mount_points():
        if _under(point, "/proc"):
            continue  # replaced by the kernel's own /proc
        try:
            _mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)
        except SetupError:
            if not (_under(point, "/sys") or _under(point, "/dev")):
                raise
    size = f"size={int(tmpfs_bytes)},mode=1777"
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, size)
    if os.path.isdir("/dev/shm"):
        _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, size)
    if not os.path.isdir("/mnt"):
        raise SetupError("there is no /mnt directory to mount the workspace under")
    _mount("tmpfs", "/mnt", "tmpfs", MS_NOSUID | MS_NODEV, "size=65536,mode=755")
    for target, fd in keep_fds.items():
        os.makedirs(target, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND)
        _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV)
        os.close(fd)
    for target, fd in readonly_fds.items():
        os.makedirs(target, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
        _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        os.close(fd)


def drop_privileges() -> None:
    """Drop every capability for good: root in the sandbox can no longer remount or reach out."""
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


def apply_limits(limits: dict[str, int | None]) -> None:
    """setrlimit, soft = hard, so that code in the kernel cannot raise them again."""
    for name, value in limits.items():
        if value is None:
            continue
        which = _RLIMITS[name]
        hard = value + 5 if which == resource.RLIMIT_CPU else value  # SIGXCPU first, SIGKILL 5 s later
        resource.setrlimit(which, (value, hard))


def _kernel_child(spec: dict, supervisor_pid: int) -> None:
    """In the forked child: become the kernel. Never returns."""
    try:
        os.setsid()
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if not spec["isolate"] and os.getppid() != supervisor_pid:
            os._exit(1)  # the supervisor died before we armed the death signal
        os.close(spec["lifeline_fd"])
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        if spec["isolate"]:
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        apply_limits(spec["limits"])
        if spec["isolate"]:
            drop_privileges()
        os.chdir(spec["cwd"])
        env = dict(os.environ)
        env.update(spec["env"])
        if spec.get("probe"):
            os._exit(_probe_checks(spec))
        os.execve(spec["argv"][0], spec["argv"], env)
    except BaseException as exc:
        sys.stderr.write(f"glm-agent kernel launcher: {type(exc).__name__}: {exc}\n")
        sys.stderr.flush()
        os._exit(127)


def _probe_checks(spec: dict) -> int:
    """Isolation probe: verify the sandbox from inside; 0 = all good."""
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
    probe_dir = os.path.join(spec["probe_readonly_dir"], f".glm-agent-probe-{os.getpid()}-{time.time_ns()}")
    try:
        os.mkdir(probe_dir)
    except OSError:
        pass
    else:
        os.rmdir(probe_dir)
        problems.append("the host filesystem is writable from the sandbox")
    if os.getpid() != 1:
        problems.append("no PID namespace")
    if not os.access(sys.executable, os.X_OK):
        problems.append(f"the kernel's Python ({sys.executable}) is not visible in the sandbox")
    for problem in problems:
        sys.stderr.write(problem + "\n")
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


def _supervise(kernel_pid: int, spec: dict, orphan_dirs: list[tuple[int, str]]) -> None:
    """Wait for the kernel or the host's end; clean up; exit as the kernel did. Never returns.

    The host writes ``q`` to the lifeline before closing it on purpose (close, restart);
    end of file without it means the host died, and the directories in ``orphan_dirs``
    (runtime dir, a temporary workspace) are removed too.
    """
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
    if host_gone:
        for dir_fd, name in orphan_dirs:
            shutil.rmtree(name, dir_fd=dir_fd, ignore_errors=True)
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
    spec = json.loads(argv[1])
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core files in anyone's workspace
    orphan_dirs = []  # opened before any mount, so that they can be removed from any view
    for path in spec.get("remove_if_orphaned", []):
        parent, name = os.path.split(os.path.normpath(path))
        orphan_dirs.append((os.open(parent, os.O_RDONLY | os.O_DIRECTORY), name))
    try:
        if spec["isolate"]:
            _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID), "unshare")
            setup_filesystem(
                spec["workspace"], spec["runtime_dir"], spec["tmpfs_bytes"], spec.get("readonly_paths", [])
            )
        else:
            _prctl(PR_SET_CHILD_SUBREAPER, 1)
    except (SetupError, OSError) as exc:
        sys.stderr.write(f"glm-agent kernel launcher: isolation setup failed: {exc}\n")
        os._exit(126)
    supervisor_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        _kernel_child(spec, supervisor_pid)
    _supervise(pid, spec, orphan_dirs)


if __name__ == "__main__":
    main(sys.argv)
