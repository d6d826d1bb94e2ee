"""One open LMDB environment per store directory per process, shared by its handles.

LMDB forbids opening the same environment twice in one process, so every
:class:`~steplog.Store` (and AsyncStore) on a directory shares one :class:`Engine`:
the environment, its resize gate, its group-commit writer and its payload cache.
The engine closes when its last handle does.

fork(): a handle cannot cross fork(). Before a fork, each engine's gate is taken
exclusively (no transaction of this process is open while the address space is
copied); in the child, inherited engines are marked forked, their environments are
closed without touching state shared with the parent, and the store can be opened
afresh.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import lmdb

from steplog import _cache, _env, _residency, _writer
from steplog.errors import InvalidArgument, StorageError, StoreClosed


class Engine:
    def __init__(
        self, path: Path, metasync: bool, map_size: int, max_map_size: int | None, cache_size: int
    ) -> None:
        self.path = path
        self.metasync = metasync
        self.max_map_size = max_map_size
        self.env: lmdb.Environment | None
        self.env, version = _env.open_env(path, map_size, metasync=metasync)
        #: whether a node entry may stand for a streak of checkpoints (format 2 on)
        self.streaks = version >= _env.STREAKS
        #: whether a run header holds the run's newest streaks (format 3 on)
        self.tails = version >= _env.TAILS
        self.gate = _env.Gate()
        self._session = _Session(self)
        self.data_file = _residency.identity(path / "data.mdb")
        #: what the process holds of the map, checked by the writer now and then
        self.residency = _residency.Scan(self.unmap_resident, now=True)
        self.cache = _cache.LatestCache(cache_size)
        self.writer = _writer.Writer(
            self.session,
            self.grow_map,
            self.adopt_map_size,
            self.reclaim_readers,
            self.residency.check,
        )
        self.handles = 0
        self.forked = False

    def live(self) -> lmdb.Environment:
        env = self.env
        if self.forked:
            raise StoreClosed(
                f"the store at {str(self.path)!r} was opened before this process was "
                "forked; open it again in the child (a handle cannot cross fork())"
            )
        if env is None:
            raise StoreClosed(f"the store at {str(self.path)!r} is closed")
        return env

    def session(self) -> _Session:
        """The live environment, held safe from a map resize while in use
        (``with engine.session() as env``)."""
        return self._session

    def grow_map(self) -> None:
        with self.gate.exclusive():
            env = self.live()
            info = env.info()
            used = (info["last_pgno"] + 1) * env.stat()["psize"]
            env.set_mapsize(_env.next_map_size(info["map_size"], used, self.max_map_size))

    def adopt_map_size(self) -> None:
        """Another process grew the map: map the new size."""
        with self.gate.exclusive():
            self.live().set_mapsize(0)

    def unmap_resident(self) -> None:
        """Let go of the map's pages resident in this process (see _residency)."""
        with self.session():
            self.unmap_resident_held()

    def unmap_resident_held(self) -> None:
        """:meth:`unmap_resident` for a caller already inside the gate's shared side."""
        if self.data_file is not None:
            _residency.unmap_resident(self.data_file)

    def reclaim_readers(self) -> int:
        """Free reader slots of processes that died mid-read; return how many."""
        with self.session() as env:
            return int(env.reader_check())

    def close(self) -> None:
        self.writer.close()
        with self.gate.exclusive():
            env, self.env = self.env, None
            if env is not None:
                env.close()


class _Session:
    """:meth:`Engine.session`'s context manager: every transaction passes through it,
    so it is a plain class (half the cost of a generator-based one) and, holding no
    state of its own, one instance serves every thread."""

    __slots__ = ("_engine",)

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def __enter__(self) -> lmdb.Environment:
        engine = self._engine
        engine.gate.enter()
        try:
            return engine.live()
        except BaseException:
            engine.gate.leave()
            raise

    def __exit__(self, *exc: object) -> None:
        self._engine.gate.leave()


_lock = threading.Lock()
_engines: dict[tuple[int, int], Engine] = {}
#: Engines whose last handle is closing them (LMDB refuses to open an environment
#: twice in one process, so an open of the same store waits for the close to finish).
_closing: dict[tuple[int, int], threading.Event] = {}


def acquire(
    path: Path, metasync: bool, map_size: int, max_map_size: int | None, cache_size: int
) -> Engine:
    """The engine of the store at ``path``, opening it if this process has not."""
    while True:
        with _lock:
            _env.private_dir(path)
            try:
                st = os.stat(path)
            except OSError as exc:
                raise StorageError(f"cannot open store at {str(path)!r}: {exc}") from exc
            key = (st.st_dev, st.st_ino)
            closing = _closing.get(key)
            if closing is None:
                engine = _engines.get(key)
                if engine is not None and engine.env is not None and not engine.forked:
                    if engine.metasync != metasync:
                        raise InvalidArgument(
                            f"the store at {str(path)!r} is already open in this process "
                            "with another durability; open it with the same one"
                        )
                else:
                    engine = Engine(path, metasync, map_size, max_map_size, cache_size)
                    _engines[key] = engine
                engine.handles += 1
                return engine
        closing.wait()


def release(engine: Engine) -> None:
    """A handle closed; close the engine with its last handle."""
    with _lock:
        engine.handles -= 1
        if engine.handles > 0:
            return
        keys = [key for key, known in _engines.items() if known is engine]
        for key in keys:
            del _engines[key]
        done = threading.Event()
        for key in keys:
            _closing[key] = done
    try:
        if not engine.forked:
            engine.close()
    finally:
        with _lock:
            for key in keys:
                if _closing.get(key) is done:
                    del _closing[key]
        done.set()


def _before_fork() -> None:
    _lock.acquire()
    for engine in _engines.values():
        engine.gate.acquire_exclusive()


def _after_fork_in_parent() -> None:
    for engine in _engines.values():
        engine.gate.release_exclusive()
    _lock.release()


def _after_fork_in_child() -> None:
    for engine in _engines.values():
        engine.forked = True
        env, engine.env = engine.env, None
        if env is not None:
            # No transaction was open at fork time (the gate was held), so closing
            # only unmaps and closes this process's descriptors; the parent's reader
            # slots and locks are untouched.
            try:
                env.close()
            except lmdb.Error:
                pass
        engine.gate.release_exclusive()
    _engines.clear()
    for done in _closing.values():  # their closing threads were not forked
        done.set()
    _closing.clear()
    _lock.release()


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)
