//! The `#[pyfunction]`s of snapshots and their Python conversions (the records come in
//! through [`crate::records`]).

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

use super::format::{check_signing_key, Compression, Header, MAX_LEVEL};
use super::read::{
    check_file, in_file, read_file_unchecked_crc, read_header, scan_file, verify_file, Decoded,
    Rules,
};
use super::write::{check_options, stage, Options};
use crate::errors::NativeError;
use crate::framing;
use crate::records;

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
    let mut columns = Some(records::columns_from_py(records, records::Shape::Snapshot)?);
    let header = py.detach(|| {
        check_options(&options)?;
        let staged = match &columns {
            Some(c) => stage(&path, &c.prepare(options.prefix.as_bytes())?, &options)?,
            None => return Err(NativeError::invalid("the records were already released")),
        };
        // Every record is on its way to disk: the references to the keys and values are
        // released on another thread (attached) while this one fsyncs and verifies.
        let releasing = columns.take();
        std::thread::scope(|s| {
            let released = s.spawn(move || Python::attach(|_| drop(releasing)));
            let committed = staged.commit(&options, verify);
            let _ = released.join();
            committed
        })
    });
    // After a failure before the payload was written, they are released here, attached.
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
