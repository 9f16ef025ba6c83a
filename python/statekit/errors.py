"""The statekit exception hierarchy.

Every error statekit raises derives from :class:`StateError`, so ``except StateError`` catches
all of them. Where it helps callers, an error also derives from the matching builtin::

    * StateError
      x ConfigError (also ValueError)        bad option, URL, env variable or TOML value
      x NotInitialized                       a store or backend used before set-up or after close()
      x KeyNotFound (also KeyError)          a key that had to exist does not
      x InvalidKey (also ValueError, TypeError) a key that is not a non-empty str (or UTF-8 bytes)
      x InvalidValue (also TypeError)        a backend value that is not bytes, an amount that is not an int
      x SerializationFailed                  a value the codec cannot encode; nothing was written
      x DeserializationFailed                stored bytes the codec cannot decode (or a bad signature)
      x StorageError                         the backend (disk, server) failed an operation
        x OutcomeUnknown                     a non-idempotent request may or may not have been applied
        x DecompressionBombError             a compressed resource expands beyond the allowed size or ratio
      x InvalidBidError (also ValueError)    a bundle ID that is not of the exact BID shape
      x CorruptData (also ValueError)        a framed buffer or file is truncated, altered or foreign
      x CheckpointFailed                     a checkpoint could not be written
      x RestoreFailed                        no checkpoint could be restored
      x LockExistsError                      a lock is held by someone else
      x LockLost                             a held lock was lost (expired, deleted, rewritten)
        x StaleFence                         a fenced write refused: a newer holder's fence wrote first

Messages say what failed, on which key or file, and what to do; the key or path is also kept
as an attribute (``err.key``, ``err.path``) so callers need not parse text.

This module must never import ``statekit._native``: the Rust core raises these classes and
imports this module lazily, so a cycle would break both.
"""

from __future__ import annotations

__all__ = [
    "CheckpointFailed",
    "ConfigError",
    "CorruptData",
    "DecompressionBombError",
    "DeserializationFailed",
    "InvalidBidError",
    "InvalidKey",
    "InvalidValue",
    "KeyNotFound",
    "LockExistsError",
    "LockLost",
    "NotInitialized",
    "OutcomeUnknown",
    "RestoreFailed",
    "SerializationFailed",
    "StaleFence",
    "StateError",
    "StorageError",
]


class StateError(Exception):
    """Root of every statekit error."""


class ConfigError(StateError, ValueError):
    """An option, URL, environment variable or TOML value is invalid.

    The message lists the valid choices where there is a fixed set of them.
    """


class NotInitialized(StateError):
    """A store or backend was used before it was set up, or after it was closed."""

    def __init__(self, message: str, *, backend_type: str | None = None) -> None:
        super().__init__(message)
        self.backend_type = backend_type


class KeyNotFound(StateError, KeyError):
    """A key that had to exist does not."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:
        return f"key {self.key!r} not found"


class InvalidKey(StateError, ValueError, TypeError):
    """A key is not a non-empty ``str`` (or ``bytes`` holding valid UTF-8), or it is reserved.

    Both a ``ValueError`` and a ``TypeError``, so ``except ValueError`` and ``except TypeError``
    written for either kind of mistake keep working.
    """

    def __init__(self, message: str, *, key: object = None) -> None:
        super().__init__(message)
        self.key = key


class InvalidValue(StateError, TypeError):
    """An argument that is not a key has the wrong type or range (a backend value that is not
    ``bytes``, a counter amount that is not a 64-bit ``int``). Nothing was written."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class SerializationFailed(StateError):
    """The codec could not encode a value. Nothing was written."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class DeserializationFailed(StateError):
    """Stored bytes could not be decoded, or their signature did not verify."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class StorageError(StateError):
    """The storage layer (a file, a database, a server) failed an operation."""

    def __init__(
        self,
        message: str,
        *,
        backend_type: str | None = None,
        key: str | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.backend_type = backend_type
        self.key = key
        self.path = path


class OutcomeUnknown(StorageError):
    """A request that is not safe to repeat may have reached the server, and no reply came.

    statekit never re-sends such a request blindly (an ``incr`` would count twice, a ``pop``
    would lose the value). Check the key's state before deciding what to do.
    """


class DecompressionBombError(StorageError):
    """A compressed resource expands beyond ``max_size`` bytes or ``max_ratio`` times its size.

    Nothing of that resource was stored.
    """

    def __init__(self, message: str, *, url: str | None = None, limit: str | None = None) -> None:
        super().__init__(message, key=url)
        self.url = url
        #: ``"max_size"`` or ``"max_ratio"``: which bound was exceeded.
        self.limit = limit


class InvalidBidError(StateError, ValueError):
    """A bundle ID is not of the exact BID shape; it was not used in any path or key."""

    def __init__(self, message: str, *, bid: object = None) -> None:
        super().__init__(message)
        self.bid = bid


class CorruptData(StateError, ValueError):
    """A framed buffer, snapshot or state file is truncated, altered or not ours."""


class CheckpointFailed(StateError):
    """A checkpoint could not be written; the previous checkpoints are untouched."""

    def __init__(self, message: str, *, checkpoint_id: str | None = None) -> None:
        super().__init__(message)
        self.checkpoint_id = checkpoint_id


class RestoreFailed(StateError):
    """No checkpoint could be restored (none exists, or none verifies)."""

    def __init__(self, message: str, *, checkpoint_id: str | None = None) -> None:
        super().__init__(message)
        self.checkpoint_id = checkpoint_id


class LockExistsError(StateError):
    """A lock is already held, by another process or by another lock object in this one."""

    def __init__(
        self, message: str, *, path: str | None = None, held: bool = True, holder_pid: int | None = None
    ) -> None:
        super().__init__(message)
        self.path = path
        #: True when someone else holds the lock; False when it could not be taken at all
        #: (lock file cannot be opened or written, no flock support).
        self.held = held
        #: The PID found in the lock file when held by another process (None if unreadable).
        self.holder_pid = holder_pid


class LockLost(StateError):
    """A lock this process held was lost: it expired, or its file or key was removed or rewritten.

    ``name`` is the lock's name (or file path) when known.
    """

    def __init__(self, message: str, *, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name


class StaleFence(LockLost):
    """A write carrying a fence token was refused: a newer token of the same lock already wrote there.

    Nothing of the refused call was written. It means another process acquired the lock after
    this fence was issued, so this holder has lost it (hence a :class:`LockLost`) and must stop.
    ``key`` is the first refused key, ``token`` the refused token, ``newer_token`` the token
    recorded on that key.
    """

    def __init__(
        self,
        message: str,
        *,
        name: str | None = None,
        key: str | None = None,
        token: int | None = None,
        newer_token: int | None = None,
    ) -> None:
        super().__init__(message, name=name)
        self.key = key
        self.token = token
        self.newer_token = newer_token
