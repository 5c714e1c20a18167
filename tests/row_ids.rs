//! Row ids are per-file record ordinals (`file:ordinal`), not line numbers: they are unique
//! and the same for the same rows whatever the file's layout. A minified JSON array (every
//! record on one line, as Python's `json.dumps(list)` writes it), the pretty-printed array and
//! JSON lines with blank lines between records give every row the same id, the same dedup
//! decisions and the same split. Real rows from chatdoctor5k.json.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;
use serde_json::Value;

/// 200 real rows, then an exact copy of row 10 and a near-copy of row 20.
fn rows() -> Vec<Value> {
    let all: Vec<Value> = serde_json::from_slice(
        &std::fs::read(shared_data("chatdoctor/chatdoctor5k.json")).unwrap(),
    )
    .unwrap();
    let mut rows = all[..200].to_vec();
    rows.push(rows[10].clone());
    let mut near = rows[20].clone();
    let input = format!("{} Thanks.", near["input"].as_str().unwrap());
    near["input"] = Value::String(input);
    rows.push(near);
    rows
}

/// Runs ingest, dedup and split over `text` (saved as `rows.json` in its own folder) and
/// returns the workdir.
fn run(text: &str) -> tempfile::TempDir {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("rows.json");
    std::fs::write(&data, text).unwrap();
    let config = write_config(
        work.path(),
        "alpaca",
        &[data],
        "[dedup]\ncolumns = [\"instruction\", \"input\"]\n[dedup.near]\naction = \"group\"\n\
         [split]\ntext_columns = [\"instruction\", \"input\"]\n",
    );
    medtune(work.path(), &["run", "--config", config.to_str().unwrap()]).expect(0);
    work
}

fn sorted(workdir: &Path, sql: &str) -> Vec<Value> {
    let mut rows = query_rows(workdir, sql);
    rows.sort_by_key(|r| r.to_string());
    rows
}

#[test]
fn ids_are_record_ordinals_whatever_the_layout() {
    let rows = rows();
    let pretty = run(&serde_json::to_string_pretty(&rows).unwrap());
    let minified_text = serde_json::to_string(&rows).unwrap();
    assert!(!minified_text.contains('\n'));
    let minified = run(&minified_text);
    let lines: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
    let spaced = run(&lines.join("\n\n"));

    // Minified: one line, yet every row has its own id, `rows.json:1` to `rows.json:202`.
    let ingested = query_rows(minified.path(), "SELECT id, line FROM ingested");
    assert_eq!(ingested.len(), rows.len());
    let ids: BTreeSet<&str> = ingested.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let want: BTreeSet<String> = (1..=rows.len()).map(|i| format!("rows.json:{i}")).collect();
    assert_eq!(ids, want.iter().map(String::as_str).collect());
    assert!(
        ingested.iter().all(|r| r["line"] == 1),
        "line is the start line"
    );

    // The same rows (by content) get the same ids in every layout; dedup and split decide the
    // same for them.
    let queries = [
        "SELECT id, instruction, input, completion FROM ingested",
        "SELECT id, duplicate_of, reason FROM dedup_rejects",
        "SELECT cluster, id, matched_id FROM near_duplicates",
        "SELECT id, split, split_group FROM split",
    ];
    for sql in queries {
        let want = sorted(pretty.path(), sql);
        assert_eq!(sorted(minified.path(), sql), want, "minified: {sql}");
        assert_eq!(sorted(spaced.path(), sql), want, "JSON lines: {sql}");
    }

    // The copy of row 10 points at row 10, the near-copy of row 20 shares its cluster.
    let dropped = query_rows(
        minified.path(),
        "SELECT id, duplicate_of FROM dedup_rejects",
    );
    assert_eq!(dropped.len(), 1);
    assert_eq!(dropped[0]["id"], "rows.json:201");
    assert_eq!(dropped[0]["duplicate_of"], "rows.json:11");
    let cluster: BTreeSet<String> = query_rows(
        minified.path(),
        "SELECT id FROM near_duplicates WHERE cluster = 'rows.json:21'",
    )
    .iter()
    .map(|r| r["id"].as_str().unwrap().to_string())
    .collect();
    assert_eq!(
        cluster,
        BTreeSet::from(["rows.json:21".into(), "rows.json:202".into()])
    );

    // Rows spread over the three splits.
    let splits = query_rows(
        minified.path(),
        "SELECT split, count(*) AS n FROM split GROUP BY split ORDER BY split",
    );
    let count = |name: &str| {
        splits
            .iter()
            .find(|r| r["split"] == name)
            .map_or(0, |r| r["n"].as_u64().unwrap())
    };
    let kept = (rows.len() - 1) as u64;
    assert_eq!(count("train") + count("validation") + count("test"), kept);
    assert!(count("train") as f64 > 0.7 * kept as f64, "{splits:?}");
    assert!(count("validation") > 0 && count("test") > 0, "{splits:?}");
}
