"""The Rust core of statekit (``statekit._native``).

Record-batch framing, RESP pipeline encoding and Redis Cluster slots, SHA-256 of buffers and
files, and run watermarks. Heavy work runs with the GIL released. Corrupt input raises
:class:`statekit.errors.CorruptData`; bad arguments raise ``TypeError`` / ``ValueError``; file
errors raise ``OSError`` subclasses (``FileNotFoundError``, ...) carrying the path.
"""

import os
from collections.abc import Iterable

from typing_extensions import Buffer

__all__ = [
    "__version__",
    "decode_records",
    "encode_commands",
    "encode_records",
    "hash_slot",
    "hash_slots",
    "last_contiguous_run",
    "max_attempted_run",
    "run_gaps",
    "sha256",
    "sha256_file",
]

__version__: str

# --- framing -------------------------------------------------------------------------------

def encode_records(records: Iterable[tuple[bytes, bytes, float | None]]) -> bytes:
    """Encode ``(key, value, expires_at)`` records into one checksummed record batch.

    ``expires_at`` is an absolute unix time (seconds) or ``None``. Records may also be given
    as 3-item lists. Layout (little-endian): a 28-byte header (magic ``b"SKRB"``, version 1,
    flags 0, reserved u16 0, record count u64, body length u64, CRC-32 of the body u32), then
    per record ``key_len u32, value_len u32, has_expiry u8, [expires_at f64], key, value``.

    Raises:
        TypeError: a record is not a 3-tuple of ``bytes``, ``bytes``, ``float | None``.
        ValueError: a key or value is 4 GiB or larger.
    """

def decode_records(data: Buffer) -> list[tuple[bytes, bytes, float | None]]:
    """Decode a batch made by :func:`encode_records` (from ``bytes``, ``bytearray``, ``memoryview``...).

    Raises:
        statekit.errors.CorruptData: wrong magic, unknown version, non-zero flags, truncated
            header or body, trailing bytes, checksum mismatch or record count mismatch.
        TypeError: ``data`` is not bytes-like.
    """

# --- RESP ----------------------------------------------------------------------------------

def encode_commands(commands: Iterable[Iterable[bytes | str | int | float]]) -> bytes:
    """Encode commands as concatenated RESP arrays of bulk strings (a redis pipeline).

    ``bytes`` are sent as is, ``str`` as UTF-8, ``int`` in decimal (any size), ``float`` as
    its ``repr``. Example: ``[["SET", "k", "v"]]`` gives
    ``b"*3\\r\\n$3\\r\\nSET\\r\\n$1\\r\\nk\\r\\n$1\\r\\nv\\r\\n"``.

    Raises:
        TypeError: an argument is a ``bool`` or of another type (the message names the
            command and argument index), or a command is not a sequence.
        ValueError: a command is empty.
    """

def hash_slot(key: bytes | str) -> int:
    """The Redis Cluster slot (0..16383) of ``key``.

    CRC16-XMODEM of the key (``str`` as UTF-8), or of its hash tag -- the bytes between the
    first ``{`` and the next ``}`` when non-empty -- modulo 16384.

    Raises:
        TypeError: ``key`` is not ``bytes`` or ``str``.
    """

def hash_slots(keys: Iterable[bytes | str]) -> list[int]:
    """:func:`hash_slot` of every key, in order.

    Raises:
        TypeError: a key is not ``bytes`` or ``str``, or ``keys`` is a bare string.
    """

# --- checksum ------------------------------------------------------------------------------

def sha256(data: Buffer) -> str:
    """Lowercase hex SHA-256 of a bytes-like object; equals ``hashlib.sha256(data).hexdigest()``.

    Raises:
        TypeError: ``data`` is not bytes-like.
    """

def sha256_file(path: str | os.PathLike[str]) -> str:
    """Lowercase hex SHA-256 of a file's contents, read in 1 MiB chunks with the GIL released.

    Raises:
        FileNotFoundError: the file does not exist (``.filename`` is the path).
        OSError: any other error opening or reading the file.
    """

# --- runs ----------------------------------------------------------------------------------

def last_contiguous_run(last: int, successful: Iterable[int]) -> int:
    """Advance ``last`` while ``last + 1`` is in ``successful``; return the final value.

    ``successful`` may be in any order and hold duplicates; numbers ``<= last`` are ignored.
    ``last_contiguous_run(103, [104, 106, 107]) == 104``.

    Raises:
        TypeError: an item is not an ``int``.
        ValueError: an item is outside the 64-bit range.
        OverflowError: ``last`` is outside the 64-bit range.
    """

def max_attempted_run(current: int, attempted: Iterable[int]) -> int:
    """``max(current, *attempted)``: the high-water mark, never below ``current``.

    Raises:
        TypeError: an item is not an ``int``.
        ValueError: an item is outside the 64-bit range.
        OverflowError: ``current`` is outside the 64-bit range.
    """

def run_gaps(last: int, successful: Iterable[int], bound: int) -> list[int]:
    """The runs in ``last + 1 ..= bound`` missing from ``successful``, ascending.

    Empty if ``bound <= last``.

    Raises:
        ValueError: ``bound - last`` exceeds 10**9, or an item is outside the 64-bit range.
        TypeError: an item is not an ``int``.
        OverflowError: ``last`` or ``bound`` is outside the 64-bit range.
    """
