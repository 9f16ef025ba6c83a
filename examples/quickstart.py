"""statekit in one minute: an async store on SQLite, TTLs, ranges, batches, and the sync API.

Run: python examples/quickstart.py
"""

import asyncio
import tempfile
from pathlib import Path

from statekit import create_store
from statekit.sync import create_store as create_sync_store


async def main(directory: Path) -> None:
    url = f"sqlite:///{directory / 'state.db'}"
    # One SQLite file; every key of this store lives under "job:" in it.
    async with create_store(url, key_prefix="job:") as store:
        await store.put("user:1", {"name": "Ada", "visits": 1})
        await store.put("session:abc", {"user": 1}, ttl=3600)  # gone in an hour
        await store.put_many({"user:2": {"name": "Lin"}, "user:3": {"name": "Bo"}})

        print(await store.get("user:1"))
        print(await store.get("missing", default="no such key"))
        print([key for key, _ in await store.range_get("user:")])  # every key starting with "user:"
        print(await store.incr("pages_seen", 10), await store.incr("pages_seen"))
        print(await store.update("user:1", lambda user: {**user, "visits": user["visits"] + 1}))
        print(await store.delete("user:3"), await store.exists("user:3"))

    # The same file, through the blocking API (scripts, notebooks, threads): no await.
    with create_sync_store(url, key_prefix="job:") as store:
        print(store.keys())


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp)))
