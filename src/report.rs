//! Result tables printed to stdout: the per-stage run summary and the status table.

use std::io::Write;

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{CellAlignment, Table};
use medtune_pipeline::{Freshness, StageStatus, StageSummary};

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    t
}

/// Prints rows in / kept / dropped by reason / seconds / cache per stage, and the row balance.
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
            if s.cache_hit { "hit" } else { "ran" }.to_string(),
            a.rows_in.to_string(),
            if a.keeps_rows {
                a.kept.to_string()
            } else {
                "-".into()
            },
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
        if a.keeps_rows {
            write!(
                out,
                "{}: {} rows in = {} kept + {} dropped",
                s.stage,
                a.rows_in,
                a.kept,
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
    // Stages that keep no rows (profile, tokenize, train) are not steps of the funnel.
    for s in summaries.iter().filter(|s| s.accounting.keeps_rows) {
        let a = &s.accounting;
        if a.dropped.is_empty() {
            t.add_row(vec![
                s.stage.clone(),
                a.kept.to_string(),
                "0".into(),
                String::new(),
            ]);
        }
        for (i, (reason, n)) in a.dropped.iter().enumerate() {
            let (stage, kept) = if i == 0 {
                (s.stage.clone(), a.kept.to_string())
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

/// This process's peak resident set size, from `VmHWM` in `/proc/self/status` (Linux only).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Prints the test-split scores the train stage wrote, if it wrote any.
pub fn print_test_scores(path: &std::path::Path, out: &mut impl Write) -> anyhow::Result<()> {
    let Ok(text) = std::fs::read(path) else {
        return Ok(());
    };
    let scores: serde_json::Value = serde_json::from_slice(&text)?;
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    writeln!(
        out,
        "{} split, {} sequences: entity micro F1 {:.4} (seqeval default), {:.4} (strict IOB2); \
         token weighted F1 {:.4}",
        scores["split"].as_str().unwrap_or("test"),
        scores["sequences"],
        f(&scores["entity_lenient"]["micro_f1"]),
        f(&scores["entity_strict"]["micro_f1"]),
        f(&scores["token_weighted_f1"]),
    )?;
    if let Some(types) = scores["entity_lenient"]["per_type"].as_object() {
        for (name, s) in types {
            writeln!(
                out,
                "  {name}: precision {:.4} recall {:.4} F1 {:.4} support {}",
                f(&s["precision"]),
                f(&s["recall"]),
                f(&s["f1"]),
                s["support"]
            )?;
        }
    }
    writeln!(
        out,
        "predictions and scores: {}",
        path.parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    )?;
    Ok(())
}
