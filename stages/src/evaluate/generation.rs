//! Causal LM evaluation of SFT rows, per model variant:
//!
//! - **loss and perplexity** with teacher forcing: the mean cross-entropy over completion tokens
//!   (the EOS included, the prompt masked), `exp` of it the perplexity;
//! - **generation**: each row's prompt (the shard's tokens before the completion) continued
//!   greedily, batched with left padding and a KV cache, until EOS or `max_new_tokens`;
//!   decoded with the tokenizer (special tokens skipped) and compared with the reference
//!   completion from the split dataset: ROUGE-L F1 and BLEU-1 for every row, and for the
//!   extraction tasks the set-level scores of [`crate::shared::metrics::extraction`].
//!
//! Rows are generated longest prompt first, so a batch that does not fit fails at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, AsArray, Float64Builder, RecordBatch, StringBuilder, UInt32Builder};
use candle_core::Device;
use medtune_pipeline::{PipelineError, Result, StageContext, WorkUnit};
use medtune_qlora::auto::AutoModel;
use medtune_qlora::generate::{GenerateOptions, Generation, StopReason};
use medtune_qlora::train::TrainModel;
use medtune_schemas::col;
use medtune_schemas::dataset::PREDICTIONS;
use tokenizers::Tokenizer;

use super::tables::{family, MetricSink, MACRO, MICRO};
use super::{Bars, Confusion, Outcome, Sample, Variant};
use crate::shared::examples::ExampleRows;
use crate::shared::loader::BatchLoader;
use crate::shared::metrics::entities::Report;
use crate::shared::metrics::extraction::{
    is_extraction_task, parse_list, ExtractionScorer, SetCounts,
};
use crate::shared::metrics::text::{bleu1, corpus_bleu1, perplexity, rouge_l};

/// A row's reference, from the split dataset.
pub(super) struct Reference {
    /// The prompt text (for the report's samples).
    prompt: String,
    /// The reference completion.
    completion: String,
    /// The row's group (its article, for ChemProt).
    group: String,
}

/// The references of every row of `split` in the split dataset `dataset`.
pub(super) fn read_references(
    ctx: &StageContext<'_>,
    dataset: &str,
    split: &str,
) -> Result<HashMap<String, Reference>> {
    let mut out = HashMap::new();
    for batch in ctx.read(dataset)? {
        let batch = batch?;
        let rows = ExampleRows::new(&batch)?;
        let splits = batch
            .column_by_name(col::SPLIT)
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| PipelineError::Internal(format!("`{dataset}` has no split column")))?;
        for row in (0..rows.len()).filter(|&r| splits.value(r) == split) {
            let text = |c| ExampleRows::text(c, row).unwrap_or("").to_string();
            out.insert(
                rows.id.value(row).to_string(),
                Reference {
                    prompt: text(rows.prompt),
                    completion: text(rows.completion),
                    group: rows.group_key.value(row).to_string(),
                },
            );
        }
    }
    Ok(out)
}

/// A row to generate from.
struct PromptRow {
    id: String,
    task: Option<String>,
    prompt: Vec<u32>,
}

/// The prompt of every row `loader` yields; rows without prompt tokens are counted, not
/// returned.
fn read_prompts(loader: &BatchLoader) -> Result<(Vec<PromptRow>, u64)> {
    let (mut rows, mut empty) = (Vec::new(), 0);
    for batch in loader.epoch(0) {
        let batch = batch?;
        for r in 0..batch.rows() {
            let start = r * batch.seq_len;
            let prompt = batch.prompt_tokens[r] as usize;
            if prompt == 0 {
                empty += 1;
                continue;
            }
            rows.push(PromptRow {
                id: batch.ids[r].clone(),
                task: batch.tasks[r].clone(),
                prompt: batch.input_ids[start..start + prompt].to_vec(),
            });
        }
    }
    Ok((rows, empty))
}

/// How to generate and what to keep.
pub(super) struct GenerationSettings {
    /// Generation options (limit, EOS ids, padding id).
    pub options: GenerateOptions,
    /// Rows per generation batch.
    pub batch_size: usize,
    /// Score at most this many rows (the first by id).
    pub limit: Option<usize>,
    /// Rows shown in the report.
    pub samples: usize,
}

/// What one variant produced for one row.
struct Scored {
    generation: Generation,
    text: String,
    counts: Option<SetCounts>,
    rouge: f64,
    bleu: f64,
}

/// A causal-LM evaluation: what it reads besides the stage context.
pub(super) struct GenerationEval<'a> {
    /// The model, loaded once; each variant is a pass over it.
    pub model: &'a AutoModel,
    /// Where it runs.
    pub device: &'a Device,
    /// Decodes the generations.
    pub tokenizer: &'a Tokenizer,
    /// Batches of the scored split, for the teacher-forced loss.
    pub loss_batches: &'a BatchLoader,
    /// The same rows in large batches, for their prompts.
    pub prompt_batches: &'a BatchLoader,
    /// Prompt and reference completion per row id.
    pub references: &'a HashMap<String, Reference>,
    /// Batch size, limit, samples, generation options.
    pub settings: &'a GenerationSettings,
    /// The variants, in report order.
    pub variants: &'a [Variant],
}

impl GenerationEval<'_> {
    /// Evaluates every variant; see the module documentation.
    pub(super) fn run(&self, ctx: &mut StageContext<'_>) -> Result<Outcome> {
        let GenerationEval {
            prompt_batches,
            references,
            settings,
            variants,
            ..
        } = *self;
        let (mut rows, no_prompt) = read_prompts(prompt_batches)?;
        ctx.count_in(rows.len() as u64 + no_prompt);
        if no_prompt > 0 {
            ctx.count("rows_without_prompt_tokens", no_prompt);
        }
        if let Some(missing) = rows.iter().find(|r| !references.contains_key(&r.id)) {
            return Err(PipelineError::Internal(format!(
                "row {} of the shards is not in the split dataset",
                missing.id
            )));
        }
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        if let Some(limit) = settings.limit {
            if rows.len() > limit {
                ctx.count("rows_beyond_limit", (rows.len() - limit) as u64);
                rows.truncate(limit);
            }
        }
        ctx.count("rows_generated", rows.len() as u64);
        // Longest prompt first (ties by id): the widest batch runs first.
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by(|&a, &b| rows[b].prompt.len().cmp(&rows[a].prompt.len()));
        ctx.set_work_total((rows.len() * variants.len()) as u64, WorkUnit::Rows);

        let mut outcome = Outcome {
            rows: rows.len() as u64,
            ..Outcome::default()
        };
        let gold = article_gold(&rows, references);
        let mut per_variant: Vec<Vec<Scored>> = Vec::new();
        let mut bars = Vec::new();
        let mut tasks_seen: Vec<String> = Vec::new();
        let mut done = 0u64;
        for variant in variants {
            let mut sink = MetricSink::new(&variant.name, &mut outcome.metrics);
            self.teacher_forced_loss(variant, &mut sink)?;

            let (generations, seconds) = self.generate(ctx, variant, &rows, &order, &mut done)?;

            let (scored, extraction) = self.score(&rows, generations, &mut sink)?;
            if !extraction.tasks().is_empty() {
                let report = push_extraction(&extraction, &mut sink);
                tasks_seen = report.per_type.keys().cloned().collect();
                let mut values: Vec<f64> = report.per_type.values().map(|s| s.f1).collect();
                values.push(report.macro_avg.f1);
                bars.push((variant.name.clone(), values));
                outcome.confusions.push(Confusion {
                    title: format!(
                        "Predicted entities by the article's gold type, {} model (rows: the task \
                         that listed them)",
                        variant.name
                    ),
                    counts: entity_type_confusion(&rows, &scored, references, &gold),
                });
            }
            push_throughput(&mut sink, &scored, seconds);
            ctx.write(
                PREDICTIONS,
                predictions_batch(&variant.name, &rows, &scored, references)?,
            )?;
            per_variant.push(scored);
        }
        if !bars.is_empty() {
            tasks_seen.push(MACRO.to_string());
            outcome.bars = Some(Bars {
                title: "Extraction F1 per task (set level, pooled over rows)".into(),
                categories: tasks_seen,
                series: bars,
            });
        }
        outcome.samples = pick_samples(&rows, settings.samples)
            .into_iter()
            .map(|i| {
                let reference = &references[&rows[i].id];
                Sample {
                    id: rows[i].id.clone(),
                    task: rows[i].task.clone(),
                    prompt: reference.prompt.clone(),
                    reference: reference.completion.clone(),
                    outputs: variants
                        .iter()
                        .zip(&per_variant)
                        .map(|(v, scored)| (v.name.clone(), scored[i].text.clone()))
                        .collect(),
                }
            })
            .collect();
        Ok(outcome)
    }

    /// Decodes each row's generation and scores it against the reference: ROUGE-L, BLEU-1
    /// (pushed as the `text` family) and, for extraction tasks, the set counts.
    fn score(
        &self,
        rows: &[PromptRow],
        generations: Vec<Generation>,
        sink: &mut MetricSink<'_>,
    ) -> Result<(Vec<Scored>, ExtractionScorer)> {
        let mut extraction = ExtractionScorer::default();
        let mut scored = Vec::with_capacity(rows.len());
        let (mut rouge_sum, mut bleu_sum) = (0f64, 0f64);
        let mut pairs: Vec<(String, &str)> = Vec::with_capacity(rows.len());
        for (row, generation) in rows.iter().zip(generations) {
            let text = self
                .tokenizer
                .decode(&generation.tokens, true)
                .map_err(|e| PipelineError::Internal(format!("decoding row {}: {e}", row.id)))?;
            let reference = &self.references[&row.id].completion;
            let counts = row
                .task
                .as_deref()
                .filter(|t| is_extraction_task(t))
                .map(|task| extraction.add(task, &text, reference));
            let (rouge, bleu) = (rouge_l(&text, reference), bleu1(&text, reference));
            rouge_sum += rouge;
            bleu_sum += bleu;
            pairs.push((text.clone(), reference));
            scored.push(Scored {
                generation,
                text,
                counts,
                rouge,
                bleu,
            });
        }
        let n = rows.len().max(1) as f64;
        sink.push(family::TEXT, "all", "rouge_l", rouge_sum / n);
        sink.push(family::TEXT, "all", "bleu_1", bleu_sum / n);
        sink.push(
            family::TEXT,
            "all",
            "corpus_bleu_1",
            corpus_bleu1(pairs.iter().map(|(c, r)| (c.as_str(), *r))),
        );
        Ok((scored, extraction))
    }

    /// Greedy generations of `variant` for `rows`, batched in `order` (longest prompt first),
    /// with the seconds they took; `done` counts rows generated for the progress line.
    fn generate(
        &self,
        ctx: &StageContext<'_>,
        variant: &Variant,
        rows: &[PromptRow],
        order: &[usize],
        done: &mut u64,
    ) -> Result<(Vec<Generation>, f64)> {
        let clock = Instant::now();
        let mut generations: Vec<Option<Generation>> = vec![None; rows.len()];
        for chunk in order.chunks(self.settings.batch_size) {
            let prompts: Vec<&[u32]> = chunk.iter().map(|&i| rows[i].prompt.as_slice()).collect();
            let out = self
                .model
                .generate(&prompts, &self.settings.options, variant.pass, self.device)
                .map_err(internal)?;
            for (&i, g) in chunk.iter().zip(out) {
                generations[i] = Some(g);
            }
            *done += chunk.len() as u64;
            ctx.report_progress(*done);
            ctx.report_message(&format!("generating with the {} model", variant.name));
        }
        let seconds = clock.elapsed().as_secs_f64().max(1e-9);
        let generations = generations
            .into_iter()
            .map(|g| g.expect("every row generated"));
        Ok((generations.collect(), seconds))
    }

    /// The teacher-forced loss and perplexity of `variant` over every row of the split.
    fn teacher_forced_loss(&self, variant: &Variant, sink: &mut MetricSink<'_>) -> Result<()> {
        let clock = Instant::now();
        let (mut loss_sum, mut scored_tokens) = (0f64, 0u64);
        for batch in self.loss_batches.epoch(0) {
            let t = batch?.to_tensors(self.device).map_err(internal)?;
            let (loss, n) = self.model.loss(&t, variant.pass).map_err(internal)?;
            if n > 0 {
                let mean: f32 = loss.to_scalar().map_err(internal)?;
                loss_sum += f64::from(mean) * n as f64;
                scored_tokens += n as u64;
            }
        }
        let loss_seconds = clock.elapsed().as_secs_f64();
        sink.push(
            family::LM,
            "all",
            "loss",
            loss_sum / scored_tokens.max(1) as f64,
        );
        sink.push(
            family::LM,
            "all",
            "perplexity",
            perplexity(loss_sum, scored_tokens),
        );
        sink.push(family::LM, "all", "tokens", scored_tokens as f64);
        sink.push(family::LM, "all", "seconds", loss_seconds);
        Ok(())
    }
}

fn internal(e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Internal(e.to_string())
}

/// Up to `n` row indices, one per task first (rows are in id order), then the next rows.
fn pick_samples(rows: &[PromptRow], n: usize) -> Vec<usize> {
    let mut picked = Vec::new();
    let mut tasks = BTreeSet::new();
    for (i, row) in rows.iter().enumerate() {
        if picked.len() < n && tasks.insert(row.task.clone()) {
            picked.push(i);
        }
    }
    for i in 0..rows.len() {
        if picked.len() >= n {
            break;
        }
        if !picked.contains(&i) {
            picked.push(i);
        }
    }
    picked.sort_unstable();
    picked
}

/// The row's task when it is an entity task.
fn entity_task(row: &PromptRow) -> Option<&str> {
    row.task
        .as_deref()
        .filter(|t| crate::shared::chemprot::ENTITY_TASKS.contains(t))
}

/// Gold entities per (article, entity task), from the references of the rows scored.
type ArticleGold<'a> = HashMap<(&'a str, &'a str), BTreeSet<String>>;

fn article_gold<'a>(
    rows: &'a [PromptRow],
    references: &'a HashMap<String, Reference>,
) -> ArticleGold<'a> {
    let mut gold: ArticleGold<'a> = HashMap::new();
    for row in rows {
        if let Some(task) = entity_task(row) {
            let reference = &references[&row.id];
            gold.entry((reference.group.as_str(), task))
                .or_default()
                .extend(parse_list(&reference.completion, task).items);
        }
    }
    gold
}

/// For the entity tasks: each predicted entity against the gold lists of both entity tasks
/// of the same article → (task that listed it, `chemical` / `disease` / `both` / `neither`).
fn entity_type_confusion(
    rows: &[PromptRow],
    scored: &[Scored],
    references: &HashMap<String, Reference>,
    gold: &ArticleGold<'_>,
) -> BTreeMap<(String, String), u64> {
    let empty = BTreeSet::new();
    let mut matrix = BTreeMap::new();
    for (row, s) in rows.iter().zip(scored) {
        let Some(task) = entity_task(row) else {
            continue;
        };
        let group = references[&row.id].group.as_str();
        let chemicals = gold.get(&(group, "chemicals")).unwrap_or(&empty);
        let diseases = gold.get(&(group, "diseases")).unwrap_or(&empty);
        for entity in parse_list(&s.text, task).items {
            let kind = match (chemicals.contains(&entity), diseases.contains(&entity)) {
                (true, true) => "both",
                (true, false) => "chemical",
                (false, true) => "disease",
                (false, false) => "neither",
            };
            *matrix
                .entry((task.to_string(), kind.to_string()))
                .or_insert(0) += 1;
        }
    }
    matrix
}

fn predictions_batch(
    model: &str,
    rows: &[PromptRow],
    scored: &[Scored],
    references: &HashMap<String, Reference>,
) -> Result<RecordBatch> {
    let (mut id, mut task, mut name) = (
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    let (mut prompt_tokens, mut generated_tokens) = (UInt32Builder::new(), UInt32Builder::new());
    let (mut stop, mut generation, mut reference) = (
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    let (mut correct, mut predicted, mut gold) = (
        UInt32Builder::new(),
        UInt32Builder::new(),
        UInt32Builder::new(),
    );
    let (mut rouge, mut bleu) = (Float64Builder::new(), Float64Builder::new());
    for (row, s) in rows.iter().zip(scored) {
        id.append_value(&row.id);
        task.append_option(row.task.as_deref());
        name.append_value(model);
        prompt_tokens.append_value(row.prompt.len() as u32);
        generated_tokens.append_value(s.generation.tokens.len() as u32);
        stop.append_value(s.generation.stop.as_str());
        generation.append_value(&s.text);
        reference.append_value(&references[&row.id].completion);
        correct.append_option(s.counts.map(|c| c.correct as u32));
        predicted.append_option(s.counts.map(|c| c.predicted as u32));
        gold.append_option(s.counts.map(|c| c.gold as u32));
        rouge.append_value(s.rouge);
        bleu.append_value(s.bleu);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(task.finish()),
        Arc::new(name.finish()),
        Arc::new(prompt_tokens.finish()),
        Arc::new(generated_tokens.finish()),
        Arc::new(stop.finish()),
        Arc::new(generation.finish()),
        Arc::new(reference.finish()),
        Arc::new(correct.finish()),
        Arc::new(predicted.finish()),
        Arc::new(gold.finish()),
        Arc::new(rouge.finish()),
        Arc::new(bleu.finish()),
    ];
    Ok(RecordBatch::try_new(
        medtune_schemas::generation_predictions(),
        columns,
    )?)
}

/// Pushes the extraction scores per task, micro and macro, and returns the report.
fn push_extraction(extraction: &ExtractionScorer, sink: &mut MetricSink<'_>) -> Report {
    let report = extraction.report();
    for (task, s) in &report.per_type {
        sink.scores(family::EXTRACTION, task, s);
        let tally = &extraction.tasks()[task];
        sink.push(family::EXTRACTION, task, "mean_row_f1", tally.mean_row_f1());
        sink.push(family::EXTRACTION, task, "rows", tally.rows as f64);
        sink.push(
            family::EXTRACTION,
            task,
            "unparsed_lines",
            tally.unparsed_lines as f64,
        );
    }
    sink.scores(family::EXTRACTION, MICRO, &report.micro);
    sink.scores(family::EXTRACTION, MACRO, &report.macro_avg);
    sink.push(
        family::EXTRACTION,
        MACRO,
        "mean_row_f1",
        extraction.macro_mean_row_f1(),
    );
    report
}

/// Pushes the rows, seconds, tokens and EOS stops of one variant's generation.
fn push_throughput(sink: &mut MetricSink<'_>, scored: &[Scored], seconds: f64) {
    let rows = scored.len() as f64;
    let generated: usize = scored.iter().map(|s| s.generation.tokens.len()).sum();
    let at_eos = scored
        .iter()
        .filter(|s| s.generation.stop == StopReason::Eos)
        .count();
    sink.push(family::THROUGHPUT, "all", "rows", rows);
    sink.push(family::THROUGHPUT, "all", "seconds", seconds);
    sink.push(
        family::THROUGHPUT,
        "all",
        "samples_per_second",
        rows / seconds,
    );
    sink.push(
        family::THROUGHPUT,
        "all",
        "generated_tokens",
        generated as f64,
    );
    sink.push(
        family::THROUGHPUT,
        "all",
        "tokens_per_second",
        generated as f64 / seconds,
    );
    sink.push(
        family::THROUGHPUT,
        "all",
        "stopped_at_eos",
        at_eos as f64 / rows.max(1.0),
    );
}
