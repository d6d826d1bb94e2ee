"""``StepLogSaver``: a LangGraph checkpointer backed by a steplog store.

Install with ``pip install 'steplog[langgraph]'``::

    from steplog.langgraph import StepLogSaver

    with StepLogSaver.from_path("./checkpoints") as saver:
        graph = builder.compile(checkpointer=saver)
        graph.invoke(inputs, {"configurable": {"thread_id": "t1"}})

Mapping. Each (thread, checkpoint namespace) is one steplog run,
``lg␟c␟<thread>␟<ns>`` under the workflow ``lg␟<thread>``, holding a record per
``put`` (state ``{"c": checkpoint, "m": metadata, "p": parent id}``) and a record per
``put_writes`` call (state ``{"t": task id, "p": task path, "w": writes}``), in call
order. Both name the LangGraph checkpoint id as their steplog node, so the node index
finds a checkpoint and its pending writes together, and its greatest entry is the
latest checkpoint (LangGraph ids sort by time, and every LangGraph saver returns the
greatest id as the latest). The whole checkpoint, channel values included, is one
steplog state, so a growing conversation is stored as a zstd delta proportional to
each step's change; and as pending writes share the checkpoints' delta chain, a
message written by a task and then carried into the next checkpoint is stored once.
Stores written before this layout keep pending writes in a second run,
``lg␟w␟<thread>␟<ns>``: they are still read. Deletions that LangGraph asks for in the
middle of a thread (``delete_for_runs``, ``prune``) rewrite each (thread, namespace)'s
runs in one atomic steplog batch.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from functools import partial
from typing import Any

import anyio.to_thread
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    PendingWrite,
    get_checkpoint_id,
    get_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

import steplog
from steplog.async_store import AsyncStore
from steplog.errors import IndexConflict, InvalidArgument, RunNotFound
from steplog.store import Store, _View

__all__ = ["StepLogSaver"]

_SNAPSHOT: type | None
try:
    from langgraph.checkpoint.serde.types import _DeltaSnapshot as _SNAPSHOT
except ImportError:  # a LangGraph before DeltaChannel
    _SNAPSHOT = None

SEP = "\x1f"
_PREFIX = "lg"
#: Checkpoints read per step when listing a thread newest first.
LIST_CHUNK = 64
#: Times a rewrite (delete_for_runs, prune) reads the thread again when a write landed
#: between its read and its commit; the last attempt's conflict is raised.
REWRITE_ATTEMPTS = 8


def _workflow(thread_id: str) -> str:
    return f"{_PREFIX}{SEP}{thread_id}"


def _run(kind: str, thread_id: str, ns: str) -> str:
    return SEP.join((_PREFIX, kind, thread_id, ns))


def _parse(run_id: str) -> tuple[str, str, str] | None:
    parts = run_id.split(SEP)
    if len(parts) != 4 or parts[0] != _PREFIX:
        return None
    return parts[1], parts[2], parts[3]


def _split(states: list[Any]) -> tuple[Any, list[Any]] | None:
    """(checkpoint, pending writes) from the states of one id's records in call order:
    its newest put, and its writes records; None if the id was never put."""
    checkpoint = None
    writes = []
    for state in states:
        if "c" in state:
            checkpoint = state
        else:
            writes.append(state)
    return None if checkpoint is None else (checkpoint, writes)


def _checkpoint_of(
    view: _View, run: str, cid: str, legacy: bool = True, states: list[Any] | None = None
) -> tuple[Any, list[Any]] | None:
    """From one snapshot: the state of checkpoint ``cid`` in ``run`` (its newest put)
    and the states of its pending writes in call order (those in the second run of
    the older layout first, if ``legacy``: the store may have such runs); None if it
    was never put. ``states``: the run's records of node ``cid``, if already read."""
    got = _split(view.with_node(run, cid) if states is None else states)
    if got is None or not legacy:
        return got
    _prefix, _kind, thread_id, ns = run.split(SEP)
    return got[0], view.with_node(_run("w", thread_id, ns), cid) + got[1]


def _latest_of(view: _View, run: str, legacy: bool = True) -> tuple[str, Any, list[Any]] | None:
    """(id, state, pending writes) of the run's latest checkpoint: the greatest id put
    (LangGraph's ids sort by time), skipping ids that only have pending writes."""
    found = view.last_node(run)
    while found is not None:
        node, states = found
        got = _checkpoint_of(view, run, node, legacy, states)
        if got is not None:
            return node, *got
        found = view.last_node(run, below=node)
    return None


def _versions_and_values(checkpoint: Any) -> tuple[ChannelVersions, dict[str, Any]]:
    return checkpoint.get("channel_versions", {}), checkpoint.get("channel_values", {})


def _is_snapshot(value: Any) -> bool:
    """Whether a stored channel value is a DeltaChannel's snapshot."""
    return _SNAPSHOT is not None and isinstance(value, _SNAPSHOT)


def _thread(thread_id: Any) -> str:
    """A thread id as every LangGraph saver takes it: its str()."""
    return _check(str(thread_id), "thread_id")


def _check(value: str, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a str, not {type(value).__name__}")
    if SEP in value or "\x00" in value:
        raise InvalidArgument(f"{what} {value!r} contains a reserved control character")
    return value


class _Records:
    """Records of one run by index, decoded ``LIST_CHUNK`` at a time in index order (a
    chunk ends at the highest index asked for)."""

    def __init__(self, store: Store, run: str) -> None:
        self._store = store
        self._run = run
        self._lo = 0
        self._chunk: list[steplog.Checkpoint] = []

    def states(self, node: str, indices: list[int]) -> list[Any] | None:
        """The states of ``node``'s records at ``indices`` (ascending); None if they
        span more than a chunk, or the run no longer holds them there (rewritten
        since the node index was read)."""
        lo, hi = indices[0], indices[-1] + 1
        if hi - lo > LIST_CHUNK:
            return None
        got = self._held(node, indices)
        if got is None:  # not read yet, or read before the run changed
            start = max(0, hi - LIST_CHUNK)
            try:
                self._chunk = list(self._store.history(self._run, start=start, stop=hi))
            except RunNotFound:
                self._chunk = []
            self._lo = start
            got = self._held(node, indices)
        return got

    def _held(self, node: str, indices: list[int]) -> list[Any] | None:
        at = [i - self._lo for i in indices]
        if at[0] < 0 or at[-1] >= len(self._chunk):
            return None
        records = [self._chunk[i] for i in at]
        if any(r.node != node for r in records):
            return None
        return [r.state for r in records]


class StepLogSaver(
    BaseCheckpointSaver[int],
    AbstractContextManager["StepLogSaver"],
    AbstractAsyncContextManager["StepLogSaver"],
):
    """A ``BaseCheckpointSaver`` on a steplog :class:`~steplog.Store`.

    Pass an open ``Store`` or ``AsyncStore`` (the caller keeps ownership), or use
    :meth:`from_path` (the saver owns the store and closes it on exit).
    """

    def __init__(
        self, store: Store | AsyncStore, *, serde: SerializerProtocol | None = None
    ) -> None:
        super().__init__(serde=serde)
        self.store: Store = store.store if isinstance(store, AsyncStore) else store
        self._owned = False
        #: whether the store holds pending writes in the older layout's second runs
        self._legacy = self.store._view(partial(_View.any_run, prefix=f"{_PREFIX}{SEP}w{SEP}"))

    @classmethod
    def from_path(
        cls,
        path: str | os.PathLike[str],
        *,
        serde: SerializerProtocol | None = None,
        **options: Any,
    ) -> StepLogSaver:
        """Open (creating) the store at ``path``; the saver closes it on exit."""
        saver = cls(steplog.open(path, **options), serde=serde)
        saver._owned = True
        return saver

    def close(self) -> None:
        if self._owned:
            self.store.close()

    def __enter__(self) -> StepLogSaver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> StepLogSaver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await anyio.to_thread.run_sync(self.close)

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _ids(config: RunnableConfig) -> tuple[str, str, str | None]:
        conf = config["configurable"]
        thread_id = _thread(conf["thread_id"])
        ns = _check(conf.get("checkpoint_ns", "") or "", "checkpoint_ns")
        return thread_id, ns, get_checkpoint_id(config)

    def _tuple(self, thread_id: str, ns: str, state: Any, writes: list[Any]) -> CheckpointTuple:
        """The tuple of a checkpoint record's state and its pending-writes states."""
        checkpoint: Checkpoint = self._blob(state, "c")
        versions = checkpoint.get("channel_versions", {})
        values = {k: v for k, v in checkpoint.get("channel_values", {}).items() if k in versions}
        missing = [k for k in versions if k not in values]
        if missing:
            lookup = self._stored(thread_id, ns)
            values.update(self._carried_values(lookup, state["p"], versions, missing))
        checkpoint = {**checkpoint, "channel_values": values}
        cid = checkpoint["id"]
        parent = state["p"]
        return CheckpointTuple(
            config={
                "configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": cid}
            },
            checkpoint=checkpoint,
            metadata=self._blob(state, "m"),
            parent_config=(
                {
                    "configurable": {
                        "thread_id": thread_id,
                        "checkpoint_ns": ns,
                        "checkpoint_id": parent,
                    }
                }
                if parent
                else None
            ),
            pending_writes=self._pending(writes),
        )

    def _stored(self, thread_id: str, ns: str) -> Callable[[str], Any]:
        """Looks up the newest put of a checkpoint id of the (thread, ns) in the store."""
        run = _run("c", thread_id, ns)

        def lookup(cid: str) -> Any:
            found = self.store._view(partial(_checkpoint_of, run=run, cid=cid, legacy=False))
            return None if found is None else found[0]

        return lookup

    def _blob(self, state: Any, field: str) -> Any:
        """A checkpoint record's checkpoint (``"c"``) or metadata (``"m"``), deserialised."""
        return self.serde.loads_typed((state[field][0], state[field][1]))

    def _values(self, state: Any) -> tuple[ChannelVersions, dict[str, Any]]:
        """A checkpoint record's channel versions and the channel values stored in it."""
        return _versions_and_values(self._blob(state, "c"))

    def _carried_values(
        self,
        lookup: Callable[[str], Any],
        parent: str | None,
        versions: ChannelVersions,
        missing: Iterable[str],
    ) -> dict[str, Any]:
        """Values of the ``missing`` channels of a checkpoint (with ``versions``, after
        ``parent``): the value stored with that version in the nearest ancestor that has
        it, as LangGraph's savers keep one value per channel version. ``lookup`` finds
        an ancestor's record state by id."""
        found: dict[str, Any] = {}
        wanted = set(missing)
        visited: set[str] = set()  # a parent chain may loop (a checkpoint put as its own parent)
        state = lookup(parent) if parent and wanted else None
        while state is not None and wanted and parent and parent not in visited:
            visited.add(parent)
            a_versions, a_values = self._values(state)
            for k in list(wanted):
                if a_versions.get(k) != versions[k]:
                    wanted.discard(k)  # the version was set later: nothing stored for it
                elif k in a_values:
                    found[k] = a_values[k]
                    wanted.discard(k)
            parent = state["p"]
            state = lookup(parent) if parent else None
        return found

    def _pending(self, writes: list[Any]) -> list[PendingWrite]:
        """A checkpoint's pending writes from its writes records' states (one per
        put_writes, in call order)."""
        kept: dict[tuple[str, int], tuple[str, str, str, Any]] = {}
        for state in writes:
            task_id, task_path = state["t"], state["p"]
            for idx, channel, type_, data in state["w"]:
                key = (task_id, idx)
                if idx >= 0 and key in kept:
                    continue  # ordinary writes: the first one wins
                kept[key] = (task_path, task_id, channel, (type_, data))
        ordered = sorted(kept.items(), key=lambda kv: writes_sort_key(kv[1][0], kv[0][0], kv[0][1]))
        return [(tid, ch, self.serde.loads_typed(v)) for (_tid, _i), (_p, tid, ch, v) in ordered]

    def _namespaces(self, thread_id: str) -> list[str]:
        out = []
        for info in self.store.runs(_workflow(thread_id)):
            parsed = _parse(info.run_id)
            if parsed and parsed[0] == "c" and parsed[1] == thread_id:
                out.append(parsed[2])
        return sorted(out)

    def _threads(self) -> list[str]:
        seen: dict[str, None] = {}
        for info in self.store.runs():
            parsed = _parse(info.run_id)
            if parsed and parsed[0] == "c":
                seen.setdefault(parsed[1], None)
        return list(seen)

    def _checkpoints(
        self, thread_id: str, ns: str, cid: str | None, below: str | None = None
    ) -> Iterator[tuple[str | None, Any, list[Any]]]:
        """(id, state, pending writes) of the (thread, ns)'s checkpoints, greatest id
        first (only ids below ``below`` if given), or of checkpoint ``cid`` only.

        The node index gives the ids in order with their records' indices; the records
        are decoded in chunks, in index order. When ids grow with every put (as
        LangGraph's do) both orders agree and each chunk is read once; an id put again
        much later is read on its own."""
        run, w_run = _run("c", thread_id, ns), _run("w", thread_id, ns)
        if cid:
            found = self.store._view(partial(_checkpoint_of, run=run, cid=cid, legacy=self._legacy))
            if found is not None:
                yield cid, *found
            return
        legacy = self._legacy and self.store.run(w_run) is not None
        records = _Records(self.store, run)
        while True:
            nodes = self.store._view(
                partial(_View.nodes_below, run_id=run, below=below, limit=LIST_CHUNK)
            )
            for node, indices in nodes:
                states = records.states(node, indices)
                if states is None:  # far apart, or the run changed: one snapshot
                    got = self.store._view(
                        partial(_checkpoint_of, run=run, cid=node, legacy=self._legacy)
                    )
                else:
                    got = _split(states)
                    if got is not None and legacy:
                        older = self.store._view(partial(_View.with_node, run_id=w_run, node=node))
                        got = got[0], older + got[1]
                if got is not None:
                    yield node, *got
            if len(nodes) < LIST_CHUNK:
                return
            below = nodes[-1][0]

    # ------------------------------------------------------------------ sync API

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        thread_id, ns, cid = self._ids(config)
        run = _run("c", thread_id, ns)

        def read(view: _View) -> tuple[Any, list[Any]] | None:
            # the checkpoint and its pending writes from one snapshot
            if cid:
                return _checkpoint_of(view, run, cid, self._legacy)
            latest = _latest_of(view, run, self._legacy)
            return None if latest is None else latest[1:]

        got = self.store._view(read)
        return None if got is None else self._tuple(thread_id, ns, *got)

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        if limit is not None and limit <= 0:
            return
        if config is not None:
            thread_id, ns, cid = self._ids(config)
            explicit_ns = config["configurable"].get("checkpoint_ns")
            pairs = [
                (thread_id, n)
                for n in ([ns] if explicit_ns is not None else self._namespaces(thread_id))
            ]
        else:
            cid = None
            pairs = [(t, n) for t in self._threads() for n in self._namespaces(t)]
        before_id = (get_checkpoint_id(before) if before else None) or None
        for thread_id, ns in pairs:
            for node, state, writes in self._checkpoints(thread_id, ns, cid, before_id):
                if before_id is not None and node is not None and node >= before_id:
                    continue
                if filter:
                    metadata = self._blob(state, "m")
                    if not all(metadata.get(k) == v for k, v in filter.items()):
                        continue
                yield self._tuple(thread_id, ns, state, writes)
                if limit is not None:
                    limit -= 1
                    if limit <= 0:
                        return

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        thread_id, ns, parent = self._ids(config)
        cid = checkpoint["id"]
        c_type, c_bytes = self.serde.dumps_typed(checkpoint)
        m_type, m_bytes = self.serde.dumps_typed(get_checkpoint_metadata(config, metadata))
        self.store._append_quietly(
            _run("c", thread_id, ns),
            {"c": [c_type, c_bytes], "m": [m_type, m_bytes], "p": parent},
            workflow_id=_workflow(thread_id),
            node=cid,
        )
        return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": cid}}

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        thread_id, ns, cid = self._ids(config)
        if cid is None:
            raise InvalidArgument("put_writes needs a checkpoint_id in the config")
        encoded = []
        for idx, (channel, value) in enumerate(writes):
            type_, data = self.serde.dumps_typed(value)
            encoded.append([WRITES_IDX_MAP.get(channel, idx), channel, type_, data])
        self.store._append_quietly(
            _run("c", thread_id, ns),
            {"t": task_id, "p": task_path, "w": encoded},
            workflow_id=_workflow(thread_id),
            node=cid,
        )

    def delete_thread(self, thread_id: str) -> None:
        with self.store.batch() as b:
            for info in self.store.runs(_workflow(_thread(thread_id))):
                b.purge(info.run_id, missing_ok=True)

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        src, dst = _thread(source_thread_id), _thread(target_thread_id)
        with self.store.batch() as b:
            for info in self.store.runs(_workflow(dst)):
                b.purge(info.run_id, missing_ok=True)
            for info in reversed(self.store.runs(_workflow(src))):
                parsed = _parse(info.run_id)
                if parsed is None:
                    continue
                kind, _source, ns = parsed
                for cp in self.store.history(info.run_id):
                    b.append(
                        _run(kind, dst, ns), cp.state, workflow_id=_workflow(dst), node=cp.node
                    )

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        doomed = {str(r) for r in run_ids}
        if not doomed:
            return

        def survivors(newest: dict[str, Any]) -> set[str]:
            return {
                cid
                for cid, state in newest.items()
                if self._blob(state, "m").get("run_id") not in doomed
            }

        for thread_id in self._threads():
            for ns in self._namespaces(thread_id):
                self._rewrite(thread_id, ns, survivors)

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        if strategy not in ("keep_latest", "delete"):
            raise InvalidArgument(f"unknown prune strategy {strategy!r}")
        for thread_id in thread_ids:
            if strategy == "delete":
                self.delete_thread(thread_id)
                continue
            thread = _thread(thread_id)
            for ns in self._namespaces(thread):
                self._rewrite(thread, ns, self._latest_and_its_seeds)

    def _latest_and_its_seeds(self, newest: dict[str, Any]) -> set[str]:
        """The latest checkpoint, and the ancestors its DeltaChannels are rebuilt from.
        A DeltaChannel stores its value (a ``_DeltaSnapshot``) only every few updates;
        in between it is rebuilt from the nearest ancestor that stores one plus the
        pending writes since, so those ancestors and their writes stay. A channel is a
        DeltaChannel if some checkpoint of the thread stores a snapshot of it or counts
        updates since one (metadata ``counters_since_delta_snapshot``)."""
        if not newest:
            return set()
        delta: set[str] = set()
        for state in newest.values():
            values = self._values(state)[1]
            delta.update(k for k, v in values.items() if _is_snapshot(v))
            metadata = self._blob(state, "m")
            delta.update(metadata.get("counters_since_delta_snapshot") or ())
        latest = max(newest)
        keep = {latest}
        versions, values = self._values(newest[latest])
        wanted = {k for k in delta if k in versions and k not in values}
        parent = newest[latest]["p"]
        while wanted and parent in newest and parent not in keep:
            keep.add(parent)
            wanted -= set(self._values(newest[parent])[1])
            parent = newest[parent]["p"]
        return keep

    def _rewrite(
        self, thread_id: str, ns: str, choose: Callable[[dict[str, Any]], set[str]]
    ) -> None:
        """Atomically replace a (thread, ns)'s runs with the checkpoints ``choose`` keeps
        (given each id's newest put), each with its pending writes; writes of ids never
        put stay. A kept checkpoint that carries channel values from an ancestor being
        dropped gets them stored in its own record."""
        for _attempt in range(REWRITE_ATTEMPTS):
            try:
                return self._rewrite_once(thread_id, ns, choose)
            except IndexConflict:
                continue  # a put or put_writes landed since the read: read again
        self._rewrite_once(thread_id, ns, choose)

    def _rewrite_once(
        self, thread_id: str, ns: str, choose: Callable[[dict[str, Any]], set[str]]
    ) -> None:
        cp_run, w_run = _run("c", thread_id, ns), _run("w", thread_id, ns)
        records = self._all(cp_run)
        newest = {cp.node: cp.state for cp in records if "c" in cp.state and cp.node}
        kept = choose(newest)
        dropped = set(newest) - kept
        if not dropped:
            return
        remaining = {cid: newest[cid] for cid in kept}
        rewritten = {}
        for cid in kept:
            state = newest[cid]
            checkpoint = self._blob(state, "c")
            versions, values = _versions_and_values(checkpoint)
            missing = [k for k in versions if k not in values]
            if not missing:
                continue
            now = self._carried_values(newest.get, state["p"], versions, missing)
            if now != self._carried_values(remaining.get, state["p"], versions, missing):
                full = {**checkpoint, "channel_values": {**values, **now}}
                rewritten[cid] = {**state, "c": list(self.serde.dumps_typed(full))}
        older = self._all(w_run)
        legacy = [w for w in older if w.node not in dropped]
        workflow = _workflow(thread_id)
        with self.store.batch() as b:
            # nothing may have been appended since the read (else IndexConflict: retry)
            b.purge(cp_run, missing_ok=True, expected_index=len(records))
            b.purge(w_run, missing_ok=True, expected_index=len(older))
            for r in records:
                if r.node in dropped:
                    continue
                state = r.state
                if r.node in rewritten and state is newest[r.node]:
                    state = rewritten[r.node]
                b.append(cp_run, state, workflow_id=workflow, node=r.node)
            for r in legacy:
                b.append(w_run, r.state, workflow_id=workflow, node=r.node)

    def _all(self, run: str) -> Sequence[steplog.Checkpoint]:
        """Every record of ``run`` (none if there is no such run)."""
        try:
            return list(self.store.history(run))
        except RunNotFound:
            return []

    # ------------------------------------------------------------------ async API

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self.get_tuple(config)  # a point read: microseconds, inline

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        items = await anyio.to_thread.run_sync(
            lambda: list(self.list(config, filter=filter, before=before, limit=limit))
        )
        for item in items:
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        result: RunnableConfig = await anyio.to_thread.run_sync(
            lambda: self.put(config, checkpoint, metadata, new_versions)
        )
        return result

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await anyio.to_thread.run_sync(lambda: self.put_writes(config, writes, task_id, task_path))

    async def adelete_thread(self, thread_id: str) -> None:
        await anyio.to_thread.run_sync(lambda: self.delete_thread(thread_id))

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await anyio.to_thread.run_sync(lambda: self.delete_for_runs(run_ids))

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await anyio.to_thread.run_sync(lambda: self.copy_thread(source_thread_id, target_thread_id))

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await anyio.to_thread.run_sync(lambda: self.prune(thread_ids, strategy=strategy))
