"""AsyncStore on asyncio and trio: the contract suite, concurrency, cancellation, follow."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

import steplog
from steplog import AsyncStore, Status
from steplog.testing import StoreContract

BACKENDS = ["asyncio", "trio"]


class BlockingAsyncStore:
    """Drives an AsyncStore from synchronous test code through a blocking portal, so
    the shared contract suite runs against the async API on a real event loop."""

    def __init__(self, path: Path, backend: str) -> None:
        self._cm: AbstractContextManager[BlockingPortal] = start_blocking_portal(backend)
        self._portal = self._cm.__enter__()
        self._store: AsyncStore = self._portal.call(lambda: _open(path))

    def close(self) -> None:
        if self._cm is None:
            self._store.store.close()
            return
        try:
            self._portal.call(self._store.aclose)
        finally:
            self._cm.__exit__(None, None, None)
            self._cm = None  # type: ignore[assignment]

    def _call(self, fn: Callable[[], Any]) -> Any:
        if self._cm is None:  # closed: the async methods must refuse, like the sync ones
            return anyio.run(fn)
        return self._portal.call(fn)

    def history(self, run_id: str, **kwargs: Any) -> Iterator[Any]:
        async def collect() -> list[Any]:
            return [cp async for cp in self._store.history(run_id, **kwargs)]

        return iter(self._call(collect))

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._store, name)
        return lambda *args, **kwargs: self._call(lambda: method(*args, **kwargs))


async def _open(path: Path) -> AsyncStore:
    return steplog.open_async(path)


class TestAsyncStoreOnAsyncio(StoreContract):
    def open_store(self, path: Path) -> Any:
        return BlockingAsyncStore(path, "asyncio")


class TestAsyncStoreOnTrio(StoreContract):
    def open_store(self, path: Path) -> Any:
        return BlockingAsyncStore(path, "trio")


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.anyio
async def test_hundred_concurrent_tasks_share_commits(tmp_path: Path) -> None:
    async with steplog.open_async(tmp_path / "s") as store:
        async with anyio.create_task_group() as tg:
            for t in range(100):
                tg.start_soon(_append_n, store, f"task-{t}", 5)
        runs = await store.runs()
        assert len(runs) == 100 and all(r.length == 5 for r in runs)
        writer = store.store._writer
        assert writer.commits < writer.committed_ops


async def _append_n(store: AsyncStore, run_id: str, n: int) -> None:
    for i in range(n):
        cp = await store.append(run_id, {"i": i})
        assert cp.index == i


@pytest.mark.anyio
async def test_writes_do_not_block_the_event_loop(tmp_path: Path) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.001)
            ticks += 1

    async with steplog.open_async(tmp_path / "s") as store:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            start = time.monotonic()
            for i in range(30):
                await store.append("r", {"blob": "x" * 50_000, "i": i})
            elapsed = time.monotonic() - start
            tg.cancel_scope.cancel()
    # the loop kept running while 30 durable appends were in flight
    assert ticks >= min(10, elapsed / 0.01)


@pytest.mark.anyio
async def test_cancelled_append_either_committed_or_left_no_trace(tmp_path: Path) -> None:
    async with steplog.open_async(tmp_path / "s") as store:
        cancelled = committed_anyway = 0
        length = 0
        for attempt in range(30):
            with anyio.move_on_after(0.0003 * (attempt % 6)) as scope:
                await store.append("r", {"attempt": attempt})
            info = await store.run("r")
            now = info.length if info else 0
            assert now in (length, length + 1)  # all or nothing, never more
            latest = await store.load("r")
            if now == length + 1:
                assert latest is not None and latest.state == {"attempt": attempt}
                committed_anyway += scope.cancelled_caught
            else:
                assert scope.cancelled_caught  # only a cancelled append may be missing
            cancelled += scope.cancelled_caught
            length = now
        assert cancelled > 0  # the test did exercise cancellation
        states = [cp.state["attempt"] async for cp in store.history("r")]
        assert states == sorted(set(states))


@pytest.mark.anyio
async def test_follow_yields_history_then_live_checkpoints(tmp_path: Path) -> None:
    async with steplog.open_async(tmp_path / "s") as store:
        await store.append("r", 0)
        await store.append("r", 1)
        seen: list[int] = []

        async def writer() -> None:
            for i in range(2, 6):
                await anyio.sleep(0.01)
                done = i == 5
                await store.append("r", i, status=Status.COMPLETED if done else Status.RUNNING)

        async with anyio.create_task_group() as tg:
            tg.start_soon(writer)
            with anyio.fail_after(10):
                async for cp in store.follow("r", poll_interval=0.005):
                    seen.append(cp.state)
        assert seen == [0, 1, 2, 3, 4, 5]
        tail = [cp.index async for cp in store.follow("r", start=4)]
        assert tail == [4, 5]


@pytest.mark.anyio
@pytest.mark.parametrize("reuse", [False, True])
async def test_follow_ends_with_run_not_found_when_its_run_is_purged(
    tmp_path: Path, reuse: bool
) -> None:
    """A purged run's history is gone: its follower raises RunNotFound rather than
    waiting forever, or going on with a new run that took the same id."""
    async with steplog.open_async(tmp_path / "s") as store:
        for i in range(3):
            await store.append("r", {"gen": 1, "i": i})
        seen: list[Any] = []

        async def follower() -> None:
            with pytest.raises(steplog.RunNotFound):
                async for cp in store.follow("r", poll_interval=0.005):
                    seen.append(cp.state)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(follower)
                while len(seen) < 3:
                    await anyio.sleep(0.005)
                await store.purge("r")
                if reuse:
                    for i in range(5):
                        await store.append("r", {"gen": 2, "i": i})
        assert seen == [{"gen": 1, "i": i} for i in range(3)]


@pytest.mark.anyio
async def test_follow_waits_for_a_run_that_does_not_exist_yet(tmp_path: Path) -> None:
    async with steplog.open_async(tmp_path / "s") as store:

        async def later() -> None:
            await anyio.sleep(0.02)
            await store.append("late", "a")
            await store.append("late", "b", status="failed")

        async with anyio.create_task_group() as tg:
            tg.start_soon(later)
            with anyio.fail_after(10):
                got = [cp.state async for cp in store.follow("late", poll_interval=0.005)]
        assert got == ["a", "b"]


@pytest.mark.anyio
async def test_follow_sees_appends_of_another_process(tmp_path: Path) -> None:
    path = tmp_path / "s"
    script = (
        "import sys, time, steplog\n"
        "with steplog.open(sys.argv[1]) as s:\n"
        "    for i in range(20):\n"
        "        time.sleep(0.005)\n"
        "        s.append('shared', i, status='completed' if i == 19 else 'running')\n"
    )
    async with steplog.open_async(path) as store:
        proc = subprocess.Popen([sys.executable, "-c", script, str(path)])
        try:
            with anyio.fail_after(60):
                got = [cp.index async for cp in store.follow("shared", poll_interval=0.005)]
        finally:
            proc.wait(timeout=60)
        assert got == list(range(20))


@pytest.mark.anyio
async def test_async_batch_and_append_many(tmp_path: Path) -> None:
    async with steplog.open_async(tmp_path / "s") as store:
        async with store.batch() as b:
            b.append("a", 1)
            b.append("b", 2)
        assert [c.run_id for c in b.checkpoints] == ["a", "b"]
        cps = await store.append_many("a", [2, 3])
        assert [c.index for c in cps] == [1, 2]
