//! Typed errors of the engine, with the exit-code class the binary maps them to.

use std::path::PathBuf;

/// How the binary should report an error: bad input/config (exit 2) or internal (exit 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The user's input, config or invocation is wrong; the message says how to fix it.
    BadInput,
    /// A bug or an environment failure (I/O, corrupt cache that could not be recovered).
    Internal,
}

/// Errors raised by the engine and by stages.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The config file is unreadable or has a wrong value.
    #[error("config {path}: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
    /// An input file is missing, empty or not in the declared format.
    #[error("{path}: {message}")]
    BadInput {
        /// The offending input file.
        path: PathBuf,
        /// What is wrong, naming the line where there is one.
        message: String,
    },
    /// The user asked for something that does not exist (a stage, a dataset).
    #[error("{0}")]
    Usage(String),
    /// A data check of a stage failed (leakage between splits, say); the message lists the
    /// offending rows.
    #[error("stage `{stage}`: check failed: {message}")]
    CheckFailed {
        /// The stage whose check failed.
        stage: String,
        /// What failed, with the offending rows.
        message: String,
    },
    /// Another process holds the workdir lock.
    #[error("{0}")]
    Busy(String),
    /// A SQL query failed or was refused.
    #[error("query: {0}")]
    Query(String),
    /// The engine could not run a plan: a cluster that cannot be reached or lost an executor, a
    /// row function that failed; the message says which dataset was being read.
    #[error("engine: {0}")]
    Engine(String),
    /// A committed file of the workdir (catalog, manifest, part) is missing or fails its
    /// checks; the message names it and what rebuilds it.
    #[error("{0}")]
    Damaged(String),
    /// Filesystem failure, with the path it happened on.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder being read or written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Arrow failure.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// Parquet failure.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// An invariant of the engine was broken (row accounting, schema of an output).
    #[error("internal error: {0}")]
    Internal(String),
}

impl PipelineError {
    /// The exit-code class of this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            PipelineError::Config { .. }
            | PipelineError::BadInput { .. }
            | PipelineError::Usage(_)
            | PipelineError::CheckFailed { .. }
            | PipelineError::Busy(_)
            | PipelineError::Query(_) => ErrorClass::BadInput,
            _ => ErrorClass::Internal,
        }
    }

    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        PipelineError::Io {
            path: path.into(),
            source,
        }
    }

    /// An input-file error.
    pub fn bad_input(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        PipelineError::BadInput {
            path: path.into(),
            message: message.into(),
        }
    }

    /// A config error.
    pub fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        PipelineError::Config {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Result alias of the engine.
pub type Result<T, E = PipelineError> = std::result::Result<T, E>;

/// Adds the path to an I/O result.
pub trait IoContext<T> {
    /// Maps an I/O error to [`PipelineError::Io`] naming `path`.
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| PipelineError::io(path, e))
    }
}
