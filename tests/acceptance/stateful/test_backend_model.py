"""Stateful tests: drive a backend with random operations and compare it with a dict model.

``make_backend_machine(factory)`` builds a hypothesis ``RuleBasedStateMachine`` for any
backend factory ``(tmp_dir, clock) -> StateBackend``; the clock is a FakeClock the machine
advances, so TTL expiry is part of the model. Persistent backends are also closed and
reopened mid-run to check nothing committed is lost.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from statekit.backends.base import RESERVED_KEY_PREFIX
from statekit.errors import ConfigError, InvalidKey, KeyNotFound, StorageError
from tests.conftest import BACKEND_FACTORIES, BackendFactory, FakeClock

T = TypeVar("T")

# A tiny alphabet makes collisions, shared prefixes and code-point-order edge cases likely.
keys = st.text(alphabet="ab:é\U0010ffff", min_size=1, max_size=4)
values = st.binary(max_size=16)
ttls = st.none() | st.sampled_from([1.0, 2.5, 10.0])
limits = st.none() | st.integers(min_value=0, max_value=5)
# What a caller may wrongly pass as a key: each must be refused before anything is written.
bad_keys = st.sampled_from(["", b"", b"\xff", "a\udc80", 7, None, RESERVED_KEY_PREFIX + "index:}:lex"])
bad_ttls = st.sampled_from([0, -1.0, float("nan"), float("inf"), 1e300])
#: How far a reported TTL may be from the model's (float rounding; real time passing on Redis).
TTL_TOLERANCE = 0.05
COUNTER = re.compile(rb"0|-?[1-9][0-9]{0,18}")


def as_counter(raw: bytes) -> int | None:
    """The model's reading of a stored counter (ASCII decimal, signed 64-bit), None if it is not one."""
    if COUNTER.fullmatch(raw) and -(2**63) <= int(raw) < 2**63:
        return int(raw)
    return None


def make_backend_machine(factory: BackendFactory) -> type[RuleBasedStateMachine]:
    class BackendMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.loop = asyncio.new_event_loop()
            self.tmp = Path(tempfile.mkdtemp(prefix="statekit-model-"))
            self.clock = FakeClock()
            self.backend = factory(self.tmp, self.clock)
            # key -> (value, expires_at or None)
            self.model: dict[str, tuple[bytes, float | None]] = {}

        def run(self, coro: Coroutine[Any, Any, T]) -> T:
            return self.loop.run_until_complete(coro)

        def teardown(self) -> None:
            self.run(self.backend.close())
            self.loop.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

        # -- model helpers -----------------------------------------------------------
        def live(self, key: str) -> bytes | None:
            entry = self.model.get(key)
            if entry is None:
                return None
            value, expires_at = entry
            if expires_at is not None and expires_at <= self.clock():
                del self.model[key]
                return None
            return value

        def live_items(self) -> list[tuple[str, bytes]]:
            out = []
            for key in sorted(self.model):
                value = self.live(key)
                if value is not None:
                    out.append((key, value))
            return out

        def expiry(self, ttl: float | None) -> float | None:
            return None if ttl is None else self.clock() + ttl

        # -- rules -------------------------------------------------------------------
        @rule(key=keys, value=values, ttl=ttls)
        def put(self, key: str, value: bytes, ttl: float | None) -> None:
            self.run(self.backend.put(key, value, ttl))
            self.model[key] = (value, self.expiry(ttl))

        @rule(key=keys)
        def get(self, key: str) -> None:
            assert self.run(self.backend.get(key)) == self.live(key)

        @rule(key=keys)
        def exists(self, key: str) -> None:
            assert self.run(self.backend.exists(key)) == (self.live(key) is not None)

        @rule(key=keys)
        def delete(self, key: str) -> None:
            expected = self.live(key) is not None
            self.model.pop(key, None)
            assert self.run(self.backend.delete(key)) == expected

        @rule(pairs=st.lists(st.tuples(keys, values), max_size=6), ttl=ttls)
        def batch_put(self, pairs: list[tuple[str, bytes]], ttl: float | None) -> None:
            self.run(self.backend.batch_put(pairs, ttl))
            for key, value in pairs:
                self.model[key] = (value, self.expiry(ttl))

        @rule(batch=st.lists(keys, max_size=6))
        def batch_get(self, batch: list[str]) -> None:
            assert self.run(self.backend.batch_get(batch)) == [self.live(k) for k in batch]

        @rule(batch=st.lists(keys, max_size=6))
        def batch_delete(self, batch: list[str]) -> None:
            expected = sum(1 for k in set(batch) if self.live(k) is not None)
            for k in batch:
                self.model.pop(k, None)
            assert self.run(self.backend.batch_delete(batch)) == expected

        @rule(start=st.text(alphabet="ab:é\U0010ffff", max_size=3), end=st.none() | keys, limit=limits)
        def range(self, start: str, end: str | None, limit: int | None) -> None:
            items = self.live_items()
            if end is None:
                expected = [(k, v) for k, v in items if k.startswith(start)]
            else:
                expected = [(k, v) for k, v in items if start <= k < end]
            if limit is not None:
                expected = expected[:limit]
            assert self.run(self.backend.range(start, end, limit)) == expected

        @rule(prefix=st.text(alphabet="ab:é\U0010ffff", max_size=3))
        def list_keys(self, prefix: str) -> None:
            expected = [k for k, _ in self.live_items() if k.startswith(prefix)]
            assert self.run(self.backend.list_keys(prefix)) == expected

        @rule(key=keys, value=values, ttl=ttls)
        def set_if_not_exists(self, key: str, value: bytes, ttl: float | None) -> None:
            expected = self.live(key) is None
            assert self.run(self.backend.set_if_not_exists(key, value, ttl)) == expected
            if expected:
                self.model[key] = (value, self.expiry(ttl))

        @rule(key=keys, expect_current=st.booleans(), other=st.none() | values, value=values, ttl=ttls)
        def compare_and_set(
            self, key: str, expect_current: bool, other: bytes | None, value: bytes, ttl: float | None
        ) -> None:
            current = self.live(key)
            expected = current if expect_current else other
            stored = self.run(self.backend.compare_and_set(key, expected, value, ttl))
            assert stored == (expected == current)
            if stored:
                self.model[key] = (value, self.expiry(ttl))

        @rule(key=keys)
        def get_and_delete(self, key: str) -> None:
            expected = self.live(key)
            self.model.pop(key, None)
            assert self.run(self.backend.get_and_delete(key)) == expected

        @rule(key=keys)
        def ttl(self, key: str) -> None:
            if self.live(key) is None:
                try:
                    self.run(self.backend.ttl(key))
                except KeyNotFound:
                    return
                raise AssertionError(f"ttl of missing key {key!r} did not raise KeyNotFound")
            expires_at = self.model[key][1]
            left = self.run(self.backend.ttl(key))
            if expires_at is None:
                assert left is None
            else:
                assert left is not None
                assert abs(left - (expires_at - self.clock())) < TTL_TOLERANCE

        @rule(key=keys, ttl=st.sampled_from([1.0, 2.5, 10.0]))
        def expire(self, key: str, ttl: float) -> None:
            live = self.live(key)
            assert self.run(self.backend.expire(key, ttl)) == (live is not None)
            if live is not None:
                self.model[key] = (live, self.expiry(ttl))

        @rule(key=keys)
        def persist(self, key: str) -> None:
            live = self.live(key)
            expected = live is not None and self.model[key][1] is not None
            assert self.run(self.backend.persist(key)) == expected
            if live is not None:
                self.model[key] = (live, None)

        @rule(key=keys, ttl=ttls)
        def touch(self, key: str, ttl: float | None) -> None:
            live = self.live(key)
            assert self.run(self.backend.touch(key, ttl)) == (live is not None)
            if live is not None:
                self.model[key] = (live, self.expiry(ttl))

        @rule(prefix=st.text(alphabet="ab:é\U0010ffff", max_size=2))
        def clear(self, prefix: str) -> None:
            expected = sum(1 for k, _ in self.live_items() if k.startswith(prefix))
            for key in [k for k in self.model if k.startswith(prefix)]:
                del self.model[key]
            assert self.run(self.backend.clear(prefix)) == expected

        @rule(start=st.text(alphabet="ab:é\U0010ffff", max_size=3), end=st.none() | keys, limit=limits)
        def scan_range(self, start: str, end: str | None, limit: int | None) -> None:
            expected = [(k, v) for k, v in self.live_items() if start <= k and (end is None or k < end)]
            if limit is not None:
                expected = expected[:limit]
            assert self.run(self.backend.scan_range(start, end, limit)) == expected

        @rule(key=keys, amount=st.integers(min_value=-5, max_value=5), ttl=ttls)
        def incr_by(self, key: str, amount: int, ttl: float | None) -> None:
            current = self.live(key)
            if current is None:
                assert self.run(self.backend.incr_by(key, amount, ttl)) == amount
                self.model[key] = (str(amount).encode(), self.expiry(ttl))
                return
            number = as_counter(current)
            if number is None:
                try:
                    self.run(self.backend.incr_by(key, amount, ttl))
                except StorageError:
                    return
                raise AssertionError(f"incr_by on non-integer {current!r} did not raise")
            assert self.run(self.backend.incr_by(key, amount, ttl)) == number + amount
            self.model[key] = (str(number + amount).encode(), self.model[key][1])

        @rule(pairs=st.lists(st.tuples(keys, values), max_size=4), bad=bad_keys, at=st.integers(0, 4))
        def batch_put_with_one_bad_key(self, pairs: list[tuple[Any, bytes]], bad: Any, at: int) -> None:
            batch = [*pairs[:at], (bad, b"x"), *pairs[at:]]
            try:
                self.run(self.backend.batch_put(batch))
            except InvalidKey:
                return  # and nothing of the batch was written: the other rules check the model
            raise AssertionError(f"batch_put accepted the key {bad!r}")

        @rule(key=keys, value=values, ttl=bad_ttls)
        def put_with_bad_ttl(self, key: str, value: bytes, ttl: float) -> None:
            try:
                self.run(self.backend.put(key, value, ttl))
            except ConfigError:
                return
            raise AssertionError(f"put accepted ttl={ttl!r}")

        @rule(key=keys, value=values)
        def put_bytes_key(self, key: str, value: bytes) -> None:
            self.run(self.backend.put(key.encode(), value))  # the same key as the str
            self.model[key] = (value, None)

        @rule(seconds=st.sampled_from([0.5, 1.0, 2.5, 7.0]))
        def advance_clock(self, seconds: float) -> None:
            self.clock.advance(seconds)

        @precondition(lambda self: self.backend.persistent)
        @rule()
        def reopen(self) -> None:
            self.run(self.backend.close())
            self.backend = factory(self.tmp, self.clock)

        @invariant()
        def key_counts_match(self) -> None:
            stats = self.run(self.backend.stats())
            items = self.live_items()
            assert stats.total_keys == len(items)
            assert stats.expiring_keys == sum(1 for k, _ in items if self.model[k][1] is not None)

    return BackendMachine


_SETTINGS = settings(
    max_examples=40,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

TestMemoryBackendModel = make_backend_machine(BACKEND_FACTORIES["memory"]).TestCase
TestMemoryBackendModel.settings = _SETTINGS
TestSqliteBackendModel = make_backend_machine(BACKEND_FACTORIES["sqlite"]).TestCase
TestSqliteBackendModel.settings = _SETTINGS
