"""``AsyncStore``: the Store's API as coroutines, on anyio (asyncio and trio).

Writes never block the event loop: they run in a worker thread and join the store's
group commit, so concurrent tasks share commits and flushes. Point reads (``load``,
``latest``, ``run``, ``lineage``) run inline: they take microseconds. Scans stream in
chunks decoded off the loop. Cancelling a write waits for it to finish (it cannot be
stopped half-way): afterwards it has either committed or left no trace, and ``load``
tells which.
"""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from itertools import islice
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from steplog import _validate
from steplog.errors import InvalidArgument, RunNotFound
from steplog.model import TERMINAL_STATUSES, Checkpoint, RunInfo, Status, VerifyReport
from steplog.store import AppendBatch, Store

__all__ = ["AsyncStore", "open_async"]

T = TypeVar("T")

#: Checkpoints decoded per worker-thread hop while streaming.
STREAM_CHUNK = 256
#: How often ``follow`` looks for new checkpoints when it has caught up (seconds).
DEFAULT_POLL_INTERVAL = 0.02


def open_async(path: str | os.PathLike[str], **options: Any) -> AsyncStore:
    """Open the store at ``path`` for async use; same options as :func:`steplog.open`.

    Use as ``async with steplog.open_async(path) as store:`` or close with
    ``await store.aclose()``.
    """
    return AsyncStore(Store(path, **options))


class AsyncStore:
    """Async twin of :class:`~steplog.Store`; same method names and semantics."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def __aenter__(self) -> AsyncStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Wait for queued writes to commit, then close."""
        await anyio.to_thread.run_sync(self.store.close)

    async def _off_loop(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))

    # ------------------------------------------------------------------ writes

    async def append(
        self,
        run_id: str,
        state: Any,
        *,
        workflow_id: str | None = None,
        node: str | None = None,
        status: Status | str = Status.RUNNING,
        metadata: Mapping[str, Any] | None = None,
        expected_index: int | None = None,
    ) -> Checkpoint:
        """See :meth:`Store.append`."""
        result: Checkpoint = await self._off_loop(
            self.store.append,
            run_id,
            state,
            workflow_id=workflow_id,
            node=node,
            status=status,
            metadata=metadata,
            expected_index=expected_index,
        )
        return result

    async def append_many(
        self, run_id: str, states: Iterable[Any], **kwargs: Any
    ) -> list[Checkpoint]:
        """See :meth:`Store.append_many`."""
        result: list[Checkpoint] = await self._off_loop(
            self.store.append_many, run_id, list(states), **kwargs
        )
        return result

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[AppendBatch]:
        """See :meth:`Store.batch`: ``async with store.batch() as b: b.append(...)``."""
        collector = AppendBatch(self.store)
        yield collector
        await anyio.to_thread.run_sync(collector.commit)

    async def fork(
        self,
        source_run_id: str,
        index: int,
        new_run_id: str,
        *,
        overrides: Any = None,
        workflow_id: str | None = None,
    ) -> Checkpoint:
        """See :meth:`Store.fork`."""
        result: Checkpoint = await self._off_loop(
            self.store.fork,
            source_run_id,
            index,
            new_run_id,
            overrides=overrides,
            workflow_id=workflow_id,
        )
        return result

    async def delete_latest(self, run_id: str) -> Checkpoint | None:
        """See :meth:`Store.delete_latest`."""
        result: Checkpoint | None = await self._off_loop(self.store.delete_latest, run_id)
        return result

    async def purge(self, run_id: str) -> int:
        """See :meth:`Store.purge`."""
        result: int = await self._off_loop(self.store.purge, run_id)
        return result

    # ------------------------------------------------------------------ point reads (inline)

    async def load(
        self, run_id: str, index: int | None = None, *, node: str | None = None, type: Any = None
    ) -> Checkpoint | None:
        """See :meth:`Store.load`."""
        return self.store.load(run_id, index, node=node, type=type)

    async def latest(self, workflow_id: str) -> Checkpoint | None:
        """See :meth:`Store.latest`."""
        return self.store.latest(workflow_id)

    async def run(self, run_id: str) -> RunInfo | None:
        """See :meth:`Store.run`."""
        return self.store.run(run_id)

    async def lineage(self, run_id: str) -> list[RunInfo]:
        """See :meth:`Store.lineage`."""
        return self.store.lineage(run_id)

    async def children(self, run_id: str, index: int | None = None) -> list[str]:
        """See :meth:`Store.children`."""
        return self.store.children(run_id, index)

    # ------------------------------------------------------------------ scans (off the loop)

    async def runs(
        self,
        workflow_id: str | None = None,
        *,
        status: Status | str | None = None,
        limit: int | None = None,
    ) -> list[RunInfo]:
        """See :meth:`Store.runs`."""
        result: list[RunInfo] = await self._off_loop(
            self.store.runs, workflow_id, status=status, limit=limit
        )
        return result

    async def history(
        self,
        run_id: str,
        *,
        start: int = 0,
        stop: int | None = None,
        node: str | None = None,
        type: Any = None,
    ) -> AsyncIterator[Checkpoint]:
        """See :meth:`Store.history`: an async iterator, decoded in chunks off the loop
        (RunNotFound is raised on the first iteration)."""
        it = self.store.history(run_id, start=start, stop=stop, node=node, type=type)
        while True:
            chunk: list[Checkpoint] = await anyio.to_thread.run_sync(
                lambda: list(islice(it, STREAM_CHUNK))
            )
            if not chunk:
                return
            for cp in chunk:
                yield cp

    def _same_run(self, run_id: str, run_no: int, start: int) -> list[Checkpoint]:
        """Up to a chunk of checkpoints from ``start``, all of run number ``run_no``
        (RunNotFound if the id now names another run, or none)."""
        try:
            chunk = list(islice(self.store.history(run_id, start=start), STREAM_CHUNK))
        except RunNotFound:
            chunk = []
        numbered = self.store._numbered_run(run_id)
        if numbered is None or numbered[0] != run_no:
            raise RunNotFound(run_id)  # the run number was the same before and after
        return chunk

    async def verify(self) -> VerifyReport:
        """See :meth:`Store.verify` (runs off the loop)."""
        result: VerifyReport = await self._off_loop(self.store.verify)
        return result

    async def follow(
        self,
        run_id: str,
        *,
        start: int = 0,
        keep_following: bool = False,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> AsyncIterator[Checkpoint]:
        """Yield every checkpoint of ``run_id`` from ``start`` in index order, then each
        new one as it is appended, by this or any other process.

        Ends once the run's latest checkpoint has a terminal status (completed or
        failed) and everything up to it was yielded, unless ``keep_following``. Waits
        for a run that does not exist yet; raises RunNotFound once the run it followed
        is purged (also if a new run has since taken its id). No index is skipped or
        repeated, provided checkpoints already yielded are not deleted with
        ``delete_latest`` meanwhile.
        """
        _validate.ident(run_id, "run_id")
        next_index = _validate.optional_nonnegative(start, "start") or 0
        if poll_interval <= 0:
            raise InvalidArgument(f"poll_interval must be > 0, got {poll_interval}")
        followed: int | None = None  # the run's number, once seen
        while True:
            numbered = self.store._numbered_run(run_id)
            if numbered is None:
                if followed is not None:
                    raise RunNotFound(run_id)
                await anyio.sleep(poll_interval)
                continue
            run_no, info = numbered
            if followed is None:
                followed = run_no
            elif run_no != followed:
                raise RunNotFound(run_id)
            if info.length > next_index:
                chunk = await self._off_loop(self._same_run, run_id, followed, next_index)
                for cp in chunk:
                    yield cp
                    next_index = cp.index + 1
                continue
            if (
                info is not None
                and not keep_following
                and info.status in TERMINAL_STATUSES
                and next_index >= info.length
            ):
                return
            await anyio.sleep(poll_interval)
