//! Records as three columns (keys, values, expiries): where Python inputs become records.
//!
//! [`Columns`] is the pure kernel: it frames records (the layout of [`crate::framing`]) into
//! caller-owned chunks, computes the batch's body CRC-32 on two threads, and checks sizes and
//! a key prefix, all without the GIL. [`columns_from_py`] is the one extraction of Python
//! records into it: while attached it takes a reference to every key and value
//! ([`PyBackedStr`]/[`PyBackedBytes`]: immutable objects, kept alive, readable detached), so
//! the copying, hashing and compressing that follow run detached, on both cores.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::{PyBackedBytes, PyBackedStr};
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

use crate::checksum::type_name;
use crate::errors::NativeError;
use crate::framing;

/// Size of the chunks records are framed into (before compression or hashing).
pub const CHUNK: usize = 1 << 20;

/// A key as given by Python: `str` (its UTF-8) or `bytes`.
pub enum Key {
    /// A `str` key, as UTF-8.
    Str(PyBackedStr),
    /// A `bytes` key.
    Bytes(PyBackedBytes),
}

impl AsRef<[u8]> for Key {
    fn as_ref(&self) -> &[u8] {
        match self {
            Self::Str(s) => s.as_bytes(),
            Self::Bytes(b) => b,
        }
    }
}

/// Records as parallel columns; `expires` is None when no record expires.
pub struct Columns<K, V> {
    /// Record keys.
    pub keys: Vec<K>,
    /// Record values (same length as `keys`).
    pub values: Vec<V>,
    /// Record expiries (same length as `keys`), or None when none expires.
    pub expires: Option<Vec<Option<f64>>>,
}

/// Columns checked by [`Columns::prepare`]: ready to be framed, with their batch header.
pub struct Prepared<'a, K, V> {
    columns: &'a Columns<K, V>,
    header: [u8; framing::HEADER_LEN],
    body_len: u64,
}

impl<K: AsRef<[u8]> + Sync, V: AsRef<[u8]> + Sync> Columns<K, V> {
    /// Number of records.
    pub fn len(&self) -> usize {
        self.keys.len().min(self.values.len())
    }

    /// Whether there is no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn expiry(&self, index: usize) -> Option<f64> {
        self.expires
            .as_ref()
            .and_then(|e| e.get(index).copied().flatten())
    }

    /// Appends record `index` to `out` (the framing layout).
    fn put(&self, index: usize, out: &mut Vec<u8>) {
        let (key, value) = (self.keys[index].as_ref(), self.values[index].as_ref());
        framing::put_record(out, key, value, self.expiry(index));
    }

    /// Frames records `start..end` into `out` until it holds at least `limit` bytes (or the
    /// records run out); returns the index of the next record to frame.
    fn frame_into(&self, start: usize, end: usize, out: &mut Vec<u8>, limit: usize) -> usize {
        let mut index = start;
        while index < end && out.len() < limit {
            self.put(index, out);
            index += 1;
        }
        index
    }

    /// CRC-32 of the framed records `start..end`.
    fn crc_of(&self, start: usize, end: usize) -> crc32fast::Hasher {
        let mut hasher = crc32fast::Hasher::new();
        let mut buf = Vec::with_capacity(CHUNK + 1024);
        let mut index = start;
        while index < end {
            buf.clear();
            index = self.frame_into(index, end, &mut buf, CHUNK);
            hasher.update(&buf);
        }
        hasher
    }

    /// Checks every record (key and value under 4 GiB, key under `prefix`) and returns the
    /// length of the framed body.
    pub fn measure(&self, prefix: &[u8]) -> Result<u64, NativeError> {
        let n = self.len();
        let mut body_len: u64 = 0;
        for index in 0..n {
            let (key, value) = (self.keys[index].as_ref(), self.values[index].as_ref());
            let limit = u32::MAX as usize;
            if key.len() > limit || value.len() > limit {
                let what = if key.len() > limit { "key" } else { "value" };
                return Err(NativeError::invalid(format!(
                    "record {index}: {what} is {} bytes; the limit is {limit} bytes",
                    key.len().max(value.len())
                )));
            }
            if !prefix.is_empty() && !key.starts_with(prefix) {
                return Err(NativeError::invalid(format!(
                    "record {index}: key {} does not start with the snapshot's prefix {}",
                    framing::escape(key),
                    framing::escape(prefix)
                )));
            }
            let expiry = if self.expiry(index).is_some() { 8 } else { 0 };
            body_len += (9 + expiry + key.len() + value.len()) as u64;
        }
        Ok(body_len)
    }

    /// Frames the whole batch into `out`, a buffer of exactly the header plus the `body_len`
    /// that [`Self::measure`] returned (allocated once by the caller, such as a new `bytes`),
    /// then computes the CRC-32 over what it wrote and fills in the header.
    pub fn encode_into(&self, out: &mut [u8], body_len: u64) -> Result<(), NativeError> {
        if out.len() as u64 != framing::HEADER_LEN as u64 + body_len {
            return Err(NativeError::invalid(
                "a framed batch does not fit the buffer made for it",
            ));
        }
        let (header, body) = out.split_at_mut(framing::HEADER_LEN);
        let mut pos = 0;
        for index in 0..self.len() {
            let (key, value) = (self.keys[index].as_ref(), self.values[index].as_ref());
            pos = framing::write_record(body, pos, key, value, self.expiry(index))?;
        }
        let crc = crc32fast::hash(body);
        header.copy_from_slice(&framing::batch_header(self.len() as u64, body_len, crc));
        Ok(())
    }

    /// Checks every record like [`Self::measure`], computes the body's CRC-32 (two threads,
    /// each framing half the records into a small reused buffer), and returns the columns
    /// ready to frame.
    pub fn prepare(&self, prefix: &[u8]) -> Result<Prepared<'_, K, V>, NativeError> {
        let n = self.len();
        let body_len = self.measure(prefix)?;
        let mid = n / 2;
        let crc = if n < 4096 {
            self.crc_of(0, n)
        } else {
            let (first, second) = std::thread::scope(|s| {
                let second = s.spawn(|| self.crc_of(mid, n));
                let first = self.crc_of(0, mid);
                (first, second.join())
            });
            let mut crc = first;
            match second {
                Ok(second) => crc.combine(&second),
                Err(_) => return Err(NativeError::invalid("the CRC thread panicked")),
            }
            crc
        };
        let crc = crc.finalize();
        Ok(Prepared {
            columns: self,
            header: framing::batch_header(n as u64, body_len, crc),
            body_len,
        })
    }
}

impl<K: AsRef<[u8]> + Sync, V: AsRef<[u8]> + Sync> Prepared<'_, K, V> {
    /// Number of records.
    pub fn count(&self) -> u64 {
        self.columns.len() as u64
    }

    /// Length of the framed batch (header and body).
    pub fn framed_len(&self) -> u64 {
        self.body_len + framing::HEADER_LEN as u64
    }

    /// Hands the framed batch to `sink` in pieces of about [`CHUNK`] bytes, in order.
    pub fn for_each_chunk<E>(&self, mut sink: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        let n = self.columns.len();
        let mut buf = Vec::with_capacity(CHUNK + 1024);
        buf.extend_from_slice(&self.header);
        let mut index = 0;
        loop {
            index = self.columns.frame_into(index, n, &mut buf, CHUNK);
            if buf.is_empty() {
                return Ok(());
            }
            sink(&buf)?;
            buf.clear();
        }
    }

    /// The first `len` bytes of the framed batch (or all of it if shorter).
    pub fn head(&self, len: usize) -> Vec<u8> {
        let mut buf = Vec::with_capacity(len + 1024);
        buf.extend_from_slice(&self.header);
        self.columns
            .frame_into(0, self.columns.len(), &mut buf, len);
        buf
    }
}

/// Which Python records an entry point accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Snapshots: `str` or `bytes` keys; records as tuples, or the three columns as a
    /// `(keys, values, expires_at)` tuple of lists.
    Snapshot,
    /// Record batches (`encode_records`): `bytes` keys; records as tuples or 3-item lists.
    Batch,
}

impl Shape {
    fn record(self) -> &'static str {
        match self {
            Self::Snapshot => "a (key: str | bytes, value: bytes, expires_at: float | None) tuple",
            Self::Batch => "a (key: bytes, value: bytes, expires_at: float | None) tuple",
        }
    }
}

/// Python records, extracted: keys, values and expiries.
pub type PyColumns = Columns<Key, PyBackedBytes>;

fn key_of(key: &Bound<'_, PyAny>, index: usize, shape: Shape) -> PyResult<Key> {
    if let Ok(b) = key.cast::<PyBytes>() {
        return Ok(Key::Bytes(PyBackedBytes::from(b.clone())));
    }
    match key.cast::<PyString>() {
        Ok(s) if shape == Shape::Snapshot => Ok(Key::Str(PyBackedStr::try_from(s.clone())?)),
        _ => Err(PyTypeError::new_err(format!(
            "record {index}: key must be {}, got {}",
            if shape == Shape::Snapshot {
                "str or bytes"
            } else {
                "bytes"
            },
            type_name(key)
        ))),
    }
}

fn value_of(value: &Bound<'_, PyAny>, index: usize) -> PyResult<PyBackedBytes> {
    match value.cast::<PyBytes>() {
        Ok(b) => Ok(PyBackedBytes::from(b.clone())),
        Err(_) => Err(PyTypeError::new_err(format!(
            "record {index}: value must be bytes, got {}",
            type_name(value)
        ))),
    }
}

fn expiry_of(expiry: &Bound<'_, PyAny>, index: usize) -> PyResult<Option<f64>> {
    if expiry.is_none() {
        return Ok(None);
    }
    expiry.extract::<f64>().map(Some).map_err(|_| {
        PyTypeError::new_err(format!(
            "record {index}: expires_at must be a float or None, got {}",
            type_name(expiry)
        ))
    })
}

/// Extracts Python records into columns: [`columns_from_lists`] for a `(keys, values,
/// expires_at)` tuple of lists (snapshots only), else [`columns_from_items`].
///
/// The column form is told apart by types alone: a tuple of three items whose first item is
/// a list (a record is a tuple, never a list, in [`Shape::Snapshot`]).
pub fn columns_from_py(records: &Bound<'_, PyAny>, shape: Shape) -> PyResult<PyColumns> {
    if shape == Shape::Snapshot {
        if let Ok(tuple) = records.cast::<PyTuple>() {
            if tuple.len() == 3 {
                if let Ok(keys) = tuple.get_item(0)?.cast_into::<PyList>() {
                    return columns_from_tuple(&keys, tuple);
                }
            }
        }
    }
    columns_from_items(records, shape)
}

/// The `(keys, values, expires_at)` form of [`columns_from_py`], `keys` already a list.
fn columns_from_tuple(keys: &Bound<'_, PyList>, tuple: &Bound<'_, PyTuple>) -> PyResult<PyColumns> {
    let values = tuple.get_item(1)?;
    let Ok(values) = values.cast::<PyList>() else {
        return Err(PyTypeError::new_err(format!(
            "records as columns: values must be a list, got {}",
            type_name(&values)
        )));
    };
    let expires = tuple.get_item(2)?;
    if expires.is_none() {
        return columns_from_lists(keys, values, None);
    }
    match expires.cast::<PyList>() {
        Ok(expires) => columns_from_lists(keys, values, Some(expires)),
        Err(_) => Err(PyTypeError::new_err(format!(
            "records as columns: expires_at must be a list or None, got {}",
            type_name(&expires)
        ))),
    }
}

/// Extracts three explicit lists (keys, values, expiries or None) into columns.
///
/// Walks them by index, re-checking the lengths at each step: converting an expiry (a float
/// subclass) could run Python code that changes the lists.
pub fn columns_from_lists(
    keys: &Bound<'_, PyList>,
    values: &Bound<'_, PyList>,
    expires: Option<&Bound<'_, PyList>>,
) -> PyResult<PyColumns> {
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
    let mut out = Columns {
        keys: Vec::with_capacity(len),
        values: Vec::with_capacity(len),
        expires: None,
    };
    let mut expiries: Vec<Option<f64>> = Vec::new();
    let mut any_expiry = false;
    let mut index = 0;
    while index < keys.len() && index < values.len() {
        out.keys
            .push(key_of(&keys.get_item(index)?, index, Shape::Snapshot)?);
        out.values.push(value_of(&values.get_item(index)?, index)?);
        if let Some(e) = expires {
            if index >= e.len() {
                return Err(mismatch("expiries", index));
            }
            let at = expiry_of(&e.get_item(index)?, index)?;
            if at.is_some() && !any_expiry {
                any_expiry = true;
                expiries.reserve_exact(len);
                expiries.resize(index, None);
            }
            if any_expiry {
                expiries.push(at);
            }
        }
        index += 1;
    }
    if any_expiry {
        out.expires = Some(expiries);
    }
    Ok(out)
}

/// Appends one record (a 3-tuple, or a 3-item list for [`Shape::Batch`]) to `out`.
fn push_record(
    out: &mut PyColumns,
    expiries: &mut Vec<Option<f64>>,
    item: &Bound<'_, PyAny>,
    index: usize,
    shape: Shape,
) -> PyResult<()> {
    let bad_shape = |what: String| {
        PyTypeError::new_err(format!(
            "record {index} must be {}, got {what}",
            shape.record()
        ))
    };
    let (key, value, expiry) = if let Ok(tuple) = item.cast::<PyTuple>() {
        if tuple.len() != 3 {
            return Err(bad_shape(format!("a tuple of length {}", tuple.len())));
        }
        (tuple.get_item(0)?, tuple.get_item(1)?, tuple.get_item(2)?)
    } else if let (Shape::Batch, Ok(list)) = (shape, item.cast::<PyList>()) {
        if list.len() != 3 {
            return Err(bad_shape(format!("a list of length {}", list.len())));
        }
        (list.get_item(0)?, list.get_item(1)?, list.get_item(2)?)
    } else {
        return Err(bad_shape(type_name(item)));
    };
    out.keys.push(key_of(&key, index, shape)?);
    out.values.push(value_of(&value, index)?);
    expiries.push(expiry_of(&expiry, index)?);
    Ok(())
}

/// Extracts a list or iterable of `(key, value, expires_at)` records into columns.
pub fn columns_from_items(records: &Bound<'_, PyAny>, shape: Shape) -> PyResult<PyColumns> {
    if records.is_instance_of::<PyBytes>() || records.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(format!(
            "records must be a sequence of {}s, got {}",
            shape.record(),
            type_name(records)
        )));
    }
    let mut out = Columns {
        keys: Vec::new(),
        values: Vec::new(),
        expires: None,
    };
    let mut expiries = Vec::new();
    if let Ok(list) = records.cast::<PyList>() {
        // A list's length is real (unlike an iterable's `__len__`): reserve it.
        out.keys.reserve_exact(list.len());
        out.values.reserve_exact(list.len());
        expiries.reserve_exact(list.len());
        let mut index = 0;
        // By index, re-reading the length: converting an expiry could change the list.
        while index < list.len() {
            push_record(
                &mut out,
                &mut expiries,
                &list.get_item(index)?,
                index,
                shape,
            )?;
            index += 1;
        }
    } else {
        let iter = records.try_iter().map_err(|_| {
            PyTypeError::new_err(format!(
                "records must be an iterable of {}s, got {}",
                shape.record(),
                type_name(records)
            ))
        })?;
        for (index, item) in iter.enumerate() {
            push_record(&mut out, &mut expiries, &item?, index, shape)?;
        }
    }
    if expiries.iter().any(Option::is_some) {
        out.expires = Some(expiries);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(n: usize, with_expiry: bool) -> Columns<Vec<u8>, Vec<u8>> {
        Columns {
            keys: (0..n).map(|i| format!("p:{i}").into_bytes()).collect(),
            values: (0..n).map(|i| vec![(i % 251) as u8; i % 300]).collect(),
            expires: with_expiry.then(|| {
                (0..n)
                    .map(|i| (i % 3 == 0).then_some(i as f64 + 0.5))
                    .collect()
            }),
        }
    }

    fn framed(prepared: &Prepared<'_, Vec<u8>, Vec<u8>>) -> Vec<u8> {
        let mut out = Vec::new();
        prepared
            .for_each_chunk(|piece| -> Result<(), ()> {
                out.extend_from_slice(piece);
                Ok(())
            })
            .expect("frame");
        out
    }

    #[test]
    fn frames_exactly_like_the_batch_writer() {
        for n in [0, 1, 5, 4095, 4096, 20_000] {
            for with_expiry in [false, true] {
                let cols = columns(n, with_expiry);
                let prepared = cols.prepare(b"p:").expect("prepare");
                let records: Vec<(&[u8], &[u8], Option<f64>)> = (0..n)
                    .map(|i| {
                        (
                            cols.keys[i].as_slice(),
                            cols.values[i].as_slice(),
                            cols.expiry(i),
                        )
                    })
                    .collect();
                let expected = framing::encode(&records).expect("encode");
                let out = framed(&prepared);
                assert_eq!(out, expected, "n={n} expiry={with_expiry}");
                assert_eq!(prepared.framed_len(), expected.len() as u64);
                assert_eq!(prepared.count(), n as u64);
                let head = prepared.head(1000);
                assert_eq!(head[..], expected[..head.len()]);
            }
        }
    }

    #[test]
    fn a_key_outside_the_prefix_is_refused() {
        let cols = columns(10, false);
        assert!(matches!(
            cols.prepare(b"q:"),
            Err(NativeError::InvalidArgument(_))
        ));
    }
}
