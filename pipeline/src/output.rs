//! What a stage declares about each dataset it writes: its name, schema and role in the row
//! accounting. The manifest, the writer, the catalog and the SQL session read these
//! declarations; none of them needs the [`Stage`](crate::Stage) trait itself.

use arrow::datatypes::SchemaRef;

/// What an output dataset is for, so the runner can check the row accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputRole {
    /// The rows the stage keeps: its row count is the stage's `kept`.
    Kept,
    /// The rows the stage drops: its row count must equal the stage's dropped total.
    Rejects,
    /// Anything else (reports, side tables).
    #[default]
    Side,
}

/// An output dataset a stage declares.
#[derive(Debug, Clone)]
pub struct OutputDecl {
    /// Dataset name (also its SQL table name).
    pub name: String,
    /// Arrow schema of its batches.
    pub schema: SchemaRef,
    /// Its role in the row accounting.
    pub role: OutputRole,
    /// Integer columns whose sum, minimum and maximum the writer records for every part
    /// (e.g. `length`, so a training shard's manifest entry carries its token count).
    pub part_stats: Vec<String>,
}

impl OutputDecl {
    /// An output named `name` with `schema`, playing `role` in the row accounting.
    pub fn new(name: impl Into<String>, schema: SchemaRef, role: OutputRole) -> Self {
        OutputDecl {
            name: name.into(),
            schema,
            role,
            part_stats: Vec::new(),
        }
    }

    /// Records per-part sum, minimum and maximum of these integer columns in the manifest.
    pub fn with_part_stats(mut self, columns: &[&str]) -> Self {
        self.part_stats = columns.iter().map(|c| c.to_string()).collect();
        self
    }
}
