"""Argument checks shared by every entry point. All raise InvalidArgument."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from steplog._keys import MAX_ID_BYTES
from steplog.errors import InvalidArgument
from steplog.model import Status

#: Metadata is meant for small, filterable facts; bulk data belongs in the state.
MAX_METADATA_KEYS = 256
MAX_METADATA_STR_BYTES = 4096

_INT64_MIN = -(2**63)
_UINT64_MAX = 2**64 - 1


def ident(value: object, what: str) -> bytes:
    """Check a run/workflow/node id and return its UTF-8 key bytes."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a str, not {type(value).__name__}")
    if not value:
        raise InvalidArgument(f"{what} must not be empty")
    if "\x00" in value:
        raise InvalidArgument(f"{what} {value!r} contains a NUL character")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgument(f"{what} {value!r} is not valid Unicode: {exc.reason}") from None
    if len(raw) > MAX_ID_BYTES:
        raise InvalidArgument(
            f"{what} is {len(raw)} bytes in UTF-8, over the limit of {MAX_ID_BYTES}"
        )
    return raw


def optional_ident(value: object, what: str) -> bytes | None:
    return None if value is None else ident(value, what)


def index(value: object, what: str = "index") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{what} must be an int, not {type(value).__name__}")
    return value


def optional_nonnegative(value: object, what: str) -> int | None:
    if value is None:
        return None
    result = index(value, what)
    if result < 0:
        raise InvalidArgument(f"{what} must be >= 0, got {result}")
    return result


def status(value: object) -> Status:
    if isinstance(value, Status):
        return value
    if isinstance(value, str):
        try:
            return Status(value)
        except ValueError:
            pass
    choices = ", ".join(s.value for s in Status)
    raise InvalidArgument(f"status must be a steplog.Status (one of {choices}), not {value!r}")


def metadata(value: object) -> dict[str, Any]:
    """Metadata is a flat mapping of str to None/bool/int/float/str."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArgument(f"metadata must be a mapping, not {type(value).__name__}")
    if len(value) > MAX_METADATA_KEYS:
        raise InvalidArgument(
            f"metadata has {len(value)} keys, over the limit of {MAX_METADATA_KEYS}"
        )
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise InvalidArgument(f"metadata keys must be str, not {type(key).__name__}")
        _check_text(key, "metadata key")
        if isinstance(item, str):
            _check_text(item, f"metadata[{key!r}]")
        elif isinstance(item, bool) or item is None:
            pass
        elif isinstance(item, int):
            if not _INT64_MIN <= item <= _UINT64_MAX:
                raise InvalidArgument(f"metadata[{key!r}] = {item} does not fit in 64 bits")
        elif isinstance(item, float):
            if math.isnan(item):
                raise InvalidArgument(f"metadata[{key!r}] is NaN, which cannot be compared")
        else:
            raise InvalidArgument(
                f"metadata[{key!r}] must be None, bool, int, float or str, "
                f"not {type(item).__name__}"
            )
        out[key] = item
    return out


def _check_text(text: str, what: str) -> None:
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidArgument(f"{what} is not valid Unicode: {exc.reason}") from None
    if size > MAX_METADATA_STR_BYTES:
        raise InvalidArgument(f"{what} is {size} bytes, over the limit of {MAX_METADATA_STR_BYTES}")
