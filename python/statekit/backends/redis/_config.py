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

__all__ = ["RedisConfig", "RedisConfigBuilder", "RedisNode", "RedisStats", "redact_url"]

#: A duration: seconds (int or float) or a timedelta.
Duration = float | int | timedelta

_SCHEMES: Final = ("redis", "rediss", "redis+cluster", "rediss+cluster", "unix")
#: Index shards of a cluster when ``index_shards`` is not given: enough to spread the index traffic
#: over the masters of any usual cluster (each master owns a contiguous range of slots).
DEFAULT_CLUSTER_SHARDS: Final = 16
MAX_SHARDS: Final = 1024
#: The range index layouts (see _index.py).
INDEX_LAYOUTS: Final = ("flat", "paged")
#: TOML names of seed 004's config.toml, still accepted: (option, scale to seconds).
_TOML_ALIASES: Final = {
    "default_ttl_secs": ("default_ttl", 1.0),
    "connect_timeout_secs": ("connect_timeout", 1.0),
    "read_timeout_secs": ("read_timeout", 1.0),
    "write_timeout_secs": ("write_timeout", 1.0),
    "retry_base_delay_ms": ("retry_base_delay", 0.001),
    "retry_max_delay_secs": ("retry_max_delay", 1.0),
    "tls_enabled": ("tls", None),
}


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


@dataclass(frozen=True, slots=True)
class RedisNode:
    """One server address parsed from a URL: ``host``/``port``, or ``path`` for ``unix://``."""

    host: str
    port: int
    path: str | None = None

    @property
    def name(self) -> str:
        return self.path if self.path is not None else f"{self.host}:{self.port}"


@dataclass(frozen=True, kw_only=True, slots=True)
class RedisConfig:
    """Everything :class:`~statekit.backends.RedisStateBackend` needs to connect.

    One source of truth: each URL is parsed once, here, and the fields hold the resolved values.
    An explicit field wins over the URL (``db=0`` over ``/3``, ``tls=False`` over ``rediss://``,
    ``password=`` over ``:pw@``); a field left unset (None) takes the URL's value, then its
    default. Durations are seconds (``float``; ``timedelta`` accepted). The password never
    appears in ``repr``.

    Options (one name everywhere: keyword, URL query ``?max_connections=4``, environment
    ``STATEKIT_STORE_MAX_CONNECTIONS`` through :func:`statekit.create_store`, and the keys of the
    ``[state.redis]`` TOML table read by :meth:`from_toml`):

    * ``url`` / ``urls``: ``redis://[user:password@]host:port/db``, ``rediss://`` (TLS),
      ``redis+cluster://`` (cluster startup nodes), ``unix:///path/redis.sock?db=1``.
    * ``key_prefix``; ``default_ttl`` (seconds; TOML alias ``default_ttl_secs``).
    * ``min_connections`` (opened on the first operation, per node), ``max_connections`` (the most
      server connections per node, single operations and batches together).
    * ``connect_timeout``, ``read_timeout``, ``write_timeout`` (TOML aliases ``*_secs``),
      ``max_retries``, ``retry_base_delay`` (alias ``retry_base_delay_ms``), ``retry_max_delay``
      (alias ``retry_max_delay_secs``): one policy for every operation.
    * ``cluster_mode``, ``tls`` (alias ``tls_enabled``), ``tls_ca_certs``, ``tls_verify``, ``username``,
      ``password``, ``db``.
    * ``pipeline_batch_size``: keys per pipelined chunk.
    * ``range_index``: keep the sorted-set index that ``range``/``list_keys`` read (default True).
      False: no index writes and no index memory; ``range`` then raises ConfigError.
    * ``index_shards``: how many sorted sets hold the index (default 1 on one server, 16 on a
      cluster, spread over the slot ranges so that every master holds some). Every client of one
      ``key_prefix`` must agree on ``range_index`` and ``index_shards``: the first client records
      them on the server and later ones with other values are refused (ConfigError).
    * ``index_layout``: ``"flat"`` (default: one sorted set member per key, ~126 B each) or
      ``"paged"`` (pages of at most 120 members in small listpack-encoded sorted sets under a
      directory of page boundaries, per shard: ~25 B per key; batch writes pay a Lua script per
      shard and chunk). Recorded with the shards: an index created flat (every index of earlier
      versions) stays flat, and a client asking for the other layout is refused (ConfigError).

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
    cluster_mode: bool | None = None
    tls: bool | None = None
    tls_ca_certs: str | None = None
    tls_verify: bool = True
    pipeline_batch_size: int = 1000
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int | None = None
    range_index: bool = True
    index_shards: int | None = None
    index_layout: str = "flat"
    #: The servers of ``urls``, parsed once (not an option).
    nodes: tuple[RedisNode, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        urls = (self.urls,) if isinstance(self.urls, str) else tuple(self.urls)
        if not urls or not all(isinstance(u, str) and u for u in urls):
            raise ConfigError("urls must be one or more non-empty redis:// URLs")
        set_ = object.__setattr__
        set_(self, "urls", urls)
        parsed = [parse_redis_url(url) for url in urls]
        first = parsed[0]
        # Explicit fields win over the URL; the URL over the defaults.
        for name, default in (("username", None), ("password", None), ("db", 0), ("tls", False)):
            if getattr(self, name) is None:
                set_(self, name, first[name] if first[name] is not None else default)
        if self.cluster_mode is None:
            set_(self, "cluster_mode", first["cluster"])
        set_(self, "nodes", tuple(RedisNode(p["host"], p["port"], p["path"]) for p in parsed))
        if not isinstance(self.key_prefix, str):
            raise ConfigError(f"key_prefix must be a str, got {type(self.key_prefix).__name__}")
        if self.key_prefix.startswith(RESERVED_KEY_PREFIX):  # statekit's own keys live there
            raise ConfigError(
                f"key_prefix must not start with {RESERVED_KEY_PREFIX!r}, got {self.key_prefix!r}"
            )
        set_(self, "default_ttl", check_ttl(self.default_ttl, name="default_ttl"))
        for name in ("connect_timeout", "read_timeout", "write_timeout", "retry_max_delay"):
            set_(self, name, _seconds(getattr(self, name), name))
        set_(self, "retry_base_delay", _seconds(self.retry_base_delay, "retry_base_delay", allow_zero=True))
        for name in ("cluster_mode", "tls", "tls_verify", "range_index"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.index_shards is None:
            set_(self, "index_shards", DEFAULT_CLUSTER_SHARDS if self.cluster_mode else 1)
        for name, low in (
            ("min_connections", 0),
            ("max_connections", 1),
            ("max_retries", 0),
            ("db", 0),
            ("index_shards", 1),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")
        if self.index_layout not in INDEX_LAYOUTS:
            raise ConfigError(
                f"index_layout must be one of {', '.join(map(repr, INDEX_LAYOUTS))}, "
                f"got {self.index_layout!r}"
            )
        if self.index_shards > MAX_SHARDS:  # type: ignore[operator]
            raise ConfigError(f"index_shards must be at most {MAX_SHARDS}, got {self.index_shards}")
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
        if self.cluster_mode and any(n.path is not None for n in self.nodes):
            raise ConfigError("a Redis Cluster is reached over TCP, not unix:// sockets")

    def __repr__(self) -> str:
        shown = []
        for f in dataclasses.fields(self):
            if not f.init:
                continue
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
        """A config for ``url``; its query string may carry any option (``?key_prefix=app:&db=2``).

        ``redis+cluster://`` turns on cluster mode, ``rediss://`` TLS; keyword options win over
        the URL's.
        """
        parts = urlsplit(url)
        from_query = {
            name: coerce_option(name, text)
            for name, text in parse_qsl(parts.query, keep_blank_values=True)
            if name != "db"  # parse_redis_url reads it, with the path
        }
        return cls(urls=(url,), **{**from_query, **options})

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str], table: str = "state.redis") -> RedisConfig:
        """Read the ``[state.redis]`` table of a TOML file shaped like seed 004's ``config.toml``.

        Keys: ``url`` or ``urls``, ``key_prefix``, ``default_ttl_secs``, ``min_connections``,
        ``max_connections``, ``connect_timeout_secs``, ``read_timeout_secs``,
        ``write_timeout_secs``, ``max_retries``, ``retry_base_delay_ms``, ``retry_max_delay_secs``,
        ``cluster_mode``, ``tls_enabled``, ``pipeline_batch_size``, ``username``, ``password``, ``db``,
        and the other option names (``range_index``, ``index_shards``, ``index_layout``, ...).
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
        """Build from a ``[state.redis]``-shaped mapping: option names, plus seed 004's aliases."""
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        options: dict[str, Any] = {}
        for key, value in table.items():
            target, scale = _TOML_ALIASES.get(key, (key, None))
            if key == "url":
                target = "urls"
                value = (value,)
            elif key == "urls":
                if not isinstance(value, list):
                    raise ConfigError(f"{source}: urls must be a list of URLs")
                value = tuple(value)
            if target not in names:
                valid = sorted({"url", *_TOML_ALIASES, *names})
                raise ConfigError(
                    f"{source}: unknown Redis option {key!r}; valid options: {', '.join(valid)}"
                )
            if scale is not None and isinstance(value, int | float) and not isinstance(value, bool):
                value = value * scale
            options[target] = value
        return cls(**options)


def coerce_option(name: str, text: str) -> Any:
    """An option given as text (URL query, environment) as the type of its RedisConfig field."""
    kind = _OPTION_KINDS.get(name)
    if kind is None:
        valid = ", ".join(sorted(_OPTION_KINDS))
        raise ConfigError(f"unknown Redis option {name!r}; valid options: {valid}")
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {text!r}")
    if kind is str:
        return text
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {text!r}") from None


_OPTION_KINDS: Final[dict[str, type]] = {
    **dict.fromkeys(("key_prefix", "tls_ca_certs", "username", "password", "index_layout"), str),
    **dict.fromkeys(
        ("default_ttl", "connect_timeout", "read_timeout", "write_timeout", "retry_base_delay"), float
    ),
    "retry_max_delay": float,
    **dict.fromkeys(
        ("min_connections", "max_connections", "max_retries", "pipeline_batch_size", "db", "index_shards"),
        int,
    ),
    **dict.fromkeys(("cluster_mode", "tls", "tls_verify", "range_index"), bool),
}


class RedisConfigBuilder:
    """Chainable builder of :class:`RedisConfig` (seed 004's API)."""

    def __init__(self) -> None:
        self._options: dict[str, Any] = {}

    def url(self, url: str) -> Self:
        """One server (or one cluster startup node); ``rediss://`` turns on TLS."""
        self._options["urls"] = (url,)
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
    ran (``health_check()``, ``memory_usage()`` or ``await stats()``).
    """

    pipeline_count: int = 0
    retry_count: int = 0
    avg_latency_us: int = 0
    active_connections: int = 0
    redis_version: str | None = None
    used_memory_human: str | None = None


def parse_redis_url(url: str) -> dict[str, Any]:
    """Host, port (or unix socket path), username, password, db, TLS and cluster of one URL.

    ``username``/``password``/``db`` are None when the URL does not give them.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise ConfigError(
            f"unsupported Redis URL scheme {scheme!r} in {redact_url(url)}; "
            f"valid schemes: {', '.join(s + '://' for s in _SCHEMES)}"
        )
    try:
        port = parts.port or 6379
    except ValueError:
        raise ConfigError(f"invalid port in Redis URL {redact_url(url)}") from None
    query = dict(parse_qsl(parts.query))
    path: str | None = None
    if scheme == "unix":
        path = unquote(parts.path)
        if not path:
            raise ConfigError(f"unix:// Redis URL {redact_url(url)} has no socket path")
        db_text = query.get("db")
    else:
        db_text = parts.path.strip("/") or query.get("db")
    db: int | None = None
    if db_text is not None:
        try:
            db = int(db_text)
        except ValueError:
            raise ConfigError(f"invalid database {db_text!r} in Redis URL {redact_url(url)}") from None
    return {
        "host": parts.hostname or "localhost",
        "port": port,
        "path": path,
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password is not None else None,
        "db": db,
        "tls": scheme.startswith("rediss"),
        "cluster": scheme.endswith("+cluster"),
    }
