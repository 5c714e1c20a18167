//! The tokenize stage: turns split rows into model inputs with a Hugging Face `tokenizer.json`.
//!
//! - **Token classification** (BIO rows): the words are encoded as pre-tokenized input; the first
//!   sub-token of each word gets the word's label id, special tokens and the other sub-tokens get
//!   -100 (or, with `label_all_tokens`, the I- form of the word's label). The label map is built
//!   from the data (`O`, then per entity type `B-`, `I-`, types sorted), so it is the same on
//!   every run over the same data; it is the `label_map` dataset and a manifest counter per label.
//! - **SFT** (prompt/completion and alpaca rows): the prompt is rendered through a chat template,
//!   prompt and completion are encoded separately and concatenated, so the boundary is exact; the
//!   labels are -100 over the prompt and the ids over the completion, with EOS appended.
//!
//! Long inputs are truncated or (token classification) cut into sliding windows; truncated rows,
//! dropped tokens and dropped entities are counted, never lost silently.

mod align;
pub mod rows;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Int32Builder, ListBuilder, StringArray, StringBuilder, UInt32Builder,
};
use arrow::datatypes::{DataType, Int32Type, UInt32Type};
use arrow::record_batch::RecordBatch;
use medtune_formats::text::bounded_raw;
use medtune_pipeline::engine::prepared;
use medtune_pipeline::{
    AppendOptions, OutputDecl, OutputRole, PipelineConfig, PipelineError, Result, RoutedRows,
    RowStage, SourceDecl, Stage, StageContext, WorkUnit,
};
use medtune_schemas::col;
use medtune_schemas::dataset::{LABEL_MAP, TOKENIZED, TOKENIZE_REJECTS};

use self::align::LabelMap;
use self::rows::{Prepared, TokenizeRows, TokenizeSettings};
use crate::shared::examples::ExampleRows;
use crate::shared::mapped::{add_counts, field};
use crate::shared::rejects::{RejectBatch, RejectRow};
use crate::shared::tokenizer::template::{template_file, ChatTemplate};
use crate::shared::tokenizer::{Mode, Overflow, TokenizeConfig};

/// The stage name: its `[tokenize]` config section and its cache folder.
pub const NAME: &str = TokenizeConfig::SECTION;

/// Drop reason of a row none of whose sequences has a token the loss counts.
pub const NO_LABELLED_TOKENS: &str = "no_labelled_tokens";
/// Bound on the raw text a reject keeps.
const REJECT_RAW_BYTES: usize = 4096;

/// Why a row has no labelled token, with the setting that would keep it.
fn no_labels_detail(cfg: &TokenizeConfig, dropped_tokens: u64) -> String {
    match (cfg.mode, dropped_tokens) {
        (Mode::CausalLm, 0) => "the completion is empty".into(),
        (Mode::CausalLm, n) => format!(
            "truncation to max_length {} cut {n} tokens and with them every completion token; \
             `truncation_side = \"left\"` cuts the prompt instead",
            cfg.max_length
        ),
        (Mode::TokenClassification, _) => "no word has a sub-token to label".into(),
    }
}

/// The row's text as a reject keeps it: prompt and completion, or the words.
fn raw_text(rows: &ExampleRows<'_>, row: usize) -> String {
    match ExampleRows::text(rows.prompt, row) {
        Some(prompt) => format!(
            "{prompt}\n\n{}",
            ExampleRows::text(rows.completion, row).unwrap_or("")
        ),
        None => ExampleRows::list(rows.words, row).join(" "),
    }
}

/// The tokenize stage.
pub struct TokenizeStage {
    config: TokenizeConfig,
    input: String,
    tokenizer_path: PathBuf,
}

impl TokenizeStage {
    /// Builds the stage from `[tokenize]`, reading the dataset `input`.
    pub fn from_config(config: &PipelineConfig, input: &str) -> Result<Self> {
        let section: TokenizeConfig = config.section(NAME)?;
        if section.max_length < 4 {
            return Err(config.error("[tokenize]: `max_length` must be at least 4"));
        }
        if let Some(labels) = &section.labels {
            LabelMap::from_labels(labels)
                .map_err(|m| config.error(format!("[tokenize] labels: {m}")))?;
        }
        if section.overflow == Overflow::Window {
            if section.mode == Mode::CausalLm {
                return Err(config.error(
                    "[tokenize]: `overflow = \"window\"` applies to token classification; \
                     SFT rows are truncated (`overflow = \"truncate\"`)",
                ));
            }
            if section.stride >= section.max_length / 2 {
                return Err(config.error("[tokenize]: `stride` must be below half `max_length`"));
            }
        }
        Ok(TokenizeStage {
            tokenizer_path: config.resolve(&section.tokenizer),
            config: section,
            input: input.to_string(),
        })
    }

    /// The configured label map, or (pass one of token classification) every tag in the data.
    fn label_map(&self, ctx: &StageContext<'_>) -> Result<LabelMap> {
        if let Some(labels) = &self.config.labels {
            return LabelMap::from_labels(labels).map_err(PipelineError::Internal);
        }
        // Every distinct tag: an aggregation where the engine runs plans.
        let sql = "SELECT DISTINCT tag FROM (SELECT unnest(tags) AS tag FROM input) \
                   WHERE tag IS NOT NULL";
        let mut tags = BTreeSet::new();
        for batch in ctx.query_input(&self.input, sql)? {
            let column = arrow::compute::cast(batch.column(0), &DataType::Utf8)?;
            tags.extend(
                column
                    .as_string::<i32>()
                    .iter()
                    .flatten()
                    .map(str::to_string),
            );
        }
        LabelMap::from_tags(tags.iter().map(String::as_str)).map_err(|m| {
            PipelineError::CheckFailed {
                stage: NAME.into(),
                message: m,
            }
        })
    }
}

/// Whether the previous output, if any, numbered the labels as `map` does.
fn same_labels_as_before(ctx: &StageContext<'_>, map: &LabelMap) -> Result<bool> {
    let Some(previous) = ctx.previous().and_then(|p| p.dataset(LABEL_MAP)) else {
        return Ok(false);
    };
    let mut labels = Vec::new();
    for batch in previous.batches(ctx.batch_rows()) {
        let batch = batch?;
        let names = batch
            .column_by_name("label")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| PipelineError::Internal("label map without `label`".into()))?;
        labels.extend(names.iter().map(|n| n.unwrap_or_default().to_string()));
    }
    Ok(labels == map.labels())
}

#[derive(Default)]
struct TokenizedBatch {
    id: StringBuilder,
    task: StringBuilder,
    split: StringBuilder,
    window: UInt32Builder,
    input_ids: ListBuilder<UInt32Builder>,
    labels: ListBuilder<Int32Builder>,
    length: UInt32Builder,
    prompt_tokens: UInt32Builder,
}

impl TokenizedBatch {
    fn push(&mut self, id: &str, task: Option<&str>, split: &str, window: u32, t: Sequence<'_>) {
        self.id.append_value(id);
        self.task.append_option(task);
        self.split.append_value(split);
        self.window.append_value(window);
        self.input_ids.values().append_slice(t.ids);
        self.input_ids.append(true);
        self.labels.values().append_slice(t.labels);
        self.labels.append(true);
        self.length.append_value(t.ids.len() as u32);
        self.prompt_tokens.append_value(t.prompt_tokens);
    }

    fn finish(&mut self) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.id.finish()),
            Arc::new(self.task.finish()),
            Arc::new(self.split.finish()),
            Arc::new(self.window.finish()),
            Arc::new(self.input_ids.finish()),
            Arc::new(self.labels.finish()),
            Arc::new(self.length.finish()),
            Arc::new(self.prompt_tokens.finish()),
        ];
        Ok(RecordBatch::try_new(medtune_schemas::tokenized(), columns)?)
    }
}

/// One sequence of a row, as the row function answered it.
struct Sequence<'a> {
    ids: &'a [u32],
    labels: &'a [i32],
    prompt_tokens: u32,
}

impl Stage for TokenizeStage {
    fn name(&self) -> &str {
        NAME
    }

    fn version(&self) -> u32 {
        // 2: rows with no labelled token are rejected; `truncation_side`.
        // 3: parts are written per chunk of the input.
        3
    }

    fn inputs(&self) -> Vec<String> {
        vec![self.input.clone()]
    }

    fn outputs(&self) -> Vec<OutputDecl> {
        let mut outputs = <TokenizeRows as RowStage>::outputs();
        outputs.push(OutputDecl::new(
            LABEL_MAP,
            medtune_schemas::label_map(),
            OutputRole::Side,
        ));
        outputs
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).expect("config serialises")
    }

    fn sources(&self) -> Vec<SourceDecl> {
        let mut sources = vec![SourceDecl {
            written: self.config.tokenizer.clone(),
            path: self.tokenizer_path.clone(),
        }];
        // The model's chat template, when it lives beside the tokenizer.
        let template = template_file(&self.tokenizer_path);
        if self.config.template == ChatTemplate::Model && template != self.tokenizer_path {
            sources.push(SourceDecl {
                written: template.display().to_string(),
                path: template,
            });
        }
        sources
    }

    fn run(&self, ctx: &mut StageContext<'_>) -> Result<()> {
        let cfg = &self.config;
        let labels = match cfg.mode {
            Mode::TokenClassification => Some(self.label_map(ctx)?),
            Mode::CausalLm => None,
        };
        let settings = TokenizeSettings {
            config: cfg.clone(),
            tokenizer: self
                .tokenizer_path
                .canonicalize()
                .unwrap_or_else(|_| self.tokenizer_path.clone()),
            labels: labels.as_ref().map(|map| map.labels().to_vec()),
        };
        let settings = serde_json::to_value(&settings).expect("settings serialise");
        // Prepared here first (the tokenizer, EOS and template), so a missing file or a bad
        // template fails before any row is mapped; in-process, the mapping reuses it.
        let prepared = prepared::<TokenizeRows>(&settings.to_string())?;
        if let Err(why) = prepared.encoder().fast_path() {
            ctx.warn(format!(
                "{}: every text goes through `tokenizers` ({why})",
                self.tokenizer_path.display()
            ));
        }
        // Row by row: an input that only grew extends the previous output with its new rows,
        // provided the label ids stay what they were.
        if labels
            .as_ref()
            .map_or(Ok(true), |map| same_labels_as_before(ctx, map))?
        {
            ctx.append_to_previous(AppendOptions {
                rewrite: &[LABEL_MAP],
                ..AppendOptions::default()
            })?;
        }
        let total = ctx.input(&self.input)?.manifest.rows;
        ctx.set_work_total(total, WorkUnit::Rows);
        ctx.write_rows::<TokenizeRows>(&self.input, &settings)?;
        // Every counter is recorded, those no row reached at 0. `texts_through_tokenizers`:
        // non-ASCII texts (or every text, for a tokenizer without a fast path).
        for name in rows::COUNTS.iter().chain(&["rows", "sequences", "tokens"]) {
            ctx.count(name, 0);
        }
        if let Some(map) = &labels {
            let mut id = Int32Builder::new();
            let mut name = StringBuilder::new();
            for (label_id, label) in map.labels().iter().enumerate() {
                id.append_value(label_id as i32);
                name.append_value(label);
                ctx.set_count(&format!("label_id {label}"), label_id as u64);
            }
            let columns: Vec<ArrayRef> = vec![Arc::new(id.finish()), Arc::new(name.finish())];
            ctx.write(
                LABEL_MAP,
                RecordBatch::try_new(medtune_schemas::label_map(), columns)?,
            )?;
        }
        Ok(())
    }
}

impl RowStage for TokenizeRows {
    fn outputs() -> Vec<OutputDecl> {
        vec![
            OutputDecl::new(TOKENIZED, medtune_schemas::tokenized(), OutputRole::Side),
            OutputDecl::new(
                TOKENIZE_REJECTS,
                medtune_schemas::rejects(),
                OutputRole::Rejects,
            ),
        ]
    }

    fn route(
        _: &Prepared,
        batch: &RecordBatch,
        mapped: &arrow::array::StructArray,
        out: &mut RoutedRows,
    ) -> Result<()> {
        let rows = ExampleRows::new(batch)?;
        let split = batch
            .column_by_name(col::SPLIT)
            .and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned());
        let ids = field(mapped, rows::INPUT_IDS)?.as_list::<i32>();
        let labels = field(mapped, rows::LABELS)?.as_list::<i32>();
        let prompt_tokens = field(mapped, rows::PROMPT_TOKENS)?.as_list::<i32>();
        let no_labels = field(mapped, rows::NO_LABELS)?.as_string::<i32>();
        let mut tokenized = TokenizedBatch::default();
        let mut rejects = RejectBatch::default();
        let (mut kept, mut sequences, mut tokens) = (0u64, 0u64, 0u64);
        for row in 0..rows.len() {
            if no_labels.is_valid(row) {
                out.count_dropped(NO_LABELLED_TOKENS, 1);
                rejects.push(RejectRow {
                    stage: NAME,
                    source_file: rows.source_file.value(row),
                    line: rows.line.value(row),
                    id: rows.id.value(row),
                    reason: NO_LABELLED_TOKENS,
                    detail: no_labels.value(row),
                    raw: &bounded_raw(raw_text(&rows, row).as_bytes(), REJECT_RAW_BYTES),
                    duplicate_of: None,
                });
                continue;
            }
            let (row_ids, row_labels) = (ids.value(row), labels.value(row));
            let row_prompt_tokens = prompt_tokens.value(row);
            let (row_ids, row_labels, row_prompt_tokens) = (
                row_ids.as_list::<i32>(),
                row_labels.as_list::<i32>(),
                row_prompt_tokens.as_primitive::<UInt32Type>(),
            );
            let split_name = split.as_ref().map_or("all", |s| s.value(row));
            for window in 0..row_ids.len() {
                let window_ids = row_ids.value(window);
                let window_ids = window_ids.as_primitive::<UInt32Type>().values();
                let window_labels = row_labels.value(window);
                tokenized.push(
                    rows.id.value(row),
                    ExampleRows::text(rows.task, row),
                    split_name,
                    window as u32,
                    Sequence {
                        ids: window_ids,
                        labels: window_labels.as_primitive::<Int32Type>().values(),
                        prompt_tokens: row_prompt_tokens.value(window),
                    },
                );
                tokens += window_ids.len() as u64;
            }
            sequences += row_ids.len() as u64;
            kept += 1;
        }
        out.count_in(rows.len() as u64);
        out.count("rows", kept);
        out.count("sequences", sequences);
        out.count("tokens", tokens);
        add_counts(out, mapped, &rows::COUNTS)?;
        out.write(TOKENIZED, &tokenized.finish()?)?;
        out.write(TOKENIZE_REJECTS, &rejects.finish()?)
    }
}
