//! Set-level scores of generated extraction lists (the ChemProt tasks).
//!
//! A completion is a bullet list. Entity tasks (`chemicals`, `diseases`): every `- item` is an
//! entity. The relation task (`influences`): every item is a pair, written `x | y` or in the
//! raw sentence form `Chemical X influences disease Y`. Items are normalised as the convert
//! stage does (lower-case, whitespace folded, typographic quotes straightened, hyphens kept),
//! pairs as `x | y`, and each completion becomes a set. Lines that are no such item are not
//! scored but counted, so a model that stops writing lists shows up.
//!
//! Per task: true positives, predicted and true items summed over rows (pooled, "micro"), from
//! which precision, recall and F1 follow; also the mean over rows of each row's F1 (a row with
//! neither gold nor predicted items scores 1). Over tasks: the macro mean of the task F1s and the
//! pooled counts over all items.

use std::collections::{BTreeMap, BTreeSet};

use crate::shared::chemprot::{
    item_text, normalize_entity, ENTITY_TASKS, RELATION_LINE, RELATION_TASK,
};
use crate::shared::metrics::entities::{averages, Report, Scores};

/// Whether `task` is scored as an extraction task.
pub fn is_extraction_task(task: &str) -> bool {
    task == RELATION_TASK || ENTITY_TASKS.contains(&task)
}

/// The scored items of one completion.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedList {
    /// Normalised items (entities, or `x | y` pairs).
    pub items: BTreeSet<String>,
    /// Non-empty lines that were no item of the task's kind.
    pub unparsed_lines: usize,
}

/// Parses a completion of `task` (`influences` reads pairs, any other task entities).
pub fn parse_list(text: &str, task: &str) -> ParsedList {
    let relation = task == RELATION_TASK;
    let mut out = ParsedList::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let item = if relation {
            relation_item(line)
        } else {
            item_text(line)
                .filter(|t| !t.is_empty())
                .map(normalize_entity)
        };
        match item {
            Some(item) => {
                out.items.insert(item);
            }
            None => out.unparsed_lines += 1,
        }
    }
    out
}

fn relation_item(line: &str) -> Option<String> {
    if let Some(c) = RELATION_LINE.captures(line) {
        return Some(format!(
            "{} | {}",
            normalize_entity(&c[1]),
            normalize_entity(&c[2])
        ));
    }
    let (x, y) = item_text(line)?.split_once('|')?;
    let (x, y) = (normalize_entity(x), normalize_entity(y));
    (!x.is_empty() && !y.is_empty()).then(|| format!("{x} | {y}"))
}

/// Counts of one comparison of sets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetCounts {
    /// Items in both.
    pub correct: u64,
    /// Predicted items.
    pub predicted: u64,
    /// Gold items.
    pub gold: u64,
}

impl SetCounts {
    /// Compares a predicted set with the gold one.
    pub fn of(predicted: &BTreeSet<String>, gold: &BTreeSet<String>) -> Self {
        SetCounts {
            correct: predicted.intersection(gold).count() as u64,
            predicted: predicted.len() as u64,
            gold: gold.len() as u64,
        }
    }

    fn add(&mut self, other: SetCounts) {
        self.correct += other.correct;
        self.predicted += other.predicted;
        self.gold += other.gold;
    }

    /// Precision, recall and F1 (support = gold items).
    pub fn scores(&self) -> Scores {
        Scores::from_counts(self.correct, self.predicted, self.gold)
    }

    /// This row's F1, 1 when both sets are empty.
    fn row_f1(&self) -> f64 {
        if self.predicted == 0 && self.gold == 0 {
            1.0
        } else {
            self.scores().f1
        }
    }
}

/// Scores of one task, or of all tasks together.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskTally {
    /// Pooled counts.
    pub counts: SetCounts,
    /// Sum of per-row F1s.
    row_f1_sum: f64,
    /// Rows scored.
    pub rows: u64,
    /// Unparsed predicted lines.
    pub unparsed_lines: u64,
}

impl TaskTally {
    /// Mean per-row F1.
    pub fn mean_row_f1(&self) -> f64 {
        if self.rows == 0 {
            0.0
        } else {
            self.row_f1_sum / self.rows as f64
        }
    }
}

/// Accumulates rows of extraction tasks.
#[derive(Debug, Clone, Default)]
pub struct ExtractionScorer {
    tasks: BTreeMap<String, TaskTally>,
}

impl ExtractionScorer {
    /// Scores one row: the generated text against the reference completion. Returns the row's
    /// counts.
    pub fn add(&mut self, task: &str, generated: &str, reference: &str) -> SetCounts {
        let predicted = parse_list(generated, task);
        let gold = parse_list(reference, task);
        let counts = SetCounts::of(&predicted.items, &gold.items);
        let tally = self.tasks.entry(task.to_string()).or_default();
        tally.counts.add(counts);
        tally.row_f1_sum += counts.row_f1();
        tally.rows += 1;
        tally.unparsed_lines += predicted.unparsed_lines as u64;
        counts
    }

    /// Per task.
    pub fn tasks(&self) -> &BTreeMap<String, TaskTally> {
        &self.tasks
    }

    /// Per-task scores, pooled ("micro") over every item, macro mean over tasks.
    pub fn report(&self) -> Report {
        let mut all = SetCounts::default();
        let per_task: BTreeMap<String, Scores> = self
            .tasks
            .iter()
            .map(|(task, t)| {
                all.add(t.counts);
                (task.clone(), t.counts.scores())
            })
            .collect();
        averages(per_task, all.scores())
    }

    /// Mean over tasks of each task's mean per-row F1.
    pub fn macro_mean_row_f1(&self) -> f64 {
        if self.tasks.is_empty() {
            return 0.0;
        }
        self.tasks.values().map(TaskTally::mean_row_f1).sum::<f64>() / self.tasks.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_lists_are_normalised_sets_and_stray_lines_are_counted() {
        let parsed = parse_list(
            "Here are the chemicals:\n- Bupivacaine\n-  bupivacaine \n* 5-FU\n\n- “L-dopa”\n-",
            "chemicals",
        );
        let items: Vec<&str> = parsed.items.iter().map(String::as_str).collect();
        assert_eq!(items, ["\"l-dopa\"", "5-fu", "bupivacaine"]);
        // The header and the empty bullet.
        assert_eq!(parsed.unparsed_lines, 2);
    }

    #[test]
    fn relations_parse_in_both_forms_and_only_as_pairs() {
        let parsed = parse_list(
            "- Chemical Bupivacaine influences disease Loss of  pinprick sensation\n\
             - cocaine | Seizures\n- cocaine\n- | seizures",
            "influences",
        );
        let items: Vec<&str> = parsed.items.iter().map(String::as_str).collect();
        assert_eq!(
            items,
            [
                "bupivacaine | loss of pinprick sensation",
                "cocaine | seizures"
            ]
        );
        assert_eq!(parsed.unparsed_lines, 2);
    }

    #[test]
    fn pooled_per_row_and_macro_scores_by_hand() {
        let mut scorer = ExtractionScorer::default();
        // chemicals row 1: 2 of 3 predicted right, 2 of 4 gold found.
        let c = scorer.add("chemicals", "- a\n- b\n- x", "- a\n- b\n- c\n- d");
        assert_eq!(
            c,
            SetCounts {
                correct: 2,
                predicted: 3,
                gold: 4
            }
        );
        // chemicals row 2: both empty (F1 1 for the row, nothing pooled).
        scorer.add("chemicals", "", "");
        // diseases: one right of one, gold has two.
        scorer.add("diseases", "- fever", "- Fever\n- cough");
        // influences: raw form against converted form, a hit.
        scorer.add(
            "influences",
            "- Chemical A influences disease B",
            "- a | b\n- a | c",
        );
        let report = scorer.report();
        let chem = report.per_type["chemicals"];
        assert!((chem.precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((chem.recall - 0.5).abs() < 1e-12);
        let f1 = |p: f64, r: f64| 2.0 * p * r / (p + r);
        assert!((chem.f1 - f1(2.0 / 3.0, 0.5)).abs() < 1e-12);
        let dis = report.per_type["diseases"];
        assert!((dis.f1 - f1(1.0, 0.5)).abs() < 1e-12);
        // Pooled over tasks: 4 correct, 5 predicted, 8 gold.
        assert!((report.micro.precision - 4.0 / 5.0).abs() < 1e-12);
        assert!((report.micro.recall - 4.0 / 8.0).abs() < 1e-12);
        let inf = report.per_type["influences"].f1;
        assert!((report.macro_avg.f1 - (chem.f1 + dis.f1 + inf) / 3.0).abs() < 1e-12);
        // Row means: chemicals (F1(2/3, 1/2) + 1) / 2.
        let t = &scorer.tasks()["chemicals"];
        assert!((t.mean_row_f1() - (f1(2.0 / 3.0, 0.5) + 1.0) / 2.0).abs() < 1e-12);
        assert_eq!(t.rows, 2);
    }
}
