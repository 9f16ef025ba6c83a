"""The Rust core of statekit (``statekit._native``).

Record-batch framing, RESP pipeline encoding and Redis Cluster slots, SHA-256 of buffers and
files, checkpoint snapshot files, and run watermarks. Heavy work runs with the GIL released.
Corrupt input raises :class:`statekit.errors.CorruptData`; bad arguments raise ``TypeError`` /
``ValueError``; file errors raise ``OSError`` subclasses (``FileNotFoundError``, ...) carrying
the path.
"""

import os
from collections.abc import Iterable
from typing import final

from typing_extensions import Buffer

__all__ = [
    "Sha256Hasher",
    "SnapshotInfo",
    "__version__",
    "decode_records",
    "encode_commands",
    "encode_msets_by_slot",
    "encode_records",
    "hash_slot",
    "hash_slots",
    "last_contiguous_run",
    "max_attempted_run",
    "run_gaps",
    "sha256",
    "sha256_file",
    "snapshot_info",
    "snapshot_load",
    "snapshot_read",
    "snapshot_verify",
    "snapshot_write",
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

def encode_msets_by_slot(
    keys: list[str] | list[bytes], values: list[bytes], chunk: int
) -> tuple[list[int], list[int], bytes]:
    """Group ``(key, value)`` pairs by hash slot and encode one ``MSET`` per slot and chunk of
    at most ``chunk`` pairs, slots ascending, pairs in their order within a slot.

    Returns ``(slots, ends, payload)``: command ``i`` is ``payload[ends[i - 1]:ends[i]]``
    (from 0 for the first) and belongs to slot ``slots[i]``. The encoding runs without the GIL.

    Raises:
        TypeError: a key is not ``str``/``bytes`` or a value not ``bytes``.
        ValueError: ``keys`` and ``values`` differ in length.
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

@final
class Sha256Hasher:
    """Incremental SHA-256: feed chunks with :meth:`update`, read :meth:`hexdigest` at the end.

    Chunks of 64 KiB or more are hashed with the GIL released. The state is behind a lock, so
    one hasher may be shared between threads (updates are serialised, never interleaved).
    """

    def __init__(self) -> None: ...
    def update(self, data: Buffer) -> None:
        """Feed a bytes-like chunk into the hash.

        Raises:
            TypeError: ``data`` is not bytes-like.
        """

    def hexdigest(self) -> str:
        """Lowercase hex digest of everything fed so far; equals ``hashlib.sha256(all).hexdigest()``.

        The hasher stays usable: more chunks may be fed afterwards.
        """

# --- snapshot ------------------------------------------------------------------------------

@final
class SnapshotInfo:
    """What a snapshot file's header says, plus the file's size. Read-only."""

    @property
    def version(self) -> int:
        """Format version (2; 1 for files written by statekit 0.1)."""
    @property
    def compression(self) -> str:
        """``"zstd"`` or ``"none"``."""
    @property
    def created_at(self) -> float:
        """Creation time, unix seconds."""
    @property
    def entry_count(self) -> int:
        """Number of records."""
    @property
    def uncompressed_size(self) -> int:
        """Length of the record batch before compression."""
    @property
    def file_size(self) -> int:
        """Size of the whole file in bytes."""
    @property
    def checksum(self) -> str:
        """Lowercase hex SHA-256 recorded in the header (of the payload, header bytes 0..48, extension)."""
    @property
    def prefix(self) -> str | None:
        """The key prefix every record starts with, as recorded; None for a version-1 file."""
    @property
    def signed(self) -> bool:
        """Whether the file carries an HMAC-SHA256 signature (verified only when a key is given)."""

def snapshot_write(
    path: str | os.PathLike[str],
    records: Iterable[tuple[str | bytes, bytes, float | None]]
    | tuple[list[str] | list[bytes], list[bytes], list[float | None] | None],
    *,
    compress: bool = True,
    level: int | None = None,
    created_at: float | None = None,
    prefix: str = "",
    signing_key: bytes | None = None,
    verify: bool = False,
) -> SnapshotInfo:
    """Write a snapshot file of ``(key, value, expires_at)`` records, atomically and durably.

    Keys are ``str`` (stored as UTF-8) or ``bytes``; ``expires_at`` is absolute unix seconds or
    ``None``. ``records`` may also be column-wise: a ``(keys, values, expires_at)`` tuple of
    three lists (``expires_at`` may be ``None`` when nothing expires), such as an
    ``ItemColumns``' three attributes; they are then read by index, without tuples. A tuple
    of three items whose first item is a list is taken as columns.

    ``prefix`` is recorded in the header (every key must start with it); ``signing_key``
    (at least 16 bytes) adds an HMAC-SHA256 tag that readers given the same key require.

    Layout (format version 2, little-endian): an 80-byte header -- magic ``b"SKSNAP\r\n"``,
    format version u16 (2), compression u8 (0 none, 1 zstd), flags u8 (bit 0: signed),
    extension length u32, created-at f64, entry count u64, uncompressed size u64, payload size
    u64, SHA-256 of the payload then header bytes 0..48 then the extension -- then the
    extension (prefix length u16, the prefix in UTF-8, and the 32-byte tag when signed:
    ``HMAC-SHA256(key, b"statekit-snapshot-v2\0" + header[0:48] + extension[:2 + len(prefix)]
    + sha256(payload))``), then the payload: the records as one batch, zstd-compressed when
    ``compress`` (a 28-byte header: magic ``b"SKRB"``, version 1, flags 0, reserved u16 0,
    record count u64, body length u64, CRC-32 of the body u32; then per record ``key_len u32,
    value_len u32, has_expiry u8, [expires_at f64], key, value``). ``level`` is the zstd
    level (1..22); ``None`` picks level 1, or zstd's fast mode (level -20) when level 1 shrinks
    a 1 MiB sample by less than a quarter (it is then faster, for about 3% more bytes).

    The SHA-256 detects accidents only (anyone who can write the file can recompute it); the
    HMAC detects tampering by anyone who does not hold the key.

    While attached, a reference to every key and value is taken (one pass, no copy); the
    framing, the CRC (two threads), compression, hashing and the write run with the GIL
    released (framing and compression on this thread, hashing and writing on a second one).
    The file is written to ``.{name}.{pid}.{n}.tmp`` in the same directory, fsynced, renamed
    over ``path``, and the directory is fsynced; on failure the temporary file is removed and
    ``path`` is untouched. With ``verify``, the temporary file is also read back and checked
    as ``snapshot_verify(deep=False)`` does (while another thread fsyncs it) before it
    replaces ``path``; a file that does not verify raises ``CorruptData`` and is removed.

    Raises:
        TypeError: a record is not a 3-tuple of ``str | bytes``, ``bytes``, ``float | None``
            (or a column is not a list).
        ValueError: the columns differ in length, ``level`` out of range, ``created_at`` not a
            unix time from 1970 to 9999, a key or value of 4 GiB or more, a key outside
            ``prefix``, a prefix over 4096 bytes, or a ``signing_key`` shorter than 16 bytes.
        OSError: the file cannot be written (``.filename`` is the path).
        statekit.errors.CorruptData: with ``verify``, the file read back does not verify.
    """

def snapshot_read(
    path: str | os.PathLike[str],
    *,
    str_keys: bool = True,
    require_prefix: str | None = None,
    reserved_prefix: str | None = None,
    signing_key: bytes | None = None,
) -> tuple[SnapshotInfo, list[str], list[bytes], list[float | None] | None]:
    """Verify a snapshot file completely, then return its records as columns.

    Returns ``(info, keys, values, expires_at)``: keys as ``str`` (or ``bytes`` with
    ``str_keys=False``), values as ``bytes``, and the expiries, or ``None`` when no record has
    one. Only a regular file is opened (not a symlink, FIFO or directory). The header is
    checked, then the SHA-256 (and, with ``signing_key``, the HMAC) over the stored bytes,
    before anything is decompressed, into a buffer of the declared (and plausible) size; then
    the batch and every record are validated and counted, all with the GIL released, before any
    Python object is built. Every key must start with the prefix the file records.

    With ``reserved_prefix``, every key must also be a valid statekit key -- non-empty, UTF-8,
    not starting with ``reserved_prefix`` -- and no expiry NaN; otherwise ``CorruptData``.

    Raises:
        statekit.errors.CorruptData: the file is truncated, altered, of an unknown version, not
            a regular file, not a snapshot, unsigned or not signed with ``signing_key``, or
            holds an invalid key (the message names the file and the problem).
        ValueError: a key is not UTF-8 (with ``str_keys``) or does not start with
            ``require_prefix``; ``signing_key`` is shorter than 16 bytes.
        OSError: the file cannot be read.
    """

def snapshot_load(
    path: str | os.PathLike[str],
    *,
    reserved_prefix: str,
    require_prefix: str | None = None,
    signing_key: bytes | None = None,
) -> tuple[SnapshotInfo, dict[str, bytes], dict[str, float] | None, int]:
    """Verify a snapshot file like :func:`snapshot_read` (``str_keys=True``, the same
    ``reserved_prefix`` rule), then return its records as a dict, for a bulk load.

    Returns ``(info, items, expires, value_bytes)``: ``{key: value}`` (a later record of a key
    wins), ``{key: expires_at}`` for the keys whose last record expires (``None`` when no
    record expires), and the total size of the values. The header, the SHA-256 and the HMAC
    are checked over the stored bytes before anything is decompressed; the batch's CRC and
    every record are checked on a second thread while the dicts are built, and the dicts are
    dropped (nothing is returned) if any check fails.

    Raises:
        statekit.errors.CorruptData: as :func:`snapshot_read`.
        ValueError: a key does not start with ``require_prefix``; ``signing_key`` is shorter
            than 16 bytes.
        OSError: the file cannot be read.
    """

def snapshot_verify(
    path: str | os.PathLike[str], *, deep: bool = True, signing_key: bytes | None = None
) -> SnapshotInfo:
    """Check a snapshot file without building any Python object; return its header.

    Always: the header's magic, version, compression, flags and extension, the file size
    against the header, the SHA-256 (streamed) and, with ``signing_key``, the HMAC. With
    ``deep`` (the default), also decompress the payload and validate the batch and every
    record, as :func:`snapshot_read` does.

    Raises:
        statekit.errors.CorruptData: the file is truncated, altered, not a regular file, not a
            snapshot, or (with ``signing_key``) unsigned or signed with another key.
        ValueError: ``signing_key`` is shorter than 16 bytes.
        OSError: the file cannot be read.
    """

def snapshot_info(path: str | os.PathLike[str]) -> SnapshotInfo:
    """Read a snapshot file's header, checking its shape and the file size but not the SHA-256.

    Raises:
        statekit.errors.CorruptData: the header is damaged, the size does not match, or the
            path is not a regular file.
        OSError: the file cannot be read.
    """

# --- runs ----------------------------------------------------------------------------------

def last_contiguous_run(last: int, successful: Iterable[int]) -> int:
    """Advance ``last`` while ``last + 1`` is in ``successful``; return the final value.

    ``successful`` may be in any order and hold duplicates; numbers ``<= last`` are ignored.
    ``last_contiguous_run(103, [104, 106, 107]) == 104``. A C-contiguous buffer of 64-bit
    signed ints (``array('q')``, a numpy ``int64`` array) is read in place, without
    converting each item (the same holds for ``max_attempted_run`` and ``run_gaps``).

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

    Empty if ``bound <= last``. At most 1,000,000 runs are returned: every allocation is
    bounded by the length of ``successful`` plus a constant, whatever ``last`` and ``bound`` say.

    Raises:
        ValueError: ``bound - last`` exceeds 10**9, more than 1,000,000 runs are missing, or
            an item is outside the 64-bit range.
        TypeError: an item is not an ``int``.
        OverflowError: ``last`` or ``bound`` is outside the 64-bit range.
    """
