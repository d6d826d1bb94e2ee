"""Group commit: queued writes from many threads share one LMDB commit and one flush.

Callers from any thread submit an operation and block until the batch holding it has
committed (and flushed, per the store's durability). One thread at a time *leads*: it
takes everything queued, runs it in one write transaction (LMDB write transactions are
bound to the thread that began them, and the leader begins and ends its own) and
commits. A caller that finds nobody leading leads a batch of its own operation, on its
own thread, with no hand-off. Callers arriving meanwhile queue up; when that commit is
done, the role passes to the writer's own thread (started with the writer; should none
be had, the caller leads the queue itself), which commits batch after batch, each
holding all that queued during the previous flush, until it finds the queue empty and
gives the role up. Under load one flush thus acknowledges many checkpoints without the
role changing threads between batches. (Measured with 20 StepLogSaver
threads on 2 cores, paired runs: +7 to +26% puts/s, median ~+17%, against handing the
role to the first queued caller each time, whose wake-up and GIL take-over sat on
every commit's critical path.)

An operation that raises (bad input found late, IndexConflict, ...) is rolled back
alone and fails only its caller; the rest of the batch commits. A batch first runs
its operations straight in the write transaction; only if one of them raises is the
transaction dropped and the batch run again with each operation in its own nested
transaction (nesting costs two more LMDB calls per operation on the leader's
critical path; batches rarely fail, so it is paid only then).

Waking a committed batch's callers is left to the next batch when one is queued: it
wakes them after running its operations, just before its commit's flush. Woken
callers run Python at once; under the GIL, with cores to spare, they would take the
GIL from the leader at each of its many short LMDB calls (each call releases it), and
the hand-offs between cores cost more than the work. Woken during the flush, they run
while the leader waits on the disk. (Measured on 2 cores: 16 writer threads ~8,000 ->
~10,300 appends/s, 20 StepLogSaver threads ~2,100 -> ~2,500 puts/s.) A caller thus
returns at most ~1 ms of the next batch's operations later (WAKE_AFTER; before a heavy
operation, at once); with nobody queued, the leader wakes its batch's callers right
after its commit. Either wakes only one of them: each woken caller wakes the next (see
_wake). Should the next batch be held up before it gets there (LMDB's write lock held
by another process, a long first operation), a caller whose batch has committed wakes
itself within SELF_WAKE.

Interrupts (KeyboardInterrupt, ...) reach a caller's thread: while it waits, it
withdraws its operation if still queued; as a lone leader, its batch's outcome is
settled first. Signals never reach the writer's thread.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from itertools import islice
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import lmdb

from steplog.errors import InvalidArgument, StorageError, StoreClosed

if TYPE_CHECKING:
    from typing import TypeAlias

    Txn: TypeAlias = lmdb.Transaction[bytes]

T = TypeVar("T")

#: Every this many commits the leader clears reader slots left by dead processes
#: (they pin old pages, so the file would grow, and fill the reader table).
READER_CHECK_EVERY = 1000
#: Every this many commits the leader checks how much of the map the process holds
#: resident (a few microseconds), and lets go of it past the limit (see _residency).
RESIDENCY_CHECK_EVERY = 32
#: Most operations in one commit: bounds the latency a batch adds to its first caller
#: and the size of one transaction's dirty page list.
MAX_BATCH = 512
#: Callers of the previous batch are woken once this batch's operations have run this
#: long (seconds), or before a heavy one, even before its flush: deferring their wake
#: keeps short batches uncontended, and must not make them wait for a long one.
WAKE_AFTER = 0.001
#: A caller waits at most this long (seconds) at a time for its wake-up; then, if its
#: batch has committed and settled, it returns without waiting for the next batch.
SELF_WAKE = 0.005


#: Run headers the writer keeps between its commits (see Batch.headers).
MAX_HEADERS = 1 << 16

#: Low bits of a recency seq that number the checkpoints within one transaction.
SEQ_SHIFT = 24
_SEQ_MASK = (1 << SEQ_SHIFT) - 1


class Batch:
    """What one group commit's operations share: hooks to run after a durable commit, a
    scratch space (e.g. payloads written earlier in the same batch), the seq clock, and
    the run headers known without reading them.

    ``headers``: run headers (by encoded run id) as of the start of this transaction,
    from the writer's earlier commits, or None when they may not be used: another
    writer (process or handle) committed since, or an operation of this batch not
    known to keep them (anything but a plain append) has run. ``new_headers``: the
    headers appends of this batch wrote; the writer keeps them once it commits."""

    __slots__ = ("_seq", "after_commit", "headers", "new_headers", "scratch")

    def __init__(self, txn_id: int, headers: dict[bytes, Any] | None = None) -> None:
        self.after_commit: list[Callable[[], None]] = []
        self.scratch: dict[Any, Any] = {}
        self._seq = txn_id << SEQ_SHIFT
        self.headers = headers
        self.new_headers: dict[bytes, Any] = {}

    def header(self, rid: bytes) -> Any:
        """The run's header if known without reading it (None: read it)."""
        if self.headers is None:
            return None
        hdr = self.new_headers.get(rid)
        return hdr if hdr is not None else self.headers.get(rid)

    def wrote_header(self, rid: bytes, hdr: Any) -> None:
        if self.headers is not None:
            self.new_headers[rid] = hdr

    def next_seq(self) -> int:
        """A store-wide unique, increasing recency seq: LMDB's id of this write
        transaction (increasing across all processes) joined with a count within it."""
        self._seq += 1
        if not self._seq & _SEQ_MASK:
            raise InvalidArgument(f"one commit can hold at most {_SEQ_MASK} checkpoints")
        return self._seq


Op = Callable[["Txn", Batch], T]


#: _Pending.stage: queued or running; outcome decided (result or error set, the commit
#: landed or not); settled (its after-commit hooks ran too: the caller may return).
_OPEN, _DECIDED, _SETTLED = 0, 1, 2


class _Pending(Generic[T]):
    __slots__ = (
        "abandoned",
        "chain",
        "done",
        "error",
        "heavy",
        "hooks",
        "keeps_headers",
        "op",
        "result",
        "stage",
    )

    def __init__(self, op: Op[T], heavy: bool, keeps_headers: bool = False) -> None:
        self.op = op
        self.heavy = heavy
        #: the op reads and writes run headers only through Batch.header/wrote_header
        self.keeps_headers = keeps_headers
        self.done = threading.Lock()
        self.done.acquire()
        #: its caller left while queued (an interrupt): never run it
        self.abandoned = False
        self.stage = _OPEN
        self.result: T | None = None
        self.error: BaseException | None = None
        self.hooks: list[Callable[[], None]] = []
        #: callers of the same committed batch this one wakes once it is awake itself
        self.chain: list[_Pending[Any]] = []


class Writer:
    """The store's write queue, led by a lone caller or by the writer's own thread."""

    def __init__(
        self,
        session: Callable[[], AbstractContextManager[lmdb.Environment]],
        on_map_full: Callable[[], None],
        on_map_resized: Callable[[], None],
        maintain: Callable[[], object],
        keep_small: Callable[[], object],
    ) -> None:
        self._session = session
        self._maintain = maintain
        self._keep_small = keep_small
        self._on_map_full = on_map_full
        self._on_map_resized = on_map_resized
        self._queue: deque[_Pending[Any]] = deque()
        # taken a few times per write: used directly, the Conditions only for close()
        # (_idle) and the writer's thread (_work)
        self._mutex = threading.Lock()
        self._idle = threading.Condition(self._mutex)
        #: a lone caller, or the writer's thread, leads (runs the next batch)
        self._leading = False
        #: the writer's thread leads: it takes batch after batch until the queue is empty
        self._thread_leads = False
        self._work = threading.Condition(self._mutex)
        self._closing = False
        #: Callers of the last committed batch, still asleep: the next batch wakes them.
        self._deferred: list[_Pending[Any]] = []
        #: Group commits that reached disk, and operations they acknowledged.
        self.commits = 0
        self.committed_ops = 0
        #: run headers as of this writer's last commit (see Batch.headers), and the id
        #: of that commit's transaction: valid while the next one gets the next id
        self._headers: dict[bytes, Any] = {}
        self._headers_txn = -2
        #: the writer's thread, started here rather than at a hand-off (where an
        #: interrupt could cut its start short); None if none could be had: a lone
        #: leader then commits the queue itself
        self._thread: threading.Thread | None = threading.Thread(
            target=self._serve, name="steplog-writer", daemon=True
        )
        try:
            self._thread.start()
        except RuntimeError:  # no thread to be had
            self._thread = None

    def submit(self, op: Op[T], *, heavy: bool = False, keeps_headers: bool = False) -> T:
        """Run ``op`` in the next group commit; return its result once durable.
        ``heavy``: the op may run long (a purge, a large batch), so callers of the
        previous batch are woken before it rather than after it. ``keeps_headers``:
        the op reads and writes run headers only through ``Batch.header`` and
        ``Batch.wrote_header`` (so the writer may keep them across commits)."""
        mine: _Pending[T] = _Pending(op, heavy, keeps_headers)
        lead = False
        interrupt: BaseException | None = None
        clean = False
        try:  # from here on, leaving as leader (by an interrupt too) hands the role on
            with self._mutex:
                if self._closing:
                    raise StoreClosed("the store is closed")
                lead = not self._leading
                if lead:  # nobody leads: lead a batch of one, without queueing
                    self._leading = True
                else:
                    self._queue.append(mine)
            if not lead:
                _await(mine)  # until its batch is durable (or failed)
                clean = True
                return _outcome(mine)
            interrupt = self._commit([mine], [], mine)
            clean = True
        finally:  # the queue must not lose its leader, nor a queued op its caller
            if not clean and not lead:  # an interrupt while queued
                mine.abandoned = True  # first: a second interrupt may cut what follows
                with self._mutex:  # (under it, the writer's thread skips abandoned ops)
                    if mine in self._queue:
                        self._queue.remove(mine)
                _wake(mine.chain)  # woken, it may not have passed the wake-up on
            if lead:
                if not clean:  # an interrupt
                    _settle([mine], [])
                self._hand_off()
        if interrupt is not None:
            raise interrupt  # this thread's interrupt, after its batch's outcome was settled
        return _outcome(mine)

    def _hand_off(self) -> None:
        """A lone caller has led its commit: pass the role to the writer's thread if
        callers queued meanwhile, else give it up. An interrupt before the role has
        changed hands (while waiting for the mutex, say) does not stop it, as the
        queue must not lose its leader: it is raised once the role has passed. (Each
        change of the role is one statement, with the flag that says it happened.)"""
        interrupt: BaseException | None = None
        here = passed = False
        while not passed:
            try:
                with self._mutex:
                    while self._queue and self._queue[0].abandoned:
                        self._queue.popleft()
                    if not self._queue:
                        if self._closing:
                            self._idle.notify_all()
                        self._leading, passed = False, True
                    elif self._thread is None:  # no writer's thread: lead the queue here
                        here = passed = True
                    else:
                        self._work.notify()
                        self._thread_leads, passed = True, True
            except BaseException as exc:
                interrupt = interrupt or exc
        if here:
            interrupt = self._lead_queue() or interrupt
        if interrupt is not None:
            raise interrupt

    def _serve(self) -> None:
        """The writer's thread: lead the queue whenever a lone caller hands it over,
        until the writer closes."""
        while True:
            with self._mutex:
                while not self._thread_leads:
                    if self._closing:
                        return
                    self._work.wait()
            self._lead_queue()

    def _lead_queue(self) -> BaseException | None:
        """Commit batch after batch of the queue until it is empty, then give the role
        up. Each batch's callers are woken by the next batch (before its flush), or
        when the queue is found empty. Returns the first interrupt that reached a
        commit here (re-raised by a caller leading without a writer's thread, dropped
        by the thread, which no signal reaches): it stops nothing."""
        interrupt: BaseException | None = None
        while True:
            with self._mutex:  # take the batch: each op is queued or in it, at all times
                batch: list[_Pending[Any]] = []
                while self._queue and len(batch) < MAX_BATCH:
                    p = self._queue.popleft()
                    if not p.abandoned:
                        batch.append(p)
                asleep, self._deferred = self._deferred, []
                if not batch:
                    if self._closing:
                        self._idle.notify_all()
                    self._thread_leads = self._leading = False
            if not batch:
                _wake(asleep)
                return interrupt
            try:
                interrupt = self._commit(batch, asleep, None) or interrupt
            except BaseException as exc:  # one that cut _commit short (which settles all)
                interrupt = interrupt or exc
                _settle(batch, asleep)
            with self._mutex:
                self._deferred = self._deferred + batch

    def close(self) -> None:
        """Refuse new writes and wait until queued ones have committed; the writer's
        thread, if any, ends."""
        with self._mutex:
            self._closing = True
            while self._leading:
                self._idle.wait()
            self._work.notify_all()

    def _commit(
        self,
        batch: list[_Pending[Any]],
        asleep: list[_Pending[Any]],
        mine: _Pending[Any] | None,
    ) -> BaseException | None:
        """Run and commit ``batch``, waking ``asleep`` (callers of the previous, already
        durable batch) before the flush, or at the end whatever happens. Returns an
        interrupt (KeyboardInterrupt, ...) that reached this leader thread after its
        commit had landed: the batch succeeded; ``mine``'s caller re-raises it (with
        None, _lead_queue returns it: see there)."""
        live = batch
        interrupt = None
        isolate = False
        committed = self.commits
        try:
            while True:
                try:
                    committed = self.commits
                    interrupt = self._attempt(live, asleep, isolate)
                    break
                except _Isolate:
                    isolate = True  # an operation failed: roll it back alone this time
                except lmdb.MapFullError:
                    self._tidy(self._maintain)  # freeing dead readers' pages may avoid growing
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
        except Exception as exc:  # StorageError from map growth, or a bug: fail the batch
            for p in live:
                p.error = p.error or exc
        except BaseException as exc:  # an interrupt of this thread
            if self.commits != committed:  # after the commit landed: the batch stands
                interrupt = interrupt or exc
            else:
                gone = StorageError(
                    f"the commit was interrupted ({type(exc).__name__}); nothing of this "
                    "batch was written"
                )
                for p in live:
                    p.error = p.error or (exc if p is mine else gone)
        try:  # the outcome is settled: an interrupt from here on is only re-raised later
            for p in batch:
                p.stage = _DECIDED
            _wake(asleep)
            if self.commits != committed:
                if self.commits % READER_CHECK_EVERY == 0:
                    self._tidy(self._maintain)
                if self.commits % RESIDENCY_CHECK_EVERY == 0:
                    self._tidy(self._keep_small)
        except BaseException as exc:
            interrupt = interrupt or exc
        for p in batch:
            if p.error is None:
                for hook in p.hooks:
                    try:
                        hook()  # cache updates: best effort, the write is durable already
                    except Exception:  # noqa: S110
                        pass
                    except BaseException as exc:  # an interrupt: re-raised once all is settled
                        interrupt = interrupt or exc
            p.stage = _SETTLED
        return interrupt

    def _attempt(
        self, batch: list[_Pending[Any]], asleep: list[_Pending[Any]], isolate: bool
    ) -> BaseException | None:
        """Run ``batch`` in one write transaction and commit it. Without ``isolate``,
        an operation failing in a batch of several raises _Isolate (the transaction
        aborted); with it, each runs in a nested transaction and fails alone. A lone
        operation needs no nesting: aborting the transaction rolls back just it."""
        nested = isolate and len(batch) > 1
        with self._session() as env:
            txn = env.begin(write=True)
            try:  # from here on, whatever raises (an interrupt too) aborts the transaction
                txn_id = txn.id()
                if txn_id != self._headers_txn + 1:  # another writer committed since
                    self._headers.clear()
                shared = Batch(txn_id, self._headers)
                started = time.perf_counter() if asleep else 0.0
                ok = 0
                for p in batch:
                    if asleep and (p.heavy or time.perf_counter() - started > WAKE_AFTER):
                        _wake(asleep)  # a long batch: do not hold durable callers back
                    p.error = None
                    if not p.keeps_headers:
                        shared.headers = None  # it may change headers unseen
                    mark = len(shared.after_commit)
                    child = env.begin(write=True, parent=txn) if nested else txn
                    try:
                        p.result = p.op(child, shared)
                        if nested:
                            child.commit()
                    except lmdb.Error:
                        if nested:
                            child.abort()
                        raise
                    except Exception as exc:  # the op's own failure: roll back just it
                        shared.headers = None  # what it wrote to new_headers is void
                        if nested:
                            child.abort()
                        elif len(batch) > 1:
                            raise _Isolate from exc  # the transaction is aborted below
                        p.error = exc
                        del shared.after_commit[mark:]
                        continue
                    p.hooks = shared.after_commit[mark:]
                    ok += 1
                if not nested and batch[0].error is not None:
                    txn.abort()
                    return None
                _wake(asleep)  # they run while this commit waits on the disk
                interrupt = None
                counted = self.commits
                try:
                    txn.commit()
                    self.commits += 1  # first, as _commit reads a landed commit off it
                except BaseException as exc:
                    # An interrupt (a signal handler runs as soon as commit returns)
                    # may arrive after the commit landed: then the batch is durable,
                    # and its callers must hear so. LMDB's last committed id tells.
                    if isinstance(exc, Exception):
                        raise
                    if self.commits == counted:
                        if env.info()["last_txnid"] < txn_id:
                            raise
                        self.commits += 1
                    interrupt = exc
                self._keep_headers(shared, txn_id)
                self.committed_ops += ok
                return interrupt
            except BaseException:
                txn.abort()
                raise

    def _keep_headers(self, shared: Batch, txn_id: int) -> None:
        """After commit ``txn_id`` landed: keep the headers its appends wrote, or none
        if an operation may have changed headers unseen. Never raises: the batch has
        succeeded (an interrupt midway leaves ``_headers_txn`` behind, so the next
        transaction drops them)."""
        headers = self._headers
        try:
            if shared.headers is None:
                headers.clear()
            elif shared.new_headers:
                headers.update(shared.new_headers)
                if len(headers) > MAX_HEADERS:  # the longest known first
                    for rid in list(islice(headers, len(headers) - MAX_HEADERS // 2)):
                        del headers[rid]
        except Exception:  # (MemoryError) forget them all rather than fail the batch
            self._headers = {}
            self._headers_txn = -2
            return
        self._headers_txn = txn_id

    @staticmethod
    def _tidy(chore: Callable[[], object]) -> None:
        """Best-effort maintenance; its failure must not fail committed writes."""
        try:
            chore()
        except (lmdb.Error, StoreClosed):
            pass


class _Isolate(Exception):
    """An operation of a batch run without nested transactions failed: run the batch
    again with each operation in its own."""


def _settle(batch: list[_Pending[Any]], asleep: list[_Pending[Any]]) -> None:
    """After _commit, or an interrupt that cut it short: no op of ``batch`` is left
    without an outcome, and ``asleep`` are woken."""
    for p in batch:
        if p.stage == _OPEN:
            p.error = p.error or StorageError(
                "the commit was interrupted; nothing of this operation was written"
            )
        p.stage = _SETTLED
    _wake(asleep)


def _await(pending: _Pending[Any]) -> None:
    """Sleep until ``pending`` is woken with its outcome (then wake the next caller of
    its batch); past SELF_WAKE, go without the wake-up if its batch has settled (the
    next batch, which would wake it, may be held up)."""
    while not pending.done.acquire(timeout=SELF_WAKE):
        if pending.stage == _SETTLED:
            return
    _wake(pending.chain)


def _wake(callers: list[_Pending[Any]]) -> None:
    """Wake callers whose operations are durable (each once: the list is emptied): the
    last of them now, and it wakes the next one as soon as it is awake, and so on.

    Woken all at once, they would all contend for the GIL together, and each brief
    release of it (an LMDB or zstd call in any thread) would wake some of them only to
    put them back to sleep: measured with 20 StepLogSaver threads on 2 cores, ~12.3
    context switches per step woken at once, ~8.8 in a chain, and 6-16% more steps/s.
    A caller that went on without its wake-up (SELF_WAKE) leaves the rest of its
    chain to do the same."""
    if callers:
        first = callers[-1]
        first.chain = callers[:-1]
        callers.clear()
        first.done.release()


def _outcome(pending: _Pending[T]) -> T:
    if pending.error is not None:
        raise pending.error
    return pending.result  # type: ignore[return-value]
