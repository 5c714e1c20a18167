//! Renders the `profile` dataset: a table per section on stdout, and the same figures as
//! `reports/profile.json` and `reports/profile.md` in the workdir.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use arrow::array::{AsArray, Float64Array};
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{CellAlignment, Table};
use medtune_pipeline::fsutil::write_atomic;
use medtune_pipeline::reader::CommittedDataset;

/// section -> key -> metric -> value, in first-seen order of metrics.
pub struct Profile {
    sections: BTreeMap<String, BTreeMap<String, BTreeMap<String, f64>>>,
    metric_order: BTreeMap<String, Vec<String>>,
}

impl Profile {
    /// Reads every row of the committed `profile` dataset.
    pub fn read(dataset: &CommittedDataset) -> anyhow::Result<Self> {
        let mut profile = Profile {
            sections: BTreeMap::new(),
            metric_order: BTreeMap::new(),
        };
        for batch in dataset.batches(4096) {
            let batch = batch?;
            let text = |i: usize| batch.column(i).as_string::<i32>();
            let (section, key, metric) = (text(0), text(1), text(2));
            let value: &Float64Array = batch.column(3).as_primitive();
            for r in 0..batch.num_rows() {
                let (s, m) = (section.value(r), metric.value(r));
                let order = profile.metric_order.entry(s.to_string()).or_default();
                if !order.iter().any(|x| x == m) {
                    order.push(m.to_string());
                }
                profile
                    .sections
                    .entry(s.to_string())
                    .or_default()
                    .entry(key.value(r).to_string())
                    .or_default()
                    .insert(m.to_string(), value.value(r));
            }
        }
        Ok(profile)
    }

    fn cell(value: Option<&f64>) -> String {
        match value {
            Some(v) if v.fract() == 0.0 => format!("{v:.0}"),
            Some(v) => format!("{v:.2}"),
            None => String::new(),
        }
    }

    /// Prints a table per section.
    pub fn print(&self, out: &mut dyn Write) -> std::io::Result<()> {
        for (section, keys) in &self.sections {
            let metrics = &self.metric_order[section];
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED);
            let mut header = vec![section.clone()];
            header.extend(metrics.iter().cloned());
            t.set_header(header);
            for (key, values) in keys {
                let mut row = vec![key.clone()];
                row.extend(metrics.iter().map(|m| Self::cell(values.get(m))));
                t.add_row(row);
            }
            for c in 1..=metrics.len() {
                if let Some(column) = t.column_mut(c) {
                    column.set_cell_alignment(CellAlignment::Right);
                }
            }
            writeln!(out, "{t}")?;
        }
        Ok(())
    }

    /// The figures as Markdown: a heading and a table per section.
    pub fn markdown(&self) -> String {
        let mut md = String::from("# Data profile\n");
        for (section, keys) in &self.sections {
            let metrics = &self.metric_order[section];
            md.push_str(&format!(
                "\n## {section}\n\n| {section} | {} |\n",
                metrics.join(" | ")
            ));
            md.push_str(&format!("|---|{}\n", "---:|".repeat(metrics.len())));
            for (key, values) in keys {
                let cells: Vec<String> =
                    metrics.iter().map(|m| Self::cell(values.get(m))).collect();
                md.push_str(&format!("| {key} | {} |\n", cells.join(" | ")));
            }
        }
        md
    }

    /// Writes `profile.json` and `profile.md` into `<workdir>/reports/`, each atomically.
    pub fn write(&self, workdir: &Path) -> anyhow::Result<[PathBuf; 2]> {
        let dir = workdir.join("reports");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = dir.join("profile.json");
        let md = dir.join("profile.md");
        write_atomic(&json, &serde_json::to_vec_pretty(&self.sections)?)?;
        write_atomic(&md, self.markdown().as_bytes())?;
        Ok([json, md])
    }
}
