"""A full disk: one error line naming the folder, the free space left and the size of the write that failed.

Writers call ``write_all`` (or let ``runs.atomic_path`` translate the ``OSError``); ``DiskFullError`` is an
``SfdaError`` (exit 2) that commands can tell apart, e.g. to keep what was written before and mark the run
failed instead of deleting it.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Optional

from sfda_deploy.errors import SfdaError

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(SfdaError):
    """The disk (or quota) filled up while writing ``path``; ``free`` bytes were left, ``size`` bytes were
    to be written (None: unknown), ``bound`` says when that is a bound (``"at least "``, ``"up to "``)."""

    def __init__(self, path: Path | str, size: Optional[int], bound: str = ""):
        self.path, self.size, self.free = Path(path), size, free_bytes(Path(path).parent)
        what = "size unknown" if size is None else bound + format_bytes(size)
        left = "unknown" if self.free is None else format_bytes(self.free)
        super().__init__(f"the disk is full: writing {self.path.name} ({what}) into {self.path.parent} failed "
                         f"with {left} free: free some space or write elsewhere (SFDA_RUNS_DIR=/path)")


def is_disk_full(error: BaseException) -> bool:
    """An ``OSError`` of a full disk or quota (ENOSPC, EDQUOT)."""
    return isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS


def free_bytes(folder: Path | str) -> Optional[int]:
    """Bytes an unprivileged writer may still use in ``folder`` (None if it cannot be read)."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def format_bytes(n: int) -> str:
    """``512 B``, ``4.0 KiB``, ``1.5 MiB``, ``2.0 GiB``."""
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def write_all(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` (not atomically: callers write a temporary name); on a full disk the
    ``OSError`` carries ``write_size`` so ``runs.atomic_path`` can say how big the write was."""
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        e.write_size = len(data)
        raise
