//! The batch loader: streams training shards into padded batches for training and evaluation.
//!
//! A [`ShardSet`] is the `shards` dataset of a workdir (or any committed dataset of that
//! schema), one split of it selected. A [`BatchLoader`] walks it epoch by epoch:
//!
//! - the shards are visited in an order shuffled per epoch, and only one is in memory at a time
//!   (the shard stage bounds their size);
//! - a shard's rows are shuffled, put in length order and cut into batches by a token budget or
//!   a row count, so a batch holds rows of similar length; the batches are shuffled again;
//! - every random choice comes from a stream derived from (seed, epoch, shard), so a seed and an
//!   epoch always give the same batches, and [`BatchLoader::resume`] at a [`Position`] yields
//!   exactly the batches an uninterrupted run would have yielded from there, reading only the
//!   `length` column of the shards it skips.
//!
//! With `shuffle` off, shards and batches come in stored order (evaluation).

mod plan;
mod read;
mod tensors;

use std::path::{Path, PathBuf};

use medtune_pipeline::reader::CommittedDataset;
use medtune_pipeline::{PipelineError, Result, Workdir};
use medtune_schemas::col::LENGTH;
use medtune_schemas::dataset::SHARDS;
use medtune_schemas::IGNORED_LABEL as IGNORE;
use serde::{Deserialize, Serialize};

pub use self::plan::{plan_batches, stream, Batching};
pub use self::read::{shard_lengths, ShardRows};

/// One training shard, as its manifest entry describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// The Parquet file.
    pub path: PathBuf,
    /// The split its rows belong to.
    pub split: String,
    /// Rows (sequences).
    pub rows: u64,
    /// Tokens over all rows.
    pub tokens: u64,
    /// Shortest and longest row, in tokens.
    pub lengths: (u64, u64),
}

/// Training shards, in stored order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSet {
    shards: Vec<Shard>,
}

impl ShardSet {
    /// The shards of a committed `shards` dataset.
    pub fn from_dataset(dataset: &CommittedDataset) -> Result<Self> {
        let mut shards = Vec::new();
        for part in &dataset.manifest.files {
            if part.rows == 0 {
                continue;
            }
            let path = dataset.entry_dir.join(&part.path);
            let (Some(split), Some(stats)) = (&part.label, part.stats.get(LENGTH)) else {
                return Err(PipelineError::bad_input(
                    &path,
                    format!(
                        "dataset `{}` is not a set of training shards (its manifest has no split \
                         and length statistics for this part)",
                        dataset.name
                    ),
                ));
            };
            shards.push(Shard {
                path,
                split: split.clone(),
                rows: part.rows,
                tokens: stats.sum,
                lengths: (stats.min, stats.max),
            });
        }
        Ok(ShardSet { shards })
    }

    /// The `shards` dataset of the workdir at `root` (what `medtune run` committed last).
    pub fn open(root: &Path) -> Result<Self> {
        let workdir = Workdir::new(root);
        let dataset = workdir
            .catalog_datasets()?
            .into_iter()
            .find(|d| d.name == SHARDS)
            .ok_or_else(|| {
                PipelineError::Usage(format!(
                    "workdir {} has no `{SHARDS}` dataset: add [tokenize] and [shard] to the \
                     config and run it",
                    root.display()
                ))
            })?;
        Self::from_dataset(&dataset)
    }

    /// The shards of one split; an error names the splits there are.
    pub fn split(&self, split: &str) -> Result<ShardSet> {
        let shards: Vec<Shard> = self
            .shards
            .iter()
            .filter(|s| s.split == split)
            .cloned()
            .collect();
        if shards.is_empty() {
            return Err(PipelineError::Usage(format!(
                "no shards of split `{split}` (splits: {})",
                self.splits().join(", ")
            )));
        }
        Ok(ShardSet { shards })
    }

    /// The splits present, sorted.
    pub fn splits(&self) -> Vec<&str> {
        let mut splits: Vec<&str> = self.shards.iter().map(|s| s.split.as_str()).collect();
        splits.sort_unstable();
        splits.dedup();
        splits
    }

    /// The shards, in stored order.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// Rows over all shards.
    pub fn rows(&self) -> u64 {
        self.shards.iter().map(|s| s.rows).sum()
    }

    /// Tokens over all shards.
    pub fn tokens(&self) -> u64 {
        self.shards.iter().map(|s| s.tokens).sum()
    }
}

/// Which side of a row the padding goes (right for training, left for batched generation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Padding {
    /// Tokens first, then padding.
    #[default]
    Right,
    /// Padding first, then tokens.
    Left,
}

/// How the loader batches, shuffles and pads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderOptions {
    /// Token budget or row count.
    pub batching: Batching,
    /// Seed of every shuffle.
    pub seed: u64,
    /// Shuffle shards, rows and batches (training); off keeps stored order (evaluation).
    pub shuffle: bool,
    /// Token id of padding.
    pub pad_id: u32,
    /// Right or left padding.
    pub padding: Padding,
}

/// Where a loader stands: the epoch, and the batches of it already yielded.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Position {
    /// Epoch, from 0.
    pub epoch: u64,
    /// Batches of the epoch before this one.
    pub step: u64,
}

/// A padded batch, row-major (`rows × seq_len`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Where this batch is in the loader's order.
    pub position: Position,
    /// Length of the longest row: the padded width.
    pub seq_len: usize,
    /// Token ids, `pad_id` in padding.
    pub input_ids: Vec<u32>,
    /// Labels, -100 in padding.
    pub labels: Vec<i32>,
    /// 1 over tokens, 0 over padding.
    pub attention_mask: Vec<u32>,
    /// Each row's length.
    pub lengths: Vec<u32>,
    /// Each row's example id.
    pub ids: Vec<String>,
    /// Each row's window number.
    pub windows: Vec<u32>,
    /// Each row's task.
    pub tasks: Vec<Option<String>>,
    /// Each row's prompt tokens (SFT).
    pub prompt_tokens: Vec<u32>,
}

impl Batch {
    /// Rows in the batch.
    pub fn rows(&self) -> usize {
        self.lengths.len()
    }

    /// Real (unpadded) tokens.
    pub fn tokens(&self) -> usize {
        self.lengths.iter().map(|&l| l as usize).sum()
    }

    /// Tokens including padding.
    pub fn padded_tokens(&self) -> usize {
        self.rows() * self.seq_len
    }

    fn assemble(shard: &ShardRows, rows: &[usize], position: Position, o: &LoaderOptions) -> Self {
        let seq_len = rows
            .iter()
            .map(|&r| shard.length(r) as usize)
            .max()
            .unwrap_or(0);
        let size = rows.len() * seq_len;
        let mut batch = Batch {
            position,
            seq_len,
            input_ids: Vec::with_capacity(size),
            labels: Vec::with_capacity(size),
            attention_mask: Vec::with_capacity(size),
            lengths: Vec::with_capacity(rows.len()),
            ids: Vec::with_capacity(rows.len()),
            windows: Vec::with_capacity(rows.len()),
            tasks: Vec::with_capacity(rows.len()),
            prompt_tokens: Vec::with_capacity(rows.len()),
        };
        for &row in rows {
            let (ids, labels) = (shard.input_ids(row), shard.labels(row));
            let pad = seq_len - ids.len();
            let pad_row = |b: &mut Batch| {
                b.input_ids.extend(std::iter::repeat_n(o.pad_id, pad));
                b.labels.extend(std::iter::repeat_n(IGNORE, pad));
                b.attention_mask.extend(std::iter::repeat_n(0, pad));
            };
            if o.padding == Padding::Left {
                pad_row(&mut batch);
            }
            batch.input_ids.extend_from_slice(ids);
            batch.labels.extend_from_slice(labels);
            batch
                .attention_mask
                .extend(std::iter::repeat_n(1, ids.len()));
            if o.padding == Padding::Right {
                pad_row(&mut batch);
            }
            batch.lengths.push(ids.len() as u32);
            batch.ids.push(shard.id(row).to_string());
            batch.windows.push(shard.window(row));
            batch.tasks.push(shard.task(row).map(str::to_string));
            batch.prompt_tokens.push(shard.prompt_tokens(row));
        }
        batch
    }
}

/// Streams padded batches from a [`ShardSet`].
#[derive(Debug, Clone)]
pub struct BatchLoader {
    shards: ShardSet,
    options: LoaderOptions,
}

impl BatchLoader {
    /// A loader over `shards`; fails on an empty set or a zero batch size / budget.
    pub fn new(shards: ShardSet, options: LoaderOptions) -> Result<Self> {
        let zero = match options.batching {
            Batching::Tokens { max_tokens } => max_tokens == 0,
            Batching::Rows { batch_size } => batch_size == 0,
        };
        if zero {
            return Err(PipelineError::Usage(
                "the loader's batch size / token budget must be positive".into(),
            ));
        }
        if shards.rows() == 0 {
            return Err(PipelineError::Usage(
                "the loader has no rows to batch".into(),
            ));
        }
        Ok(BatchLoader { shards, options })
    }

    /// The shards it reads.
    pub fn shards(&self) -> &ShardSet {
        &self.shards
    }

    /// Its options.
    pub fn options(&self) -> &LoaderOptions {
        &self.options
    }

    /// The batches of `epoch`, from its first.
    pub fn epoch(&self, epoch: u64) -> Batches<'_> {
        self.resume(Position { epoch, step: 0 })
    }

    /// The batches of `at.epoch` from batch `at.step` on: the same batches an uninterrupted
    /// pass over the epoch yields after its first `at.step`.
    pub fn resume(&self, at: Position) -> Batches<'_> {
        let mut order: Vec<usize> = (0..self.shards.shards.len()).collect();
        if self.options.shuffle {
            use rand::seq::SliceRandom;
            order.shuffle(&mut stream(self.options.seed, at.epoch, "shards", 0));
        }
        Batches {
            loader: self,
            epoch: at.epoch,
            order,
            next_shard: 0,
            skip: at.step,
            step: 0,
            current: None,
        }
    }

    /// Batches in `epoch` (reads only the shards' `length` columns).
    pub fn steps_in_epoch(&self, epoch: u64) -> Result<u64> {
        let mut steps = 0;
        for index in 0..self.shards.shards.len() {
            let lengths = shard_lengths(&self.shards.shards[index].path)?;
            steps += self.plan(epoch, index, &lengths).len() as u64;
        }
        Ok(steps)
    }

    fn plan(&self, epoch: u64, shard: usize, lengths: &[u32]) -> Vec<Vec<usize>> {
        let o = &self.options;
        let mut rng = o
            .shuffle
            .then(|| stream(o.seed, epoch, "rows", shard as u64));
        plan_batches(lengths, o.batching, rng.as_mut())
    }
}

/// The shard being yielded from.
struct OpenShard {
    rows: ShardRows,
    batches: std::vec::IntoIter<Vec<usize>>,
}

/// The batches of one epoch (see [`BatchLoader::resume`]).
pub struct Batches<'a> {
    loader: &'a BatchLoader,
    epoch: u64,
    order: Vec<usize>,
    next_shard: usize,
    /// Batches still to skip before yielding.
    skip: u64,
    /// Batches of the epoch passed so far (skipped or yielded).
    step: u64,
    current: Option<OpenShard>,
}

impl Batches<'_> {
    /// Opens the next shard that has batches left to yield, skipping whole shards by their
    /// lengths alone. `None` at the end of the epoch.
    fn open_next(&mut self) -> Result<Option<OpenShard>> {
        while let Some(&index) = self.order.get(self.next_shard) {
            self.next_shard += 1;
            let shard = &self.loader.shards.shards[index];
            if self.skip > 0 {
                let lengths = shard_lengths(&shard.path)?;
                let planned = self.loader.plan(self.epoch, index, &lengths).len() as u64;
                if planned <= self.skip {
                    self.skip -= planned;
                    self.step += planned;
                    continue;
                }
            }
            let rows = ShardRows::read(&shard.path)?;
            if rows.len() as u64 != shard.rows {
                return Err(PipelineError::bad_input(
                    &shard.path,
                    format!("{} rows, the manifest says {}", rows.len(), shard.rows),
                ));
            }
            let mut batches = self
                .loader
                .plan(self.epoch, index, rows.lengths())
                .into_iter();
            for _ in 0..std::mem::take(&mut self.skip) {
                batches.next();
                self.step += 1;
            }
            return Ok(Some(OpenShard { rows, batches }));
        }
        Ok(None)
    }
}

impl Iterator for Batches<'_> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(open) = &mut self.current {
                if let Some(rows) = open.batches.next() {
                    let position = Position {
                        epoch: self.epoch,
                        step: self.step,
                    };
                    self.step += 1;
                    let options = &self.loader.options;
                    return Some(Ok(Batch::assemble(&open.rows, &rows, position, options)));
                }
            }
            match self.open_next() {
                Ok(Some(open)) => self.current = Some(open),
                Ok(None) => {
                    self.current = None;
                    return None;
                }
                Err(e) => {
                    // An error ends the epoch.
                    self.next_shard = self.order.len();
                    self.current = None;
                    return Some(Err(e));
                }
            }
        }
    }
}
