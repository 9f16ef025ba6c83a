"""The one place that knows every backend: ``create_store`` and the global store.

Option precedence, highest first: explicit keyword arguments > options in the URL (its
query string) > ``STATEKIT_STORE_*`` environment variables (read only when
``configure_global_store()`` is called without arguments) > defaults.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlsplit

from statekit.backends.base import StateBackend
from statekit.backends.memory import MemoryStateBackend
from statekit.backends.sqlite import SqliteStateBackend
from statekit.errors import ConfigError
from statekit.store import KeyValueStore

__all__ = [
    "STORE_TYPES",
    "configure_global_store",
    "create_store",
    "get_global_store",
    "get_store_context",
    "options_from_env",
    "parse_store_url",
    "reset_global_store",
]

DEFAULT_SQLITE_PATH: Final = os.path.join(".statekit", "state.db")
ENV_PREFIX: Final = "STATEKIT_STORE_"

# Options handled by KeyValueStore itself, valid with every backend.
_STORE_OPTIONS: Final = frozenset(
    {"serializer", "key_prefix", "default_ttl", "signing_key", "allow_unsigned_pickle"}
)
_BACKEND_OPTIONS: Final[dict[str, frozenset[str]]] = {
    "memory": frozenset({"cleanup_interval", "clock"}),
    "sqlite": frozenset({"path", "durability", "timeout", "cleanup_interval", "clock"}),
    "redis": frozenset(
        {
            # seed 001's connection options
            "host",
            "port",
            "password",
            "db",
            "ssl",
            "timeout",
            "max_connections",
            # RedisConfig's (seed 004)
            "url",
            "urls",
            "username",
            "min_connections",
            "connect_timeout",
            "read_timeout",
            "write_timeout",
            "max_retries",
            "retry_base_delay",
            "retry_max_delay",
            "cluster_mode",
            "tls",
            "tls_ca_certs",
            "tls_verify",
            "pipeline_batch_size",
            "range_index",
            "index_shards",
            "index_layout",
            "config",
        }
    ),
}
STORE_TYPES: Final = tuple(_BACKEND_OPTIONS)

# How to read option values that arrive as strings (URL query, environment).
_FLOAT_OPTIONS: Final = frozenset(
    {
        "default_ttl",
        "timeout",
        "cleanup_interval",
        "connect_timeout",
        "read_timeout",
        "write_timeout",
        "retry_base_delay",
        "retry_max_delay",
    }
)
_INT_OPTIONS: Final = frozenset(
    {"port", "db", "max_connections", "min_connections", "max_retries", "pipeline_batch_size", "index_shards"}
)
_BOOL_OPTIONS: Final = frozenset(
    {"ssl", "tls", "tls_verify", "cluster_mode", "range_index", "allow_unsigned_pickle"}
)
_URL_SCHEMES: Final = {
    "memory": "memory",
    "sqlite": "sqlite",
    "redis": "redis",
    "rediss": "redis",
    "redis+cluster": "redis",
    "rediss+cluster": "redis",
}


def create_store(store_type: str = "memory", **options: Any) -> KeyValueStore:
    """Create a :class:`KeyValueStore`.

    ``store_type`` is a backend name (``"memory"``, ``"sqlite"``, ``"redis"``) or a URL:
    ``memory://``, ``sqlite:///abs/path.db``, ``sqlite://relative/path.db``,
    ``redis://[user:password@]host:6379/0``, ``rediss://...`` (TLS), ``redis+cluster://host:port``
    (options may follow as a query string: ``sqlite:///s.db?durability=normal&key_prefix=job:``).

    Options valid for every backend: ``serializer`` (``"json"``, ``"msgpack"``, ``"pickle"``),
    ``key_prefix``, ``default_ttl`` (seconds or timedelta), ``signing_key`` (pickle only).
    Memory: ``cleanup_interval``, ``clock``. SQLite: ``path`` (default ``.statekit/state.db``),
    ``durability`` (``"full"``/``"normal"``), ``timeout``, ``cleanup_interval``, ``clock``.
    Redis: ``host``, ``port``, ``password``, ``username``, ``db``, ``ssl``/``tls``, ``timeout``,
    ``max_connections`` and every other :class:`~statekit.backends.RedisConfig` field (or
    ``config=RedisConfig(...)``). ``serializer="pickle"`` on a persistent or shared backend
    (SQLite, Redis) needs ``signing_key`` or ``allow_unsigned_pickle=True``.

    Raises ConfigError (listing the valid choices) for an unknown type, serializer or option.
    """
    if not isinstance(store_type, str):
        raise ConfigError(f"store_type must be a str, got {type(store_type).__name__}")
    if "://" in store_type:
        store_type, url_options = parse_store_url(store_type)
        options = {**url_options, **options}
    store_type = store_type.lower()
    allowed = _BACKEND_OPTIONS.get(store_type)
    if allowed is None:
        raise ConfigError(f"unknown store type {store_type!r}; valid choices: {', '.join(STORE_TYPES)}")
    unknown = set(options) - allowed - _STORE_OPTIONS
    if unknown:
        valid = ", ".join(sorted(allowed | _STORE_OPTIONS))
        raise ConfigError(
            f"unknown option(s) {', '.join(sorted(unknown))} for store type {store_type!r}; "
            f"valid options: {valid}"
        )
    store_options = {k: options.pop(k) for k in list(options) if k in _STORE_OPTIONS}
    backend = _BACKEND_BUILDERS[store_type](options)
    return KeyValueStore(backend, **store_options)


def _memory_backend(options: dict[str, Any]) -> StateBackend:
    return MemoryStateBackend(**options)


def _sqlite_backend(options: dict[str, Any]) -> StateBackend:
    path = options.pop("path", None) or DEFAULT_SQLITE_PATH
    return SqliteStateBackend(path, **options)


def _redis_backend(options: dict[str, Any]) -> StateBackend:
    from statekit.backends import RedisConfig, load_redis_backend

    backend_class = load_redis_backend()
    config = options.pop("config", None)
    if config is not None:
        if not isinstance(config, RedisConfig):
            raise ConfigError(f"config must be a RedisConfig, got {type(config).__name__}")
        if options:
            raise ConfigError(
                f"pass either config= or Redis options, not both (got {', '.join(sorted(options))})"
            )
        return backend_class(config)
    # seed 001's names onto RedisConfig's.
    host = options.pop("host", None)
    port = options.pop("port", None)
    ssl = options.pop("ssl", None)
    if ssl is not None:
        options.setdefault("tls", ssl)
    timeout = options.pop("timeout", None)
    if timeout is not None:
        for name in ("connect_timeout", "read_timeout", "write_timeout"):
            options.setdefault(name, timeout)
    url = options.pop("url", None)
    if url is None and "urls" not in options:
        scheme = "rediss" if options.get("tls") else "redis"
        url = f"{scheme}://{host or 'localhost'}:{port or 6379}"
    elif host is not None or port is not None:
        raise ConfigError("give the server either as a URL or as host=/port=, not both")
    if url is not None:
        if isinstance(url, str) and "urls" not in options:
            return backend_class(RedisConfig.from_url(url, **options))
        options["urls"] = (url,)
    return backend_class(RedisConfig(**options))


_BACKEND_BUILDERS: Final[dict[str, Callable[[dict[str, Any]], StateBackend]]] = {
    "memory": _memory_backend,
    "sqlite": _sqlite_backend,
    "redis": _redis_backend,
}


def parse_store_url(url: str) -> tuple[str, dict[str, Any]]:
    """Split a store URL into its backend name and options."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    store_type = _URL_SCHEMES.get(scheme)
    if store_type is None:
        schemes = ", ".join(f"{s}://" for s in _URL_SCHEMES)
        raise ConfigError(
            f"unsupported store URL scheme {scheme!r} in {_redact(url)}; valid schemes: {schemes}"
        )
    options: dict[str, Any] = {k: _coerce(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)}
    if store_type == "sqlite":
        # sqlite:///abs/path.db -> netloc "", path "/abs/path.db"; sqlite://rel.db -> netloc "rel.db".
        path = unquote(parts.netloc + parts.path)
        if not path:
            raise ConfigError(
                f"sqlite URL {url!r} has no path; write sqlite:///abs/path.db or sqlite://rel.db"
            )
        options["path"] = path
    elif store_type == "redis":
        if not parts.hostname:
            raise ConfigError(f"Redis URL {_redact(url)} has no host; write redis://host:6379/0")
        options["url"] = parts._replace(query="", fragment="").geturl()
    elif parts.netloc or parts.path.strip("/"):
        raise ConfigError(f"memory URL takes no host or path, got {url!r}; write memory://")
    return store_type, options


def options_from_env(environ: Mapping[str, str] | None = None) -> tuple[str, dict[str, Any]]:
    """Store type (or URL) and options from ``STATEKIT_STORE_*`` environment variables.

    ``STATEKIT_STORE_URL`` wins over ``STATEKIT_STORE_TYPE``; then ``_PATH``, ``_KEY_PREFIX``,
    ``_SERIALIZER``, ``_DEFAULT_TTL`` and, for Redis, ``_HOST``, ``_PORT``, ``_PASSWORD``,
    ``_DB``, ``_SSL`` and every :class:`~statekit.backends.RedisConfig` option under its own
    name in upper case (``STATEKIT_STORE_MAX_CONNECTIONS``, ``STATEKIT_STORE_RANGE_INDEX``, ...).
    """
    env = os.environ if environ is None else environ
    store_type = env.get(ENV_PREFIX + "URL") or env.get(ENV_PREFIX + "TYPE") or "memory"
    options: dict[str, Any] = {}
    names = ["path", "key_prefix", "serializer", "default_ttl", "host", "port", "password", "db", "ssl"]
    names += sorted(_BACKEND_OPTIONS["redis"] - {"url", "urls", "config", *names})
    for name in names:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            options[name] = _coerce(name, raw)
    return store_type, options


def _has_unit(raw: str) -> bool:
    return raw.strip()[-1:].isalpha()


def _coerce(name: str, raw: str) -> Any:
    try:
        if name in _FLOAT_OPTIONS:
            # Seconds as a number, or a duration string ("90s", "2h") that to_seconds reads later.
            return raw.strip() if _has_unit(raw) else float(raw)
        if name in _INT_OPTIONS:
            return int(raw)
    except ValueError:
        raise ConfigError(f"option {name} must be a number, got {raw!r}") from None
    if name in _BOOL_OPTIONS:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"option {name} must be true or false, got {raw!r}")
    return raw


def _redact(url: str) -> str:
    """The URL with any password replaced, for error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


@asynccontextmanager
async def get_store_context(store_type: str = "memory", **options: Any) -> AsyncIterator[KeyValueStore]:
    """``async with get_store_context("memory") as store:`` — a store closed on exit."""
    store = create_store(store_type, **options)
    try:
        yield store
    finally:
        await store.close()


_global_store: KeyValueStore | None = None


def configure_global_store(store_type: str | None = None, **options: Any) -> KeyValueStore:
    """Create the process-wide store returned by :func:`get_global_store`.

    With no arguments the configuration comes from ``STATEKIT_STORE_*`` environment variables
    (see :func:`options_from_env`); otherwise from the arguments alone, as for
    :func:`create_store`. A previously configured global store is replaced, not closed.
    """
    global _global_store
    if store_type is None and not options:
        store_type, options = options_from_env()
    _global_store = create_store(store_type or "memory", **options)
    return _global_store


def get_global_store() -> KeyValueStore:
    """The process-wide store, configured from the environment on first use if needed."""
    if _global_store is None:
        return configure_global_store()
    return _global_store


def reset_global_store() -> None:
    """Forget the global store (it is not closed). For tests and re-configuration."""
    global _global_store
    _global_store = None
