"""The public import paths of ARCHITECTURE.md that exist so far, and tidy ``__all__`` lists.

Paths of later issues join CONTRACT as they land.
"""

from __future__ import annotations

import importlib
import inspect

import pytest

CONTRACT: dict[str, list[str]] = {
    "statekit": [
        "create_store",
        "get_store_context",
        "configure_global_store",
        "get_global_store",
        "KeyValueStore",
    ],
    "statekit.errors": [
        "StateError",
        "NotInitialized",
        "KeyNotFound",
        "SerializationFailed",
        "DeserializationFailed",
        "StorageError",
        "CheckpointFailed",
        "RestoreFailed",
        "LockExistsError",
        "LockLost",
        "StaleFence",
        "ConfigError",
    ],
    "statekit.backends": [
        "StateBackend",
        "MemoryStateBackend",
        "SqliteStateBackend",
        "RedisStateBackend",
        "RedisConfig",
        "BackendStats",
    ],
    "statekit.persistence": [
        "PersistenceManager",
        "RetryManager",
        "StateTracker",
        "create_persistence_manager",
        "create_retry_manager",
        "create_state_tracker",
    ],
    "statekit.runs": [
        "read_state",
        "write_state",
        "update_contiguous_run_state",
        "update_attempted_run_state",
        "get_incremental_start_run",
        "parse_run_records_from_file",
        "append_to_failure_log",
        "write_failure_log",
    ],
    "statekit.locks": ["FileLock", "RedisLock", "PostgresLock", "Fence", "LockExistsError"],
    "statekit.checkpoint": ["CheckpointCoordinator", "CheckpointOptions", "CheckpointStats"],
    "statekit.storage": [
        "Storage",
        "BundleStorageContext",
        "BundleRef",
        "Recipe",
        "new_bid",
        "FileStorage",
        "PipelineStorage",
        "SqsPublisher",
        "UnzipResourceDecorator",
        "StorageBuilder",
        "create_storage_stack",
    ],
    "statekit.metrics": ["StatekitCollector"],
}


@pytest.mark.parametrize("module_name", sorted(CONTRACT))
def test_contract_names_import_and_are_documented(module_name: str) -> None:
    module = importlib.import_module(module_name)
    for name in CONTRACT[module_name]:
        obj = getattr(module, name)
        assert name in module.__all__, f"{module_name}.{name} missing from __all__"
        assert inspect.getdoc(obj), f"{module_name}.{name} has no docstring"


@pytest.mark.parametrize("module_name", sorted(CONTRACT))
def test_all_is_sorted_and_resolves(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert list(module.__all__) == sorted(module.__all__)
    for name in module.__all__:
        assert hasattr(module, name), f"{module_name}.__all__ lists {name}, which does not exist"


def test_every_error_is_a_state_error() -> None:
    errors = importlib.import_module("statekit.errors")
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.StateError)


def test_stale_fence_is_a_lock_lost() -> None:
    from statekit.errors import LockExistsError, LockLost, StaleFence
    from statekit.locks import LockExistsError as FromLocks

    assert issubclass(StaleFence, LockLost)
    assert FromLocks is LockExistsError


def test_native_module_is_private_and_stubbed() -> None:
    import statekit

    assert "_native" not in statekit.__all__
    assert statekit.__version__
