"""The values steplog hands out: checkpoints, run summaries and statuses."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import msgspec

__all__ = ["TERMINAL_STATUSES", "Checkpoint", "Problem", "RunInfo", "Status", "VerifyReport"]


class Status(enum.Enum):
    """Where a run stands after a checkpoint."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    AWAITING_INPUT = "awaiting_input"


#: Statuses after which a run is not expected to append again.
TERMINAL_STATUSES = frozenset({Status.COMPLETED, Status.FAILED})


class Checkpoint(msgspec.Struct, frozen=True, kw_only=True):
    """One immutable entry of a run's log.

    ``index`` is the checkpoint's dense position in its run (0, 1, 2, ...).
    ``parent_run_id`` / ``parent_index`` name the checkpoint a forked run started
    from; they are ``None`` for a run that was not forked.
    """

    run_id: str
    index: int
    workflow_id: str | None
    created_at: datetime
    status: Status
    node: str | None
    state: Any
    metadata: dict[str, Any]
    parent_run_id: str | None = None
    parent_index: int | None = None


class RunInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A run's header: identity, size, recency, latest status and fork origin.

    ``updated_at`` is the time of the run's latest checkpoint (or of the change that
    left it empty); ``status`` is the status of its latest checkpoint.
    """

    run_id: str
    workflow_id: str | None
    created_at: datetime
    updated_at: datetime
    length: int
    status: Status | None
    parent_run_id: str | None = None
    parent_index: int | None = None


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    """One thing ``verify()`` found wrong.

    ``kind`` is one of: ``damaged`` (the record's own bytes fail their checksum or do
    not decode), ``unreadable`` (an intact delta record whose base is damaged),
    ``missing`` (the run's records are not exactly 0..length-1), ``header`` (the run
    header is unreadable or disagrees with its latest record), ``index`` (a secondary
    index disagrees with the log), ``depth`` (an intact delta record whose depth field
    disagrees with its chain: it loads, by a longer walk back to its keyframe).
    """

    run_id: str
    index: int | None
    kind: str
    detail: str


class VerifyReport(msgspec.Struct, frozen=True, kw_only=True):
    """What ``verify()`` checked and found."""

    runs: int
    records: int
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def damaged(self) -> list[tuple[str, int]]:
        """(run id, index) of every record whose own bytes are damaged."""
        return [
            (p.run_id, p.index)
            for p in self.problems
            if p.kind == "damaged" and p.index is not None
        ]
