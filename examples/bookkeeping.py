"""Bookkeeping of an incremental job: processed items, retries with backoff, counters and timings,
and the run-state file that says where the next run starts. Run: python examples/bookkeeping.py
"""

import asyncio
import tempfile
from pathlib import Path

from statekit import create_store
from statekit.persistence import PersistenceManager, RetryManager, StateTracker
from statekit.runs import (
    get_incremental_start_run,
    read_state,
    update_attempted_run_state,
    update_contiguous_run_state,
)


async def fetch(item: str, attempt: int) -> str:
    if item == "flaky" and attempt == 0:  # fails once, then works
        raise ConnectionError("timed out")
    return item.upper()


async def main(directory: Path) -> None:
    async with create_store(f"sqlite:///{directory / 'state.db'}") as store:
        job = PersistenceManager(store, "crawler")
        retries = RetryManager(store, max_retries=3, base_delay=0.01, jitter=False)
        stats = StateTracker(store)
        for attempt in range(2):  # two passes: the second picks up what failed
            for item in ["a", "flaky", "b"]:
                if await job.is_processed(item):
                    continue
                try:
                    async with stats.timed("fetch"):
                        await fetch(item, attempt)
                except ConnectionError as exc:
                    count = await retries.record_retry(item, exc)
                    print(f"{item}: failed ({exc}), retry {count}, next in {retries.compute_delay(count)} s")
                    await stats.increment_counter("failed")
                    continue
                await job.mark_processed(item)
                await retries.clear_retry_data(item)
                await stats.increment_counter("processed")
        print(sorted(await job.load_processed_items()))
        print(await stats.get_counters())
        print((await stats.get_processing_stats("fetch"))["count"])

    # Run numbers: runs 1-5 and 7 succeeded, 6 failed: the watermark stops before the gap.
    state_file = directory / "import_state.json"
    update_contiguous_run_state(state_file, [1, 2, 3, 4, 5, 7])
    update_attempted_run_state(state_file, [6, 7])
    state = read_state(state_file)
    print(state["last_contiguous_run"], state["last_attempted_run"], get_incremental_start_run(state_file))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp)))
