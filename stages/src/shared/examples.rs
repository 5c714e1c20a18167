//! Typed, read-only access to the columns of an `examples` batch.

use arrow::array::{Array, AsArray, ListArray, StringArray, UInt64Array};
use arrow::datatypes::UInt64Type;
use arrow::record_batch::RecordBatch;
use medtune_formats::normalize::Normalization;
use medtune_pipeline::{PipelineError, Result};
use medtune_schemas::col;

/// The columns of an `examples` batch (or a batch that extends it, like `split`).
pub struct ExampleRows<'a> {
    /// Row ids.
    pub id: &'a StringArray,
    /// Source files as named in the config.
    pub source_file: &'a StringArray,
    /// Source lines.
    pub line: &'a UInt64Array,
    /// Reader kinds.
    pub source_kind: &'a StringArray,
    /// Tasks.
    pub task: &'a StringArray,
    /// Prompts.
    pub prompt: &'a StringArray,
    /// Completions.
    pub completion: &'a StringArray,
    /// Alpaca instructions.
    pub instruction: &'a StringArray,
    /// Alpaca inputs.
    pub input: &'a StringArray,
    /// BIO words.
    pub words: &'a ListArray,
    /// BIO tags.
    pub tags: &'a ListArray,
    /// Group keys.
    pub group_key: &'a StringArray,
}

/// The column `name` of `batch` as array type `T`, or an error naming `what` the batch is.
pub(crate) fn typed_column<'b, T: 'static>(
    batch: &'b RecordBatch,
    what: &str,
    name: &str,
) -> Result<&'b T> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| {
            PipelineError::Internal(format!(
                "{what} lacks a column `{name}` of the expected type"
            ))
        })
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a dyn Array> {
    batch
        .column_by_name(name)
        .map(|c| c.as_ref())
        .ok_or_else(|| PipelineError::Internal(format!("examples batch has no column `{name}`")))
}

fn strings<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a StringArray> {
    column(batch, name)?
        .as_string_opt::<i32>()
        .ok_or_else(|| PipelineError::Internal(format!("column `{name}` is not Utf8")))
}

fn lists<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ListArray> {
    column(batch, name)?
        .as_list_opt::<i32>()
        .ok_or_else(|| PipelineError::Internal(format!("column `{name}` is not a list")))
}

impl<'a> ExampleRows<'a> {
    /// Views `batch`, which must carry the `examples` columns.
    pub fn new(batch: &'a RecordBatch) -> Result<Self> {
        Ok(ExampleRows {
            id: strings(batch, col::ID)?,
            source_file: strings(batch, col::SOURCE_FILE)?,
            line: column(batch, col::LINE)?
                .as_primitive_opt::<UInt64Type>()
                .ok_or_else(|| PipelineError::Internal("column `line` is not UInt64".into()))?,
            source_kind: strings(batch, col::SOURCE_KIND)?,
            task: strings(batch, col::TASK)?,
            prompt: strings(batch, col::PROMPT)?,
            completion: strings(batch, col::COMPLETION)?,
            instruction: strings(batch, col::INSTRUCTION)?,
            input: strings(batch, col::INPUT)?,
            words: lists(batch, col::WORDS)?,
            tags: lists(batch, col::TAGS)?,
            group_key: strings(batch, col::GROUP_KEY)?,
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.id.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.id.is_empty()
    }

    /// A nullable text column's value, `None` when null.
    pub fn text(column: &'a StringArray, row: usize) -> Option<&'a str> {
        column.is_valid(row).then(|| column.value(row))
    }

    /// The items of a list column at `row` (empty when null).
    pub fn list(column: &'a ListArray, row: usize) -> Vec<&'a str> {
        if column.is_null(row) {
            return Vec::new();
        }
        let values: &'a StringArray = column.values().as_string::<i32>();
        let offsets = column.value_offsets();
        (offsets[row] as usize..offsets[row + 1] as usize)
            .filter(|&i| values.is_valid(i))
            .map(|i| values.value(i))
            .collect()
    }

    /// The text of `columns` at `row`, each normalised, joined by a newline: what dedup hashes
    /// and split checks for leakage. List columns (BIO words) join their items with spaces.
    pub fn normalized_text(
        &self,
        columns: &[String],
        row: usize,
        normalization: &Normalization,
    ) -> Result<String> {
        let mut out = String::new();
        for (n, name) in columns.iter().enumerate() {
            if n > 0 {
                out.push('\n');
            }
            match name.as_str() {
                col::WORDS | col::TAGS => {
                    let column = if name == col::WORDS {
                        self.words
                    } else {
                        self.tags
                    };
                    normalization.apply_into(&Self::list(column, row).join(" "), &mut out);
                }
                _ => {
                    let column = self.text_column(name)?;
                    normalization.apply_into(Self::text(column, row).unwrap_or(""), &mut out);
                }
            }
        }
        Ok(out)
    }

    /// A text column by name.
    pub fn text_column(&self, name: &str) -> Result<&'a StringArray> {
        Ok(match name {
            col::ID => self.id,
            col::SOURCE_FILE => self.source_file,
            col::SOURCE_KIND => self.source_kind,
            col::TASK => self.task,
            col::PROMPT => self.prompt,
            col::COMPLETION => self.completion,
            col::INSTRUCTION => self.instruction,
            col::INPUT => self.input,
            col::GROUP_KEY => self.group_key,
            other => {
                return Err(PipelineError::Usage(format!(
                    "`{other}` is not a text column of the examples dataset (text columns: {})",
                    TEXT_COLUMNS.join(", ")
                )))
            }
        })
    }
}

/// Columns [`ExampleRows::normalized_text`] accepts.
pub const TEXT_COLUMNS: &[&str] = &[
    col::ID,
    col::SOURCE_FILE,
    col::SOURCE_KIND,
    col::TASK,
    col::PROMPT,
    col::COMPLETION,
    col::INSTRUCTION,
    col::INPUT,
    col::GROUP_KEY,
    col::WORDS,
    col::TAGS,
];

/// Checks at config time that every name in `columns` is one [`ExampleRows::normalized_text`]
/// accepts.
pub fn check_text_columns(section: &str, columns: &[String]) -> std::result::Result<(), String> {
    if columns.is_empty() {
        return Err(format!("[{section}]: `columns` is empty"));
    }
    for c in columns {
        if !TEXT_COLUMNS.contains(&c.as_str()) {
            return Err(format!(
                "[{section}]: `{c}` is not a text column (choose from {})",
                TEXT_COLUMNS.join(", ")
            ));
        }
    }
    Ok(())
}
