//! The shard stage: cuts the tokenized sequences into Parquet training shards.
//!
//! Each shard holds rows of one split and is bounded in size: its token data (`input_ids` and
//! `labels`, 8 bytes a token, plus the row's id and task) stays under `shard_mib` MiB, which is
//! also what the stage holds in memory per split while it fills a shard. Rows inside a shard are
//! sorted by length (ties keep their input order), so the batch loader, which reads one shard at
//! a time, can cut batches of similar lengths that waste little padding.
//!
//! The shards are the parts of the `shards` dataset. The manifest records, per part, the split
//! as its label and the sum / min / max of `length` (the shard's token count and length range)
//! next to its rows and checksum; [`crate::shared::loader`] reads them from there.

use std::collections::BTreeMap;

use arrow::array::{Array, BooleanArray, StringArray, UInt32Array};
use arrow::compute::{filter_record_batch, interleave_record_batch};
use arrow::record_batch::RecordBatch;
use medtune_pipeline::{
    AppendOptions, OutputDecl, OutputRole, PipelineConfig, PipelineError, Result, Stage,
    StageContext, WorkUnit,
};
use medtune_schemas::col;
use medtune_schemas::col::LENGTH;
use medtune_schemas::dataset::SHARDS;
use serde::{Deserialize, Serialize};

use crate::shared::examples::typed_column;

/// The stage name: its `[shard]` config section and its cache folder.
pub const NAME: &str = "shard";

fn default_shard_mib() -> u64 {
    64
}

/// The `[shard]` config section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    /// Upper bound of a shard's token data, in MiB (8 bytes per token plus ids). The Parquet
    /// file is smaller (zstd); the stage holds up to this much per split in memory.
    #[serde(default = "default_shard_mib")]
    pub shard_mib: u64,
}

/// The shard stage.
pub struct ShardStage {
    config: ShardConfig,
    input: String,
}

impl ShardStage {
    /// Builds the stage from `[shard]`, reading the tokenized dataset `input`.
    pub fn from_config(config: &PipelineConfig, input: &str) -> Result<Self> {
        let section: ShardConfig = config.section(NAME)?;
        if section.shard_mib == 0 {
            return Err(config.error("[shard]: `shard_mib` must be at least 1"));
        }
        Ok(ShardStage {
            config: section,
            input: input.to_string(),
        })
    }

    fn shard_bytes(&self) -> u64 {
        self.config.shard_mib << 20
    }
}

/// The rows of one split waiting to become a shard.
#[derive(Default)]
struct ShardBuffer {
    batches: Vec<RecordBatch>,
    /// (batch, row, length) of every buffered row.
    rows: Vec<(usize, usize, u32)>,
    bytes: u64,
}

impl ShardBuffer {
    /// Adds the rows of `batch` (all of one split), returning the shards that filled up.
    fn push(&mut self, batch: RecordBatch, limit: u64) -> Result<Vec<ShardBuffer>> {
        let columns = SequenceColumns::new(&batch)?;
        let mut full = Vec::new();
        let mut batch_index = self.batches.len();
        let mut start = 0;
        for row in 0..batch.num_rows() {
            let bytes = columns.bytes(row);
            if !self.rows.is_empty() && self.bytes + bytes > limit {
                // The rows before this one close the current shard.
                if row > start {
                    self.batches.push(batch.slice(start, row - start));
                }
                full.push(std::mem::take(self));
                batch_index = 0;
                start = row;
            }
            self.rows
                .push((batch_index, row - start, columns.length.value(row)));
            self.bytes += bytes;
        }
        if batch.num_rows() > start {
            self.batches
                .push(batch.slice(start, batch.num_rows() - start));
        }
        Ok(full)
    }

    /// The buffered rows as batches of at most `batch_rows`, sorted by length.
    fn sorted_batches(mut self, batch_rows: usize) -> Result<Vec<RecordBatch>> {
        self.rows.sort_by_key(|&(_, _, length)| length);
        let batches: Vec<&RecordBatch> = self.batches.iter().collect();
        let mut out = Vec::new();
        for chunk in self.rows.chunks(batch_rows.max(1)) {
            let indices: Vec<(usize, usize)> = chunk.iter().map(|&(b, r, _)| (b, r)).collect();
            out.push(interleave_record_batch(&batches, &indices)?);
        }
        Ok(out)
    }
}

/// The columns the stage reads from a tokenized batch.
struct SequenceColumns<'a> {
    id: &'a StringArray,
    task: &'a StringArray,
    length: &'a UInt32Array,
}

impl<'a> SequenceColumns<'a> {
    fn new(batch: &'a RecordBatch) -> Result<Self> {
        const WHAT: &str = "tokenized batch";
        Ok(SequenceColumns {
            id: typed_column(batch, WHAT, col::ID)?,
            task: typed_column(batch, WHAT, col::TASK)?,
            length: typed_column(batch, WHAT, LENGTH)?,
        })
    }

    /// What a row weighs against the shard bound: its ids and labels, id and task.
    fn bytes(&self, row: usize) -> u64 {
        let text = self.id.value(row).len() + self.task.value(row).len();
        8 * u64::from(self.length.value(row)) + text as u64 + 16
    }
}

impl Stage for ShardStage {
    fn name(&self) -> &str {
        NAME
    }

    fn version(&self) -> u32 {
        1
    }

    fn inputs(&self) -> Vec<String> {
        vec![self.input.clone()]
    }

    fn outputs(&self) -> Vec<OutputDecl> {
        vec![
            OutputDecl::new(SHARDS, medtune_schemas::tokenized(), OutputRole::Kept)
                .with_part_stats(&[LENGTH]),
        ]
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).expect("config serialises")
    }

    fn run(&self, ctx: &mut StageContext<'_>) -> Result<()> {
        // An input that only grew adds shards of its new rows after the previous shards.
        ctx.append_to_previous(AppendOptions::default())?;
        let total = ctx.input(&self.input)?.manifest.rows;
        ctx.set_work_total(total, WorkUnit::Rows);
        let limit = self.shard_bytes();
        let mut buffers: BTreeMap<String, ShardBuffer> = BTreeMap::new();
        let mut shards: BTreeMap<String, u64> = BTreeMap::new();
        let mut done = 0u64;
        for batch in ctx.read(&self.input)? {
            let batch = batch?;
            ctx.count_in(batch.num_rows() as u64);
            for (split, rows) in split_rows(&batch)? {
                let full = buffers
                    .entry(split.clone())
                    .or_default()
                    .push(rows, limit)?;
                for shard in full {
                    write_shard(ctx, &split, shard)?;
                    *shards.entry(split.clone()).or_default() += 1;
                }
            }
            done += batch.num_rows() as u64;
            ctx.report_progress(done);
        }
        for (split, shard) in buffers {
            if !shard.rows.is_empty() {
                write_shard(ctx, &split, shard)?;
                *shards.entry(split).or_default() += 1;
            }
        }
        ctx.count("shards", shards.values().sum());
        for (split, n) in shards {
            ctx.count(&format!("shards {split}"), n);
        }
        Ok(())
    }
}

/// The rows of `batch` grouped by split, in order of first appearance.
fn split_rows(batch: &RecordBatch) -> Result<Vec<(String, RecordBatch)>> {
    let split = batch
        .column_by_name(col::SPLIT)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .ok_or_else(|| PipelineError::Internal("tokenized batch without `split`".into()))?;
    let mut names: Vec<&str> = Vec::new();
    for row in 0..split.len() {
        let name = split.value(row);
        if !names.contains(&name) {
            names.push(name);
        }
    }
    if names.len() == 1 {
        return Ok(vec![(names[0].to_string(), batch.clone())]);
    }
    names
        .into_iter()
        .map(|name| {
            let mask: BooleanArray = split.iter().map(|s| Some(s == Some(name))).collect();
            Ok((name.to_string(), filter_record_batch(batch, &mask)?))
        })
        .collect()
}

fn write_shard(ctx: &mut StageContext<'_>, split: &str, shard: ShardBuffer) -> Result<()> {
    let tokens: u64 = shard.rows.iter().map(|&(_, _, l)| u64::from(l)).sum();
    ctx.count(&format!("tokens {split}"), tokens);
    ctx.count(&format!("rows {split}"), shard.rows.len() as u64);
    ctx.start_part(SHARDS, split)?;
    for batch in shard.sorted_batches(ctx.batch_rows())? {
        ctx.write(SHARDS, batch)?;
    }
    Ok(())
}
