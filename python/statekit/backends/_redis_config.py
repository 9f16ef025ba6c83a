"""``RedisConfig`` (with its builder and TOML loader) and ``RedisStats``.

This module imports nothing from redis-py, so ``from statekit.backends import RedisConfig``
works without the ``redis`` extra installed; only opening a :class:`RedisStateBackend` needs it.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final, Self
from urllib.parse import parse_qsl, unquote, urlsplit

from statekit._utils.durations import to_seconds
from statekit.backends.base import RESERVED_KEY_PREFIX, BackendStats, check_ttl
from statekit.errors import ConfigError

__all__ = ["RedisConfig", "RedisConfigBuilder", "RedisStats", "redact_url"]

#: A duration: seconds (int or float) or a timedelta.
Duration = float | int | timedelta

_SCHEMES: Final = ("redis", "rediss", "redis+cluster", "rediss+cluster")


def _seconds(value: Duration | None, name: str, *, allow_none: bool = False, allow_zero: bool = False) -> Any:
    if value is None and allow_none:
        return None
    return to_seconds(value, name, allow_zero=allow_zero)


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and repr)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    if password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = netloc[0].split(":", 1)[0]
    return parts._replace(netloc=f"{userinfo}:***@{netloc[1]}").geturl()


@dataclass(frozen=True, kw_only=True, slots=True)
class RedisConfig:
    """Everything :class:`~statekit.backends.RedisStateBackend` needs to connect.

    Durations are seconds (``float``); the builder and the constructor also accept ``timedelta``.
    ``url``/``urls``: ``redis://[user:password@]host:port/db``, ``rediss://`` for TLS; with
    ``cluster_mode`` the URLs are startup nodes of a Redis Cluster. ``password``, ``username``
    and ``db`` given here win over the URL's. The password never appears in ``repr``.
    ``key_prefix`` must not start with ``{statekit-``: statekit's own keys live there (an ACL user
    needs access to ``{statekit-*`` keys: the range indexes and the request records).
    """

    urls: tuple[str, ...] = ("redis://localhost:6379",)
    key_prefix: str = ""
    default_ttl: float | None = None
    min_connections: int = 1
    max_connections: int = 10
    connect_timeout: float = 5.0
    read_timeout: float = 3.0
    write_timeout: float = 3.0
    max_retries: int = 3
    retry_base_delay: float = 0.1
    retry_max_delay: float = 5.0
    cluster_mode: bool = False
    tls: bool = False
    tls_ca_certs: str | None = None
    tls_verify: bool = True
    pipeline_batch_size: int = 1000
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0

    def __post_init__(self) -> None:
        urls = (self.urls,) if isinstance(self.urls, str) else tuple(self.urls)
        if not urls or not all(isinstance(u, str) and u for u in urls):
            raise ConfigError("urls must be one or more non-empty redis:// URLs")
        for url in urls:
            scheme = urlsplit(url).scheme.lower()
            if scheme not in _SCHEMES:
                raise ConfigError(
                    f"unsupported Redis URL scheme {scheme!r} in {redact_url(url)}; "
                    f"valid schemes: {', '.join(s + '://' for s in _SCHEMES)}"
                )
        object.__setattr__(self, "urls", urls)
        if not isinstance(self.key_prefix, str):
            raise ConfigError(f"key_prefix must be a str, got {type(self.key_prefix).__name__}")
        if self.key_prefix.startswith(RESERVED_KEY_PREFIX):  # statekit's own keys live there
            raise ConfigError(
                f"key_prefix must not start with {RESERVED_KEY_PREFIX!r}, got {self.key_prefix!r}"
            )
        set_ = object.__setattr__
        set_(self, "default_ttl", check_ttl(self.default_ttl, name="default_ttl"))
        for name in ("connect_timeout", "read_timeout", "write_timeout", "retry_max_delay"):
            set_(self, name, _seconds(getattr(self, name), name))
        set_(self, "retry_base_delay", _seconds(self.retry_base_delay, "retry_base_delay", allow_zero=True))
        for name, low in (("min_connections", 0), ("max_connections", 1), ("max_retries", 0), ("db", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")
        if self.min_connections > self.max_connections:
            raise ConfigError(
                f"min_connections ({self.min_connections}) must not exceed max_connections "
                f"({self.max_connections})"
            )
        size = self.pipeline_batch_size
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 1_000_000:
            raise ConfigError(f"pipeline_batch_size must be an int in 1..1000000, got {size!r}")
        if self.cluster_mode and self.db != 0:
            raise ConfigError("Redis Cluster has only database 0; drop db or cluster_mode")

    def __repr__(self) -> str:
        shown = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "password":
                value = None if value is None else "***"
            elif f.name == "urls":
                value = tuple(redact_url(u) for u in value)
            shown.append(f"{f.name}={value!r}")
        return f"RedisConfig({', '.join(shown)})"

    # -- constructors --------------------------------------------------------------------

    @staticmethod
    def builder() -> RedisConfigBuilder:
        """A chainable builder: ``RedisConfig.builder().url(...).key_prefix(...).build()``."""
        return RedisConfigBuilder()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisConfig:
        """A config for ``url``; ``redis+cluster://`` turns on cluster mode, ``rediss://`` TLS."""
        scheme = urlsplit(url).scheme.lower()
        options.setdefault("cluster_mode", scheme.endswith("+cluster"))
        options.setdefault("tls", scheme.startswith("rediss"))
        return cls(urls=(url,), **options)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str], table: str = "state.redis") -> RedisConfig:
        """Read the ``[state.redis]`` table of a TOML file shaped like seed 004's ``config.toml``.

        Keys: ``url`` or ``urls``, ``key_prefix``, ``default_ttl_secs``, ``min_connections``,
        ``max_connections``, ``connect_timeout_secs``, ``read_timeout_secs``,
        ``write_timeout_secs``, ``max_retries``, ``retry_base_delay_ms``, ``retry_max_delay_secs``,
        ``cluster_mode``, ``tls_enabled``, ``pipeline_batch_size``, ``username``, ``password``, ``db``.
        """
        try:
            with open(path, "rb") as fh:
                document = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read Redis config {os.fspath(path)!r}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{os.fspath(path)!r} is not valid TOML: {exc}") from None
        node: Any = document
        for part in table.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"{os.fspath(path)!r} has no [{table}] table")
            node = node[part]
        return cls.from_mapping(node, source=os.fspath(path))

    @classmethod
    def from_mapping(cls, table: dict[str, Any], *, source: str = "mapping") -> RedisConfig:
        """Build from a ``[state.redis]``-shaped mapping (see :meth:`from_toml`)."""
        renames = {
            "default_ttl_secs": ("default_ttl", 1.0),
            "connect_timeout_secs": ("connect_timeout", 1.0),
            "read_timeout_secs": ("read_timeout", 1.0),
            "write_timeout_secs": ("write_timeout", 1.0),
            "retry_base_delay_ms": ("retry_base_delay", 0.001),
            "retry_max_delay_secs": ("retry_max_delay", 1.0),
            "tls_enabled": ("tls", None),
        }
        names = {f.name for f in dataclasses.fields(cls)}
        options: dict[str, Any] = {}
        for key, value in table.items():
            target, scale = renames.get(key, (key, None))
            if key == "url":
                target = "urls"
                value = (value,)
            elif key == "urls":
                if not isinstance(value, list):
                    raise ConfigError(f"{source}: urls must be a list of URLs")
                value = tuple(value)
            if target not in names:
                valid = sorted({"url", *renames, *(n for n in names if n not in _RENAMED_FIELDS)})
                raise ConfigError(
                    f"{source}: unknown Redis option {key!r}; valid options: {', '.join(valid)}"
                )
            if scale is not None and isinstance(value, int | float) and not isinstance(value, bool):
                value = value * scale
            options[target] = value
        return cls(**options)


_RENAMED_FIELDS: Final = frozenset(
    {"default_ttl", "connect_timeout", "read_timeout", "write_timeout", "retry_base_delay", "retry_max_delay"}
)


class RedisConfigBuilder:
    """Chainable builder of :class:`RedisConfig` (seed 004's API)."""

    def __init__(self) -> None:
        self._options: dict[str, Any] = {}

    def url(self, url: str) -> Self:
        """One server (or one cluster startup node); ``rediss://`` turns on TLS."""
        self._options["urls"] = (url,)
        if urlsplit(url).scheme.lower().startswith("rediss"):
            self._options.setdefault("tls", True)
        if urlsplit(url).scheme.lower().endswith("+cluster"):
            self._options.setdefault("cluster_mode", True)
        return self

    def urls(self, *urls: str) -> Self:
        """Several startup nodes (cluster mode)."""
        self._options["urls"] = tuple(urls)
        return self

    def key_prefix(self, prefix: str) -> Self:
        self._options["key_prefix"] = prefix
        return self

    def default_ttl(self, ttl: Duration | None) -> Self:
        self._options["default_ttl"] = ttl
        return self

    def pool_size(self, min_connections: int, max_connections: int) -> Self:
        self._options.update(min_connections=min_connections, max_connections=max_connections)
        return self

    def timeouts(self, connect: Duration, read: Duration, write: Duration) -> Self:
        self._options.update(connect_timeout=connect, read_timeout=read, write_timeout=write)
        return self

    def retries(self, max_retries: int, base_delay: Duration, max_delay: Duration) -> Self:
        self._options.update(max_retries=max_retries, retry_base_delay=base_delay, retry_max_delay=max_delay)
        return self

    def cluster_mode(self, enabled: bool = True) -> Self:
        self._options["cluster_mode"] = enabled
        return self

    def tls(self, enabled: bool = True, *, ca_certs: str | None = None, verify: bool = True) -> Self:
        self._options.update(tls=enabled, tls_ca_certs=ca_certs, tls_verify=verify)
        return self

    def pipeline_batch_size(self, size: int) -> Self:
        self._options["pipeline_batch_size"] = size
        return self

    def auth(self, password: str | None, username: str | None = None) -> Self:
        self._options.update(password=password, username=username)
        return self

    def db(self, db: int) -> Self:
        self._options["db"] = db
        return self

    def build(self) -> RedisConfig:
        """The validated config; raises ConfigError on an invalid option."""
        return RedisConfig(**self._options)


@dataclass(slots=True)
class RedisStats(BackendStats):
    """:class:`BackendStats` plus seed 004's Redis counters and the server's identity.

    ``redis_version`` and ``used_memory_human`` are the values of the last ``INFO`` the backend
    ran (on connect, ``health_check()``, ``memory_usage()`` or ``refresh_stats()``).
    """

    pipeline_count: int = 0
    retry_count: int = 0
    avg_latency_us: int = 0
    active_connections: int = 0
    redis_version: str | None = None
    used_memory_human: str | None = None


def parse_redis_url(url: str) -> dict[str, Any]:
    """Host, port, username, password, db and TLS of one ``redis://`` URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or 6379
    except ValueError:
        raise ConfigError(f"invalid port in Redis URL {redact_url(url)}") from None
    path = parts.path.strip("/")
    query = dict(parse_qsl(parts.query))
    db_text = path or query.get("db", "0")
    try:
        db = int(db_text)
    except ValueError:
        raise ConfigError(f"invalid database {db_text!r} in Redis URL {redact_url(url)}") from None
    return {
        "host": parts.hostname or "localhost",
        "port": port,
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password is not None else None,
        "db": db,
        "tls": scheme.startswith("rediss"),
    }
