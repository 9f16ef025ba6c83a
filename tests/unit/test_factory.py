"""create_store, URLs, environment configuration and the global store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import statekit
from statekit import configure_global_store, create_store, get_global_store, get_store_context
from statekit._factory import options_from_env, reset_global_store
from statekit.backends import MemoryStateBackend, SqliteStateBackend
from statekit.errors import ConfigError


@pytest.fixture(autouse=True)
def _fresh_global_store() -> Iterator[None]:
    reset_global_store()
    yield
    reset_global_store()


async def test_memory_by_name_and_url() -> None:
    for spec in ("memory", "memory://", "MEMORY"):
        store = create_store(spec)
        assert isinstance(store.backend, MemoryStateBackend)
        await store.close()


async def test_sqlite_urls_absolute_and_relative(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absolute = create_store(f"sqlite://{tmp_path}/abs.db")
    assert isinstance(absolute.backend, SqliteStateBackend)
    assert absolute.backend.path == f"{tmp_path}/abs.db"
    await absolute.put("k", 1)
    await absolute.close()
    monkeypatch.chdir(tmp_path)
    relative = create_store("sqlite://rel/dir/state.db?durability=normal&key_prefix=job:")
    assert isinstance(relative.backend, SqliteStateBackend)
    assert relative.backend.path == "rel/dir/state.db"
    assert relative.backend.durability == "normal"
    assert relative.key_prefix == "job:"
    await relative.put("k", 2)
    await relative.close()
    assert (tmp_path / "rel" / "dir" / "state.db").exists()


async def test_sqlite_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = create_store("sqlite")
    await store.put("k", 1)
    await store.close()
    assert (tmp_path / ".statekit" / "state.db").exists()


async def test_explicit_option_beats_url(tmp_path: Path) -> None:
    store = create_store(f"sqlite://{tmp_path}/s.db?key_prefix=url:", key_prefix="explicit:")
    assert store.key_prefix == "explicit:"
    await store.close()


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda: create_store("mongodb"), "valid choices: memory, sqlite"),
        (lambda: create_store("memory", serializer="yaml"), "valid choices: json, msgpack, pickle"),
        (lambda: create_store("memory", hostname="x"), "valid options:"),
        (lambda: create_store("memory", path="/tmp/x.db"), "unknown option(s) path"),
        (lambda: create_store("ftp://host/x"), "valid schemes"),
        (lambda: create_store("sqlite://"), "has no path"),
        (lambda: create_store("memory://host"), "takes no host"),
        (lambda: create_store("sqlite:///x.db?default_ttl=soon"), "must be a duration"),
        (lambda: create_store("memory", default_ttl=-5), "positive"),
        (
            lambda: create_store("sqlite", path=":memory:", durability="paranoid"),
            "valid choices: full, normal",
        ),
    ],
)
def test_bad_configuration_is_config_error_listing_choices(call: object, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        call()  # type: ignore[operator]
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_password_in_url_is_redacted_from_errors() -> None:
    with pytest.raises(ConfigError) as info:
        create_store("nosuch://user:s3cret@host:1/0")
    assert "s3cret" not in str(info.value)


async def test_get_store_context_closes_store() -> None:
    async with get_store_context("memory", serializer="json") as store:
        await store.put("key", "value")
        assert await store.get("key") == "value"
    assert await store.health_check() is False


def test_options_from_env() -> None:
    env = {
        "STATEKIT_STORE_TYPE": "sqlite",
        "STATEKIT_STORE_PATH": "/tmp/x.db",
        "STATEKIT_STORE_KEY_PREFIX": "app:",
        "STATEKIT_STORE_SERIALIZER": "msgpack",
        "STATEKIT_STORE_DEFAULT_TTL": "60",
        "STATEKIT_STORE_PORT": "6380",
        "STATEKIT_STORE_SSL": "true",
    }
    kind, options = options_from_env(env)
    assert kind == "sqlite"
    assert options == {
        "path": "/tmp/x.db",
        "key_prefix": "app:",
        "serializer": "msgpack",
        "default_ttl": 60.0,
        "port": 6380,
        "ssl": True,
    }
    assert (
        options_from_env({"STATEKIT_STORE_URL": "memory://", "STATEKIT_STORE_TYPE": "sqlite"})[0]
        == "memory://"
    )
    with pytest.raises(ConfigError, match="true or false"):
        options_from_env({"STATEKIT_STORE_SSL": "maybe"})


async def test_configure_global_store_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATEKIT_STORE_URL", f"sqlite://{tmp_path}/global.db")
    monkeypatch.setenv("STATEKIT_STORE_KEY_PREFIX", "g:")
    monkeypatch.setenv("STATEKIT_STORE_DEFAULT_TTL", "120")
    store = configure_global_store()
    assert get_global_store() is store
    assert isinstance(store.backend, SqliteStateBackend)
    assert store.key_prefix == "g:"
    assert store.default_ttl == 120.0
    await store.close()


async def test_global_store_defaults_to_memory_and_explicit_configuration_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("URL", "TYPE", "PATH", "KEY_PREFIX", "SERIALIZER", "DEFAULT_TTL"):
        monkeypatch.delenv(f"STATEKIT_STORE_{name}", raising=False)
    default = get_global_store()
    assert isinstance(default.backend, MemoryStateBackend)
    monkeypatch.setenv("STATEKIT_STORE_TYPE", "sqlite")
    explicit = configure_global_store("memory", key_prefix="x:")
    assert isinstance(explicit.backend, MemoryStateBackend)
    assert get_global_store() is explicit
    await default.close()
    await explicit.close()


def test_version_is_exposed() -> None:
    assert statekit.__version__.count(".") == 2
