"""The LMDB environment: creating it privately, checking its format, growing its map.

LMDB may not change its map size while any transaction of this process is open, so
every transaction runs inside :class:`Gate`'s shared side and a resize takes its
exclusive side.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import lmdb
import msgspec

from steplog import _keys
from steplog.errors import NotAStore, StorageError, UnsupportedFormat

FORMAT_MAGIC = "steplog"
#: The format new stores are made in. 2: a node entry stands for a streak of the
#: node's consecutive checkpoints (_keys.node_prefix); format 1 wrote one entry per
#: checkpoint. 3: a run's newest streaks live in its header (its ``tail``) until a
#: few have gathered, and only then go into the node index. All are read; a store
#: keeps writing in the format it was made in, so a store stays readable by the
#: steplog that made it.
FORMAT_VERSION = 3
#: The first format whose node entries may stand for more than one checkpoint.
STREAKS = 2
#: The first format whose run headers hold their newest streaks (see _RunHeader.tail).
TAILS = 3

#: Initial map: large enough that most stores never resize (the file grows only as
#: data is written; the map is address space, not disk).
DEFAULT_MAP_SIZE = 1 << 30
#: Each growth at least doubles the map, so a burst of appends triggers few resizes.
MIN_GROWTH = 64 << 20
#: Concurrent read transactions (threads x processes) before LMDB refuses a reader.
MAX_READERS = 1024

_LMDB_FILES = ("data.mdb", "lock.mdb")


class _FormatMarker(msgspec.Struct):
    magic: str
    version: int


class Gate:
    """A readers-writer gate: many transactions, or one map resize."""

    def __init__(self) -> None:
        # every transaction passes here twice: the lock is taken directly, not through
        # the Condition's Python-level ``with``
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._active = 0
        self._exclusive = False

    def enter(self) -> None:
        """Take the shared side (pair with :meth:`leave`)."""
        with self._lock:
            while self._exclusive:
                self._cond.wait()
            self._active += 1

    def leave(self) -> None:
        with self._lock:
            self._active -= 1
            if self._active == 0 and self._exclusive:
                self._cond.notify_all()

    @contextmanager
    def shared(self) -> Iterator[None]:
        self.enter()
        try:
            yield
        finally:
            self.leave()

    def acquire_exclusive(self) -> None:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._exclusive = True
            try:
                while self._active:
                    self._cond.wait()
            except BaseException:  # interrupted while waiting: do not leave the gate shut
                self._exclusive = False
                self._cond.notify_all()
                raise

    def release_exclusive(self) -> None:
        with self._cond:
            self._exclusive = False
            self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        self.acquire_exclusive()
        try:
            yield
        finally:
            self.release_exclusive()


def private_dir(path: Path) -> None:
    """Make sure ``path`` is a directory; the ones created here (the store's and any
    missing parents) are 0700 whatever the umask."""
    try:
        if path.exists():
            if not path.is_dir():
                raise NotAStore(f"{str(path)!r} is not a directory, so not a steplog store")
            return
    except OSError as exc:
        raise StorageError(f"cannot open store directory {str(path)!r}: {exc}") from exc
    missing = [path]
    while not missing[-1].parent.exists() and missing[-1].parent != missing[-1]:
        missing.append(missing[-1].parent)
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            # Another process created it between our check and mkdir: it is theirs to chmod.
            if not directory.is_dir():
                raise NotAStore(
                    f"{str(directory)!r} is not a directory, so not a steplog store"
                ) from None
            continue
        except OSError as exc:
            raise StorageError(f"cannot create store directory {str(path)!r}: {exc}") from exc
        try:
            os.chmod(directory, 0o700)
        except OSError as exc:
            raise StorageError(f"cannot create store directory {str(path)!r}: {exc}") from exc


@contextmanager
def _creation_lock(path: Path) -> Iterator[None]:
    """Serialise opening the store across processes (flock on the directory itself,
    so no extra file), so that two processes creating one store at once cannot see
    each other's half-made files: one creates, the other finds a finished store."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise StorageError(f"cannot open store directory {str(path)!r}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _private_files(path: Path) -> None:
    """Create LMDB's files as 0600 before LMDB does, whatever the umask."""
    for name in _LMDB_FILES:
        fd = os.open(path / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)


def open_env(path: Path, map_size: int, *, metasync: bool = True) -> tuple[lmdb.Environment, int]:
    """Open (creating if absent) the store at ``path``; everything lives in LMDB's main
    database, split into tables by key prefix (see _keys).

    Commits always flush data (sync); ``metasync=False`` defers the metadata flush
    (LMDB's NOMETASYNC: an OS crash may undo the last commit, never corrupts).
    Returns the environment and the store's format version.
    """
    private_dir(path)
    with _creation_lock(path):
        return _open_locked(path, map_size, metasync)


def _open_locked(path: Path, map_size: int, metasync: bool) -> tuple[lmdb.Environment, int]:
    try:
        existing = (path / "data.mdb").exists()
        had_lock = (path / "lock.mdb").exists()
        if not existing:
            others = [p.name for p in path.iterdir()]
            if others:
                raise NotAStore(
                    f"{str(path)!r} is not empty and holds no steplog store "
                    f"(found {', '.join(sorted(others)[:5])})"
                )
            _private_files(path)
    except OSError as exc:
        raise StorageError(f"cannot open store at {str(path)!r}: {exc}") from exc
    try:
        env = lmdb.open(
            str(path),
            map_size=map_size,
            subdir=True,
            mode=0o600,
            max_dbs=0,
            max_readers=MAX_READERS,
            readahead=False,
            sync=True,
            metasync=metasync,
            writemap=False,
            max_spare_txns=0,
        )
    except lmdb.Error as exc:
        # leave the directory as it was found: remove the files this call created
        created = _LMDB_FILES if not existing else () if had_lock else ("lock.mdb",)
        for name in created:
            with suppress(OSError):
                (path / name).unlink(missing_ok=True)
        if isinstance(exc, lmdb.InvalidError):
            raise NotAStore(f"{str(path)!r} holds a data.mdb that is not LMDB's") from None
        raise StorageError(f"cannot open store at {str(path)!r}: {exc}") from exc
    try:
        env.reader_check()
        version = _init(env, path, existing)
    except BaseException:
        env.close()
        raise
    return env, version


def _init(env: lmdb.Environment, path: Path, existing: bool) -> int:
    """Check an existing store's format marker (writing nothing), or write a new one's
    (also for an empty environment: a first open that died before its first commit);
    return the store's format version."""
    try:
        if existing and env.stat()["entries"]:
            with env.begin() as txn:
                return _check_format(path, txn.get(_keys.META_FORMAT))
        with env.begin(write=True) as txn:
            marker = _FormatMarker(FORMAT_MAGIC, FORMAT_VERSION)
            txn.put(_keys.META_FORMAT, msgspec.msgpack.encode(marker))
        for name in _LMDB_FILES:  # a store made here is private, whoever made the files
            os.chmod(path / name, 0o600)
        return FORMAT_VERSION
    except lmdb.Error as exc:
        raise StorageError(f"cannot open store at {str(path)!r}: {exc}") from exc


def _check_format(path: Path, raw: bytes | None) -> int:
    if raw is None:
        raise NotAStore(f"{str(path)!r} holds an LMDB environment that is not a steplog store")
    try:
        marker = msgspec.msgpack.decode(raw, type=_FormatMarker)
    except msgspec.DecodeError:
        raise NotAStore(f"{str(path)!r} has an unreadable format marker") from None
    if marker.magic != FORMAT_MAGIC:
        raise NotAStore(f"{str(path)!r} is not a steplog store")
    if marker.version > FORMAT_VERSION:
        raise UnsupportedFormat(
            f"{str(path)!r} was written in steplog format {marker.version}; this steplog "
            f"reads format {FORMAT_VERSION} or older. Upgrade steplog to open it."
        )
    return marker.version


def next_map_size(current: int, used: int, limit: int | None) -> int:
    """The map size after one growth step, or raise StorageError at ``limit``."""
    target = max(current * 2, used + MIN_GROWTH)
    if limit is not None:
        if current >= limit:
            raise StorageError(
                f"the store reached its max_map_size of {limit} bytes; nothing was written"
            )
        target = min(target, limit)
    return target
