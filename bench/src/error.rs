//! Why a run could not produce a report.
//!
//! Problems *during* a run (a refused connection, a `RATE_LIMITED` reply, a missing
//! delivery) are not errors: they are counted in the [`Report`](crate::Report). A
//! [`BenchError`] means the run itself could not be carried out: bad options, a server
//! that cannot be reached at all, or setup (users, rooms) that failed.

use std::fmt;
use std::io;

/// A run that could not be carried out.
#[derive(Debug)]
pub enum BenchError {
    /// The options or command line make no sense (the text says which flag and why).
    Usage(String),
    /// `--addr` could not be turned into a socket address.
    Resolve { addr: String, source: io::Error },
    /// A local system call failed (creating a poller, spawning a thread, ...).
    Io {
        context: &'static str,
        source: io::Error,
    },
    /// Some users could not be registered; the run needs every one of them.
    Register {
        failed: u64,
        total: u64,
        first: String,
    },
    /// Some users could not log in (wrong password for an existing prefix, server
    /// errors); the run needs a token for every one of them.
    Login {
        failed: u64,
        total: u64,
        first: String,
    },
    /// Preparing the scenario on the server (creating rooms, ...) failed.
    Setup(String),
    /// A worker thread panicked; the message is the panic text when there is one.
    Worker(String),
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::Usage(msg) => write!(f, "usage: {msg}"),
            BenchError::Resolve { addr, source } => {
                write!(f, "cannot resolve server address {addr:?}: {source}")
            }
            BenchError::Io { context, source } => write!(f, "{context}: {source}"),
            BenchError::Register {
                failed,
                total,
                first,
            } => write!(
                f,
                "{failed} of {total} users could not be registered (first failure: {first})"
            ),
            BenchError::Login {
                failed,
                total,
                first,
            } => write!(
                f,
                "{failed} of {total} users could not log in (first failure: {first}); \
                 a reused --user-prefix needs the same --password"
            ),
            BenchError::Setup(msg) => write!(f, "setup failed: {msg}"),
            BenchError::Worker(msg) => write!(f, "worker thread failed: {msg}"),
        }
    }
}

impl std::error::Error for BenchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BenchError::Resolve { source, .. } | BenchError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl BenchError {
    pub(crate) fn io(context: &'static str, source: io::Error) -> BenchError {
        BenchError::Io { context, source }
    }
}
