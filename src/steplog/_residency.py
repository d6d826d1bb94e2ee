"""Keeping long scans from leaving the LMDB map resident in this process (Linux).

LMDB reads through a shared, read-only mapping of ``data.mdb``: every page a replay
touches stays mapped into the process, counted in its RSS (and in what the OOM
killer weighs), until the kernel reclaims it under pressure. So a long scan (the
history of a long run) calls :meth:`Scan.check` between chunks; once more than a
limit of file pages has become resident since the scan began, the map's pages are
unmapped with ``madvise(MADV_DONTNEED)``.

On a shared file mapping that only drops this process's page-table entries: the
data stays in the page cache, and the next read of a page maps it again (a minor
fault). It is safe while other threads read: they fault the page back in. The map's
address is read from ``/proc/self/maps`` (LMDB does not report it) under the gate's
shared side, so no resize or close can move or unmap it meanwhile. Elsewhere than
Linux this module does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable
from pathlib import Path

#: File pages a long scan (or a long-lived writer) may leave resident in this process
#: before it lets go of the map's pages.
RESIDENT_LIMIT = 32 << 20

_LINUX = sys.platform.startswith("linux")
_MADV_DONTNEED = 4  # Linux's value
_PAGE = os.sysconf("SC_PAGE_SIZE") if _LINUX else 4096

_madvise: Callable[[int, int, int], int] | None = None
if _LINUX:
    try:
        _libc = ctypes.CDLL(None, use_errno=True)
        _fn = _libc.madvise
        _fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        _fn.restype = ctypes.c_int
        _madvise = _fn
    except (OSError, AttributeError):  # no libc symbol: leave residency to the kernel
        _madvise = None


def file_resident() -> int | None:
    """Bytes of file-backed (and shared) memory resident in this process, or None
    where it cannot be read."""
    if _madvise is None:
        return None
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[2]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def unmap_resident(data_file: tuple[int, int]) -> None:
    """Drop this process's mapped pages of the file with (st_dev, st_ino)
    ``data_file``. Call only while the map cannot be resized or closed."""
    if _madvise is None:
        return
    dev, ino = data_file
    try:
        with open("/proc/self/maps") as f:
            lines = f.readlines()
    except OSError:
        return
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 5 or fields[4] != str(ino):
            continue
        major, _, minor = fields[3].partition(":")
        try:
            if os.makedev(int(major, 16), int(minor, 16)) != dev:
                continue
            start, _, end = fields[0].partition("-")
            lo, hi = int(start, 16), int(end, 16)
        except ValueError:
            continue
        if "s" in fields[1]:  # only a shared mapping refaults from the file unchanged
            _madvise(lo, hi - lo, _MADV_DONTNEED)


class Scan:
    """Residency bookkeeping of one long scan: ``check()`` between its chunks. A scan
    of one chunk reads nothing; counting starts at the second check (``now``: at once)."""

    __slots__ = ("_base", "_release", "_warmup")

    def __init__(self, release: Callable[[], None], *, now: bool = False) -> None:
        self._release = release
        self._warmup = 0 if now else 2
        self._base = file_resident() if now else None

    def check(self) -> None:
        if self._warmup:
            self._warmup -= 1
            if not self._warmup:
                self._base = file_resident()
            return
        if self._base is None:
            return
        now = file_resident()
        if now is None or now - self._base <= RESIDENT_LIMIT:
            return
        self._release()
        self._base = file_resident()  # counting afresh: other files' pages are not ours


def identity(path: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of ``path``, or None if it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino
