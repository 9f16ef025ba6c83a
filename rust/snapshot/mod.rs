//! Checkpoint snapshot files: a versioned header, a framed record batch (optionally zstd),
//! a SHA-256 that covers both, and an optional HMAC-SHA256 signature; written atomically,
//! verified before anything is trusted.
//!
//! # Format (version 2; version 1 is still read)
//!
//! All integers are little-endian. A snapshot is an 80-byte header, a header extension of
//! `E` bytes (version 2 only), then the payload.
//!
//! ```text
//! header:
//!   offset  size  field
//!   0       8     magic              b"SKSNAP\r\n"
//!   8       2     format version     u16, 2 (1: see below)
//!   10      1     compression        u8: 0 = none, 1 = zstd
//!   11      1     flags              u8: bit 0 = signed (the extension ends with an HMAC tag)
//!   12      4     extension length   u32, E
//!   16      8     created at         f64, unix seconds (UTC), finite, year 1970..=9999
//!   24      8     entry count        u64, records in the batch
//!   32      8     uncompressed size  u64, length of the framed batch
//!   40      8     payload size       u64, bytes after the extension
//!   48      32    SHA-256            of the payload, then header bytes 0..48, then the extension
//! extension (E bytes):
//!   0       2     prefix length      u16, P (at most MAX_PREFIX_LEN)
//!   2       P     key prefix         UTF-8: every key of the batch starts with it
//!   2+P     32    HMAC-SHA256 tag    only if signed (see below)
//! payload:
//!   the record batch of `framing` (magic b"SKRB", its own CRC-32), as is or as one zstd frame
//! ```
//!
//! Version 1 is the same 80-byte header with bytes 11..16 reserved (zero), no extension (so no
//! recorded prefix and no signature), and the SHA-256 of the payload then header bytes 0..48.
//!
//! The digest covers every header field, every extension byte and every payload byte, and the
//! digest itself is compared, so any flipped bit is detected; the sizes are checked against
//! the file size, so any truncation (or appended bytes) is detected before hashing. The
//! SHA-256 only detects accidents: anyone who can write the file can recompute it.
//!
//! # Signature
//!
//! With a signing key, the tag is `HMAC-SHA256(key, b"statekit-snapshot-v2\0" || header bytes
//! 0..48 || extension bytes 0..2+P || SHA-256(payload))`: it authenticates every header field,
//! the prefix and (through the collision-resistant SHA-256) every payload byte, and costs no
//! second pass over the payload (the payload hash is the prefix state of the file digest). A
//! reader given a key refuses unsigned files and files whose tag does not verify, so a file
//! planted by someone who can write the directory but does not hold the key is refused.
//!
//! # Reading untrusted files
//!
//! Files are opened with `O_NOFOLLOW | O_NONBLOCK` and must be regular files (a symlink, FIFO,
//! directory or device is refused before anything is read, and a FIFO never blocks). No
//! allocation is sized from an unverified field: the header is parsed from its first bytes and
//! its sizes checked against the file size; the file is read (its size is real); the digest and
//! the signature are checked over the stored bytes *before* anything is decompressed; and the
//! decompressed size is bounded by the header's declared size, itself bounded by what zstd can
//! produce from the stored bytes ([`MAX_ZSTD_RATIO`]) and by [`MAX_UNCOMPRESSED`].
//!
//! # Atomic, pipelined writes
//!
//! [`write_file`] writes a temporary file `.{name}.{pid}.{n}.tmp` next to the target (created
//! exclusively): a zeroed header and extension, then the payload, which is compressed on the
//! calling thread while a second thread hashes and writes what comes out; then the real header
//! and extension at offset 0. It fsyncs the file, renames it over the target and fsyncs the
//! directory. On failure the temporary file is removed and the target is untouched; a process
//! killed mid-write can leave the temporary file behind, which is why its name is recognisable
//! (the checkpoint coordinator sweeps them).
//!
//! # GIL
//!
//! `snapshot_write` takes a reference to each key and value once while attached (through
//! [`crate::records`]); everything else (framing, CRC, compression, SHA-256, HMAC, the write,
//! fsyncs, rename) runs detached.
//! `snapshot_read` and `snapshot_verify` do all file reading, hashing and validation detached;
//! `snapshot_read` then re-attaches only to build the list of Python tuples.
//!
//! # Modules
//!
//! * [`mod@format`]: constants, the header and its extension, the digest and signature checks
//! * [`mod@write`]: the pipelined, atomic write
//! * [`read`]: opening, verifying, decompressing and walking a file
//! * [`py`]: the `#[pyfunction]`s (Python records come in through [`crate::records`])

pub mod format;
pub mod py;
pub mod read;
pub mod write;

pub use format::*;
pub use py::*;
pub use read::*;
pub use write::*;

#[cfg(test)]
mod tests;
