//! What every binding shares: the index-format exception, kernel errors as Python exceptions, and seconds
//! arguments as durations.

use std::time::Duration;

use dspyo3_kernels::KernelError;
use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

create_exception!(
    dspyo3_native,
    IndexFormatError,
    PyValueError,
    "An index file is not a dspyo3 index, was written by an incompatible version, or is corrupt."
);

/// A kernel error as the Python exception it raises (`ValueError`, `IndexFormatError`, `OSError`).
pub(crate) fn to_py(err: KernelError) -> PyErr {
    match err {
        KernelError::InvalidArgument(message) => PyValueError::new_err(message),
        KernelError::Format(message) => IndexFormatError::new_err(message),
        KernelError::Io(err) => err.into(),
    }
}

/// A positive number of seconds as a [`Duration`], saturating: `inf`, or a value too large for a `Duration`
/// (about 584 billion years), becomes [`Duration::MAX`], which the kernels read as "never" (a TTL that never
/// expires, a timeout that never passes). Zero, negative numbers and NaN raise `ValueError` naming `name`.
pub(crate) fn seconds(value: Option<f64>, name: &str) -> PyResult<Option<Duration>> {
    match value {
        None => Ok(None),
        Some(s) if s > 0.0 => Ok(Some(Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX))),
        Some(s) => Err(PyValueError::new_err(format!("{name} must be a positive number of seconds (got {s})"))),
    }
}

/// A timeout in seconds: `None`, `inf` or more than [`FOREVER_SECONDS`] (about 100 years) mean "wait forever".
pub(crate) fn timeout_seconds(value: Option<f64>, name: &str) -> PyResult<Option<Duration>> {
    match value {
        Some(s) if s > FOREVER_SECONDS => Ok(None),
        other => seconds(other, name),
    }
}

/// Timeouts longer than this many seconds (100 years) are treated as no timeout at all.
const FOREVER_SECONDS: f64 = 100.0 * 365.25 * 86_400.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_saturate_and_refuse_what_is_not_a_duration() {
        assert_eq!(seconds(None, "ttl").expect("none"), None);
        assert_eq!(seconds(Some(1.5), "ttl").expect("finite"), Some(Duration::from_millis(1500)));
        for huge in [1e20, 1e300, f64::INFINITY] {
            assert_eq!(seconds(Some(huge), "ttl").expect("saturates"), Some(Duration::MAX), "{huge}");
        }
        Python::initialize(); // reading a PyErr's message needs the interpreter
        Python::attach(|py| {
            for bad in [0.0, -1.0, f64::NAN, f64::NEG_INFINITY] {
                let err = seconds(Some(bad), "ttl").expect_err("refused");
                assert!(err.is_instance_of::<PyValueError>(py), "{bad}: {err}");
                assert!(err.to_string().contains("ttl must be a positive number of seconds"), "{bad}: {err}");
            }
        });
    }

    #[test]
    fn timeouts_past_a_century_mean_forever() {
        assert_eq!(timeout_seconds(Some(f64::INFINITY), "timeout").expect("forever"), None);
        assert_eq!(timeout_seconds(Some(1e19), "timeout").expect("forever"), None);
        assert_eq!(timeout_seconds(Some(2.0), "timeout").expect("finite"), Some(Duration::from_secs(2)));
        assert!(timeout_seconds(Some(-2.0), "timeout").is_err());
    }
}
