"""A small real filesystem that the test fills up: a tmpfs mounted in a temp dir.

`small_fs(size)` mounts it (skipping the test, with the reason, where mounting is not
permitted: it needs root or CAP_SYS_ADMIN) and unmounts and removes it afterwards; `Filler`
fills it to the last page with one file (ENOSPC from then on) and frees it again.
"""
from __future__ import annotations

import errno
import os
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest


@contextmanager
def small_fs(size: str = "2m") -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="fn-fs-", dir="/tmp"))
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(d)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        d.rmdir()
        pytest.skip(f"cannot mount a {size} tmpfs for the full-disk test ({r.stderr.strip() or r.returncode}); "
                    f"it needs root or CAP_SYS_ADMIN")
    try:
        yield d
    finally:
        if subprocess.run(["umount", str(d)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(d)], capture_output=True)
        d.rmdir()


class Filler:
    """One file that takes every free byte of the filesystem at `root`."""

    def __init__(self, root: Path) -> None:
        self.path = root / "filler"

    def fill(self) -> int:
        """Write until ENOSPC (64 KiB then 4 KiB chunks); returns the bytes written."""
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        total = 0
        try:
            for chunk in (b"\0" * 65536, b"\0" * 4096, b"\0" * 512, b"\0"):
                while True:
                    try:
                        total += os.write(fd, chunk)
                    except OSError as e:
                        if e.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)
        return total

    def free(self) -> None:
        self.path.unlink(missing_ok=True)
