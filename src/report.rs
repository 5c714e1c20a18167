//! Result tables printed to stdout: the per-stage run summary and the status table.

use std::io::Write;

use anyhow::Context;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{CellAlignment, Table};
use medtune_pipeline::sql::{query_blocking, OutputFormat, QueryOptions};
use medtune_pipeline::{Freshness, StageStatus, StageSummary, Workdir};
use medtune_stages::evaluate::{self, tables::headline_query, REPORT_FILE};
use medtune_stages::train::TrainedAdapter;

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    t
}

/// Prints rows in / kept / dropped by reason / seconds / cache per stage (`hit`, `ran`, or
/// `appended`: ran over appended rows only, extending its previous output), and the row balance.
pub fn print_summary(summaries: &[StageSummary], out: &mut dyn Write) -> std::io::Result<()> {
    let mut t = table(&[
        "stage",
        "cache",
        "rows in",
        "kept",
        "dropped",
        "by reason",
        "seconds",
    ]);
    for s in summaries {
        let a = &s.accounting;
        let reasons: Vec<String> = a.dropped.iter().map(|(r, n)| format!("{r}: {n}")).collect();
        t.add_row(vec![
            s.stage.clone(),
            match (s.cache_hit, s.appended) {
                (true, _) => "hit",
                (false, true) => "appended",
                (false, false) => "ran",
            }
            .to_string(),
            a.rows_in.to_string(),
            a.passed_on().map_or("-".into(), |n| n.to_string()),
            a.dropped_total().to_string(),
            reasons.join("\n"),
            format!("{:.2}", s.seconds),
        ]);
    }
    for col in [2, 3, 4, 6] {
        if let Some(c) = t.column_mut(col) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    writeln!(out, "{t}")?;
    if summaries.len() > 1 {
        writeln!(out, "{}", funnel(summaries))?;
    }
    for s in summaries {
        let a = &s.accounting;
        if let Some(kept) = a.passed_on() {
            write!(
                out,
                "{}: {} rows in = {kept} kept + {} dropped",
                s.stage,
                a.rows_in,
                a.dropped_total()
            )?;
        } else {
            write!(out, "{}: {} rows read (keeps none)", s.stage, a.rows_in)?;
        }
        let counters: Vec<String> = s.counters.iter().map(|(k, v)| format!("{k} {v}")).collect();
        if !counters.is_empty() {
            write!(out, "; {}", counters.join(", "))?;
        }
        writeln!(out)?;
    }
    Ok(())
}

/// The row funnel of the whole run: one line per stage and drop reason, with the rows the
/// stage kept and the rows still left after it.
fn funnel(summaries: &[StageSummary]) -> Table {
    let mut t = table(&["funnel: stage", "kept", "dropped", "reason"]);
    // Stages that only read (profile, train) are not steps of the funnel.
    for s in summaries {
        let a = &s.accounting;
        let Some(kept) = a.passed_on() else {
            continue;
        };
        if a.dropped.is_empty() {
            t.add_row(vec![
                s.stage.clone(),
                kept.to_string(),
                "0".into(),
                String::new(),
            ]);
        }
        for (i, (reason, n)) in a.dropped.iter().enumerate() {
            let (stage, kept) = if i == 0 {
                (s.stage.clone(), kept.to_string())
            } else {
                (String::new(), String::new())
            };
            t.add_row(vec![stage, kept, n.to_string(), reason.clone()]);
        }
    }
    for col in [1, 2] {
        if let Some(c) = t.column_mut(col) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}

/// Prints fresh / stale (why) / missing per stage.
pub fn print_status(statuses: &[StageStatus], out: &mut dyn Write) -> std::io::Result<()> {
    let mut t = table(&["stage", "state", "why"]);
    for s in statuses {
        let (state, why) = match &s.freshness {
            Freshness::Fresh => ("fresh", String::new()),
            Freshness::Stale(reasons) => ("stale", reasons.join("\n")),
            Freshness::Missing => ("missing", "never run in this workdir".to_string()),
        };
        t.add_row(vec![s.stage.clone(), state.to_string(), why]);
    }
    writeln!(out, "{t}")
}

/// Says so when the catalog (what `medtune query` reads) holds the outputs of another config
/// than `config`, or is damaged; prints nothing when it serves `config`.
pub fn print_catalog_owner(
    workdir: &medtune_pipeline::Workdir,
    config: &std::path::Path,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    match workdir.catalog_config_other_than(config) {
        Ok(None) => Ok(()),
        Ok(Some(other)) => writeln!(
            out,
            "note: `medtune query` serves the outputs of {} (the last run in this workdir), \
             not of {}; `medtune run --config {}` switches it",
            other.display(),
            config.display(),
            config.display()
        ),
        Err(e) => writeln!(out, "note: {e}"),
    }
}

/// This process's peak resident set size, from `VmHWM` in `/proc/self/status` (Linux only).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Prints where a training run's adapter is and the evaluation it was kept at.
pub fn print_trained(trained: &TrainedAdapter, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "adapter (PEFT format): {}",
        trained.adapter_dir.display()
    )?;
    if let Some(best) = &trained.best {
        writeln!(
            out,
            "best evaluation loss {:.4} at step {} (the adapter saved)",
            best.loss, best.step
        )?;
    }
    writeln!(
        out,
        "next: `medtune eval --config ...` scores it on the test split"
    )
}

/// Prints the headline numbers of the latest evaluation (from the `metrics` dataset) and where
/// its report is.
pub fn print_evaluation(workdir: &Workdir, out: &mut impl Write) -> anyhow::Result<()> {
    query_blocking(
        workdir,
        &headline_query(),
        QueryOptions::new(OutputFormat::Table, None),
        out,
    )?;
    let artifacts = workdir
        .latest_artifacts(evaluate::NAME)
        .context("the evaluate stage committed no report")?;
    writeln!(out, "report: {}", artifacts.join(REPORT_FILE).display())?;
    writeln!(
        out,
        "every number: medtune query \"SELECT * FROM metrics\"; per row: SELECT * FROM predictions"
    )?;
    Ok(())
}
