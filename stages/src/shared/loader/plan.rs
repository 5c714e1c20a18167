//! Which rows of a shard go into which batch, in which order: a pure function of the rows'
//! lengths, the batching rule and a seeded random stream, so the same seed and epoch always give
//! the same batches and a resumed run can skip batches without reading their tokens.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// How rows are grouped into batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Batching {
    /// As many rows as fit in `max_tokens` padded tokens (rows × longest row). A row longer
    /// than the budget makes a batch of its own.
    Tokens {
        /// Padded tokens per batch at most.
        max_tokens: usize,
    },
    /// `batch_size` rows per batch (the last batch of a shard may have fewer).
    Rows {
        /// Rows per batch.
        batch_size: usize,
    },
}

/// A seeded random stream for one purpose (`what`, `index`) of one epoch. Derived by hashing,
/// so streams for different shards and epochs are independent of each other and of the order
/// in which they are asked for.
pub fn stream(seed: u64, epoch: u64, what: &str, index: u64) -> ChaCha8Rng {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"medtune loader v1");
    hasher.update(&seed.to_le_bytes());
    hasher.update(&epoch.to_le_bytes());
    hasher.update(what.as_bytes());
    hasher.update(&index.to_le_bytes());
    ChaCha8Rng::from_seed(*hasher.finalize().as_bytes())
}

/// Cuts rows with these `lengths` into batches of row indices.
///
/// Rows are put in length order (shuffled first when `rng` is given, so rows of equal length
/// are mixed), cut by `batching`, and the batches themselves are shuffled when `rng` is given.
/// Every row is in exactly one batch.
pub fn plan_batches(
    lengths: &[u32],
    batching: Batching,
    mut rng: Option<&mut ChaCha8Rng>,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    if let Some(rng) = rng.as_deref_mut() {
        order.shuffle(rng);
    }
    // Stable: equal lengths keep the (shuffled) order.
    order.sort_by_key(|&row| lengths[row]);
    let mut batches = match batching {
        Batching::Rows { batch_size } => order
            .chunks(batch_size.max(1))
            .map(<[usize]>::to_vec)
            .collect(),
        Batching::Tokens { max_tokens } => cut_by_tokens(&order, lengths, max_tokens),
    };
    if let Some(rng) = rng {
        batches.shuffle(rng);
    }
    batches
}

/// Greedy cut of length-sorted rows: a batch grows while its padded size stays in budget.
fn cut_by_tokens(order: &[usize], lengths: &[u32], max_tokens: usize) -> Vec<Vec<usize>> {
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut longest = 0usize;
    for &row in order {
        let length = lengths[row] as usize;
        let padded = (current.len() + 1) * longest.max(length);
        if !current.is_empty() && padded > max_tokens {
            batches.push(std::mem::take(&mut current));
            longest = 0;
        }
        longest = longest.max(length);
        current.push(row);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lengths() -> Vec<u32> {
        (0..500).map(|i| 5 + (i * 37 % 120) as u32).collect()
    }

    fn every_row_once(batches: &[Vec<usize>], n: usize) {
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..n).collect::<Vec<_>>());
    }

    #[test]
    fn token_batches_stay_in_budget_and_cover_every_row() {
        let lengths = lengths();
        let mut rng = stream(7, 0, "rows", 0);
        let batches = plan_batches(
            &lengths,
            Batching::Tokens { max_tokens: 600 },
            Some(&mut rng),
        );
        every_row_once(&batches, lengths.len());
        for batch in &batches {
            let longest = batch.iter().map(|&r| lengths[r] as usize).max().unwrap();
            assert!(batch.len() * longest <= 600, "{batch:?}");
        }
        // Length-sorted cutting wastes little padding.
        let real: usize = lengths.iter().map(|&l| l as usize).sum();
        let padded: usize = batches
            .iter()
            .map(|b| b.len() * b.iter().map(|&r| lengths[r] as usize).max().unwrap())
            .sum();
        assert!(padded < real * 105 / 100, "padded {padded}, real {real}");
    }

    #[test]
    fn a_row_over_budget_is_a_batch_of_its_own() {
        let batches = plan_batches(&[10, 900, 12], Batching::Tokens { max_tokens: 100 }, None);
        assert_eq!(batches, vec![vec![0, 2], vec![1]]);
    }

    #[test]
    fn row_batches_have_the_size_asked_for() {
        let lengths = lengths();
        let batches = plan_batches(&lengths, Batching::Rows { batch_size: 32 }, None);
        every_row_once(&batches, lengths.len());
        assert!(batches[..batches.len() - 1].iter().all(|b| b.len() == 32));
        assert_eq!(batches.last().unwrap().len(), 500 % 32);
    }

    #[test]
    fn streams_depend_on_seed_epoch_and_index() {
        let lengths = lengths();
        let plan = |seed, epoch, index| {
            let mut rng = stream(seed, epoch, "rows", index);
            plan_batches(&lengths, Batching::Rows { batch_size: 16 }, Some(&mut rng))
        };
        assert_eq!(plan(1, 0, 0), plan(1, 0, 0));
        assert_ne!(plan(1, 0, 0), plan(2, 0, 0));
        assert_ne!(plan(1, 0, 0), plan(1, 1, 0));
        assert_ne!(plan(1, 0, 0), plan(1, 0, 1));
    }
}
