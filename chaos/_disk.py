"""A small filesystem for one node's data directory, to fill it up (the ``disk_full`` fault).

The harness enters a private mount namespace first (``enter_mount_namespace``, before
any thread starts): the size-limited tmpfs mounted there is visible to the harness and
to the node processes it starts (they inherit the namespace), and to nothing else on
the host. When the harness and its nodes exit, the namespace and the mount go away
with them, also after a hard kill; ``SmallDisk.teardown`` unmounts it earlier on a
normal end or an interrupt.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import subprocess

CLONE_NEWNS = 0x00020000
BALLAST = "chaos-ballast"


class DiskUnavailable(Exception):
    """No private mount namespace or tmpfs here (not root, no mount(8), kernel says no)."""


def enter_mount_namespace() -> None:
    """Move this process into a new mount namespace whose mounts propagate nowhere.

    Must run while the process has one thread (unshare(2) refuses CLONE_NEWNS otherwise).
    Raises ``DiskUnavailable``."""
    if os.geteuid() != 0:
        raise DiskUnavailable("a private mount namespace needs root")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        raise DiskUnavailable("mount(8) is not installed")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        raise DiskUnavailable(f"unshare(CLONE_NEWNS): {os.strerror(ctypes.get_errno())}")
    # Without this, mounts made here could still propagate to the host's shared mounts.
    done = subprocess.run(["mount", "--make-rprivate", "/"], capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        raise DiskUnavailable(f"mount --make-rprivate /: {done.stderr.strip()}")


class SmallDisk:
    """A tmpfs of ``size_mb`` MiB at ``mountpoint``; the node's data directory is
    ``mountpoint/data`` and the ballast that fills it is ``mountpoint/chaos-ballast``."""

    def __init__(self, mountpoint: str, size_mb: int) -> None:
        self.mountpoint = mountpoint
        self.size_mb = size_mb
        self.mounted = False

    @property
    def data_dir(self) -> str:
        return os.path.join(self.mountpoint, "data")

    @property
    def ballast(self) -> str:
        return os.path.join(self.mountpoint, BALLAST)

    def setup(self) -> None:
        """Mount it (in the harness's own namespace, see ``enter_mount_namespace``).
        Raises ``DiskUnavailable``."""
        os.makedirs(self.mountpoint, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m,mode=0700", "rdbchaos", self.mountpoint],
            capture_output=True,
            text=True,
            timeout=20,
        )
        if done.returncode != 0:
            raise DiskUnavailable(f"cannot mount a tmpfs at {self.mountpoint}: {done.stderr.strip()}")
        self.mounted = True
        os.makedirs(self.data_dir, exist_ok=True)

    def usage(self) -> tuple[int, int]:
        """(used, total) bytes."""
        st = os.statvfs(self.mountpoint)
        return (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_blocks * st.f_frsize

    def fill(self) -> int:
        """Write the ballast until the filesystem says ENOSPC; return the bytes written."""
        written = 0
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk in (1 << 20, 1 << 16, 1 << 12, 1 << 9):
                block = b"\0" * chunk
                for _ in range(1 << 16):  # bounded: 64k chunks of each size at most
                    try:
                        written += os.write(fd, block)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)
        return written

    def free(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.ballast)

    def teardown(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", self.mountpoint], capture_output=True, timeout=20)
            self.mounted = False
