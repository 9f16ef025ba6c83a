//! Reading snapshots: opening only regular files, verifying the stored bytes before
//! decompressing into a bounded buffer, walking the records against the caller's rules, and
//! the streaming verification used by `snapshot_verify` and `snapshot_info`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::format::{
    check_stored_bytes, finish_checks, Compression, Header, HEADER_LEN, MAX_EXTENSION_LEN,
};
use crate::checksum::FILE_CHUNK;
use crate::errors::NativeError;
use crate::framing::{self, escape};

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
pub(super) fn in_file(path: &Path) -> impl Fn(NativeError) -> NativeError + '_ {
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
pub(super) fn scan_file(
    path: &Path,
    decoded: &Decoded,
    rules: &Rules<'_>,
) -> Result<Scan, NativeError> {
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
