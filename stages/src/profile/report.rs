//! The profile report, rendered from the committed `profile` dataset: a table per section for
//! the terminal, and the same figures as `reports/profile.json` and `reports/profile.md` in the
//! workdir.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow::array::{AsArray, Float64Array};
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{CellAlignment, Table};
use medtune_pipeline::fsutil::write_atomic;
use medtune_pipeline::reader::CommittedDataset;
use medtune_pipeline::{PipelineError, Result};

use crate::shared::markdown;

/// section -> key -> metric -> value, in first-seen order of metrics.
pub struct ProfileReport {
    sections: BTreeMap<String, BTreeMap<String, BTreeMap<String, f64>>>,
    metric_order: BTreeMap<String, Vec<String>>,
}

impl ProfileReport {
    /// Reads every row of the committed `profile` dataset.
    pub fn read(dataset: &CommittedDataset) -> Result<Self> {
        let mut profile = ProfileReport {
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

    /// A table per section, for the terminal.
    pub fn tables(&self) -> Vec<Table> {
        let mut tables = Vec::new();
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
            tables.push(t);
        }
        tables
    }

    /// The figures as Markdown: a heading and a table per section.
    pub fn markdown(&self) -> String {
        let mut md = String::from("# Data profile\n");
        for (section, keys) in &self.sections {
            let metrics = &self.metric_order[section];
            let mut header = vec![section.as_str()];
            header.extend(metrics.iter().map(String::as_str));
            md.push_str(&format!(
                "\n## {section}\n\n{}\n",
                markdown::escaped_row(&header)
            ));
            md.push_str(&format!("|---|{}\n", "---:|".repeat(metrics.len())));
            for (key, values) in keys {
                let mut cells = vec![key.clone()];
                cells.extend(metrics.iter().map(|m| Self::cell(values.get(m))));
                md.push_str(&format!("{}\n", markdown::escaped_row(&cells)));
            }
        }
        md
    }

    /// Writes `profile.json` and `profile.md` into `<workdir>/reports/`, each atomically.
    pub fn write(&self, workdir: &Path) -> Result<[PathBuf; 2]> {
        let dir = workdir.join("reports");
        std::fs::create_dir_all(&dir).map_err(|e| PipelineError::io(&dir, e))?;
        let json = dir.join("profile.json");
        let md = dir.join("profile.md");
        let figures = serde_json::to_vec_pretty(&self.sections)
            .map_err(|e| PipelineError::Internal(format!("profile as JSON: {e}")))?;
        write_atomic(&json, &figures)?;
        write_atomic(&md, self.markdown().as_bytes())?;
        Ok([json, md])
    }
}
