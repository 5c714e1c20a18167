//! A row stage whose parts the engine writes chunk by chunk: the output holds every routed row
//! in input order, one or more parts per chunk, the stage accounts for every row it read, and a
//! run that failed part-way leaves its committed chunks for the next run, which links them
//! into its entry instead of writing them again and commits the same dataset as a clean run.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, BooleanArray};
use arrow::array::{RecordBatch, StructArray};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Fields, Int64Type};
use common::{schema, Rows, ROW_COUNT};
use medtune_pipeline::engine::chunks;
use medtune_pipeline::{
    Dag, Manifest, OutputDecl, OutputRole, PipelineError, Quiet, Result, RoutedRows, RowFunction,
    RowStage, RunOptions, Runner, Settings, Stage, StageContext, Workdir,
};

/// A row whose `n` is this fails to map (negative: none does).
static FAIL_AT: AtomicI64 = AtomicI64::new(-1);

/// Keeps rows whose `n` is not a multiple of 3, drops the others as `threes`, and counts the
/// kept rows' `n` in the counter `kept_sum`.
struct Thirds;

impl RowFunction for Thirds {
    const NAME: &'static str = "test_thirds";
    type Prepared = ();

    fn output_fields() -> Fields {
        vec![Field::new("three", DataType::Boolean, false)].into()
    }

    fn prepare(_: &str) -> Result<()> {
        Ok(())
    }

    fn map(_: &(), rows: &RecordBatch) -> Result<StructArray> {
        let n = rows.column(1).as_primitive::<Int64Type>();
        if n.values().contains(&FAIL_AT.load(Ordering::SeqCst)) {
            return Err(PipelineError::Internal("failing as asked".into()));
        }
        let three: BooleanArray = n.iter().map(|v| v.map(|v| v % 3 == 0)).collect();
        Ok(StructArray::try_new(
            Self::output_fields(),
            vec![Arc::new(three) as ArrayRef],
            None,
        )?)
    }
}

impl RowStage for Thirds {
    fn outputs() -> Vec<OutputDecl> {
        vec![OutputDecl::new("kept", schema(), OutputRole::Kept)]
    }

    fn route(_: &(), rows: &RecordBatch, mapped: &StructArray, out: &mut RoutedRows) -> Result<()> {
        let three = mapped.column(0).as_boolean();
        let keep = arrow::compute::not(three)?;
        let kept = filter_record_batch(rows, &keep)?;
        let n = kept.column(1).as_primitive::<Int64Type>();
        out.count_in(rows.num_rows() as u64);
        out.count_dropped("threes", three.true_count() as u64);
        out.count("kept_sum", n.values().iter().sum::<i64>() as u64);
        out.write("kept", &kept)
    }
}

struct Kept;

impl Stage for Kept {
    fn name(&self) -> &str {
        "kept"
    }
    fn version(&self) -> u32 {
        1
    }
    fn inputs(&self) -> Vec<String> {
        vec!["rows".into()]
    }
    fn outputs(&self) -> Vec<OutputDecl> {
        <Thirds as RowStage>::outputs()
    }
    fn config(&self) -> serde_json::Value {
        serde_json::json!({})
    }
    fn run(&self, ctx: &mut StageContext<'_>) -> Result<()> {
        let chunk_count = chunks(ctx.input("rows")?)?.chunks.len();
        if chunk_count < 3 {
            return Err(PipelineError::Internal(format!(
                "the rows should span chunks: {chunk_count}"
            )));
        }
        ctx.write_rows::<Thirds>("rows", &serde_json::json!({}))
    }
}

fn settings() -> Settings {
    Settings {
        row_group_rows: 5_000,
        part_max_bytes: 100_000,
        batch_rows: 1_000,
        ..Settings::default()
    }
}

fn run(work: &Path) -> Result<()> {
    let dag = Dag::new(vec![Box::new(Rows { number: |i| i }), Box::new(Kept)]).unwrap();
    Runner::new(Workdir::new(work), dag, settings(), &Quiet)
        .run(&RunOptions::default())
        .map(|_| ())
}

fn kept_manifest(work: &Path) -> Manifest {
    Workdir::new(work).latest_manifest("kept").unwrap()
}

/// Every part file under `dir`, with its inode.
fn chunk_parts(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for item in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = item.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                let inode = std::fs::metadata(&path).unwrap().ino();
                found.push((path, inode));
            }
        }
    }
    found
}

#[test]
fn chunks_are_written_in_order_accounted_for_and_reused_after_a_failure() {
    let clean = tempfile::tempdir().unwrap();
    run(clean.path()).unwrap();
    let manifest = kept_manifest(clean.path());
    let kept = &manifest.datasets["kept"];
    let expected: Vec<i64> = (0..ROW_COUNT).filter(|n| n % 3 != 0).collect();
    assert_eq!(kept.rows, expected.len() as u64);
    assert_eq!(manifest.accounting.rows_in, ROW_COUNT as u64);
    assert_eq!(
        manifest.accounting.dropped["threes"],
        (ROW_COUNT as u64) - kept.rows
    );
    assert_eq!(
        manifest.counters["kept_sum"],
        expected.iter().sum::<i64>() as u64
    );
    let entry = Workdir::new(clean.path()).entry_dir("kept", &manifest.key);
    let mut read: Vec<i64> = Vec::new();
    for (i, part) in kept.files.iter().enumerate() {
        assert_eq!(part.path, format!("kept/part-{i:05}.parquet"));
        let file = std::fs::File::open(entry.join(&part.path)).unwrap();
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(file, 4096).unwrap();
        for batch in reader {
            read.extend(
                batch
                    .unwrap()
                    .column(1)
                    .as_primitive::<Int64Type>()
                    .values(),
            );
        }
    }
    assert_eq!(read, expected, "the kept rows, in input order");
    let rows = Workdir::new(clean.path()).latest_manifest("rows").unwrap();
    assert!(
        kept.files.len() >= 3,
        "one part or more per chunk: {} parts from {} input parts",
        kept.files.len(),
        rows.datasets["rows"].files.len()
    );
    let scratch = Workdir::new(clean.path()).scratch_dir("kept", &manifest.key);
    assert!(
        !scratch.exists(),
        "the chunks' folder goes once the stage commits"
    );

    // A run whose last rows fail to map: the chunks before them stay committed in the stage's
    // scratch folder, and nothing half-written is left beside them.
    let failed = tempfile::tempdir().unwrap();
    FAIL_AT.store(ROW_COUNT - 1, Ordering::SeqCst);
    let error = run(failed.path()).unwrap_err();
    FAIL_AT.store(-1, Ordering::SeqCst);
    assert!(error.to_string().contains("failing as asked"), "{error}");
    let scratch = Workdir::new(failed.path()).scratch_dir("kept", &manifest.key);
    let chunk_dirs: Vec<PathBuf> = std::fs::read_dir(scratch.join("chunks"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!chunk_dirs.is_empty());
    for dir in &chunk_dirs {
        let name = dir.file_name().unwrap().to_string_lossy();
        assert!(name.starts_with("chunk-"), "only committed chunks: {name}");
        assert!(dir.join("written.json").is_file());
    }
    let before = chunk_parts(&scratch);
    assert!(!before.is_empty());

    // The rerun links those chunks' parts into its entry and commits what a clean run does.
    run(failed.path()).unwrap();
    let again = kept_manifest(failed.path());
    assert_eq!(again.key, manifest.key);
    assert_eq!(again.datasets["kept"].content_hash, kept.content_hash);
    let entry = Workdir::new(failed.path()).entry_dir("kept", &again.key);
    let inodes: Vec<u64> = again.datasets["kept"]
        .files
        .iter()
        .map(|p| std::fs::metadata(entry.join(&p.path)).unwrap().ino())
        .collect();
    for (path, inode) in before {
        assert!(
            inodes.contains(&inode),
            "{} was written again instead of reused",
            path.display()
        );
    }
}
