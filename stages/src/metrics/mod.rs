//! Evaluation metrics computed from predictions.

pub mod entities;
pub mod text;
