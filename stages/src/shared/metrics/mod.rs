//! Evaluation metrics computed from predictions.

pub mod entities;
pub mod extraction;
pub mod text;
