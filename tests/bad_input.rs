//! Bad input: each fixture in data/bad yields the right reject reason and line, nothing panics,
//! and rows in = kept + rejected. Files that are missing, empty or not the declared format are
//! clear errors with exit code 2.

mod common;

use common::*;

/// Runs one fixture and returns (summary stdout, rejects as `line,reason` CSV rows).
fn ingest(format: &str, fixture_name: &str, extra: &str) -> (String, String) {
    let work = tempfile::tempdir().unwrap();
    let config = write_config(work.path(), format, &[fixture(fixture_name)], extra);
    let run = medtune(work.path(), &["run", "--config", config.to_str().unwrap()]).expect(0);
    let rejects = query_csv(
        work.path(),
        "SELECT line, reason, source_file FROM rejects ORDER BY line",
    );
    let kept = query_csv(work.path(), "SELECT count(*) AS n FROM ingested");
    (format!("{}{kept}", run.stdout), rejects)
}

fn assert_rejects(
    format: &str,
    fixture_name: &str,
    extra: &str,
    rows_in: u64,
    rejects: &[(u64, &str)],
) {
    let (summary, got) = ingest(format, fixture_name, extra);
    let kept = rows_in - rejects.len() as u64;
    assert!(
        summary.contains(&format!(
            "ingest: {rows_in} rows in = {kept} kept + {} dropped",
            rejects.len()
        )),
        "{fixture_name}: {summary}"
    );
    let path = fixture(fixture_name).display().to_string();
    let want: String = std::iter::once("line,reason,source_file\n".to_string())
        .chain(
            rejects
                .iter()
                .map(|(line, reason)| format!("{line},{reason},{path}\n")),
        )
        .collect();
    assert_eq!(got, want, "{fixture_name}");
}

#[test]
fn malformed_json_is_rejected_at_its_line() {
    assert_rejects(
        "prompt_completion",
        "malformed_json.jsonl",
        "",
        3,
        &[(2, "malformed_json")],
    );
}

#[test]
fn a_missing_field_is_rejected() {
    assert_rejects(
        "prompt_completion",
        "missing_field.jsonl",
        "",
        3,
        &[(2, "missing_field")],
    );
}

#[test]
fn a_mistyped_field_is_rejected() {
    assert_rejects(
        "prompt_completion",
        "wrong_type.jsonl",
        "",
        3,
        &[(3, "wrong_type")],
    );
}

#[test]
fn invalid_utf8_is_rejected_and_the_raw_text_kept_lossily() {
    assert_rejects(
        "prompt_completion",
        "invalid_utf8.jsonl",
        "",
        3,
        &[(2, "invalid_utf8")],
    );
    let work = tempfile::tempdir().unwrap();
    let config = write_config(
        work.path(),
        "prompt_completion",
        &[fixture("invalid_utf8.jsonl")],
        "",
    );
    medtune(work.path(), &["run", "--config", config.to_str().unwrap()]).expect(0);
    let raw = query_csv(work.path(), "SELECT raw FROM rejects");
    assert!(raw.contains("caf\u{FFFD} \u{FFFD}"), "{raw}");
}

#[test]
fn a_truncated_json_array_rejects_the_partial_record() {
    assert_rejects("alpaca", "truncated.json", "", 3, &[(12, "truncated")]);
}

#[test]
fn data_after_a_json_array_is_rejected() {
    assert_rejects(
        "alpaca",
        "trailing_data.json",
        "",
        3,
        &[(13, "trailing_data")],
    );
}

#[test]
fn bio_word_tag_count_mismatch_is_rejected() {
    assert_rejects(
        "bio_json",
        "word_tag_mismatch.jsonl",
        "",
        3,
        &[(2, "word_tag_mismatch")],
    );
}

#[test]
fn an_invalid_bio_tag_is_rejected() {
    assert_rejects(
        "bio_json",
        "invalid_tag.jsonl",
        "",
        3,
        &[(2, "invalid_tag")],
    );
}

#[test]
fn i_after_o_is_rejected_or_repaired_as_configured() {
    assert_rejects(
        "bio_json",
        "i_after_o.jsonl",
        "",
        3,
        &[(2, "invalid_bio_sequence")],
    );
    let (summary, rejects) = ingest(
        "bio_json",
        "i_after_o.jsonl",
        "[ingest.bio]\ninvalid_continuation = \"repair\"",
    );
    assert!(
        summary.contains("3 rows in = 3 kept + 0 dropped; bio_tags_repaired 1"),
        "{summary}"
    );
    assert_eq!(rejects, "line,reason,source_file\n");
}

#[test]
fn a_conll_line_without_a_tab_rejects_its_sentence() {
    assert_rejects(
        "conll",
        "malformed_line.tsv",
        "",
        3,
        &[(4, "malformed_line")],
    );
}

#[test]
fn an_entity_type_outside_the_configured_list_is_rejected() {
    assert_rejects(
        "conll",
        "unknown_entity_type.tsv",
        "[ingest.bio]\nentity_types = [\"Chemical\", \"Disease\"]",
        3,
        &[(3, "unknown_entity_type")],
    );
}

#[test]
fn a_trailing_comma_is_rejected_at_its_line_and_the_elements_kept() {
    assert_rejects(
        "alpaca",
        "trailing_comma.json",
        "",
        4,
        &[(16, "malformed_json")],
    );
    let (_, detail) = query_one(
        "alpaca",
        "trailing_comma.json",
        "SELECT detail FROM rejects",
    );
    assert_eq!(detail, "detail\ntrailing comma before `]`\n");
}

#[test]
fn a_repeated_key_is_rejected_as_duplicate_key_naming_it() {
    assert_rejects(
        "alpaca",
        "duplicate_key.jsonl",
        "",
        3,
        &[(2, "duplicate_key")],
    );
    let (_, detail) = query_one(
        "alpaca",
        "duplicate_key.jsonl",
        "SELECT detail FROM rejects",
    );
    assert!(detail.contains("duplicate key `input`"), "{detail}");
}

#[test]
fn a_byte_order_mark_is_not_part_of_the_first_word() {
    assert_rejects("conll", "bom.tsv", "", 3, &[]);
    let (_, words) = query_one(
        "conll",
        "bom.tsv",
        "SELECT prompt FROM ingested WHERE line = 1",
    );
    assert_eq!(words, "prompt\nAspirin caused\n");
    // JSON lines and arrays with a BOM read the same as without.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read(fixture("duplicate_key.jsonl")).unwrap();
    let first = text.split(|&b| b == b'\n').next().unwrap();
    for (name, body) in [
        ("bom.jsonl", first.to_vec()),
        ("bom.json", [b"[", first, b"]"].concat()),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, [b"\xEF\xBB\xBF".as_slice(), &body].concat()).unwrap();
        let config = write_config(dir.path(), "alpaca", std::slice::from_ref(&path), "");
        let run = medtune(dir.path(), &["run", "--config", config.to_str().unwrap()]).expect(0);
        assert!(
            run.stdout.contains("1 rows in = 1 kept + 0 dropped"),
            "{name}: {}",
            run.stdout
        );
    }
}

#[test]
fn a_conll_line_with_three_columns_rejects_its_sentence() {
    assert_rejects(
        "conll",
        "three_columns.tsv",
        "",
        3,
        &[(4, "malformed_line")],
    );
    let (_, detail) = query_one("conll", "three_columns.tsv", "SELECT detail FROM rejects");
    assert!(detail.contains("found 3 columns"), "{detail}");
}

/// Ingests one fixture and returns (run stdout, the CSV of `sql`).
fn query_one(format: &str, fixture_name: &str, sql: &str) -> (String, String) {
    let work = tempfile::tempdir().unwrap();
    let config = write_config(work.path(), format, &[fixture(fixture_name)], "");
    let run = medtune(work.path(), &["run", "--config", config.to_str().unwrap()]).expect(0);
    (run.stdout, query_csv(work.path(), sql))
}

fn expect_input_error(format: &str, input: std::path::PathBuf, message: &str) {
    let work = tempfile::tempdir().unwrap();
    let config = write_config(work.path(), format, std::slice::from_ref(&input), "");
    let run = medtune(work.path(), &["run", "--config", config.to_str().unwrap()]).expect(2);
    let name = input.file_name().unwrap().to_string_lossy().into_owned();
    assert!(run.stderr.contains(&name), "{}", run.stderr);
    assert!(run.stderr.contains(message), "{}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
}

#[test]
fn missing_empty_and_wrong_format_files_exit_with_code_2() {
    expect_input_error(
        "prompt_completion",
        fixture("no_such_file.jsonl"),
        "not found",
    );
    expect_input_error(
        "prompt_completion",
        fixture("empty.jsonl"),
        "the file is empty",
    );
    expect_input_error("prompt_completion", fixture("not_json.jsonl"), "not JSON");
    expect_input_error("conll", fixture("not_conll.tsv"), "not a CoNLL file");
    // JSON of the wrong shape: every record rejected means the format is wrong.
    expect_input_error(
        "prompt_completion",
        shared_data("chatdoctor/chatdoctor5k.json"),
        "no record parsed as format `prompt_completion`",
    );
}

#[test]
fn an_input_that_cannot_be_read_exits_with_code_2_naming_the_os_error() {
    // A regular file whose reads fail, even for root (tests may run as root, for whom
    // permissions stop nothing): /proc/self/mem, which has nothing mapped at its start.
    expect_input_error(
        "prompt_completion",
        std::path::PathBuf::from("/proc/self/mem"),
        "Input/output error",
    );
    // A copy with no permissions, where they stop reads (not for root).
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("unreadable.jsonl");
    std::fs::copy(fixture("wrong_type.jsonl"), &copy).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::File::open(&copy).is_err() {
        expect_input_error("prompt_completion", copy, "Permission denied");
    }
}

#[test]
fn config_errors_name_the_file_and_key_and_exit_with_code_2() {
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("bad.toml");
    std::fs::write(&config, "[ingest]\nformat = \"csv\"\ninputs = [\"x\"]\n").unwrap();
    let run = medtune(work.path(), &["run", "--config", config.to_str().unwrap()]).expect(2);
    assert!(
        run.stderr.contains("bad.toml") && run.stderr.contains("csv"),
        "{}",
        run.stderr
    );
    std::fs::write(
        &config,
        "[ingest]\nformat = \"conll\"\ninputs = [\"x\"]\n[tokenise]\n",
    )
    .unwrap();
    let run = medtune(work.path(), &["run", "--config", config.to_str().unwrap()]).expect(2);
    assert!(
        run.stderr.contains("unknown stage section [tokenise]"),
        "{}",
        run.stderr
    );
    let run = medtune(work.path(), &["run", "--config", "/nonexistent.toml"]).expect(2);
    assert!(run.stderr.contains("/nonexistent.toml"), "{}", run.stderr);
}
