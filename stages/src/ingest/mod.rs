//! The ingest stage: reads raw input files into the `ingested` dataset, streaming, with every
//! bad record sent to `rejects` with its file, line, reason and (bounded) raw text.
//!
//! Formats: prompt/completion JSON (ChemProt style), alpaca JSON (`instruction`, `input`,
//! `output`), BIO JSON, each as a JSON array or as JSON lines; and CoNLL TSV.

mod append;
mod config;
mod input;

use medtune_formats::conll::{ConllSentences, DocumentBoundary};
use medtune_formats::framing::JsonRecords;
use medtune_formats::json_records::{self, Origin};
use medtune_formats::record::{ReadItem, Reject, RejectReason};
use medtune_formats::text::bounded_raw;
use medtune_pipeline::{
    AppendOptions, OutputDecl, OutputRole, PipelineConfig, PipelineError, Result, SourceDecl,
    Stage, StageContext, WorkUnit,
};
use medtune_schemas::dataset::{INGESTED, INGEST_REJECTS};

use self::append::AppendStart;
pub use self::config::{IngestConfig, InputFormat};
use self::input::{unreadable, Input};
use crate::shared::example_batch::{self, ExampleBatch, FileInfo};
use crate::shared::rejects::{RejectBatch, RejectRow};

/// The stage name: its `[ingest]` config section and its cache folder.
pub const NAME: &str = "ingest";

pub use medtune_formats::framing::{JsonRecords as JsonRecordReader, RawRecord};
pub use medtune_formats::json_records::{chemprot_body, chemprot_task};

/// A batch is sent on once it holds this much text, even before `batch_rows` rows, so memory
/// stays bounded however long the records are.
const BATCH_TEXT_BYTES: usize = 4 << 20;

/// The warning for a CoNLL file in which `rule` found no document boundary.
fn unmarked_documents(file: &str, rule: DocumentBoundary) -> String {
    let so = match rule {
        DocumentBoundary::BlankLines => "the whole file is one document, one split group",
        DocumentBoundary::Docstart | DocumentBoundary::Comment => {
            "each sentence is its own document, and sentences of one document can land in \
             different splits"
        }
    };
    format!(
        "{file}: no document boundaries ({}), so {so}; if the corpus marks its documents \
         another way, set [ingest] documents = \"docstart\", \"blank_lines\" or \"comment\"",
        rule.marker()
    )
}

/// Per-file state of the ingest loop.
struct FileRun<'a> {
    info: FileInfo<'a>,
    kept: u64,
    rejected: u64,
    first_reject: Option<Reject>,
    /// Records (kept or rejected) read from the file, those of earlier runs included: the
    /// ordinal of the last one, which its row id carries.
    records: u64,
    examples: ExampleBatch,
    rejects: RejectBatch,
    /// Whether the file was read to its end without a truncation or trailing data.
    clean_end: bool,
}

/// The ingest stage.
pub struct IngestStage {
    config: IngestConfig,
    sources: Vec<SourceDecl>,
}

impl IngestStage {
    /// Builds the stage from the `[ingest]` section of `config`.
    pub fn from_config(config: &PipelineConfig) -> Result<Self> {
        let section: IngestConfig = config.section(NAME)?;
        if section.inputs.is_empty() {
            return Err(config.error("[ingest]: `inputs` lists no files"));
        }
        // `{}` is the shortest JSON record; a smaller bound would reject every record.
        config.check_range(
            NAME,
            "max_record_bytes",
            section.max_record_bytes,
            2..=usize::MAX,
        )?;
        config.check_range(
            NAME,
            "max_sentence_words",
            section.max_sentence_words,
            1..=usize::MAX,
        )?;
        if !section.documents.is_docstart() && section.format != InputFormat::Conll {
            return Err(config.error(format!(
                "[ingest]: `documents` marks documents in CoNLL files; format `{}` has none",
                section.format.kind()
            )));
        }
        let mut names = std::collections::BTreeSet::new();
        let sources: Vec<SourceDecl> = section
            .inputs
            .iter()
            .map(|written| SourceDecl {
                written: written.clone(),
                path: config.resolve(written),
            })
            .collect();
        for source in &sources {
            let name = input::file_name(&source.path);
            if !names.insert(name.clone()) {
                return Err(config.error(format!(
                    "[ingest]: two inputs are named `{name}`; row ids (`file:record`) would collide"
                )));
            }
        }
        Ok(IngestStage {
            config: section,
            sources,
        })
    }

    /// Accounts for one record read from the file of `run`: a kept example or a reject.
    fn take(
        &self,
        ctx: &mut StageContext<'_>,
        run: &mut FileRun<'_>,
        item: ReadItem,
        bytes_read: u64,
    ) -> Result<()> {
        ctx.count_in(1);
        // Row ids number the file's records (array elements, JSON lines, CoNLL sentences),
        // so they are unique and do not depend on line breaks: a minified array is one line.
        run.records += 1;
        let ordinal = run.records;
        match item {
            Ok((example, repairs)) => {
                run.examples.push(&run.info, ordinal, &example);
                run.kept += 1;
                if repairs > 0 {
                    ctx.count("bio_tags_repaired", repairs);
                }
            }
            Err(reject) => {
                if matches!(
                    reject.reason,
                    RejectReason::Truncated | RejectReason::TrailingData
                ) {
                    run.clean_end = false;
                }
                ctx.count_dropped(reject.reason.code(), 1);
                let id = example_batch::row_id(run.info.file_name, ordinal);
                run.rejects.push(RejectRow {
                    stage: self.name(),
                    source_file: run.info.source_file,
                    line: reject.line,
                    id: &id,
                    reason: reject.reason.code(),
                    detail: &reject.detail,
                    raw: &bounded_raw(&reject.raw, self.config.max_raw_bytes),
                    duplicate_of: None,
                });
                run.rejected += 1;
                run.first_reject.get_or_insert(reject);
            }
        }
        if run.examples.rows() >= ctx.batch_rows() || run.examples.text_bytes() >= BATCH_TEXT_BYTES
        {
            self.flush(ctx, run, false)?;
            ctx.report_progress(bytes_read);
        }
        Ok(())
    }

    fn flush(&self, ctx: &mut StageContext<'_>, run: &mut FileRun<'_>, all: bool) -> Result<()> {
        if run.examples.rows() > 0 {
            ctx.write(INGESTED, run.examples.finish()?)?;
        }
        if run.rejects.rows() > 0 && (all || run.rejects.rows() >= ctx.batch_rows()) {
            ctx.write(INGEST_REJECTS, run.rejects.finish()?)?;
        }
        Ok(())
    }
}

impl Stage for IngestStage {
    fn name(&self) -> &str {
        NAME
    }

    fn version(&self) -> u32 {
        // 2: row ids are `file:record ordinal`, not `file:line`.
        // 3: the append points artifact is `append_points.json` (was `resume.json`).
        3
    }

    fn outputs(&self) -> Vec<OutputDecl> {
        vec![
            OutputDecl::new(INGESTED, medtune_schemas::examples(), OutputRole::Kept),
            OutputDecl::new(
                INGEST_REJECTS,
                medtune_schemas::rejects(),
                OutputRole::Rejects,
            ),
        ]
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).expect("config serialises")
    }

    fn sources(&self) -> Vec<SourceDecl> {
        self.sources.clone()
    }

    fn run(&self, ctx: &mut StageContext<'_>) -> Result<()> {
        // Files that only grew since the previous output are read from where it stopped.
        let starts: Vec<Option<AppendStart>> =
            match append::starts(ctx, &self.sources, self.config.format)? {
                Some(starts)
                    if ctx.append_to_previous(AppendOptions {
                        sources_checked: true,
                        ..AppendOptions::default()
                    })? =>
                {
                    starts.into_iter().map(Some).collect()
                }
                _ => self.sources.iter().map(|_| None).collect(),
            };
        // Bytes to read per file, for progress.
        let to_read: Vec<u64> = self
            .sources
            .iter()
            .zip(&starts)
            .map(|(s, r)| {
                let len = std::fs::metadata(&s.path).map_or(0, |m| m.len());
                len.saturating_sub(r.as_ref().map_or(0, |r| r.start))
            })
            .collect();
        ctx.set_work_total(to_read.iter().sum(), WorkUnit::Bytes);
        let mut done_before = 0;
        let mut points = Vec::new();
        for ((source, start), bytes) in self.sources.iter().zip(starts).zip(to_read) {
            let name = input::file_name(&source.path);
            let mut run = FileRun {
                info: FileInfo {
                    source_file: &source.written,
                    file_name: &name,
                    source_kind: self.config.format.kind(),
                },
                kept: 0,
                rejected: 0,
                first_reject: None,
                records: start.as_ref().map_or(0, |r| r.records),
                examples: ExampleBatch::default(),
                rejects: RejectBatch::default(),
                clean_end: true,
            };
            let input = match &start {
                Some(r) => input::open_at(&source.path, r.start)?,
                None => input::open_checked(self.config.format, &source.path)?,
            };
            let read = |reader: &Input| done_before + reader.get_ref().bytes;
            let cfg = &self.config;
            let bio = &cfg.bio;
            let mut array = false;
            match cfg.format {
                InputFormat::Conll => {
                    let mut iter = ConllSentences::new(input, &name, bio, cfg.max_sentence_words)
                        .with_documents(cfg.documents);
                    while let Some(item) = iter.next() {
                        let item = item.map_err(|e| unreadable(&source.path, e))?;
                        self.take(ctx, &mut run, item, read(iter.get_ref()))?;
                    }
                    if iter.boundaries() == 0 && run.kept + run.rejected > 0 {
                        ctx.warn(unmarked_documents(&source.written, cfg.documents));
                    }
                }
                format => {
                    let mut iter = match &start {
                        Some(r) => {
                            JsonRecords::starting_at(input, r.line, r.array, cfg.max_record_bytes)
                        }
                        None => JsonRecords::new(input, cfg.max_record_bytes),
                    };
                    while let Some(framed) = iter.next() {
                        let framed = framed.map_err(|e| unreadable(&source.path, e))?;
                        let ordinal = run.records + 1;
                        let item = framed.and_then(|rec| {
                            let origin = Origin {
                                file_name: &name,
                                line: rec.line,
                                ordinal,
                            };
                            match format {
                                InputFormat::PromptCompletion => {
                                    json_records::prompt_completion(&rec.bytes, &origin)
                                        .map(|e| (e, 0))
                                }
                                InputFormat::Alpaca => {
                                    json_records::alpaca(&rec.bytes, &origin).map(|e| (e, 0))
                                }
                                _ => json_records::bio_json(&rec.bytes, &origin, bio),
                            }
                        });
                        self.take(ctx, &mut run, item, read(iter.get_ref()))?;
                    }
                    array = iter.is_array();
                }
            }
            self.flush(ctx, &mut run, true)?;
            done_before += bytes;
            let kept_before = start.as_ref().map_or(0, |r| r.kept);
            if run.kept + kept_before == 0 {
                if let Some(first) = run.first_reject {
                    return Err(PipelineError::bad_input(
                        &source.path,
                        format!(
                            "no record parsed as format `{}` ({} rejected; the first, at line {}: \
                             {}: {})",
                            self.config.format.kind(),
                            run.rejected,
                            first.line,
                            first.reason.code(),
                            first.detail
                        ),
                    ));
                }
            }
            if run.clean_end && self.config.format != InputFormat::Conll {
                points.extend(append::point_after(
                    &source.path,
                    &source.written,
                    array,
                    run.kept + kept_before,
                    run.records,
                    start.map(|r| r.prefix),
                )?);
            }
        }
        append::save(ctx.artifacts_dir()?, &points)
    }
}
