//! Record batches: a checksummed binary framing of `(key, value, expires_at)` records.
//!
//! # Format (version 1)
//!
//! All integers are little-endian. A batch is a 28-byte header followed by the body.
//!
//! ```text
//! header:
//!   offset  size  field
//!   0       4     magic            b"SKRB"
//!   4       1     format version   1
//!   5       1     flags            0 (any other value is rejected)
//!   6       2     reserved         0 (any other value is rejected)
//!   8       8     record count     u64
//!   16      8     body length      u64, bytes after the header
//!   24      4     body CRC-32      u32, standard CRC-32 (zlib.crc32) of the body
//! body, per record:
//!   key_len     u32
//!   value_len   u32
//!   has_expiry  u8, 0 or 1
//!   expires_at  f64, only if has_expiry == 1 (absolute unix time, seconds)
//!   key         key_len bytes
//!   value       value_len bytes
//! ```
//!
//! Decoding rejects, with `CorruptData`: a wrong magic, an unknown version, non-zero flags or
//! reserved bits, a truncated header or body, trailing bytes, a CRC mismatch, and a record
//! count that does not match the body. The header fields are all checked and the CRC covers
//! the body, so any single flipped bit is detected.
//!
//! # GIL
//!
//! `encode_records` takes a reference to each key and value while attached (one pass, through
//! [`crate::records`], the one place Python records are read), then frames them and computes
//! the body CRC detached. `decode_records` checks the header, the CRC and every
//! record detached ([`validate`]), then walks the records again attached to build the list of
//! tuples (re-reading the lengths is cheaper than materialising an intermediate `Vec`).

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::checksum::BytesLike;
use crate::errors::NativeError;
use crate::records;

/// First four bytes of every batch.
pub const MAGIC: [u8; 4] = *b"SKRB";
/// The only format version this build reads and writes.
pub const VERSION: u8 = 1;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 28;
/// Smallest possible encoded record (two lengths and the expiry flag).
const MIN_RECORD_LEN: usize = 9;

/// One decoded record, borrowing its key and value from the buffer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Record<'a> {
    /// The key bytes.
    pub key: &'a [u8],
    /// The value bytes.
    pub value: &'a [u8],
    /// Absolute expiry (unix seconds), if any.
    pub expires_at: Option<f64>,
}

fn len_u32(len: usize, index: u64, what: &str) -> Result<u32, NativeError> {
    u32::try_from(len).map_err(|_| {
        NativeError::invalid(format!(
            "record {index}: {what} is {len} bytes; the limit is {} bytes",
            u32::MAX
        ))
    })
}

/// Builds a batch one record at a time.
///
/// The header is written with placeholders first and completed by [`BatchWriter::finish`],
/// so records can be appended as they are read (one pass over the caller's objects).
pub struct BatchWriter {
    out: Vec<u8>,
    count: u64,
}

impl Default for BatchWriter {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl BatchWriter {
    /// A writer with room for `body_bytes` of records before it reallocates.
    pub fn with_capacity(body_bytes: usize) -> Self {
        let mut out = Vec::with_capacity(HEADER_LEN.saturating_add(body_bytes));
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&[VERSION, 0, 0, 0]); // version, flags, reserved u16
        out.extend_from_slice(&[0; 20]); // count, body length, CRC: set by finish()
        Self { out, count: 0 }
    }

    /// Appends one record.
    ///
    /// Fails with `InvalidArgument` if the key or value is 4 GiB or larger.
    pub fn push(
        &mut self,
        key: &[u8],
        value: &[u8],
        expires_at: Option<f64>,
    ) -> Result<(), NativeError> {
        len_u32(key.len(), self.count, "key")?;
        len_u32(value.len(), self.count, "value")?;
        put_record(&mut self.out, key, value, expires_at);
        self.count += 1;
        Ok(())
    }

    /// Completes the header (count, body length, CRC) and returns the batch.
    pub fn finish(mut self) -> Vec<u8> {
        let (header, body) = self.out.split_at_mut(HEADER_LEN);
        let crc = crc32fast::hash(body);
        header.copy_from_slice(&batch_header(self.count, body.len() as u64, crc));
        self.out
    }
}

/// Appends one record to `out` (the body layout above). The caller has checked that the key
/// and the value are shorter than 4 GiB.
#[inline]
pub fn put_record(out: &mut Vec<u8>, key: &[u8], value: &[u8], expires_at: Option<f64>) {
    out.reserve(MIN_RECORD_LEN + 8 + key.len() + value.len());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    match expires_at {
        Some(at) => {
            out.push(1);
            out.extend_from_slice(&at.to_le_bytes());
        }
        None => out.push(0),
    }
    out.extend_from_slice(key);
    out.extend_from_slice(value);
}

/// Writes one record into `buf` at `pos` (sized by the caller, the lengths checked); returns
/// the end position.
pub fn write_record(
    buf: &mut [u8],
    pos: usize,
    key: &[u8],
    value: &[u8],
    expires_at: Option<f64>,
) -> Result<usize, NativeError> {
    let head = 9 + if expires_at.is_some() { 8 } else { 0 };
    let end = pos + head + key.len() + value.len();
    let Some(out) = buf.get_mut(pos..end) else {
        return Err(NativeError::invalid(
            "a record does not fit the buffer made for the batch",
        ));
    };
    out[0..4].copy_from_slice(&(key.len() as u32).to_le_bytes());
    out[4..8].copy_from_slice(&(value.len() as u32).to_le_bytes());
    match expires_at {
        Some(at) => {
            out[8] = 1;
            out[9..17].copy_from_slice(&at.to_le_bytes());
        }
        None => out[8] = 0,
    }
    out[head..head + key.len()].copy_from_slice(key);
    out[head + key.len()..].copy_from_slice(value);
    Ok(end)
}

/// The header of a batch of `count` records whose body is `body_len` bytes with CRC-32 `crc`.
pub fn batch_header(count: u64, body_len: u64, crc: u32) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[0..4].copy_from_slice(&MAGIC);
    header[4] = VERSION;
    header[8..16].copy_from_slice(&count.to_le_bytes());
    header[16..24].copy_from_slice(&body_len.to_le_bytes());
    header[24..28].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Encodes records into one batch.
///
/// Fails with `InvalidArgument` if a key or value is 4 GiB or larger.
pub fn encode<K, V>(records: &[(K, V, Option<f64>)]) -> Result<Vec<u8>, NativeError>
where
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    let mut writer = BatchWriter::default();
    for (key, value, expires_at) in records {
        writer.push(key.as_ref(), value.as_ref(), *expires_at)?;
    }
    Ok(writer.finish())
}

/// A cursor over a byte slice that never reads out of bounds.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let slice = self.data.get(self.pos..end)?;
        self.pos = end;
        Some(slice)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }
}

/// A header-checked, CRC-checked batch; iterate it with [`Batch::records`].
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    count: u64,
    body: &'a [u8],
}

impl<'a> Batch<'a> {
    /// The record count from the header.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Iterates the records; yields an error (and then stops) at the first malformed one.
    pub fn records(&self) -> Records<'a> {
        Records {
            reader: Reader {
                data: self.body,
                pos: 0,
            },
            index: 0,
            count: self.count,
            failed: false,
        }
    }
}

/// Iterator over the records of a [`Batch`].
pub struct Records<'a> {
    reader: Reader<'a>,
    index: u64,
    count: u64,
    failed: bool,
}

impl<'a> Records<'a> {
    fn parse_one(&mut self) -> Result<Record<'a>, NativeError> {
        let index = self.index;
        let truncated = |what: &str| {
            NativeError::corrupt(format!(
                "record {index} of {}: {what} runs past the end of the body (record count or lengths corrupted)",
                self.count
            ))
        };
        if self.reader.remaining() == 0 {
            return Err(NativeError::corrupt(format!(
                "record count mismatch: header says {} records, but the body ends after {index}",
                self.count
            )));
        }
        let r = &mut self.reader;
        let key_len = r.array::<4>().map(u32::from_le_bytes);
        let value_len = r.array::<4>().map(u32::from_le_bytes);
        let flag = r.array::<1>().map(|[b]| b);
        let (Some(key_len), Some(value_len), Some(flag)) = (key_len, value_len, flag) else {
            return Err(truncated("record header"));
        };
        let expires_at = match flag {
            0 => None,
            1 => match r.array::<8>() {
                Some(raw) => Some(f64::from_le_bytes(raw)),
                None => return Err(truncated("expiry")),
            },
            other => {
                return Err(NativeError::corrupt(format!(
                    "record {index}: invalid expiry flag {other} (expected 0 or 1)"
                )))
            }
        };
        let Some(key) = r.take(key_len as usize) else {
            return Err(truncated("key"));
        };
        let Some(value) = r.take(value_len as usize) else {
            return Err(truncated("value"));
        };
        Ok(Record {
            key,
            value,
            expires_at,
        })
    }

    fn finish(&mut self) -> Option<Result<Record<'a>, NativeError>> {
        let left = self.reader.remaining();
        if left == 0 {
            return None;
        }
        self.failed = true;
        Some(Err(NativeError::corrupt(format!(
            "record count mismatch: header says {} records, but {left} bytes remain after them",
            self.count
        ))))
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, NativeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.index >= self.count {
            return self.finish();
        }
        let item = self.parse_one();
        self.index += 1;
        if item.is_err() {
            self.failed = true;
        }
        Some(item)
    }
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    if let Some(src) = bytes.get(at..at + 8) {
        raw.copy_from_slice(src);
    }
    u64::from_le_bytes(raw)
}

/// Checks the header, the length and the CRC of a batch (not the records themselves).
pub fn open(data: &[u8]) -> Result<Batch<'_>, NativeError> {
    let batch = open_header(data)?;
    check_crc(data, &batch)?;
    Ok(batch)
}

/// The header and length checks of [`open`].
fn open_header(data: &[u8]) -> Result<Batch<'_>, NativeError> {
    let magic_part = &data[..data.len().min(MAGIC.len())];
    if magic_part != &MAGIC[..magic_part.len()] {
        return Err(NativeError::corrupt(format!(
            "not a statekit record batch (bad magic {})",
            escape(magic_part)
        )));
    }
    if data.len() < HEADER_LEN {
        return Err(NativeError::corrupt(format!(
            "framed buffer truncated: expected at least {HEADER_LEN} header bytes, got {}",
            data.len()
        )));
    }
    let version = data[4];
    if version != VERSION {
        return Err(NativeError::corrupt(format!(
            "unsupported record batch format version {version} (this build reads version {VERSION})"
        )));
    }
    let (flags, reserved) = (data[5], u16::from_le_bytes([data[6], data[7]]));
    if flags != 0 || reserved != 0 {
        return Err(NativeError::corrupt(format!(
            "record batch header has unknown flags 0x{flags:02x} / reserved 0x{reserved:04x} (expected 0)"
        )));
    }
    let count = read_u64(data, 8);
    let body_len = read_u64(data, 16);
    let expected = usize::try_from(body_len)
        .ok()
        .and_then(|n| n.checked_add(HEADER_LEN));
    let Some(expected) = expected.filter(|&n| n <= data.len()) else {
        return Err(NativeError::corrupt(format!(
            "framed buffer truncated: expected {} bytes, got {}",
            u128::from(body_len) + HEADER_LEN as u128,
            data.len()
        )));
    };
    if expected < data.len() {
        return Err(NativeError::corrupt(format!(
            "framed buffer has {} trailing bytes: expected {expected} bytes, got {}",
            data.len() - expected,
            data.len()
        )));
    }
    let body = &data[HEADER_LEN..];
    if count > (body.len() / MIN_RECORD_LEN) as u64 {
        return Err(NativeError::corrupt(format!(
            "record count mismatch: header says {count} records, which cannot fit in {} body bytes",
            body.len()
        )));
    }
    Ok(Batch { count, body })
}

/// Checks the header and the length of a batch like [`open`], but not its CRC: for a batch
/// whose integrity is otherwise established (see [`check_crc`]).
pub fn open_unchecked_crc(data: &[u8]) -> Result<Batch<'_>, NativeError> {
    open_header(data)
}

/// Checks the CRC-32 of `batch`, opened from `data` by [`open_unchecked_crc`].
pub fn check_crc(data: &[u8], batch: &Batch<'_>) -> Result<(), NativeError> {
    let stored_crc = u32::from_le_bytes([data[24], data[25], data[26], data[27]]);
    let actual_crc = crc32fast::hash(batch.body);
    if actual_crc != stored_crc {
        return Err(NativeError::corrupt(format!(
            "checksum mismatch: header says 0x{stored_crc:08x}, body hashes to 0x{actual_crc:08x} (buffer corrupted)"
        )));
    }
    Ok(())
}

/// Checks a whole batch, records included, without building anything.
pub fn validate(data: &[u8]) -> Result<Batch<'_>, NativeError> {
    let batch = open(data)?;
    for record in batch.records() {
        record?;
    }
    Ok(batch)
}

/// Decodes a batch into borrowed records.
pub fn decode(data: &[u8]) -> Result<Vec<Record<'_>>, NativeError> {
    open(data)?.records().collect()
}

/// `bytes` as a Python bytes literal, for messages.
pub(crate) fn escape(bytes: &[u8]) -> String {
    let mut out = String::from("b'");
    for &b in bytes {
        out.extend(std::ascii::escape_default(b).map(char::from));
    }
    out.push('\'');
    out
}

/// `encode_records(records)` -> bytes of one record batch.
///
/// The records are extracted by [`records::columns_from_items`] (a reference to every key and
/// value, one pass), then framed detached straight into the result (one allocation, no
/// intermediate buffer), and the CRC-32 computed over it.
#[pyfunction]
pub fn encode_records<'py>(
    py: Python<'py>,
    records: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    let columns = records::columns_from_items(records, records::Shape::Batch)?;
    let body_len = py.detach(|| columns.measure(b""))?;
    let total = usize::try_from(body_len)
        .ok()
        .and_then(|n| n.checked_add(HEADER_LEN))
        .ok_or_else(|| NativeError::invalid("the record batch is too large for memory"))?;
    // The new bytes object is not shared yet: filling it detached is safe.
    let encoded = PyBytes::new_with(py, total, |buf| {
        Ok(py.detach(|| columns.encode_into(buf, body_len))?)
    })?;
    // The references to the keys and values are released here, attached.
    drop(columns);
    Ok(encoded)
}

/// `decode_records(data)` -> list of `(key, value, expires_at)` tuples.
///
/// Checks the header, the CRC and every record detached, collecting the record bounds, then
/// builds the list at its final size.
#[pyfunction]
pub fn decode_records<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyList>> {
    let data = BytesLike::extract(data, "data")?;
    let records = py.detach(|| decode(&data))?;
    PyList::new(
        py,
        records.iter().map(|r| {
            (
                PyBytes::new(py, r.key),
                PyBytes::new(py, r.value),
                r.expires_at,
            )
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    type Owned = (Vec<u8>, Vec<u8>, Option<f64>);

    fn sample() -> Vec<Owned> {
        vec![
            (b"alpha".to_vec(), b"one".to_vec(), None),
            (b"".to_vec(), b"".to_vec(), Some(1.5)),
            (vec![0, 255, 10], vec![7; 300], Some(f64::INFINITY)),
            (b"k".to_vec(), b"v".to_vec(), Some(-0.0)),
        ]
    }

    fn round_trip(records: &[Owned]) -> Vec<Owned> {
        let data = encode(records).expect("encode");
        decode(&data)
            .expect("decode")
            .into_iter()
            .map(|r| (r.key.to_vec(), r.value.to_vec(), r.expires_at))
            .collect()
    }

    fn is_corrupt<T: std::fmt::Debug>(result: Result<T, NativeError>) -> bool {
        matches!(result, Err(NativeError::Corrupt(_)))
    }

    #[test]
    fn empty_batch_is_just_a_header() {
        let data = encode::<&[u8], &[u8]>(&[]).expect("encode");
        assert_eq!(data.len(), HEADER_LEN);
        assert_eq!(&data[..4], b"SKRB");
        assert!(decode(&data).expect("decode").is_empty());
    }

    #[test]
    fn round_trips() {
        let records = sample();
        let back = round_trip(&records);
        assert_eq!(back.len(), records.len());
        for (a, b) in records.iter().zip(&back) {
            assert_eq!(a.0, b.0);
            assert_eq!(a.1, b.1);
            assert_eq!(a.2.map(f64::to_bits), b.2.map(f64::to_bits));
        }
    }

    #[test]
    fn nan_expiry_keeps_its_bits() {
        let records = vec![(b"k".to_vec(), b"v".to_vec(), Some(f64::NAN))];
        let back = round_trip(&records);
        assert_eq!(back[0].2.map(f64::to_bits), Some(f64::NAN.to_bits()));
    }

    #[test]
    fn layout_matches_the_documented_format() {
        let data = encode(&[(b"ab", b"xyz", Some(2.0))]).expect("encode");
        let body_len = 4 + 4 + 1 + 8 + 2 + 3;
        assert_eq!(data.len(), HEADER_LEN + body_len);
        assert_eq!(data[4], VERSION);
        assert_eq!(&data[5..8], &[0, 0, 0]);
        assert_eq!(read_u64(&data, 8), 1);
        assert_eq!(read_u64(&data, 16), body_len as u64);
        let crc = u32::from_le_bytes([data[24], data[25], data[26], data[27]]);
        assert_eq!(crc, crc32fast::hash(&data[HEADER_LEN..]));
        assert_eq!(&data[28..32], &2u32.to_le_bytes());
        assert_eq!(&data[32..36], &3u32.to_le_bytes());
        assert_eq!(data[36], 1);
        assert_eq!(&data[37..45], &2.0f64.to_le_bytes());
        assert_eq!(&data[45..], b"abxyz");
    }

    #[test]
    fn every_truncation_is_corrupt() {
        let data = encode(&sample()).expect("encode");
        for cut in 0..data.len() {
            assert!(is_corrupt(decode(&data[..cut])), "cut at {cut}");
        }
    }

    #[test]
    fn trailing_bytes_are_corrupt() {
        let mut data = encode(&sample()).expect("encode");
        data.push(0);
        assert!(is_corrupt(decode(&data)));
    }

    #[test]
    fn every_single_bit_flip_is_corrupt() {
        let data = encode(&sample()).expect("encode");
        for byte in 0..data.len() {
            for bit in 0..8 {
                let mut bad = data.clone();
                bad[byte] ^= 1 << bit;
                assert!(is_corrupt(decode(&bad)), "flip byte {byte} bit {bit}");
            }
        }
    }

    #[test]
    fn bad_magic_and_version_messages() {
        let mut data = encode(&sample()).expect("encode");
        data[0] = b'X';
        match decode(&data) {
            Err(NativeError::Corrupt(msg)) => assert!(msg.contains("bad magic"), "{msg}"),
            other => panic!("{other:?}"),
        }
        data[0] = b'S';
        data[4] = 2;
        match decode(&data) {
            Err(NativeError::Corrupt(msg)) => assert!(msg.contains("version 2"), "{msg}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn count_mismatch_with_a_valid_crc_is_corrupt() {
        // Rewrite the count so the CRC (which covers only the body) still matches.
        let mut data = encode(&sample()).expect("encode");
        data[8..16].copy_from_slice(&3u64.to_le_bytes());
        match decode(&data) {
            Err(NativeError::Corrupt(msg)) => assert!(msg.contains("count mismatch"), "{msg}"),
            other => panic!("{other:?}"),
        }
        data[8..16].copy_from_slice(&5u64.to_le_bytes());
        assert!(is_corrupt(decode(&data)));
        data[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(is_corrupt(decode(&data)));
    }

    #[test]
    fn huge_body_length_is_truncation_not_overflow() {
        let mut data = encode(&sample()).expect("encode");
        data[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        match decode(&data) {
            Err(NativeError::Corrupt(msg)) => assert!(msg.contains("truncated"), "{msg}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_expiry_flag_is_corrupt() {
        let mut data = encode(&[(b"k", b"v", None)]).expect("encode");
        data[HEADER_LEN + 8] = 2;
        let crc = crc32fast::hash(&data[HEADER_LEN..]);
        data[24..28].copy_from_slice(&crc.to_le_bytes());
        match decode(&data) {
            Err(NativeError::Corrupt(msg)) => assert!(msg.contains("expiry flag"), "{msg}"),
            other => panic!("{other:?}"),
        }
    }
}
