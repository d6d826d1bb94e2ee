"""The values steplog hands out: checkpoints, run summaries and statuses."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import msgspec

__all__ = ["TERMINAL_STATUSES", "Checkpoint", "RunInfo", "Status"]


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
