//! Rows appended to an input: every stage extends its previous output instead of starting
//! over, old rows keep their splits, and what the row-by-row stages write equals a full run.
//! Real rows from chatdoctor5k.json, the real MiniLM tokenizer.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;

const STAGES: [&str; 7] = [
    "ingest", "dedup", "convert", "clean", "split", "tokenize", "shard",
];

fn write_array(path: &Path, rows: &[serde_json::Value]) {
    let items: Vec<String> = rows
        .iter()
        .map(|r| serde_json::to_string_pretty(r).unwrap())
        .collect();
    std::fs::write(path, format!("[\n{}\n]\n", items.join(",\n"))).unwrap();
}

fn config(dir: &Path, data: &Path) -> PathBuf {
    let tokenizer = repo().join("models/all-MiniLM-L6-v2/tokenizer.json");
    assert!(tokenizer.is_file(), "run scripts/fetch-model.sh first");
    let text = format!(
        r#"
[ingest]
format = "alpaca"
inputs = [{data:?}]

[dedup]
columns = ["instruction", "input"]

[dedup.near]
action = "group"

[convert]

[clean]

[split]
text_columns = ["instruction", "input"]

[tokenize]
tokenizer = {tokenizer:?}
mode = "sft"
template = "plain"
max_length = 256
overflow = "truncate"

[shard]
shard_mib = 1
"#,
        data = data.display().to_string(),
        tokenizer = tokenizer.display().to_string(),
    );
    let path = dir.join("append.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The manifest of the latest output of every stage.
fn manifests(workdir: &Path) -> BTreeMap<String, serde_json::Value> {
    let catalog: serde_json::Value =
        serde_json::from_slice(&std::fs::read(workdir.join("catalog.json")).unwrap()).unwrap();
    STAGES
        .iter()
        .map(|&stage| {
            let key = catalog["stages"][stage].as_str().unwrap();
            let path = workdir
                .join("cache")
                .join(stage)
                .join(key)
                .join("manifest.json");
            let manifest = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
            (stage.to_string(), manifest)
        })
        .collect()
}

/// `id -> (split, split_group)` of every split row.
fn splits(workdir: &Path) -> BTreeMap<String, (String, String)> {
    query_rows(workdir, "SELECT id, split, split_group FROM split")
        .into_iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap().to_string();
            (s("id"), (s("split"), s("split_group")))
        })
        .collect()
}

/// `id -> input ids` of every tokenized row.
fn tokens(workdir: &Path) -> BTreeMap<String, String> {
    query_rows(workdir, "SELECT id, input_ids FROM tokenized")
        .into_iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["input_ids"].to_string(),
            )
        })
        .collect()
}

fn ids(workdir: &Path, sql: &str) -> Vec<String> {
    query_rows(workdir, sql)
        .into_iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

/// Real rows, a folder, the input file's path there and a config reading it.
struct Setup {
    source: Vec<serde_json::Value>,
    dir: tempfile::TempDir,
    data: PathBuf,
    config: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let source = serde_json::from_slice(
            &std::fs::read(shared_data("chatdoctor/chatdoctor5k.json")).unwrap(),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("healthcaremagic.json");
        let config = config(dir.path(), &data);
        Setup {
            source,
            dir,
            data,
            config,
        }
    }
}

#[test]
fn appended_rows_extend_every_stage_and_old_rows_keep_their_splits() {
    let Setup {
        source,
        dir,
        data,
        config,
    } = Setup::new();
    let config = config.to_str().unwrap();
    let (workdir, cold) = (dir.path().join("work"), dir.path().join("cold"));

    let old: Vec<serde_json::Value> = source[..1200].to_vec();
    write_array(&data, &old);
    medtune(&workdir, &["run", "--config", config]).expect(0);
    let before = splits(&workdir);
    assert!(!before.is_empty());

    // 120 new real rows, an exact copy of an old row and a near-duplicate of a long one.
    let long = (20..old.len())
        .max_by_key(|&i| old[i]["input"].as_str().unwrap().len())
        .unwrap();
    let mut rows = old.clone();
    rows.extend_from_slice(&source[1200..1320]);
    rows.push(old[10].clone());
    let mut near = old[long].clone();
    let input = near["input"].as_str().unwrap().to_string();
    near["input"] = serde_json::Value::String(format!("{input} Thanks."));
    rows.push(near);
    write_array(&data, &rows);
    let run = medtune(&workdir, &["run", "--config", config]).expect(0);

    assert!(run.stdout.contains("appended"), "{}", run.stdout);
    let after = manifests(&workdir);
    for stage in STAGES {
        assert!(
            after[stage]["extends"].is_string(),
            "{stage} did not extend its previous output:\n{}",
            run.stderr
        );
    }
    assert_eq!(after["ingest"]["accounting"]["rows_in"], rows.len());

    // Old rows keep split and group; the near-duplicate joins its original's split.
    let now = splits(&workdir);
    for (id, placed) in &before {
        assert_eq!(now.get(id), Some(placed), "row {id} moved");
    }
    let id_of = |i: usize| {
        // Find the old row by its text (not by its id, `file:record`).
        let text = old[i]["input"].as_str().unwrap().replace('\'', "''");
        ids(
            &workdir,
            &format!("SELECT id FROM ingested WHERE input = '{text}' ORDER BY line LIMIT 1"),
        )
        .remove(0)
    };
    let (copied, near_original) = (id_of(10), id_of(long));
    let duplicate_of = query_rows(
        &workdir,
        "SELECT duplicate_of FROM dedup_rejects WHERE reason = 'duplicate'",
    );
    assert!(duplicate_of
        .iter()
        .any(|r| r["duplicate_of"] == copied.as_str()));
    let near_new = ids(
        &workdir,
        "SELECT id FROM ingested WHERE input LIKE '% Thanks.' ORDER BY line DESC LIMIT 1",
    )
    .remove(0);
    let cluster = |id: &str| {
        query_rows(
            &workdir,
            &format!("SELECT cluster FROM near_duplicates WHERE id = '{id}'"),
        )
        .remove(0)["cluster"]
            .clone()
    };
    assert_eq!(cluster(&near_new), cluster(&near_original));
    assert_eq!(now[&near_new].0, now[&near_original].0);

    // Every group in one split, and the split near its fractions.
    let mut group_split: BTreeMap<&str, &str> = BTreeMap::new();
    for (split, group) in now.values() {
        let first = group_split.entry(group).or_insert(split);
        assert_eq!(first, split, "group {group} is in two splits");
    }
    let train = now.values().filter(|(s, _)| s == "train").count() as f64;
    assert!((train / now.len() as f64 - 0.8).abs() < 0.02);

    // A full run over the grown file keeps and tokenizes the same rows the same way.
    medtune(&cold, &["run", "--config", config]).expect(0);
    let full = manifests(&cold);
    assert!(full["ingest"]["extends"].is_null());
    for sql in [
        "SELECT id FROM deduped ORDER BY id",
        "SELECT id FROM cleaned ORDER BY id",
        "SELECT id FROM dedup_rejects ORDER BY id",
    ] {
        assert_eq!(ids(&workdir, sql), ids(&cold, sql), "{sql}");
    }
    assert_eq!(tokens(&workdir), tokens(&cold));
    for stage in STAGES {
        assert_eq!(
            after[stage]["accounting"], full[stage]["accounting"],
            "{stage} accounting"
        );
    }
    let shard_rows =
        |m: &BTreeMap<String, serde_json::Value>| m["shard"]["datasets"]["shards"]["rows"].clone();
    assert_eq!(shard_rows(&after), shard_rows(&full));
}

#[test]
fn an_edited_record_means_a_full_run() {
    let Setup {
        source,
        dir,
        data,
        config,
    } = Setup::new();
    let config = config.to_str().unwrap();
    let workdir = dir.path().join("work");
    let mut rows: Vec<serde_json::Value> = source[..300].to_vec();
    write_array(&data, &rows);
    medtune(&workdir, &["run", "--config", config]).expect(0);

    rows[5]["output"] = serde_json::Value::String("Edited answer.".into());
    rows.extend_from_slice(&source[300..320]);
    write_array(&data, &rows);
    medtune(&workdir, &["run", "--config", config]).expect(0);
    let after = manifests(&workdir);
    assert!(after["ingest"]["extends"].is_null());
    assert_eq!(after["ingest"]["accounting"]["rows_in"], 320);
    let edited = query_rows(
        &workdir,
        "SELECT count(*) AS n FROM ingested WHERE completion LIKE '%Edited answer.%'",
    );
    assert_eq!(edited[0]["n"], 1);
}
