//! Accumulates examples into Arrow record batches of the shared `examples` schema.

use std::sync::Arc;

use arrow::array::{ArrayRef, ListBuilder, StringBuilder, UInt64Builder};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use medtune_formats::record::Example;

/// Where the rows of a batch come from.
pub struct FileInfo<'a> {
    /// The path as written in the config.
    pub source_file: &'a str,
    /// The file's name, used in row ids.
    pub file_name: &'a str,
    /// Reader kind (`prompt_completion`, `alpaca`, ...).
    pub source_kind: &'a str,
}

/// Builds `examples` batches.
#[derive(Default)]
pub struct ExampleBatch {
    id: StringBuilder,
    source_file: StringBuilder,
    line: UInt64Builder,
    source_kind: StringBuilder,
    task: StringBuilder,
    prompt: StringBuilder,
    completion: StringBuilder,
    instruction: StringBuilder,
    input: StringBuilder,
    words: ListBuilder<StringBuilder>,
    tags: ListBuilder<StringBuilder>,
    group_key: StringBuilder,
    rows: usize,
    text_bytes: usize,
}

fn append_list(builder: &mut ListBuilder<StringBuilder>, items: Option<&[String]>) {
    match items {
        Some(items) => {
            for item in items {
                builder.values().append_value(item);
            }
            builder.append(true);
        }
        None => builder.append(false),
    }
}

/// The id of the `ordinal`-th record (1-based) of the file named `file_name`:
/// `file_name:ordinal`. Unlike a line number it is unique whatever the file's layout.
pub fn row_id(file_name: &str, ordinal: u64) -> String {
    format!("{file_name}:{ordinal}")
}

impl ExampleBatch {
    /// Appends one example, the `ordinal`-th record of its file.
    pub fn push(&mut self, file: &FileInfo, ordinal: u64, ex: &Example) {
        self.id.append_value(row_id(file.file_name, ordinal));
        self.source_file.append_value(file.source_file);
        self.line.append_value(ex.line);
        self.source_kind.append_value(file.source_kind);
        self.task.append_option(ex.task.as_deref());
        self.prompt.append_option(ex.prompt.as_deref());
        self.completion.append_option(ex.completion.as_deref());
        self.instruction.append_option(ex.instruction.as_deref());
        self.input.append_option(ex.input.as_deref());
        append_list(&mut self.words, ex.words.as_deref());
        append_list(&mut self.tags, ex.tags.as_deref());
        self.group_key.append_value(&ex.group_key);
        self.rows += 1;
        self.text_bytes += [&ex.prompt, &ex.completion, &ex.input]
            .iter()
            .map(|s| s.as_ref().map_or(0, String::len))
            .sum::<usize>();
    }

    /// Rows buffered.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Approximate text bytes buffered (to bound batch memory for long rows).
    pub fn text_bytes(&self) -> usize {
        self.text_bytes
    }

    /// Takes the buffered rows as a batch.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        self.rows = 0;
        self.text_bytes = 0;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.id.finish()),
            Arc::new(self.source_file.finish()),
            Arc::new(self.line.finish()),
            Arc::new(self.source_kind.finish()),
            Arc::new(self.task.finish()),
            Arc::new(self.prompt.finish()),
            Arc::new(self.completion.finish()),
            Arc::new(self.instruction.finish()),
            Arc::new(self.input.finish()),
            Arc::new(self.words.finish()),
            Arc::new(self.tags.finish()),
            Arc::new(self.group_key.finish()),
        ];
        RecordBatch::try_new(medtune_schemas::examples(), columns)
    }
}
