//! The batch loader as the trainer's batch source: loader batches become tensors.

use candle_core::Device;
use medtune_qlora::train::{BatchSource, TrainBatch};
use medtune_qlora::QloraError;

use crate::shared::loader::{BatchLoader, Position};

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
                    Ok(batch.to_tensors(&device)?)
                }),
        )
    }

    fn steps_in_epoch(&self, epoch: u64) -> medtune_qlora::Result<u64> {
        self.loader
            .steps_in_epoch(epoch)
            .map_err(|e| QloraError::Data(e.to_string()))
    }
}
