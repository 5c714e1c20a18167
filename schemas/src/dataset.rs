//! Dataset names: each is the table name in SQL and the folder name in a cache entry. A stage
//! declares its outputs with these, and a stage that reads another's output names it with
//! these, so no name is spelled twice.

/// Example rows read from the inputs (ingest's kept rows).
pub const INGESTED: &str = "ingested";
/// Records ingest could not read, with the reason.
pub const INGEST_REJECTS: &str = "ingest_rejects";
/// Rows left after exact (and, with `action = "drop"`, near-) duplicates are dropped.
pub const DEDUPED: &str = "deduped";
/// Rows dedup dropped, each with the kept row it repeats.
pub const DEDUP_REJECTS: &str = "dedup_rejects";
/// Members of near-duplicate clusters of two or more rows.
pub const NEAR_DUPLICATES: &str = "near_duplicates";
/// Rows with ChemProt completions rewritten to the `- x | y` list format.
pub const CONVERTED: &str = "converted";
/// Rows left after empty prompts, empty completions and entity-less rows are dropped.
pub const CLEANED: &str = "cleaned";
/// Rows clean dropped.
pub const CLEAN_REJECTS: &str = "clean_rejects";
/// Rows with their split group and split (`train`, `validation`, `test`).
pub const SPLIT: &str = "split";
/// Rows split dropped because they leak into a later split (splits taken from the data, with
/// `leaks = "drop"`).
pub const SPLIT_REJECTS: &str = "split_rejects";
/// Rows sharing a text, near-duplicate cluster or group with a row of an earlier split.
pub const SPLIT_LEAKS: &str = "split_leaks";
/// The data profile: one figure per row.
pub const PROFILE: &str = "profile";
/// Token sequences (one row per sequence or window).
pub const TOKENIZED: &str = "tokenized";
/// Tag name per label id (token classification).
pub const LABEL_MAP: &str = "label_map";
/// Rows tokenize dropped (no position the loss counts).
pub const TOKENIZE_REJECTS: &str = "tokenize_rejects";
/// Tokenized rows cut into training shards, a part per shard labelled with its split.
pub const SHARDS: &str = "shards";
/// Loss, learning rate and evaluation loss per optimiser step.
pub const TRAIN_LOG: &str = "train_log";
/// Evaluation figures in long format: model, family, group, metric, value.
pub const METRICS: &str = "metrics";
/// Evaluation output per row and model variant.
pub const PREDICTIONS: &str = "predictions";
