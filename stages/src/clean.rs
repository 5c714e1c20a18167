//! The clean stage: drops rows a model cannot learn from, each with its reason —
//! `empty_prompt`, `empty_completion` (a completion that is there but blank) and `no_entities`
//! (an extraction completion without a single list item; for BIO sentences without an entity
//! tag, only when `bio_require_entities` is set).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringBuilder, StructArray};
use arrow::datatypes::{DataType, Field, Fields};
use arrow::record_batch::RecordBatch;
use medtune_formats::text::bounded_raw;
use medtune_pipeline::{
    AppendOptions, OutputDecl, PipelineConfig, Result, RoutedRows, RowFunction, RowStage, Stage,
    StageContext, WorkUnit,
};
use medtune_schemas::dataset::{CLEANED, CLEAN_REJECTS};
use serde::{Deserialize, Serialize};

use crate::shared::chemprot::{ENTITY_TASKS, RELATION_TASK};
use crate::shared::examples::ExampleRows;
use crate::shared::mapped::{field, parse_settings, struct_of};
use crate::shared::rejects::{filter_outputs, write_filtered, RejectBatch, RejectRow};

/// The stage name: its `[clean]` config section and its cache folder.
pub const NAME: &str = "clean";

fn default_max_raw_bytes() -> usize {
    4096
}

/// The `[clean]` config section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanConfig {
    /// Drop rows whose prompt is missing or blank.
    #[serde(default = "medtune_pipeline::config::default_true")]
    pub drop_empty_prompt: bool,
    /// Drop rows whose completion is present but blank.
    #[serde(default = "medtune_pipeline::config::default_true")]
    pub drop_empty_completion: bool,
    /// Drop extraction rows (ChemProt tasks) whose completion lists no item.
    #[serde(default = "medtune_pipeline::config::default_true")]
    pub drop_no_entities: bool,
    /// Drop BIO sentences without any B-/I- tag.
    #[serde(default)]
    pub bio_require_entities: bool,
    /// Raw text kept per reject, in bytes.
    #[serde(default = "default_max_raw_bytes")]
    pub max_raw_bytes: usize,
}

/// Why a row is dropped, if it is.
pub fn verdict(
    rows: &ExampleRows<'_>,
    row: usize,
    cfg: &CleanConfig,
) -> Option<(&'static str, String)> {
    let prompt = ExampleRows::text(rows.prompt, row);
    if cfg.drop_empty_prompt && prompt.is_none_or(|p| p.trim().is_empty()) {
        return Some(("empty_prompt", "the prompt is empty".into()));
    }
    let completion = ExampleRows::text(rows.completion, row);
    if cfg.drop_empty_completion && completion.is_some_and(|c| c.trim().is_empty()) {
        return Some(("empty_completion", "the completion is empty".into()));
    }
    let task = ExampleRows::text(rows.task, row);
    if cfg.drop_no_entities {
        if let (Some(task), Some(text)) = (task, completion) {
            let extraction = ENTITY_TASKS.contains(&task) || task == RELATION_TASK;
            let has_item = text.lines().any(|l| {
                let t = l.trim_start();
                t.starts_with('-') && !t[1..].trim().is_empty()
            });
            if extraction && !has_item {
                return Some((
                    "no_entities",
                    format!("the `{task}` completion lists no entity"),
                ));
            }
        }
    }
    if cfg.bio_require_entities && !rows.tags.is_null(row) {
        let tags = ExampleRows::list(rows.tags, row);
        if tags.iter().all(|t| *t == "O") {
            return Some(("no_entities", "the sentence has no entity tag".into()));
        }
    }
    None
}

/// Clean's per-row work as a row function (`medtune_clean`): each row's verdict, as a `reason`
/// and a `detail` (both null for a row that is kept).
pub struct CleanRows;

impl RowFunction for CleanRows {
    const NAME: &'static str = "medtune_clean";
    type Prepared = CleanConfig;

    fn output_fields() -> Fields {
        vec![
            Field::new(REASON, DataType::Utf8, true),
            Field::new(DETAIL, DataType::Utf8, true),
        ]
        .into()
    }

    fn prepare(settings: &str) -> Result<CleanConfig> {
        parse_settings(Self::NAME, settings)
    }

    fn map(config: &CleanConfig, batch: &RecordBatch) -> Result<StructArray> {
        let rows = ExampleRows::new(batch)?;
        let (mut reason, mut detail) = (StringBuilder::new(), StringBuilder::new());
        for row in 0..rows.len() {
            let verdict = verdict(&rows, row, config);
            reason.append_option(verdict.as_ref().map(|v| v.0));
            detail.append_option(verdict.as_ref().map(|v| v.1.as_str()));
        }
        let fields = Self::output_fields();
        struct_of(vec![
            (fields[0].clone(), Arc::new(reason.finish()) as ArrayRef),
            (fields[1].clone(), Arc::new(detail.finish()) as ArrayRef),
        ])
    }
}

const REASON: &str = "reason";
const DETAIL: &str = "detail";

/// The clean stage.
pub struct CleanStage {
    config: CleanConfig,
    input: String,
}

impl CleanStage {
    /// Builds the stage from `[clean]`, reading the dataset `input`.
    pub fn from_config(config: &PipelineConfig, input: &str) -> Result<Self> {
        Ok(CleanStage {
            config: config.section(NAME)?,
            input: input.to_string(),
        })
    }
}

impl Stage for CleanStage {
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
        <CleanRows as RowStage>::outputs()
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).expect("config serialises")
    }

    fn run(&self, ctx: &mut StageContext<'_>) -> Result<()> {
        // Row by row: an input that only grew extends the previous output with its new rows.
        ctx.append_to_previous(AppendOptions::default())?;
        ctx.set_work_total(ctx.input(&self.input)?.manifest.rows, WorkUnit::Rows);
        let settings = serde_json::to_value(&self.config).expect("config serialises");
        ctx.write_rows::<CleanRows>(&self.input, &settings)
    }
}

impl RowStage for CleanRows {
    fn outputs() -> Vec<OutputDecl> {
        filter_outputs(CLEANED, CLEAN_REJECTS)
    }

    fn route(
        config: &CleanConfig,
        batch: &RecordBatch,
        mapped: &StructArray,
        out: &mut RoutedRows,
    ) -> Result<()> {
        let (reasons, details) = (
            field(mapped, REASON)?.as_string::<i32>(),
            field(mapped, DETAIL)?.as_string::<i32>(),
        );
        let rows = ExampleRows::new(batch)?;
        let mut keep = Vec::with_capacity(rows.len());
        let mut rejects = RejectBatch::default();
        for row in 0..rows.len() {
            keep.push(reasons.is_null(row));
            if reasons.is_valid(row) {
                let (reason, detail) = (reasons.value(row), details.value(row));
                out.count_dropped(reason, 1);
                let raw = format!(
                    "{}\n\n{}",
                    ExampleRows::text(rows.prompt, row).unwrap_or(""),
                    ExampleRows::text(rows.completion, row).unwrap_or("")
                );
                rejects.push(RejectRow {
                    stage: NAME,
                    source_file: rows.source_file.value(row),
                    line: rows.line.value(row),
                    id: rows.id.value(row),
                    reason,
                    detail,
                    raw: &bounded_raw(raw.as_bytes(), config.max_raw_bytes),
                    duplicate_of: None,
                });
            }
        }
        out.count_in(rows.len() as u64);
        write_filtered(out, batch, keep, CLEANED, &mut rejects, CLEAN_REJECTS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::example_batch::{ExampleBatch, FileInfo};
    use medtune_formats::record::Example;

    fn verdicts(examples: &[Example], cfg: &CleanConfig) -> Vec<Option<&'static str>> {
        let mut batch = ExampleBatch::default();
        let file = FileInfo {
            source_file: "t.jsonl",
            file_name: "t.jsonl",
            source_kind: "prompt_completion",
        };
        for (i, e) in examples.iter().enumerate() {
            batch.push(&file, i as u64 + 1, e);
        }
        let batch = batch.finish().unwrap();
        let rows = ExampleRows::new(&batch).unwrap();
        (0..rows.len())
            .map(|r| verdict(&rows, r, cfg).map(|(reason, _)| reason))
            .collect()
    }

    fn row(task: Option<&str>, prompt: Option<&str>, completion: Option<&str>) -> Example {
        Example {
            line: 1,
            task: task.map(str::to_string),
            prompt: prompt.map(str::to_string),
            completion: completion.map(str::to_string),
            group_key: "g".into(),
            ..Example::default()
        }
    }

    fn bio(tags: &[&str]) -> Example {
        Example {
            line: 1,
            task: Some("ner".into()),
            prompt: Some("w".into()),
            words: Some(tags.iter().map(|_| "w".to_string()).collect()),
            tags: Some(tags.iter().map(|t| t.to_string()).collect()),
            group_key: "g".into(),
            ..Example::default()
        }
    }

    fn config() -> CleanConfig {
        serde_json::from_str("{}").unwrap()
    }

    #[test]
    fn each_rule_drops_with_its_reason() {
        let rows = [
            row(Some("chemicals"), Some("List."), Some("- aspirin")),
            row(Some("chemicals"), Some("  \n"), Some("- aspirin")),
            row(Some("chemicals"), None, Some("- aspirin")),
            row(Some("diseases"), Some("List."), Some(" \n ")),
            row(Some("diseases"), Some("List."), Some("None found.")),
            row(Some("influences"), Some("List."), Some("- \n-")),
            row(Some("qa"), Some("Why?"), Some("Because.")),
            row(Some("qa"), Some("Why?"), Some("")),
        ];
        assert_eq!(
            verdicts(&rows, &config()),
            [
                None,
                Some("empty_prompt"),
                Some("empty_prompt"),
                Some("empty_completion"),
                Some("no_entities"),
                Some("no_entities"),
                None,
                Some("empty_completion"),
            ]
        );
    }

    #[test]
    fn rules_can_be_switched_off_and_bio_entities_required() {
        let mut cfg = config();
        cfg.drop_no_entities = false;
        cfg.drop_empty_completion = false;
        let rows = [
            row(Some("diseases"), Some("List."), Some("None found.")),
            row(Some("diseases"), Some("List."), Some("")),
        ];
        assert_eq!(verdicts(&rows, &cfg), [None, None]);
        let sentences = [bio(&["O", "O"]), bio(&["B-Chemical", "O"])];
        assert_eq!(verdicts(&sentences, &config()), [None, None]);
        cfg.bio_require_entities = true;
        assert_eq!(verdicts(&sentences, &cfg), [Some("no_entities"), None]);
    }
}
