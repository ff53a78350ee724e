"""A session's directories on this machine, on one size-limited filesystem where possible.

``SessionDirs.root`` is a tmpfs of ``Limits.workspace_bytes`` (mounted by this process when
it may mount, i.e. isolated mode as root) holding

- ``data/``: the workspace (``/mnt/data`` for the code), unless the caller gave its own directory;
- ``tmp/``: the sandbox's ``/tmp`` and ``/dev/shm``;
- ``kernels/K/``: each kernel's runtime directory (ZMQ ``ipc`` sockets, connection file, caches).

So everything a sandboxed kernel can write lives on that one filesystem, and past its size
writes fail with ``ENOSPC``. It outlives kernel restarts (the files stay) and is unmounted and
removed by :meth:`SessionDirs.remove` (or by the kernel's supervisor if this process dies).
Without a mount (not root, isolation off) the same layout is plain directories.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["SessionDirs", "unmount"]

logger = logging.getLogger(__name__)

_MS_NOSUID = 2
_MS_NODEV = 4
_MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)


def _mount_tmpfs(target: Path, size: int) -> bool:
    mount = getattr(_libc, "mount", None)
    if mount is None:
        return False
    flags = ctypes.c_ulong(_MS_NOSUID | _MS_NODEV)
    data = f"size={size},mode=0700".encode()
    if mount(b"tmpfs", str(target).encode(), b"tmpfs", flags, data) != 0:
        logger.info("no size-limited tmpfs for %s: %s", target, os.strerror(ctypes.get_errno()))
        return False
    return True


def unmount(target: Path | str) -> None:
    """Detach a mount (lazily: open files keep it alive until closed); quiet if it is not one."""
    umount2 = getattr(_libc, "umount2", None)
    if umount2 is not None:
        umount2(str(target).encode(), _MNT_DETACH)


class SessionDirs:
    """A session's ``root`` (tmpfs when ``quota``), its workspace and the kernels' runtime directories."""

    def __init__(self, root: Path, workspace: Path, *, quota: bool, owns_workspace: bool) -> None:
        self.root = root
        self.workspace = workspace
        self.quota = quota  # root is a tmpfs of workspace_bytes
        self.owns_workspace = owns_workspace
        self.tmp = root / "tmp"
        self.kernels = root / "kernels"

    @classmethod
    def create(
        cls,
        parent: Path,
        *,
        size: int | None,
        mount: bool,
        workspace: Path | None = None,
        keep_workspace: bool = False,
        name: str | None = None,
    ) -> SessionDirs:
        """Make the directories under ``parent`` (``name``, or a fresh one), on a tmpfs of ``size`` if ``mount``.

        ``workspace``: the caller's own directory (used in place, not on the tmpfs). A
        temporary workspace that is to be kept (``keep_workspace``) is a plain directory beside.
        """
        if name is None:
            root = Path(tempfile.mkdtemp(prefix="s-", dir=parent))
        else:
            root = parent / name
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
        quota = bool(mount and size is not None and not os.path.ismount(root) and _mount_tmpfs(root, size))
        quota = quota or os.path.ismount(root)
        owns = workspace is None
        if workspace is None and keep_workspace:
            workspace = Path(tempfile.mkdtemp(prefix="ws-", dir=parent))
        dirs = cls(root, workspace or root / "data", quota=quota, owns_workspace=owns)
        for path in (dirs.workspace, dirs.tmp, dirs.kernels):
            path.mkdir(parents=True, exist_ok=True)
        dirs.tmp.chmod(0o1777)
        return dirs

    @property
    def workspace_on_quota(self) -> bool:
        """Whether ``workspace_bytes`` bounds the workspace too (not only /tmp)."""
        return self.quota and self.workspace.parent == self.root

    def new_runtime_dir(self, name: str | None = None) -> Path:
        """A fresh directory for one kernel's sockets, connection file and caches."""
        if name is None:
            return Path(tempfile.mkdtemp(prefix="k-", dir=self.kernels))
        path = self.kernels / name
        shutil.rmtree(path, ignore_errors=True)  # left by a killed kernel of this name
        path.mkdir(mode=0o700)
        return path

    def orphan_paths(self, remove_workspace: bool) -> tuple[list[str], list[str]]:
        """(paths to remove, mounts to detach first) should this process die without closing."""
        remove = [str(self.root)]
        if remove_workspace and self.workspace.parent != self.root:
            remove.append(str(self.workspace))
        return remove, [str(self.root)] if self.quota else []

    def remove(self, *, remove_workspace: bool = True) -> None:
        """Unmount and delete the session's filesystem, and the workspace (if elsewhere) when ``remove_workspace``."""
        if self.quota:
            unmount(self.root)
        shutil.rmtree(self.root, ignore_errors=True)
        if remove_workspace and self.workspace.parent != self.root:
            shutil.rmtree(self.workspace, ignore_errors=True)
