//! Writing snapshots: the payload compressed on one thread while another hashes and writes
//! it, into a temporary file renamed over the target once fsynced (and verified).

use std::borrow::Cow;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::Mac;
use sha2::{Digest, Sha256};

use super::format::{
    check_signing_key, signature_mac, Compression, Header, DEFAULT_LEVEL, FAST_LEVEL, HASHED_LEN,
    MAX_CREATED_AT, MAX_PREFIX_LEN, SAMPLE_LEN, TAG_LEN, VERSION,
};
use super::read::verify_file;
use crate::errors::NativeError;
use crate::framing::{self, escape};
use crate::records;

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
    /// Sign the file with this key (at least [`MIN_KEY_LEN`](super::format::MIN_KEY_LEN) bytes).
    pub signing_key: Option<&'a [u8]>,
}

fn zstd_err(what: &str, err: &io::Error) -> NativeError {
    NativeError::invalid(format!("zstd {what} failed: {err}"))
}

/// Size of the pieces handed from the compressing thread to the writing thread.
pub(super) const PIPE_CHUNK: usize = 1 << 20;
/// Pieces in flight between the two threads.
const PIPE_DEPTH: usize = 8;

/// Why a pipelined write stopped.
pub(super) enum WriteError {
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
/// records framed on the fly ([`records::Prepared`]).
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

impl<K: AsRef<[u8]> + Sync, V: AsRef<[u8]> + Sync> Framed for records::Prepared<'_, K, V> {
    fn framed_len(&self) -> u64 {
        records::Prepared::framed_len(self)
    }

    fn count(&self) -> u64 {
        records::Prepared::count(self)
    }

    fn for_each_chunk(&self, sink: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        records::Prepared::for_each_chunk(self, sink)
    }

    fn head(&self, len: usize) -> Cow<'_, [u8]> {
        Cow::Owned(records::Prepared::head(self, len))
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
pub(super) fn write_payload(
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
    stage(path, framed, options)?.commit(options, verify)
}

/// A snapshot written to its temporary file, not yet durable nor in place: the first half of
/// [`write_framed`], after which the records are no longer needed.
pub struct Staged<'p> {
    path: &'p Path,
    tmp: PathBuf,
    file: File,
    header: Header,
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> NativeError + '_ {
    move |source| NativeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl WriteError {
    fn at(self, path: &Path) -> NativeError {
        match self {
            Self::Encode(e) => e,
            Self::Io(source) => io_at(path)(source),
        }
    }
}

/// Writes the header and the payload of `framed` to a new temporary file next to `path`
/// (removed on failure).
pub fn stage<'p>(
    path: &'p Path,
    framed: &dyn Framed,
    options: &Options<'_>,
) -> Result<Staged<'p>, NativeError> {
    let tmp = temp_path(path)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(io_at(path))?;
    match write_payload(&mut file, framed, options) {
        Ok(header) => Ok(Staged {
            path,
            tmp,
            file,
            header,
        }),
        Err(err) => {
            drop(file);
            // Best effort: the write already failed and that error is the one to report.
            let _ = fs::remove_file(&tmp);
            Err(err.at(path))
        }
    }
}

impl Staged<'_> {
    /// Fsyncs the temporary file (verifying it meanwhile with `verify`), renames it over the
    /// target and fsyncs the directory; on failure the temporary file is removed.
    pub fn commit(self, options: &Options<'_>, verify: bool) -> Result<Header, NativeError> {
        let Self {
            path,
            tmp,
            file,
            header,
        } = self;
        let done = (|| -> Result<(), WriteError> {
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
            fs::rename(&tmp, path).map_err(WriteError::Io)
        })();
        if let Err(err) = done {
            // Best effort: the write already failed and that error is the one to report.
            let _ = fs::remove_file(&tmp);
            return Err(err.at(path));
        }
        let dir = parent_dir(path);
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_at(dir))?;
        Ok(header)
    }
}
