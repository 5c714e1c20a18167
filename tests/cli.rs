//! The CLI contract: cached reruns, status explanations, recovery from corrupt or interrupted
//! outputs, the workdir lock, and read-only queries.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// A copy of configs/chemprot.toml in a temp folder (paths made absolute), so tests can edit it.
fn chemprot_config(dir: &Path) -> PathBuf {
    write_config(
        dir,
        "prompt_completion",
        &[shared_data("chemprot/both_rel_instruct_raw.jsonl")],
        "",
    )
}

fn run(work: &Path, config: &Path, extra: &[&str]) -> common::Run {
    let mut args = vec!["run", "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    medtune(work, &args).expect(0)
}

fn cache_column(stdout: &str, stage: &str) -> String {
    stdout
        .lines()
        .find(|l| l.contains(&format!(" {stage} ")))
        .and_then(|l| l.split('┆').nth(1))
        .map(|c| c.trim().to_string())
        .unwrap_or_else(|| panic!("no {stage} row in\n{stdout}"))
}

#[test]
fn a_second_run_is_a_cache_hit_and_status_says_fresh() {
    let work = tempfile::tempdir().unwrap();
    let config = chemprot_config(work.path());
    let status = medtune(
        work.path(),
        &["status", "--config", config.to_str().unwrap()],
    )
    .expect(0);
    assert!(status.stdout.contains("missing"), "{}", status.stdout);
    let first = run(work.path(), &config, &[]);
    assert_eq!(cache_column(&first.stdout, "ingest"), "ran");
    let second = run(work.path(), &config, &[]);
    assert_eq!(cache_column(&second.stdout, "ingest"), "hit");
    let status = medtune(
        work.path(),
        &["status", "--config", config.to_str().unwrap()],
    )
    .expect(0);
    assert!(status.stdout.contains("fresh"), "{}", status.stdout);
    let forced = run(work.path(), &config, &["--force"]);
    assert_eq!(cache_column(&forced.stdout, "ingest"), "ran");
}

#[test]
fn status_names_the_changed_config_key_and_the_run_recomputes() {
    let work = tempfile::tempdir().unwrap();
    let config = chemprot_config(work.path());
    run(work.path(), &config, &[]);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}\n[ingest.bio]\ninvalid_continuation = \"repair\"\n"),
    )
    .unwrap();
    let status = medtune(
        work.path(),
        &["status", "--config", config.to_str().unwrap()],
    )
    .expect(0);
    assert!(status.stdout.contains("stale"), "{}", status.stdout);
    assert!(
        status
            .stdout
            .contains(r#"config ingest.bio.invalid_continuation: "reject" -> "repair""#),
        "{}",
        status.stdout
    );
    assert_eq!(
        cache_column(&run(work.path(), &config, &[]).stdout, "ingest"),
        "ran"
    );
    assert_eq!(
        cache_column(&run(work.path(), &config, &[]).stdout, "ingest"),
        "hit"
    );
}

fn parts(work: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![work.join("cache")];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|e| e == "parquet") {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn a_truncated_part_is_detected_and_recomputed() {
    let work = tempfile::tempdir().unwrap();
    let config = chemprot_config(work.path());
    run(work.path(), &config, &[]);
    let part = parts(work.path())
        .into_iter()
        .find(|p| p.to_string_lossy().contains("/ingested/"))
        .unwrap();
    let len = std::fs::metadata(&part).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&part)
        .unwrap()
        .set_len(len / 3)
        .unwrap();
    let again = run(work.path(), &config, &[]);
    assert_eq!(cache_column(&again.stdout, "ingest"), "ran");
    assert!(
        again.stderr.contains("failed verification"),
        "{}",
        again.stderr
    );
    assert_eq!(
        query_csv(work.path(), "SELECT count(*) AS n FROM ingested"),
        "n\n3000\n"
    );
}

#[test]
fn a_run_killed_mid_stage_leaves_nothing_the_cache_trusts() {
    let work = tempfile::tempdir().unwrap();
    let input = big_alpaca(work.path(), 150_000);
    let config = write_config(work.path(), "alpaca", &[input], "");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_medtune"))
        .args([
            "--workdir",
            work.path().to_str().unwrap(),
            "run",
            "--config",
        ])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the stage is writing its temporary output, then kill it hard.
    let stage_dir = work.path().join("cache/ingest");
    let deadline = Instant::now() + Duration::from_secs(60);
    let writing = |d: &Path| {
        std::fs::read_dir(d)
            .map(|it| {
                it.flatten().any(|e| {
                    e.file_name().to_string_lossy().starts_with(".tmp-")
                        && e.path().join("ingested/part-00000.parquet").exists()
                })
            })
            .unwrap_or(false)
    };
    while !writing(&stage_dir) {
        assert!(Instant::now() < deadline, "the run never started writing");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let committed: Vec<_> = std::fs::read_dir(&stage_dir)
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(committed.is_empty(), "a killed run committed {committed:?}");
    let status = medtune(
        work.path(),
        &["status", "--config", config.to_str().unwrap()],
    )
    .expect(0);
    assert!(status.stdout.contains("missing"), "{}", status.stdout);
    let again = run(work.path(), &config, &[]);
    assert!(
        again
            .stdout
            .contains("150000 rows in = 150000 kept + 0 dropped"),
        "{}",
        again.stdout
    );
    let leftovers = std::fs::read_dir(&stage_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
        .count();
    assert_eq!(
        leftovers, 0,
        "the temporary output of the killed run was swept"
    );
}

#[test]
fn a_second_run_on_a_busy_workdir_fails_fast() {
    let work = tempfile::tempdir().unwrap();
    let config = chemprot_config(work.path());
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(work.path().join("lock"))
        .unwrap();
    lock.lock().unwrap();
    let started = Instant::now();
    let busy = medtune(work.path(), &["run", "--config", config.to_str().unwrap()]).expect(2);
    assert!(
        busy.stderr.contains("in use by another medtune run"),
        "{}",
        busy.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    lock.unlock().unwrap();
    run(work.path(), &config, &[]);
}

#[test]
fn queries_answer_in_three_formats_and_refuse_writes() {
    let work = tempfile::tempdir().unwrap();
    let config = chemprot_config(work.path());
    let none = medtune(work.path(), &["query", "SELECT 1"]).expect(2);
    assert!(none.stderr.contains("no datasets yet"), "{}", none.stderr);
    run(work.path(), &config, &[]);
    let table = medtune(
        work.path(),
        &[
            "query",
            "SELECT task, count(*) AS n FROM ingested GROUP BY task ORDER BY task",
        ],
    )
    .expect(0)
    .stdout;
    assert!(table.contains("| chemicals  | 1000 |"), "{table}");
    let json = medtune(
        work.path(),
        &[
            "query",
            "SELECT count(*) AS n FROM rejects",
            "--format",
            "json",
        ],
    )
    .expect(0)
    .stdout;
    assert_eq!(json.trim(), r#"[{"n":0}]"#);
    // --timing: the same result on stdout, the split of the time on stderr.
    let timed = medtune(
        work.path(),
        &[
            "query",
            "SELECT count(*) AS n FROM rejects",
            "--format",
            "json",
            "--timing",
        ],
    )
    .expect(0);
    assert_eq!(timed.stdout.trim(), r#"[{"n":0}]"#);
    let line = timed.stderr.trim();
    let parts: Vec<&str> = line.split_whitespace().collect();
    assert!(
        parts.len() == 6 && parts[0] == "catalog" && parts[3] == "query",
        "{line}"
    );
    for ms in [parts[1], parts[4]] {
        assert!(ms.parse::<f64>().unwrap() >= 0.0, "{line}");
    }
    let csv = query_csv(
        work.path(),
        "SELECT source_file, line, reason FROM rejects LIMIT 5",
    );
    assert_eq!(csv, "source_file,line,reason\n");
    for sql in [
        "DROP TABLE ingested",
        "COPY ingested TO 'x.parquet'",
        "INSERT INTO rejects SELECT * FROM rejects",
    ] {
        let refused = medtune(work.path(), &["query", sql]).expect(2);
        assert!(
            refused.stderr.contains("read-only"),
            "{sql}: {}",
            refused.stderr
        );
    }
    let bad = medtune(work.path(), &["query", "SELECT nope FROM ingested"]).expect(2);
    assert!(bad.stderr.contains("nope"), "{}", bad.stderr);
}

#[test]
fn every_subcommand_has_help() {
    let work = tempfile::tempdir().unwrap();
    for sub in ["run", "status", "query", "profile", "train", "eval"] {
        let help = medtune(work.path(), &[sub, "--help"]).expect(0);
        assert!(help.stdout.contains("--workdir"), "{sub}: {}", help.stdout);
    }
}

#[test]
fn every_bundled_config_is_valid_for_every_stage_it_names() {
    // `status` builds every stage a config names from its section, so a key a stage does not
    // take, a bad value or a missing model is exit 2 here, not an hour into a run.
    let configs = common::repo().join("configs");
    let mut names: Vec<_> = std::fs::read_dir(&configs)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    names.sort();
    assert!(names.len() >= 6, "bundled configs: {names:?}");
    for config in names {
        let work = tempfile::tempdir().unwrap();
        let status = medtune(
            work.path(),
            &["status", "--config", config.to_str().unwrap()],
        );
        assert_eq!(
            status.code,
            0,
            "{}: {}{}",
            config.display(),
            status.stdout,
            status.stderr
        );
        let text = std::fs::read_to_string(&config).unwrap();
        for stage in ["train", "evaluate"] {
            if text.contains(&format!("\n[{stage}]")) {
                assert!(
                    status.stdout.contains(stage),
                    "{}: {stage} not in\n{}",
                    config.display(),
                    status.stdout
                );
            }
        }
    }
}
