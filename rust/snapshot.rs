//! Checkpoint snapshot files: a versioned header, a framed record batch (optionally zstd),
//! and a SHA-256 that covers both; written atomically, verified before anything is trusted.
//!
//! # Format (version 1)
//!
//! All integers are little-endian. A snapshot is an 80-byte header followed by the payload.
//!
//! ```text
//! header:
//!   offset  size  field
//!   0       8     magic              b"SKSNAP\r\n"
//!   8       2     format version     u16, 1
//!   10      1     compression        u8: 0 = none, 1 = zstd
//!   11      5     reserved           0 (any other value is rejected)
//!   16      8     created at         f64, unix seconds (UTC)
//!   24      8     entry count        u64, records in the batch
//!   32      8     uncompressed size  u64, length of the framed batch
//!   40      8     payload size       u64, bytes after the header
//!   48      32    SHA-256            of the payload followed by header bytes 0..48
//! payload:
//!   the record batch of `framing` (magic b"SKRB", its own CRC-32), as is or as one zstd frame
//! ```
//!
//! The digest covers every header field and every payload byte, and the digest itself is
//! compared, so any flipped bit is detected; the payload size is checked against the file
//! size, so any truncation (or appended bytes) is detected before hashing. A full check
//! (`verify` with `deep`, and every `read`) also decompresses the payload, checks its size,
//! validates the batch (CRC-32 and every record) and compares its count with the header.
//!
//! The digest covers the payload first so that it can be computed while the payload is being
//! compressed and written, before its size (a header field) is known.
//!
//! # Atomic, pipelined writes
//!
//! [`write_file`] writes a temporary file `.{name}.{pid}.{n}.tmp` next to the target (created
//! exclusively): a zeroed header, then the payload, which is compressed on the calling thread
//! while a second thread hashes and writes what comes out; then the real header at offset 0.
//! It fsyncs the file, renames it over the target and fsyncs the directory. On failure the
//! temporary file is removed and the target is untouched; a process killed mid-write can leave
//! the temporary file behind, which is why its name is recognisable (the checkpoint
//! coordinator sweeps them).
//!
//! # GIL
//!
//! `snapshot_write` reads each Python record once while attached, copying it into the batch;
//! everything else (CRC, compression, SHA-256, the write, fsyncs, rename) runs detached.
//! `snapshot_read` and `snapshot_verify` do all file reading, hashing (on a second thread,
//! in parallel with decompression) and validation detached; `snapshot_read` then re-attaches
//! only to build the list of Python tuples.

use std::borrow::Cow;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::time::{SystemTime, UNIX_EPOCH};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};
use sha2::{Digest, Sha256};

use crate::checksum::{to_hex, type_name, FILE_CHUNK};
use crate::errors::NativeError;
use crate::framing::{self, BatchWriter};

/// First eight bytes of every snapshot file.
pub const MAGIC: [u8; 8] = *b"SKSNAP\r\n";
/// The only format version this build reads and writes.
pub const VERSION: u16 = 1;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 80;
/// The header bytes covered by the digest (everything before the digest itself).
const HASHED_LEN: usize = 48;
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

/// The decoded header of a snapshot file.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// Format version (always [`VERSION`] once parsed).
    pub version: u16,
    /// How the payload is stored.
    pub compression: Compression,
    /// Creation time, unix seconds.
    pub created_at: f64,
    /// Number of records.
    pub entry_count: u64,
    /// Length of the framed batch before compression.
    pub uncompressed_size: u64,
    /// Bytes after the header.
    pub payload_size: u64,
    /// SHA-256 of the payload followed by header bytes `0..48`.
    pub digest: [u8; 32],
}

impl Header {
    /// Size of the whole file this header describes.
    pub fn file_size(&self) -> u64 {
        self.payload_size.saturating_add(HEADER_LEN as u64)
    }

    /// Lowercase hex of the digest.
    pub fn checksum(&self) -> String {
        to_hex(&self.digest)
    }

    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&self.version.to_le_bytes());
        out[10] = self.compression.code();
        out[16..24].copy_from_slice(&self.created_at.to_le_bytes());
        out[24..32].copy_from_slice(&self.entry_count.to_le_bytes());
        out[32..40].copy_from_slice(&self.uncompressed_size.to_le_bytes());
        out[40..48].copy_from_slice(&self.payload_size.to_le_bytes());
        out[48..80].copy_from_slice(&self.digest);
        out
    }

    /// Parses and checks the header at the start of `data`, for a file of `file_len` bytes.
    ///
    /// Checks everything that can be checked without hashing: magic, version, compression,
    /// reserved bytes, and that the payload size matches the file size.
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
        if version != VERSION {
            return Err(NativeError::corrupt(format!(
                "unsupported snapshot format version {version} (this build reads version {VERSION})"
            )));
        }
        let Some(compression) = Compression::from_code(data[10]) else {
            return Err(NativeError::corrupt(format!(
                "unknown snapshot compression code {} (expected 0 = none or 1 = zstd)",
                data[10]
            )));
        };
        if data[11..16].iter().any(|&b| b != 0) {
            return Err(NativeError::corrupt(
                "snapshot header has non-zero reserved bytes (altered or written by a newer statekit)",
            ));
        }
        let created_at = f64::from_le_bytes(array_at(data, 16));
        let entry_count = u64::from_le_bytes(array_at(data, 24));
        let uncompressed_size = u64::from_le_bytes(array_at(data, 32));
        let payload_size = u64::from_le_bytes(array_at(data, 40));
        let digest: [u8; 32] = array_at(data, 48);
        let expected = u128::from(payload_size) + HEADER_LEN as u128;
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
        Ok(Self {
            version,
            compression,
            created_at,
            entry_count,
            uncompressed_size,
            payload_size,
            digest,
        })
    }
}

/// `N` bytes of `data` from `offset`; the caller has checked the length.
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

fn digest_of(payload: &[u8], hashed_header: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(payload);
    hasher.update(hashed_header);
    hasher.finalize().into()
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

/// How to build a snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// How to store the payload.
    pub compression: Compression,
    /// zstd level (1..=22), used with [`Compression::Zstd`]; `None` picks one ([`auto_level`]).
    pub level: Option<i32>,
    /// Creation time to record, unix seconds.
    pub created_at: f64,
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

/// Sends the payload of `batch` down `tx`: zstd-compressed pieces, or slices of the batch.
fn produce<'a>(
    batch: &'a [u8],
    options: &Options,
    tx: SyncSender<Cow<'a, [u8]>>,
) -> Result<(), WriteError> {
    match options.compression {
        Compression::None => {
            for piece in batch.chunks(PIPE_CHUNK) {
                if tx.send(Cow::Borrowed(piece)).is_err() {
                    break; // the writer failed; its error is the one reported
                }
            }
            Ok(())
        }
        Compression::Zstd => {
            let pipe = PipeWriter {
                tx,
                buf: Vec::with_capacity(PIPE_CHUNK),
            };
            let encode = || -> io::Result<()> {
                let level = options.level.unwrap_or_else(|| auto_level(batch));
                let mut encoder = zstd::stream::write::Encoder::new(pipe, level)?;
                encoder.include_contentsize(true)?;
                encoder.set_pledged_src_size(Some(batch.len() as u64))?;
                encoder.write_all(batch)?;
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

/// Writes the header placeholder and the payload to `file`; returns the header (digest set).
fn write_payload(
    file: &mut File,
    batch: &[u8],
    entry_count: u64,
    options: &Options,
) -> Result<Header, WriteError> {
    file.write_all(&[0u8; HEADER_LEN]).map_err(WriteError::Io)?;
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
        let produced = produce(batch, options, tx);
        (produced, writer.join())
    });
    let written = written
        .map_err(|_| WriteError::Io(io::Error::other("the writing thread panicked")))?
        .map_err(WriteError::Io)?;
    produced?;
    let (mut hasher, payload_size) = written;
    let mut header = Header {
        version: VERSION,
        compression: options.compression,
        created_at: options.created_at,
        entry_count,
        uncompressed_size: batch.len() as u64,
        payload_size,
        digest: [0; 32],
    };
    hasher.update(&header.encode()[..HASHED_LEN]);
    header.digest = hasher.finalize().into();
    file.write_all_at(&header.encode(), 0)
        .map_err(WriteError::Io)?;
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
    options: &Options,
) -> Result<Header, NativeError> {
    if !options.created_at.is_finite() {
        return Err(NativeError::invalid(format!(
            "created_at must be a finite unix time, got {}",
            options.created_at
        )));
    }
    let tmp = temp_path(path)?;
    let written = (|| -> Result<Header, WriteError> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(WriteError::Io)?;
        let header = write_payload(&mut file, batch, entry_count, options)?;
        file.sync_all().map_err(WriteError::Io)?;
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
/// The digest, the sizes, the batch header and its CRC-32 have been checked; the records are
/// checked by [`Decoded::scan`].
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

impl Decoded {
    /// The framed record batch.
    pub fn batch(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or_default()
    }

    /// Walks every record once: each must be well formed (`Corrupt` otherwise); with
    /// `str_keys`, each key must be UTF-8, and with `prefix`, start with it
    /// (`InvalidArgument` otherwise: the file is sound, the caller's expectation is not).
    pub fn scan(&self, str_keys: bool, prefix: Option<&[u8]>) -> Result<Scan, NativeError> {
        let batch = framing::open(self.batch())?;
        let mut any_expiry = false;
        for (index, record) in batch.records().enumerate() {
            let record = record
                .map_err(|e| NativeError::corrupt(format!("snapshot records are invalid: {e}")))?;
            if str_keys && std::str::from_utf8(record.key).is_err() {
                return Err(NativeError::invalid(format!(
                    "record {index}: key {} is not UTF-8; read it with str_keys=False",
                    escape(record.key)
                )));
            }
            if let Some(prefix) = prefix {
                if !record.key.starts_with(prefix) {
                    return Err(NativeError::invalid(format!(
                        "record {index}: key {} does not start with the required prefix {}",
                        escape(record.key),
                        escape(prefix)
                    )));
                }
            }
            any_expiry |= record.expires_at.is_some();
        }
        Ok(Scan { any_expiry })
    }
}

fn decompress(payload: &[u8], size: u64) -> Result<Vec<u8>, NativeError> {
    let size = usize::try_from(size).map_err(|_| {
        NativeError::corrupt(format!("snapshot uncompressed size {size} is implausible"))
    })?;
    // The zstd frame records its own content size; a header that disagrees is corrupt, and
    // checking first keeps a damaged size field from driving a huge allocation.
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
/// The digest is computed on a second thread while the payload is decompressed; nothing is
/// returned unless both the digest and the batch header and CRC check out (a digest mismatch
/// is reported in preference to any decoding error).
pub fn decode(data: Vec<u8>) -> Result<Decoded, NativeError> {
    let header = Header::parse(&data, data.len() as u64)?;
    let hashed = data.get(..HASHED_LEN).unwrap_or_default();
    let payload = data.get(HEADER_LEN..).unwrap_or_default();
    let decompressed = match header.compression {
        Compression::None => {
            check_digest(&header, &digest_of(payload, hashed))?;
            None
        }
        Compression::Zstd => {
            let (digest, inflated) = std::thread::scope(|s| {
                let hasher = s.spawn(|| digest_of(payload, hashed));
                let inflated = decompress(payload, header.uncompressed_size);
                (hasher.join(), inflated)
            });
            let digest = digest.map_err(|_| NativeError::invalid("the hashing thread failed"))?;
            check_digest(&header, &digest)?;
            Some(inflated?)
        }
    };
    let (buf, start) = match decompressed {
        Some(buf) => (buf, 0),
        None => (data, HEADER_LEN),
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
    let batch = framing::open(batch_bytes)
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

/// Reads and verifies the snapshot at `path`, records not yet walked (see [`Decoded::scan`]).
pub fn read_file(path: &Path) -> Result<Decoded, NativeError> {
    let data = fs::read(path).map_err(io_error(path))?;
    decode(data).map_err(in_file(path))
}

/// Reads the snapshot at `path` and checks everything, every record included.
pub fn check_file(
    path: &Path,
    str_keys: bool,
    prefix: Option<&[u8]>,
) -> Result<(Decoded, Scan), NativeError> {
    let decoded = read_file(path)?;
    let scan = decoded.scan(str_keys, prefix).map_err(|e| match e {
        NativeError::InvalidArgument(msg) => {
            NativeError::invalid(format!("checkpoint file {}: {msg}", path.display()))
        }
        other => in_file(path)(other),
    })?;
    Ok((decoded, scan))
}

/// Reads the header of the snapshot at `path` without hashing (checks its shape and size).
pub fn read_header(path: &Path) -> Result<Header, NativeError> {
    let mut file = File::open(path).map_err(io_error(path))?;
    let file_len = file.metadata().map_err(io_error(path))?.len();
    let mut head = Vec::with_capacity(HEADER_LEN);
    Read::by_ref(&mut file)
        .take(HEADER_LEN as u64)
        .read_to_end(&mut head)
        .map_err(io_error(path))?;
    Header::parse(&head, file_len).map_err(in_file(path))
}

/// Checks the header and the digest of the file at `path`, streaming it; with `deep`, also
/// decompresses and validates every record (as [`read_file`] does).
pub fn verify_file(path: &Path, deep: bool) -> Result<Header, NativeError> {
    if deep {
        return check_file(path, false, None).map(|(d, _)| d.header);
    }
    let mut file = File::open(path).map_err(io_error(path))?;
    let file_len = file.metadata().map_err(io_error(path))?.len();
    let mut head = Vec::with_capacity(HEADER_LEN);
    Read::by_ref(&mut file)
        .take(HEADER_LEN as u64)
        .read_to_end(&mut head)
        .map_err(io_error(path))?;
    let header = Header::parse(&head, file_len).map_err(in_file(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; FILE_CHUNK];
    let mut seen: u64 = 0;
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
    hasher.update(head.get(..HASHED_LEN).unwrap_or_default());
    check_digest(&header, &hasher.finalize().into()).map_err(in_file(path))?;
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
        }
    }
}

#[pymethods]
impl PySnapshotInfo {
    fn __repr__(&self) -> String {
        format!(
            "SnapshotInfo(version={}, compression={:?}, created_at={}, entry_count={}, \
             uncompressed_size={}, file_size={}, checksum={:?})",
            self.version,
            self.compression,
            self.created_at,
            self.entry_count,
            self.uncompressed_size,
            self.file_size,
            self.checksum
        )
    }
}

const RECORD_SHAPE: &str = "a (key: str | bytes, value: bytes, expires_at: float | None) tuple";

fn push_record(writer: &mut BatchWriter, item: &Bound<'_, PyAny>, index: usize) -> PyResult<()> {
    let Ok(tuple) = item.cast::<PyTuple>() else {
        return Err(PyTypeError::new_err(format!(
            "record {index} must be {RECORD_SHAPE}, got {}",
            type_name(item)
        )));
    };
    if tuple.len() != 3 {
        return Err(PyTypeError::new_err(format!(
            "record {index} must be {RECORD_SHAPE}, got a tuple of length {}",
            tuple.len()
        )));
    }
    let (key, value, expiry) = (
        tuple.get_borrowed_item(0)?,
        tuple.get_borrowed_item(1)?,
        tuple.get_borrowed_item(2)?,
    );
    push_fields(writer, &key, &value, Some(&expiry), index)
}

/// Appends one record from its fields; `expiry` None stands for Python's None.
fn push_fields(
    writer: &mut BatchWriter,
    key: &Bound<'_, PyAny>,
    value: &Bound<'_, PyAny>,
    expiry: Option<&Bound<'_, PyAny>>,
    index: usize,
) -> PyResult<()> {
    let key_bytes: &[u8] = if let Ok(s) = key.cast::<PyString>() {
        s.to_str()?.as_bytes()
    } else if let Ok(b) = key.cast::<PyBytes>() {
        b.as_bytes()
    } else {
        return Err(PyTypeError::new_err(format!(
            "record {index}: key must be str or bytes, got {}",
            type_name(key)
        )));
    };
    let Ok(value) = value.cast::<PyBytes>() else {
        return Err(PyTypeError::new_err(format!(
            "record {index}: value must be bytes, got {}",
            type_name(value)
        )));
    };
    let expires_at = match expiry {
        Some(e) if !e.is_none() => Some(e.extract::<f64>().map_err(|_| {
            PyTypeError::new_err(format!(
                "record {index}: expires_at must be a float or None, got {}",
                type_name(e)
            ))
        })?),
        _ => None,
    };
    Ok(writer.push(key_bytes, value.as_bytes(), expires_at)?)
}

/// `keys`, `values` and `expires_at` of a column-wise record set.
type PyColumns<'py> = (
    Bound<'py, PyList>,
    Bound<'py, PyList>,
    Option<Bound<'py, PyList>>,
);

/// The `keys`, `values` and `expires_at` lists of a column-wise record set (such as
/// `statekit.backends.base.ItemColumns`), or None if `records` is not one.
fn columns_of<'py>(records: &Bound<'py, PyAny>) -> Option<PyColumns<'py>> {
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

/// Appends every record of column-wise records; returns the count.
fn push_columns(
    writer: &mut BatchWriter,
    (keys, values, expires): &PyColumns<'_>,
) -> PyResult<u64> {
    let len = keys.len();
    let mismatch = |what: &str, n: usize| {
        PyValueError::new_err(format!("records has {len} keys but {n} {what}"))
    };
    if values.len() != len {
        return Err(mismatch("values", values.len()));
    }
    if let Some(expires) = expires {
        if expires.len() != len {
            return Err(mismatch("expiries", expires.len()));
        }
    }
    let mut index = 0;
    // By index, re-checking the lengths: converting an expiry (a float subclass) could run
    // Python code that changes the lists.
    while index < keys.len() && index < values.len() {
        let (key, value) = (keys.get_item(index)?, values.get_item(index)?);
        let expiry = match expires {
            Some(e) if index < e.len() => Some(e.get_item(index)?),
            Some(_) => return Err(mismatch("expiries", index)),
            None => None,
        };
        push_fields(writer, &key, &value, expiry.as_ref(), index)?;
        index += 1;
    }
    Ok(index as u64)
}

/// Copies Python records into a batch writer (attached), returning the writer and the count.
fn collect_records(records: &Bound<'_, PyAny>) -> PyResult<(BatchWriter, u64)> {
    if records.is_instance_of::<PyBytes>() || records.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(format!(
            "records must be a sequence of {RECORD_SHAPE}s, got {}",
            type_name(records)
        )));
    }
    if let Some(columns) = columns_of(records) {
        let len = columns.0.len();
        let per_record = match len {
            0 => 0,
            _ => 17 + field_len(&columns.0.get_item(0)?) + field_len(&columns.1.get_item(0)?),
        };
        let mut writer = BatchWriter::with_capacity(
            len.saturating_mul(per_record + per_record / 8)
                .min(framing::MAX_PREALLOC),
        );
        let count = push_columns(&mut writer, &columns)?;
        return Ok((writer, count));
    }
    let mut count: u64 = 0;
    if let Ok(list) = records.cast::<PyList>() {
        // Records are usually alike: size the buffer from the first one (plus an eighth).
        let per_record = match list.len() {
            0 => 0,
            _ => estimate_size(&list.get_item(0)?),
        };
        let mut writer = BatchWriter::with_capacity(
            list.len()
                .saturating_mul(per_record + per_record / 8)
                .min(framing::MAX_PREALLOC),
        );
        let mut index = 0;
        // By index, re-reading the length: converting an expiry (a float subclass) could
        // run Python code that changes the list.
        while index < list.len() {
            push_record(&mut writer, &list.get_item(index)?, index)?;
            index += 1;
            count += 1;
        }
        Ok((writer, count))
    } else {
        let mut writer = BatchWriter::default();
        let iter = records.try_iter().map_err(|_| {
            PyTypeError::new_err(format!(
                "records must be an iterable of {RECORD_SHAPE}s, got {}",
                type_name(records)
            ))
        })?;
        for (index, item) in iter.enumerate() {
            push_record(&mut writer, &item?, index)?;
            count += 1;
        }
        Ok((writer, count))
    }
}

/// Length of a `str` (as UTF-8) or `bytes` field; 0 for anything else.
fn field_len(field: &Bound<'_, PyAny>) -> usize {
    if let Ok(s) = field.cast::<PyString>() {
        s.to_str().map_or(0, str::len)
    } else if let Ok(b) = field.cast::<PyBytes>() {
        b.as_bytes().len()
    } else {
        0
    }
}

/// Encoded size of one record, if it has the expected shape (0 otherwise).
fn estimate_size(item: &Bound<'_, PyAny>) -> usize {
    let Ok(tuple) = item.cast::<PyTuple>() else {
        return 0;
    };
    let len = |i: usize| tuple.get_borrowed_item(i).map_or(0, |f| field_len(&f));
    // key_len u32 + value_len u32 + flag u8 + expiry f64, then key and value.
    17 + len(0) + len(1)
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `snapshot_write(path, records, *, compress=True, level=None, created_at=None)` -> info.
#[pyfunction]
#[pyo3(signature = (path, records, *, compress = true, level = None, created_at = None))]
pub fn snapshot_write(
    py: Python<'_>,
    path: PathBuf,
    records: &Bound<'_, PyAny>,
    compress: bool,
    level: Option<i32>,
    created_at: Option<f64>,
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
    };
    let (writer, count) = collect_records(records)?;
    let header = py.detach(|| write_file(&path, &writer.finish(), count, &options))?;
    Ok(PySnapshotInfo::from(&header))
}

/// `snapshot_info(path)` -> header of a snapshot, checked for shape and size, not hashed.
#[pyfunction]
pub fn snapshot_info(py: Python<'_>, path: PathBuf) -> PyResult<PySnapshotInfo> {
    let header = py.detach(|| read_header(&path))?;
    Ok(PySnapshotInfo::from(&header))
}

/// `snapshot_verify(path, *, deep=True)` -> header of a verified snapshot.
#[pyfunction]
#[pyo3(signature = (path, *, deep = true))]
pub fn snapshot_verify(py: Python<'_>, path: PathBuf, deep: bool) -> PyResult<PySnapshotInfo> {
    let header = py.detach(|| verify_file(&path, deep))?;
    Ok(PySnapshotInfo::from(&header))
}

/// The columns `snapshot_read` returns: keys, values, and expiries (None when no record has one).
type Columns<'py> = (
    PySnapshotInfo,
    Bound<'py, PyList>,
    Bound<'py, PyList>,
    Option<Bound<'py, PyList>>,
);

/// `snapshot_read(path, *, str_keys=True, require_prefix=None)` ->
/// `(info, keys, values, expires_at | None)`.
#[pyfunction]
#[pyo3(signature = (path, *, str_keys = true, require_prefix = None))]
pub fn snapshot_read<'py>(
    py: Python<'py>,
    path: PathBuf,
    str_keys: bool,
    require_prefix: Option<&str>,
) -> PyResult<Columns<'py>> {
    let prefix = require_prefix.map(str::as_bytes).filter(|p| !p.is_empty());
    let (decoded, scan) = py.detach(|| check_file(&path, str_keys, prefix))?;
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

    fn options(compression: Compression) -> Options {
        Options {
            compression,
            level: None,
            created_at: 1_700_000_000.5,
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
        let decoded = decode(data)?;
        decoded.scan(false, None)?;
        Ok(records_of(&decoded))
    }

    /// Rewrites header bytes with `edit`, then recomputes the digest so only deeper checks
    /// can catch the change.
    fn forge(mut data: Vec<u8>, edit: impl Fn(&mut [u8])) -> Vec<u8> {
        edit(&mut data[..HEADER_LEN]);
        let digest = digest_of(&data[HEADER_LEN..], &data[..HASHED_LEN]);
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
            let decoded = read_file(&path).expect("read");
            assert_eq!(decoded.header, header);
            assert!(decoded.scan(false, None).expect("scan").any_expiry);
            assert!(same(&records_of(&decoded), &sample()));
            assert_eq!(verify_file(&path, false).expect("quick"), header);
            assert_eq!(verify_file(&path, true).expect("deep"), header);
            assert_eq!(read_header(&path).expect("header"), header);
        }
        assert_eq!(dir.names(), vec!["a.ckpt"], "no temporary file is left");
    }

    #[test]
    fn empty_snapshot_round_trips() {
        let dir = TempDir::new();
        let (path, header) = write(&dir, "e.ckpt", &[], &options(Compression::Zstd));
        assert_eq!(header.entry_count, 0);
        let decoded = read_file(&path).expect("read");
        assert!(!decoded.scan(true, Some(b"x")).expect("scan").any_expiry);
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
        assert_eq!(&data[11..16], &[0; 5]);
        assert_eq!(f64::from_le_bytes(array_at(&data, 16)), 1_700_000_000.5);
        assert_eq!(u64::from_le_bytes(array_at(&data, 24)), 4);
        let batch = framing::encode(&sample()).expect("encode");
        assert_eq!(u64::from_le_bytes(array_at(&data, 32)), batch.len() as u64);
        assert_eq!(u64::from_le_bytes(array_at(&data, 40)), batch.len() as u64);
        assert_eq!(&data[HEADER_LEN..], &batch[..]);
        let mut hasher = Sha256::new();
        hasher.update(&data[HEADER_LEN..]);
        hasher.update(&data[..HASHED_LEN]);
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
                        is_corrupt(verify_file(&path, false)),
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
                    is_corrupt(verify_file(&path, false)),
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
        let cases: [(&str, Edit); 5] = [
            ("entries", Box::new(|h| h[24] ^= 1)),
            ("header says", Box::new(|h| h[32] ^= 1)),
            ("version 2", Box::new(|h| h[8] = 2)),
            ("compression code 7", Box::new(|h| h[10] = 7)),
            ("reserved", Box::new(|h| h[13] = 1)),
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
        let msg = corrupt_message(verify_file(&path, true));
        assert!(
            msg.contains("n.ckpt") && msg.contains("checksum mismatch"),
            "{msg}"
        );
    }

    #[test]
    fn scan_checks_utf8_and_prefix() {
        let dir = TempDir::new();
        let (path, _) = write(&dir, "s.ckpt", &sample(), &options(Compression::None));
        let decoded = read_file(&path).expect("read");
        assert!(matches!(
            decoded.scan(true, None),
            Err(NativeError::InvalidArgument(msg)) if msg.contains("UTF-8")
        ));
        assert!(matches!(
            decoded.scan(false, Some(b"job:")),
            Err(NativeError::InvalidArgument(msg)) if msg.contains("prefix")
        ));
        let only_job = vec![(b"job:a".to_vec(), b"1".to_vec(), None)];
        let (path, _) = write(&dir, "p.ckpt", &only_job, &options(Compression::None));
        let decoded = read_file(&path).expect("read");
        assert!(!decoded.scan(true, Some(b"job:")).expect("scan").any_expiry);
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
        assert_eq!(read_file(&path).expect("read").header, second);
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
            let decoded = read_file(&path).expect("read");
            assert!(same(&records_of(&decoded), &big));
            assert_eq!(verify_file(&path, false).expect("quick"), header);
        }
    }
}
