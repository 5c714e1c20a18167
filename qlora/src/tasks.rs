//! What the models are trained for: token classification (BERT or decoder with a head) and
//! causal language modelling with prompt masking (labels -100 over the prompt).

use candle_core::{DType, Tensor, Var, D};

use crate::bert::{BertTokenClassifier, Head};
use crate::error::{QloraError, Result};
use crate::llama::LlamaDecoder;
use crate::lora::{LoraLinear, Pass};
use crate::ops;
use crate::train::{TrainBatch, TrainModel};

/// The adapters' variables, named `<module path>.lora_A.weight` / `.lora_B.weight`.
pub fn adapter_vars<'a>(linears: impl Iterator<Item = &'a LoraLinear>) -> Vec<(String, Var)> {
    let mut vars = Vec::new();
    for linear in linears {
        if let Some(adapter) = linear.adapter() {
            vars.push((
                format!("{}.lora_A.weight", linear.path()),
                adapter.a.clone(),
            ));
            vars.push((
                format!("{}.lora_B.weight", linear.path()),
                adapter.b.clone(),
            ));
        }
    }
    vars
}

fn head_vars(name: &str, head: &Head) -> [(String, Var); 2] {
    [
        (format!("{name}.weight"), head.weight.clone()),
        (format!("{name}.bias"), head.bias.clone()),
    ]
}

impl TrainModel for BertTokenClassifier {
    fn trainable(&self) -> Vec<(String, Var)> {
        let mut vars = adapter_vars(self.encoder.linears());
        vars.extend(head_vars("classifier", &self.head));
        vars
    }

    fn loss(&self, batch: &TrainBatch, pass: Pass) -> Result<(Tensor, usize)> {
        let logits = self.forward(&batch.input_ids, &batch.attention_mask, pass)?;
        masked_cross_entropy(&logits, &batch.labels)
    }
}

/// A decoder trained as a causal LM: position t predicts token t+1, positions whose next label
/// is -100 (the prompt, padding) do not count.
pub struct CausalLm {
    /// The decoder.
    pub decoder: LlamaDecoder,
}

impl CausalLm {
    /// Logits (batch × length × vocab).
    pub fn logits(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        pass: Pass,
    ) -> Result<Tensor> {
        let hidden = self
            .decoder
            .forward_hidden(input_ids, attention_mask, None, pass)?;
        self.decoder.lm_logits(&hidden)
    }
}

impl TrainModel for CausalLm {
    fn trainable(&self) -> Vec<(String, Var)> {
        adapter_vars(self.decoder.linears())
    }

    /// Position t predicts the label at t + 1. Only positions whose next label counts go
    /// through the vocabulary-wide head: in prompt-masked SFT most of a batch does not.
    fn loss(&self, batch: &TrainBatch, pass: Pass) -> Result<(Tensor, usize)> {
        let hidden =
            self.decoder
                .forward_hidden(&batch.input_ids, &batch.attention_mask, None, pass)?;
        let (b, l, h) = hidden.dims3()?;
        if l < 2 {
            return Ok((Tensor::zeros((), DType::F32, hidden.device())?, 0));
        }
        let next = batch.labels.narrow(1, 1, l - 1)?;
        let Some((rows, targets)) = labelled_rows(&next)? else {
            return Ok((Tensor::zeros((), DType::F32, hidden.device())?, 0));
        };
        // Row i of the (b, l − 1) label grid is position (i / (l − 1), i % (l − 1)).
        let positions: Vec<u32> = rows
            .iter()
            .map(|&i| (i as usize / (l - 1) * l + i as usize % (l - 1)) as u32)
            .collect();
        let n = positions.len();
        let device = hidden.device();
        let selected = hidden
            .reshape((b * l, h))?
            .index_select(&Tensor::from_vec(positions, n, device)?, 0)?;
        let logits = self.decoder.lm_logits(&selected)?.to_dtype(DType::F32)?;
        check_classes(&targets, logits.dim(1)?)?;
        let targets = Tensor::from_vec(targets, n, device)?;
        Ok((ops::cross_entropy(&logits, &targets)?, n))
    }
}

/// A decoder with a token-classification head (transformers' `score`).
pub struct DecoderTokenClassifier {
    /// The decoder.
    pub decoder: LlamaDecoder,
    /// The head.
    pub head: Head,
}

impl DecoderTokenClassifier {
    /// Logits (batch × length × labels).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        pass: Pass,
    ) -> Result<Tensor> {
        let hidden = self
            .decoder
            .forward_hidden(input_ids, attention_mask, None, pass)?;
        self.head.forward(&hidden)
    }
}

impl TrainModel for DecoderTokenClassifier {
    fn trainable(&self) -> Vec<(String, Var)> {
        let mut vars = adapter_vars(self.decoder.linears());
        vars.extend(head_vars("score", &self.head));
        vars
    }

    fn loss(&self, batch: &TrainBatch, pass: Pass) -> Result<(Tensor, usize)> {
        let logits = self.forward(&batch.input_ids, &batch.attention_mask, pass)?;
        masked_cross_entropy(&logits, &batch.labels)
    }
}

/// Mean cross-entropy over positions whose label is not -100, and the number of such
/// positions. `logits` is … × classes, `labels` the matching i64/u32/i32 labels.
pub fn masked_cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<(Tensor, usize)> {
    let classes = logits.dim(D::Minus1)?;
    let logits = logits.reshape(((), classes))?.to_dtype(DType::F32)?;
    let Some((rows, targets)) = labelled_rows(labels)? else {
        return Ok((Tensor::zeros((), DType::F32, logits.device())?, 0));
    };
    check_classes(&targets, classes)?;
    let (n, device) = (rows.len(), logits.device());
    let rows = logits.index_select(&Tensor::from_vec(rows, n, device)?, 0)?;
    let targets = Tensor::from_vec(targets, n, device)?;
    Ok((ops::cross_entropy(&rows, &targets)?, n))
}

/// The flat indices of the labels that count (not -100) and those labels; `None` when none
/// does.
fn labelled_rows(labels: &Tensor) -> Result<Option<(Vec<u32>, Vec<u32>)>> {
    let labels: Vec<i64> = labels.flatten_all()?.to_dtype(DType::I64)?.to_vec1()?;
    let (rows, targets): (Vec<u32>, Vec<u32>) = labels
        .iter()
        .enumerate()
        .filter(|(_, &l)| l >= 0)
        .map(|(i, &l)| (i as u32, l as u32))
        .unzip();
    Ok((!rows.is_empty()).then_some((rows, targets)))
}

fn check_classes(targets: &[u32], classes: usize) -> Result<()> {
    match targets.iter().find(|&&t| t as usize >= classes) {
        Some(bad) => Err(QloraError::Config(format!(
            "label id {bad} is outside the head's {classes} classes"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn masked_cross_entropy_by_hand_gives_the_perplexity_by_hand() {
        // Row 0: probabilities (1/4, 1/4, 1/2, 0+) with target 2 -> CE ln 2.
        // Row 1: uniform over four with target 0 -> CE ln 4. Row 2: ignored (-100).
        let logits = Tensor::new(
            &[
                [1f32.ln(), 1f32.ln(), 2f32.ln(), -1e30],
                [0.0, 0.0, 0.0, 0.0],
                [9.0, 0.0, 0.0, 0.0],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let labels = Tensor::new(&[2i64, 0, -100], &Device::Cpu).unwrap();
        let (loss, n) = masked_cross_entropy(&logits, &labels).unwrap();
        let loss: f32 = loss.to_scalar().unwrap();
        assert_eq!(n, 2);
        let mean = (2f64.ln() + 4f64.ln()) / 2.0;
        assert!((f64::from(loss) - mean).abs() < 1e-6, "{loss}");
        // Perplexity exp(mean CE) = sqrt(2 * 4).
        assert!((mean.exp() - 8f64.sqrt()).abs() < 1e-12);
        let bad = Tensor::new(&[7i64, 0, 0], &Device::Cpu).unwrap();
        assert!(masked_cross_entropy(&logits, &bad).is_err());
    }
}
