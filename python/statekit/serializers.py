"""Codecs that turn Python values into the bytes a backend stores, and back.

* ``json`` (the default): msgspec's JSON. Human-readable, safe to read from anywhere.
  Tuples come back as lists; datetimes as ISO strings.
* ``msgpack``: msgspec's MessagePack. Compact and fast; ``bytes`` survive the round trip.
* ``pickle``: any picklable Python object (datetimes, sets, custom classes). **Opt-in only.**
  Unpickling runs code chosen by whoever wrote the bytes: a pickle store is only as safe as
  everyone who can write to its backend. Give a ``signing_key`` and every payload is signed
  with HMAC-SHA256 and verified *before* it is unpickled, so bytes written by anyone without
  the key raise :class:`~statekit.errors.DeserializationFailed` and are never unpickled.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
from typing import Any, Final, Protocol

import msgspec

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

# Signed pickle payloads start with this tag, then the 32-byte HMAC, then the pickle.
_SIGNED_PICKLE_TAG: Final = b"SKP1"
_DIGEST_SIZE: Final = 32


class Serializer(Protocol):
    """Encodes values to bytes and back. ``key`` is only used in error messages."""

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
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
            raise SerializationFailed(
                f"cannot encode the value for key {key!r} as {self._format} ({exc}){self._encode_hint}",
                key=key,
            ) from exc
        return data

    def decode(self, data: bytes, *, key: str | None = None) -> Any:
        try:
            return self._decoder.decode(data)
        except msgspec.DecodeError as exc:
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


class MsgpackSerializer(_MsgspecSerializer):
    """MessagePack through msgspec; ``bytes`` values round-trip."""

    name = "msgpack"
    _format = "MessagePack"

    def __init__(self) -> None:
        super().__init__(msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder())


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
        digest = hmac.new(self._signing_key, payload, hashlib.sha256).digest()
        return _SIGNED_PICKLE_TAG + digest + payload

    def decode(self, data: bytes, *, key: str | None = None) -> Any:
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
        expected = hmac.new(self._signing_key, payload, hashlib.sha256).digest()
        if not hmac.compare_digest(digest, expected):
            raise DeserializationFailed(
                f"signature of the value for key {key!r} does not verify (tampered, or written "
                "with another signing_key); refusing to unpickle it",
                key=key,
            )
        return payload


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
