"""The LMDB store runs the shared store contract."""

from pathlib import Path

import steplog
from steplog.testing import StoreContract


class TestLMDBStore(StoreContract):
    def open_store(self, path: Path) -> steplog.Store:
        return steplog.open(path)


class TestLMDBStoreTinyMap(StoreContract):
    """The same contract with a map so small that most tests force it to grow."""

    def open_store(self, path: Path) -> steplog.Store:
        return steplog.open(path, map_size=64 << 10)
