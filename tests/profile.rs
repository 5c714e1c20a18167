//! `medtune profile` on the real files: the report's figures agree with what SQL and the raw
//! files say, and it is written as JSON and Markdown.

mod common;

use std::collections::HashSet;

use common::*;

fn profile(work: &std::path::Path, config: &str) -> serde_json::Value {
    let config = repo().join(config);
    let run = medtune(work, &["profile", "--config", config.to_str().unwrap()]).expect(0);
    assert!(run.stdout.contains("wrote "), "{}", run.stdout);
    let md = std::fs::read_to_string(work.join("reports/profile.md")).unwrap();
    assert!(md.starts_with("# Data profile"), "{md}");
    serde_json::from_slice(&std::fs::read(work.join("reports/profile.json")).unwrap()).unwrap()
}

fn figure(p: &serde_json::Value, section: &str, key: &str, metric: &str) -> f64 {
    p[section][key][metric]
        .as_f64()
        .unwrap_or_else(|| panic!("no {section}/{key}/{metric} in {p:#}"))
}

#[test]
fn chemprot_profile_matches_the_datasets() {
    let work = tempfile::tempdir().unwrap();
    let p = profile(work.path(), "configs/chemprot.toml");
    let rows: f64 = ["chemicals", "diseases", "influences"]
        .iter()
        .flat_map(|t| ["train", "validation", "test"].map(|s| format!("{t} {s}")))
        .map(|k| figure(&p, "rows", &k, "rows"))
        .sum();
    assert_eq!(rows, 2726.0);
    assert_eq!(figure(&p, "dropped", "dedup duplicate", "rows"), 268.0);
    assert_eq!(figure(&p, "dropped", "clean empty_completion", "rows"), 6.0);
    for key in ["groups", "prompts", "near_duplicate_clusters"] {
        assert_eq!(
            figure(&p, "leakage", key, "shared_across_splits"),
            0.0,
            "{key}"
        );
    }
    // Unique and hyphenated chemicals, recounted from the split completions.
    let out = medtune(
        work.path(),
        &[
            "query",
            "SELECT completion FROM split WHERE task = 'chemicals'",
            "--format",
            "json",
        ],
    )
    .expect(0)
    .stdout;
    let completions: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let entities: HashSet<String> = completions
        .iter()
        .flat_map(|r| {
            r["completion"]
                .as_str()
                .unwrap()
                .lines()
                .filter_map(|l| l.strip_prefix("- ").map(str::to_string))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        figure(&p, "entities", "chemicals", "unique"),
        entities.len() as f64
    );
    let hyphenated = entities.iter().filter(|e| e.contains('-')).count();
    assert!(hyphenated > 0);
    assert_eq!(
        figure(&p, "entities", "chemicals", "hyphenated"),
        hyphenated as f64
    );
    let (min, median, max) = (
        figure(&p, "prompt_chars", "chemicals", "min"),
        figure(&p, "prompt_chars", "chemicals", "median"),
        figure(&p, "prompt_chars", "chemicals", "max"),
    );
    assert!(
        0.0 < min && min <= median && median <= max,
        "{min} {median} {max}"
    );
    assert!(figure(&p, "vocabulary", "prompts", "types") > 1000.0);
}

#[test]
fn bc5cdr_profile_counts_tags_and_entity_spans() {
    let work = tempfile::tempdir().unwrap();
    let p = profile(work.path(), "configs/bc5cdr.toml");
    let tags = query_csv(
        work.path(),
        "SELECT t, count(*) AS n FROM (SELECT unnest(tags) AS t FROM split) GROUP BY t ORDER BY t",
    );
    for line in tags.lines().skip(1) {
        let (tag, n) = line.split_once(',').unwrap();
        assert_eq!(
            figure(&p, "bio_tags", tag, "tokens"),
            n.parse::<f64>().unwrap(),
            "{tag}"
        );
    }
    // Every B- tag starts one entity mention.
    let b_chemical = figure(&p, "bio_tags", "B-Chemical", "tokens");
    assert_eq!(figure(&p, "entities", "Chemical", "mentions"), b_chemical);
    assert!(figure(&p, "entities", "Disease", "unique") > 1000.0);
}
