//! Ingest streams: a JSON array of HealthCareMagic size (112,165 rows) is ingested with a peak
//! resident set well below the file's size. Peak RSS is the child's `ru_maxrss` from
//! getrusage(RUSAGE_CHILDREN); this file holds one test so no other child is counted.

mod common;

use common::*;

fn peak_rss_of_children_bytes() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_CHILDREN is a valid selector.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage failed");
    // SAFETY: initialised by the successful call above. Linux reports ru_maxrss in KiB.
    (unsafe { usage.assume_init() }.ru_maxrss as u64) * 1024
}

#[test]
fn a_112k_row_json_array_ingests_in_memory_well_below_its_size() {
    let work = tempfile::tempdir().unwrap();
    let input = big_alpaca(work.path(), 112_165);
    let file_bytes = std::fs::metadata(&input).unwrap().len();
    let config = write_config(work.path(), "alpaca", &[input], "");
    let run = medtune(work.path(), &["run", "--config", config.to_str().unwrap()]).expect(0);
    let peak = peak_rss_of_children_bytes();
    assert!(
        run.stdout
            .contains("112165 rows in = 112165 kept + 0 dropped"),
        "{}",
        run.stdout
    );
    eprintln!(
        "ingest of a {:.1} MiB JSON array: peak RSS {:.1} MiB ({:.0}% of the file)",
        file_bytes as f64 / (1 << 20) as f64,
        peak as f64 / (1 << 20) as f64,
        100.0 * peak as f64 / file_bytes as f64
    );
    assert!(
        peak < file_bytes / 2,
        "peak RSS {peak} bytes is not well below the {file_bytes}-byte input"
    );
}
