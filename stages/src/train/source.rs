//! The batch loader as the trainer's batch source: loader batches become tensors.

use candle_core::{Device, Tensor};
use medtune_qlora::train::{BatchSource, TrainBatch};
use medtune_qlora::QloraError;

use crate::loader::{Batch, BatchLoader, Position};

/// Batches of one split of the shards, on a device.
pub struct ShardBatches {
    loader: BatchLoader,
    device: Device,
}

impl ShardBatches {
    /// Batches from `loader`, as tensors on `device`.
    pub fn new(loader: BatchLoader, device: Device) -> Self {
        ShardBatches { loader, device }
    }

    /// The loader.
    pub fn loader(&self) -> &BatchLoader {
        &self.loader
    }
}

/// A loader batch as tensors: ids and mask u32, labels i64.
pub fn to_tensors(batch: &Batch, device: &Device) -> candle_core::Result<TrainBatch> {
    let shape = (batch.rows(), batch.seq_len);
    let labels: Vec<i64> = batch.labels.iter().map(|&l| i64::from(l)).collect();
    Ok(TrainBatch {
        input_ids: Tensor::from_slice(&batch.input_ids, shape, device)?,
        attention_mask: Tensor::from_slice(&batch.attention_mask, shape, device)?,
        labelled: labels.iter().filter(|&&l| l >= 0).count(),
        labels: Tensor::from_vec(labels, shape, device)?,
        tokens: batch.tokens(),
    })
}

impl BatchSource for ShardBatches {
    fn batches(
        &self,
        epoch: u64,
        step: u64,
    ) -> Box<dyn Iterator<Item = medtune_qlora::Result<TrainBatch>> + '_> {
        let device = self.device.clone();
        Box::new(
            self.loader
                .resume(Position { epoch, step })
                .map(move |batch| {
                    let batch = batch.map_err(|e| QloraError::Data(e.to_string()))?;
                    Ok(to_tensors(&batch, &device)?)
                }),
        )
    }

    fn steps_in_epoch(&self, epoch: u64) -> medtune_qlora::Result<u64> {
        self.loader
            .steps_in_epoch(epoch)
            .map_err(|e| QloraError::Data(e.to_string()))
    }
}
