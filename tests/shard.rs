//! The shard stage and the batch loader on the real ChemProt and BC5CDR files with the real
//! all-MiniLM-L6-v2 tokenizer (scripts/fetch-model.sh puts it in models/).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::*;
use medtune_stages::shared::loader::{
    shard_lengths, Batch, BatchLoader, Batching, LoaderOptions, Padding, Position, ShardSet,
};

const PAD: u32 = 0;

/// A copy of a bundled config in `dir`, its relative paths made absolute and `edit` applied.
fn config_copy(dir: &Path, name: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("configs").join(name)).unwrap();
    let configs = repo().join("configs");
    let text = text.replace("\"../", &format!("\"{}/../", configs.display()));
    let path = dir.join(name);
    std::fs::write(&path, edit(text)).unwrap();
    path
}

/// Runs the ChemProt chain with 1 MiB shards (several per split) and returns its workdir.
fn chemprot_small_shards() -> tempfile::TempDir {
    let work = tempfile::tempdir().unwrap();
    let config = config_copy(work.path(), "chemprot.toml", |t| {
        t.replace("shard_mib = 64", "shard_mib = 1")
    });
    medtune(work.path(), &["run", "--config", config.to_str().unwrap()]).expect(0);
    work
}

fn options(seed: u64) -> LoaderOptions {
    LoaderOptions {
        batching: Batching::Tokens { max_tokens: 4096 },
        seed,
        shuffle: true,
        pad_id: PAD,
        padding: Padding::Right,
    }
}

fn all_batches(loader: &BatchLoader, at: Position) -> Vec<Batch> {
    loader.resume(at).collect::<Result<_, _>>().unwrap()
}

/// (id, window) of every row in the batches.
fn rows_of(batches: &[Batch]) -> Vec<(String, u32)> {
    batches
        .iter()
        .flat_map(|b| b.ids.iter().cloned().zip(b.windows.iter().copied()))
        .collect()
}

#[test]
fn chemprot_shards_are_bounded_sorted_and_hold_every_sequence_once() {
    let work = chemprot_small_shards();
    let shards = ShardSet::open(work.path()).unwrap();
    assert_eq!(shards.splits(), ["test", "train", "validation"]);
    let per_split = query_csv(
        work.path(),
        "SELECT split, count(*) AS n, sum(length) AS tokens FROM tokenized GROUP BY split \
         ORDER BY split",
    );
    for line in per_split.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let split = shards.split(f[0]).unwrap();
        assert_eq!(split.rows().to_string(), f[1], "{line}");
        assert_eq!(split.tokens().to_string(), f[2], "{line}");
    }
    let train = shards.split("train").unwrap();
    assert!(
        train.shards().len() >= 4,
        "{} train shards",
        train.shards().len()
    );
    for shard in shards.shards() {
        // Bound: 8 bytes a token plus the row's id and task, under 1 MiB.
        assert!(shard.tokens * 8 <= 1 << 20, "{shard:?}");
        let lengths = shard_lengths(&shard.path).unwrap();
        assert!(
            lengths.windows(2).all(|w| w[0] <= w[1]),
            "not sorted: {shard:?}"
        );
        assert_eq!(lengths.len() as u64, shard.rows);
        let sum: u64 = lengths.iter().map(|&l| u64::from(l)).sum();
        assert_eq!(sum, shard.tokens);
        let (min, max) = (lengths[0], lengths[lengths.len() - 1]);
        assert_eq!(shard.lengths, (u64::from(min), u64::from(max)));
    }
    // Every tokenized sequence is in exactly one shard, with its tokens and labels unchanged.
    let joined = query_csv(
        work.path(),
        "SELECT count(*) FROM shards s JOIN tokenized t ON s.id = t.id AND s.\"window\" = \
         t.\"window\" AND s.split = t.split AND s.input_ids = t.input_ids AND s.labels = t.labels",
    );
    let total = query_csv(work.path(), "SELECT count(*) FROM tokenized");
    assert_eq!(joined.lines().nth(1), total.lines().nth(1));
    let distinct = query_csv(
        work.path(),
        "SELECT count(DISTINCT concat(id, '#', CAST(\"window\" AS VARCHAR))) FROM shards",
    );
    assert_eq!(distinct.lines().nth(1), total.lines().nth(1));
}

#[test]
fn loader_batches_are_deterministic_per_seed_and_epoch_and_resume_exactly() {
    let work = chemprot_small_shards();
    let train = ShardSet::open(work.path()).unwrap().split("train").unwrap();
    let loader = BatchLoader::new(train.clone(), options(7)).unwrap();
    let epoch0 = all_batches(&loader, Position::default());
    assert_eq!(epoch0, all_batches(&loader, Position::default()));
    assert_eq!(
        epoch0.len() as u64,
        loader.steps_in_epoch(0).unwrap(),
        "steps_in_epoch agrees with the batches"
    );

    // Every row once per epoch; the budget holds unless a row alone exceeds it.
    let rows = rows_of(&epoch0);
    assert_eq!(rows.len() as u64, train.rows());
    assert_eq!(rows.iter().collect::<BTreeSet<_>>().len(), rows.len());
    for (step, batch) in epoch0.iter().enumerate() {
        assert_eq!(
            batch.position,
            Position {
                epoch: 0,
                step: step as u64
            }
        );
        assert!(
            batch.padded_tokens() <= 4096 || batch.rows() == 1,
            "{:?}",
            batch.lengths
        );
    }
    let (real, padded): (usize, usize) = epoch0
        .iter()
        .map(|b| (b.tokens(), b.padded_tokens()))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert!(padded * 100 < real * 110, "padding {real} -> {padded}");

    // Another seed, another epoch: other batches over the same rows.
    let other_seed = all_batches(
        &BatchLoader::new(train.clone(), options(8)).unwrap(),
        Position::default(),
    );
    let epoch1 = all_batches(&loader, Position { epoch: 1, step: 0 });
    for other in [&other_seed, &epoch1] {
        assert_ne!(rows_of(other), rows);
        let mut a = rows_of(other);
        let mut b = rows.clone();
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }

    // Resuming at (epoch, step) yields exactly the rest of the uninterrupted epoch, whether
    // the step falls at the start, inside a shard, on a shard boundary or at the end.
    let n = epoch1.len() as u64;
    for step in [0, 1, n / 3, n / 2, n - 1, n] {
        let resumed = all_batches(&loader, Position { epoch: 1, step });
        assert_eq!(resumed, epoch1[step as usize..], "resumed at step {step}");
    }
}

#[test]
fn batches_are_padded_and_masked() {
    let work = chemprot_small_shards();
    let test = ShardSet::open(work.path()).unwrap().split("test").unwrap();
    for padding in [Padding::Right, Padding::Left] {
        let options = LoaderOptions {
            batching: Batching::Rows { batch_size: 8 },
            shuffle: false,
            padding,
            ..options(0)
        };
        let loader = BatchLoader::new(test.clone(), options).unwrap();
        let batches = all_batches(&loader, Position::default());
        assert!(batches.iter().all(|b| b.rows() <= 8));
        // Stored order: shard after shard, each in length order, so lengths only fall where
        // a shard ends.
        let lengths: Vec<u32> = batches.iter().flat_map(|b| b.lengths.clone()).collect();
        let falls = lengths.windows(2).filter(|w| w[0] > w[1]).count();
        assert!(
            falls < test.shards().len(),
            "{falls} falls over {} shards",
            test.shards().len()
        );
        for batch in &batches {
            for (r, &length) in batch.lengths.iter().enumerate() {
                let row = r * batch.seq_len..(r + 1) * batch.seq_len;
                let (ids, labels, mask) = (
                    &batch.input_ids[row.clone()],
                    &batch.labels[row.clone()],
                    &batch.attention_mask[row],
                );
                let pad = batch.seq_len - length as usize;
                let (pads, tokens) = match padding {
                    Padding::Right => (length as usize..batch.seq_len, 0..length as usize),
                    Padding::Left => (0..pad, pad..batch.seq_len),
                };
                assert!(pads
                    .clone()
                    .all(|i| ids[i] == PAD && labels[i] == -100 && mask[i] == 0));
                assert!(tokens.clone().all(|i| mask[i] == 1));
                // SFT rows: the prompt is masked, the completion is labelled with its ids.
                let prompt = batch.prompt_tokens[r] as usize;
                let start = tokens.start;
                assert!((start..start + prompt).all(|i| labels[i] == -100));
                assert!((start + prompt..tokens.end).all(|i| labels[i] == ids[i] as i32));
            }
        }
    }
}

#[test]
fn a_label_outside_the_configured_map_names_the_file_and_line() {
    let work = tempfile::tempdir().unwrap();
    let config = config_copy(work.path(), "bc5cdr.toml", |t| {
        t.replace(
            "mode = \"token_classification\"",
            "mode = \"token_classification\"\nlabels = [\"O\", \"B-Chemical\", \"I-Chemical\"]",
        )
    });
    let run = medtune(work.path(), &["run", "--config", config.to_str().unwrap()]).expect(2);
    assert!(
        run.stderr.contains("bc5cdr/")
            && run.stderr.contains(".tsv: line ")
            && run
                .stderr
                .contains("label `B-Disease` is not in the label map"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_damaged_shard_is_a_clear_error_naming_the_file() {
    let work = chemprot_small_shards();
    let test = ShardSet::open(work.path()).unwrap().split("test").unwrap();
    let victim = test.shards()[0].path.clone();
    let mut perms = std::fs::metadata(&victim).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&victim, perms).unwrap();
    std::fs::write(&victim, b"not parquet").unwrap();
    let options = LoaderOptions {
        shuffle: false,
        ..options(0)
    };
    let loader = BatchLoader::new(test, options).unwrap();
    let err = loader.epoch(0).find_map(Result::err).expect("an error");
    let message = err.to_string();
    assert!(
        message.contains(&victim.display().to_string()) && message.contains("not a readable"),
        "{message}"
    );
}

#[test]
fn bc5cdr_shards_give_every_sentence_to_one_split_and_keep_labels() {
    let work = tempfile::tempdir().unwrap();
    let config = repo().join("configs/bc5cdr.toml");
    medtune(work.path(), &["run", "--config", config.to_str().unwrap()]).expect(0);
    let shards = ShardSet::open(work.path()).unwrap();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for split in shards.splits() {
        let loader = BatchLoader::new(
            shards.split(split).unwrap(),
            LoaderOptions {
                batching: Batching::Tokens { max_tokens: 8192 },
                ..options(3)
            },
        )
        .unwrap();
        for batch in loader.epoch(0) {
            let batch = batch.unwrap();
            for (r, id) in batch.ids.iter().enumerate() {
                assert!(
                    seen.insert(id.clone(), split.to_string()).is_none(),
                    "{id} twice"
                );
                let row = &batch.labels[r * batch.seq_len..(r + 1) * batch.seq_len];
                // [CLS] and [SEP] are never labelled; some word is.
                assert_eq!(row[0], -100);
                assert!(row.iter().any(|&l| l >= 0), "{id}");
            }
        }
    }
    let sentences = query_csv(work.path(), "SELECT count(*) FROM split");
    assert_eq!(
        Some(seen.len().to_string().as_str()),
        sentences.lines().nth(1)
    );
}
