//! A benchmark's own splits (issue 20): `configs/bc5cdr.toml` takes each row's split from the
//! file it was read from, reports the sentences shared across those splits (kept, or dropped
//! from the later split), and says that the CoNLL files mark no documents. Checked on the real
//! BC5CDR files, against counts the test makes from the files itself.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use common::*;

const FILES: [(&str, &str); 3] = [
    ("train.tsv", "train"),
    ("devel.tsv", "validation"),
    ("test.tsv", "test"),
];

/// Each sentence of a BC5CDR file, as its words.
fn sentences(file: &str) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(shared_data(&format!("bc5cdr/{file}"))).unwrap();
    let mut out = Vec::new();
    let mut words = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !words.is_empty() {
                out.push(std::mem::take(&mut words));
            }
        } else {
            words.push(line.split('\t').next().unwrap().trim().to_string());
        }
    }
    if !words.is_empty() {
        out.push(words);
    }
    out
}

/// The sentences of each split (in split order) whose words, lower-cased, also make a sentence
/// of an earlier split: what the stage must report as text leaks. (NFKC, which the stage also
/// applies, changes no BC5CDR sentence's match.)
fn expected_text_leaks() -> Vec<usize> {
    let mut earlier: HashSet<String> = HashSet::new();
    let mut leaks = Vec::new();
    for (file, _) in FILES {
        let keys: Vec<String> = sentences(file)
            .iter()
            .map(|w| w.join(" ").to_lowercase())
            .collect();
        leaks.push(keys.iter().filter(|k| earlier.contains(*k)).count());
        earlier.extend(keys);
    }
    leaks
}

/// configs/bc5cdr.toml with absolute paths and `edit` applied.
fn bc5cdr_config(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let path = dir.join("bc5cdr.toml");
    std::fs::write(&path, edit(bundled_config("bc5cdr.toml"))).unwrap();
    path
}

fn run_split(work: &Path, config: &Path) -> Run {
    medtune(
        work,
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--stage",
            "split",
        ],
    )
    .expect(0)
}

fn count_of(csv: &str) -> u64 {
    csv.lines().nth(1).unwrap().parse().unwrap()
}

#[test]
fn every_bc5cdr_row_lands_in_its_files_split_and_cross_split_repeats_are_counted_exactly() {
    let work = tempfile::tempdir().unwrap();
    let config = bc5cdr_config(work.path(), |t| t);
    let run = run_split(work.path(), &config);

    // The files mark no documents: one warning per file, naming it.
    let output = format!("{}{}", run.stdout, run.stderr);
    for (file, _) in FILES {
        let warning = format!("bc5cdr/{file}: no document boundaries (`-DOCSTART-` lines)");
        assert_eq!(output.matches(&warning).count(), 1, "{warning}\n{output}");
    }

    // Every row's split is its file's, and every sentence of every file is there.
    let per_file = query_csv(
        work.path(),
        "SELECT source_file, split, count(*) AS n FROM split GROUP BY source_file, split",
    );
    let rows: Vec<Vec<&str>> = per_file
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), 3, "one split per file:\n{per_file}");
    for (file, split) in FILES {
        let row = rows
            .iter()
            .find(|r| r[0].ends_with(&format!("bc5cdr/{file}")))
            .unwrap_or_else(|| panic!("no rows from {file}:\n{per_file}"));
        assert_eq!(row[1], split, "{file}");
        assert_eq!(
            row[2].parse::<usize>().unwrap(),
            sentences(file).len(),
            "{file}"
        );
    }

    // The text leaks, counted from the files: in the manifest's counts and in `split_leaks`.
    let expected = expected_text_leaks();
    let total: usize = expected.iter().sum();
    assert!(total > 0, "BC5CDR repeats sentences across its files");
    assert!(
        run.stdout.contains(&format!("leaks_text {total}")),
        "leaks_text {total}:\n{}",
        run.stdout
    );
    for ((_, split), n) in FILES.iter().zip(&expected) {
        let listed = query_csv(
            work.path(),
            &format!(
                "SELECT count(*) FROM split_leaks WHERE leak = 'text' AND split = '{split}' \
                 AND NOT dropped"
            ),
        );
        assert_eq!(count_of(&listed), *n as u64, "{split}");
    }
    // Each listed pair names a row of an earlier split with the same words.
    let rank =
        |c: &str| format!("CASE {c} WHEN 'train' THEN 0 WHEN 'validation' THEN 1 ELSE 2 END");
    let bad_pairs = query_csv(
        work.path(),
        &format!(
            "SELECT count(*) FROM split_leaks l \
             JOIN split a ON a.id = l.id JOIN split b ON b.id = l.earlier_id \
             WHERE l.leak = 'text' AND (lower(array_to_string(a.words, ' ')) \
               <> lower(array_to_string(b.words, ' ')) OR a.split <> l.split \
               OR b.split <> l.earlier_split OR {} >= {})",
            rank("l.earlier_split"),
            rank("l.split")
        ),
    );
    assert_eq!(count_of(&bad_pairs), 0);
    // Kept: nothing in the rejects.
    assert_eq!(
        count_of(&query_csv(
            work.path(),
            "SELECT count(*) FROM split_rejects"
        )),
        0
    );
}

#[test]
fn leaks_drop_removes_the_later_copies_with_a_reason_and_leaves_no_text_in_two_splits() {
    let work = tempfile::tempdir().unwrap();
    let config = bc5cdr_config(work.path(), |t| {
        t.replace("leaks = \"keep\"", "leaks = \"drop\"")
    });
    let run = run_split(work.path(), &config);
    let expected: usize = expected_text_leaks().iter().sum();
    let all: usize = FILES.iter().map(|(f, _)| sentences(f).len()).sum();
    assert!(
        run.stdout.contains(&format!(
            "split: {all} rows in = {} kept + {expected} dropped",
            all - expected
        )),
        "{}",
        run.stdout
    );
    let rejects = query_rows(
        work.path(),
        "SELECT r.reason, r.duplicate_of, s.split FROM split_rejects r \
         JOIN split s ON s.id = r.duplicate_of",
    );
    assert_eq!(rejects.len(), expected);
    assert!(rejects
        .iter()
        .all(|r| r["reason"] == "leak_text" && r["split"] != "test"));
    let shared = query_csv(
        work.path(),
        "SELECT count(*) FROM (SELECT lower(array_to_string(words, ' ')) AS t \
         FROM split GROUP BY t HAVING count(DISTINCT split) > 1)",
    );
    assert_eq!(count_of(&shared), 0, "a text is still in two splits");
}

#[test]
fn a_file_the_map_names_that_is_not_an_input_is_exit_2_naming_it() {
    let work = tempfile::tempdir().unwrap();
    let config = bc5cdr_config(work.path(), |t| {
        t.replace(
            "\"devel.tsv\" = \"validation\"",
            "\"dev.tsv\" = \"validation\"",
        )
    });
    let run = medtune(
        work.path(),
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--stage",
            "split",
        ],
    )
    .expect(2);
    assert!(
        run.stderr
            .contains("`dev.tsv` is not an input file of [ingest]")
            && run.stderr.contains("bc5cdr.toml"),
        "{}",
        run.stderr
    );
    // Nothing ran: the config is checked before any stage.
    assert!(!run.stdout.contains("ingest:"), "{}", run.stdout);
    // An input the map leaves out is exit 2 too, naming the input.
    let config = bc5cdr_config(work.path(), |t| t.replace(", \"test.tsv\" = \"test\"", ""));
    let run = medtune(work.path(), &["run", "--config", config.to_str().unwrap()]).expect(2);
    assert!(
        run.stderr.contains("bc5cdr/test.tsv` has no split"),
        "{}",
        run.stderr
    );
}

#[test]
fn documents_marked_by_doc_id_comments_stay_in_one_split() {
    // Two abstracts of real BC5CDR sentences, each behind a `# doc_id` comment; drawn splits.
    let work = tempfile::tempdir().unwrap();
    let train = sentences("train.tsv");
    let mut text = String::new();
    let mut doc_of: HashMap<String, usize> = HashMap::new();
    for (doc, chunk) in train.chunks(300).take(8).enumerate() {
        text.push_str(&format!("# doc_id = PMID{doc}\n"));
        for words in chunk {
            if doc_of.contains_key(&words.join(" ")) {
                continue; // a repeated sentence would join its two documents
            }
            for w in words {
                text.push_str(&format!("{w}\tO\n"));
            }
            text.push('\n');
            doc_of.insert(words.join(" "), doc);
        }
    }
    let input = work.path().join("docs.tsv");
    std::fs::write(&input, text).unwrap();
    let extra = "documents = \"comment\"\n[dedup]\ncolumns = [\"words\"]\naction = \"keep\"\n\
                 [split]\ntext_columns = [\"words\"]\nstratify = [\"entity_types\"]\n";
    let config = write_config(work.path(), "conll", &[input], extra);
    let run = medtune(work.path(), &["run", "--config", config.to_str().unwrap()]).expect(0);
    assert!(
        !format!("{}{}", run.stdout, run.stderr).contains("no document boundaries"),
        "{}",
        run.stdout
    );
    let rows = query_rows(
        work.path(),
        "SELECT array_to_string(words, ' ') AS text, group_key, split FROM split",
    );
    let mut split_of_doc: HashMap<usize, HashSet<String>> = HashMap::new();
    for row in &rows {
        let doc = doc_of[row["text"].as_str().unwrap()];
        assert!(
            row["group_key"]
                .as_str()
                .unwrap()
                .ends_with(&format!(":PMID{doc}")),
            "{row}"
        );
        split_of_doc
            .entry(doc)
            .or_default()
            .insert(row["split"].as_str().unwrap().to_string());
    }
    assert_eq!(split_of_doc.len(), 8);
    assert!(
        split_of_doc.values().all(|s| s.len() == 1),
        "{split_of_doc:?}"
    );
}
