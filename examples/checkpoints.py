"""Checkpoints: snapshot a store's keys to verified files, break the store, restore it.

Run: python examples/checkpoints.py
"""

import asyncio
import tempfile
from pathlib import Path

from statekit import create_store
from statekit.checkpoint import CheckpointCoordinator, CheckpointOptions


async def main(directory: Path) -> None:
    async with create_store(f"sqlite:///{directory / 'state.db'}", key_prefix="job:") as store:
        await store.put_many({f"window:{i}": {"count": i * 10} for i in range(1000)})
        await store.put("offset", 1000)

        # Every checkpoint is written atomically, SHA-256 verified, and only the 3 newest are kept.
        options = CheckpointOptions(directory / "checkpoints", max_checkpoints=3)
        coordinator = CheckpointCoordinator(store, interval=60, options=options)
        first = await coordinator.create_checkpoint()

        # A bad deploy corrupts state...
        await store.put("offset", -1)
        await store.delete_many([f"window:{i}" for i in range(500)])
        print(await store.get("offset"), len(await store.keys("window:")))

        # ...so restore the newest checkpoint that verifies (it replaces the keys under "job:").
        restored = await coordinator.restore_latest()
        print(restored == first, await store.get("offset"), len(await store.keys("window:")))

        for info in coordinator.list_checkpoints():
            print(info.entry_count, info.prefix, len(info.checksum))
        # The same from a shell: statekit checkpoint list DIR / verify DIR / restore DIR --store URL


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp)))
