//! The shared foundations the stages stand on. A stage module imports these, the engine
//! (`medtune-pipeline`), `medtune-schemas` and `medtune-qlora`, and never another stage, so each
//! stage can be read, changed or deleted alone. Nothing here imports a stage.
//!
//! | module | one job |
//! |---|---|
//! | [`examples`], [`example_batch`] | read and build batches of example rows |
//! | [`rejects`] | build reject rows and the kept/rejects output pair of a filtering stage |
//! | [`mapped`] | row functions' per-row structs: split off the rows, sum their counts |
//! | [`append_state`] | small tables a stage keeps to extend its output over appended rows |
//! | [`grouping`] | union-find and joining rows that share a key |
//! | [`chemprot`] | the ChemProt task vocabulary: entity and relation tasks, list items |
//! | [`tokenizer`] | the `[tokenize]` section, loading a tokenizer, EOS, chat templates |
//! | [`model`] | the `[train]` section, the device, model sources and errors |
//! | [`loader`] | reading training shards as padded batches (train and evaluate) |
//! | [`metrics`] | entity, extraction and text metrics |
//! | [`plot`] | PNG charts (loss curve, F1 bars) |
//! | [`markdown`] | escaped Markdown tables and code blocks for the reports |

pub mod append_state;
pub mod chemprot;
pub mod example_batch;
pub mod examples;
pub mod grouping;
pub mod loader;
pub mod mapped;
pub mod markdown;
pub mod metrics;
pub mod model;
pub mod plot;
pub mod rejects;
pub mod tokenizer;
