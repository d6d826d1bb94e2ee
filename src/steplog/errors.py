"""The exceptions steplog raises.

Every error the public API raises derives from :class:`StepLogError`. Each names the
run (and, where one is involved, the index) so a log line is enough to find the
problem. No raw ``lmdb``, ``zstandard`` or ``msgspec`` exception escapes the API.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CheckpointNotFound",
    "CorruptRecord",
    "ForkPointInUse",
    "IndexConflict",
    "InvalidArgument",
    "NotAStore",
    "RecordTooLarge",
    "RunExists",
    "RunNotFound",
    "SchemaMismatch",
    "StepLogError",
    "StorageError",
    "StoreClosed",
    "UnsupportedFormat",
    "WorkflowMismatch",
]


class StepLogError(Exception):
    """Root of every error steplog raises."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Errors whose __init__ takes fields (run id, index, ...) rebuild from their
        # message and fields, not by calling __init__ with the message alone: pickle
        # is how a process pool returns a worker's IndexConflict to its caller.
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[StepLogError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class InvalidArgument(StepLogError, ValueError):
    """An argument is of the wrong type or out of its allowed range; nothing was written."""


class RecordTooLarge(InvalidArgument):
    """A state encodes to more bytes than the store's ``max_record_size``; nothing was written."""

    def __init__(self, run_id: str, size: int, limit: int) -> None:
        super().__init__(
            f"run {run_id!r}: encoded checkpoint is {size} bytes, over the store's "
            f"max_record_size of {limit} bytes"
        )
        self.run_id = run_id
        self.size = size
        self.limit = limit


class RunNotFound(StepLogError, LookupError):
    """The named run does not exist."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} does not exist")
        self.run_id = run_id


class CheckpointNotFound(StepLogError, LookupError):
    """The run exists but has no checkpoint at the given index."""

    def __init__(self, run_id: str, index: int, length: int) -> None:
        super().__init__(f"run {run_id!r} has no checkpoint at index {index} (it has {length})")
        self.run_id = run_id
        self.index = index
        self.length = length


class RunExists(StepLogError):
    """A run with this id already exists (for example as the target of a fork)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} already exists")
        self.run_id = run_id


class IndexConflict(StepLogError):
    """Compare-and-append lost: the run's next index is not the expected one.

    ``actual`` is the index the next append to the run would get.
    """

    def __init__(self, run_id: str, expected: int, actual: int) -> None:
        super().__init__(
            f"run {run_id!r}: expected next index {expected}, but the next index is {actual}"
        )
        self.run_id = run_id
        self.expected = expected
        self.actual = actual


class WorkflowMismatch(InvalidArgument):
    """An append names a workflow other than the one the run was created with."""

    def __init__(self, run_id: str, existing: str | None, given: str) -> None:
        super().__init__(f"run {run_id!r} belongs to workflow {existing!r}, not {given!r}")
        self.run_id = run_id
        self.existing = existing
        self.given = given


class ForkPointInUse(StepLogError):
    """``delete_latest`` refused: other runs were forked from that checkpoint."""

    def __init__(self, run_id: str, index: int, children: list[str]) -> None:
        names = ", ".join(repr(c) for c in children)
        super().__init__(
            f"run {run_id!r}: checkpoint {index} is the fork point of {names}; "
            "purge those runs first"
        )
        self.run_id = run_id
        self.index = index
        self.children = children


class SchemaMismatch(StepLogError, TypeError):
    """A stored state does not fit the type it was asked to decode into."""

    def __init__(self, run_id: str, index: int, type_: object, detail: str) -> None:
        super().__init__(
            f"run {run_id!r} checkpoint {index}: state does not fit {type_!r}: {detail}"
        )
        self.run_id = run_id
        self.index = index
        self.type = type_


class CorruptRecord(StepLogError):
    """A stored record failed its checksum or could not be decoded; no data was returned."""

    def __init__(self, run_id: str, index: int, detail: str) -> None:
        super().__init__(f"run {run_id!r} checkpoint {index} is corrupt: {detail}")
        self.run_id = run_id
        self.index = index
        self.detail = detail


class StoreClosed(StepLogError):
    """The store was closed; open it again to use it."""


class NotAStore(StepLogError):
    """The path exists but is not a steplog store; it was left untouched."""


class UnsupportedFormat(StepLogError):
    """The store was written by a newer steplog format version; it was left untouched."""


class StorageError(StepLogError, OSError):
    """The storage engine failed (disk full, I/O error, map size limit reached).

    The failed call wrote nothing; the store stays consistent and usable.
    """
