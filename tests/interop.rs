//! The Parquet outputs open unchanged in pyarrow, polars, duckdb and HF `datasets`.
//!
//! Needs a Python with those packages in MEDTUNE_PYTHON (`scripts/test.sh` makes one with
//! `scripts/python-env.sh` and sets it); the test fails when it is unset.

mod common;

use common::*;

#[test]
fn outputs_open_in_pyarrow_polars_duckdb_and_datasets() {
    let python = python();
    let work = tempfile::tempdir().unwrap();
    for config in ["configs/bc5cdr.toml", "configs/healthcaremagic.toml"] {
        let config = repo().join(config);
        medtune(work.path(), &["run", "--config", config.to_str().unwrap()]).expect(0);
        let out = std::process::Command::new(&python)
            .arg(repo().join("bench/parquet_interop.py"))
            .arg(work.path())
            .env("HF_DATASETS_OFFLINE", "1")
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("ingested: pyarrow") && stdout.contains("datasets"),
            "{stdout}"
        );
        if config.ends_with("bc5cdr.toml") {
            // The training shards, with their per-shard split, rows and length statistics.
            assert!(stdout.contains("shards: duckdb"), "{stdout}");
            assert!(
                stdout.contains("shards: part stats of") && !stdout.contains("MISMATCH"),
                "{stdout}"
            );
        }
    }
}
