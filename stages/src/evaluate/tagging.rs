//! Token classification: the argmax label at every labelled position (the first sub-token of
//! each word) is that word's predicted tag, the shard's label its true tag; seqeval-rule reports
//! over the tags, the mean cross-entropy over the same positions, and a word-level confusion
//! matrix of entity types.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, ListBuilder, RecordBatch, StringBuilder, UInt32Builder};
use candle_core::{Device, D};
use medtune_pipeline::{PipelineError, Result, StageContext};
use medtune_qlora::auto::AutoModel;
use medtune_qlora::tasks::masked_cross_entropy;
use medtune_qlora::Pass;
use medtune_schemas::dataset::PREDICTIONS;

use super::tables::{family, MetricSink, MICRO};
use super::{Bars, Confusion, Outcome, Variant, PREDICTIONS_JSONL, SCORES_JSON};
use crate::shared::loader::BatchLoader;
use crate::shared::metrics::entities::{entity_report, token_report, Mode, Report};

/// Per-word tags of one sequence: truth and prediction.
pub struct TaggedSequence {
    /// Example id.
    pub id: String,
    /// True tags, one per labelled word.
    pub truth: Vec<String>,
    /// Predicted tags.
    pub predicted: Vec<String>,
    /// Window of the source row (0 unless it was split into windows).
    pub window: u32,
}

/// What a pass over a split produced.
pub struct Tagged {
    /// Per sequence, in loader order.
    pub sequences: Vec<TaggedSequence>,
    /// Sum of the cross-entropy over labelled positions.
    pub loss_sum: f64,
    /// Labelled positions.
    pub labelled: u64,
}

/// Reports of a token-classification evaluation.
pub struct TokenScores {
    /// seqeval default (lenient) mode.
    pub lenient: Report,
    /// seqeval strict IOB2 mode.
    pub strict: Report,
    /// Token-level (scikit-learn classification_report) over word tags.
    pub tokens: Report,
    /// Sequences evaluated.
    pub sequences: usize,
}

/// Predicts every sequence `loader` yields (epoch 0) and tags its labelled words.
pub fn predict_tags(
    model: &AutoModel,
    loader: &BatchLoader,
    labels: &[String],
    device: &Device,
    pass: Pass,
) -> std::result::Result<Tagged, String> {
    let mut out = Vec::new();
    let (mut loss_sum, mut labelled) = (0f64, 0u64);
    for batch in loader.epoch(0) {
        let batch = batch.map_err(|e| e.to_string())?;
        let t = batch.to_tensors(device).map_err(|e| e.to_string())?;
        let logits = model
            .logits(&t.input_ids, &t.attention_mask, pass)
            .map_err(|e| e.to_string())?;
        let (loss, n) = masked_cross_entropy(&logits, &t.labels).map_err(|e| e.to_string())?;
        if n > 0 {
            let mean: f32 = loss.to_scalar().map_err(|e| e.to_string())?;
            loss_sum += f64::from(mean) * n as f64;
            labelled += n as u64;
        }
        let predicted: Vec<u32> = logits
            .argmax(D::Minus1)
            .and_then(|a| a.flatten_all())
            .and_then(|a| a.to_vec1())
            .map_err(|e| e.to_string())?;
        for (r, id) in batch.ids.iter().enumerate() {
            let row = r * batch.seq_len..(r + 1) * batch.seq_len;
            let (mut truth, mut guess) = (Vec::new(), Vec::new());
            for i in row {
                let label = batch.labels[i];
                if label < 0 {
                    continue;
                }
                let name = |id: usize| labels.get(id).cloned().unwrap_or_else(|| "O".into());
                truth.push(name(label as usize));
                guess.push(name(predicted[i] as usize));
            }
            out.push(TaggedSequence {
                id: id.clone(),
                truth,
                predicted: guess,
                window: batch.windows[r],
            });
        }
    }
    Ok(Tagged {
        sequences: out,
        loss_sum,
        labelled,
    })
}

/// The entity type of a tag (`B-Chemical` → `Chemical`), `O` for outside.
fn tag_type(tag: &str) -> &str {
    tag.split_once('-').map_or(tag, |(_, kind)| kind)
}

/// Word-level confusion of entity types: (true type, predicted type) → words.
pub fn type_confusion(sequences: &[TaggedSequence]) -> BTreeMap<(String, String), u64> {
    let mut matrix = BTreeMap::new();
    for s in sequences {
        for (t, p) in s.truth.iter().zip(&s.predicted) {
            *matrix
                .entry((tag_type(t).to_string(), tag_type(p).to_string()))
                .or_insert(0) += 1;
        }
    }
    matrix
}

/// seqeval-style reports over tagged sequences.
pub fn score(sequences: &[TaggedSequence]) -> TokenScores {
    let truth: Vec<Vec<&str>> = sequences
        .iter()
        .map(|s| s.truth.iter().map(String::as_str).collect())
        .collect();
    let predicted: Vec<Vec<&str>> = sequences
        .iter()
        .map(|s| s.predicted.iter().map(String::as_str).collect())
        .collect();
    TokenScores {
        lenient: entity_report(&truth, &predicted, Mode::Lenient),
        strict: entity_report(&truth, &predicted, Mode::Strict),
        tokens: token_report(&truth, &predicted),
        sequences: sequences.len(),
    }
}

/// Scores a token classifier under each variant: metric rows, the `predictions` dataset, the
/// predictions and scores as JSON artifacts (what `bench/seqeval_compare.py` reads), the
/// confusion matrices and the F1 bars.
pub(super) fn evaluate_tags(
    ctx: &mut StageContext<'_>,
    model: &AutoModel,
    loader: &BatchLoader,
    labels: &[String],
    device: &Device,
    variants: &[Variant],
) -> Result<Outcome> {
    ctx.count_in(loader.shards().rows());
    let mut outcome = Outcome::default();
    let mut scores_json = serde_json::Map::new();
    let mut lines = String::new();
    let mut bars: Vec<(String, Vec<f64>)> = Vec::new();
    let mut types: Vec<String> = Vec::new();
    for (i, variant) in variants.iter().enumerate() {
        ctx.report_message(&format!("tagging with the {} model", variant.name));
        let clock = Instant::now();
        let tagged = predict_tags(model, loader, labels, device, variant.pass)
            .map_err(PipelineError::Internal)?;
        let seconds = clock.elapsed().as_secs_f64().max(1e-9);
        let scores = score(&tagged.sequences);
        let mut sink = MetricSink::new(&variant.name, &mut outcome.metrics);
        sink.report(family::ENTITY_DEFAULT, &scores.lenient);
        sink.report(family::ENTITY_STRICT, &scores.strict);
        sink.report(family::TOKEN, &scores.tokens);
        let mean_loss = tagged.loss_sum / tagged.labelled.max(1) as f64;
        sink.push(family::LM, "all", "cross_entropy", mean_loss);
        sink.push(family::LM, "all", "labelled_tokens", tagged.labelled as f64);
        let n = tagged.sequences.len() as f64;
        sink.push(family::THROUGHPUT, "all", "sequences", n);
        sink.push(family::THROUGHPUT, "all", "seconds", seconds);
        sink.push(
            family::THROUGHPUT,
            "all",
            "sequences_per_second",
            n / seconds,
        );
        sink.push(
            family::THROUGHPUT,
            "all",
            "tokens_per_second",
            loader.shards().tokens() as f64 / seconds,
        );
        ctx.write(
            PREDICTIONS,
            predictions_batch(&variant.name, &tagged.sequences)?,
        )?;
        for t in &tagged.sequences {
            let row = serde_json::json!({
                "model": variant.name, "id": t.id, "window": t.window,
                "truth": t.truth, "predicted": t.predicted,
            });
            lines.push_str(&row.to_string());
            lines.push('\n');
        }
        scores_json.insert(variant.name.clone(), scores_summary(&scores, seconds));
        types = scores.lenient.per_type.keys().cloned().collect();
        let mut values: Vec<f64> = scores.lenient.per_type.values().map(|s| s.f1).collect();
        values.push(scores.lenient.micro.f1);
        bars.push((variant.name.clone(), values));
        outcome.confusions.push(Confusion {
            title: format!(
                "Word-level entity types, {} model (rows: true type, columns: predicted)",
                variant.name
            ),
            counts: type_confusion(&tagged.sequences),
        });
        if i == 0 {
            let later = tagged.sequences.iter().filter(|s| s.window > 0).count() as u64;
            if later > 0 {
                ctx.count("later_windows", later);
                ctx.warn(format!(
                    "{later} sequences are later windows of long rows: words in the overlap \
                     of two windows are scored in both"
                ));
            }
        }
        outcome.rows = tagged.sequences.len() as u64;
    }
    types.push(MICRO.to_string());
    outcome.bars = Some(Bars {
        title: "Entity F1 per type (seqeval default mode)".into(),
        categories: types,
        series: bars,
    });
    let artifacts = ctx.artifacts_dir()?.to_path_buf();
    let path = artifacts.join(PREDICTIONS_JSONL);
    std::fs::write(&path, lines).map_err(|e| PipelineError::io(&path, e))?;
    let path = artifacts.join(SCORES_JSON);
    let text = serde_json::to_vec_pretty(&scores_json).expect("scores serialise");
    std::fs::write(&path, text).map_err(|e| PipelineError::io(&path, e))?;
    Ok(outcome)
}

fn scores_summary(scores: &TokenScores, seconds: f64) -> serde_json::Value {
    let report = |r: &Report| {
        serde_json::json!({
            "micro_f1": r.micro.f1, "micro_precision": r.micro.precision,
            "micro_recall": r.micro.recall, "macro_f1": r.macro_avg.f1,
            "weighted_f1": r.weighted.f1,
            "per_type": r.per_type.iter().map(|(k, s)| (k.clone(), serde_json::json!({
                "precision": s.precision, "recall": s.recall, "f1": s.f1, "support": s.support,
            }))).collect::<serde_json::Map<_, _>>(),
        })
    };
    serde_json::json!({
        "sequences": scores.sequences,
        "seconds": seconds,
        "entity_default": report(&scores.lenient),
        "entity_strict": report(&scores.strict),
        "token_weighted_f1": scores.tokens.weighted.f1,
    })
}

fn predictions_batch(model: &str, sequences: &[TaggedSequence]) -> Result<RecordBatch> {
    let mut id = StringBuilder::new();
    let mut window = UInt32Builder::new();
    let mut name = StringBuilder::new();
    let mut truth = ListBuilder::new(StringBuilder::new());
    let mut predicted = ListBuilder::new(StringBuilder::new());
    for s in sequences {
        id.append_value(&s.id);
        window.append_value(s.window);
        name.append_value(model);
        for (list, tags) in [(&mut truth, &s.truth), (&mut predicted, &s.predicted)] {
            for tag in tags {
                list.values().append_value(tag);
            }
            list.append(true);
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(window.finish()),
        Arc::new(name.finish()),
        Arc::new(truth.finish()),
        Arc::new(predicted.finish()),
    ];
    Ok(RecordBatch::try_new(
        medtune_schemas::tag_predictions(),
        columns,
    )?)
}
