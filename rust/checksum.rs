//! SHA-256 of buffers and files, as lowercase hex.
//!
//! `sha256(data)` equals `hashlib.sha256(data).hexdigest()` for any bytes-like `data`;
//! `sha256_file(path)` streams the file through a 1 MiB buffer. Both hash with the GIL
//! released. `sha2` picks the SHA-NI / AVX2 code path at run time (via `cpufeatures`).
//!
//! `Sha256Hasher` is the incremental form, fed chunk by chunk (large chunks hashed with the
//! GIL released), used to hash a stream while it is being written.
//!
//! This module also holds `BytesLike`, the shared extraction of a bytes-like argument
//! (`bytes`, `bytearray`, `memoryview` or any other buffer-protocol object).

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyByteArray, PyBytes, PyString};
use sha2::{Digest, Sha256};

use crate::errors::NativeError;

/// Size of the read buffer used by [`sha256_file_hex`].
pub const FILE_CHUNK: usize = 1 << 20;

/// Lowercase hex of a byte string.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// SHA-256 of `data` as lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    to_hex(&Sha256::digest(data))
}

/// SHA-256 of everything `reader` yields, as lowercase hex.
pub fn sha256_reader_hex<R: Read>(mut reader: R) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; FILE_CHUNK];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n.min(buf.len())]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(to_hex(&hasher.finalize()))
}

/// SHA-256 of the file at `path` as lowercase hex, read in [`FILE_CHUNK`] pieces.
pub fn sha256_file_hex(path: &Path) -> Result<String, NativeError> {
    let io_err = |source| NativeError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    sha256_reader_hex(file).map_err(io_err)
}

/// The bytes of a bytes-like Python argument, safe to read with the GIL released.
///
/// `bytes` are borrowed without copying (they are immutable); `bytearray`, `memoryview` and
/// other buffer-protocol objects are copied while attached, because another thread could
/// mutate them once the GIL is released.
pub(crate) enum BytesLike {
    Shared(PyBackedBytes),
    Owned(Vec<u8>),
}

impl Deref for BytesLike {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Self::Shared(b) => b,
            Self::Owned(v) => v,
        }
    }
}

impl BytesLike {
    /// Extracts `obj`; `TypeError` naming `what` if it is not bytes-like.
    pub(crate) fn extract(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Self> {
        if let Ok(b) = obj.cast::<PyBytes>() {
            return Ok(Self::Shared(PyBackedBytes::from(b.clone())));
        }
        if let Ok(b) = obj.cast::<PyByteArray>() {
            return Ok(Self::Owned(b.to_vec()));
        }
        let not_bytes_like = || {
            PyTypeError::new_err(format!(
                "{what} must be a bytes-like object (bytes, bytearray, memoryview), got {}",
                type_name(obj)
            ))
        };
        if obj.is_instance_of::<PyString>() {
            return Err(not_bytes_like());
        }
        let py = obj.py();
        if let Ok(buf) = PyBuffer::<u8>::get(obj) {
            return Ok(Self::Owned(buf.to_vec(py)?));
        }
        // A buffer whose items are not bytes (array('i'), a memoryview cast to 'Q', ...):
        // let memoryview flatten it to its raw bytes, as hashlib would read them.
        let view = py
            .import("builtins")?
            .getattr("memoryview")?
            .call1((obj,))
            .map_err(|_| not_bytes_like())?;
        let flat = view.call_method0("tobytes")?;
        let flat = flat.cast_into::<PyBytes>().map_err(PyErr::from)?;
        Ok(Self::Shared(PyBackedBytes::from(flat)))
    }
}

/// Largest capacity reserved up front from a length an object reports about itself.
pub(crate) const MAX_CAPACITY_HINT: usize = 1 << 16;

/// How many items to reserve room for before iterating `obj`: its length if it is a list or
/// tuple (those items exist in memory), else its `__len__` capped at [`MAX_CAPACITY_HINT`]
/// (any object can claim any length; reserving it made `Vec::with_capacity` panic or abort).
pub(crate) fn capacity_hint(obj: &Bound<'_, PyAny>) -> usize {
    if obj.is_instance_of::<pyo3::types::PyList>() || obj.is_instance_of::<pyo3::types::PyTuple>() {
        return obj.len().unwrap_or(0);
    }
    obj.len().unwrap_or(0).min(MAX_CAPACITY_HINT)
}

/// The qualified type name of `obj`, for error messages.
pub(crate) fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "<unknown type>".to_owned())
}

/// `sha256(data)` -> lowercase hex digest of a bytes-like object.
#[pyfunction]
pub fn sha256(py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<String> {
    let data = BytesLike::extract(data, "data")?;
    Ok(py.detach(|| sha256_hex(&data)))
}

/// `sha256_file(path)` -> lowercase hex digest of a file's contents, streamed.
#[pyfunction]
pub fn sha256_file(py: Python<'_>, path: PathBuf) -> PyResult<String> {
    Ok(py.detach(|| sha256_file_hex(&path))?)
}

/// Chunks at least this large are hashed with the GIL released; for smaller ones the
/// detach/re-attach round trip costs more than it frees.
pub const DETACH_THRESHOLD: usize = 64 * 1024;

/// `Sha256Hasher()`: incremental SHA-256, `update(chunk)` then `hexdigest()`.
///
/// Frozen (shareable between threads); the state sits behind a mutex, so concurrent
/// `update` calls are serialised rather than interleaved mid-block.
#[pyclass(name = "Sha256Hasher", module = "statekit._native", frozen)]
pub struct PySha256Hasher {
    state: Mutex<Sha256>,
}

impl PySha256Hasher {
    fn with_state<T>(&self, f: impl FnOnce(&mut Sha256) -> T) -> T {
        // A panic cannot happen while hashing, but a poisoned lock must not turn into one.
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut guard)
    }
}

#[pymethods]
impl PySha256Hasher {
    #[new]
    fn new() -> Self {
        Self {
            state: Mutex::new(Sha256::new()),
        }
    }

    /// Feeds a bytes-like chunk into the hash.
    fn update(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let data = BytesLike::extract(data, "data")?;
        if data.len() >= DETACH_THRESHOLD {
            py.detach(|| self.with_state(|h| h.update(&*data)));
        } else {
            self.with_state(|h| h.update(&*data));
        }
        Ok(())
    }

    /// Lowercase hex digest of everything fed so far; the hasher stays usable.
    fn hexdigest(&self) -> String {
        to_hex(&self.with_state(|h| h.clone().finalize()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn known_vectors() {
        assert_eq!(sha256_hex(b""), EMPTY);
        assert_eq!(sha256_hex(b"abc"), ABC);
        assert_eq!(
            sha256_hex(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
    }

    #[test]
    fn incremental_matches_one_shot() {
        let hasher = PySha256Hasher::new();
        assert_eq!(hasher.hexdigest(), EMPTY);
        hasher.with_state(|h| h.update(b"ab"));
        hasher.with_state(|h| h.update(b"c"));
        assert_eq!(hasher.hexdigest(), ABC);
        // hexdigest() does not consume the state.
        assert_eq!(hasher.hexdigest(), ABC);
    }

    #[test]
    fn hex_is_lowercase_and_padded() {
        assert_eq!(to_hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        assert_eq!(to_hex(&[]), "");
    }

    #[test]
    fn reader_matches_one_shot_across_chunk_boundaries() {
        let data: Vec<u8> = (0..(FILE_CHUNK * 2 + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        let streamed = sha256_reader_hex(&data[..]).expect("in-memory read cannot fail");
        assert_eq!(streamed, sha256_hex(&data));
    }

    #[test]
    fn file_hash_and_missing_file() {
        let dir = std::env::temp_dir().join(format!("statekit-checksum-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("abc.bin");
        File::create(&path)
            .and_then(|mut f| f.write_all(b"abc"))
            .expect("write temp file");
        assert_eq!(sha256_file_hex(&path).expect("hash file"), ABC);

        let missing = dir.join("missing.bin");
        match sha256_file_hex(&missing) {
            Err(NativeError::Io { path, source }) => {
                assert_eq!(path, missing);
                assert_eq!(source.kind(), ErrorKind::NotFound);
            }
            other => panic!("expected an Io error, got {other:?}"),
        }
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
