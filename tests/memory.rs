//! Ingest streams: a JSON array of HealthCareMagic's size (112,165 rows, ~120 MB) ingests with a
//! peak resident set well below the file's size, and the peak barely moves when the file grows
//! five-fold. Peak RSS is what `medtune run` prints, read from `VmHWM` in /proc/self/status.

mod common;

use common::*;

/// Runs ingest on a generated array of `rows` rows; returns (file bytes, peak RSS bytes).
fn ingest_peak(rows: usize) -> (u64, u64) {
    let work = tempfile::tempdir().unwrap();
    let input = big_alpaca(work.path(), rows);
    let file_bytes = std::fs::metadata(&input).unwrap().len();
    let config = write_config(work.path(), "alpaca", &[input], "");
    let run = medtune(work.path(), &["run", "--config", config.to_str().unwrap()]).expect(0);
    assert!(
        run.stdout
            .contains(&format!("ingest: {rows} rows in = {rows} kept + 0 dropped")),
        "{}",
        run.stdout
    );
    let mib: f64 = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("peak memory (RSS): "))
        .and_then(|l| l.strip_suffix(" MiB"))
        .unwrap_or_else(|| panic!("no peak memory line in\n{}", run.stdout))
        .parse()
        .unwrap();
    (file_bytes, (mib * (1 << 20) as f64) as u64)
}

#[test]
fn a_112k_row_json_array_ingests_in_memory_well_below_its_size() {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let (small_file, small_peak) = ingest_peak(22_433);
    let (file, peak) = ingest_peak(112_165);
    eprintln!(
        "ingest peak RSS: {:.1} MiB for a {:.1} MiB array, {:.1} MiB for a {:.1} MiB array",
        mib(small_peak),
        mib(small_file),
        mib(peak),
        mib(file)
    );
    assert!(
        file > 100 << 20,
        "the corpus should be HealthCareMagic-sized"
    );
    assert!(
        peak < file / 2,
        "peak RSS {:.1} MiB is not well below the {:.1} MiB input",
        mib(peak),
        mib(file)
    );
    // Five times the input, about the same memory: bounded by batches, not by the file.
    assert!(
        peak < small_peak + (16 << 20),
        "peak RSS grew from {:.1} to {:.1} MiB with the input",
        mib(small_peak),
        mib(peak)
    );
}
