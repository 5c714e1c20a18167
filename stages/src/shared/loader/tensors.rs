//! A loader batch as the model's input tensors.

use candle_core::{Device, Tensor};
use medtune_qlora::train::TrainBatch;

use super::Batch;

impl Batch {
    /// The batch as tensors on `device`: ids and mask u32, labels i64, with the count of
    /// labelled positions the loss averages over.
    pub fn to_tensors(&self, device: &Device) -> candle_core::Result<TrainBatch> {
        let shape = (self.rows(), self.seq_len);
        let labels: Vec<i64> = self.labels.iter().map(|&l| i64::from(l)).collect();
        Ok(TrainBatch {
            input_ids: Tensor::from_slice(&self.input_ids, shape, device)?,
            attention_mask: Tensor::from_slice(&self.attention_mask, shape, device)?,
            labelled: labels.iter().filter(|&&l| l >= 0).count(),
            labels: Tensor::from_vec(labels, shape, device)?,
            tokens: self.tokens(),
        })
    }
}
