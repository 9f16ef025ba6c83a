//! The one error type of the Rust core, and its mapping onto Python exceptions.
//!
//! Kernel functions return `Result<_, NativeError>`; the `#[pyfunction]` wrappers turn a
//! `NativeError` into a `PyErr` with `?`, through the single `From` impl below:
//!
//! | variant            | Python exception                                       |
//! |--------------------|--------------------------------------------------------|
//! | `Corrupt`          | `statekit.errors.CorruptData` (a `ValueError`)          |
//! | `InvalidArgument`  | `ValueError`                                           |
//! | `WrongType`        | `TypeError`                                            |
//! | `Io`               | `OSError`, narrowed by errno (`FileNotFoundError`, ...) |

use std::io;
use std::path::PathBuf;

use pyo3::exceptions::{PyOSError, PyTypeError, PyValueError};
use pyo3::PyErr;

pyo3::import_exception!(statekit.errors, CorruptData);

/// Every failure the Rust core can report.
#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    /// A framed buffer is truncated, altered, or not ours.
    #[error("{0}")]
    Corrupt(String),
    /// An argument has the right type but an unusable value.
    #[error("{0}")]
    InvalidArgument(String),
    /// An argument has the wrong type.
    #[error("{0}")]
    WrongType(String),
    /// Reading a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl NativeError {
    /// Shorthand for [`NativeError::Corrupt`].
    pub fn corrupt(msg: impl Into<String>) -> Self {
        Self::Corrupt(msg.into())
    }

    /// Shorthand for [`NativeError::InvalidArgument`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidArgument(msg.into())
    }

    /// Shorthand for [`NativeError::WrongType`].
    pub fn wrong_type(msg: impl Into<String>) -> Self {
        Self::WrongType(msg.into())
    }
}

/// The text of an I/O error without Rust's " (os error N)" suffix, like Python's `strerror`.
fn strerror(err: &io::Error) -> String {
    let text = err.to_string();
    match text.rfind(" (os error ") {
        Some(pos) => text[..pos].to_owned(),
        None => text,
    }
}

impl From<NativeError> for PyErr {
    fn from(err: NativeError) -> Self {
        match err {
            NativeError::Corrupt(msg) => CorruptData::new_err(msg),
            NativeError::InvalidArgument(msg) => PyValueError::new_err(msg),
            NativeError::WrongType(msg) => PyTypeError::new_err(msg),
            NativeError::Io { path, source } => {
                let filename = path.to_string_lossy().into_owned();
                let text = strerror(&source);
                match source.raw_os_error() {
                    // OSError(errno, strerror, filename) picks the errno's subclass
                    // (FileNotFoundError, PermissionError, IsADirectoryError, ...) and sets
                    // .errno / .strerror / .filename like the builtin open() does.
                    Some(code) => PyOSError::new_err((code, text, filename)),
                    None => PyOSError::new_err(format!("{filename}: {text}")),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_the_payload() {
        assert_eq!(NativeError::corrupt("bad").to_string(), "bad");
        assert_eq!(NativeError::invalid("nope").to_string(), "nope");
        assert_eq!(NativeError::wrong_type("int").to_string(), "int");
    }

    #[test]
    fn io_message_names_the_path() {
        let err = NativeError::Io {
            path: PathBuf::from("/no/such/file"),
            source: io::Error::from_raw_os_error(2),
        };
        let text = err.to_string();
        assert!(text.starts_with("/no/such/file: "), "{text}");
    }

    #[test]
    fn strerror_drops_the_os_error_suffix() {
        let text = strerror(&io::Error::from_raw_os_error(2));
        assert!(!text.contains("os error"), "{text}");
        assert!(!text.is_empty());
    }
}
