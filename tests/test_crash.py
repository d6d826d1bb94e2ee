"""The kill harness at CI scale: 100 SIGKILLs per durability mode, nothing acknowledged lost.

The long run is ``python tools/crashtest.py --kills 1000`` (figures in the README).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

import steplog

_spec = importlib.util.spec_from_file_location(
    "crashtest", Path(__file__).resolve().parent.parent / "tools" / "crashtest.py"
)
assert _spec and _spec.loader
crashtest = importlib.util.module_from_spec(_spec)
sys.modules["crashtest"] = crashtest
_spec.loader.exec_module(crashtest)

KILLS = 100


@pytest.mark.parametrize("durability", ["full", "fast"])
def test_sigkill_never_loses_an_acknowledged_write(tmp_path: Path, durability: str) -> None:
    totals = crashtest.campaign(tmp_path, KILLS, durability, seed=11, max_delay=0.25)
    assert totals.kills == KILLS
    assert totals.acked > KILLS  # the writers really wrote between kills


def test_the_checker_notices_a_lost_write(tmp_path: Path) -> None:
    totals = crashtest.campaign(tmp_path, 3, "fast", seed=5)
    model, path = totals.last_model, totals.last_store
    assert model is not None and path is not None
    crashtest.check(path, model)  # consistent as left
    model.pending.clear()  # no in-flight operation may excuse what follows
    with steplog.open(path) as store:
        run = next(  # (a run whose latest checkpoint is no fork point: that one stays)
            r
            for r, digests in model.runs.items()
            if len(digests) > 1 and r.startswith("t") and not store.children(r, -1)
        )
        store.delete_latest(run)  # lose an acknowledged write behind the harness's back
    with pytest.raises(AssertionError, match=run):
        crashtest.check(path, model)
