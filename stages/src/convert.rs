//! The convert stage: rewrites extraction completions into one canonical form.
//!
//! Relation lines `- Chemical X influences disease Y` (any case, stray whitespace) become
//! `- x | y`; entity items become normalised (lower-case, whitespace folded, typographic quotes
//! straightened, hyphens kept) and repeated entities within one completion are removed, keeping
//! first-seen order. A line that looks like a relation but does not parse, or that is no list
//! item at all, is kept unchanged and counted. Rows of other tasks pass through untouched.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{ArrayRef, StringBuilder, StructArray};
use arrow::datatypes::{DataType, Field, Fields};
use arrow::record_batch::RecordBatch;
use medtune_pipeline::{
    AppendOptions, OutputDecl, OutputRole, PipelineConfig, Result, RoutedRows, RowFunction,
    RowStage, Stage, StageContext, WorkUnit,
};
use medtune_schemas::col;
use medtune_schemas::dataset::CONVERTED;
use serde::{Deserialize, Serialize};

use crate::shared::chemprot::{
    item_text, normalize_entity, ENTITY_TASKS, RELATION_LINE, RELATION_TASK,
};
use crate::shared::examples::ExampleRows;
use crate::shared::mapped::{add_counts, field, parse_settings, struct_of, CountColumns};

/// The stage name: its `[convert]` config section and its cache folder.
pub const NAME: &str = "convert";

/// The `[convert]` config section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvertConfig {
    /// Rewrite `- Chemical X influences disease Y` lines as `- x | y`.
    #[serde(default = "medtune_pipeline::config::default_true")]
    pub relations: bool,
    /// Normalise entity strings.
    #[serde(default = "medtune_pipeline::config::default_true")]
    pub normalize_entities: bool,
    /// Remove repeated entities (and relations) within one completion.
    #[serde(default = "medtune_pipeline::config::default_true")]
    pub dedupe_entities: bool,
}

impl Default for ConvertConfig {
    fn default() -> Self {
        ConvertConfig {
            relations: true,
            normalize_entities: true,
            dedupe_entities: true,
        }
    }
}

/// What happened to the lines of converted completions.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConvertCounts {
    /// `- Chemical X influences disease Y` lines rewritten as `- x | y`.
    pub relation_lines_converted: u64,
    /// `- x | y` lines already in the target form (normalised).
    pub relation_lines_already_converted: u64,
    /// Relation-looking lines that did not parse, kept unchanged.
    pub relation_lines_unparsed: u64,
    /// Entity items whose text changed under normalisation.
    pub entities_normalised: u64,
    /// Entity or relation items removed as repeats within their completion.
    pub duplicate_entities_removed: u64,
    /// `- ` items with no text, removed.
    pub empty_items_removed: u64,
    /// Blank lines removed.
    pub blank_lines_removed: u64,
    /// Lines that are no list item, kept unchanged.
    pub unrecognised_lines: u64,
    /// Rows whose completion changed.
    pub rows_changed: u64,
}

impl ConvertCounts {
    fn pairs(&self) -> [(&'static str, u64); 9] {
        [
            ("relation_lines_converted", self.relation_lines_converted),
            (
                "relation_lines_already_converted",
                self.relation_lines_already_converted,
            ),
            ("relation_lines_unparsed", self.relation_lines_unparsed),
            ("entities_normalised", self.entities_normalised),
            (
                "duplicate_entities_removed",
                self.duplicate_entities_removed,
            ),
            ("empty_items_removed", self.empty_items_removed),
            ("blank_lines_removed", self.blank_lines_removed),
            ("unrecognised_lines", self.unrecognised_lines),
            ("rows_changed", self.rows_changed),
        ]
    }
}

/// Converts one completion of an extraction task; `relation_task` says every item should be a
/// relation.
pub fn convert_completion(
    completion: &str,
    relation_task: bool,
    config: &ConvertConfig,
    counts: &mut ConvertCounts,
) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    let normalize = |s: &str, counts: &mut ConvertCounts| {
        if !config.normalize_entities {
            return s.trim().to_string();
        }
        let n = normalize_entity(s);
        if n != s {
            counts.entities_normalised += 1;
        }
        n
    };
    for line in completion.lines() {
        if line.trim().is_empty() {
            counts.blank_lines_removed += 1;
            continue;
        }
        let item = if let (true, Some(c)) = (config.relations, RELATION_LINE.captures(line)) {
            counts.relation_lines_converted += 1;
            let (x, y) = (normalize(&c[1], counts), normalize(&c[2], counts));
            format!("- {x} | {y}")
        } else if let Some(text) = item_text(line) {
            let relation_like = relation_task || text.to_lowercase().contains("influences");
            match text.split_once('|') {
                Some((x, y)) if !x.trim().is_empty() && !y.trim().is_empty() && relation_task => {
                    counts.relation_lines_already_converted += 1;
                    let (x, y) = (normalize(x.trim(), counts), normalize(y.trim(), counts));
                    format!("- {x} | {y}")
                }
                _ if relation_like => {
                    counts.relation_lines_unparsed += 1;
                    out.push(line.to_string());
                    continue;
                }
                _ if text.is_empty() => {
                    counts.empty_items_removed += 1;
                    continue;
                }
                _ => format!("- {}", normalize(text, counts)),
            }
        } else {
            counts.unrecognised_lines += 1;
            out.push(line.to_string());
            continue;
        };
        if config.dedupe_entities && !seen.insert(item.clone()) {
            counts.duplicate_entities_removed += 1;
            continue;
        }
        out.push(item);
    }
    out.join("\n")
}

/// The convert stage.
pub struct ConvertStage {
    config: ConvertConfig,
    input: String,
}

impl ConvertStage {
    /// Builds the stage from `[convert]`, reading the dataset `input`.
    pub fn from_config(config: &PipelineConfig, input: &str) -> Result<Self> {
        Ok(ConvertStage {
            config: config.section(NAME)?,
            input: input.to_string(),
        })
    }
}

/// Convert's per-row work as a row function (`medtune_convert`): each row's completion,
/// converted when its task is an extraction task, and the row's line counts.
pub struct ConvertRows;

/// The struct field holding the converted completion.
const CONVERTED_COMPLETION: &str = "completion";

impl ConvertCounts {
    fn names() -> Vec<&'static str> {
        ConvertCounts::default()
            .pairs()
            .iter()
            .map(|(n, _)| *n)
            .collect()
    }
}

impl RowFunction for ConvertRows {
    const NAME: &'static str = "medtune_convert";
    type Prepared = ConvertConfig;

    fn output_fields() -> Fields {
        let mut fields = vec![Field::new(CONVERTED_COMPLETION, DataType::Utf8, true)];
        fields.extend(CountColumns::fields(&ConvertCounts::names()));
        fields.into()
    }

    fn prepare(settings: &str) -> Result<ConvertConfig> {
        parse_settings(Self::NAME, settings)
    }

    fn map(config: &ConvertConfig, batch: &RecordBatch) -> Result<StructArray> {
        let rows = ExampleRows::new(batch)?;
        let mut completion = StringBuilder::new();
        let mut counters = CountColumns::new(&ConvertCounts::names());
        for row in 0..rows.len() {
            let mut counts = ConvertCounts::default();
            let task = ExampleRows::text(rows.task, row);
            let old = ExampleRows::text(rows.completion, row);
            let new = match (task, old) {
                (Some(task), Some(text))
                    if ENTITY_TASKS.contains(&task) || task == RELATION_TASK =>
                {
                    let new = convert_completion(text, task == RELATION_TASK, config, &mut counts);
                    if new != text {
                        counts.rows_changed += 1;
                    }
                    Some(new)
                }
                (_, other) => other.map(str::to_string),
            };
            completion.append_option(new);
            let values: Vec<u64> = counts.pairs().iter().map(|(_, n)| *n).collect();
            counters.push(&values);
        }
        let mut columns = vec![(
            Arc::new(Field::new(CONVERTED_COMPLETION, DataType::Utf8, true)),
            Arc::new(completion.finish()) as ArrayRef,
        )];
        columns.extend(counters.finish());
        struct_of(columns)
    }
}

impl Stage for ConvertStage {
    fn name(&self) -> &str {
        NAME
    }

    fn version(&self) -> u32 {
        // 2: parts are written per chunk of the input.
        2
    }

    fn inputs(&self) -> Vec<String> {
        vec![self.input.clone()]
    }

    fn outputs(&self) -> Vec<OutputDecl> {
        <ConvertRows as RowStage>::outputs()
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).expect("config serialises")
    }

    fn run(&self, ctx: &mut StageContext<'_>) -> Result<()> {
        // Row by row: an input that only grew extends the previous output with its new rows.
        ctx.append_to_previous(AppendOptions::default())?;
        ctx.set_work_total(ctx.input(&self.input)?.manifest.rows, WorkUnit::Rows);
        let settings = serde_json::to_value(&self.config).expect("config serialises");
        ctx.write_rows::<ConvertRows>(&self.input, &settings)?;
        // Counters exist even when no row reached them.
        for name in ConvertCounts::names() {
            ctx.count(name, 0);
        }
        Ok(())
    }
}

impl RowStage for ConvertRows {
    fn outputs() -> Vec<OutputDecl> {
        vec![OutputDecl::new(
            CONVERTED,
            medtune_schemas::examples(),
            OutputRole::Kept,
        )]
    }

    fn route(
        _: &ConvertConfig,
        batch: &RecordBatch,
        mapped: &StructArray,
        out: &mut RoutedRows,
    ) -> Result<()> {
        out.count_in(batch.num_rows() as u64);
        let index = batch.schema().index_of(col::COMPLETION)?;
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns[index] = field(mapped, CONVERTED_COMPLETION)?.clone();
        out.write(CONVERTED, &RecordBatch::try_new(batch.schema(), columns)?)?;
        add_counts(out, mapped, &ConvertCounts::names())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(text: &str, relation_task: bool) -> (String, ConvertCounts) {
        let mut counts = ConvertCounts::default();
        let out = convert_completion(text, relation_task, &ConvertConfig::default(), &mut counts);
        (out, counts)
    }

    #[test]
    fn relation_lines_become_pipe_pairs_in_any_case_and_spacing() {
        let (out, counts) = convert(
            "- Chemical Bupivacaine influences disease Loss of  pinprick sensation\n\
             -chemical   COCAINE INFLUENCES DISEASE myocardial infarction  \n\
             - Chemical bupivacaine influences disease loss of pinprick sensation",
            true,
        );
        assert_eq!(
            out,
            "- bupivacaine | loss of pinprick sensation\n- cocaine | myocardial infarction"
        );
        assert_eq!(counts.relation_lines_converted, 3);
        assert_eq!(counts.duplicate_entities_removed, 1);
    }

    #[test]
    fn unparseable_relation_lines_are_kept_unchanged_and_counted() {
        let text = "- Chemical aspirin causes disease asthma\n- Chemical x influences disease \n\
                    - Chemical lithium influences disease tremor";
        let (out, counts) = convert(text, true);
        assert_eq!(
            out,
            "- Chemical aspirin causes disease asthma\n- Chemical x influences disease \n\
             - lithium | tremor"
        );
        assert_eq!(counts.relation_lines_unparsed, 2);
        assert_eq!(counts.relation_lines_converted, 1);
    }

    #[test]
    fn entities_are_normalised_and_repeats_removed_in_first_seen_order() {
        let (out, counts) = convert(
            "- Oxprenolol\n- terbutaline\n-  OXPRENOLOL \n- tri-iodo-thyronine\n- \u{201C}Ecstasy\u{201D}\n\
             - \u{2018}crack\u{2019}  cocaine\n- ",
            false,
        );
        assert_eq!(
            out,
            "- oxprenolol\n- terbutaline\n- tri-iodo-thyronine\n- \"ecstasy\"\n- 'crack' cocaine"
        );
        assert_eq!(counts.duplicate_entities_removed, 1);
        assert_eq!(counts.empty_items_removed, 1);
        assert_eq!(counts.entities_normalised, 4);
    }

    #[test]
    fn unicode_entities_lower_case_fully() {
        assert_eq!(normalize_entity("Ä-ÖSTROGEN  Ⅱ"), "ä-östrogen ⅱ");
    }

    #[test]
    fn lines_that_are_no_items_are_kept_and_counted() {
        let (out, counts) = convert("None found.\n- heparin\n\n", false);
        assert_eq!(out, "None found.\n- heparin");
        assert_eq!(counts.unrecognised_lines, 1);
        assert_eq!(counts.blank_lines_removed, 1);
    }

    #[test]
    fn pipe_pairs_already_converted_are_normalised_not_counted_as_unparsed() {
        let (out, counts) = convert("- Aspirin |  Asthma", true);
        assert_eq!(out, "- aspirin | asthma");
        assert_eq!(counts.relation_lines_already_converted, 1);
        assert_eq!(counts.relation_lines_unparsed, 0);
    }
}
