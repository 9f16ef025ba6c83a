"""statekit: state persistence for Python data pipelines and stream processors.

Quick start::

    import asyncio
    from statekit import create_store

    async def main() -> None:
        async with create_store("sqlite:///tmp/state.db") as store:
            await store.put("user:123", {"name": "Ada"}, ttl=3600)
            print(await store.get("user:123"))

    asyncio.run(main())

Stores are made by :func:`create_store` (memory, SQLite) from a type name or URL; every
error is a :class:`statekit.errors.StateError`.
"""

from statekit._factory import configure_global_store, create_store, get_global_store, get_store_context
from statekit._native import __version__
from statekit.store import KeyValueStore

__all__ = [
    "KeyValueStore",
    "__version__",
    "configure_global_store",
    "create_store",
    "get_global_store",
    "get_store_context",
]
