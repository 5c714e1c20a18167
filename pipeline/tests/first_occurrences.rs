//! The engine's first-occurrence table over a dataset of several parts and chunks: every key's
//! first row number and id equal what a walk over the rows in order finds, rows without a key
//! are left out but still numbered, and a key an earlier table gave first is named there.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, StructArray};
use arrow::datatypes::{DataType, Field, Fields, Int64Type, Schema, UInt64Type};
use common::Rows;
use medtune_pipeline::engine::chunks;
use medtune_pipeline::engine::first::{EARLIER_ID, FIRST_ID, FIRST_ROW, KEY, ROWS};
use medtune_pipeline::sql::{query_blocking, OutputFormat, QueryOptions};
use medtune_pipeline::{
    Dag, FirstOccurrences, OutputDecl, OutputRole, PipelineError, Quiet, Result, RowFunction,
    RunOptions, Runner, Settings, Stage, StageContext, Workdir,
};

/// Row `i`'s number: keys repeat, and a key's first row is spread over the whole dataset.
fn number(i: i64) -> i64 {
    (i * 7919) % 4001 + (i / 30_000) * 4001
}

/// The key of a row: its number; rows whose number is a multiple of 17 have none.
struct Residue;

impl RowFunction for Residue {
    const NAME: &'static str = "test_residue";
    type Prepared = ();

    fn output_fields() -> Fields {
        vec![
            Field::new("key", DataType::Int64, false),
            Field::new("none", DataType::Boolean, false),
        ]
        .into()
    }

    fn prepare(_: &str) -> Result<()> {
        Ok(())
    }

    fn map(_: &(), rows: &RecordBatch) -> Result<StructArray> {
        let n = rows
            .column_by_name("n")
            .expect("the rows have n")
            .as_primitive::<Int64Type>();
        let none: BooleanArray = n.iter().map(|v| v.map(|v| v % 17 == 0)).collect();
        Ok(StructArray::try_new(
            Self::output_fields(),
            vec![Arc::new(n.clone()) as ArrayRef, Arc::new(none)],
            None,
        )?)
    }
}

/// A key's row in a first-occurrence table: first row, first id, rows, earlier id.
type Entry = (u64, String, i64, Option<String>);

/// Writes the first-occurrence table of `rows` twice (the second time with the first as the
/// earlier table), compares both with a walk over the rows, and writes how many keys it met.
struct Firsts;

impl Firsts {
    fn table(ctx: &StageContext<'_>, folder: PathBuf) -> Result<HashMap<i64, Entry>> {
        let sql = format!("SELECT {KEY}, {FIRST_ROW}, {FIRST_ID}, {ROWS}, {EARLIER_ID} FROM t");
        let mut table = HashMap::new();
        for batch in ctx.query_tables(&[("t", vec![folder])], &sql)? {
            let cast = |i: usize, to: &DataType| arrow::compute::cast(batch.column(i), to);
            let keys = cast(0, &DataType::Int64)?;
            let first_rows = cast(1, &DataType::UInt64)?;
            let first_ids = cast(2, &DataType::Utf8)?;
            let counts = cast(3, &DataType::Int64)?;
            let earlier = cast(4, &DataType::Utf8)?;
            for row in 0..batch.num_rows() {
                let earlier = earlier.as_string::<i32>();
                let entry = (
                    first_rows.as_primitive::<UInt64Type>().value(row),
                    first_ids.as_string::<i32>().value(row).to_string(),
                    counts.as_primitive::<Int64Type>().value(row),
                    earlier
                        .is_valid(row)
                        .then(|| earlier.value(row).to_string()),
                );
                let key = keys.as_primitive::<Int64Type>().value(row);
                if table.insert(key, entry).is_some() {
                    return Err(PipelineError::Internal(format!("key {key} twice")));
                }
            }
        }
        Ok(table)
    }

    fn expected(ctx: &StageContext<'_>) -> Result<HashMap<i64, Entry>> {
        let mut expected: HashMap<i64, Entry> = HashMap::new();
        let mut row = 0u64;
        for batch in ctx.read("rows")? {
            let batch = batch?;
            let ids = batch.column(0).as_string::<i32>();
            let ns = batch.column(1).as_primitive::<Int64Type>();
            for i in 0..batch.num_rows() {
                let n = ns.value(i);
                if n % 17 != 0 {
                    let id = ids.value(i).to_string();
                    expected.entry(n).or_insert((row, id, 0, None)).2 += 1;
                }
                row += 1;
            }
        }
        Ok(expected)
    }
}

impl Stage for Firsts {
    fn name(&self) -> &str {
        "firsts"
    }
    fn version(&self) -> u32 {
        1
    }
    fn inputs(&self) -> Vec<String> {
        vec!["rows".into()]
    }
    fn outputs(&self) -> Vec<OutputDecl> {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "keys",
            DataType::Int64,
            false,
        )]));
        vec![OutputDecl::new("keys", schema, OutputRole::Side)]
    }
    fn config(&self) -> serde_json::Value {
        serde_json::json!({})
    }
    fn run(&self, ctx: &mut StageContext<'_>) -> Result<()> {
        let input = ctx.input("rows")?;
        let parts = input.part_paths().count();
        let chunk_count = chunks(input)?.chunks.len();
        if parts < 2 || chunk_count < 3 {
            return Err(PipelineError::Internal(format!(
                "the rows should span parts and chunks: {parts} parts, {chunk_count} chunks"
            )));
        }
        let artifacts = ctx.artifacts_dir()?.to_path_buf();
        let settings = serde_json::json!({});
        let job = |earlier: &'static str, folder: &'static str| -> Result<_> {
            let earlier: Vec<PathBuf> = [earlier]
                .iter()
                .filter(|e| !e.is_empty())
                .map(|e| artifacts.join(e))
                .collect();
            ctx.write_first_occurrences::<Residue>(&FirstOccurrences {
                dataset: ctx.input("rows")?,
                id: "id",
                settings: &settings,
                key: "key",
                keyless: Some("none"),
                earlier: &earlier,
                folder: &artifacts.join(folder),
            })?;
            Self::table(ctx, artifacts.join(folder))
        };
        let expected = Self::expected(ctx)?;
        let first = job("", "first")?;
        if first != expected {
            let wrong = expected.iter().find(|(k, e)| first.get(k) != Some(e));
            return Err(PipelineError::Internal(format!(
                "{} keys, {} expected; first difference: {wrong:?} vs {:?}",
                first.len(),
                expected.len(),
                wrong.and_then(|(k, _)| first.get(k))
            )));
        }
        let again = job("first", "again")?;
        let named_earlier = again
            .iter()
            .all(|(k, (_, _, _, earlier))| earlier.as_ref() == Some(&expected[k].1));
        if again.len() != expected.len() || !named_earlier {
            return Err(PipelineError::Internal(
                "the second table does not name the first table's rows as earlier".into(),
            ));
        }
        let keys = Int64Array::from(vec![first.len() as i64]);
        let schema = Arc::new(Schema::new(vec![Field::new(
            "keys",
            DataType::Int64,
            false,
        )]));
        ctx.write("keys", RecordBatch::try_new(schema, vec![Arc::new(keys)])?)
    }
}

#[test]
fn first_rows_and_ids_are_exact_across_parts_and_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        row_group_rows: 5_000,
        part_max_bytes: 100_000,
        ..Settings::default()
    };
    let dag = Dag::new(vec![Box::new(Rows { number }), Box::new(Firsts)]).unwrap();
    let workdir = Workdir::new(dir.path().join("work"));
    let summaries = Runner::new(workdir, dag, settings, &Quiet)
        .run(&RunOptions::default())
        .unwrap();
    let firsts = summaries.iter().find(|s| s.stage == "firsts").unwrap();
    assert!(!firsts.cache_hit);
    let mut out = Vec::new();
    query_blocking(
        &Workdir::new(dir.path().join("work")),
        "SELECT keys FROM keys",
        QueryOptions::new(OutputFormat::Csv, None),
        &mut out,
    )
    .unwrap();
    // 8,002 numbers, less the multiples of 17 (which have no key).
    let keyed = (0..8_002).filter(|n| n % 17 != 0).count();
    assert_eq!(String::from_utf8(out).unwrap(), format!("keys\n{keyed}\n"));
}
