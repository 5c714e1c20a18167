//! Ingest of the real data files, end to end through the binary, checked with SQL.

mod common;

use common::*;

#[test]
fn chemprot_ingests_3000_rows_1000_per_task_999_articles() {
    let work = tempfile::tempdir().unwrap();
    let config = repo().join("configs/chemprot.toml");
    let run = medtune(work.path(), &["run", "--config", config.to_str().unwrap()]).expect(0);
    assert!(
        run.stdout
            .contains("ingest: 3000 rows in = 3000 kept + 0 dropped"),
        "{}",
        run.stdout
    );
    assert_eq!(
        query_csv(
            work.path(),
            "SELECT task, count(*) AS n FROM ingested GROUP BY task ORDER BY task"
        ),
        "task,n\nchemicals,1000\ndiseases,1000\ninfluences,1000\n"
    );
    // Each article appears under up to three tasks and shares one group key across them.
    assert_eq!(
        query_csv(
            work.path(),
            "SELECT count(DISTINCT group_key) AS articles FROM ingested"
        ),
        "articles\n999\n"
    );
    assert_eq!(
        query_csv(
            work.path(),
            "SELECT count(*) AS n FROM rejects WHERE stage = 'ingest'"
        ),
        "n\n0\n"
    );
    // Ids are stable and unique; lines match the file's line numbers.
    assert_eq!(
        query_csv(
            work.path(),
            "SELECT id, line FROM ingested WHERE line = 3000"
        ),
        "id,line\nboth_rel_instruct_raw.jsonl:3000,3000\n"
    );
    assert_eq!(
        query_csv(work.path(), "SELECT count(DISTINCT id) AS n FROM ingested"),
        "n\n3000\n"
    );
}

#[test]
fn chatdoctor5k_json_array_ingests_5452_rows_with_alpaca_columns() {
    let work = tempfile::tempdir().unwrap();
    let config = repo().join("configs/healthcaremagic.toml");
    medtune(work.path(), &["run", "--config", config.to_str().unwrap()]).expect(0);
    assert_eq!(
        query_csv(
            work.path(),
            "SELECT count(*) AS n, count(DISTINCT instruction) AS instructions, \
             sum(CASE WHEN completion IS NULL THEN 1 ELSE 0 END) AS no_output FROM ingested"
        ),
        "n,instructions,no_output\n5452,1,0\n"
    );
    // The completion is the alpaca `output`; the prompt is instruction + blank line + input.
    let expected: serde_json::Value = serde_json::from_slice(
        &std::fs::read(shared_data("chatdoctor/chatdoctor5k.json")).unwrap(),
    )
    .unwrap();
    let first = &expected[0];
    let json = medtune(
        work.path(),
        &[
            "query",
            "SELECT prompt, completion, input FROM ingested ORDER BY line LIMIT 1",
            "--format",
            "json",
        ],
    )
    .expect(0)
    .stdout;
    let got: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(got[0]["completion"], first["output"]);
    assert_eq!(got[0]["input"], first["input"]);
    assert_eq!(
        got[0]["prompt"].as_str().unwrap(),
        format!(
            "{}\n\n{}",
            first["instruction"].as_str().unwrap(),
            first["input"].as_str().unwrap()
        )
    );
}

/// Sentences and tag counts of a CoNLL file, counted independently of medtune.
fn conll_counts(text: &str) -> (usize, std::collections::BTreeMap<String, usize>) {
    let mut tags = std::collections::BTreeMap::new();
    let mut sentences = 0;
    let mut in_sentence = false;
    for line in text.lines() {
        if line.trim().is_empty() {
            in_sentence = false;
            continue;
        }
        if !in_sentence {
            sentences += 1;
            in_sentence = true;
        }
        *tags
            .entry(line.rsplit('\t').next().unwrap().to_string())
            .or_default() += 1;
    }
    (sentences, tags)
}

#[test]
fn bc5cdr_train_sentences_and_tag_counts_match_the_file() {
    let work = tempfile::tempdir().unwrap();
    let train = shared_data("bc5cdr/train.tsv");
    let (sentences, tags) = conll_counts(&std::fs::read_to_string(&train).unwrap());
    // The figures the data README states.
    assert_eq!(tags["O"], 103_967);
    assert_eq!(tags["B-Chemical"], 5_203);
    assert_eq!(tags["I-Chemical"], 1_900);
    assert_eq!(tags["B-Disease"], 4_182);
    assert_eq!(tags["I-Disease"], 2_918);
    let config = write_config(work.path(), "conll", &[train], "");
    medtune(work.path(), &["run", "--config", config.to_str().unwrap()]).expect(0);
    assert_eq!(
        query_csv(work.path(), "SELECT count(*) AS n FROM ingested"),
        format!("n\n{sentences}\n")
    );
    let got = query_csv(
        work.path(),
        "SELECT tag, count(*) AS n FROM (SELECT unnest(tags) AS tag FROM ingested) GROUP BY tag ORDER BY tag",
    );
    let want: String = std::iter::once("tag,n\n".to_string())
        .chain(tags.iter().map(|(t, n)| format!("{t},{n}\n")))
        .collect();
    assert_eq!(got, want);
    // Every sentence has as many tags as words.
    assert_eq!(
        query_csv(
            work.path(),
            "SELECT count(*) AS n FROM ingested WHERE array_length(words) <> array_length(tags)"
        ),
        "n\n0\n"
    );
}

#[test]
fn bc5cdr_config_reads_all_three_files() {
    let work = tempfile::tempdir().unwrap();
    let config = repo().join("configs/bc5cdr.toml");
    medtune(work.path(), &["run", "--config", config.to_str().unwrap()]).expect(0);
    let mut want = String::from("source,n\n");
    for file in ["devel", "test", "train"] {
        let text = std::fs::read_to_string(shared_data(&format!("bc5cdr/{file}.tsv"))).unwrap();
        want.push_str(&format!("{file}.tsv,{}\n", conll_counts(&text).0));
    }
    assert_eq!(
        query_csv(
            work.path(),
            "SELECT split_part(id, ':', 1) AS source, count(*) AS n FROM ingested GROUP BY source ORDER BY source"
        ),
        want
    );
}

#[test]
fn bio_json_sample_ingests_with_document_groups() {
    let work = tempfile::tempdir().unwrap();
    let config = write_config(
        work.path(),
        "bio_json",
        &[repo().join("data/samples/bio.jsonl")],
        "",
    );
    medtune(work.path(), &["run", "--config", config.to_str().unwrap()]).expect(0);
    assert_eq!(
        query_csv(
            work.path(),
            "SELECT count(*) AS n, count(DISTINCT group_key) AS g, min(task) AS t FROM ingested"
        ),
        "n,g,t\n20,20,ner\n"
    );
}
