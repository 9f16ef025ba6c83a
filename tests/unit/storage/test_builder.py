"""StorageBuilder, create_storage_stack and env configuration (file side; S3 side in test_s3_storage)."""

from __future__ import annotations

from pathlib import Path

import pytest

import statekit.storage as storage_pkg
from statekit.errors import ConfigError
from statekit.storage import FileStorage, StorageBuilder, UnzipResourceDecorator, storage_from_env
from statekit.storage._deps import require


def test_builder_file_and_unzip(tmp_path: Path) -> None:
    plain = StorageBuilder().file_storage(tmp_path).build()
    assert isinstance(plain, FileStorage)
    stacked = StorageBuilder().file_storage(tmp_path).unzip(max_ratio=50).build()
    assert isinstance(stacked, UnzipResourceDecorator)
    assert stacked.max_ratio == 50
    with pytest.raises(ConfigError, match="file_storage"):
        StorageBuilder().build()


def test_env_file(tmp_path: Path) -> None:
    env = {"STATEKIT_STORAGE_TYPE": "file", "STATEKIT_STORAGE_FILE_PATH": str(tmp_path / "b")}
    built = storage_from_env(env)
    assert isinstance(built, UnzipResourceDecorator)  # unzip is on by default
    assert isinstance(built.base_storage, FileStorage)
    assert built.base_storage.output_dir == tmp_path / "b"
    off = storage_from_env({**env, "STATEKIT_STORAGE_USE_UNZIP": "false"})
    assert isinstance(off, FileStorage)
    assert isinstance(storage_from_env({}), UnzipResourceDecorator)


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"STATEKIT_STORAGE_TYPE": "ftp"}, "valid choices: file, s3"),
        ({"STATEKIT_STORAGE_USE_UNZIP": "maybe"}, "not a boolean"),
        ({"STATEKIT_STORAGE_TYPE": "s3"}, "STATEKIT_S3_BUCKET"),
        ({"STATEKIT_STORAGE_TYPE": "s3", "STATEKIT_S3_BUCKET": "b"}, "STATEKIT_SQS_QUEUE_URL"),
    ],
)
def test_env_errors(env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        storage_from_env(env)


def test_missing_extra_names_the_install_command() -> None:
    with pytest.raises(ConfigError, match=r"pip install statekit\[s3\]"):
        require("statekit_no_such_module_for_test")


def test_contract_names_are_exported() -> None:
    for name in [
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
    ]:
        assert name in storage_pkg.__all__
        assert hasattr(storage_pkg, name)
    assert storage_pkg.__all__ == sorted(storage_pkg.__all__)
