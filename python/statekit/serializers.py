"""Codecs that turn Python values into the bytes a backend stores, and back.

* ``json`` (the default): msgspec's JSON. Human-readable, safe to read from anywhere.
  Tuples come back as lists; datetimes, dates, times and UUIDs as ISO strings; bytes as
  base64 strings. NaN and infinities have no JSON form: they raise SerializationFailed
  (msgspec alone would write ``null`` and the value would come back as None).
* ``msgpack``: msgspec's MessagePack. Compact and fast; ``bytes`` survive the round trip.

Counters (``KeyValueStore.incr``) are stored as ASCII decimal whatever the codec, so every
codec reads such bytes back as that ``int``: JSON naturally, MessagePack because its encoder
never produces ASCII decimal (the ints 48..57, whose one-byte MessagePack form is the digit
``"0"``..``"9"``, are written in their equally valid two-byte form), pickle because a
protocol 2+ pickle never starts with a digit.
* ``pickle``: any picklable Python object (datetimes, sets, custom classes). **Opt-in only.**
  Unpickling runs code chosen by whoever wrote the bytes: a pickle store is only as safe as
  everyone who can write to its backend. Give a ``signing_key`` and every payload is signed
  with HMAC-SHA256 and verified *before* it is unpickled, so bytes written by anyone without
  the key raise :class:`~statekit.errors.DeserializationFailed` and are never unpickled.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import pickle
from collections.abc import Sequence
from operator import itemgetter
from typing import Any, Final, Protocol

import msgspec

from statekit.backends.base import COUNTER_PATTERN
from statekit.errors import ConfigError, DeserializationFailed, SerializationFailed

__all__ = [
    "SERIALIZER_NAMES",
    "JsonSerializer",
    "MsgpackSerializer",
    "PickleSerializer",
    "Serializer",
    "make_serializer",
]

SERIALIZER_NAMES: Final = ("json", "msgpack", "pickle")

# Signed pickle payloads start with this tag, then the 32-byte HMAC, then the pickle. The HMAC
# covers the key as well (SKP2; SKP1 signed the payload alone, so a signed value copied to
# another key verified there too, and is refused now).
_SIGNED_PICKLE_TAG: Final = b"SKP2"
_DIGEST_SIZE: Final = 32


class Serializer(Protocol):
    """Encodes values to bytes and back.

    ``key`` is the full key in the backend (store prefix included): codecs use it in error
    messages, and the signed pickle codec binds each payload to it.
    """

    name: str

    def encode(self, value: Any, *, key: str | None = None) -> bytes: ...

    def decode(self, data: bytes, *, key: str | None = None) -> Any: ...


class _MsgspecSerializer:
    """A msgspec encoder/decoder pair; subclasses name the format."""

    name: str
    _format: str
    _encode_hint = ""

    def __init__(self, encoder: Any, decoder: Any) -> None:
        self._encoder = encoder
        self._decoder = decoder

    def encode(self, value: Any, *, key: str | None = None) -> bytes:
        try:
            data: bytes = self._encoder.encode(value)
        except (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError) as exc:
            raise SerializationFailed(
                f"cannot encode the value for key {key!r} as {self._format} ({exc}){self._encode_hint}",
                key=key,
            ) from exc
        return data

    def decode(self, data: bytes, *, key: str | None = None) -> Any:
        if COUNTER_PATTERN.fullmatch(data):
            return int(data)  # a counter written by incr (see the module docstring)
        try:
            return self._decoder.decode(data)
        except (msgspec.DecodeError, RecursionError) as exc:  # deep nesting raises RecursionError
            raise DeserializationFailed(
                f"stored bytes for key {key!r} are not valid {self._format} ({exc}); was the data "
                "written with another serializer?",
                key=key,
            ) from exc


class JsonSerializer(_MsgspecSerializer):
    """JSON through msgspec (the default codec)."""

    name = "json"
    _format = "JSON"
    _encode_hint = (
        "; store JSON-compatible data (dict, list, str, int, float, bool, None) "
        "or choose serializer='msgpack' or 'pickle'"
    )

    def __init__(self) -> None:
        super().__init__(msgspec.json.Encoder(), msgspec.json.Decoder())

    def encode(self, value: Any, *, key: str | None = None) -> bytes:
        data = super().encode(value, key=key)
        # msgspec writes NaN and infinities as null. Only output holding a null can hide one,
        # so only then is the value walked.
        if b"null" in data and _has_non_finite_float(value):
            raise SerializationFailed(
                f"cannot encode the value for key {key!r} as JSON: it holds NaN or an infinity, which "
                "JSON cannot represent (it would come back as None); use serializer='msgpack' or 'pickle'",
                key=key,
            )
        return data

    def encode_many(self, pairs: Sequence[tuple[str, Any]]) -> list[tuple[str, bytes]]:
        """``(key, encode(value, key=key))`` for every pair, with the same checks and errors.

        One comprehension calling msgspec directly instead of two Python calls per value (a
        batch's encoding was a third of ``put_many`` for small values); any failure, and any
        ``null`` that may hide a NaN, is left to :meth:`encode`, value by value.
        """
        encode = self._encoder.encode
        try:
            encoded = [(key, encode(value)) for key, value in pairs]
        except (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError):
            return [(key, self.encode(value, key=key)) for key, value in pairs]
        # Joined by newlines, which no "null" spans: found only when one of the texts holds it.
        if b"null" in b"\n".join(map(itemgetter(1), encoded)):
            return [(key, self.encode(value, key=key)) for key, value in pairs]
        return encoded


class MsgpackSerializer(_MsgspecSerializer):
    """MessagePack through msgspec; ``bytes`` values round-trip."""

    name = "msgpack"
    _format = "MessagePack"

    def __init__(self) -> None:
        super().__init__(msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder())

    def encode(self, value: Any, *, key: str | None = None) -> bytes:
        data = super().encode(value, key=key)
        if len(data) == 1 and 0x30 <= data[0] <= 0x39:
            # The ints 48..57 as one-byte fixints are the ASCII digits "0".."9", i.e. what a
            # counter holding 0..9 looks like; write them as uint8 (0xcc, n) instead.
            return b"\xcc" + data
        return data


class PickleSerializer:
    """Pickle, optionally signed with HMAC-SHA256.

    Warning: unpickling data runs code chosen by whoever wrote it. Without ``signing_key``,
    anyone who can write to the backend can run code in every process that reads from it.
    With ``signing_key``, payloads are verified before unpickling and unsigned or tampered
    payloads raise :class:`~statekit.errors.DeserializationFailed`.
    """

    name = "pickle"

    def __init__(self, signing_key: bytes | str | None = None) -> None:
        if isinstance(signing_key, str):
            signing_key = signing_key.encode()
        if signing_key is not None and len(signing_key) < 16:
            raise ConfigError("signing_key must be at least 16 bytes long")
        self._signing_key = signing_key

    @property
    def signed(self) -> bool:
        """Whether payloads are signed and verified."""
        return self._signing_key is not None

    def encode(self, value: Any, *, key: str | None = None) -> bytes:
        try:
            payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError, ValueError) as exc:
            raise SerializationFailed(f"cannot pickle the value for key {key!r} ({exc})", key=key) from exc
        if self._signing_key is None:
            return payload
        return _SIGNED_PICKLE_TAG + self._digest(key, payload) + payload

    def decode(self, data: bytes, *, key: str | None = None) -> Any:
        if COUNTER_PATTERN.fullmatch(data):
            return int(data)  # a counter written by incr, never a pickle (see the module docstring)
        if self._signing_key is not None:
            data = self._verified_payload(data, key)
        try:
            return pickle.loads(data)  # noqa: S301 - opt-in codec; signed when a key is configured
        except Exception as exc:  # unpickling can raise almost anything
            raise DeserializationFailed(
                f"cannot unpickle the value for key {key!r} ({exc})", key=key
            ) from exc

    def _verified_payload(self, data: bytes, key: str | None) -> bytes:
        assert self._signing_key is not None
        header_size = len(_SIGNED_PICKLE_TAG) + _DIGEST_SIZE
        if len(data) < header_size or not data.startswith(_SIGNED_PICKLE_TAG):
            raise DeserializationFailed(
                f"value for key {key!r} is not a signed pickle payload; refusing to unpickle it",
                key=key,
            )
        digest = data[len(_SIGNED_PICKLE_TAG) : header_size]
        payload = data[header_size:]
        if not hmac.compare_digest(digest, self._digest(key, payload)):
            raise DeserializationFailed(
                f"signature of the value for key {key!r} does not verify (tampered, copied from another "
                "key, or written with another signing_key); refusing to unpickle it",
                key=key,
            )
        return payload

    def _digest(self, key: str | None, payload: bytes) -> bytes:
        """HMAC-SHA256 over the key (length-prefixed, so key and payload cannot trade bytes) and payload."""
        assert self._signing_key is not None
        key_bytes = (key or "").encode("utf-8", "surrogatepass")
        mac = hmac.new(self._signing_key, len(key_bytes).to_bytes(4, "big"), hashlib.sha256)
        mac.update(key_bytes)
        mac.update(payload)
        return mac.digest()


def _has_non_finite_float(value: Any, depth: int = 0) -> bool:
    """Whether a float NaN or infinity hides anywhere inside ``value`` (dicts, lists, tuples)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if depth > 200:  # deeper than msgspec itself encodes
        return False
    if isinstance(value, dict):
        return any(_has_non_finite_float(v, depth + 1) for v in value.values())
    if isinstance(value, list | tuple | set | frozenset):
        return any(_has_non_finite_float(v, depth + 1) for v in value)
    return False


def make_serializer(name: str, *, signing_key: bytes | str | None = None) -> Serializer:
    """Return the serializer called ``name``; raise ConfigError listing the choices otherwise."""
    if name == "json":
        serializer: Serializer = JsonSerializer()
    elif name == "msgpack":
        serializer = MsgpackSerializer()
    elif name == "pickle":
        return PickleSerializer(signing_key)
    else:
        raise ConfigError(f"unknown serializer {name!r}; valid choices: {', '.join(SERIALIZER_NAMES)}")
    if signing_key is not None:
        raise ConfigError("signing_key only applies to serializer='pickle'")
    return serializer
