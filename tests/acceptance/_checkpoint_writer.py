"""Subprocess target of the crash test in test_checkpoint.py: writes checkpoints until killed.

Usage: ``python _checkpoint_writer.py DIR START N_KEYS``. Generation ``g`` (from ``START`` up)
sets every one of the ``N_KEYS`` keys to ``b"g:i"``, takes a checkpoint, then prints ``g``; so a
restored checkpoint is complete exactly when it holds all keys of a single generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

from statekit.backends.memory import MemoryStateBackend
from statekit.checkpoint import CheckpointCoordinator, CheckpointOptions


async def main(directory: str, start: int, n_keys: int) -> None:
    backend = MemoryStateBackend()
    options = CheckpointOptions(directory, max_checkpoints=3, min_interval=0)
    coordinator = CheckpointCoordinator(backend, 3600, options)
    generation = start
    while True:
        await backend.batch_put([(f"key:{i:06d}", f"{generation}:{i}".encode()) for i in range(n_keys)])
        await coordinator.create_checkpoint()
        # The parent stops reading after the first line: keep writing checkpoints until the kill.
        with contextlib.suppress(BrokenPipeError):
            print(generation, flush=True)
        generation += 1


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
