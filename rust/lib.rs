//! `statekit._native`: the Rust core of statekit.
//!
//! This file only registers the Python module; the kernels and their `#[pyfunction]`
//! wrappers live in the modules below.
//!
//! * [`framing`]: checksummed record batches (`encode_records`, `decode_records`)
//! * [`resp`]: RESP pipelines and Redis Cluster slots (`encode_commands`, `hash_slot`, `hash_slots`)
//! * [`checksum`]: SHA-256 of buffers and files (`sha256`, `sha256_file`, `Sha256Hasher`)
//! * [`runs`]: run watermarks (`last_contiguous_run`, `max_attempted_run`, `run_gaps`)
//! * [`records`]: the one place Python records become records (three columns), for
//!   `encode_records` and `snapshot_write` alike; framed on the fly for snapshots
//! * [`snapshot`] (`format`, `write`, `read`, `py`): checkpoint files (`snapshot_write`, `snapshot_read`, `snapshot_load`, `snapshot_verify`,
//!   `snapshot_info`)
//! * [`errors`]: the `NativeError` type and its mapping to Python exceptions

#![deny(unsafe_code)]

pub mod checksum;
pub mod errors;
pub mod framing;
pub mod records;
pub mod resp;
pub mod runs;
pub mod snapshot;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(framing::encode_records, m)?)?;
    m.add_function(wrap_pyfunction!(framing::decode_records, m)?)?;
    m.add_function(wrap_pyfunction!(resp::encode_commands, m)?)?;
    m.add_function(wrap_pyfunction!(resp::hash_slot, m)?)?;
    m.add_function(wrap_pyfunction!(resp::hash_slots, m)?)?;
    m.add_function(wrap_pyfunction!(resp::encode_msets_by_slot, m)?)?;
    m.add_function(wrap_pyfunction!(checksum::sha256, m)?)?;
    m.add_function(wrap_pyfunction!(checksum::sha256_file, m)?)?;
    m.add_class::<checksum::PySha256Hasher>()?;
    m.add_function(wrap_pyfunction!(runs::py_last_contiguous_run, m)?)?;
    m.add_function(wrap_pyfunction!(runs::py_max_attempted_run, m)?)?;
    m.add_function(wrap_pyfunction!(runs::py_run_gaps, m)?)?;
    m.add_class::<snapshot::PySnapshotInfo>()?;
    m.add_function(wrap_pyfunction!(snapshot::snapshot_write, m)?)?;
    m.add_function(wrap_pyfunction!(snapshot::snapshot_read, m)?)?;
    m.add_function(wrap_pyfunction!(snapshot::snapshot_load, m)?)?;
    m.add_function(wrap_pyfunction!(snapshot::snapshot_verify, m)?)?;
    m.add_function(wrap_pyfunction!(snapshot::snapshot_info, m)?)?;
    Ok(())
}
