//! The workdir under stress, as a user probed it: queries while a forced run replaces what they
//! read, damaged parts, manifests and catalogs, settings out of range, unbounded result tables,
//! and `status` for a config whose outputs the catalog does not hold.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;

/// ChemProt's 3,000 real rows through ingest and dedup (no near-duplicate pass: fast).
fn chemprot_config(dir: &Path, extra: &str) -> PathBuf {
    write_config(
        dir,
        "prompt_completion",
        &[shared_data("chemprot/both_rel_instruct_raw.jsonl")],
        &format!("[dedup]\ncolumns = [\"prompt\"]\n[dedup.near]\nenabled = false\n{extra}"),
    )
}

fn run(work: &Path, config: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["run", "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    medtune(work, &args)
}

/// The Parquet parts of `dataset` in the workdir's cache.
fn parts_of(work: &Path, dataset: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![work.join("cache")];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet")
                && path.parent().unwrap().ends_with(dataset)
            {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn queries_during_forced_reruns_see_the_old_or_the_new_output_never_a_gap() {
    let work = tempfile::tempdir().unwrap();
    let config = chemprot_config(work.path(), "");
    run(work.path(), &config, &[]).expect(0);
    let expected = query_csv(work.path(), "SELECT count(*) AS n FROM deduped");
    let rejected = query_csv(work.path(), "SELECT count(*) AS n FROM rejects");
    let stop = Arc::new(AtomicBool::new(false));
    let rerun = {
        let (work, config, stop) = (work.path().to_path_buf(), config.clone(), stop.clone());
        std::thread::spawn(move || {
            for _ in 0..6 {
                run(&work, &config, &["--force"]).expect(0);
            }
            stop.store(true, Ordering::SeqCst);
        })
    };
    let (mut queries, mut failures) = (0, Vec::new());
    while !stop.load(Ordering::SeqCst) && queries < 400 {
        for (sql, want) in [
            ("SELECT count(*) AS n FROM deduped", expected.as_str()),
            ("SELECT count(*) AS n FROM rejects", rejected.as_str()),
        ] {
            let answer = medtune(work.path(), &["query", sql, "--format", "csv"]);
            queries += 1;
            if answer.code != 0 || answer.stdout != want {
                failures.push(format!(
                    "{sql}: exit {} stdout {:?} stderr {}",
                    answer.code, answer.stdout, answer.stderr
                ));
            }
        }
    }
    rerun.join().unwrap();
    assert!(
        queries >= 10,
        "only {queries} queries overlapped the reruns"
    );
    assert!(
        failures.is_empty(),
        "{} of {queries} queries failed or saw a partial state:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn a_flipped_byte_in_a_part_fails_the_query_that_reads_it_and_no_other() {
    let work = tempfile::tempdir().unwrap();
    let config = chemprot_config(work.path(), "");
    run(work.path(), &config, &[]).expect(0);
    let part = parts_of(work.path(), "deduped").remove(0);
    let mut bytes = std::fs::read(&part).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&part, bytes).unwrap();

    let damaged = medtune(work.path(), &["query", "SELECT sum(line) FROM deduped"]);
    assert_eq!(damaged.code, 1, "{}", damaged.stderr);
    assert!(
        damaged.stderr.contains("dataset `deduped` is damaged")
            && damaged.stderr.contains("checksum mismatch")
            && damaged.stderr.contains("medtune run"),
        "{}",
        damaged.stderr
    );
    // Tables that do not read the damaged part still answer.
    assert_eq!(
        query_csv(work.path(), "SELECT count(*) AS n FROM ingested"),
        "n\n3000\n"
    );
    // `run` repairs it; the query then answers.
    run(work.path(), &config, &[]).expect(0);
    query_csv(work.path(), "SELECT sum(line) FROM deduped");
}

#[test]
fn a_missing_manifest_fails_only_queries_of_its_datasets() {
    let work = tempfile::tempdir().unwrap();
    let config = chemprot_config(work.path(), "");
    run(work.path(), &config, &[]).expect(0);
    let entry = parts_of(work.path(), "deduped")[0]
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    std::fs::remove_file(entry.join("manifest.json")).unwrap();

    assert_eq!(
        query_csv(work.path(), "SELECT count(*) AS n FROM ingested"),
        "n\n3000\n"
    );
    let missing = medtune(work.path(), &["query", "SELECT count(*) FROM deduped"]);
    assert_eq!(missing.code, 1, "{}", missing.stderr);
    assert!(
        missing.stderr.contains("dataset `deduped` is unavailable")
            && missing.stderr.contains("manifest.json"),
        "{}",
        missing.stderr
    );
    // The union of rejects reads dedup's rejects too, so it names them.
    let rejects = medtune(work.path(), &["query", "SELECT count(*) FROM rejects"]);
    assert_eq!(rejects.code, 1, "{}", rejects.stderr);
    assert!(
        rejects.stderr.contains("`dedup_rejects`"),
        "{}",
        rejects.stderr
    );
}

#[test]
fn a_damaged_catalog_is_named_by_query_and_rebuilt_by_run() {
    let work = tempfile::tempdir().unwrap();
    let config = chemprot_config(work.path(), "");
    run(work.path(), &config, &[]).expect(0);
    std::fs::write(work.path().join("catalog.json"), b"{\"datasets\": {\"ing").unwrap();

    let query = medtune(work.path(), &["query", "SELECT count(*) FROM ingested"]);
    assert_eq!(query.code, 1, "{}", query.stderr);
    assert!(
        query.stderr.contains("catalog.json is damaged") && query.stderr.contains("medtune run"),
        "{}",
        query.stderr
    );
    let rerun = run(work.path(), &config, &[]).expect(0);
    assert!(
        rerun.stderr.contains("rebuilding it"),
        "the run should say it rebuilt the catalog: {}",
        rerun.stderr
    );
    assert_eq!(
        query_csv(work.path(), "SELECT count(*) AS n FROM ingested"),
        "n\n3000\n"
    );
}

#[test]
fn settings_out_of_range_are_refused_before_anything_runs() {
    for (extra, key, range) in [
        (
            "[pipeline]\nzstd_level = 99\n",
            "zstd_level = 99",
            "from 1 to 22",
        ),
        (
            "[pipeline]\nbatch_rows = 0\n",
            "batch_rows = 0",
            "at least 1",
        ),
        (
            "[pipeline]\nrow_group_rows = 0\n",
            "row_group_rows = 0",
            "at least 1",
        ),
    ] {
        let work = tempfile::tempdir().unwrap();
        let config = chemprot_config(work.path(), extra);
        let refused = run(work.path(), &config, &[]);
        assert_eq!(refused.code, 2, "{extra}: {}", refused.stderr);
        assert!(
            refused.stderr.contains(key) && refused.stderr.contains(range),
            "{extra}: {}",
            refused.stderr
        );
        assert!(
            !work.path().join("cache").exists(),
            "{extra}: nothing may be written"
        );
    }
    // `[ingest]` bounds: a record bound of 0 used to lose every row with exit 0.
    let work = tempfile::tempdir().unwrap();
    let input = shared_data("chatdoctor/chatdoctor5k.json");
    for (extra, key) in [
        ("max_record_bytes = 0", "max_record_bytes = 0"),
        ("max_sentence_words = 0", "max_sentence_words = 0"),
    ] {
        let config = write_config(work.path(), "alpaca", std::slice::from_ref(&input), extra);
        let refused = run(work.path(), &config, &[]);
        assert_eq!(refused.code, 2, "{extra}: {}", refused.stderr);
        assert!(
            refused.stderr.contains(key) && refused.stderr.contains("[ingest]"),
            "{extra}: {}",
            refused.stderr
        );
    }
}

#[test]
fn a_table_result_is_bounded_and_says_how_to_see_the_rest() {
    let work = tempfile::tempdir().unwrap();
    let config = chemprot_config(work.path(), "");
    run(work.path(), &config, &[]).expect(0);
    // 9 million rows: the table shows the first thousand and stops reading.
    let sql = "SELECT a.line AS x FROM ingested a CROSS JOIN ingested b";
    let table = medtune(work.path(), &["query", sql]).expect(0);
    let rows = table.stdout.lines().filter(|l| l.starts_with("| ")).count();
    assert_eq!(rows, 1 + 1000, "header + 1000 rows");
    assert!(
        table.stderr.contains("showing the first 1000 rows") && table.stderr.contains("--limit"),
        "{}",
        table.stderr
    );
    let limited = medtune(
        work.path(),
        &["query", sql, "--format", "csv", "--limit", "7"],
    )
    .expect(0);
    assert_eq!(limited.stdout.lines().count(), 1 + 7);
    // A result within the bound is whole and carries no notice.
    let small = medtune(
        work.path(),
        &["query", "SELECT id FROM ingested LIMIT 1000"],
    )
    .expect(0);
    assert!(small.stderr.is_empty(), "{}", small.stderr);
    let csv = query_csv(work.path(), "SELECT id FROM ingested");
    assert_eq!(csv.lines().count(), 1 + 3000, "csv streams every row");
}

#[test]
fn status_says_whose_outputs_the_catalog_holds_and_lists_own_changes_under_stale_upstream() {
    let work = tempfile::tempdir().unwrap();
    let first = chemprot_config(work.path(), "");
    run(work.path(), &first, &[]).expect(0);
    let other_dir = work.path().join("other");
    std::fs::create_dir(&other_dir).unwrap();
    let other = write_config(
        &other_dir,
        "alpaca",
        &[shared_data("chatdoctor/chatdoctor5k.json")],
        "",
    );
    let status = medtune(
        work.path(),
        &["status", "--config", other.to_str().unwrap()],
    )
    .expect(0);
    assert!(
        status
            .stdout
            .contains("`medtune query` serves the outputs of")
            && status
                .stdout
                .contains(&first.canonicalize().unwrap().display().to_string()),
        "{}",
        status.stdout
    );
    let own = medtune(
        work.path(),
        &["status", "--config", first.to_str().unwrap()],
    )
    .expect(0);
    assert!(!own.stdout.contains("serves the outputs"), "{}", own.stdout);

    // Change an ingest key and a dedup key: dedup is stale because of ingest, and says its
    // own change too.
    let text = std::fs::read_to_string(&first).unwrap();
    let changed = text.replace(
        "[dedup]\n",
        "max_raw_bytes = 100\n[dedup.normalize]\nlowercase = false\n[dedup]\n",
    );
    assert_ne!(changed, text);
    std::fs::write(&first, changed).unwrap();
    let stale = medtune(
        work.path(),
        &["status", "--config", first.to_str().unwrap()],
    )
    .expect(0);
    assert!(
        stale
            .stdout
            .contains("upstream stage `ingest` is not fresh")
            && stale
                .stdout
                .contains("dedup.normalize.lowercase: true -> false"),
        "{}",
        stale.stdout
    );
}
