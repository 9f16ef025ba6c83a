//! The snapshot format: constants, the header and its extension (encoding, parsing, every
//! check that needs no hashing), and the digest and signature checks over stored bytes.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::checksum::to_hex;
use crate::errors::NativeError;
use crate::framing::escape;

/// First eight bytes of every snapshot file.
pub const MAGIC: [u8; 8] = *b"SKSNAP\r\n";
/// The format version this build writes.
pub const VERSION: u16 = 2;
/// The oldest format version this build still reads (no recorded prefix, never signed).
pub const VERSION_1: u16 = 1;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 80;
/// The header bytes covered by the digest (everything before the digest itself).
pub(super) const HASHED_LEN: usize = 48;
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
/// level 1. Level -20 rather than -5: on 1M 100-byte random values the file is 2.9% larger
/// (104.9 MB, the msgpack + zstd level 1 baseline is 102.6 MB) and the checkpoint faster.
pub const FAST_LEVEL: i32 = -20;
/// Size of the sample compressed to choose between the two.
pub(super) const SAMPLE_LEN: usize = 1 << 20;
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
    pub(super) fn encode(&self) -> [u8; HEADER_LEN] {
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
    pub(super) fn extension_body(&self) -> Vec<u8> {
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

pub(super) fn array_at<const N: usize>(data: &[u8], offset: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = data.get(offset..offset + N) {
        out.copy_from_slice(src);
    }
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
pub(super) fn signature_mac(
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
pub(super) fn check_stored_bytes(
    header: &Header,
    data: &[u8],
    key: Option<&[u8]>,
) -> Result<(), NativeError> {
    let offset = header.payload_offset();
    let mut hasher = Sha256::new();
    hasher.update(data.get(offset..).unwrap_or_default());
    finish_checks(header, hasher, data, key)
}

/// Completes the checks once `hasher` has seen the payload: `head` holds the header and the
/// extension.
pub(super) fn finish_checks(
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
