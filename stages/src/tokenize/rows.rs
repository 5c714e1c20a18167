//! Tokenize's per-row work as a row function (`medtune_tokenize`): each row's sequences (after
//! truncation or windowing, only those with a token the loss counts), or why it has none, and
//! its counts. The stage writes what it answers; where it ran changes nothing.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Int32Builder, ListBuilder, StringBuilder, StructArray, UInt32Builder,
};
use arrow::datatypes::{DataType, Field, Fields};
use arrow::record_batch::RecordBatch;
use medtune_pipeline::{PipelineError, Result, RowFunction};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::align::{encode_sft, encode_words, LabelMap, Tokenized};
use super::no_labels_detail;
use crate::shared::examples::ExampleRows;
use crate::shared::mapped::{parse_settings, struct_of, CountColumns};
use crate::shared::tokenizer::template::PromptTemplate;
use crate::shared::tokenizer::{eos_id, load_tokenizer, Mode, TextEncoder, TokenizeConfig};

/// What a `medtune_tokenize` call is set up with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenizeSettings {
    /// The `[tokenize]` section.
    pub config: TokenizeConfig,
    /// The tokenizer file, resolved (every process of a cluster reads it at this path).
    pub tokenizer: PathBuf,
    /// Token classification's label map (`None` for SFT).
    pub labels: Option<Vec<String>>,
}

/// Struct fields: each row's sequences as three parallel lists, and a reject's detail.
pub const INPUT_IDS: &str = "input_ids";
/// Each sequence's labels.
pub const LABELS: &str = "labels";
/// Each sequence's prompt tokens.
pub const PROMPT_TOKENS: &str = "prompt_tokens";
/// Why the row has no sequence (null when it has one).
pub const NO_LABELS: &str = "no_labels";
/// Per-row counts, summed into the stage's counters of the same names.
pub const COUNTS: [&str; 5] = [
    "unlabelled_windows",
    "truncated_rows",
    "dropped_tokens",
    "dropped_entities",
    "texts_through_tokenizers",
];

/// A call's settings, loaded: the tokenizer once per process and settings.
pub struct Prepared {
    config: TokenizeConfig,
    encoder: TextEncoder,
    labels: Option<LabelMap>,
    eos: Option<u32>,
    template: Option<PromptTemplate>,
}

impl Prepared {
    /// The encoder every row of these settings is encoded with.
    pub fn encoder(&self) -> &TextEncoder {
        &self.encoder
    }
}

/// The `medtune_tokenize` row function.
pub struct TokenizeRows;

fn list_of(name: &str, item: DataType) -> Field {
    Field::new(
        name,
        DataType::List(Arc::new(Field::new_list_field(item, true))),
        true,
    )
}

/// One row's outcome.
struct RowOutcome {
    windows: Vec<Tokenized>,
    unlabelled_windows: u64,
    truncated: bool,
    dropped_tokens: u64,
    dropped_entities: u64,
    through_tokenizers: u64,
}

impl RowFunction for TokenizeRows {
    const NAME: &'static str = "medtune_tokenize";
    type Prepared = Prepared;

    fn output_fields() -> Fields {
        let ids = DataType::List(Arc::new(Field::new_list_field(DataType::UInt32, true)));
        let labels = DataType::List(Arc::new(Field::new_list_field(DataType::Int32, true)));
        let mut fields = vec![
            list_of(INPUT_IDS, ids),
            list_of(LABELS, labels),
            list_of(PROMPT_TOKENS, DataType::UInt32),
            Field::new(NO_LABELS, DataType::Utf8, true),
        ];
        fields.extend(CountColumns::fields(&COUNTS));
        fields.into()
    }

    fn prepare(settings: &str) -> Result<Prepared> {
        let settings: TokenizeSettings = parse_settings(Self::NAME, settings)?;
        let encoder = TextEncoder::new(load_tokenizer(&settings.tokenizer)?);
        let config = settings.config;
        let (labels, eos, template) = match config.mode {
            Mode::TokenClassification => {
                let labels = settings.labels.unwrap_or_default();
                let map = LabelMap::from_labels(&labels).map_err(PipelineError::Internal)?;
                (Some(map), None, None)
            }
            Mode::CausalLm => {
                let tokenizer = encoder.tokenizer();
                let eos = eos_id(tokenizer, &settings.tokenizer, config.eos_token.as_deref())?;
                let template =
                    PromptTemplate::load(config.template, &settings.tokenizer, tokenizer)
                        .map_err(|m| PipelineError::Usage(format!("[tokenize] template: {m}")))?;
                (None, Some(eos), Some(template))
            }
        };
        Ok(Prepared {
            config,
            encoder,
            labels,
            eos,
            template,
        })
    }

    fn map(prepared: &Prepared, batch: &RecordBatch) -> Result<StructArray> {
        let rows = ExampleRows::new(batch)?;
        let cfg = &prepared.config;
        let causal = cfg.mode == Mode::CausalLm;
        let outcomes: Vec<RowOutcome> = (0..rows.len())
            .into_par_iter()
            .map(|row| encode_row(prepared, &rows, row))
            .collect::<Result<_>>()?;
        let mut ids = ListBuilder::new(ListBuilder::new(UInt32Builder::new()));
        let mut labels = ListBuilder::new(ListBuilder::new(Int32Builder::new()));
        let mut prompt_tokens = ListBuilder::new(UInt32Builder::new());
        let mut no_labels = StringBuilder::new();
        let mut counts = CountColumns::new(&COUNTS);
        for mut outcome in outcomes {
            // A sequence without a token the loss counts teaches nothing and has no loss.
            let before = outcome.windows.len();
            outcome.windows.retain(|t| t.labelled(causal) > 0);
            outcome.unlabelled_windows = (before - outcome.windows.len()) as u64;
            for t in &outcome.windows {
                ids.values().values().append_slice(&t.ids);
                ids.values().append(true);
                labels.values().values().append_slice(&t.labels);
                labels.values().append(true);
                prompt_tokens.values().append_value(t.prompt_tokens as u32);
            }
            ids.append(true);
            labels.append(true);
            prompt_tokens.append(true);
            if outcome.windows.is_empty() {
                no_labels.append_value(no_labels_detail(cfg, outcome.dropped_tokens));
                outcome.unlabelled_windows = 0;
            } else {
                no_labels.append_null();
            }
            counts.push(&[
                outcome.unlabelled_windows,
                u64::from(outcome.truncated && !outcome.windows.is_empty()),
                if outcome.windows.is_empty() {
                    0
                } else {
                    outcome.dropped_tokens
                },
                if outcome.windows.is_empty() {
                    0
                } else {
                    outcome.dropped_entities
                },
                outcome.through_tokenizers,
            ]);
        }
        let fields = Self::output_fields();
        let mut columns: Vec<(Arc<Field>, ArrayRef)> = vec![
            (fields[0].clone(), Arc::new(ids.finish())),
            (fields[1].clone(), Arc::new(labels.finish())),
            (fields[2].clone(), Arc::new(prompt_tokens.finish())),
            (fields[3].clone(), Arc::new(no_labels.finish())),
        ];
        columns.extend(counts.finish());
        struct_of(columns)
    }
}

/// Encodes one row with a counter of its own for texts that went through `tokenizers`.
fn encode_row(prepared: &Prepared, rows: &ExampleRows<'_>, row: usize) -> Result<RowOutcome> {
    let cfg = &prepared.config;
    let encoder = prepared.encoder.tally();
    let id = rows.id.value(row);
    let outcome = match (&prepared.labels, prepared.eos) {
        (Some(map), _) => {
            let words = ExampleRows::list(rows.words, row);
            let tags = ExampleRows::list(rows.tags, row);
            let out = encode_words(&encoder, &words, &tags, map, cfg).map_err(|m| {
                PipelineError::bad_input(
                    rows.source_file.value(row),
                    format!("line {} (row {id}): {m}", rows.line.value(row)),
                )
            })?;
            RowOutcome {
                truncated: out.dropped_words > 0,
                dropped_tokens: out.dropped_tokens,
                dropped_entities: out.dropped_entities,
                windows: out.windows,
                unlabelled_windows: 0,
                through_tokenizers: 0,
            }
        }
        (None, Some(eos)) => {
            let prompt = ExampleRows::text(rows.prompt, row).unwrap_or("");
            let completion = ExampleRows::text(rows.completion, row).unwrap_or("");
            let template = prepared.template.as_ref().expect("SFT has a template");
            let (t, dropped) = encode_sft(&encoder, template, prompt, completion, eos, cfg)
                .map_err(|m| PipelineError::Internal(format!("row {id}: {m}")))?;
            RowOutcome {
                truncated: dropped > 0,
                dropped_tokens: dropped,
                dropped_entities: 0,
                windows: vec![t],
                unlabelled_windows: 0,
                through_tokenizers: 0,
            }
        }
        (None, None) => unreachable!("one of the modes is set"),
    };
    Ok(RowOutcome {
        through_tokenizers: encoder.through_tokenizers(),
        ..outcome
    })
}
