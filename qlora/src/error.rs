//! Typed errors of the QLoRA crate.

use std::path::PathBuf;

/// Errors raised while quantising, building, loading, training or saving models.
#[derive(Debug, thiserror::Error)]
pub enum QloraError {
    /// A tensor operation failed.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// A weight cannot be quantised (not finite, empty, wrong dtype).
    #[error("cannot quantise `{name}`: {reason}")]
    Quantise {
        /// The weight's name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A weight has another shape than the model config implies.
    #[error("`{name}` has shape {actual:?}, the model config implies {expected:?}")]
    Shape {
        /// The weight's name.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape found.
        actual: Vec<usize>,
    },
    /// The training or evaluation data could not be read.
    #[error("data: {0}")]
    Data(String),
    /// Training produced a loss or gradient that is NaN or infinite; the variables are left
    /// as they were before the step.
    #[error("step {step}: the {what} is {value} (not finite); training stopped before applying it (lower the learning rate, or check the data of this step)")]
    NotFinite {
        /// The optimiser step (from 1) that produced it.
        step: u64,
        /// `loss` or `gradient norm`.
        what: &'static str,
        /// The value.
        value: f64,
    },
    /// A model or adapter config is wrong (an unknown target module, a bad rank).
    #[error("{0}")]
    Config(String),
    /// A model directory or file is missing something or unreadable.
    #[error("{path}: {message}")]
    Model {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl QloraError {
    /// A file-level failure (I/O, a malformed file) naming the file.
    pub fn file(path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        QloraError::Model {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    }
}

/// Result with [`QloraError`].
pub type Result<T> = std::result::Result<T, QloraError>;
