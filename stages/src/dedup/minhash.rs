//! MinHash signatures over word n-grams and an LSH index with banding.
//!
//! Written here rather than taken from a crate: the few MinHash crates on crates.io either pull
//! in their own hashing and parallelism stacks or do not expose the banded index incrementally,
//! and the algorithm is short. Each of the `bands × rows` permutations is simulated by mixing
//! the shingle's 64-bit hash with a per-permutation seed (SplitMix64's finaliser); a signature
//! keeps the minimum of each, truncated to 32 bits. Two texts whose Jaccard similarity is `s`
//! share a band with probability `1 - (1 - s^rows)^bands`.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use rayon::prelude::*;

use xxhash_rust::xxh3::{xxh3_64_with_seed, Xxh3};

/// Computes signatures.
#[derive(Debug, Clone)]
pub struct MinHasher {
    seeds: Vec<u64>,
    ngram: usize,
}

/// SplitMix64's output function: a bijective 64-bit mixer.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl MinHasher {
    /// `permutations` hash functions derived from `seed`, over word `ngram`s.
    pub fn new(permutations: usize, ngram: usize, seed: u64) -> Self {
        let mut state = seed;
        let seeds = (0..permutations)
            .map(|_| {
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                mix64(state)
            })
            .collect();
        MinHasher {
            seeds,
            ngram: ngram.max(1),
        }
    }

    /// Signature length.
    pub fn permutations(&self) -> usize {
        self.seeds.len()
    }

    /// The signature of `text` (words split on whitespace), or `None` for text without words.
    /// A text shorter than the n-gram size has one shingle: all its words.
    pub fn signature(&self, text: &str) -> Option<Vec<u32>> {
        let words: Vec<&str> = text.split_whitespace().collect();
        if words.is_empty() {
            return None;
        }
        let n = self.ngram.min(words.len());
        let mut signature = vec![u32::MAX; self.seeds.len()];
        let mut hasher = Xxh3::new();
        for window in words.windows(n) {
            // The words of the shingle, each followed by a space: whitespace runs do not matter.
            hasher.reset();
            for word in window {
                hasher.update(word.as_bytes());
                hasher.update(b" ");
            }
            let h = hasher.digest();
            for (slot, seed) in signature.iter_mut().zip(&self.seeds) {
                let v = (mix64(h ^ seed) >> 32) as u32;
                if v < *slot {
                    *slot = v;
                }
            }
        }
        Some(signature)
    }
}

/// Estimated Jaccard similarity: the fraction of equal signature slots.
pub fn similarity(a: &[u32], b: &[u32]) -> f64 {
    if a.is_empty() || a.len() != b.len() {
        return 0.0;
    }
    let equal = a.iter().zip(b).filter(|(x, y)| x == y).count();
    equal as f64 / a.len() as f64
}

/// The hasher of the band buckets: band keys are xxh3 digests already, so they are used as
/// they are instead of being hashed a second time.
#[derive(Default)]
pub struct BandKeyHasher(u64);

impl Hasher for BandKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }
}

/// Signatures inserted so far, bucketed per band.
#[derive(Debug)]
pub struct LshIndex {
    bands: usize,
    rows: usize,
    buckets: Vec<HashMap<u64, Vec<u32>, BuildHasherDefault<BandKeyHasher>>>,
    signatures: Vec<u32>,
}

impl LshIndex {
    /// An empty index for signatures of `bands × rows` slots.
    pub fn new(bands: usize, rows: usize) -> Self {
        LshIndex {
            bands,
            rows,
            buckets: (0..bands).map(|_| HashMap::default()).collect(),
            signatures: Vec::new(),
        }
    }

    fn band_key(&self, signature: &[u32], band: usize) -> u64 {
        let slots = &signature[band * self.rows..(band + 1) * self.rows];
        // The slots' little-endian bytes, on the stack for bands of up to 16 slots.
        let mut stack = [0u8; 64];
        let mut heap = Vec::new();
        let bytes: &mut [u8] = if slots.len() * 4 <= stack.len() {
            &mut stack[..slots.len() * 4]
        } else {
            heap.resize(slots.len() * 4, 0);
            &mut heap
        };
        for (out, v) in bytes.chunks_exact_mut(4).zip(slots) {
            out.copy_from_slice(&v.to_le_bytes());
        }
        xxh3_64_with_seed(bytes, band as u64)
    }

    /// The signature of an inserted entry.
    pub fn signature(&self, entry: u32) -> &[u32] {
        let len = self.bands * self.rows;
        &self.signatures[entry as usize * len..(entry as usize + 1) * len]
    }

    /// Entries sharing at least one band with `signature`, ascending, each once.
    pub fn candidates(&self, signature: &[u32]) -> Vec<u32> {
        let mut out: Vec<u32> = (0..self.bands)
            .filter_map(|band| self.buckets[band].get(&self.band_key(signature, band)))
            .flatten()
            .copied()
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Inserts many signatures (`signatures` holds them one after another), filling the
    /// bands in parallel: what loading a saved index does.
    pub fn insert_many(&mut self, signatures: &[u32]) {
        let width = self.bands * self.rows;
        assert_eq!(signatures.len() % width, 0, "signature length");
        let first = (self.signatures.len() / width) as u32;
        let this = &*self;
        let keys: Vec<Vec<u64>> = (0..self.bands)
            .into_par_iter()
            .map(|band| {
                signatures
                    .chunks_exact(width)
                    .map(|s| this.band_key(s, band))
                    .collect()
            })
            .collect();
        self.buckets
            .par_iter_mut()
            .zip(keys)
            .for_each(|(bucket, keys)| {
                bucket.reserve(keys.len());
                for (i, key) in keys.into_iter().enumerate() {
                    bucket.entry(key).or_default().push(first + i as u32);
                }
            });
        self.signatures.extend_from_slice(signatures);
    }

    /// Inserts a signature; returns its entry number.
    pub fn insert(&mut self, signature: &[u32]) -> u32 {
        assert_eq!(signature.len(), self.bands * self.rows, "signature length");
        let entry = (self.signatures.len() / signature.len()) as u32;
        for band in 0..self.bands {
            let key = self.band_key(signature, band);
            self.buckets[band].entry(key).or_default().push(entry);
        }
        self.signatures.extend_from_slice(signature);
        entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(n: usize, offset: usize) -> String {
        (offset..offset + n)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Exact Jaccard similarity of the word n-gram sets, the quantity MinHash estimates.
    fn jaccard(a: &str, b: &str, n: usize) -> f64 {
        let grams = |t: &str| {
            let w: Vec<&str> = t.split_whitespace().collect();
            w.windows(n)
                .map(|g| g.join(" "))
                .collect::<std::collections::HashSet<_>>()
        };
        let (x, y) = (grams(a), grams(b));
        x.intersection(&y).count() as f64 / x.union(&y).count() as f64
    }

    #[test]
    fn estimates_track_the_exact_jaccard_similarity() {
        let hasher = MinHasher::new(256, 3, 7);
        let a = words(200, 0);
        for shift in [0, 20, 60, 120, 200] {
            let b = words(200, shift);
            let exact = jaccard(&a, &b, 3);
            let est = similarity(
                &hasher.signature(&a).unwrap(),
                &hasher.signature(&b).unwrap(),
            );
            assert!(
                (exact - est).abs() < 0.1,
                "shift {shift}: exact {exact}, estimate {est}"
            );
        }
    }

    #[test]
    fn identical_texts_have_identical_signatures_and_empty_text_none() {
        let hasher = MinHasher::new(64, 5, 1);
        assert_eq!(
            hasher.signature("a b c d e f"),
            hasher.signature("a  b c d e\nf")
        );
        assert_eq!(hasher.signature("  "), None);
        assert!(hasher.signature("short").is_some());
    }

    #[test]
    fn the_index_finds_near_duplicates_and_not_unrelated_texts() {
        let hasher = MinHasher::new(128, 3, 42);
        let mut index = LshIndex::new(16, 8);
        let base = words(300, 0);
        let unrelated = words(300, 10_000);
        let e0 = index.insert(&hasher.signature(&base).unwrap());
        let e1 = index.insert(&hasher.signature(&unrelated).unwrap());
        let mut near = base.clone();
        near.push_str(" one more tail");
        let found = index.candidates(&hasher.signature(&near).unwrap());
        assert!(found.contains(&e0), "{found:?}");
        assert!(!found.contains(&e1), "{found:?}");
        assert!(similarity(index.signature(e0), &hasher.signature(&near).unwrap()) > 0.9);
    }
}
