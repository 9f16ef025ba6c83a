"""``SyncRedisLock``: the blocking form of :class:`~statekit.locks.RedisLock` (``RedisLock(...).sync()``).

Same keys, scripts and guarantees as the async lock, on redis-py's blocking client, so an
acquire or a release is one round trip on the caller's thread (no event loop, no thread hop).
Renewal runs on a daemon thread every ``renew_every`` seconds; ``on_lost`` is called on that
thread (or on the caller's, when the caller is the one who notices).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

from statekit._fence import Fence
from statekit.errors import ConfigError, LockExistsError, LockLost, NotInitialized, StorageError
from statekit.locks._lease import _POLL_MAX, _POLL_START
from statekit.locks.redis import _RETRY_MAX, _RETRY_START, ACQUIRE_SCRIPT, EXTEND_SCRIPT, RELEASE_SCRIPT

if TYPE_CHECKING:
    from statekit.locks.redis import RedisLock

__all__ = ["SyncRedisLock"]

logger = logging.getLogger("statekit.locks")


class SyncRedisLock:
    """A :class:`RedisLock` for code that is not async (cron jobs, scripts).

    Example::

        with RedisLock("redis://localhost:6379/0", "nightly-report", ttl=60).sync() as fence:
            build_report(fence)

    Methods and properties mirror :class:`RedisLock` without ``await``: ``acquire``,
    ``release``, ``ensure_held``, ``held``, ``lost``, ``fence``, ``with lock as fence``.
    """

    def __init__(self, lock: RedisLock) -> None:
        self._lock = lock
        self._name = lock.name
        self._config = lock._config
        self._ttl = lock.ttl
        self._ttl_ms = lock._ttl_ms
        self._renew_every = lock.renew_every
        self._keys = list(lock.keys)
        self._on_lost = lock._on_lost
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._guard = threading.Lock()
        self._held = False
        self._lost = False
        self._reason: str | None = None
        self._fence: Fence | None = None
        self._token = ""
        self._deadline = 0.0
        self._renewed_at = 0.0
        # Serialises the scripts of renewal and release, so a renewal never races a release.
        self._io = threading.Lock()
        self._closing = threading.Event()
        self._renewer: threading.Thread | None = None

    # -- state ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The lock's name."""
        return self._name

    @property
    def held(self) -> bool:
        """True while this object holds a lease it has not lost (checked against the clock too)."""
        self._check_deadline()
        return self._held and not self._lost

    @property
    def lost(self) -> bool:
        """True once the current (or last) lease was lost; reset by the next acquire."""
        self._check_deadline()
        return self._lost

    @property
    def fence(self) -> Fence | None:
        """The fence of the current lease (kept after a loss), None before acquire and after release."""
        return self._fence

    # -- operations ----------------------------------------------------------------------

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> Fence:
        """Blocking form of :meth:`RedisLock.acquire`."""
        if self._held and not self._lost:
            raise LockExistsError(
                f"Redis lock {self._name!r} is already held by this object; release() it first"
            )
        if timeout is not None and (isinstance(timeout, bool) or not timeout >= 0):
            raise ConfigError(f"timeout must be None or seconds >= 0, got {timeout!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = _POLL_START
        while True:
            token = secrets.token_hex(16)
            sent = time.monotonic()
            reply = self._run("acquire", [token, self._ttl_ms], retry_unknown=True)
            if int(reply[0]) == 1:
                break
            if not blocking or (deadline is not None and time.monotonic() >= deadline):
                waited = "" if not blocking else f" for {timeout}s"
                raise LockExistsError(f"Redis lock {self._name!r} is held by another holder{waited}")
            time.sleep(delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, _POLL_MAX)
        fence = Fence(self._name, int(reply[1]))
        with self._guard:
            self._token, self._deadline, self._fence = token, sent + self._ttl, fence
            self._held, self._lost, self._reason = True, False, None
            self._renewed_at = sent
        if self._renewer is None:
            # One renewal thread per object, started once (a thread per lease would cost more
            # than the round trips): it wakes every renew_every and renews what is held.
            self._closing.clear()
            self._renewer = threading.Thread(
                target=self._renew, name=f"statekit-lock-{self._name}", daemon=True
            )
            self._renewer.start()
        return fence

    def release(self) -> None:
        """Blocking form of :meth:`RedisLock.release`: raises LockLost if the lease had been lost."""
        if not self._held:
            raise NotInitialized(f"Redis lock {self._name!r} is not held; acquire() it first")
        try:
            with self._io:  # no renewal runs between the release script and the state change
                if not self.lost:
                    try:
                        released = self._run("release", [self._token])
                    except StorageError:
                        if not self.lost:
                            raise
                    else:
                        if int(released) != 1:
                            self._declare_lost(
                                "its key no longer held this holder's token (expired or taken over)"
                            )
        finally:
            with self._guard:
                self._held = False
                self._fence = None
        if self._lost:
            raise LockLost(
                f"Redis lock {self._name!r} was lost before release: {self._reason}", name=self._name
            )

    def ensure_held(self) -> None:
        """Blocking form of :meth:`RedisLock.ensure_held`."""
        if self.held:
            with self._io:
                if self.held:
                    self._extend()
        if not self._held or self._lost:
            reason = self._reason or "it is not held (never acquired, or released)"
            raise LockLost(f"Redis lock {self._name!r} is not held: {reason}", name=self._name)

    def close(self) -> None:
        """Release if held (ignoring a loss) and close the connections."""
        if self._held:
            with contextlib.suppress(LockLost):
                self.release()
        self._stop_renewer()
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def __enter__(self) -> Fence:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc is None:
                self.release()
                return
            try:
                self.release()
            except (LockLost, StorageError, OSError) as err:
                exc.add_note(f"statekit: while leaving the Redis lock block: {err}")
        finally:
            self._stop_renewer()
            client, self._client = self._client, None
            if client is not None:
                client.close()

    def __repr__(self) -> str:
        state = "lost" if self._lost else "held" if self._held else "free"
        return f"SyncRedisLock({self._name!r}, {state}, fence={self._fence})"

    # -- internals -----------------------------------------------------------------------

    def _check_deadline(self) -> None:
        if self._held and not self._lost and time.monotonic() >= self._deadline:
            self._declare_lost("its lease ran out before a renewal reached the server")

    def _declare_lost(self, reason: str) -> None:
        with self._guard:
            if self._lost or not self._held:
                return
            self._lost, self._reason = True, reason
        logger.warning("statekit Redis lock %r lost: %s", self._name, reason)
        if self._on_lost is not None:
            try:
                self._on_lost(self)
            except Exception:
                logger.exception("on_lost callback of Redis lock %r raised", self._name)

    def _renew(self) -> None:
        closing, every = self._closing, self._renew_every
        pause = every
        while not closing.wait(pause):
            pause = every
            if not self.held:
                continue
            due = self._renewed_at + every - time.monotonic()
            if due > 0:
                pause = due
                continue
            with self._io:
                if self.held:
                    self._extend()

    def _extend(self) -> bool:
        delay = _RETRY_START
        while True:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                self._declare_lost("no renewal reached the server within the remaining lease")
                return False
            sent = time.monotonic()
            try:
                extended = self._run("extend", [self._token, self._ttl_ms])
            except StorageError as exc:
                logger.info(
                    "renewal of Redis lock %r failed (%s); retrying within the lease", self._name, exc
                )
                if self._closing.wait(min(delay, max(0.0, self._deadline - time.monotonic()))):
                    return False
                delay = min(delay * 2, _RETRY_MAX)
                continue
            if int(extended) != 1:
                self._declare_lost("its key no longer held this holder's token (expired or taken over)")
                return False
            with self._guard:
                if self._held and not self._lost and time.monotonic() < sent + self._ttl:
                    self._deadline = sent + self._ttl
                    self._renewed_at = sent
            self._check_deadline()
            return not self._lost

    def _stop_renewer(self) -> None:
        self._closing.set()
        renewer, self._renewer = self._renewer, None
        if renewer is not None and renewer is not threading.current_thread():
            renewer.join()

    def _redis(self) -> Any:
        if self._client is None:
            self._client = _make_sync_client(self._config, self._renew_every)
            register = self._client.register_script
            self._scripts = {
                "acquire": register(ACQUIRE_SCRIPT),
                "release": register(RELEASE_SCRIPT),
                "extend": register(EXTEND_SCRIPT),
            }
        return self._client

    def _run(self, script: str, args: list[Any], *, retry_unknown: bool = False) -> Any:
        from redis.exceptions import RedisError

        self._redis()
        keys = self._keys if script == "acquire" else self._keys[:1]
        attempts = 1 + (self._config.max_retries if retry_unknown else 0)
        for attempt in range(attempts):
            try:
                return self._scripts[script](keys=keys, args=args)
            except (RedisError, OSError) as exc:
                if attempt + 1 >= attempts:
                    raise StorageError(
                        f"Redis lock {self._name!r}: {script} failed: {type(exc).__name__}: {exc}",
                        backend_type="redis",
                        key=self._keys[0],
                    ) from None
                time.sleep(min(self._config.retry_base_delay * 2**attempt, self._config.retry_max_delay))
        raise AssertionError("unreachable")  # pragma: no cover


def _make_sync_client(config: Any, renew_every: float) -> Any:
    """redis-py's blocking client (or cluster client) from a RedisConfig, as the async lock builds its own."""
    from statekit.locks.redis import client_options

    nodes, common = client_options(config)
    import redis
    from redis.cluster import ClusterNode, RedisCluster

    # A renewal must not wait on one reply longer than a renewal period: the lease is checked
    # against the clock either way, but a stuck socket must not delay the next attempt.
    common["socket_timeout"] = min(common["socket_timeout"], max(renew_every, 0.05))
    if config.cluster_mode:
        startup = [ClusterNode(n["host"], n["port"]) for n in nodes]  # type: ignore[no-untyped-call]
        return RedisCluster(startup_nodes=startup, **common)
    return redis.Redis(**nodes[0], db=config.db or 0, **common)
