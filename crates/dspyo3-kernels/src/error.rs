//! The error type shared by every kernel.

use std::fmt;

/// What can go wrong in a kernel. Each message names the problem and, where there is one, the fix.
#[derive(Debug)]
pub enum KernelError {
    /// An argument is out of range or inconsistent (a negative rate, an unknown stemmer language, ...).
    InvalidArgument(String),
    /// A file is not in the expected format, was written by an incompatible version, or is corrupt.
    Format(String),
    /// Reading or writing a file failed.
    Io(std::io::Error),
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelError::InvalidArgument(message) | KernelError::Format(message) => f.write_str(message),
            KernelError::Io(err) => write!(f, "{err}"),
        }
    }
}

impl std::error::Error for KernelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            KernelError::Io(err) => Some(err),
            _ => None,
        }
    }
}

impl From<std::io::Error> for KernelError {
    fn from(err: std::io::Error) -> Self {
        KernelError::Io(err)
    }
}

/// Result alias used across the kernels.
pub type Result<T> = std::result::Result<T, KernelError>;

pub(crate) fn invalid(message: impl Into<String>) -> KernelError {
    KernelError::InvalidArgument(message.into())
}
