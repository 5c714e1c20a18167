//! The evaluation report in Markdown: the same numbers as the `metrics` dataset, as tables
//! with the variants side by side, then the confusion matrices, samples and charts.

use std::collections::BTreeSet;
use std::fmt::Write;

use medtune_qlora::auto::Task;

use super::tables::{family, MetricRow};
use super::Outcome;
use crate::shared::markdown;

/// What the report says about the run.
pub struct Header<'a> {
    /// Model directory, as written in the config.
    pub model: &'a str,
    /// Where the adapter came from.
    pub adapter: String,
    /// The task.
    pub task: Task,
    /// The split scored.
    pub split: &'a str,
    /// Rows scored per variant.
    pub rows: u64,
    /// Variant names, in column order.
    pub variants: Vec<&'a str>,
    /// NF4 base weights.
    pub quantised: bool,
}

/// Families in report order, with their section titles.
const FAMILIES: &[(&str, &str)] = &[
    (
        family::ENTITY_DEFAULT,
        "Entity scores, seqeval default mode (conlleval rules: a stray I- starts an entity)",
    ),
    (
        family::ENTITY_STRICT,
        "Entity scores, seqeval strict mode (IOB2: a stray I- is no entity)",
    ),
    (
        family::TOKEN,
        "Word-tag scores (scikit-learn's classification report over word tags)",
    ),
    (
        family::EXTRACTION,
        "Extraction: set-level scores per task (counts pooled over rows; mean_row_f1 averages each row's F1)",
    ),
    (
        family::TEXT,
        "Generation against the reference (ROUGE-L F1 and BLEU-1, mean over rows; corpus BLEU-1)",
    ),
    (
        family::LM,
        "Loss over the reference tokens (teacher forcing)",
    ),
    (family::THROUGHPUT, "Throughput of this evaluation"),
];

/// Metrics shown as whole numbers.
fn is_count(metric: &str) -> bool {
    matches!(
        metric,
        "support"
            | "rows"
            | "sequences"
            | "tokens"
            | "labelled_tokens"
            | "generated_tokens"
            | "unparsed_lines"
    )
}

fn format_value(metric: &str, v: f64) -> String {
    if is_count(metric) {
        format!("{}", v.round() as i64)
    } else if v.abs() >= 1000.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.4}")
    }
}

/// First-seen order of a field's values.
fn ordered<'a>(rows: &[&'a MetricRow], field: fn(&'a MetricRow) -> &'a str) -> Vec<&'a str> {
    let mut seen = BTreeSet::new();
    rows.iter()
        .map(|r| field(r))
        .filter(|v| seen.insert(*v))
        .collect()
}

fn family_table(out: &mut String, rows: &[&MetricRow], variants: &[&str]) {
    let groups = ordered(rows, |r| r.group.as_str());
    let metrics = ordered(rows, |r| r.metric.as_str());
    let value = |group: &str, metric: &str, variant: &str| {
        rows.iter()
            .find(|r| r.group == group && r.metric == metric && r.model == variant)
            .map(|r| r.value)
    };
    // A count is the same for every variant (the data's, not the model's): one column.
    let shared = |metric: &str| {
        is_count(metric)
            && metric != "generated_tokens"
            && metric != "unparsed_lines"
            && groups.iter().all(|g| {
                let values: Vec<Option<f64>> =
                    variants.iter().map(|v| value(g, metric, v)).collect();
                values.windows(2).all(|w| w[0] == w[1])
            })
    };
    let delta = variants.len() == 2 && metrics.contains(&"f1");
    let mut header = vec!["".to_string()];
    for m in &metrics {
        if shared(m) || variants.len() == 1 {
            header.push((*m).to_string());
        } else {
            header.extend(variants.iter().map(|v| format!("{m} ({v})")));
        }
    }
    if delta {
        header.push(format!("Δ f1 ({} − {})", variants[1], variants[0]));
    }
    let _ = writeln!(out, "{}", markdown::escaped_row(&header));
    let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
    for g in &groups {
        let mut cells = vec![markdown::cell(g)];
        for m in &metrics {
            let show = |v: &str| value(g, m, v).map_or("".into(), |x| format_value(m, x));
            if shared(m) || variants.len() == 1 {
                cells.push(show(variants[0]));
            } else {
                cells.extend(variants.iter().map(|v| show(v)));
            }
        }
        if delta {
            let d = match (value(g, "f1", variants[0]), value(g, "f1", variants[1])) {
                (Some(a), Some(b)) => format!("{:+.4}", b - a),
                _ => String::new(),
            };
            cells.push(d);
        }
        let _ = writeln!(out, "{}", markdown::row(&cells));
    }
    out.push('\n');
}

/// The report text; `images` are (caption, file) pairs beside it.
pub fn render(header: &Header<'_>, outcome: &Outcome, images: &[(&str, &str)]) -> String {
    let mut out = String::new();
    let task = match header.task {
        Task::TokenClassification => "token classification",
        Task::CausalLm => "causal LM",
    };
    let _ = writeln!(
        out,
        "# Evaluation: {task} on the `{}` split\n",
        header.split
    );
    let _ = writeln!(
        out,
        "- model: `{}` ({})",
        header.model,
        if header.quantised {
            "NF4 base weights"
        } else {
            "full-precision base weights"
        }
    );
    let _ = writeln!(out, "- adapter: {}", header.adapter);
    let _ = writeln!(out, "- rows scored: {}", header.rows);
    let _ = writeln!(
        out,
        "- variants: {} (the same loaded weights; `base` runs with the adapters switched off{})\n",
        header.variants.join(", "),
        if header.task == Task::TokenClassification {
            ", keeping the trained head"
        } else {
            ""
        }
    );
    for (family, title) in FAMILIES {
        let rows: Vec<&MetricRow> = outcome
            .metrics
            .iter()
            .filter(|r| r.family == *family)
            .collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(out, "## {title}\n");
        family_table(&mut out, &rows, &header.variants);
    }
    for c in &outcome.confusions {
        let _ = writeln!(out, "## Confusion: {}\n", c.title);
        if c.counts.is_empty() {
            let _ = writeln!(out, "Nothing to count: no entities predicted.\n");
            continue;
        }
        let rows: BTreeSet<&str> = c.counts.keys().map(|(r, _)| r.as_str()).collect();
        let cols: BTreeSet<&str> = c.counts.keys().map(|(_, c)| c.as_str()).collect();
        let mut head = vec![String::new()];
        head.extend(cols.iter().map(|c| markdown::cell(c)));
        let _ = writeln!(out, "{}", markdown::row(&head));
        let _ = writeln!(out, "|{}", "---|".repeat(cols.len() + 1));
        for r in &rows {
            let mut cells = vec![format!("**{}**", markdown::cell(r))];
            cells.extend(cols.iter().map(|col| {
                c.counts
                    .get(&(r.to_string(), col.to_string()))
                    .copied()
                    .unwrap_or(0)
                    .to_string()
            }));
            let _ = writeln!(out, "{}", markdown::row(&cells));
        }
        out.push('\n');
    }
    if !outcome.samples.is_empty() {
        let _ = writeln!(out, "## Samples\n");
        for s in &outcome.samples {
            let _ = writeln!(
                out,
                "### `{}` ({})\n",
                s.id,
                s.task.as_deref().unwrap_or("no task")
            );
            let block = |text: &str| markdown::code_block("text", text);
            let _ = writeln!(out, "Prompt (end):\n\n{}\n", block(&tail(&s.prompt, 400)));
            let _ = writeln!(out, "Reference:\n\n{}\n", block(&s.reference));
            for (variant, text) in &s.outputs {
                let _ = writeln!(out, "Generated ({variant}):\n\n{}\n", block(text));
            }
        }
    }
    for (caption, file) in images {
        let _ = writeln!(out, "![{caption}]({file})\n");
    }
    out
}

/// The last `n` characters of `text` (on a character boundary), marked when cut.
fn tail(text: &str, n: usize) -> String {
    let count = text.chars().count();
    if count <= n {
        return text.trim_end().to_string();
    }
    let cut: String = text.chars().skip(count - n).collect();
    format!("…{}", cut.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::tables::MetricSink;
    use crate::evaluate::Confusion;

    #[test]
    fn tables_put_the_variants_side_by_side_with_the_f1_delta() {
        let mut outcome = Outcome::default();
        for (model, f1) in [("base", 0.25), ("adapter", 0.75)] {
            let mut sink = MetricSink::new(model, &mut outcome.metrics);
            sink.push("extraction", "chemicals", "f1", f1);
            sink.push("extraction", "chemicals", "support", 12.0);
            sink.push("lm", "all", "perplexity", 1234.5678);
        }
        outcome.confusions.push(Confusion {
            title: "empty".into(),
            ..Confusion::default()
        });
        let header = Header {
            model: "m",
            adapter: "a".into(),
            task: Task::CausalLm,
            split: "test",
            rows: 2,
            variants: vec!["base", "adapter"],
            quantised: true,
        };
        let text = render(&header, &outcome, &[("F1", "f1.png")]);
        assert!(
            text.contains("|  | f1 (base) | f1 (adapter) | support | Δ f1 (adapter − base) |"),
            "{text}"
        );
        assert!(
            text.contains("| chemicals | 0.2500 | 0.7500 | 12 | +0.5000 |"),
            "{text}"
        );
        assert!(text.contains("| all | 1234.6 | 1234.6 |"), "{text}");
        assert!(text.contains("no entities predicted"), "{text}");
        assert!(text.contains("![F1](f1.png)"), "{text}");
    }
}
