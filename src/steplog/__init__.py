"""steplog: an embedded, append-only checkpoint log for workflow and agent runs.

>>> import steplog
>>> with steplog.open("./runs") as store:            # doctest: +SKIP
...     store.append("run-1", {"step": 1}, workflow_id="etl")
...     store.load("run-1").state
"""

from steplog.async_store import AsyncStore, open_async
from steplog.errors import (
    CheckpointNotFound,
    CorruptRecord,
    ForkPointInUse,
    IndexConflict,
    InvalidArgument,
    NotAStore,
    RecordTooLarge,
    RunExists,
    RunNotFound,
    SchemaMismatch,
    StepLogError,
    StorageError,
    StoreClosed,
    UnsupportedFormat,
    WorkflowMismatch,
)
from steplog.model import TERMINAL_STATUSES, Checkpoint, Problem, RunInfo, Status, VerifyReport
from steplog.store import Durability, Store, open

__version__ = "0.1.0"

__all__ = [
    "TERMINAL_STATUSES",
    "AsyncStore",
    "Checkpoint",
    "CheckpointNotFound",
    "CorruptRecord",
    "Durability",
    "ForkPointInUse",
    "IndexConflict",
    "InvalidArgument",
    "NotAStore",
    "Problem",
    "RecordTooLarge",
    "RunExists",
    "RunInfo",
    "RunNotFound",
    "SchemaMismatch",
    "Status",
    "StepLogError",
    "StorageError",
    "Store",
    "StoreClosed",
    "UnsupportedFormat",
    "VerifyReport",
    "WorkflowMismatch",
    "open",
    "open_async",
]
