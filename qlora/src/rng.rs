//! Seeded random streams derived by hashing, so every random draw of a run (adapter init,
//! dropout masks) depends only on the seed and where it is used, never on call order.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The random stream for `what` at `step` of module `path`, in a run seeded with `seed`.
pub fn stream(seed: u64, step: u64, what: &str, path: &str) -> ChaCha8Rng {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"medtune qlora v1");
    hasher.update(&seed.to_le_bytes());
    hasher.update(&step.to_le_bytes());
    hasher.update(what.as_bytes());
    hasher.update(&[0]);
    hasher.update(path.as_bytes());
    ChaCha8Rng::from_seed(*hasher.finalize().as_bytes())
}
