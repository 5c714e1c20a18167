//! The ingest stage: reads raw input files into the `ingested` dataset, streaming, with every
//! bad record sent to `rejects` with its file, line, reason and (bounded) raw text.
//!
//! Formats: prompt/completion JSON (ChemProt style), alpaca JSON (`instruction`, `input`,
//! `output`), BIO JSON, each as a JSON array or as JSON lines; and CoNLL TSV.

mod append;

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use medtune_pipeline::{
    AppendOptions, OutputDecl, OutputRole, PipelineConfig, PipelineError, Result, SourceDecl,
    Stage, StageContext, WorkUnit,
};
use serde::{Deserialize, Serialize};

use medtune_formats::bio::BioConfig;
use medtune_formats::conll::ConllSentences;
use medtune_formats::framing::JsonRecords;
use medtune_formats::json_records::{self, Origin};
use medtune_formats::record::{ReadItem, Reject, RejectReason};
use medtune_formats::text::bounded_raw;
use medtune_schemas::dataset::{INGESTED, INGEST_REJECTS};

use self::append::AppendStart;
use crate::shared::example_batch::{self, ExampleBatch, FileInfo};
use crate::shared::rejects::{RejectBatch, RejectRow};

/// The stage name: its `[ingest]` config section and its cache folder.
pub const NAME: &str = "ingest";

pub use medtune_formats::framing::{JsonRecords as JsonRecordReader, RawRecord};
pub use medtune_formats::json_records::{chemprot_body, chemprot_task};

/// A batch is sent on once it holds this much text, even before `batch_rows` rows, so memory
/// stays bounded however long the records are.
const BATCH_TEXT_BYTES: usize = 4 << 20;

/// Input formats the ingest stage reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputFormat {
    /// `{"prompt", "completion"}` records (ChemProt style), JSON lines or array.
    PromptCompletion,
    /// `{"instruction", "input", "output"}` records, JSON array or lines.
    Alpaca,
    /// `{"text", "labels": [{"word", "entity"}]}` records, JSON array or lines.
    BioJson,
    /// `token<TAB>label` lines, a blank line after each sentence.
    Conll,
}

impl InputFormat {
    /// The `source_kind` column value.
    pub fn kind(self) -> &'static str {
        match self {
            InputFormat::PromptCompletion => "prompt_completion",
            InputFormat::Alpaca => "alpaca",
            InputFormat::BioJson => "bio_json",
            InputFormat::Conll => "conll",
        }
    }
}

fn default_max_raw_bytes() -> usize {
    4096
}
fn default_max_record_bytes() -> usize {
    16 << 20
}
fn default_max_sentence_words() -> usize {
    4096
}

/// The `[ingest]` config section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Format of every input file.
    pub format: InputFormat,
    /// Input files, relative to the config's folder.
    pub inputs: Vec<String>,
    /// BIO tag checks.
    #[serde(default)]
    pub bio: BioConfig,
    /// Raw text kept per reject, in bytes (longer text is cut and marked).
    #[serde(default = "default_max_raw_bytes")]
    pub max_raw_bytes: usize,
    /// Longest JSON record accepted, in bytes.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// Longest CoNLL sentence accepted, in words.
    #[serde(default = "default_max_sentence_words")]
    pub max_sentence_words: usize,
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
            let name = file_name(&source.path);
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
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Counts bytes read, for progress.
struct Counting<R> {
    inner: R,
    bytes: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

type Input = BufReader<Counting<File>>;

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
        let starts: Vec<Option<AppendStart>> = match self.append_starts(ctx)? {
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
            let name = file_name(&source.path);
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
                Some(r) => open_at(&source.path, r.start)?,
                None => self.open(&source.path)?,
            };
            let read = |reader: &Input| done_before + reader.get_ref().bytes;
            let cfg = &self.config;
            let bio = &cfg.bio;
            let mut array = false;
            match cfg.format {
                InputFormat::Conll => {
                    let mut iter = ConllSentences::new(input, &name, bio, cfg.max_sentence_words);
                    while let Some(item) = iter.next() {
                        let item = item.map_err(|e| unreadable(&source.path, e))?;
                        self.take(ctx, &mut run, item, read(iter.get_ref()))?;
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

/// The error for an input that cannot be opened or read: bad input (exit 2), naming the file
/// and the OS error.
pub(crate) fn unreadable(path: &Path, e: io::Error) -> PipelineError {
    PipelineError::bad_input(path, format!("cannot read it: {e}"))
}

/// Opens an input at byte `start` (where an earlier ingest of it stopped).
fn open_at(path: &Path, start: u64) -> Result<Input> {
    let mut file = File::open(path).map_err(|e| unreadable(path, e))?;
    file.seek(SeekFrom::Start(start))
        .map_err(|e| unreadable(path, e))?;
    Ok(BufReader::with_capacity(
        1 << 20,
        Counting {
            inner: file,
            bytes: 0,
        },
    ))
}

impl IngestStage {
    /// Where to carry on reading every input, when the previous output left append points
    /// and every input only grew past its point.
    fn append_starts(&self, ctx: &StageContext<'_>) -> Result<Option<Vec<AppendStart>>> {
        if self.config.format == InputFormat::Conll {
            return Ok(None);
        }
        let Some(points) = ctx
            .previous()
            .and_then(|p| append::load(&p.artifacts_dir()))
        else {
            return Ok(None);
        };
        if points.len() != self.sources.len() {
            return Ok(None);
        }
        let mut starts = Vec::with_capacity(points.len());
        for (source, point) in self.sources.iter().zip(&points) {
            if point.source != source.written {
                return Ok(None);
            }
            match append::check(&source.path, point)? {
                Some(r) => starts.push(r),
                None => return Ok(None),
            }
        }
        Ok(Some(starts))
    }
}

impl IngestStage {
    /// Opens an input, failing clearly when it is empty or obviously not the declared format.
    fn open(&self, path: &Path) -> Result<Input> {
        let mut file = File::open(path).map_err(|e| unreadable(path, e))?;
        let mut head = vec![0u8; 64 * 1024];
        let mut filled = 0;
        while filled < head.len() {
            let n = file
                .read(&mut head[filled..])
                .map_err(|e| unreadable(path, e))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        head.truncate(filled);
        sniff(self.config.format, &head).map_err(|m| PipelineError::bad_input(path, m))?;
        open_at(path, 0)
    }

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

/// Checks the first bytes of a file against its declared format.
fn sniff(format: InputFormat, head: &[u8]) -> std::result::Result<(), String> {
    let body = head.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(head);
    let Some(first) = body.iter().position(|b| !b.is_ascii_whitespace()) else {
        return Err(if head.is_empty() {
            "the file is empty".into()
        } else {
            "the file holds only whitespace".into()
        });
    };
    let line = 1 + body[..first].iter().filter(|&&b| b == b'\n').count();
    match format {
        InputFormat::Conll => {
            let rest = &body[first..];
            let end = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
            let first_line = &rest[..end];
            if first_line.starts_with(b"-DOCSTART-") || memchr::memchr(b'\t', first_line).is_some()
            {
                Ok(())
            } else {
                Err(format!(
                    "not a CoNLL file: line {line} has no tab (expected `token<TAB>label`), \
                     found {:?}",
                    String::from_utf8_lossy(&first_line[..first_line.len().min(80)])
                ))
            }
        }
        _ => match body[first] {
            b'[' | b'{' => Ok(()),
            other => Err(format!(
                "not JSON: format `{}` expects a JSON array or JSON lines, but line {line} \
                 starts with {:?}",
                format.kind(),
                char::from(other)
            )),
        },
    }
}
