"""Plain-Python reference implementations of every ``statekit._native`` function.

The property tests assert that the Rust core agrees with these on arbitrary input. They are
written for clarity, not speed, and follow the format descriptions in the Rust module docs.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import zlib
from collections.abc import Iterable, Sequence

from statekit.errors import CorruptData

# --- framing -------------------------------------------------------------------------------

MAGIC = b"SKRB"
VERSION = 1
HEADER = struct.Struct("<4sBBHQQI")  # magic, version, flags, reserved, count, body length, crc
assert HEADER.size == 28
RECORD_HEAD = struct.Struct("<IIB")  # key_len, value_len, has_expiry
EXPIRY = struct.Struct("<d")

Record = tuple[bytes, bytes, float | None]


def encode_records(records: Sequence[Record]) -> bytes:
    body = bytearray()
    for key, value, expires_at in records:
        if not isinstance(key, bytes) or not isinstance(value, bytes):
            raise TypeError("key and value must be bytes")
        body += RECORD_HEAD.pack(len(key), len(value), 0 if expires_at is None else 1)
        if expires_at is not None:
            body += EXPIRY.pack(expires_at)
        body += key
        body += value
    header = HEADER.pack(MAGIC, VERSION, 0, 0, len(records), len(body), zlib.crc32(body))
    return header + bytes(body)


def decode_records(data: bytes | bytearray | memoryview) -> list[Record]:
    data = bytes(data)
    if not MAGIC.startswith(data[:4]):
        raise CorruptData("not a statekit record batch (bad magic)")
    if len(data) < HEADER.size:
        raise CorruptData(f"framed buffer truncated: expected at least {HEADER.size} bytes, got {len(data)}")
    _, version, flags, reserved, count, body_len, crc = HEADER.unpack_from(data)
    if version != VERSION:
        raise CorruptData(f"unsupported record batch format version {version}")
    if flags or reserved:
        raise CorruptData("unknown flags / reserved bits")
    expected = HEADER.size + body_len
    if len(data) < expected:
        raise CorruptData(f"framed buffer truncated: expected {expected} bytes, got {len(data)}")
    if len(data) > expected:
        raise CorruptData(f"framed buffer has {len(data) - expected} trailing bytes")
    body = data[HEADER.size :]
    if zlib.crc32(body) != crc:
        raise CorruptData("checksum mismatch")
    out: list[Record] = []
    pos = 0
    for _ in range(count):
        if pos + RECORD_HEAD.size > len(body):
            raise CorruptData("record truncated")
        key_len, value_len, has_expiry = RECORD_HEAD.unpack_from(body, pos)
        pos += RECORD_HEAD.size
        expires_at: float | None = None
        if has_expiry == 1:
            if pos + EXPIRY.size > len(body):
                raise CorruptData("record truncated")
            (expires_at,) = EXPIRY.unpack_from(body, pos)
            pos += EXPIRY.size
        elif has_expiry != 0:
            raise CorruptData("invalid expiry flag")
        if pos + key_len + value_len > len(body):
            raise CorruptData("record truncated")
        key = body[pos : pos + key_len]
        pos += key_len
        value = body[pos : pos + value_len]
        pos += value_len
        out.append((key, value, expires_at))
    if pos != len(body):
        raise CorruptData("record count mismatch")
    return out


# --- resp ----------------------------------------------------------------------------------


def _resp_arg(arg: object) -> bytes:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode("utf-8")
    if isinstance(arg, bool):
        raise TypeError("bool is not a valid Redis argument")
    if isinstance(arg, int):
        return int.__repr__(arg).encode()
    if isinstance(arg, float):
        return repr(float(arg)).encode()
    raise TypeError(f"invalid Redis argument of type {type(arg).__name__}")


def encode_commands(commands: Sequence[Sequence[bytes | str | int | float]]) -> bytes:
    out = bytearray()
    for command in commands:
        args = [_resp_arg(a) for a in command]
        if not args:
            raise ValueError("empty command")
        out += b"*%d\r\n" % len(args)
        for arg in args:
            out += b"$%d\r\n%s\r\n" % (len(arg), arg)
    return bytes(out)


def crc16(data: bytes) -> int:
    """CRC16-XMODEM, bit by bit."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def hash_slot(key: bytes | str) -> int:
    if isinstance(key, str):
        key = key.encode("utf-8")
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return crc16(key) % 16384


def hash_slots(keys: Iterable[bytes | str]) -> list[int]:
    return [hash_slot(k) for k in keys]


# --- checksum ------------------------------------------------------------------------------


def sha256(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# --- runs ----------------------------------------------------------------------------------


def last_contiguous_run(last: int, successful: Iterable[int]) -> int:
    done = set(successful)
    while last + 1 in done:
        last += 1
    return last


def max_attempted_run(current: int, attempted: Iterable[int]) -> int:
    return max([current, *attempted])


def run_gaps(last: int, successful: Iterable[int], bound: int) -> list[int]:
    if bound - last > 10**9:
        raise ValueError("run_gaps window too large")
    done = set(successful)
    if bound - last - len(done) > 10**6:
        raise ValueError("run_gaps result too large")
    gaps = [r for r in range(last + 1, bound + 1) if r not in done]
    if len(gaps) > 10**6:
        raise ValueError("run_gaps result too large")
    return gaps


# --- snapshot ------------------------------------------------------------------------------

SNAPSHOT_MAGIC = b"SKSNAP\r\n"
SNAPSHOT_VERSION = 2
# magic, version, compression, flags, extension length, created_at, entry count, uncompressed
# size, payload size, SHA-256 (of the payload, then the first 48 header bytes, then the
# extension). Version 1: bytes 11..16 are reserved (zero) and there is no extension.
SNAPSHOT_HEADER = struct.Struct("<8sHBBIdQQQ32s")
assert SNAPSHOT_HEADER.size == 80
SNAPSHOT_HASHED = 48
SNAPSHOT_COMPRESSION = {0: "none", 1: "zstd"}
SNAPSHOT_TAG_DOMAIN = b"statekit-snapshot-v2\0"


def snapshot_layout(data: bytes) -> tuple[int, int]:
    """``(payload offset, extension length)`` of a snapshot file, from its header."""
    _, version, _, _, ext_len, *_ = SNAPSHOT_HEADER.unpack_from(data)
    ext_len = 0 if version == 1 else ext_len
    return SNAPSHOT_HEADER.size + ext_len, ext_len


def snapshot_header(data: bytes, signing_key: bytes | None = None) -> dict[str, object]:
    """The header fields of a snapshot file, after checking the digest, sizes and signature."""
    if len(data) < SNAPSHOT_HEADER.size or not data.startswith(SNAPSHOT_MAGIC):
        raise CorruptData("not a statekit snapshot, or truncated")
    _, version, compression, flags, ext_len, created_at, count, raw_size, payload_size, digest = (
        SNAPSHOT_HEADER.unpack_from(data)
    )
    if version not in (1, 2) or compression not in SNAPSHOT_COMPRESSION:
        raise CorruptData("unknown version or compression")
    if version == 1 and (flags, ext_len) != (0, 0):
        raise CorruptData("reserved bits set")
    offset, ext_len = snapshot_layout(data)
    extension = data[SNAPSHOT_HEADER.size : offset]
    payload = data[offset:]
    if len(payload) != payload_size:
        raise CorruptData("payload size does not match the header")
    if hashlib.sha256(payload + data[:SNAPSHOT_HASHED] + extension).digest() != digest:
        raise CorruptData("checksum mismatch")
    prefix: str | None = None
    tag: bytes | None = None
    if version == 2:
        (prefix_len,) = struct.unpack_from("<H", extension)
        prefix = extension[2 : 2 + prefix_len].decode()
        tag = extension[2 + prefix_len :] or None
        if (tag is not None) != bool(flags & 1):
            raise CorruptData("signed flag and extension disagree")
    if signing_key is not None:
        if tag is None:
            raise CorruptData("not signed")
        message = (
            SNAPSHOT_TAG_DOMAIN
            + data[:SNAPSHOT_HASHED]
            + extension[: ext_len - len(tag)]
            + hashlib.sha256(payload).digest()
        )
        if not hmac.compare_digest(hmac.new(signing_key, message, "sha256").digest(), tag):
            raise CorruptData("signature does not verify")
    return {
        "version": version,
        "compression": SNAPSHOT_COMPRESSION[compression],
        "created_at": created_at,
        "entry_count": count,
        "uncompressed_size": raw_size,
        "file_size": len(data),
        "checksum": digest.hex(),
        "prefix": prefix,
        "signed": tag is not None,
    }


def snapshot_v1(records: list[Record], created_at: float = 1_600_000_000.0) -> bytes:
    """A version-1 snapshot file (uncompressed), as statekit 0.1 wrote them."""
    batch = encode_records(records)
    header = bytearray(
        SNAPSHOT_HEADER.pack(
            SNAPSHOT_MAGIC, 1, 0, 0, 0, created_at, len(records), len(batch), len(batch), bytes(32)
        )
    )
    header[48:80] = hashlib.sha256(batch + bytes(header[:SNAPSHOT_HASHED])).digest()
    return bytes(header) + batch


def snapshot_records(data: bytes) -> list[Record]:
    """The records of an uncompressed snapshot file (the stdlib has no zstd before 3.14)."""
    header = snapshot_header(data)
    if header["compression"] != "none":
        raise ValueError("the reference reads uncompressed snapshots only")
    records = decode_records(data[snapshot_layout(data)[0] :])
    if len(records) != header["entry_count"]:
        raise CorruptData("entry count does not match the header")
    return records
