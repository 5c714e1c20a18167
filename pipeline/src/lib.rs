//! The medtune engine.
//!
//! Stages ([`Stage`]) declare what they read and write; a [`Dag`] orders them; a [`Runner`]
//! executes them through a content-addressed cache in a [`Workdir`], committing every output
//! atomically with a [`Manifest`] of checksums and row accounting; [`sql`] queries every
//! committed dataset by name. A stage whose inputs only grew may extend its previous output
//! instead of starting over ([`StageContext::append_to_previous`]).

#![warn(missing_docs)]

pub mod config;
pub mod dag;
pub mod engine;
pub mod error;
pub mod fsutil;
pub mod hash;
pub mod manifest;
pub mod output;
pub mod progress;
pub mod reader;
pub mod runner;
pub mod sql;
pub mod stage;
pub mod workdir;
pub mod writer;

pub use config::{PipelineConfig, Settings};
pub use dag::Dag;
pub use engine::{
    Engine, FirstOccurrences, MappedRows, Place, RoutedRows, RowFunction, RowStage, RowStages,
};
pub use error::{ErrorClass, PipelineError, Result};
pub use manifest::{ColumnStats, EngineTime, Manifest, PartFile};
pub use output::{OutputDecl, OutputRole};
pub use progress::{ProgressObserver, Quiet, WorkUnit};
pub use runner::{Freshness, RunOptions, Runner, StageStatus, StageSummary};
pub use stage::{AppendOptions, InputChange, PreviousOutput, SourceDecl, Stage, StageContext};
pub use workdir::Workdir;
