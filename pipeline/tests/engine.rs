//! Engine behaviour on a small three-stage graph: numbers -> scaled -> total.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, Int64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use medtune_pipeline::sql::{query_blocking, OutputFormat, QueryOptions};
use medtune_pipeline::{
    AppendOptions, Dag, Freshness, OutputDecl, OutputRole, PipelineError, ProgressObserver, Result,
    RunOptions, Runner, Settings, SourceDecl, Stage, StageContext, StageSummary, Workdir,
};

fn schema(col: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(col, DataType::Int64, false)]))
}

fn batch(col: &str, values: Vec<i64>) -> RecordBatch {
    RecordBatch::try_new(schema(col), vec![Arc::new(Int64Array::from(values))]).unwrap()
}

fn values(ctx: &StageContext<'_>, input: &str) -> Vec<i64> {
    ctx.read(input)
        .unwrap()
        .flat_map(|b| {
            let b = b.unwrap();
            let col = b
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .clone();
            (0..col.len())
                .map(move |i| col.value(i))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Reads one integer per line of a file; other lines are dropped as `not_a_number`.
struct Numbers {
    file: PathBuf,
    /// When set, forgets to account for dropped rows (to test the invariant).
    lose_rows: bool,
    /// When set, a file that only grew is read on from where the previous output stopped.
    appendable: bool,
}

impl Stage for Numbers {
    fn name(&self) -> &str {
        "numbers"
    }
    fn version(&self) -> u32 {
        1
    }
    fn outputs(&self) -> Vec<OutputDecl> {
        vec![OutputDecl::new("numbers", schema("n"), OutputRole::Kept)]
    }
    fn config(&self) -> serde_json::Value {
        serde_json::json!({"file": "numbers.txt"})
    }
    fn sources(&self) -> Vec<SourceDecl> {
        vec![SourceDecl {
            written: "numbers.txt".into(),
            path: self.file.clone(),
        }]
    }
    fn run(&self, ctx: &mut StageContext<'_>) -> Result<()> {
        let text = std::fs::read_to_string(&self.file).unwrap();
        let read_before = ctx.previous().map_or(0, |p| p.counter("bytes")) as usize;
        let grew = self.appendable && read_before > 0 && text.len() > read_before;
        let start = if grew
            && ctx.append_to_previous(AppendOptions {
                sources_checked: true,
                ..AppendOptions::default()
            })? {
            read_before
        } else {
            0
        };
        let mut kept = Vec::new();
        for line in text[start..].lines() {
            ctx.count_in(1);
            match line.trim().parse() {
                Ok(n) => kept.push(n),
                Err(_) if self.lose_rows => {}
                Err(_) => ctx.count_dropped("not_a_number", 1),
            }
        }
        ctx.set_count("bytes", text.len() as u64);
        ctx.write("numbers", batch("n", kept))
    }
}

/// Multiplies every number by `factor`; fails after writing when `fail` is set; extends its
/// previous output when `appendable` and its input only grew.
struct Scale {
    factor: i64,
    fail: bool,
    appendable: bool,
}

impl Stage for Scale {
    fn name(&self) -> &str {
        "scale"
    }
    fn version(&self) -> u32 {
        1
    }
    fn inputs(&self) -> Vec<String> {
        vec!["numbers".into()]
    }
    fn outputs(&self) -> Vec<OutputDecl> {
        vec![OutputDecl::new("scaled", schema("n"), OutputRole::Kept)]
    }
    fn config(&self) -> serde_json::Value {
        serde_json::json!({"factor": self.factor})
    }
    fn run(&self, ctx: &mut StageContext<'_>) -> Result<()> {
        if self.appendable {
            ctx.append_to_previous(AppendOptions::default())?;
        }
        let input = values(ctx, "numbers");
        ctx.count_in(input.len() as u64);
        ctx.count("rows_scaled", input.len() as u64);
        ctx.write(
            "scaled",
            batch("n", input.iter().map(|n| n * self.factor).collect()),
        )?;
        if self.fail {
            return Err(PipelineError::Internal("scale failed on purpose".into()));
        }
        Ok(())
    }
}

/// Sums the scaled numbers into one row.
struct Total;

impl Stage for Total {
    fn name(&self) -> &str {
        "total"
    }
    fn version(&self) -> u32 {
        1
    }
    fn inputs(&self) -> Vec<String> {
        vec!["scaled".into()]
    }
    fn outputs(&self) -> Vec<OutputDecl> {
        vec![OutputDecl::new("total", schema("total"), OutputRole::Side)]
    }
    fn config(&self) -> serde_json::Value {
        serde_json::json!({})
    }
    fn run(&self, ctx: &mut StageContext<'_>) -> Result<()> {
        let sum = values(ctx, "scaled").iter().sum();
        ctx.write("total", batch("total", vec![sum]))
    }
}

#[derive(Default)]
struct Warnings(Mutex<Vec<String>>);

impl ProgressObserver for Warnings {
    fn warning(&self, stage: &str, message: &str) {
        self.0.lock().unwrap().push(format!("{stage}: {message}"));
    }
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("numbers.txt"), "1\n2\nthree\n4\n").unwrap();
        Fixture { dir }
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("numbers.txt")
    }

    fn workdir(&self) -> Workdir {
        Workdir::new(self.dir.path().join("work"))
    }

    fn dag(&self, factor: i64) -> Dag {
        Dag::new(vec![
            Box::new(Total),
            Box::new(Scale {
                factor,
                fail: false,
                appendable: false,
            }),
            Box::new(Numbers {
                file: self.file(),
                lose_rows: false,
                appendable: false,
            }),
        ])
        .unwrap()
    }

    fn run_with(
        &self,
        dag: Dag,
        options: RunOptions,
        observer: &dyn ProgressObserver,
    ) -> Result<Vec<StageSummary>> {
        Runner::new(self.workdir(), dag, Settings::default(), observer).run(&options)
    }

    fn run(&self, factor: i64, options: RunOptions) -> Vec<StageSummary> {
        self.run_with(self.dag(factor), options, &Warnings::default())
            .unwrap()
    }

    fn status(&self, factor: i64) -> Vec<(String, Freshness)> {
        Runner::new(
            self.workdir(),
            self.dag(factor),
            Settings::default(),
            &Warnings::default(),
        )
        .status()
        .unwrap()
        .into_iter()
        .map(|s| (s.stage, s.freshness))
        .collect()
    }

    fn total(&self) -> String {
        let mut out = Vec::new();
        query_blocking(
            &self.workdir(),
            "SELECT total FROM total",
            QueryOptions::new(OutputFormat::Csv, None),
            &mut out,
        )
        .unwrap();
        String::from_utf8(out).unwrap()
    }
}

fn ran(summaries: &[StageSummary]) -> Vec<(&str, bool)> {
    summaries
        .iter()
        .map(|s| (s.stage.as_str(), !s.cache_hit))
        .collect()
}

fn all() -> RunOptions {
    RunOptions::default()
}

#[test]
fn stages_run_in_dependency_order_and_account_for_rows() {
    let f = Fixture::new();
    let first = f.run(2, all());
    assert_eq!(
        ran(&first),
        vec![("numbers", true), ("scale", true), ("total", true)]
    );
    let numbers = &first[0].accounting;
    assert_eq!((numbers.rows_in, numbers.kept), (4, 3));
    assert_eq!(numbers.dropped.get("not_a_number"), Some(&1));
    assert_eq!(f.total(), "total\n14\n");
}

#[test]
fn a_second_run_is_all_cache_hits_and_status_is_fresh() {
    let f = Fixture::new();
    assert_eq!(
        f.status(2)
            .iter()
            .filter(|(_, s)| *s == Freshness::Missing)
            .count(),
        3
    );
    f.run(2, all());
    let second = f.run(2, all());
    assert_eq!(
        ran(&second),
        vec![("numbers", false), ("scale", false), ("total", false)]
    );
    assert!(f.status(2).iter().all(|(_, s)| *s == Freshness::Fresh));
}

#[test]
fn a_config_change_reruns_that_stage_and_downstream_only() {
    let f = Fixture::new();
    f.run(2, all());
    let status = f.status(3);
    assert_eq!(status[0].1, Freshness::Fresh);
    assert_eq!(
        status[1].1,
        Freshness::Stale(vec!["config scale.factor: 2 -> 3".into()])
    );
    assert_eq!(
        status[2].1,
        Freshness::Stale(vec!["upstream stage `scale` is not fresh".into()])
    );
    let again = f.run(3, all());
    assert_eq!(
        ran(&again),
        vec![("numbers", false), ("scale", true), ("total", true)]
    );
    assert_eq!(f.total(), "total\n21\n");
    // Going back to the old config finds the old outputs in the cache.
    assert_eq!(
        ran(&f.run(2, all())),
        vec![("numbers", false), ("scale", false), ("total", false)]
    );
}

#[test]
fn a_changed_source_file_is_named_in_status_and_reruns_everything() {
    let f = Fixture::new();
    f.run(2, all());
    std::fs::write(f.file(), "10\n").unwrap();
    let status = f.status(2);
    assert_eq!(
        status[0].1,
        Freshness::Stale(vec!["source file numbers.txt changed".into()])
    );
    assert_eq!(
        ran(&f.run(2, all())),
        vec![("numbers", true), ("scale", true), ("total", true)]
    );
    assert_eq!(f.total(), "total\n20\n");
}

#[test]
fn selecting_a_stage_runs_it_and_only_what_it_needs() {
    let f = Fixture::new();
    let only = RunOptions {
        stages: vec!["scale".into()],
        force: false,
    };
    assert_eq!(
        ran(&f.run(2, only.clone())),
        vec![("numbers", true), ("scale", true)]
    );
    assert_eq!(
        ran(&f.run(2, only)),
        vec![("numbers", false), ("scale", false)]
    );
    let forced = RunOptions {
        stages: vec!["scale".into()],
        force: true,
    };
    assert_eq!(
        ran(&f.run(2, forced)),
        vec![("numbers", false), ("scale", true)]
    );
    let err = f
        .run_with(
            f.dag(2),
            RunOptions {
                stages: vec!["nope".into()],
                force: false,
            },
            &Warnings::default(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("no stage `nope`"), "{err}");
}

fn part_of(workdir: &Path, stage: &str) -> PathBuf {
    let stage_dir = workdir.join("cache").join(stage);
    let entry = std::fs::read_dir(&stage_dir)
        .unwrap()
        .flatten()
        .find(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .unwrap()
        .path();
    let dataset = std::fs::read_dir(&entry)
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir())
        .unwrap()
        .path();
    dataset.join("part-00000.parquet")
}

#[test]
fn a_truncated_or_deleted_part_is_detected_and_recomputed_with_a_warning() {
    let f = Fixture::new();
    f.run(2, all());
    let part = part_of(f.workdir().root(), "scale");
    let bytes = std::fs::read(&part).unwrap();
    std::fs::write(&part, &bytes[..bytes.len() / 2]).unwrap();
    assert!(
        matches!(f.status(2)[1].1, Freshness::Stale(ref r) if r[0].contains("failed verification"))
    );
    let warnings = Warnings::default();
    let again = f.run_with(f.dag(2), all(), &warnings).unwrap();
    assert_eq!(
        ran(&again),
        vec![("numbers", false), ("scale", true), ("total", false)]
    );
    assert!(warnings.0.lock().unwrap()[0].contains("recomputing"));
    std::fs::remove_file(&part).unwrap();
    assert_eq!(
        ran(&f.run(2, all())),
        vec![("numbers", false), ("scale", true), ("total", false)]
    );
    assert_eq!(f.total(), "total\n14\n");
}

#[test]
fn a_failing_stage_commits_nothing() {
    let f = Fixture::new();
    let dag = Dag::new(vec![
        Box::new(Numbers {
            file: f.file(),
            lose_rows: false,
            appendable: false,
        }),
        Box::new(Scale {
            factor: 2,
            fail: true,
            appendable: false,
        }),
    ])
    .unwrap();
    let err = f.run_with(dag, all(), &Warnings::default()).unwrap_err();
    assert!(err.to_string().contains("failed on purpose"));
    let scale_dir = f.workdir().root().join("cache/scale");
    assert_eq!(
        std::fs::read_dir(&scale_dir).unwrap().count(),
        0,
        "nothing left in {scale_dir:?}"
    );
    assert_eq!(f.status(2)[1].1, Freshness::Missing);
}

#[test]
fn leftovers_of_an_interrupted_run_are_never_trusted() {
    let f = Fixture::new();
    f.run(2, all());
    // An interrupted run leaves a temporary folder, and maybe an entry without manifest.
    let stage_dir = f.workdir().root().join("cache/scale");
    std::fs::create_dir_all(stage_dir.join(".tmp-abc-1-2/scaled")).unwrap();
    let status = f.status(3);
    assert!(matches!(status[1].1, Freshness::Stale(_)));
    assert_eq!(
        ran(&f.run(3, all())),
        vec![("numbers", false), ("scale", true), ("total", true)]
    );
    assert!(!stage_dir.join(".tmp-abc-1-2").exists(), "leftover swept");
}

#[test]
fn rows_that_are_neither_kept_nor_dropped_fail_the_stage() {
    let f = Fixture::new();
    let dag = Dag::new(vec![Box::new(Numbers {
        file: f.file(),
        lose_rows: true,
        appendable: false,
    })])
    .unwrap();
    let err = f.run_with(dag, all(), &Warnings::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("lost rows: 4 in, 3 kept, 0 dropped"),
        "{err}"
    );
}

#[test]
fn a_second_run_on_a_locked_workdir_fails_fast() {
    let f = Fixture::new();
    let _held = f.workdir().lock().unwrap();
    let err = f
        .run_with(f.dag(2), all(), &Warnings::default())
        .unwrap_err();
    assert!(matches!(err, PipelineError::Busy(_)));
    assert!(
        err.to_string().contains("in use by another medtune run"),
        "{err}"
    );
}

#[test]
fn graphs_with_unknown_inputs_or_duplicate_outputs_are_rejected() {
    let f = Fixture::new();
    let err = Dag::new(vec![Box::new(Total)]).err().unwrap();
    assert!(
        err.to_string().contains("reads `scaled`, which no stage"),
        "{err}"
    );
    let err = Dag::new(vec![
        Box::new(Scale {
            factor: 1,
            fail: false,
            appendable: false,
        }),
        Box::new(Scale {
            factor: 2,
            fail: false,
            appendable: false,
        }),
        Box::new(Numbers {
            file: f.file(),
            lose_rows: false,
            appendable: false,
        }),
    ])
    .err()
    .unwrap();
    assert!(err.to_string().contains("produced by both"), "{err}");
}

#[test]
fn queries_are_read_only() {
    let f = Fixture::new();
    f.run(2, all());
    for sql in [
        "CREATE TABLE t AS SELECT 1",
        "INSERT INTO total VALUES (1)",
        "COPY total TO '/tmp/medtune-should-not-exist.csv'",
        "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/tmp/x.csv'",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let mut out = Vec::new();
        let options = QueryOptions::new(OutputFormat::Table, None);
        let err = query_blocking(&f.workdir(), sql, options, &mut out).unwrap_err();
        assert!(err.to_string().contains("read-only"), "{sql}: {err}");
    }
    assert!(!Path::new("/tmp/medtune-should-not-exist.csv").exists());
}

fn growing_dag(f: &Fixture, factor: i64) -> Dag {
    Dag::new(vec![
        Box::new(Numbers {
            file: f.file(),
            lose_rows: false,
            appendable: true,
        }),
        Box::new(Scale {
            factor,
            fail: false,
            appendable: true,
        }),
        Box::new(Total),
    ])
    .unwrap()
}

fn extended(summaries: &[StageSummary]) -> Vec<(&str, bool, bool)> {
    summaries
        .iter()
        .map(|s| (s.stage.as_str(), s.cache_hit, s.appended))
        .collect()
}

#[test]
fn stages_extend_their_previous_output_when_inputs_only_grew() {
    let f = Fixture::new();
    let run = |factor, options| {
        f.run_with(growing_dag(&f, factor), options, &Warnings::default())
            .unwrap()
    };
    run(10, all());
    std::fs::write(f.file(), "1\n2\nthree\n4\n5\nsix\n").unwrap();
    let grown = run(10, all());
    assert_eq!(
        extended(&grown),
        vec![
            ("numbers", false, true),
            ("scale", false, true),
            ("total", false, false),
        ]
    );
    // Accounting and counters cover old and new rows; the old part leads the new one.
    let numbers = &grown[0].accounting;
    assert_eq!((numbers.rows_in, numbers.kept), (6, 4));
    assert_eq!(numbers.dropped["not_a_number"], 2);
    assert_eq!(grown[1].counters["rows_scaled"], 4);
    assert_eq!(f.total(), "total\n120\n");
    let scaled = f.workdir().latest_manifest("scale").unwrap();
    let parts: Vec<u64> = scaled.datasets["scaled"]
        .files
        .iter()
        .map(|p| p.rows)
        .collect();
    assert_eq!(parts, vec![3, 1]);

    // The extended entries are ordinary cache entries: a rerun hits them.
    assert!(run(10, all()).iter().all(|s| s.cache_hit));
    // Another config, or --force, runs in full.
    std::fs::write(f.file(), "1\n2\nthree\n4\n5\nsix\n7\n").unwrap();
    let other = run(100, all());
    assert_eq!(extended(&other)[1], ("scale", false, false));
    assert_eq!(f.total(), "total\n1900\n");
    let forced = run(
        100,
        RunOptions {
            stages: vec![],
            force: true,
        },
    );
    assert!(forced.iter().all(|s| !s.cache_hit && !s.appended));
    assert_eq!(f.total(), "total\n1900\n");
}
