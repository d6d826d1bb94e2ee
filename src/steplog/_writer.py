"""Group commit: one thread owns LMDB write transactions and commits queued writes together.

Callers from any thread submit an operation and block until the batch holding it has
committed (and flushed, per the store's durability). Each operation runs in its own
nested transaction inside the batch's transaction, so an operation that raises (bad
input found late, IndexConflict, ...) is rolled back alone and fails only its caller;
the rest of the batch commits.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import lmdb

from steplog.errors import StorageError, StoreClosed

if TYPE_CHECKING:
    from typing import TypeAlias

    Txn: TypeAlias = lmdb.Transaction[bytes]

T = TypeVar("T")

#: Most operations in one commit: bounds the latency a batch adds to its first caller
#: and the size of one transaction's dirty page list.
MAX_BATCH = 512


class Batch:
    """What one group commit's operations share: hooks to run after a durable commit and
    a scratch space (e.g. payloads written earlier in the same batch)."""

    __slots__ = ("after_commit", "scratch")

    def __init__(self) -> None:
        self.after_commit: list[Callable[[], None]] = []
        self.scratch: dict[Any, Any] = {}


Op = Callable[["Txn", Batch], T]


class _Pending(Generic[T]):
    __slots__ = ("done", "error", "hooks", "op", "result")

    def __init__(self, op: Op[T]) -> None:
        self.op = op
        self.done = threading.Lock()
        self.done.acquire()
        self.result: T | None = None
        self.error: BaseException | None = None
        self.hooks: list[Callable[[], None]] = []


class Writer:
    """The store's single writer thread and its queue."""

    def __init__(
        self,
        session: Callable[[], AbstractContextManager[lmdb.Environment]],
        on_map_full: Callable[[], None],
        on_map_resized: Callable[[], None],
        name: str,
    ) -> None:
        self._session = session
        self._on_map_full = on_map_full
        self._on_map_resized = on_map_resized
        self._queue: deque[_Pending[Any]] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._closing = False
        #: Group commits that reached disk, and operations they acknowledged.
        self.commits = 0
        self.committed_ops = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, op: Op[T]) -> T:
        """Run ``op`` in the next group commit; return its result once durable."""
        pending: _Pending[T] = _Pending(op)
        with self._cond:
            if self._closing:
                raise StoreClosed("the store is closed")
            self._queue.append(pending)
            self._cond.notify()
        pending.done.acquire()
        if pending.error is not None:
            raise pending.error
        return pending.result  # type: ignore[return-value]

    def close(self) -> None:
        """Commit what is queued, then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), MAX_BATCH))]
            self._commit(batch)

    def _commit(self, batch: list[_Pending[Any]]) -> None:
        live = batch
        try:
            while True:
                try:
                    self._attempt(live)
                    break
                except lmdb.MapFullError:
                    self._on_map_full()
                except lmdb.MapResizedError:
                    self._on_map_resized()
                live = [p for p in live if p.error is None]
        except StoreClosed as exc:
            for p in live:
                p.error = p.error or exc
        except lmdb.Error as exc:
            failure = StorageError(f"commit failed, nothing of this batch was written: {exc}")
            for p in live:
                p.error = p.error or failure
        except BaseException as exc:  # StorageError from map growth, or a bug: fail the batch
            for p in live:
                p.error = p.error or exc
        for p in batch:
            if p.error is None:
                for hook in p.hooks:
                    hook()
            p.done.release()

    def _attempt(self, batch: list[_Pending[Any]]) -> None:
        shared = Batch()
        with self._session() as env:
            txn = env.begin(write=True)
            try:
                for p in batch:
                    p.error = None
                    mark = len(shared.after_commit)
                    child = env.begin(write=True, parent=txn)
                    try:
                        p.result = p.op(child, shared)
                        child.commit()
                    except lmdb.Error:
                        child.abort()
                        raise
                    except Exception as exc:  # the op's own failure: roll back just it
                        child.abort()
                        p.error = exc
                        del shared.after_commit[mark:]
                        continue
                    p.hooks = shared.after_commit[mark:]
                txn.commit()
                self.commits += 1
                self.committed_ops += sum(1 for p in batch if p.error is None)
            except BaseException:
                txn.abort()
                raise
