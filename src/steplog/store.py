"""The synchronous store: a durable, append-only log of checkpoints per run.

Each method's docstring is its contract. Every write is one LMDB write transaction
that updates the log and all secondary indexes together; a call that raises has
written nothing.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import lmdb
import msgspec

from steplog import _env, _keys, _record, _validate
from steplog._keys import U64
from steplog.errors import (
    CheckpointNotFound,
    CorruptRecord,
    ForkPointInUse,
    IndexConflict,
    InvalidArgument,
    RecordTooLarge,
    RunExists,
    RunNotFound,
    StorageError,
    StoreClosed,
    WorkflowMismatch,
)
from steplog.model import Checkpoint, RunInfo, Status

if TYPE_CHECKING:
    from typing import TypeAlias

    Txn: TypeAlias = lmdb.Transaction[bytes]

__all__ = ["DEFAULT_MAX_RECORD_SIZE", "Store", "open"]

#: Largest decoded payload a record may hold. Bounds memory on decode: a corrupt or
#: hostile record can never make steplog allocate more than this.
DEFAULT_MAX_RECORD_SIZE = 64 << 20
#: Records decoded per read transaction while streaming history: keeps memory
#: constant and lets a map resize slip in between chunks of a long replay.
HISTORY_CHUNK = 256

T = TypeVar("T")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NO_STATUS = -1

_open_stores: weakref.WeakSet[Store] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_open_stores):
        store._forked = True


os.register_at_fork(after_in_child=_after_fork_in_child)


class _RunHeader(msgspec.Struct, array_like=True):
    """``runs`` value: the run's segment header."""

    run_no: int
    workflow_id: str | None
    created_ns: int
    updated_ns: int
    length: int
    status: int
    seq: int
    parent_run_id: str | None = None
    parent_index: int | None = None
    parent_run_no: int | None = None


_HEADER_ENCODER = msgspec.msgpack.Encoder()
_HEADER_DECODER = msgspec.msgpack.Decoder(_RunHeader)


def _to_datetime(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)


def _status_of(code: int) -> Status | None:
    return None if code == _NO_STATUS else _record.CODE_STATUS[code]


def open(
    path: str | os.PathLike[str],
    *,
    map_size: int = _env.DEFAULT_MAP_SIZE,
    max_map_size: int | None = None,
    max_record_size: int = DEFAULT_MAX_RECORD_SIZE,
) -> Store:
    """Open the store in directory ``path``, creating it (mode 0700/0600) if absent.

    ``map_size`` is the initial LMDB map; it grows automatically up to
    ``max_map_size`` (None: no limit). ``max_record_size`` bounds one checkpoint's
    encoded payload. Raises NotAStore / UnsupportedFormat for a directory that is not
    a steplog store or is from a newer format, leaving it untouched.
    """
    return Store(
        path, map_size=map_size, max_map_size=max_map_size, max_record_size=max_record_size
    )


class Store:
    """A steplog store. Thread-safe; use one per process (open it after fork())."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        map_size: int = _env.DEFAULT_MAP_SIZE,
        max_map_size: int | None = None,
        max_record_size: int = DEFAULT_MAX_RECORD_SIZE,
    ) -> None:
        for name, value in (("map_size", map_size), ("max_record_size", max_record_size)):
            if _validate.index(value, name) <= 0:
                raise InvalidArgument(f"{name} must be > 0, got {value}")
        if max_map_size is not None and _validate.index(max_map_size, "max_map_size") < map_size:
            raise InvalidArgument("max_map_size must be >= map_size")
        if not isinstance(path, (str, os.PathLike)):
            raise InvalidArgument(f"path must be a str or path, not {type(path).__name__}")
        self.path = Path(path)
        self.max_record_size = max_record_size
        self._max_map_size = max_map_size
        self._gate = _env.Gate()
        self._write_lock = threading.Lock()
        self._forked = False
        env, dbs = _env.open_env(self.path, map_size)
        self._env: lmdb.Environment | None = env
        self._meta = dbs["meta"]
        self._runs = dbs["runs"]
        self._log = dbs["log"]
        self._nodes = dbs["nodes"]
        self._workflows = dbs["workflows"]
        self._recent = dbs["recent"]
        self._children = dbs["children"]
        _open_stores.add(self)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the store. Idempotent; later calls raise StoreClosed."""
        with self._gate.exclusive():
            env, self._env = self._env, None
            if env is not None and not self._forked:
                env.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _live_env(self) -> lmdb.Environment:
        env = self._env
        if env is None:
            raise StoreClosed(f"the store at {str(self.path)!r} is closed")
        if self._forked:
            raise StoreClosed(
                f"the store at {str(self.path)!r} was opened before this process was "
                "forked; open it again in the child (a handle cannot cross fork())"
            )
        return env

    # ------------------------------------------------------------------ transactions

    def _read(self, fn: Callable[[Txn], T]) -> T:
        while True:
            try:
                with self._gate.shared():
                    env = self._live_env()
                    with env.begin() as txn:
                        return fn(txn)
            except lmdb.MapResizedError:
                self._adopt_map_size()
            except lmdb.Error as exc:
                raise StorageError(f"read from {str(self.path)!r} failed: {exc}") from exc

    def _write(self, fn: Callable[[Txn], T]) -> T:
        with self._write_lock:
            while True:
                try:
                    with self._gate.shared():
                        env = self._live_env()
                        txn = env.begin(write=True)
                        try:
                            result = fn(txn)
                        except BaseException:
                            txn.abort()
                            raise
                        txn.commit()
                        return result
                except lmdb.MapFullError:
                    self._grow_map()
                except lmdb.MapResizedError:
                    self._adopt_map_size()
                except lmdb.Error as exc:
                    raise StorageError(f"write to {str(self.path)!r} failed: {exc}") from exc

    def _grow_map(self) -> None:
        with self._gate.exclusive():
            env = self._live_env()
            info = env.info()
            page = env.stat()["psize"]
            used = (info["last_pgno"] + 1) * page
            env.set_mapsize(_env.next_map_size(info["map_size"], used, self._max_map_size))

    def _adopt_map_size(self) -> None:
        with self._gate.exclusive():
            self._live_env().set_mapsize(0)

    # ------------------------------------------------------------------ helpers (in txn)

    def _header(self, txn: Txn, rid: bytes) -> _RunHeader | None:
        raw = txn.get(rid, db=self._runs)
        if raw is None:
            return None
        try:
            return _HEADER_DECODER.decode(raw)
        except msgspec.DecodeError:
            raise CorruptRecord(rid.decode(), -1, "run header does not decode") from None

    def _require(self, txn: Txn, rid: bytes) -> _RunHeader:
        hdr = self._header(txn, rid)
        if hdr is None:
            raise RunNotFound(rid.decode())
        return hdr

    def _counter(self, txn: Txn, key: bytes) -> int:
        raw = txn.get(key, db=self._meta)
        value = U64.unpack(raw)[0] + 1 if raw is not None else 1
        txn.put(key, U64.pack(value), db=self._meta)
        return value

    def _raw_record(self, txn: Txn, hdr: _RunHeader, run_id: str, index: int) -> bytes:
        raw = txn.get(_keys.log_key(hdr.run_no, index), db=self._log)
        if raw is None:
            raise CorruptRecord(run_id, index, "record missing from a run's dense range")
        return raw

    def _checkpoint(
        self, run_id: str, index: int, hdr: _RunHeader, raw: bytes, type_: Any = None
    ) -> Checkpoint:
        head = _record.read_header(run_id, index, raw)
        payload = _record.unpack_payload(run_id, index, raw, head, self.max_record_size)
        node, metadata, state = _record.decode_payload(run_id, index, payload, type_)
        return Checkpoint(
            run_id=run_id,
            index=index,
            workflow_id=hdr.workflow_id,
            created_at=_to_datetime(head.created_ns),
            status=head.status,
            node=node,
            state=state,
            metadata=metadata,
            parent_run_id=hdr.parent_run_id,
            parent_index=hdr.parent_index,
        )

    def _info(self, run_id: str, hdr: _RunHeader) -> RunInfo:
        return RunInfo(
            run_id=run_id,
            workflow_id=hdr.workflow_id,
            created_at=_to_datetime(hdr.created_ns),
            updated_at=_to_datetime(hdr.updated_ns),
            length=hdr.length,
            status=_status_of(hdr.status),
            parent_run_id=hdr.parent_run_id,
            parent_index=hdr.parent_index,
        )

    def _set_recency(self, txn: Txn, rid: bytes, old: _RunHeader | None, new: _RunHeader) -> None:
        """Move the run's entries in ``recent`` and ``workflows`` from old.seq to new.seq."""
        if old is not None:
            txn.delete(_keys.recent_key(old.seq), db=self._recent)
            if old.workflow_id is not None:
                wf = old.workflow_id.encode()
                txn.delete(_keys.workflow_key(wf, old.seq), db=self._workflows)
        txn.put(_keys.recent_key(new.seq), rid, db=self._recent)
        if new.workflow_id is not None:
            txn.put(_keys.workflow_key(new.workflow_id.encode(), new.seq), rid, db=self._workflows)
        txn.put(rid, _HEADER_ENCODER.encode(new), db=self._runs)

    def _encode(self, run_id: str, node: str | None, metadata: dict[str, Any], state: Any) -> bytes:
        payload = _record.encode_payload(run_id, node, metadata, state)
        if len(payload) > self.max_record_size:
            raise RecordTooLarge(run_id, len(payload), self.max_record_size)
        return payload

    def _put_checkpoint(
        self,
        txn: Txn,
        rid: bytes,
        old: _RunHeader | None,
        hdr: _RunHeader,
        node: bytes | None,
        payload: bytes,
        status: Status,
    ) -> _RunHeader:
        """Write the run's next record and every index entry; return the new header."""
        index = hdr.length
        seq = self._counter(txn, _keys.META_SEQ)
        created_ns = max(time.time_ns(), hdr.updated_ns)
        record = _record.pack(payload, seq=seq, created_ns=created_ns, status=status)
        txn.put(_keys.log_key(hdr.run_no, index), record, db=self._log)
        if node is not None:
            txn.put(_keys.node_key(hdr.run_no, node, index), b"", db=self._nodes)
        new = msgspec.structs.replace(
            hdr,
            length=index + 1,
            updated_ns=created_ns,
            status=_record.STATUS_CODES[status],
            seq=seq,
        )
        self._set_recency(txn, rid, old, new)
        return new

    def _last_with_prefix(self, txn: Txn, db: Any, prefix: bytes) -> tuple[bytes, bytes] | None:
        """The greatest (key, value) whose key starts with ``prefix``."""
        cur = txn.cursor(db=db)
        end = _keys.prefix_end(prefix)
        positioned = cur.set_range(end) if end is not None else False
        found = cur.prev() if positioned else cur.last()
        if not found:
            return None
        key = cur.key()
        if not key.startswith(prefix):
            return None
        return key, cur.value()

    # ------------------------------------------------------------------ writes

    def append(
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
        """Append the next checkpoint of ``run_id`` and return it once it is durable.

        Its index is the run's length before the call. The first append creates the
        run and fixes its ``workflow_id``; a later append naming another workflow
        raises WorkflowMismatch (None means "the run's own"). With
        ``expected_index``, the append happens only if it would get that index, else
        IndexConflict (carrying the actual next index) and nothing is written.
        """
        rid = _validate.ident(run_id, "run_id")
        wf = _validate.optional_ident(workflow_id, "workflow_id")
        node_key = _validate.optional_ident(node, "node")
        status_ = _validate.status(status)
        meta = _validate.metadata(metadata)
        expected = _validate.optional_nonnegative(expected_index, "expected_index")
        payload = self._encode(run_id, node, meta, state)
        self._live_env()

        def op(txn: Txn) -> Checkpoint:
            old = self._header(txn, rid)
            if old is None:
                now = time.time_ns()
                hdr = _RunHeader(
                    run_no=self._counter(txn, _keys.META_NEXT_RUN_NO),
                    workflow_id=workflow_id,
                    created_ns=now,
                    updated_ns=now,
                    length=0,
                    status=_NO_STATUS,
                    seq=0,
                )
            else:
                hdr = old
                if wf is not None and workflow_id != hdr.workflow_id:
                    raise WorkflowMismatch(run_id, hdr.workflow_id, workflow_id or "")
            if expected is not None and expected != hdr.length:
                raise IndexConflict(run_id, expected, hdr.length)
            new = self._put_checkpoint(txn, rid, old, hdr, node_key, payload, status_)
            return Checkpoint(
                run_id=run_id,
                index=hdr.length,
                workflow_id=new.workflow_id,
                created_at=_to_datetime(new.updated_ns),
                status=status_,
                node=node,
                state=state,
                metadata=meta,
                parent_run_id=new.parent_run_id,
                parent_index=new.parent_index,
            )

        return self._write(op)

    def fork(
        self,
        source_run_id: str,
        index: int,
        new_run_id: str,
        *,
        overrides: Mapping[str, Any] | Any = None,
        workflow_id: str | None = None,
    ) -> Checkpoint:
        """Start run ``new_run_id`` from checkpoint ``index`` of ``source_run_id``.

        The new run's checkpoint 0 is an independent copy of the source checkpoint
        (state, node, status, metadata) with ``overrides`` applied: a mapping whose
        keys replace or add keys of a mapping state (for a Struct or dataclass state,
        its fields). Its header records the parent run and index; the source run is
        never changed. ``workflow_id`` defaults to the source run's. Negative
        ``index`` counts from the end. Raises RunNotFound, CheckpointNotFound,
        RunExists (target taken) or InvalidArgument.
        """
        src = _validate.ident(source_run_id, "source_run_id")
        idx = _validate.index(index)
        dst = _validate.ident(new_run_id, "new_run_id")
        wf = _validate.optional_ident(workflow_id, "workflow_id")
        patch = self._overrides(new_run_id, overrides)
        self._live_env()

        def op(txn: Txn) -> Checkpoint:
            parent = self._require(txn, src)
            at = idx + parent.length if idx < 0 else idx
            if not 0 <= at < parent.length:
                raise CheckpointNotFound(source_run_id, idx, parent.length)
            if self._header(txn, dst) is not None:
                raise RunExists(new_run_id)
            origin = self._checkpoint(
                source_run_id, at, parent, self._raw_record(txn, parent, source_run_id, at)
            )
            state = origin.state
            if patch:
                if not isinstance(state, dict):
                    raise InvalidArgument(
                        f"run {source_run_id!r} checkpoint {at}: overrides need a mapping "
                        f"or struct state, not {type(state).__name__}"
                    )
                state = {**state, **patch}
            payload = self._encode(new_run_id, origin.node, origin.metadata, state)
            now = time.time_ns()
            hdr = _RunHeader(
                run_no=self._counter(txn, _keys.META_NEXT_RUN_NO),
                workflow_id=workflow_id if wf is not None else parent.workflow_id,
                created_ns=now,
                updated_ns=now,
                length=0,
                status=_NO_STATUS,
                seq=0,
                parent_run_id=source_run_id,
                parent_index=at,
                parent_run_no=parent.run_no,
            )
            node = origin.node.encode() if origin.node is not None else None
            new = self._put_checkpoint(txn, dst, None, hdr, node, payload, origin.status)
            txn.put(_keys.child_key(parent.run_no, at, new.run_no), dst, db=self._children)
            return self._checkpoint(new_run_id, 0, new, self._raw_record(txn, new, new_run_id, 0))

        return self._write(op)

    @staticmethod
    def _overrides(run_id: str, overrides: Any) -> dict[str, Any]:
        if overrides is None:
            return {}
        if isinstance(overrides, Mapping):
            patch = dict(overrides)
        elif isinstance(overrides, msgspec.Struct) or (
            is_dataclass(overrides) and not isinstance(overrides, type)
        ):
            patch = (
                msgspec.structs.asdict(overrides)
                if isinstance(overrides, msgspec.Struct)
                else asdict(overrides)
            )
        else:
            raise InvalidArgument(
                f"overrides must be a mapping (or Struct/dataclass), not {type(overrides).__name__}"
            )
        if not all(isinstance(k, str) for k in patch):
            raise InvalidArgument("overrides keys must be str")
        builtins = _record.to_builtins(run_id, patch)
        assert isinstance(builtins, dict)
        return builtins

    def delete_latest(self, run_id: str) -> Checkpoint | None:
        """Remove only the newest checkpoint of ``run_id`` and return it.

        Returns None if the run has no checkpoints. Raises RunNotFound, or
        ForkPointInUse (naming the child runs) if that checkpoint is a fork point.
        An emptied run keeps its header (and lineage); ``purge`` removes it.
        """
        rid = _validate.ident(run_id, "run_id")
        self._live_env()

        def op(txn: Txn) -> Checkpoint | None:
            hdr = self._require(txn, rid)
            if hdr.length == 0:
                return None
            index = hdr.length - 1
            children = self._children_at(txn, hdr.run_no, index)
            if children:
                raise ForkPointInUse(run_id, index, children)
            gone = self._checkpoint(run_id, index, hdr, self._raw_record(txn, hdr, run_id, index))
            txn.delete(_keys.log_key(hdr.run_no, index), db=self._log)
            if gone.node is not None:
                txn.delete(_keys.node_key(hdr.run_no, gone.node.encode(), index), db=self._nodes)
            if index > 0:
                prev = _record.read_header(
                    run_id, index - 1, self._raw_record(txn, hdr, run_id, index - 1)
                )
                seq, updated, status = prev.seq, prev.created_ns, _record.STATUS_CODES[prev.status]
            else:
                seq = self._counter(txn, _keys.META_SEQ)
                updated, status = max(time.time_ns(), hdr.updated_ns), _NO_STATUS
            new = msgspec.structs.replace(
                hdr, length=index, seq=seq, updated_ns=updated, status=status
            )
            self._set_recency(txn, rid, hdr, new)
            return gone

        return self._write(op)

    def _children_at(self, txn: Txn, run_no: int, index: int | None) -> list[str]:
        prefix = _keys.child_prefix(run_no, index)
        cur = txn.cursor(db=self._children)
        out: list[str] = []
        if cur.set_range(prefix):
            for key, value in cur:
                if not key.startswith(prefix):
                    break
                out.append(value.decode())
        return out

    def purge(self, run_id: str) -> int:
        """Remove the run's whole history, header and index entries; return how many
        checkpoints were removed. Runs forked from it keep working (their lineage
        ends at it). Raises RunNotFound.
        """
        rid = _validate.ident(run_id, "run_id")
        self._live_env()

        def op(txn: Txn) -> int:
            hdr = self._require(txn, rid)
            for db, prefix in (
                (self._log, _keys.log_prefix(hdr.run_no)),
                (self._nodes, _keys.log_prefix(hdr.run_no)),
                (self._children, _keys.child_prefix(hdr.run_no)),
            ):
                self._delete_prefix(txn, db, prefix)
            if hdr.parent_run_no is not None and hdr.parent_index is not None:
                key = _keys.child_key(hdr.parent_run_no, hdr.parent_index, hdr.run_no)
                txn.delete(key, db=self._children)
            txn.delete(_keys.recent_key(hdr.seq), db=self._recent)
            if hdr.workflow_id is not None:
                txn.delete(
                    _keys.workflow_key(hdr.workflow_id.encode(), hdr.seq), db=self._workflows
                )
            txn.delete(rid, db=self._runs)
            return hdr.length

        return self._write(op)

    @staticmethod
    def _delete_prefix(txn: Txn, db: Any, prefix: bytes) -> None:
        cur = txn.cursor(db=db)
        if not cur.set_range(prefix):
            return
        while cur.key().startswith(prefix):
            if not cur.delete():
                break

    # ------------------------------------------------------------------ reads

    def load(
        self,
        run_id: str,
        index: int | None = None,
        *,
        node: str | None = None,
        type: Any = None,
    ) -> Checkpoint | None:
        """The checkpoint at ``index`` of ``run_id`` (latest if None; negative counts
        from the end), or with ``node=`` the latest checkpoint that node wrote.

        Returns None when the run, index or node has no checkpoint. ``type=`` decodes
        the state into that type (Struct, dataclass, TypedDict, builtins); a state
        that does not fit raises SchemaMismatch. A damaged record raises
        CorruptRecord; wrong data is never returned.
        """
        rid = _validate.ident(run_id, "run_id")
        idx = None if index is None else _validate.index(index)
        node_b = _validate.optional_ident(node, "node")
        if idx is not None and node_b is not None:
            raise InvalidArgument("load takes index= or node=, not both")
        if type is not None:
            _record.decoder_for(type)

        def op(txn: Txn) -> Checkpoint | None:
            hdr = self._header(txn, rid)
            if hdr is None or hdr.length == 0:
                return None
            if node_b is not None:
                hit = self._last_with_prefix(
                    txn, self._nodes, _keys.node_prefix(hdr.run_no, node_b)
                )
                if hit is None:
                    return None
                at = U64.unpack(hit[0][-8:])[0]
            elif idx is None:
                at = hdr.length - 1
            else:
                at = idx + hdr.length if idx < 0 else idx
                if not 0 <= at < hdr.length:
                    return None
            return self._checkpoint(run_id, at, hdr, self._raw_record(txn, hdr, run_id, at), type)

        return self._read(op)

    def latest(self, workflow_id: str) -> Checkpoint | None:
        """The newest checkpoint across all runs of ``workflow_id`` (None if none)."""
        prefix = _keys.workflow_prefix(_validate.ident(workflow_id, "workflow_id"))

        def op(txn: Txn) -> Checkpoint | None:
            cur = txn.cursor(db=self._workflows)
            end = _keys.prefix_end(prefix)
            ok = cur.set_range(end) if end is not None else False
            ok = cur.prev() if ok else cur.last()
            while ok and cur.key().startswith(prefix):
                rid = cur.value()
                hdr = self._header(txn, rid)
                if hdr is not None and hdr.length > 0:
                    run_id = rid.decode()
                    at = hdr.length - 1
                    return self._checkpoint(run_id, at, hdr, self._raw_record(txn, hdr, run_id, at))
                ok = cur.prev()
            return None

        return self._read(op)

    def run(self, run_id: str) -> RunInfo | None:
        """The header of ``run_id``, or None if there is no such run."""
        rid = _validate.ident(run_id, "run_id")

        def op(txn: Txn) -> RunInfo | None:
            hdr = self._header(txn, rid)
            return None if hdr is None else self._info(run_id, hdr)

        return self._read(op)

    def runs(
        self,
        workflow_id: str | None = None,
        *,
        status: Status | str | None = None,
        limit: int | None = None,
    ) -> list[RunInfo]:
        """Runs (of ``workflow_id``, with latest ``status``), newest-updated first."""
        wf = _validate.optional_ident(workflow_id, "workflow_id")
        want = None if status is None else _record.STATUS_CODES[_validate.status(status)]
        cap = _validate.optional_nonnegative(limit, "limit")
        if wf is not None:
            db, prefix = self._workflows, _keys.workflow_prefix(wf)
        else:
            db, prefix = self._recent, b""

        def op(txn: Txn) -> list[RunInfo]:
            out: list[RunInfo] = []
            if cap == 0:
                return out
            cur = txn.cursor(db=db)
            end = _keys.prefix_end(prefix) if prefix else None
            ok = cur.set_range(end) if end is not None else False
            ok = cur.prev() if ok else cur.last()
            while ok and cur.key().startswith(prefix):
                rid = cur.value()
                hdr = self._header(txn, rid)
                if hdr is not None and (want is None or hdr.status == want):
                    out.append(self._info(rid.decode(), hdr))
                    if cap is not None and len(out) >= cap:
                        break
                ok = cur.prev()
            return out

        return self._read(op)

    def history(
        self,
        run_id: str,
        *,
        start: int = 0,
        stop: int | None = None,
        type: Any = None,
    ) -> Iterator[Checkpoint]:
        """Checkpoints ``start`` .. ``stop - 1`` of ``run_id`` in ascending index order.

        Slicing rules are a list's (negative bounds count from the end). Streams in
        bounded chunks: memory stays constant however long the run. Raises
        RunNotFound (eagerly, at the call).
        """
        rid = _validate.ident(run_id, "run_id")
        lo = _validate.index(start, "start")
        hi = None if stop is None else _validate.index(stop, "stop")
        if type is not None:
            _record.decoder_for(type)
        hdr = self._read(lambda txn: self._require(txn, rid))
        first, last, _ = slice(lo, hi).indices(hdr.length)
        return self._stream(run_id, hdr, first, last, type)

    def _stream(
        self, run_id: str, hdr: _RunHeader, first: int, last: int, type_: Any
    ) -> Iterator[Checkpoint]:
        at = first
        while at < last:
            chunk_end = min(at + HISTORY_CHUNK, last)

            def op(txn: Txn, lo: int = at, hi: int = chunk_end) -> list[Checkpoint]:
                cur = txn.cursor(db=self._log)
                out: list[Checkpoint] = []
                if not cur.set_key(_keys.log_key(hdr.run_no, lo)):
                    return out
                for key, raw in cur:
                    run_no, index = _keys.split_log_key(key)
                    if run_no != hdr.run_no or index >= hi:
                        break
                    out.append(self._checkpoint(run_id, index, hdr, raw, type_))
                return out

            batch = self._read(op)
            if not batch:
                return
            yield from batch
            at = batch[-1].index + 1
            if len(batch) < chunk_end - batch[0].index:
                return

    def lineage(self, run_id: str) -> list[RunInfo]:
        """``run_id``'s header, its parent's, ... up to the root. A purged ancestor
        ends the chain (the child still names it). Raises RunNotFound."""
        rid = _validate.ident(run_id, "run_id")

        def op(txn: Txn) -> list[RunInfo]:
            hdr = self._require(txn, rid)
            chain = [self._info(run_id, hdr)]
            while hdr.parent_run_id is not None:
                parent = self._header(txn, hdr.parent_run_id.encode())
                if parent is None or parent.run_no != hdr.parent_run_no:
                    break
                chain.append(self._info(hdr.parent_run_id, parent))
                hdr = parent
            return chain

        return self._read(op)

    def children(self, run_id: str, index: int | None = None) -> list[str]:
        """Ids of runs forked from ``run_id`` (from checkpoint ``index`` if given)."""
        rid = _validate.ident(run_id, "run_id")
        idx = None if index is None else _validate.index(index)

        def op(txn: Txn) -> list[str]:
            hdr = self._require(txn, rid)
            at = idx + hdr.length if idx is not None and idx < 0 else idx
            if at is not None and not 0 <= at < hdr.length:
                return []
            return self._children_at(txn, hdr.run_no, at)

        return self._read(op)
