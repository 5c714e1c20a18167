//! The data-quality chain (dedup → convert → clean → split) on the real files, end to end
//! through the binary, checked with SQL against facts the tests derive independently.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;

use common::*;

/// Lower-cases and folds whitespace: the README's notion of "distinct prompt".
fn fold(text: &str) -> String {
    text.split_whitespace()
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

fn chemprot_rows() -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(shared_data("chemprot/both_rel_instruct_raw.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["prompt"].as_str().unwrap().to_string(),
                v["completion"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The article of a ChemProt prompt, derived here independently: the paragraphs between the
/// task instruction and the closing `List of extracted ...:` line, whitespace-folded.
fn article(prompt: &str) -> String {
    let paragraphs: Vec<&str> = prompt.trim().split("\n\n").collect();
    assert!(
        paragraphs.len() >= 3,
        "unexpected prompt shape: {prompt:.80}"
    );
    assert!(paragraphs[paragraphs.len() - 1].starts_with("List of extracted"));
    fold(&paragraphs[1..paragraphs.len() - 1].join("\n\n"))
}

fn run_config(work: &Path, config: &str, extra_args: &[&str]) -> Run {
    let config = repo().join(config);
    let mut args = vec!["run", "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra_args);
    medtune(work, &args).expect(0)
}

fn csv_rows(csv: &str) -> Vec<Vec<String>> {
    // Simple CSV: these queries select columns without commas, quotes or newlines.
    csv.lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

/// Reads `SELECT id, <col> FROM split` as id -> value, through JSON (values may hold newlines).
fn query_map(work: &Path, sql: &str) -> BTreeMap<String, String> {
    let out = medtune(work, &["query", sql, "--format", "json"])
        .expect(0)
        .stdout;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    rows.into_iter()
        .map(|r| {
            let r = r.as_object().unwrap();
            let value = r.iter().find(|(k, _)| k.as_str() != "id").map(|(_, v)| v);
            (
                r["id"].as_str().unwrap().to_string(),
                value.and_then(|v| v.as_str()).unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn chemprot_chain_dedups_converts_cleans_and_splits_by_article() {
    let rows = chemprot_rows();
    // Facts derived here from the raw file.
    let mut first: HashMap<String, usize> = HashMap::new();
    let mut duplicates = 0;
    let mut empty_after_dedup = 0;
    for (i, (prompt, completion)) in rows.iter().enumerate() {
        if let std::collections::hash_map::Entry::Vacant(slot) = first.entry(fold(prompt)) {
            slot.insert(i);
            if completion
                .lines()
                .all(|l| l.trim().trim_start_matches('-').trim().is_empty())
            {
                empty_after_dedup += 1;
            }
        } else {
            duplicates += 1;
        }
    }
    assert_eq!(
        duplicates, 268,
        "the README's count of exact duplicate prompts"
    );
    assert_eq!(
        empty_after_dedup, 6,
        "the README's count of empty completions"
    );

    let work = tempfile::tempdir().unwrap();
    let run = run_config(work.path(), "configs/chemprot.toml", &[]);
    let kept = 3000 - duplicates - empty_after_dedup;
    for line in [
        "ingest: 3000 rows in = 3000 kept + 0 dropped".to_string(),
        format!(
            "dedup: 3000 rows in = {} kept + {duplicates} dropped",
            3000 - duplicates
        ),
        format!(
            "clean: {} rows in = {kept} kept + {empty_after_dedup} dropped",
            3000 - duplicates
        ),
        format!("split: {kept} rows in = {kept} kept + 0 dropped"),
    ] {
        assert!(
            run.stdout.contains(&line),
            "missing `{line}` in\n{}",
            run.stdout
        );
    }

    // Dedup dropped exactly the repeated prompts, each pointing at the first occurrence.
    let dropped = query_map(
        work.path(),
        "SELECT id, duplicate_of FROM rejects WHERE stage = 'dedup' AND reason = 'duplicate'",
    );
    assert_eq!(dropped.len(), duplicates);
    for (id, of) in &dropped {
        // Ids are `file:record`: the record's 1-based number in the file.
        let index = |id: &str| id.rsplit(':').next().unwrap().parse::<usize>().unwrap() - 1;
        assert_eq!(
            first[&fold(&rows[index(id)].0)],
            index(of),
            "{id} duplicates {of}"
        );
    }
    // "Which articles were dropped as duplicates, and why" from the datasets alone.
    let why = query_csv(
        work.path(),
        "SELECT count(*) AS n, count(DISTINCT i.group_key) AS articles FROM rejects r \
         JOIN ingested i ON r.id = i.id WHERE r.stage = 'dedup' AND r.detail LIKE 'same normalised prompt as %'",
    );
    assert!(
        why.starts_with(&format!("n,articles\n{duplicates},")),
        "{why}"
    );

    // Clean removed the empty completions, with that reason.
    assert_eq!(
        query_csv(
            work.path(),
            "SELECT reason, count(*) AS n FROM rejects WHERE stage = 'clean' GROUP BY reason"
        ),
        format!("reason,n\nempty_completion,{empty_after_dedup}\n")
    );

    // Every relation line left is `- x | y`; entity lists are lower-case without repeats.
    let completions = query_map(
        work.path(),
        "SELECT id, completion FROM split WHERE task = 'influences'",
    );
    assert!(!completions.is_empty());
    for (id, completion) in &completions {
        for line in completion.lines() {
            let (x, y) = line
                .strip_prefix("- ")
                .and_then(|l| l.split_once(" | "))
                .unwrap_or_else(|| panic!("{id}: `{line}` is not `- x | y`"));
            assert!(
                !x.is_empty() && !y.is_empty() && !y.contains('|'),
                "{id}: {line}"
            );
        }
    }
    let entities = query_map(
        work.path(),
        "SELECT id, completion FROM split WHERE task <> 'influences'",
    );
    for (id, completion) in &entities {
        let items: Vec<&str> = completion.lines().collect();
        let distinct: HashSet<&&str> = items.iter().collect();
        assert_eq!(distinct.len(), items.len(), "{id} repeats an entity");
        assert_eq!(
            completion.to_lowercase(),
            *completion,
            "{id} is not lower-case"
        );
    }

    // No article in two splits — checked on the article text itself, not on the group key.
    let prompts = query_map(work.path(), "SELECT id, prompt FROM split");
    let splits = query_map(work.path(), "SELECT id, split FROM split");
    let mut split_of_article: HashMap<String, BTreeSet<String>> = HashMap::new();
    for (id, prompt) in &prompts {
        split_of_article
            .entry(article(prompt))
            .or_default()
            .insert(splits[id].clone());
    }
    let shared: Vec<_> = split_of_article.values().filter(|s| s.len() > 1).collect();
    assert!(shared.is_empty(), "{} articles in two splits", shared.len());
    // A plain row-level split of the same rows would share hundreds of articles.
    let mut naive: HashMap<String, BTreeSet<u64>> = HashMap::new();
    for (i, prompt) in prompts.values().enumerate() {
        let bucket = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60; // 0..16
        let s = if bucket < 13 {
            0
        } else if bucket < 15 {
            1
        } else {
            2
        };
        naive.entry(article(prompt)).or_default().insert(s);
    }
    let naive_shared = naive.values().filter(|s| s.len() > 1).count();
    assert!(
        naive_shared > 200,
        "a row-level split shares {naive_shared} articles"
    );

    // Per task, each split is within one group of its 80/10/10 target.
    let table = csv_rows(&query_csv(
        work.path(),
        "SELECT task, split, count(*) AS n FROM split GROUP BY task, split",
    ));
    let largest = csv_rows(&query_csv(
        work.path(),
        "SELECT task, max(n) AS m FROM (SELECT task, split_group, count(*) AS n FROM split \
         GROUP BY task, split_group) GROUP BY task",
    ));
    let largest: HashMap<String, f64> = largest
        .into_iter()
        .map(|r| (r[0].clone(), r[1].parse().unwrap()))
        .collect();
    let mut per_task: HashMap<String, HashMap<String, f64>> = HashMap::new();
    for r in table {
        per_task
            .entry(r[0].clone())
            .or_default()
            .insert(r[1].clone(), r[2].parse().unwrap());
    }
    assert_eq!(per_task.len(), 3);
    for (task, counts) in &per_task {
        let total: f64 = counts.values().sum();
        for (split, share) in [("train", 0.8), ("validation", 0.1), ("test", 0.1)] {
            let n = counts.get(split).copied().unwrap_or(0.0);
            assert!(
                (n - share * total).abs() <= largest[task],
                "{task}/{split}: {n} rows of {total}, target {}",
                share * total
            );
        }
    }

    // The same seed gives the same split; another seed another.
    let again = tempfile::tempdir().unwrap();
    run_config(again.path(), "configs/chemprot.toml", &[]);
    assert_eq!(
        query_map(again.path(), "SELECT id, split FROM split"),
        splits
    );
    let reseeded = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo().join("configs/chemprot.toml"))
        .unwrap()
        .replace("seed = 42", "seed = 7")
        .replace(
            "../../shared",
            &repo().join("../shared").display().to_string(),
        )
        .replace(
            "\"../models",
            &format!("\"{}", repo().join("models").display()),
        );
    let config = reseeded.path().join("chemprot-seed7.toml");
    std::fs::write(&config, text).unwrap();
    medtune(
        reseeded.path(),
        &["run", "--config", config.to_str().unwrap()],
    )
    .expect(0);
    let other = query_map(reseeded.path(), "SELECT id, split FROM split");
    assert_eq!(other.len(), splits.len());
    assert_ne!(other, splits);
}

#[test]
fn chatdoctor_chain_drops_the_six_repeated_questions() {
    let source: Vec<serde_json::Value> = serde_json::from_slice(
        &std::fs::read(shared_data("chatdoctor/chatdoctor5k.json")).unwrap(),
    )
    .unwrap();
    let mut seen = HashSet::new();
    let repeats = source
        .iter()
        .filter(|r| {
            let question = format!(
                "{}\n{}",
                r["instruction"].as_str().unwrap_or(""),
                r["input"].as_str().unwrap_or("")
            );
            !seen.insert(fold(&question))
        })
        .count();
    assert_eq!(repeats, 6, "the README's count of duplicate inputs");
    let work = tempfile::tempdir().unwrap();
    let run = run_config(work.path(), "configs/healthcaremagic.toml", &[]);
    assert!(
        run.stdout.contains(&format!(
            "dedup: 5452 rows in = {} kept + {repeats} dropped",
            5452 - repeats
        )),
        "{}",
        run.stdout
    );
    let splits = csv_rows(&query_csv(
        work.path(),
        "SELECT split, count(*) AS n FROM split GROUP BY split ORDER BY split",
    ));
    let total: f64 = splits.iter().map(|r| r[1].parse::<f64>().unwrap()).sum();
    assert!(total > 5400.0, "{splits:?}");
    for r in &splits {
        let share = match r[0].as_str() {
            "train" => 0.8,
            _ => 0.1,
        };
        let n: f64 = r[1].parse().unwrap();
        assert!((n / total - share).abs() < 0.01, "{splits:?}");
    }
}

#[test]
fn bc5cdr_chain_splits_sentences_stratified_by_entity_types() {
    let work = tempfile::tempdir().unwrap();
    let run = run_config(work.path(), "configs/bc5cdr-pooled.toml", &[]);
    assert!(run.stdout.contains("split: "), "{}", run.stdout);
    // Strata are the entity types a sentence holds; each is split 80/10/10.
    let out = medtune(
        work.path(),
        &["query", "SELECT tags, split FROM split", "--format", "json"],
    )
    .expect(0)
    .stdout;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let mut strata: HashMap<String, HashMap<String, f64>> = HashMap::new();
    for row in &rows {
        let mut types: Vec<&str> = row["tags"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t.as_str().unwrap().split_once('-').map(|(_, k)| k))
            .collect();
        types.sort_unstable();
        types.dedup();
        let split = row["split"].as_str().unwrap().to_string();
        *strata
            .entry(types.join("+"))
            .or_default()
            .entry(split)
            .or_default() += 1.0;
    }
    assert_eq!(strata.len(), 4, "{:?}", strata.keys());
    for (stratum, counts) in &strata {
        let total: f64 = counts.values().sum();
        for (split, share) in [("train", 0.8), ("validation", 0.1), ("test", 0.1)] {
            let n = counts.get(split).copied().unwrap_or(0.0);
            assert!(
                (n - share * total).abs() <= (0.01 * total).max(2.0),
                "{stratum}/{split}: {n} of {total}"
            );
        }
    }
    let leaks = query_csv(
        work.path(),
        "SELECT count(*) AS n FROM (SELECT array_to_string(words, ' ') AS w FROM split \
         GROUP BY w HAVING count(DISTINCT split) > 1)",
    );
    assert_eq!(leaks, "n\n0\n", "a sentence text in two splits");
    let dedup = query_csv(
        work.path(),
        "SELECT count(*) AS n FROM (SELECT lower(array_to_string(words, ' ')) AS w FROM ingested \
         GROUP BY w HAVING count(*) > 1)",
    );
    assert_ne!(
        dedup, "n\n0\n",
        "BC5CDR repeats some sentences; dedup must see them"
    );
    let after = query_csv(
        work.path(),
        "SELECT count(*) AS n FROM (SELECT lower(array_to_string(words, ' ')) AS w FROM deduped \
         GROUP BY w HAVING count(*) > 1)",
    );
    assert_eq!(after, "n\n0\n");
}

/// Writes prompt/completion JSONL rows and a config running the whole chain over them.
fn hand_made(dir: &Path, rows: &[(&str, &str)], extra: &str) -> std::path::PathBuf {
    let path = dir.join("hand.jsonl");
    let lines: Vec<String> = rows
        .iter()
        .map(|(p, c)| serde_json::json!({"prompt": p, "completion": c}).to_string())
        .collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    write_config(
        dir,
        "prompt_completion",
        &[path],
        &format!("[dedup]\n{extra}\n[convert]\n[clean]\n[split]\n"),
    )
}

fn words(n: usize, salt: &str) -> String {
    (0..n)
        .map(|i| format!("{salt}{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn dedup_normalises_unicode_case_and_whitespace_and_names_the_kept_row() {
    let work = tempfile::tempdir().unwrap();
    let config = hand_made(
        work.path(),
        &[
            ("The \u{FB01}brosis  case", "- Fibrosis"),
            ("the fibrosis case", "- fibrosis"),
            ("\u{FF34}\u{FF28}\u{FF25} fibrosis\tcase", "- fibrosis"),
            ("The fibrosis case.", "- fibrosis"),
            ("", "- x"),
            (" ", "- y"),
        ],
        "[dedup.near]\nenabled = false",
    );
    let run = medtune(work.path(), &["run", "--config", config.to_str().unwrap()]).expect(0);
    assert!(
        run.stdout.contains("dedup: 6 rows in = 4 kept + 2 dropped"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("clean: 4 rows in = 2 kept + 2 dropped"),
        "{}",
        run.stdout
    );
    assert_eq!(
        query_csv(
            work.path(),
            "SELECT stage, line, reason, duplicate_of FROM rejects ORDER BY stage, line"
        ),
        "stage,line,reason,duplicate_of\n\
         clean,5,empty_prompt,\n\
         clean,6,empty_prompt,\n\
         dedup,2,duplicate,hand.jsonl:1\n\
         dedup,3,duplicate,hand.jsonl:1\n"
    );
}

#[test]
fn near_duplicates_are_grouped_into_one_split_or_dropped() {
    let base = words(60, "w");
    let near = format!("{} changed", words(59, "w"));
    let mut rows: Vec<(String, String)> =
        vec![(base.clone(), "- a".into()), (near.clone(), "- b".into())];
    for i in 0..40 {
        rows.push((words(60, &format!("u{i}x")), "- c".into()));
    }
    let rows: Vec<(&str, &str)> = rows.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect();

    let grouped = tempfile::tempdir().unwrap();
    let config = hand_made(grouped.path(), &rows, "[dedup.near]\naction = \"group\"");
    medtune(
        grouped.path(),
        &["run", "--config", config.to_str().unwrap()],
    )
    .expect(0);
    assert_eq!(
        query_csv(grouped.path(), "SELECT cluster, id, matched_id FROM near_duplicates ORDER BY id"),
        "cluster,id,matched_id\nhand.jsonl:1,hand.jsonl:1,\nhand.jsonl:1,hand.jsonl:2,hand.jsonl:1\n"
    );
    assert_eq!(
        query_csv(
            grouped.path(),
            "SELECT count(DISTINCT split) AS n FROM split WHERE id IN ('hand.jsonl:1', 'hand.jsonl:2')"
        ),
        "n\n1\n"
    );

    let dropped = tempfile::tempdir().unwrap();
    let config = hand_made(dropped.path(), &rows, "[dedup.near]\naction = \"drop\"");
    medtune(
        dropped.path(),
        &["run", "--config", config.to_str().unwrap()],
    )
    .expect(0);
    assert_eq!(
        query_csv(
            dropped.path(),
            "SELECT id, reason, duplicate_of FROM rejects"
        ),
        "id,reason,duplicate_of\nhand.jsonl:2,near_duplicate,hand.jsonl:1\n"
    );
}
