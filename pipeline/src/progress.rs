//! Progress reporting, decoupled from any display: the binary draws bars, tests stay quiet.

/// What a stage's work is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkUnit {
    /// Input bytes (readers of raw files).
    Bytes,
    /// Input rows (stages reading datasets).
    Rows,
    /// Optimiser steps (training).
    Steps,
}

/// Receives progress events from the runner and from running stages.
pub trait ProgressObserver: Send + Sync {
    /// A stage starts running (not called for cache hits).
    fn stage_started(&self, _stage: &str) {}
    /// The total amount of work of the running stage is known, counted in `unit`.
    fn work_total(&self, _stage: &str, _total: u64, _unit: WorkUnit) {}
    /// Rows read and work done so far.
    fn progress(&self, _stage: &str, _rows: u64, _work_done: u64) {}
    /// A short status line of the running stage (loss, tokens/s, memory while training).
    fn message(&self, _stage: &str, _message: &str) {}
    /// The stage finished (successfully or not).
    fn stage_finished(&self, _stage: &str) {}
    /// A warning to show to the user.
    fn warning(&self, _stage: &str, _message: &str) {}
}

/// Discards all progress events.
pub struct Quiet;

impl ProgressObserver for Quiet {}
