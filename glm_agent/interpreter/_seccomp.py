"""A seccomp filter for sandboxed kernels, built here as classic BPF (no libseccomp needed).

Stdlib only: loaded by the launcher (``_launch.py``) before ipykernel starts. The filter
returns ``EPERM`` for system calls a data-analysis kernel never needs and that widen the
attack surface of the host's Linux kernel or undo the sandbox: mounting, changing root,
entering or creating namespaces (``unshare``, ``setns``, ``clone`` with ``CLONE_NEW*``),
tracing other processes, kernel keyrings, BPF, perf events, loading modules or kernels,
rebooting, swap, accounting, clock setting, file handles that bypass paths, userfaultfd;
and refuses ``chmod`` that sets the setuid/setgid bits (root in the sandbox owns the files
it writes in the workspace, which the host can see). ``clone3`` (whose flags BPF cannot
read) gets ``ENOSYS``, so that libc falls back to ``clone``, whose flags it can. Other
architectures' system calls (x32 on x86-64) are refused.

Only x86-64 is supported (the numbers below are its); elsewhere :func:`install` returns
False and the isolation report says that no seccomp filter is in place.
"""

from __future__ import annotations

import ctypes
import errno
import platform

__all__ = ["supported", "build_filter", "install", "DENIED"]

AUDIT_ARCH_X86_64 = 0xC000003E
_X32_BIT = 0x40000000

#: x86-64 system call numbers refused with EPERM
DENIED = {
    "ptrace": 101,
    "syslog": 103,
    "vhangup": 153,
    "pivot_root": 155,
    "adjtimex": 159,
    "chroot": 161,
    "acct": 163,
    "settimeofday": 164,
    "mount": 165,
    "umount2": 166,
    "swapon": 167,
    "swapoff": 168,
    "reboot": 169,
    "iopl": 172,
    "ioperm": 173,
    "init_module": 175,
    "delete_module": 176,
    "quotactl": 179,
    "clock_settime": 227,
    "kexec_load": 246,
    "add_key": 248,
    "request_key": 249,
    "keyctl": 250,
    "unshare": 272,
    "perf_event_open": 298,
    "name_to_handle_at": 303,
    "open_by_handle_at": 304,
    "clock_adjtime": 305,
    "setns": 308,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "finit_module": 313,
    "kexec_file_load": 320,
    "bpf": 321,
    "userfaultfd": 323,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "mount_setattr": 442,
}
_CLONE = 56
_CLONE3 = 435
_CLONE_NEW = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x00000080
#: chmod-like calls and the argument holding the mode
_CHMODS = {90: 1, 91: 1, 268: 2, 452: 2}  # chmod, fchmod, fchmodat, fchmodat2
_SUID_SGID = 0o6000

# classic BPF
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_OFF_NR, _OFF_ARCH, _OFF_ARGS = 0, 4, 16
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def supported() -> bool:
    return platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64")


def build_filter() -> list[tuple[int, int, int, int]]:
    """The program as (code, jt, jf, k) instructions."""
    eperm = _RET_ERRNO | errno.EPERM
    prog: list[tuple[int, int, int, int]] = []

    def ret(value: int) -> None:
        prog.append((_RET_K, 0, 0, value))

    prog.append((_LD_W_ABS, 0, 0, _OFF_ARCH))
    prog.append((_JEQ_K, 1, 0, AUDIT_ARCH_X86_64))
    ret(eperm)  # another architecture's calls (e.g. i386 via int 0x80 would be AUDIT_ARCH_I386)
    prog.append((_LD_W_ABS, 0, 0, _OFF_NR))
    prog.append((_JGE_K, 0, 1, _X32_BIT))
    ret(eperm)
    for nr in sorted(DENIED.values()):
        prog.append((_JEQ_K, 0, 1, nr))
        ret(eperm)
    prog.append((_JEQ_K, 0, 1, _CLONE3))
    ret(_RET_ERRNO | errno.ENOSYS)
    # clone(flags, ...): refuse new namespaces
    prog.append((_JEQ_K, 0, 3, _CLONE))
    prog.append((_LD_W_ABS, 0, 0, _OFF_ARGS))  # low 32 bits of args[0] (little-endian)
    prog.append((_JSET_K, 0, 1, _CLONE_NEW))
    ret(eperm)
    prog.append((_LD_W_ABS, 0, 0, _OFF_NR))  # (reload: the clone branch replaced the accumulator)
    for nr, arg in sorted(_CHMODS.items()):
        prog.append((_JEQ_K, 0, 3, nr))
        prog.append((_LD_W_ABS, 0, 0, _OFF_ARGS + 8 * arg))
        prog.append((_JSET_K, 0, 1, _SUID_SGID))
        ret(eperm)
        prog.append((_LD_W_ABS, 0, 0, _OFF_NR))
    ret(_RET_ALLOW)
    return prog


def install() -> bool:
    """Load the filter into this process (inherited by every child, kept across exec). Needs no_new_privs.

    Returns False where it is not supported; raises OSError if the kernel refuses it.
    """
    if not supported():
        return False
    prog = build_filter()
    filters = (_SockFilter * len(prog))(*[_SockFilter(*ins) for ins in prog])
    fprog = _SockFprog(len(prog), ctypes.cast(filters, ctypes.POINTER(_SockFilter)))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp filter refused: {errno.errorcode.get(err, err)}")
    return True
