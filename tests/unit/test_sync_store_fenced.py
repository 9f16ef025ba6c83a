"""Fenced writes through the blocking store (statekit.sync).

A unit test (one SQLite file, no server): the every-backend fenced-write suite is
tests/acceptance/test_fenced_writes.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from statekit.errors import StaleFence
from statekit.locks import Fence

OLD, NEW, NEWER = Fence("job", 5), Fence("job", 7), Fence("job", 9)


def test_sync_store_passes_the_fence(tmp_path: Path) -> None:
    from statekit.sync import create_store

    store = create_store(f"sqlite:///{tmp_path / 'sync.db'}")
    try:
        store.put("k", "new", fence=NEW)
        with pytest.raises(StaleFence):
            store.put("k", "stale", fence=OLD)
        with pytest.raises(StaleFence):
            store.put_many({"k": 1}, fence=OLD)
        with pytest.raises(StaleFence):
            store.delete("k", fence=OLD)
        assert store.get("k") == "new"
        assert store.update("k", lambda v: v + "!", fence=NEW) == "new!"
        assert store.delete_many(["k"], fence=NEWER) == 1
    finally:
        store.close()
