"""LangGraph's own checkpointer conformance suite, base and extended capabilities."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

pytest.importorskip("langgraph.checkpoint.conformance")

from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.report import ProgressCallbacks

from steplog.langgraph import StepLogSaver


@checkpointer_test(name="StepLogSaver")
async def steplog_saver() -> AsyncIterator[StepLogSaver]:
    d = Path(tempfile.mkdtemp(prefix="steplog-lg-"))
    async with StepLogSaver.from_path(d / "store") as saver:
        yield saver
    shutil.rmtree(d, ignore_errors=True)


def test_conformance_base_and_extended() -> None:
    async def run() -> object:
        return await validate(steplog_saver, progress=ProgressCallbacks.verbose())

    report = anyio.run(run)
    report.print_report()  # type: ignore[attr-defined]
    assert report.passed_all_base()  # type: ignore[attr-defined]
    assert report.passed_all()  # type: ignore[attr-defined]
