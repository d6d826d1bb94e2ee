"""``Store.verify()``: check every record and that every index agrees with the log.

One read transaction (a consistent snapshot), one pass over the key space in key
order: segments (records, headers, node entries), then the ids, recency, workflow and
children tables are checked against what the segments say.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from steplog import _keys, _record
from steplog._keys import U64
from steplog.errors import CorruptRecord
from steplog.model import Problem, VerifyReport

if TYPE_CHECKING:
    from steplog._residency import Scan
    from steplog.store import Store, Txn, _RunHeader


@dataclass
class _Segment:
    header: _RunHeader | None = None
    records: list[int] = field(default_factory=list)
    nodes: dict[int, str] = field(default_factory=dict)
    node_entries: set[tuple[str, int]] = field(default_factory=set)
    #: (node, first index) -> streak length, per node entry
    streaks: dict[tuple[str, int], int] = field(default_factory=dict)
    decoded: set[int] = field(default_factory=set)
    last_head: tuple[int, _record.Header] | None = None


def verify(store: Store, txn: Txn, decode_header: Any, scan: Scan) -> VerifyReport:
    from steplog.store import _NO_STATUS
    from steplog.store import _prefix_items as _scan

    problems: list[Problem] = []
    segments: dict[int, _Segment] = defaultdict(_Segment)
    records = 0

    def problem(run_id: str, index: int | None, kind: str, detail: str) -> None:
        problems.append(Problem(run_id=run_id, index=index, kind=kind, detail=detail))

    # ---- ids
    ids: dict[int, str] = {}
    for key, value in _scan(txn, _keys.IDS):
        run_id = key[1:].decode("utf-8", "replace")
        if len(value) != 8:
            problem(run_id, None, "index", "id entry is not a run number")
            continue
        run_no = U64.unpack(value)[0]
        if run_no in ids:
            problem(run_id, None, "index", f"names run #{run_no}, as {ids[run_no]!r} does")
            continue
        ids[run_no] = run_id

    # ---- segments: records in order, then the header, then node entries
    limit = store.max_record_size
    cur_no, chain = -1, _record.Chain()
    read = 0  # record bytes since the last residency check
    for key, value in _scan(txn, _keys.SEGMENT):
        if len(key) < 10:
            problem("?", None, "index", f"stray key {key!r} in the segment table")
            continue
        run_no = U64.unpack_from(key, 1)[0]
        seg = segments[run_no]
        run_id = ids.get(run_no, f"#{run_no}")
        kind = key[9:10]
        if kind not in (b"\x00", b"\x01", b"\x02") or (
            (kind == b"\x00" and len(key) != _keys.LOG_KEY_SIZE)
            or (kind == b"\x01" and len(key) != 10)
            or (kind == b"\x02" and (len(key) < 20 or key[-9:-8] != _keys.SEP))
        ):
            problem(run_id, None, "index", f"stray key {key!r} in the run's segment")
            continue
        if kind == b"\x00":
            index = _keys.log_index(key)
            if run_no != cur_no:
                cur_no, chain = run_no, _record.Chain()
            seg.records.append(index)
            records += 1
            read += len(value)
            if read >= 1 << 20:  # a pass over a large store keeps few pages mapped
                read = 0
                scan.check()
            try:
                head = _record.read_header(run_id, index, value)
            except CorruptRecord as exc:
                problem(run_id, index, "damaged", exc.detail)
                chain = _record.Chain()
                continue
            seg.last_head = (index, head)
            if not chain.follows_depth(index, head) and chain.can_take(index, head):
                problem(
                    run_id,
                    index,
                    "depth",
                    f"delta depth {head.depth} disagrees with its chain (it loads by a "
                    "longer walk)",
                )
            if not chain.can_take(index, head):
                problem(run_id, index, "unreadable", "its delta base is damaged or missing")
                chain = _record.Chain()
                continue
            try:
                payload = chain.decode(run_id, index, value, head, limit)
                node, _meta, _state = _record.decode_payload(run_id, index, payload)
            except CorruptRecord as exc:
                problem(run_id, index, "damaged", exc.detail)
                chain = _record.Chain()
                continue
            seg.decoded.add(index)
            if node is not None:
                seg.nodes[index] = node
        elif kind == b"\x01":
            try:
                seg.header = decode_header(value)
            except msgspec.DecodeError:
                problem(run_id, None, "header", "run header does not decode")
                continue
            if seg.header.status != _NO_STATUS and seg.header.status not in _record.CODE_STATUS:
                problem(run_id, None, "header", f"unknown status {seg.header.status}")
                seg.header = None
        elif kind == b"\x02":
            node_b, idx = key[10:-9], U64.unpack_from(key, len(key) - 8)[0]
            node = node_b.decode("utf-8", "replace")
            length = _keys.streak_length(value)
            if not length or (length > 1 and not store._streaks):
                problem(
                    run_id,
                    idx,
                    "index",
                    f"node entry of {node!r} holds a bad streak length {value.hex()!r}",
                )
                continue
            seg.streaks[node, idx] = length
            # (a length past the run's end shows as one stray entry, not billions)
            run_length = seg.header.length if seg.header is not None else 0
            _cover(seg, run_id, node, idx, min(idx + length, max(run_length, idx) + 1), problem)

    headers: dict[int, _RunHeader] = {}
    for run_no, seg in segments.items():
        run_id = ids.get(run_no, f"#{run_no}")
        hdr = seg.header
        if hdr is None:
            problem(run_id, None, "header", "records without a run header")
            continue
        headers[run_no] = hdr
        if ids.get(run_no) != hdr.run_id:
            problem(hdr.run_id, None, "index", "id entry missing or naming another run")
        if len(seg.records) != hdr.length or (seg.records and seg.records[-1] != hdr.length - 1):
            gaps = _gaps(seg.records, hdr.length)
            problem(
                hdr.run_id,
                None,
                "missing",
                f"records {_ranges(seg.records)} for length {hdr.length}{gaps}",
            )
        _add_tail(hdr, seg, store._tails, problem)
        expected_nodes = {(node, i) for i, node in seg.nodes.items()}
        if expected_nodes - seg.node_entries:
            problem(
                hdr.run_id,
                None,
                "index",
                f"node entries missing: {sorted(expected_nodes - seg.node_entries)[:5]}",
            )
        stray = {  # entries naming a record that is not there or names no such node
            (n, i)
            for n, i in seg.node_entries - expected_nodes
            if i >= hdr.length or i in seg.decoded
        }
        if stray:
            problem(hdr.run_id, None, "index", f"stray node entries: {sorted(stray)[:5]}")
        if not store._tails:
            _check_streak_hint(hdr, seg, problem)
        if hdr.length and seg.last_head is not None and seg.last_head[0] == hdr.length - 1:
            last = seg.last_head[1]
            if (last.seq, last.created_ns, _record.STATUS_CODES[last.status]) != (
                hdr.seq,
                hdr.updated_ns,
                hdr.status,
            ):
                problem(
                    hdr.run_id,
                    hdr.length - 1,
                    "header",
                    "run header disagrees with its latest record",
                )
    for run_no, run_id in ids.items():
        if run_no not in headers:
            problem(run_id, None, "index", "id entry for a run that has no header")

    scan.check()  # the segments are done with

    # ---- recency and workflow indexes: exactly one entry per run, at its seq
    seen_recent: dict[int, int] = defaultdict(int)
    for key, value in _scan(txn, _keys.RECENT):
        if len(key) != 1 + U64.size or len(value) != U64.size:
            problem("?", None, "index", f"malformed recency entry {key!r}")
            continue
        seq, run_no = U64.unpack_from(key, 1)[0], U64.unpack(value)[0]
        hdr = headers.get(run_no)
        if hdr is None or hdr.seq != seq:
            problem(
                ids.get(run_no, f"#{run_no}"), None, "index", f"stale recency entry (seq {seq})"
            )
        seen_recent[run_no] += 1
    seen_wf: dict[int, int] = defaultdict(int)
    before: tuple[str, int] = ("", -1)  # (workflow, seq) of the entry before
    for key, value in _scan(txn, _keys.WORKFLOWS):
        if len(key) < 11 or key[-9:-8] != _keys.SEP or len(value) != U64.size:
            problem("?", None, "index", f"malformed workflow entry {key!r}")
            continue
        workflow = key[1:-9].decode("utf-8", "replace")
        seq, run_no = U64.unpack_from(key, len(key) - 8)[0], U64.unpack(value)[0]
        hdr = headers.get(run_no)
        keyed = -1 if hdr is None else hdr.seq if hdr.wseq < 0 else hdr.wseq
        if hdr is None or keyed != seq or hdr.workflow_id != workflow or keyed > hdr.seq:
            problem(
                ids.get(run_no, f"#{run_no}"),
                None,
                "index",
                f"stale workflow entry ({workflow!r}, seq {seq})",
            )
        elif before[0] == workflow and before[1] >= seq:
            # each key must be above the seq of the run listed before it: then the
            # entries are in update order, and an append to the last one may keep it
            problem(hdr.run_id, None, "index", f"workflow {workflow!r} lists it out of order")
        if hdr is not None:
            before = (workflow, hdr.seq)
        seen_wf[run_no] += 1
    for run_no, hdr in headers.items():
        if hdr.wseq >= 0 and (not store._tails or hdr.workflow_id is None):
            problem(hdr.run_id, None, "header", "run header keys a workflow entry it cannot")
        if seen_recent[run_no] != 1:
            problem(hdr.run_id, None, "index", f"{seen_recent[run_no]} recency entries, not 1")
        if seen_wf[run_no] != (hdr.workflow_id is not None):
            problem(hdr.run_id, None, "index", f"{seen_wf[run_no]} workflow entries")

    # ---- children: one entry per child whose parent still exists
    listed: set[int] = set()
    for key, value in _scan(txn, _keys.CHILDREN):
        if len(key) != 1 + 3 * U64.size:
            problem("?", None, "index", f"malformed children entry {key!r}")
            continue
        parent_no, parent_index, child_no = (U64.unpack_from(key, o)[0] for o in (1, 9, 17))
        child, parent = headers.get(child_no), headers.get(parent_no)
        if (
            child is None
            or parent is None
            or (child.parent_run_no, child.parent_index) != (parent_no, parent_index)
            or value != child.run_id.encode()
        ):
            problem(ids.get(child_no, f"#{child_no}"), None, "index", "stale children entry")
        listed.add(child_no)
    for run_no, hdr in headers.items():
        if hdr.parent_run_no in headers and run_no not in listed:
            problem(hdr.run_id, None, "index", "fork missing from its parent's children")

    # ---- the run-number counter, and keys in no table
    raw = txn.get(_keys.META_NEXT_RUN_NO)
    counter = U64.unpack(raw)[0] if raw is not None and len(raw) == U64.size else None
    if segments and (counter is None or counter < max(segments)):
        problem("?", None, "index", f"run-number counter {counter} below runs in use")
    known = (_keys.META_FORMAT, _keys.META_NEXT_RUN_NO)
    for key in txn.cursor().iternext(values=False):  # keys only: no value page is read
        tag = key[:1]
        if (tag == _keys.META and key not in known) or tag not in _TAGS:
            problem("?", None, "index", f"stray key {key[:40]!r}")
    scan.check()

    return VerifyReport(runs=len(headers), records=records, problems=problems)


_TAGS = (_keys.META, _keys.IDS, _keys.SEGMENT, _keys.WORKFLOWS, _keys.RECENT, _keys.CHILDREN)


def _add_tail(hdr: _RunHeader, seg: _Segment, tails: bool, problem: Any) -> None:
    """Count the streaks of the header's tail (format 3) as node entries: each must be
    newer than every indexed streak and every streak before it, and within the run."""
    if hdr.tail and not tails:
        problem(hdr.run_id, None, "header", "run header holds streaks its format does not")
        return
    newest = max((start for _node, start in seg.streaks), default=-1)
    for name, start, length in hdr.tail:
        node = name.decode("utf-8", "replace")
        if length < 1 or start <= newest or start + length > hdr.length:
            problem(
                hdr.run_id,
                None,
                "header",
                f"run header's streak of {node!r} ({start}, {length}) is out of order or range",
            )
            continue
        newest = start
        _cover(seg, hdr.run_id, node, start, start + length, problem)


def _cover(seg: _Segment, run_id: str, node: str, first: int, stop: int, problem: Any) -> None:
    """Count checkpoints ``first`` .. ``stop - 1`` as indexed under ``node``, each once."""
    for i in range(first, stop):
        if (node, i) in seg.node_entries:
            problem(run_id, i, "index", f"indexed twice under node {node!r}")
        seg.node_entries.add((node, i))


def _check_streak_hint(hdr: _RunHeader, seg: _Segment, problem: Any) -> None:
    """The header's word on the latest checkpoint's streak, which the next append
    trusts, must be true (see _RunHeader.streak)."""
    from steplog.store import NO_STREAK

    last = hdr.length - 1
    if hdr.streak > last or hdr.streak < NO_STREAK:
        problem(hdr.run_id, None, "header", f"run header's streak {hdr.streak} is out of range")
        return
    if last not in seg.decoded:
        return  # a damaged latest record (reported already), or none
    node = seg.nodes.get(last)
    if hdr.streak >= 0:
        named = hdr.streak_node.decode("utf-8", "replace") if hdr.streak_node else None
        if (
            node is None
            or node != named
            or seg.streaks.get((node, hdr.streak)) != (hdr.length - hdr.streak)
        ):
            problem(hdr.run_id, last, "header", "run header names a streak the index lacks")
    elif hdr.streak == NO_STREAK and node is not None:
        problem(hdr.run_id, last, "header", "run header says its latest names no node")


def _gaps(indices: list[int], length: int) -> str:
    """The first indices below ``length`` missing from ``indices`` (sorted)."""
    missing: list[int] = []
    expected = 0
    for i in indices:
        if i >= length or len(missing) >= 5:
            break
        missing.extend(range(expected, min(i, expected + 5 - len(missing))))
        expected = i + 1
    if len(missing) < 5 and expected < length:
        missing.extend(range(expected, min(length, expected + 5 - len(missing))))
    return f"; missing {missing}" if missing else ""


def _ranges(indices: list[int]) -> str:
    if not indices:
        return "none"
    return f"{indices[0]}..{indices[-1]} ({len(indices)})"
