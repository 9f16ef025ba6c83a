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
//! `snapshot_write` reads each Python record once while attached, copying it into the batch;
//! everything else (CRC, compression, SHA-256, HMAC, the write, fsyncs, rename) runs detached.
//! `snapshot_read` and `snapshot_verify` do all file reading, hashing and validation detached;
//! `snapshot_read` then re-attaches only to build the list of Python tuples.

use std::borrow::Cow;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use sha2::{Digest, Sha256};

use crate::checksum::{to_hex, FILE_CHUNK};
use crate::errors::NativeError;
use crate::framing;
use crate::records;

/// First eight bytes of every snapshot file.
pub const MAGIC: [u8; 8] = *b"SKSNAP\r\n";
/// The format version this build writes.
pub const VERSION: u16 = 2;
/// The oldest format version this build still reads (no recorded prefix, never signed).
pub const VERSION_1: u16 = 1;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 80;
/// The header bytes covered by the digest (everything before the digest itself).
const HASHED_LEN: usize = 48;
/// Longest key prefix a snapshot records.
pub const MAX_PREFIX_LEN: usize = 4096;
/// Length of an HMAC-SHA256 tag.
pub const TAG_LEN: usize = 32;
/// Longest header extension: prefix length, prefix, tag.
pub const MAX_EXTENSION_LEN: usize = 2 + MAX_PREFIX_LEN + TAG_LEN;
/// Shortest signing key accepted (bytes).
pub const MIN_KEY_LEN: usize = 16;
/// Bit 0 of the flags byte: the extension ends with an HMAC tag.
const FLAG_SIGNED: u8 = 1;
/// Domain separation of the signature: a tag made for anything else never verifies here.
const TAG_DOMAIN: &[u8] = b"statekit-snapshot-v2\0";
/// The most a zstd frame can expand: every block holds at most 128 KiB and takes at least 4
/// bytes (an RLE block), so no frame decompresses to more than 32768 times its size. A header
/// declaring more is forged or damaged.
pub const MAX_ZSTD_RATIO: u64 = 32_768;
/// Largest uncompressed size a header may declare (1 TiB): anything above is refused outright.
pub const MAX_UNCOMPRESSED: u64 = 1 << 40;
/// Latest creation time accepted: 9999-12-31T23:59:59Z (Python's `datetime` cannot go further).
pub const MAX_CREATED_AT: f64 = 253_402_300_799.0;
/// Smallest encoded record of the batch (two lengths and the expiry flag).
const MIN_RECORD_LEN: u64 = 9;
/// zstd level used when the caller gives none: the fastest regular level, since a checkpoint
/// is written often and read rarely...
pub const DEFAULT_LEVEL: i32 = 1;
/// ...unless the content barely compresses: then zstd's fast mode is about twice as fast as
/// level 1 and loses nothing (on 100-byte random values its output is even a little smaller).
pub const FAST_LEVEL: i32 = -5;
/// Size of the sample compressed to choose between the two.
const SAMPLE_LEN: usize = 1 << 20;
/// Highest zstd level accepted.
pub const MAX_LEVEL: i32 = 22;

type HmacSha256 = Hmac<Sha256>;

/// How the payload is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// The framed batch as is.
    None,
    /// One zstd frame holding the framed batch.
    Zstd,
}

impl Compression {
    fn code(self) -> u8 {
        match self {
            Self::None => 0,
            Self::Zstd => 1,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::None),
            1 => Some(Self::Zstd),
            _ => None,
        }
    }

    /// The name shown to users: `"none"` or `"zstd"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Zstd => "zstd",
        }
    }
}

/// The decoded header (and extension) of a snapshot file.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// Format version: [`VERSION`] or [`VERSION_1`].
    pub version: u16,
    /// How the payload is stored.
    pub compression: Compression,
    /// Creation time, unix seconds.
    pub created_at: f64,
    /// Number of records.
    pub entry_count: u64,
    /// Length of the framed batch before compression.
    pub uncompressed_size: u64,
    /// Bytes after the extension.
    pub payload_size: u64,
    /// SHA-256 of the payload, header bytes `0..48` and the extension.
    pub digest: [u8; 32],
    /// The key prefix every record starts with; None for a version-1 file (not recorded).
    pub prefix: Option<String>,
    /// The HMAC-SHA256 tag, if the file is signed.
    pub tag: Option<[u8; TAG_LEN]>,
}

impl Header {
    /// Length of the header extension (0 for version 1).
    pub fn extension_len(&self) -> usize {
        match &self.prefix {
            Some(prefix) if self.version != VERSION_1 => {
                2 + prefix.len() + self.tag.map_or(0, |t| t.len())
            }
            _ => 0,
        }
    }

    /// Offset of the payload in the file.
    pub fn payload_offset(&self) -> usize {
        HEADER_LEN + self.extension_len()
    }

    /// Size of the whole file this header describes.
    pub fn file_size(&self) -> u64 {
        self.payload_size
            .saturating_add(self.payload_offset() as u64)
    }

    /// Lowercase hex of the digest.
    pub fn checksum(&self) -> String {
        to_hex(&self.digest)
    }

    /// The fixed 80 bytes (version 2 layout).
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&self.version.to_le_bytes());
        out[10] = self.compression.code();
        out[11] = if self.tag.is_some() { FLAG_SIGNED } else { 0 };
        let ext_len = u32::try_from(self.extension_len()).unwrap_or(u32::MAX);
        out[12..16].copy_from_slice(&ext_len.to_le_bytes());
        out[16..24].copy_from_slice(&self.created_at.to_le_bytes());
        out[24..32].copy_from_slice(&self.entry_count.to_le_bytes());
        out[32..40].copy_from_slice(&self.uncompressed_size.to_le_bytes());
        out[40..48].copy_from_slice(&self.payload_size.to_le_bytes());
        out[48..80].copy_from_slice(&self.digest);
        out
    }

    /// The extension bytes covered by the signature: prefix length and prefix.
    fn extension_body(&self) -> Vec<u8> {
        let prefix = self.prefix.as_deref().unwrap_or_default().as_bytes();
        let mut out = Vec::with_capacity(2 + prefix.len());
        out.extend_from_slice(&(prefix.len() as u16).to_le_bytes());
        out.extend_from_slice(prefix);
        out
    }

    /// Parses and checks the header (and, for version 2, its extension) at the start of
    /// `data`, for a file of `file_len` bytes. `data` must hold at least the header and the
    /// extension (`HEADER_LEN + MAX_EXTENSION_LEN` bytes, or the whole file if shorter).
    ///
    /// Checks everything that can be checked without hashing: magic, version, compression,
    /// flags and reserved bytes, a plausible creation time, sizes that match the file size
    /// and each other, and the extension's shape. Nothing here allocates from a header field.
    pub fn parse(data: &[u8], file_len: u64) -> Result<Self, NativeError> {
        let magic_part = &data[..data.len().min(MAGIC.len())];
        if magic_part != &MAGIC[..magic_part.len()] {
            return Err(NativeError::corrupt(format!(
                "not a statekit snapshot (bad magic {})",
                escape(magic_part)
            )));
        }
        if data.len() < HEADER_LEN {
            return Err(NativeError::corrupt(format!(
                "snapshot truncated: the header needs {HEADER_LEN} bytes, the file has {file_len}"
            )));
        }
        let version = u16::from_le_bytes([data[8], data[9]]);
        if version != VERSION && version != VERSION_1 {
            return Err(NativeError::corrupt(format!(
                "unsupported snapshot format version {version} (this build reads versions {VERSION_1} and {VERSION})"
            )));
        }
        let Some(compression) = Compression::from_code(data[10]) else {
            return Err(NativeError::corrupt(format!(
                "unknown snapshot compression code {} (expected 0 = none or 1 = zstd)",
                data[10]
            )));
        };
        let (signed, ext_len) = if version == VERSION_1 {
            if data[11..16].iter().any(|&b| b != 0) {
                return Err(NativeError::corrupt(
                    "snapshot header has non-zero reserved bytes (altered or written by a newer statekit)",
                ));
            }
            (false, 0usize)
        } else {
            let flags = data[11];
            if flags & !FLAG_SIGNED != 0 {
                return Err(NativeError::corrupt(format!(
                    "snapshot header has unknown flags 0x{flags:02x} (altered or written by a newer statekit)"
                )));
            }
            let ext_len = u32::from_le_bytes(array_at(data, 12));
            let ext_len = usize::try_from(ext_len)
                .ok()
                .filter(|&n| (2..=MAX_EXTENSION_LEN).contains(&n))
                .ok_or_else(|| {
                    NativeError::corrupt(format!(
                        "snapshot header extension length {ext_len} is out of range (2..={MAX_EXTENSION_LEN})"
                    ))
                })?;
            (flags & FLAG_SIGNED != 0, ext_len)
        };
        let created_at = f64::from_le_bytes(array_at(data, 16));
        // Written from the clock by statekit; anything else is damage (and would make
        // datetime.fromtimestamp raise further on).
        if !(0.0..=MAX_CREATED_AT).contains(&created_at) {
            return Err(NativeError::corrupt(format!(
                "snapshot creation time {created_at} is out of range (not a unix time from 1970 to 9999)"
            )));
        }
        let entry_count = u64::from_le_bytes(array_at(data, 24));
        let uncompressed_size = u64::from_le_bytes(array_at(data, 32));
        let payload_size = u64::from_le_bytes(array_at(data, 40));
        let digest: [u8; 32] = array_at(data, 48);
        let expected = u128::from(payload_size) + (HEADER_LEN + ext_len) as u128;
        let actual = u128::from(file_len);
        if actual < expected {
            return Err(NativeError::corrupt(format!(
                "snapshot truncated: the header announces {expected} bytes, the file has {actual}"
            )));
        }
        if actual > expected {
            return Err(NativeError::corrupt(format!(
                "snapshot has {} unexpected trailing bytes: the header announces {expected} bytes, the file has {actual}",
                actual - expected
            )));
        }
        // The declared uncompressed size sizes the decompression buffer: it must be one the
        // stored bytes can actually produce.
        let plausible = match compression {
            Compression::None => uncompressed_size == payload_size,
            Compression::Zstd => {
                uncompressed_size <= payload_size.saturating_mul(MAX_ZSTD_RATIO)
                    && uncompressed_size <= MAX_UNCOMPRESSED
            }
        };
        if !plausible {
            return Err(NativeError::corrupt(format!(
                "snapshot header declares an implausible uncompressed size of {uncompressed_size} bytes \
                 for a {} payload of {payload_size} bytes",
                compression.name()
            )));
        }
        if entry_count > uncompressed_size / MIN_RECORD_LEN {
            return Err(NativeError::corrupt(format!(
                "snapshot header says {entry_count} entries, which cannot fit in {uncompressed_size} bytes"
            )));
        }
        let (prefix, tag) = if version == VERSION_1 {
            (None, None)
        } else {
            let Some(ext) = data.get(HEADER_LEN..HEADER_LEN + ext_len) else {
                return Err(NativeError::corrupt(format!(
                    "snapshot truncated: the header extension needs {ext_len} bytes"
                )));
            };
            let prefix_len = usize::from(u16::from_le_bytes([ext[0], ext[1]]));
            let tag_len = if signed { TAG_LEN } else { 0 };
            if prefix_len > MAX_PREFIX_LEN || 2 + prefix_len + tag_len != ext_len {
                return Err(NativeError::corrupt(format!(
                    "snapshot header extension is inconsistent: {ext_len} bytes for a prefix of \
                     {prefix_len} bytes{}",
                    if signed { " and a signature" } else { "" }
                )));
            }
            let prefix = std::str::from_utf8(&ext[2..2 + prefix_len]).map_err(|_| {
                NativeError::corrupt("snapshot header records a key prefix that is not UTF-8")
            })?;
            let tag = signed.then(|| array_at::<TAG_LEN>(ext, 2 + prefix_len));
            (Some(prefix.to_owned()), tag)
        };
        Ok(Self {
            version,
            compression,
            created_at,
            entry_count,
            uncompressed_size,
            payload_size,
            digest,
            prefix,
            tag,
        })
    }
}

fn array_at<const N: usize>(data: &[u8], offset: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = data.get(offset..offset + N) {
        out.copy_from_slice(src);
    }
    out
}

fn escape(bytes: &[u8]) -> String {
    let mut out = String::from("b'");
    for &b in bytes {
        out.extend(std::ascii::escape_default(b).map(char::from));
    }
    out.push('\'');
    out
}

fn check_digest(header: &Header, actual: &[u8; 32]) -> Result<(), NativeError> {
    if actual == &header.digest {
        return Ok(());
    }
    Err(NativeError::corrupt(format!(
        "checksum mismatch: the header records SHA-256 {}, the content hashes to {} (the file was altered or damaged)",
        to_hex(&header.digest),
        to_hex(actual)
    )))
}

fn new_mac(key: &[u8]) -> Result<HmacSha256, NativeError> {
    <HmacSha256 as Mac>::new_from_slice(key)
        .map_err(|_| NativeError::invalid("signing_key cannot be used as an HMAC-SHA256 key"))
}

/// Checks a signing key's length (the same rule for writing and reading).
pub fn check_signing_key(key: &[u8]) -> Result<(), NativeError> {
    if key.len() < MIN_KEY_LEN {
        return Err(NativeError::invalid(format!(
            "signing_key must be at least {MIN_KEY_LEN} bytes, got {}",
            key.len()
        )));
    }
    Ok(())
}

/// The HMAC over what the tag authenticates (see the module docs).
fn signature_mac(
    key: &[u8],
    hashed_header: &[u8],
    extension_body: &[u8],
    payload_digest: &[u8; 32],
) -> Result<HmacSha256, NativeError> {
    let mut mac = new_mac(key)?;
    mac.update(TAG_DOMAIN);
    mac.update(hashed_header);
    mac.update(extension_body);
    mac.update(payload_digest);
    Ok(mac)
}

/// Checks the signature of a file whose digest already matched. Without a key there is
/// nothing to check (a signed file is still protected against accidents by its digest).
fn check_signature(
    header: &Header,
    hashed_header: &[u8],
    payload_digest: &[u8; 32],
    key: Option<&[u8]>,
) -> Result<(), NativeError> {
    let Some(key) = key else {
        return Ok(());
    };
    let Some(tag) = header.tag else {
        return Err(NativeError::corrupt(
            "snapshot is not signed, but a signing key is configured: refusing it (it may have been \
             planted, or written before signing was enabled)",
        ));
    };
    signature_mac(key, hashed_header, &header.extension_body(), payload_digest)?
        .verify_slice(&tag)
        .map_err(|_| {
            NativeError::corrupt(
                "signature does not verify: the file was not written with this signing key (planted, \
                 altered, or signed with another key)",
            )
        })
}

/// Checks the digest, then the signature, of a file held in `data` (header already parsed).
/// Hashes each stored byte once; nothing is decompressed.
fn check_stored_bytes(header: &Header, data: &[u8], key: Option<&[u8]>) -> Result<(), NativeError> {
    let offset = header.payload_offset();
    let mut hasher = Sha256::new();
    hasher.update(data.get(offset..).unwrap_or_default());
    finish_checks(header, hasher, data, key)
}

/// Completes the checks once `hasher` has seen the payload: `head` holds the header and the
/// extension.
fn finish_checks(
    header: &Header,
    mut hasher: Sha256,
    head: &[u8],
    key: Option<&[u8]>,
) -> Result<(), NativeError> {
    let payload_digest: [u8; 32] = hasher.clone().finalize().into();
    let hashed = head.get(..HASHED_LEN).unwrap_or_default();
    hasher.update(hashed);
    hasher.update(
        head.get(HEADER_LEN..header.payload_offset())
            .unwrap_or_default(),
    );
    check_digest(header, &hasher.finalize().into())?;
    check_signature(header, hashed, &payload_digest, key)
}

/// How to build a snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Options<'a> {
    /// How to store the payload.
    pub compression: Compression,
    /// zstd level (1..=22), used with [`Compression::Zstd`]; `None` picks one ([`auto_level`]).
    pub level: Option<i32>,
    /// Creation time to record, unix seconds.
    pub created_at: f64,
    /// The key prefix to record (every key must start with it).
    pub prefix: &'a str,
    /// Sign the file with this key (at least [`MIN_KEY_LEN`] bytes).
    pub signing_key: Option<&'a [u8]>,
}

fn zstd_err(what: &str, err: &io::Error) -> NativeError {
    NativeError::invalid(format!("zstd {what} failed: {err}"))
}

/// Size of the pieces handed from the compressing thread to the writing thread.
const PIPE_CHUNK: usize = 1 << 20;
/// Pieces in flight between the two threads.
const PIPE_DEPTH: usize = 8;

/// Why a pipelined write stopped.
enum WriteError {
    /// Compression failed (the writer was fine).
    Encode(NativeError),
    /// Writing the file failed.
    Io(io::Error),
}

/// The `Write` end of the pipe: collects compressed output into [`PIPE_CHUNK`] pieces.
struct PipeWriter<'a> {
    tx: SyncSender<Cow<'a, [u8]>>,
    buf: Vec<u8>,
}

impl PipeWriter<'_> {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(PIPE_CHUNK));
        self.tx
            .send(Cow::Owned(piece))
            .map_err(|_| io::Error::new(ErrorKind::BrokenPipe, "the writing thread stopped"))
    }
}

impl Write for PipeWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= PIPE_CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// A framed record batch to store, produced in pieces: a buffer ([`FramedBatch`]) or
/// records framed on the fly ([`crate::records::Prepared`]).
pub trait Framed: Sync {
    /// Length of the framed batch.
    fn framed_len(&self) -> u64;
    /// Number of records.
    fn count(&self) -> u64;
    /// Hands the framed batch to `sink` in order, in pieces of about a MiB.
    fn for_each_chunk(&self, sink: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()>;
    /// At least the first `len` bytes of the framed batch (all of it if shorter).
    fn head(&self, len: usize) -> Cow<'_, [u8]>;
}

/// An already framed batch of `count` records.
pub struct FramedBatch<'a> {
    /// The batch (`framing` layout).
    pub batch: &'a [u8],
    /// Its record count.
    pub count: u64,
}

impl Framed for FramedBatch<'_> {
    fn framed_len(&self) -> u64 {
        self.batch.len() as u64
    }

    fn count(&self) -> u64 {
        self.count
    }

    fn for_each_chunk(&self, sink: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        self.batch.chunks(PIPE_CHUNK).try_for_each(sink)
    }

    fn head(&self, len: usize) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.batch[..self.batch.len().min(len)])
    }
}

impl<K: AsRef<[u8]> + Sync, V: AsRef<[u8]> + Sync> Framed for crate::records::Prepared<'_, K, V> {
    fn framed_len(&self) -> u64 {
        crate::records::Prepared::framed_len(self)
    }

    fn count(&self) -> u64 {
        crate::records::Prepared::count(self)
    }

    fn for_each_chunk(&self, sink: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        crate::records::Prepared::for_each_chunk(self, sink)
    }

    fn head(&self, len: usize) -> Cow<'_, [u8]> {
        Cow::Owned(crate::records::Prepared::head(self, len))
    }
}

/// The zstd level for `batch` when the caller did not choose one: [`DEFAULT_LEVEL`], or
/// [`FAST_LEVEL`] when level 1 shrinks a 1 MiB sample by less than a quarter.
pub fn auto_level(batch: &[u8]) -> i32 {
    let Some(sample) = batch.get(..SAMPLE_LEN) else {
        return DEFAULT_LEVEL;
    };
    match zstd::bulk::compress(sample, DEFAULT_LEVEL) {
        Ok(out) if out.len() * 4 > sample.len() * 3 => FAST_LEVEL,
        _ => DEFAULT_LEVEL,
    }
}

/// Sends the payload of `framed` down `tx`: zstd-compressed pieces, or the framed pieces.
/// Framing and compressing run on this thread; hashing and writing on the receiver's.
fn produce(
    framed: &dyn Framed,
    options: &Options,
    tx: SyncSender<Cow<'_, [u8]>>,
) -> Result<(), WriteError> {
    match options.compression {
        Compression::None => {
            let sent = framed.for_each_chunk(&mut |piece| {
                tx.send(Cow::Owned(piece.to_vec())).map_err(|_| {
                    io::Error::new(ErrorKind::BrokenPipe, "the writing thread stopped")
                })
            });
            // A send fails only when the writer failed; its error is the one reported.
            let _ = sent;
            Ok(())
        }
        Compression::Zstd => {
            let pipe = PipeWriter {
                tx,
                buf: Vec::with_capacity(PIPE_CHUNK),
            };
            let encode = || -> io::Result<()> {
                let level = options
                    .level
                    .unwrap_or_else(|| auto_level(&framed.head(SAMPLE_LEN)));
                let mut encoder = zstd::stream::write::Encoder::new(pipe, level)?;
                encoder.include_contentsize(true)?;
                encoder.set_pledged_src_size(Some(framed.framed_len()))?;
                framed.for_each_chunk(&mut |piece| encoder.write_all(piece))?;
                encoder.finish()?.flush()
            };
            match encode() {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()), // the writer's error wins
                Err(e) => Err(WriteError::Encode(zstd_err("compression", &e))),
            }
        }
    }
}

/// Writes the header placeholder and the payload to `file`; returns the header (digest and
/// tag set).
fn write_payload(
    file: &mut File,
    framed: &dyn Framed,
    options: &Options<'_>,
) -> Result<Header, WriteError> {
    let mut header = Header {
        version: VERSION,
        compression: options.compression,
        created_at: options.created_at,
        entry_count: framed.count(),
        uncompressed_size: framed.framed_len(),
        payload_size: 0,
        digest: [0; 32],
        prefix: Some(options.prefix.to_owned()),
        tag: options.signing_key.map(|_| [0; TAG_LEN]),
    };
    file.write_all(&vec![0u8; header.payload_offset()])
        .map_err(WriteError::Io)?;
    let (tx, rx) = sync_channel::<Cow<'_, [u8]>>(PIPE_DEPTH);
    let (produced, written) = std::thread::scope(|s| {
        let out = &mut *file;
        let writer = s.spawn(move || -> io::Result<(Sha256, u64)> {
            let mut hasher = Sha256::new();
            let mut size: u64 = 0;
            for piece in rx {
                hasher.update(&piece);
                out.write_all(&piece)?;
                size += piece.len() as u64;
            }
            Ok((hasher, size))
        });
        let produced = produce(framed, options, tx);
        (produced, writer.join())
    });
    let written = written
        .map_err(|_| WriteError::Io(io::Error::other("the writing thread panicked")))?
        .map_err(WriteError::Io)?;
    produced?;
    let (mut hasher, payload_size) = written;
    header.payload_size = payload_size;
    let fixed = header.encode();
    let hashed = &fixed[..HASHED_LEN];
    let mut extension = header.extension_body();
    if let Some(key) = options.signing_key {
        let payload_digest: [u8; 32] = hasher.clone().finalize().into();
        let tag: [u8; TAG_LEN] = signature_mac(key, hashed, &extension, &payload_digest)
            .map_err(WriteError::Encode)?
            .finalize()
            .into_bytes()
            .into();
        extension.extend_from_slice(&tag);
        header.tag = Some(tag);
    }
    hasher.update(hashed);
    hasher.update(&extension);
    header.digest = hasher.finalize().into();
    let mut head = header.encode().to_vec();
    head.extend_from_slice(&extension);
    file.write_all_at(&head, 0).map_err(WriteError::Io)?;
    Ok(header)
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The temporary file used to write `path`: `.{name}.{pid}.{n}.tmp` in the same directory.
pub fn temp_path(path: &Path) -> Result<PathBuf, NativeError> {
    let Some(name) = path.file_name() else {
        return Err(NativeError::invalid(format!(
            "{}: not a file path (it has no file name)",
            path.display()
        )));
    };
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".{}.{n}{nanos:08x}.tmp", std::process::id()));
    Ok(path.with_file_name(tmp))
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Writes a snapshot of the framed `batch` (of `entry_count` records) to `path`, atomically
/// and durably (see the module docs); returns its header.
///
/// On failure the target is untouched and the temporary file is removed.
pub fn write_file(
    path: &Path,
    batch: &[u8],
    entry_count: u64,
    options: &Options<'_>,
) -> Result<Header, NativeError> {
    check_options(options)?;
    if !options.prefix.is_empty() {
        // The prefix is recorded as a promise readers check: keep it.
        let prefix = options.prefix.as_bytes();
        for (index, record) in framing::open(batch)?.records().enumerate() {
            let key = record?.key;
            if !key.starts_with(prefix) {
                return Err(NativeError::invalid(format!(
                    "record {index}: key {} does not start with the snapshot's prefix {}",
                    escape(key),
                    escape(prefix)
                )));
            }
        }
    }
    write_framed(
        path,
        &FramedBatch {
            batch,
            count: entry_count,
        },
        options,
        false,
    )
}

/// Checks the options of a write (creation time, prefix length, signing key).
pub fn check_options(options: &Options<'_>) -> Result<(), NativeError> {
    if !(0.0..=MAX_CREATED_AT).contains(&options.created_at) {
        return Err(NativeError::invalid(format!(
            "created_at must be a finite unix time from 1970 to 9999, got {}",
            options.created_at
        )));
    }
    if options.prefix.len() > MAX_PREFIX_LEN {
        return Err(NativeError::invalid(format!(
            "the key prefix is {} bytes; a snapshot records at most {MAX_PREFIX_LEN}",
            options.prefix.len()
        )));
    }
    if let Some(key) = options.signing_key {
        check_signing_key(key)?;
    }
    Ok(())
}

/// Writes a snapshot of `framed` to `path`, atomically and durably, once [`check_options`]
/// passed and every key is known to start with the prefix; returns its header.
///
/// With `verify`, the written file is read back and checked as [`verify_file`] does (header,
/// SHA-256 over the stored bytes, signature) before it is renamed into place, while another
/// thread fsyncs it: a file that does not verify never replaces the target.
pub fn write_framed(
    path: &Path,
    framed: &dyn Framed,
    options: &Options<'_>,
    verify: bool,
) -> Result<Header, NativeError> {
    let tmp = temp_path(path)?;
    let written = (|| -> Result<Header, WriteError> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(WriteError::Io)?;
        let header = write_payload(&mut file, framed, options)?;
        if verify {
            let (synced, verified) = std::thread::scope(|s| {
                let syncing = s.spawn(|| file.sync_all());
                let verified = verify_file(&tmp, false, options.signing_key);
                (syncing.join(), verified)
            });
            synced
                .map_err(|_| WriteError::Io(io::Error::other("the fsync thread panicked")))?
                .map_err(WriteError::Io)?;
            let read_back = verified.map_err(WriteError::Encode)?;
            if read_back != header {
                return Err(WriteError::Encode(NativeError::corrupt(format!(
                    "the file written to {} reads back with another header (checksum {}, expected {})",
                    tmp.display(),
                    read_back.checksum(),
                    header.checksum()
                ))));
            }
        } else {
            file.sync_all().map_err(WriteError::Io)?;
        }
        drop(file);
        fs::rename(&tmp, path).map_err(WriteError::Io)?;
        Ok(header)
    })();
    let header = match written {
        Ok(header) => header,
        Err(err) => {
            // Best effort: the write already failed and that error is the one to report.
            let _ = fs::remove_file(&tmp);
            return Err(match err {
                WriteError::Encode(e) => e,
                WriteError::Io(source) => NativeError::Io {
                    path: path.to_path_buf(),
                    source,
                },
            });
        }
    };
    let dir = parent_dir(path);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| NativeError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    Ok(header)
}

/// The framed batch of a verified snapshot, and where it starts in `buf`.
///
/// The digest, the signature (when a key was given), the sizes, the batch header and its
/// CRC-32 have been checked; the records are checked by [`Decoded::scan`].
pub struct Decoded {
    /// The verified header.
    pub header: Header,
    buf: Vec<u8>,
    start: usize,
}

/// What [`Decoded::scan`] learnt about the records.
#[derive(Debug, Clone, Copy)]
pub struct Scan {
    /// Whether any record has an expiry.
    pub any_expiry: bool,
}

/// What [`Decoded::scan`] requires of every record, beyond being well formed and under the
/// prefix the header records (both `Corrupt` otherwise).
#[derive(Debug, Clone, Copy, Default)]
pub struct Rules<'a> {
    /// Keys must be UTF-8 (`InvalidArgument` otherwise, `Corrupt` with `reserved_prefix`).
    pub str_keys: bool,
    /// Keys must start with this (`InvalidArgument` otherwise: the file is sound, the caller's
    /// expectation is not).
    pub require_prefix: Option<&'a [u8]>,
    /// Keys must be valid statekit keys: non-empty, UTF-8, not starting with this reserved
    /// prefix; expiries must not be NaN (`Corrupt` otherwise: no backend could hold them).
    pub reserved_prefix: Option<&'a [u8]>,
}

impl Decoded {
    /// Checks the CRC-32 of the batch.
    pub fn check_crc(&self) -> Result<(), NativeError> {
        let data = self.batch();
        let batch = framing::open_unchecked_crc(data)?;
        framing::check_crc(data, &batch)
            .map_err(|e| NativeError::corrupt(format!("snapshot records are invalid: {e}")))
    }

    /// The framed record batch.
    pub fn batch(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or_default()
    }

    /// Walks every record once, checking it against `rules` (see [`Rules`]).
    ///
    /// The batch's CRC-32 is not checked again: [`decode`] checked it (or, for
    /// [`decode_unchecked_crc`], the caller does).
    pub fn scan(&self, rules: &Rules<'_>) -> Result<Scan, NativeError> {
        let batch = framing::open_unchecked_crc(self.batch())?;
        let recorded = self
            .header
            .prefix
            .as_deref()
            .map(str::as_bytes)
            .filter(|p| !p.is_empty());
        let strict = rules.reserved_prefix.is_some();
        let mut any_expiry = false;
        for (index, record) in batch.records().enumerate() {
            let record = record
                .map_err(|e| NativeError::corrupt(format!("snapshot records are invalid: {e}")))?;
            let key = record.key;
            if let Some(recorded) = recorded {
                if !key.starts_with(recorded) {
                    return Err(NativeError::corrupt(format!(
                        "record {index}: key {} is outside the prefix {} the snapshot records",
                        escape(key),
                        escape(recorded)
                    )));
                }
            }
            if let Some(reserved) = rules.reserved_prefix {
                let why = if key.is_empty() {
                    Some("is empty")
                } else if std::str::from_utf8(key).is_err() {
                    Some("is not UTF-8")
                } else if key.starts_with(reserved) {
                    Some("is in statekit's reserved namespace")
                } else if record.expires_at.is_some_and(f64::is_nan) {
                    Some("has a NaN expiry")
                } else {
                    None
                };
                if let Some(why) = why {
                    return Err(NativeError::corrupt(format!(
                        "record {index}: key {} {why}: not a valid statekit entry (nothing was restored)",
                        escape(key)
                    )));
                }
            }
            if rules.str_keys && !strict && std::str::from_utf8(key).is_err() {
                return Err(NativeError::invalid(format!(
                    "record {index}: key {} is not UTF-8; read it with str_keys=False",
                    escape(key)
                )));
            }
            if let Some(prefix) = rules.require_prefix {
                if !key.starts_with(prefix) {
                    return Err(NativeError::invalid(format!(
                        "record {index}: key {} does not start with the required prefix {}",
                        escape(key),
                        escape(prefix)
                    )));
                }
            }
            any_expiry |= record.expires_at.is_some();
        }
        Ok(Scan { any_expiry })
    }
}

/// Decompresses a payload whose digest (and signature) already verified, into exactly
/// `size` bytes: zstd never writes past the buffer, so a frame that would inflate further
/// fails instead of growing memory.
fn decompress(payload: &[u8], size: u64) -> Result<Vec<u8>, NativeError> {
    let size = usize::try_from(size).map_err(|_| {
        NativeError::corrupt(format!("snapshot uncompressed size {size} is implausible"))
    })?;
    // The zstd frame records its own content size; a header that disagrees is corrupt.
    match zstd::zstd_safe::get_frame_content_size(payload) {
        Ok(Some(n)) if n == size as u64 => {}
        Ok(Some(n)) => {
            return Err(NativeError::corrupt(format!(
                "snapshot payload decompresses to {n} bytes, the header says {size}"
            )))
        }
        Ok(None) | Err(_) => {
            return Err(NativeError::corrupt(
                "snapshot payload is not a zstd frame with a recorded size",
            ))
        }
    }
    let mut out = Vec::new();
    out.try_reserve_exact(size).map_err(|_| {
        NativeError::corrupt(format!(
            "snapshot uncompressed size {size} cannot be allocated"
        ))
    })?;
    let written = zstd::bulk::Decompressor::new()
        .and_then(|mut d| d.decompress_to_buffer(payload, &mut out))
        .map_err(|e| NativeError::corrupt(format!("snapshot payload does not decompress: {e}")))?;
    if written != size {
        return Err(NativeError::corrupt(format!(
            "snapshot payload decompresses to {written} bytes, the header says {size}"
        )));
    }
    Ok(out)
}

/// Verifies a whole snapshot held in memory and returns its batch (records not yet walked:
/// see [`Decoded::scan`]).
///
/// Order matters: the header is checked, then the digest and the signature over the stored
/// bytes, and only then is anything decompressed (a damaged or forged file is refused
/// before it can make us allocate), into a buffer of the declared size.
pub fn decode(data: Vec<u8>, key: Option<&[u8]>) -> Result<Decoded, NativeError> {
    let decoded = decode_unchecked_crc(data, key)?;
    decoded.check_crc()?;
    Ok(decoded)
}

/// [`decode`] without the batch's CRC-32 check: the caller runs [`Decoded::check_crc`]
/// (`snapshot_load` does, on another thread, while it builds Python objects it drops on
/// failure). The digest and the signature have still been checked before decompressing.
pub fn decode_unchecked_crc(data: Vec<u8>, key: Option<&[u8]>) -> Result<Decoded, NativeError> {
    let header = Header::parse(&data, data.len() as u64)?;
    check_stored_bytes(&header, &data, key)?;
    let offset = header.payload_offset();
    let (buf, start) = match header.compression {
        Compression::None => (data, offset),
        Compression::Zstd => {
            let payload = data.get(offset..).unwrap_or_default();
            let inflated = decompress(payload, header.uncompressed_size)?;
            (inflated, 0)
        }
    };
    let decoded = Decoded { header, buf, start };
    let batch_bytes = decoded.batch();
    if batch_bytes.len() as u64 != decoded.header.uncompressed_size {
        return Err(NativeError::corrupt(format!(
            "snapshot batch is {} bytes, the header says {}",
            batch_bytes.len(),
            decoded.header.uncompressed_size
        )));
    }
    let batch = framing::open_unchecked_crc(batch_bytes)
        .map_err(|e| NativeError::corrupt(format!("snapshot records are invalid: {e}")))?;
    if batch.count() != decoded.header.entry_count {
        return Err(NativeError::corrupt(format!(
            "snapshot header says {} entries, its record batch holds {}",
            decoded.header.entry_count,
            batch.count()
        )));
    }
    Ok(decoded)
}

fn io_error(path: &Path) -> impl Fn(io::Error) -> NativeError + '_ {
    move |source| NativeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Names the file in a corruption message.
fn in_file(path: &Path) -> impl Fn(NativeError) -> NativeError + '_ {
    move |err| match err {
        NativeError::Corrupt(msg) => {
            NativeError::Corrupt(format!("checkpoint file {}: {msg}", path.display()))
        }
        other => other,
    }
}

/// What kind of file `meta` describes, for messages.
fn kind_of(meta: &fs::Metadata) -> &'static str {
    let kind = meta.file_type();
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_block_device() || kind.is_char_device() {
        "a device"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading only if it is a regular file, and returns it with its size.
///
/// `O_NOFOLLOW`: a symlink is refused rather than followed (it could point anywhere, such as
/// `/dev/zero`); `O_NONBLOCK`: opening a FIFO returns at once instead of waiting for a writer
/// forever. Anything but a regular file is refused as `Corrupt` before a byte is read.
pub fn open_regular(path: &Path) -> Result<(File, u64), NativeError> {
    let not_regular = |what: &str| {
        NativeError::corrupt(format!(
            "checkpoint file {}: {what}, not a regular file; refusing to read it",
            path.display()
        ))
    };
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(not_regular("a symbolic link"))
        }
        Err(e) => return Err(io_error(path)(e)),
    };
    let meta = file.metadata().map_err(io_error(path))?;
    if !meta.file_type().is_file() {
        return Err(not_regular(kind_of(&meta)));
    }
    Ok((file, meta.len()))
}

/// Reads the header and extension of an open snapshot (at most their maximum size).
fn read_head(
    file: &mut File,
    path: &Path,
    file_len: u64,
) -> Result<(Header, Vec<u8>), NativeError> {
    let mut head = Vec::with_capacity(HEADER_LEN + MAX_EXTENSION_LEN);
    Read::by_ref(file)
        .take((HEADER_LEN + MAX_EXTENSION_LEN) as u64)
        .read_to_end(&mut head)
        .map_err(io_error(path))?;
    let header = Header::parse(&head, file_len).map_err(in_file(path))?;
    Ok((header, head))
}

/// Reads and verifies the snapshot at `path`, records not yet walked (see [`Decoded::scan`]).
pub fn read_file(path: &Path, key: Option<&[u8]>) -> Result<Decoded, NativeError> {
    let decoded = read_file_unchecked_crc(path, key)?;
    decoded.check_crc().map_err(in_file(path))?;
    Ok(decoded)
}

/// [`read_file`] without the batch's CRC-32 check (see [`decode_unchecked_crc`]).
pub fn read_file_unchecked_crc(path: &Path, key: Option<&[u8]>) -> Result<Decoded, NativeError> {
    let (mut file, file_len) = open_regular(path)?;
    // The header first: a file that is not a snapshot is refused without reading it all.
    let (_, head) = read_head(&mut file, path, file_len)?;
    // The size is the file's own (checked against the header): not an unverified field.
    let capacity = usize::try_from(file_len).unwrap_or(usize::MAX);
    let mut data = Vec::new();
    data.try_reserve_exact(capacity)
        .map_err(|_| NativeError::Io {
            path: path.to_path_buf(),
            source: io::Error::new(
                ErrorKind::OutOfMemory,
                "not enough memory to read the checkpoint",
            ),
        })?;
    data.extend_from_slice(&head);
    // One byte more than expected, so a file that grew meanwhile is caught by `decode`.
    let rest = file_len.saturating_sub(head.len() as u64).saturating_add(1);
    Read::by_ref(&mut file)
        .take(rest)
        .read_to_end(&mut data)
        .map_err(io_error(path))?;
    decode_unchecked_crc(data, key).map_err(in_file(path))
}

/// Reads the snapshot at `path` and checks everything, every record included.
pub fn check_file(
    path: &Path,
    rules: &Rules<'_>,
    key: Option<&[u8]>,
) -> Result<(Decoded, Scan), NativeError> {
    let decoded = read_file(path, key)?;
    let scan = scan_file(path, &decoded, rules)?;
    Ok((decoded, scan))
}

/// [`Decoded::scan`] of the file at `path`, errors naming it.
fn scan_file(path: &Path, decoded: &Decoded, rules: &Rules<'_>) -> Result<Scan, NativeError> {
    decoded.scan(rules).map_err(|e| match e {
        NativeError::InvalidArgument(msg) => {
            NativeError::invalid(format!("checkpoint file {}: {msg}", path.display()))
        }
        other => in_file(path)(other),
    })
}

/// Reads the header of the snapshot at `path` without hashing (checks its shape and size).
pub fn read_header(path: &Path) -> Result<Header, NativeError> {
    let (mut file, file_len) = open_regular(path)?;
    read_head(&mut file, path, file_len).map(|(header, _)| header)
}

/// Checks the header, the digest and (with a key) the signature of the file at `path`,
/// streaming it; with `deep`, also decompresses and validates every record (as
/// [`read_file`] does).
pub fn verify_file(path: &Path, deep: bool, key: Option<&[u8]>) -> Result<Header, NativeError> {
    if deep {
        return check_file(path, &Rules::default(), key).map(|(d, _)| d.header);
    }
    let (mut file, file_len) = open_regular(path)?;
    let (header, head) = read_head(&mut file, path, file_len)?;
    let offset = header.payload_offset();
    let mut hasher = Sha256::new();
    // `head` may already hold the start of the payload.
    let first = head.get(offset..).unwrap_or_default();
    hasher.update(first);
    let mut seen = first.len() as u64;
    let mut buf = vec![0u8; FILE_CHUNK];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let chunk = buf.get(..n).unwrap_or_default();
                hasher.update(chunk);
                seen += chunk.len() as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(path)(e)),
        }
    }
    if seen != header.payload_size {
        // The file changed size between the metadata call and the read.
        return Err(in_file(path)(NativeError::corrupt(format!(
            "snapshot payload is {seen} bytes, the header says {}",
            header.payload_size
        ))));
    }
    finish_checks(&header, hasher, &head, key).map_err(in_file(path))?;
    Ok(header)
}

// --- Python wrappers -------------------------------------------------------------------------

/// What a snapshot's header says, plus its size on disk.
#[pyclass(name = "SnapshotInfo", module = "statekit._native", frozen, get_all)]
#[derive(Debug, Clone)]
pub struct PySnapshotInfo {
    /// Format version.
    pub version: u16,
    /// `"zstd"` or `"none"`.
    pub compression: String,
    /// Creation time, unix seconds.
    pub created_at: f64,
    /// Number of records.
    pub entry_count: u64,
    /// Length of the framed batch before compression.
    pub uncompressed_size: u64,
    /// Size of the whole file.
    pub file_size: u64,
    /// Lowercase hex SHA-256 recorded in the header.
    pub checksum: String,
    /// The key prefix the snapshot records (None for a version-1 file).
    pub prefix: Option<String>,
    /// Whether the file carries an HMAC-SHA256 signature (verified only when a key is given).
    pub signed: bool,
}

impl From<&Header> for PySnapshotInfo {
    fn from(h: &Header) -> Self {
        Self {
            version: h.version,
            compression: h.compression.name().to_owned(),
            created_at: h.created_at,
            entry_count: h.entry_count,
            uncompressed_size: h.uncompressed_size,
            file_size: h.file_size(),
            checksum: h.checksum(),
            prefix: h.prefix.clone(),
            signed: h.tag.is_some(),
        }
    }
}

#[pymethods]
impl PySnapshotInfo {
    fn __repr__(&self) -> String {
        format!(
            "SnapshotInfo(version={}, compression={:?}, created_at={}, entry_count={}, \
             uncompressed_size={}, file_size={}, checksum={:?}, prefix={:?}, signed={})",
            self.version,
            self.compression,
            self.created_at,
            self.entry_count,
            self.uncompressed_size,
            self.file_size,
            self.checksum,
            self.prefix,
            self.signed
        )
    }
}

/// `keys`, `values` and `expires_at` of a column-wise record set.
type PyColumnLists<'py> = (
    Bound<'py, PyList>,
    Bound<'py, PyList>,
    Option<Bound<'py, PyList>>,
);

/// The `keys`, `values` and `expires_at` lists of a column-wise record set (such as
/// `statekit.backends.base.ItemColumns`), or None if `records` is not one.
fn columns_of<'py>(records: &Bound<'py, PyAny>) -> Option<PyColumnLists<'py>> {
    if records.is_instance_of::<PyList>() || records.is_instance_of::<PyTuple>() {
        return None;
    }
    let list = |name: &str| records.getattr(name).ok()?.cast_into::<PyList>().ok();
    let keys = list("keys")?;
    let values = list("values")?;
    let expires = records.getattr("expires_at").ok()?;
    if expires.is_none() {
        return Some((keys, values, None));
    }
    Some((keys, values, Some(expires.cast_into::<PyList>().ok()?)))
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A signing key from Python, checked (`ValueError` if shorter than [`MIN_KEY_LEN`]).
fn signing_key_of(key: Option<&[u8]>) -> PyResult<Option<&[u8]>> {
    if let Some(key) = key {
        check_signing_key(key)?;
    }
    Ok(key)
}

/// `snapshot_write(path, records, *, compress=True, level=None, created_at=None, prefix="",
/// signing_key=None, verify=False)` -> info.
#[pyfunction]
#[pyo3(signature = (path, records, *, compress = true, level = None, created_at = None, prefix = "", signing_key = None, verify = false))]
#[allow(clippy::too_many_arguments)]
pub fn snapshot_write(
    py: Python<'_>,
    path: PathBuf,
    records: &Bound<'_, PyAny>,
    compress: bool,
    level: Option<i32>,
    created_at: Option<f64>,
    prefix: &str,
    signing_key: Option<&[u8]>,
    verify: bool,
) -> PyResult<PySnapshotInfo> {
    if let Some(level) = level.filter(|l| !(1..=MAX_LEVEL).contains(l)) {
        return Err(PyValueError::new_err(format!(
            "level must be between 1 and {MAX_LEVEL} (or None to choose), got {level}"
        )));
    }
    let options = Options {
        compression: if compress {
            Compression::Zstd
        } else {
            Compression::None
        },
        level,
        created_at: created_at.unwrap_or_else(now_unix),
        prefix,
        signing_key: signing_key_of(signing_key)?,
    };
    let columns = match columns_of(records) {
        Some((keys, values, expires)) => {
            records::columns_from_lists(&keys, &values, expires.as_ref())?
        }
        None => records::columns_from_items(records)?,
    };
    let header = py.detach(|| {
        check_options(&options)?;
        let prepared = columns.prepare(options.prefix.as_bytes())?;
        write_framed(&path, &prepared, &options, verify)
    });
    // The references to the keys and values are released here, attached.
    drop(columns);
    Ok(PySnapshotInfo::from(&header?))
}

/// `snapshot_info(path)` -> header of a snapshot, checked for shape and size, not hashed.
#[pyfunction]
pub fn snapshot_info(py: Python<'_>, path: PathBuf) -> PyResult<PySnapshotInfo> {
    let header = py.detach(|| read_header(&path))?;
    Ok(PySnapshotInfo::from(&header))
}

/// `snapshot_verify(path, *, deep=True, signing_key=None)` -> header of a verified snapshot.
#[pyfunction]
#[pyo3(signature = (path, *, deep = true, signing_key = None))]
pub fn snapshot_verify(
    py: Python<'_>,
    path: PathBuf,
    deep: bool,
    signing_key: Option<&[u8]>,
) -> PyResult<PySnapshotInfo> {
    let key = signing_key_of(signing_key)?;
    let header = py.detach(|| verify_file(&path, deep, key))?;
    Ok(PySnapshotInfo::from(&header))
}

/// The columns `snapshot_read` returns: keys, values, and expiries (None when no record has one).
type Columns<'py> = (
    PySnapshotInfo,
    Bound<'py, PyList>,
    Bound<'py, PyList>,
    Option<Bound<'py, PyList>>,
);

/// `snapshot_read(path, *, str_keys=True, require_prefix=None, reserved_prefix=None,
/// signing_key=None)` -> `(info, keys, values, expires_at | None)`.
#[pyfunction]
#[pyo3(signature = (path, *, str_keys = true, require_prefix = None, reserved_prefix = None, signing_key = None))]
pub fn snapshot_read<'py>(
    py: Python<'py>,
    path: PathBuf,
    str_keys: bool,
    require_prefix: Option<&str>,
    reserved_prefix: Option<&str>,
    signing_key: Option<&[u8]>,
) -> PyResult<Columns<'py>> {
    let key = signing_key_of(signing_key)?;
    let rules = Rules {
        str_keys,
        require_prefix: require_prefix.map(str::as_bytes).filter(|p| !p.is_empty()),
        reserved_prefix: reserved_prefix.map(str::as_bytes),
    };
    let (decoded, scan) = py.detach(|| check_file(&path, &rules, key))?;
    let any_expiry = scan.any_expiry;
    let info = PySnapshotInfo::from(&decoded.header);
    let batch = framing::open(decoded.batch())?;
    let count = usize::try_from(batch.count()).unwrap_or(0);
    let mut keys: Vec<Bound<'py, PyAny>> = Vec::with_capacity(count);
    let mut values: Vec<Bound<'py, PyBytes>> = Vec::with_capacity(count);
    let mut expires: Vec<Option<f64>> = Vec::with_capacity(if any_expiry { count } else { 0 });
    for record in batch.records() {
        let r = record?;
        keys.push(if str_keys {
            let text = std::str::from_utf8(r.key)
                .map_err(|e| PyValueError::new_err(format!("key is not UTF-8: {e}")))?;
            PyString::new(py, text).into_any()
        } else {
            PyBytes::new(py, r.key).into_any()
        });
        values.push(PyBytes::new(py, r.value));
        if any_expiry {
            expires.push(r.expires_at);
        }
    }
    drop(decoded);
    let expires = if any_expiry {
        Some(PyList::new(py, expires)?)
    } else {
        None
    };
    Ok((
        info,
        PyList::new(py, keys)?,
        PyList::new(py, values)?,
        expires,
    ))
}

/// What `snapshot_load` returns: the header, `{key: value}`, `{key: expires_at}` for the
/// keys that expire (None when none does), and the total size of the values.
type Loaded<'py> = (
    PySnapshotInfo,
    Bound<'py, PyDict>,
    Option<Bound<'py, PyDict>>,
    u64,
);

/// The records of `decoded` as `({key: value}, {key: expires_at} | None, value_bytes)`.
fn build_mapping<'py>(
    py: Python<'py>,
    decoded: &Decoded,
) -> PyResult<(Bound<'py, PyDict>, Option<Bound<'py, PyDict>>, u64)> {
    let batch = framing::open_unchecked_crc(decoded.batch())?;
    let items = PyDict::new(py);
    let mut expires: Option<Bound<'py, PyDict>> = None;
    let mut value_bytes: u64 = 0;
    for record in batch.records() {
        let r = record?;
        let text = std::str::from_utf8(r.key)
            .map_err(|e| PyValueError::new_err(format!("key is not UTF-8: {e}")))?;
        let key = PyString::new(py, text);
        value_bytes += r.value.len() as u64;
        match (r.expires_at, &expires) {
            (Some(at), Some(e)) => e.set_item(&key, at)?,
            (Some(at), None) => {
                let e = PyDict::new(py);
                e.set_item(&key, at)?;
                expires = Some(e);
            }
            // A later record of the same key without an expiry drops the earlier one's.
            (None, Some(e)) => {
                if e.contains(&key)? {
                    e.del_item(&key)?;
                }
            }
            (None, None) => {}
        }
        items.set_item(key, PyBytes::new(py, r.value))?;
    }
    Ok((items, expires, value_bytes))
}

/// `snapshot_load(path, *, reserved_prefix, require_prefix=None, signing_key=None)` ->
/// `(info, {key: value}, {key: expires_at} | None, value_bytes)`.
///
/// The same checks as `snapshot_read` with `str_keys=True` and the same `reserved_prefix`
/// rule (the header, the SHA-256 and the signature over the stored bytes before anything is
/// decompressed, then every record and every key), all before a Python object is made; the
/// records then go straight into a dict (a later record of the same key wins, as in a
/// backend), without the two intermediate lists.
#[pyfunction]
#[pyo3(signature = (path, *, reserved_prefix, require_prefix = None, signing_key = None))]
pub fn snapshot_load<'py>(
    py: Python<'py>,
    path: PathBuf,
    reserved_prefix: &str,
    require_prefix: Option<&str>,
    signing_key: Option<&[u8]>,
) -> PyResult<Loaded<'py>> {
    let key = signing_key_of(signing_key)?;
    let rules = Rules {
        str_keys: true,
        require_prefix: require_prefix.map(str::as_bytes).filter(|p| !p.is_empty()),
        reserved_prefix: Some(reserved_prefix.as_bytes()),
    };
    let decoded = py.detach(|| read_file_unchecked_crc(&path, key))?;
    // The digest and the signature verified; now the batch's CRC and every record's checks
    // run on another thread while this one builds the dicts, which are dropped if they fail.
    let (built, checked) = std::thread::scope(|s| {
        let checker = s.spawn(|| {
            decoded.check_crc().map_err(in_file(&path))?;
            scan_file(&path, &decoded, &rules)
        });
        let built = build_mapping(py, &decoded);
        let checked = py.detach(|| checker.join());
        (built, checked)
    });
    match checked {
        Ok(Ok(_)) => {}
        Ok(Err(err)) => return Err(err.into()),
        Err(_) => return Err(NativeError::invalid("the snapshot checking thread panicked").into()),
    }
    let (items, expires, value_bytes) = built?;
    let info = PySnapshotInfo::from(&decoded.header);
    drop(decoded);
    Ok((info, items, expires, value_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Owned = (Vec<u8>, Vec<u8>, Option<f64>);

    static DIR_COUNTER: AtomicU64 = AtomicU64::new(0);

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            let n = DIR_COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("statekit-snapshot-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("temp dir");
            Self(dir)
        }

        fn names(&self) -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(&self.0)
                .expect("list")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn sample() -> Vec<Owned> {
        vec![
            (b"alpha".to_vec(), b"one".to_vec(), None),
            (b"".to_vec(), b"".to_vec(), Some(1.5)),
            (vec![0, 255, 10], vec![7; 300], Some(f64::INFINITY)),
            (b"job:k".to_vec(), b"v".to_vec(), Some(1_700_000_000.25)),
        ]
    }

    fn options(compression: Compression) -> Options<'static> {
        Options {
            compression,
            level: None,
            created_at: 1_700_000_000.5,
            prefix: "",
            signing_key: None,
        }
    }

    fn write(dir: &TempDir, name: &str, records: &[Owned], opts: &Options) -> (PathBuf, Header) {
        let path = dir.0.join(name);
        let batch = framing::encode(records).expect("encode");
        let header = write_file(&path, &batch, records.len() as u64, opts).expect("write");
        (path, header)
    }

    fn records_of(decoded: &Decoded) -> Vec<Owned> {
        framing::decode(decoded.batch())
            .expect("decode")
            .into_iter()
            .map(|r| (r.key.to_vec(), r.value.to_vec(), r.expires_at))
            .collect()
    }

    fn same(a: &[Owned], b: &[Owned]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| {
                x.0 == y.0 && x.1 == y.1 && x.2.map(f64::to_bits) == y.2.map(f64::to_bits)
            })
    }

    fn is_corrupt<T>(result: Result<T, NativeError>) -> bool {
        matches!(result, Err(NativeError::Corrupt(_)))
    }

    fn corrupt_message<T>(result: Result<T, NativeError>) -> String {
        match result {
            Err(NativeError::Corrupt(msg)) => msg,
            Err(other) => panic!("expected Corrupt, got {other:?}"),
            Ok(_) => panic!("expected Corrupt, got Ok"),
        }
    }

    /// Decodes and walks every record, as `snapshot_read` does.
    fn full_check(data: Vec<u8>) -> Result<Vec<Owned>, NativeError> {
        let decoded = decode(data, None)?;
        decoded.scan(&Rules::default())?;
        Ok(records_of(&decoded))
    }

    /// Rewrites header bytes with `edit`, then recomputes the digest so only deeper checks
    /// can catch the change.
    fn forge(mut data: Vec<u8>, edit: impl Fn(&mut [u8])) -> Vec<u8> {
        edit(&mut data[..HEADER_LEN]);
        rehash(data)
    }

    /// Recomputes the digest of a file (version 2 or 1) after an edit, as a forger would.
    fn rehash(mut data: Vec<u8>) -> Vec<u8> {
        let ext_len = if data[8] == 1 {
            0
        } else {
            u32::from_le_bytes(array_at(&data, 12)) as usize
        };
        let offset = (HEADER_LEN + ext_len).min(data.len());
        let mut hasher = Sha256::new();
        hasher.update(&data[offset..]);
        hasher.update(&data[..HASHED_LEN]);
        hasher.update(&data[HEADER_LEN..offset]);
        let digest: [u8; 32] = hasher.finalize().into();
        data[HASHED_LEN..HEADER_LEN].copy_from_slice(&digest);
        data
    }

    #[test]
    fn round_trips_with_and_without_compression() {
        let dir = TempDir::new();
        for compression in [Compression::None, Compression::Zstd] {
            let (path, header) = write(&dir, "a.ckpt", &sample(), &options(compression));
            assert_eq!(header.compression, compression);
            assert_eq!(header.entry_count, 4);
            assert_eq!(header.created_at, 1_700_000_000.5);
            assert_eq!(header.file_size(), fs::metadata(&path).expect("stat").len());
            let decoded = read_file(&path, None).expect("read");
            assert_eq!(decoded.header, header);
            assert!(decoded.scan(&Rules::default()).expect("scan").any_expiry);
            assert!(same(&records_of(&decoded), &sample()));
            assert_eq!(verify_file(&path, false, None).expect("quick"), header);
            assert_eq!(verify_file(&path, true, None).expect("deep"), header);
            assert_eq!(read_header(&path).expect("header"), header);
        }
        assert_eq!(dir.names(), vec!["a.ckpt"], "no temporary file is left");
    }

    #[test]
    fn empty_snapshot_round_trips() {
        let dir = TempDir::new();
        let (path, header) = write(&dir, "e.ckpt", &[], &options(Compression::Zstd));
        assert_eq!(header.entry_count, 0);
        let decoded = read_file(&path, None).expect("read");
        assert!(
            !decoded
                .scan(&Rules {
                    str_keys: true,
                    require_prefix: Some(b"x"),
                    reserved_prefix: None
                })
                .expect("scan")
                .any_expiry
        );
        assert!(records_of(&decoded).is_empty());
    }

    #[test]
    fn layout_matches_the_documented_format() {
        let dir = TempDir::new();
        let (path, header) = write(&dir, "l.ckpt", &sample(), &options(Compression::None));
        let data = fs::read(&path).expect("read");
        assert_eq!(&data[0..8], b"SKSNAP\r\n");
        assert_eq!(u16::from_le_bytes([data[8], data[9]]), VERSION);
        assert_eq!(data[10], 0);
        assert_eq!(data[11], 0, "not signed");
        assert_eq!(
            u32::from_le_bytes(array_at(&data, 12)),
            2,
            "extension: an empty prefix"
        );
        assert_eq!(f64::from_le_bytes(array_at(&data, 16)), 1_700_000_000.5);
        assert_eq!(u64::from_le_bytes(array_at(&data, 24)), 4);
        let batch = framing::encode(&sample()).expect("encode");
        assert_eq!(u64::from_le_bytes(array_at(&data, 32)), batch.len() as u64);
        assert_eq!(u64::from_le_bytes(array_at(&data, 40)), batch.len() as u64);
        assert_eq!(&data[HEADER_LEN..HEADER_LEN + 2], &[0, 0]);
        assert_eq!(&data[HEADER_LEN + 2..], &batch[..]);
        let mut hasher = Sha256::new();
        hasher.update(&data[HEADER_LEN + 2..]);
        hasher.update(&data[..HASHED_LEN]);
        hasher.update(&data[HEADER_LEN..HEADER_LEN + 2]);
        let digest: [u8; 32] = hasher.finalize().into();
        assert_eq!(&data[48..80], &digest);
        assert_eq!(header.checksum(), to_hex(&digest));
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let dir = TempDir::new();
        for compression in [Compression::None, Compression::Zstd] {
            let (path, _) = write(&dir, "f.ckpt", &sample(), &options(compression));
            let data = fs::read(&path).expect("read");
            for byte in 0..data.len() {
                for bit in 0..8 {
                    let mut bad = data.clone();
                    bad[byte] ^= 1 << bit;
                    assert!(
                        is_corrupt(full_check(bad.clone())),
                        "{compression:?}: flip of byte {byte} bit {bit} not detected"
                    );
                    fs::write(&path, &bad).expect("write");
                    assert!(
                        is_corrupt(verify_file(&path, false, None)),
                        "quick verify, byte {byte}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_truncation_and_any_extension_is_detected() {
        let dir = TempDir::new();
        for compression in [Compression::None, Compression::Zstd] {
            let (path, _) = write(&dir, "t.ckpt", &sample(), &options(compression));
            let data = fs::read(&path).expect("read");
            for cut in 0..data.len() {
                assert!(is_corrupt(full_check(data[..cut].to_vec())), "cut at {cut}");
                fs::write(&path, &data[..cut]).expect("write");
                assert!(
                    is_corrupt(verify_file(&path, false, None)),
                    "quick verify, cut at {cut}"
                );
                assert!(is_corrupt(read_header(&path)), "header, cut at {cut}");
            }
            let mut longer = data.clone();
            longer.push(0);
            let msg = corrupt_message(full_check(longer));
            assert!(msg.contains("trailing"), "{msg}");
        }
    }

    #[test]
    fn foreign_files_are_rejected_clearly() {
        let msg = corrupt_message(full_check(b"hello, world: not a snapshot at all".to_vec()));
        assert!(msg.contains("not a statekit snapshot"), "{msg}");
        let batch = framing::encode(&sample()).expect("encode");
        let msg = corrupt_message(full_check(batch));
        assert!(msg.contains("bad magic"), "{msg}");
        let msg = corrupt_message(full_check(Vec::new()));
        assert!(msg.contains("truncated"), "{msg}");
        let msg = corrupt_message(full_check(b"SKSN".to_vec()));
        assert!(msg.contains("truncated"), "{msg}");
    }

    #[test]
    fn forged_headers_fail_the_deeper_checks() {
        let dir = TempDir::new();
        let (path, _) = write(&dir, "g.ckpt", &sample(), &options(Compression::Zstd));
        let data = fs::read(&path).expect("read");
        type Edit = Box<dyn Fn(&mut [u8])>;
        let cases: [(&str, Edit); 7] = [
            ("entries", Box::new(|h| h[24] ^= 1)),
            ("header says", Box::new(|h| h[32] ^= 1)),
            ("version 3", Box::new(|h| h[8] = 3)),
            ("compression code 7", Box::new(|h| h[10] = 7)),
            ("unknown flags", Box::new(|h| h[11] = 4)),
            ("extension length", Box::new(|h| h[14] = 1)),
            ("inconsistent", Box::new(|h| h[11] = 1)),
        ];
        for (expected, edit) in cases {
            let msg = corrupt_message(full_check(forge(data.clone(), edit)));
            assert!(msg.contains(expected), "{expected}: {msg}");
        }
        // Claiming the zstd payload is stored as is: the batch magic check catches it.
        let raw = forge(data, |h| h[10] = 0);
        assert!(is_corrupt(full_check(raw)));
    }

    #[test]
    fn messages_name_the_file() {
        let dir = TempDir::new();
        let (path, _) = write(&dir, "n.ckpt", &sample(), &options(Compression::Zstd));
        let mut data = fs::read(&path).expect("read");
        let last = data.len() - 1;
        data[last] ^= 0x80;
        fs::write(&path, &data).expect("write");
        let msg = corrupt_message(verify_file(&path, true, None));
        assert!(
            msg.contains("n.ckpt") && msg.contains("checksum mismatch"),
            "{msg}"
        );
    }

    #[test]
    fn scan_checks_utf8_and_prefix() {
        let dir = TempDir::new();
        let (path, _) = write(&dir, "s.ckpt", &sample(), &options(Compression::None));
        let decoded = read_file(&path, None).expect("read");
        let utf8 = Rules {
            str_keys: true,
            ..Rules::default()
        };
        let job = Rules {
            require_prefix: Some(b"job:"),
            ..Rules::default()
        };
        assert!(matches!(
            decoded.scan(&utf8),
            Err(NativeError::InvalidArgument(msg)) if msg.contains("UTF-8")
        ));
        assert!(matches!(
            decoded.scan(&job),
            Err(NativeError::InvalidArgument(msg)) if msg.contains("prefix")
        ));
        let only_job = vec![(b"job:a".to_vec(), b"1".to_vec(), None)];
        let (path, _) = write(&dir, "p.ckpt", &only_job, &options(Compression::None));
        let decoded = read_file(&path, None).expect("read");
        let both = Rules {
            str_keys: true,
            ..job
        };
        assert!(!decoded.scan(&both).expect("scan").any_expiry);
    }

    #[test]
    fn failed_write_leaves_no_temporary_file_and_the_target_untouched() {
        let dir = TempDir::new();
        // The target is a non-empty directory: the rename fails after the data was written.
        let target = dir.0.join("busy.ckpt");
        fs::create_dir(&target).expect("mkdir");
        fs::write(target.join("inside"), b"x").expect("write");
        let batch = framing::encode(&sample()).expect("encode");
        let err = write_file(&target, &batch, 4, &options(Compression::Zstd)).expect_err("fails");
        match err {
            NativeError::Io { path, .. } => assert_eq!(path, target),
            other => panic!("expected Io, got {other:?}"),
        }
        assert_eq!(dir.names(), vec!["busy.ckpt"]);
        assert_eq!(fs::read(target.join("inside")).expect("read"), b"x");

        let missing = dir.0.join("no-such-dir").join("x.ckpt");
        let err = write_file(&missing, &batch, 4, &options(Compression::None)).expect_err("fails");
        assert!(matches!(err, NativeError::Io { .. }));
    }

    #[test]
    fn rewriting_replaces_the_file_atomically() {
        let dir = TempDir::new();
        let (path, first) = write(&dir, "r.ckpt", &sample(), &options(Compression::Zstd));
        let (_, second) = write(&dir, "r.ckpt", &sample()[..1], &options(Compression::None));
        assert_ne!(first, second);
        assert_eq!(read_file(&path, None).expect("read").header, second);
        assert_eq!(dir.names(), vec!["r.ckpt"]);
    }

    #[test]
    fn non_finite_created_at_is_rejected() {
        let dir = TempDir::new();
        let batch = framing::encode(&sample()).expect("encode");
        let mut opts = options(Compression::None);
        opts.created_at = f64::NAN;
        let err = write_file(&dir.0.join("x.ckpt"), &batch, 4, &opts).expect_err("fails");
        assert!(matches!(err, NativeError::InvalidArgument(_)));
        assert!(dir.names().is_empty());
    }

    const KEY: &[u8] = b"0123456789abcdef-signing-key";

    fn signed(prefix: &'static str, key: Option<&'static [u8]>) -> Options<'static> {
        Options {
            prefix,
            signing_key: key,
            ..options(Compression::Zstd)
        }
    }

    /// A version-1 file of `records`, uncompressed, as statekit 0.1 wrote it.
    fn version_1(records: &[Owned]) -> Vec<u8> {
        let batch = framing::encode(records).expect("encode");
        let mut head = [0u8; HEADER_LEN];
        head[0..8].copy_from_slice(&MAGIC);
        head[8..10].copy_from_slice(&1u16.to_le_bytes());
        head[16..24].copy_from_slice(&1_600_000_000.0f64.to_le_bytes());
        head[24..32].copy_from_slice(&(records.len() as u64).to_le_bytes());
        head[32..40].copy_from_slice(&(batch.len() as u64).to_le_bytes());
        head[40..48].copy_from_slice(&(batch.len() as u64).to_le_bytes());
        let mut data = head.to_vec();
        data.extend_from_slice(&batch);
        rehash(data)
    }

    #[test]
    fn version_1_files_are_still_read() {
        let data = version_1(&sample());
        let decoded = decode(data.clone(), None).expect("decode");
        assert_eq!(decoded.header.version, 1);
        assert_eq!(decoded.header.prefix, None);
        assert_eq!(decoded.header.file_size(), data.len() as u64);
        assert!(same(&records_of(&decoded), &sample()));
        // Never signed: refused when a key is configured.
        let msg = corrupt_message(decode(data, Some(KEY)));
        assert!(msg.contains("not signed"), "{msg}");
    }

    #[test]
    fn the_prefix_is_recorded_and_enforced() {
        let dir = TempDir::new();
        let records = vec![
            (b"job:a".to_vec(), b"1".to_vec(), None),
            (b"job:b".to_vec(), b"2".to_vec(), Some(5.0)),
        ];
        let (path, header) = write(&dir, "p.ckpt", &records, &signed("job:", None));
        assert_eq!(header.prefix.as_deref(), Some("job:"));
        assert_eq!(
            read_header(&path).expect("header").prefix.as_deref(),
            Some("job:")
        );
        assert!(same(
            &records_of(&read_file(&path, None).expect("read")),
            &records
        ));
        // The writer refuses keys outside the prefix it records...
        let batch = framing::encode(&sample()).expect("encode");
        let err = write_file(&dir.0.join("x.ckpt"), &batch, 4, &signed("job:", None));
        assert!(matches!(err, Err(NativeError::InvalidArgument(m)) if m.contains("prefix")));
        // ...and a file that breaks the promise anyway is corrupt.
        let mut file = File::create(dir.0.join("y.ckpt")).expect("create");
        write_payload(
            &mut file,
            &FramedBatch {
                batch: &batch,
                count: 4,
            },
            &signed("job:", None),
        )
        .unwrap_or_else(|_| panic!("write"));
        drop(file);
        let msg = corrupt_message(check_file(&dir.0.join("y.ckpt"), &Rules::default(), None));
        assert!(msg.contains("outside the prefix"), "{msg}");
    }

    #[test]
    fn signed_files_verify_only_with_their_key() {
        let dir = TempDir::new();
        let (path, header) = write(&dir, "s.ckpt", &sample(), &signed("", Some(KEY)));
        assert!(header.tag.is_some());
        assert_eq!(verify_file(&path, false, Some(KEY)).expect("quick"), header);
        assert_eq!(verify_file(&path, true, Some(KEY)).expect("deep"), header);
        assert!(same(
            &records_of(&read_file(&path, Some(KEY)).expect("read")),
            &sample()
        ));
        // Without a key the digest still protects it against accidents.
        assert_eq!(verify_file(&path, true, None).expect("no key"), header);
        let msg = corrupt_message(verify_file(&path, false, Some(b"another key, 16+ bytes")));
        assert!(msg.contains("signature does not verify"), "{msg}");
        // Unsigned files are refused once a key is configured.
        let (plain, _) = write(&dir, "u.ckpt", &sample(), &options(Compression::Zstd));
        let msg = corrupt_message(verify_file(&plain, false, Some(KEY)));
        assert!(msg.contains("not signed"), "{msg}");
        let msg = corrupt_message(read_file(&plain, Some(KEY)));
        assert!(msg.contains("not signed"), "{msg}");
    }

    #[test]
    fn a_planted_file_with_a_recomputed_digest_is_refused() {
        let dir = TempDir::new();
        let (path, _) = write(&dir, "s.ckpt", &sample(), &signed("", Some(KEY)));
        let other = vec![(b"evil".to_vec(), b"x".to_vec(), None)];
        let (forged, _) = write(
            &dir,
            "f.ckpt",
            &other,
            &signed("", Some(b"the attacker's own key")),
        );
        // The attacker writes a file of their own, signed with a key of their own, and
        // recomputes the SHA-256: only the HMAC tells it apart.
        let data = rehash(fs::read(&forged).expect("read"));
        fs::write(&path, &data).expect("write");
        let msg = corrupt_message(read_file(&path, Some(KEY)));
        assert!(msg.contains("signature does not verify"), "{msg}");
        // Flipping the tag of a genuine file: the digest catches it even without a key.
        let (path, _) = write(&dir, "t.ckpt", &sample(), &signed("", Some(KEY)));
        let mut data = fs::read(&path).expect("read");
        data[HEADER_LEN + 2] ^= 1;
        assert!(is_corrupt(decode(data.clone(), None)));
        assert!(is_corrupt(decode(rehash(data), Some(KEY))));
    }

    #[test]
    fn short_signing_keys_are_refused() {
        let dir = TempDir::new();
        let batch = framing::encode(&sample()).expect("encode");
        let err = write_file(
            &dir.0.join("k.ckpt"),
            &batch,
            4,
            &signed("", Some(b"short")),
        );
        assert!(matches!(err, Err(NativeError::InvalidArgument(m)) if m.contains("16 bytes")));
        assert!(dir.names().is_empty());
    }

    /// A zstd frame of `size` zero bytes (RLE blocks: about 4 bytes per 128 KiB).
    fn zeros_frame(size: usize) -> Vec<u8> {
        zstd::bulk::compress(&vec![0u8; size], 19).expect("compress")
    }

    #[test]
    fn a_zstd_bomb_with_a_wrong_digest_is_refused_before_decompressing() {
        // 64 MiB of zeros compress to a few KiB; declare it honestly, get the digest wrong.
        let size = 64 << 20;
        let frame = zeros_frame(size);
        assert!(frame.len() < 8 << 10, "{}", frame.len());
        let header = Header {
            version: VERSION,
            compression: Compression::Zstd,
            created_at: 1.0,
            entry_count: 0,
            uncompressed_size: size as u64,
            payload_size: frame.len() as u64,
            digest: [7; 32],
            prefix: Some(String::new()),
            tag: None,
        };
        let mut data = header.encode().to_vec();
        data.extend_from_slice(&header.extension_body());
        data.extend_from_slice(&frame);
        let msg = corrupt_message(decode(data.clone(), None));
        assert!(msg.contains("checksum mismatch"), "{msg}");
        // With a correct digest it is decompressed (bounded by the declared size), then
        // refused as not a record batch.
        let msg = corrupt_message(decode(rehash(data), None));
        assert!(msg.contains("records are invalid"), "{msg}");
    }

    #[test]
    fn implausible_declared_sizes_are_refused_before_hashing() {
        let dir = TempDir::new();
        let (path, _) = write(&dir, "z.ckpt", &sample(), &options(Compression::Zstd));
        let data = fs::read(&path).expect("read");
        let payload = (data.len() - HEADER_LEN - 2) as u64;
        for size in [payload * MAX_ZSTD_RATIO + 1, MAX_UNCOMPRESSED + 1, u64::MAX] {
            let bad = forge(data.clone(), |h| {
                h[32..40].copy_from_slice(&size.to_le_bytes())
            });
            let msg = corrupt_message(full_check(bad));
            assert!(msg.contains("implausible"), "{size}: {msg}");
        }
        let (path, _) = write(&dir, "n.ckpt", &sample(), &options(Compression::None));
        let data = fs::read(&path).expect("read");
        let bad = forge(data, |h| h[32] ^= 4);
        assert!(corrupt_message(full_check(bad)).contains("implausible"));
    }

    #[test]
    fn out_of_range_creation_times_are_corrupt() {
        let dir = TempDir::new();
        let (path, _) = write(&dir, "c.ckpt", &sample(), &options(Compression::None));
        let data = fs::read(&path).expect("read");
        for bad_time in [1e300, f64::NAN, -1.0, f64::INFINITY, MAX_CREATED_AT + 1.0] {
            let bad = forge(data.clone(), |h| {
                h[16..24].copy_from_slice(&bad_time.to_le_bytes())
            });
            fs::write(&path, &bad).expect("write");
            let msg = corrupt_message(read_header(&path));
            assert!(msg.contains("creation time"), "{bad_time}: {msg}");
        }
    }

    #[test]
    fn only_regular_files_are_opened() {
        let dir = TempDir::new();
        let (target, _) = write(&dir, "real.ckpt", &sample(), &options(Compression::None));
        let link = dir.0.join("link.ckpt");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let sub = dir.0.join("dir.ckpt");
        fs::create_dir(&sub).expect("mkdir");
        let fifo = dir.0.join("fifo.ckpt");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(status.success());
        for (path, what) in [
            (&link, "symbolic link"),
            (&sub, "directory"),
            (&fifo, "FIFO"),
        ] {
            // A FIFO without a writer would block a plain open() forever.
            let msg = corrupt_message(read_header(path));
            assert!(msg.contains(what), "{msg}");
            assert!(is_corrupt(read_file(path, None)));
            assert!(is_corrupt(verify_file(path, false, None)));
        }
    }

    #[test]
    fn strict_rules_refuse_keys_no_backend_can_hold() {
        let dir = TempDir::new();
        let rules = Rules {
            str_keys: true,
            require_prefix: None,
            reserved_prefix: Some(b"{statekit-"),
        };
        let cases: [(&[u8], Option<f64>, &str); 4] = [
            (b"", None, "is empty"),
            (b"\xff\xfe", None, "not UTF-8"),
            (b"{statekit-index:}:lex", None, "reserved"),
            (b"ok", Some(f64::NAN), "NaN"),
        ];
        for (key, expiry, expected) in cases {
            let records = vec![
                (b"fine".to_vec(), b"1".to_vec(), None),
                (key.to_vec(), b"2".to_vec(), expiry),
            ];
            let (path, _) = write(&dir, "k.ckpt", &records, &options(Compression::Zstd));
            let msg = corrupt_message(check_file(&path, &rules, None));
            assert!(msg.contains(expected), "{expected}: {msg}");
        }
        let good = vec![(b"fine".to_vec(), b"1".to_vec(), Some(3.0))];
        let (path, _) = write(&dir, "g.ckpt", &good, &options(Compression::Zstd));
        assert!(check_file(&path, &rules, None).is_ok());
    }

    #[test]
    fn auto_level_picks_fast_mode_for_incompressible_data() {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let random: Vec<u8> = (0..SAMPLE_LEN + 10)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()[0]
            })
            .collect();
        assert_eq!(auto_level(&random), FAST_LEVEL);
        assert_eq!(auto_level(&vec![b'a'; SAMPLE_LEN + 10]), DEFAULT_LEVEL);
        assert_eq!(
            auto_level(&random[..100]),
            DEFAULT_LEVEL,
            "too small to sample"
        );
    }

    #[test]
    fn large_payloads_cross_pipe_chunks() {
        let dir = TempDir::new();
        let big: Vec<Owned> = (0..40_000u32)
            .map(|i| {
                let key = format!("key:{i:08}").into_bytes();
                let value: Vec<u8> = (0..100).map(|j| (i.wrapping_mul(31) ^ j) as u8).collect();
                (key, value, (i % 3 == 0).then_some(f64::from(i)))
            })
            .collect();
        for compression in [Compression::None, Compression::Zstd] {
            let (path, header) = write(&dir, "big.ckpt", &big, &options(compression));
            assert!(header.uncompressed_size > 2 * PIPE_CHUNK as u64);
            let decoded = read_file(&path, None).expect("read");
            assert!(same(&records_of(&decoded), &big));
            assert_eq!(verify_file(&path, false, None).expect("quick"), header);
        }
    }
}
