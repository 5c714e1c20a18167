//! Entity-level scores of a token-classification model on a split of the shards: the argmax
//! label at every labelled position (the first sub-token of each word) is that word's predicted
//! tag, the shard's label its true tag.

use candle_core::{Device, D};
use medtune_qlora::auto::AutoModel;
use medtune_qlora::Pass;

use crate::loader::BatchLoader;
use crate::metrics::entities::{entity_report, token_report, Mode, Report};
use crate::train::to_tensors;

/// Per-word tags of one sequence: truth and prediction.
pub struct TaggedSequence {
    /// Example id.
    pub id: String,
    /// True tags, one per labelled word.
    pub truth: Vec<String>,
    /// Predicted tags.
    pub predicted: Vec<String>,
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
) -> Result<Vec<TaggedSequence>, String> {
    let mut out = Vec::new();
    for batch in loader.epoch(0) {
        let batch = batch.map_err(|e| e.to_string())?;
        let t = to_tensors(&batch, device).map_err(|e| e.to_string())?;
        let logits = model
            .logits(&t.input_ids, &t.attention_mask, Pass::EVAL)
            .map_err(|e| e.to_string())?;
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
            });
        }
    }
    Ok(out)
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
