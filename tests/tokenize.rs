//! The tokenize stage on the real files with the real all-MiniLM-L6-v2 tokenizer
//! (scripts/fetch-model.sh puts it in models/).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::*;

fn tokenizer_path() -> PathBuf {
    let path = repo().join("models/all-MiniLM-L6-v2/tokenizer.json");
    assert!(
        path.is_file(),
        "run scripts/fetch-model.sh first ({})",
        path.display()
    );
    path
}

fn json_rows(work: &Path, sql: &str) -> Vec<serde_json::Value> {
    let out = medtune(work, &["query", sql, "--format", "json"])
        .expect(0)
        .stdout;
    serde_json::from_str(&out).unwrap()
}

fn numbers(v: &serde_json::Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

/// Each split row's prompt and completion, by row id.
fn prompts_and_completions(work: &Path) -> HashMap<String, (String, String)> {
    json_rows(work, "SELECT id, prompt, completion FROM split")
        .iter()
        .map(|r| {
            let text = |c: &str| r[c].as_str().unwrap().to_string();
            (text("id"), (text("prompt"), text("completion")))
        })
        .collect()
}

#[test]
fn bc5cdr_first_sub_token_labels_decode_back_to_every_sentences_tags() {
    tokenizer_path();
    let work = tempfile::tempdir().unwrap();
    let config = repo().join("configs/bc5cdr.toml");
    let run = medtune(work.path(), &["run", "--config", config.to_str().unwrap()]).expect(0);
    assert!(run.stdout.contains("truncated_rows 0"), "{}", run.stdout);
    let labels: HashMap<i64, String> =
        json_rows(work.path(), "SELECT label_id, label FROM label_map")
            .iter()
            .map(|r| {
                (
                    r["label_id"].as_i64().unwrap(),
                    r["label"].as_str().unwrap().to_string(),
                )
            })
            .collect();
    assert_eq!(labels[&0], "O");
    let tags: HashMap<String, Vec<String>> = json_rows(work.path(), "SELECT id, tags FROM split")
        .iter()
        .map(|r| {
            let tags = r["tags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_string());
            (r["id"].as_str().unwrap().to_string(), tags.collect())
        })
        .collect();
    let tokenized = json_rows(work.path(), "SELECT id, labels, input_ids FROM tokenized");
    assert_eq!(tokenized.len(), tags.len(), "one sequence per sentence");
    for row in &tokenized {
        let id = row["id"].as_str().unwrap();
        let decoded: Vec<String> = numbers(&row["labels"])
            .into_iter()
            .filter(|&l| l != -100)
            .map(|l| labels[&l].clone())
            .collect();
        assert_eq!(decoded, tags[id], "{id}");
        let ids = numbers(&row["input_ids"]);
        let (cls, sep) = (101, 102);
        assert_eq!((ids[0], ids[ids.len() - 1]), (cls, sep), "{id}");
    }
}

#[test]
fn chemprot_sft_labels_mask_the_prompt_and_copy_the_completion() {
    let mut tokenizer = tokenizers::Tokenizer::from_file(tokenizer_path()).unwrap();
    // The file truncates and pads to 128 tokens; the stage switches both off, as does this check.
    tokenizer.with_truncation(None).unwrap();
    tokenizer.with_padding(None);
    let work = tempfile::tempdir().unwrap();
    let config = repo().join("configs/chemprot.toml");
    let run = medtune(work.path(), &["run", "--config", config.to_str().unwrap()]).expect(0);
    let truncated: u64 = run
        .stdout
        .lines()
        .find(|l| l.starts_with("tokenize:"))
        .and_then(|l| l.split("truncated_rows ").nth(1))
        .and_then(|n| n.split(|c: char| !c.is_ascii_digit()).next())
        .unwrap()
        .parse()
        .unwrap();
    let prompts = prompts_and_completions(work.path());
    let rows = json_rows(
        work.path(),
        "SELECT id, input_ids, labels, prompt_tokens, length FROM tokenized",
    );
    // A prompt that fills all 512 tokens leaves no completion token: such rows are rejected
    // as `no_labelled_tokens` (see the test below).
    let count = |text: &str| tokenizer.encode(text, false).unwrap().get_ids().len();
    let unlabelled = prompts
        .values()
        .filter(|(prompt, _)| 1 + count(prompt) >= 512)
        .count();
    assert_eq!(rows.len(), prompts.len() - unlabelled);
    let mut longer = 0;
    for row in &rows {
        let id = row["id"].as_str().unwrap();
        let (ids, labels) = (numbers(&row["input_ids"]), numbers(&row["labels"]));
        let p = row["prompt_tokens"].as_u64().unwrap() as usize;
        assert_eq!(ids.len(), labels.len());
        assert!(ids.len() <= 512);
        // The prompt boundary, recomputed here: [CLS] + the prompt's own tokens.
        let (prompt, completion) = &prompts[id];
        let own = count(prompt);
        assert_eq!(p, (1 + own).min(512), "{id}");
        let full = 1 + own + count(completion) + 1;
        assert!(
            labels[..p].iter().all(|&l| l == -100),
            "{id}: a prompt token is labelled"
        );
        assert_eq!(
            &labels[p..],
            &ids[p..],
            "{id}: completion labels differ from ids"
        );
        if full <= 512 {
            assert_eq!(ids.len(), full, "{id}");
            assert_eq!(ids[ids.len() - 1], 102, "{id}: no EOS ([SEP])");
        } else {
            assert_eq!(ids.len(), 512, "{id}");
            longer += 1;
        }
    }
    assert!(longer > 0, "some ChemProt rows exceed 512 tokens");
    assert_eq!(truncated, longer, "{}", run.stdout);
}

/// The SmolLM2-135M-Instruct GGUF (scripts/fetch-model.sh fetches it with MiniLM).
fn smollm2() -> PathBuf {
    let path = repo().join("models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "run scripts/fetch-model.sh first ({})",
        path.display()
    );
    path
}

#[test]
fn sft_with_a_gguf_tokenizer_renders_the_models_chat_template_and_masks_it() {
    let gguf = smollm2();
    let work = tempfile::tempdir().unwrap();
    let input = shared_data("chemprot/both_rel_instruct_raw.jsonl");
    let extra = format!(
        "[split]\n[tokenize]\ntokenizer = {:?}\nmode = \"sft\"\ntemplate = \"model\"\n\
         max_length = 4096\n",
        gguf.display().to_string()
    );
    let config = write_config(work.path(), "prompt_completion", &[input], &extra);
    let run = medtune(work.path(), &["run", "--config", config.to_str().unwrap()]).expect(0);
    assert!(run.stdout.contains("truncated_rows 0"), "{}", run.stdout);
    // The tokenizer the stage built from the file's metadata, to decode with.
    let tokenizer = medtune_qlora::gguf::GgufFile::open(&gguf)
        .unwrap()
        .tokenizer()
        .unwrap();
    let prompts = prompts_and_completions(work.path());
    let rows = json_rows(
        work.path(),
        "SELECT id, input_ids, labels, prompt_tokens FROM tokenized",
    );
    assert_eq!(rows.len(), prompts.len(), "every row keeps its completion");
    for row in &rows {
        let id = row["id"].as_str().unwrap();
        let (ids, labels) = (numbers(&row["input_ids"]), numbers(&row["labels"]));
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        let p = row["prompt_tokens"].as_u64().unwrap() as usize;
        let (prompt, completion) = &prompts[id];
        // SmolLM2's template, as transformers' apply_chat_template(add_generation_prompt=True)
        // renders one user message: its default system turn, the user turn, the assistant
        // header.
        let expected = format!(
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by \
             Hugging Face<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        assert_eq!(
            tokenizer.decode(&ids[..p], false).unwrap(),
            expected,
            "{id}"
        );
        assert_eq!(ids[0], 1, "{id}: the turn starts with <|im_start|>");
        assert!(labels[..p].iter().all(|&l| l == -100), "{id}");
        // The completion, then the model's EOS (<|im_end|> = 2), labelled.
        assert_eq!(*ids.last().unwrap(), 2, "{id}");
        assert_eq!(
            tokenizer.decode(&ids[p..ids.len() - 1], false).unwrap(),
            *completion,
            "{id}"
        );
        let tail: Vec<i64> = ids[p..].iter().map(|&i| i64::from(i)).collect();
        assert_eq!(labels[p..], tail[..], "{id}");
    }
}

#[test]
fn a_missing_or_bogus_tokenizer_is_a_clear_error() {
    let work = tempfile::tempdir().unwrap();
    let input = shared_data("chemprot/both_rel_instruct_raw.jsonl");
    for (path, message) in [
        (work.path().join("nope.json"), "not found"),
        (
            repo().join("models/all-MiniLM-L6-v2/config.json"),
            "not a Hugging Face tokenizer.json",
        ),
    ] {
        let extra = format!(
            "[split]\n[tokenize]\ntokenizer = {:?}\nmode = \"sft\"\n",
            path.display().to_string()
        );
        let config = write_config(
            work.path(),
            "prompt_completion",
            std::slice::from_ref(&input),
            &extra,
        );
        let run = medtune(work.path(), &["run", "--config", config.to_str().unwrap()]).expect(2);
        assert!(run.stderr.contains(message), "{}", run.stderr);
        assert!(
            run.stderr.contains(&path.display().to_string()),
            "{}",
            run.stderr
        );
    }
}

#[test]
fn windows_label_every_word_of_a_long_sentence() {
    let work = tempfile::tempdir().unwrap();
    let words: Vec<String> = (0..300).map(|i| format!("aspirin{i}")).collect();
    let tags: Vec<&str> = (0..300)
        .map(|i| if i % 7 == 0 { "B-Chemical" } else { "O" })
        .collect();
    let labels: Vec<serde_json::Value> = words
        .iter()
        .zip(&tags)
        .map(|(w, t)| serde_json::json!({"word": w, "entity": t}))
        .collect();
    let input = work.path().join("long.jsonl");
    std::fs::write(
        &input,
        serde_json::json!({"text": words.join(" "), "labels": labels}).to_string() + "\n",
    )
    .unwrap();
    let extra = format!(
        "[split]\nstratify = [\"entity_types\"]\ntext_columns = [\"words\"]\n\
         [tokenize]\ntokenizer = {:?}\nmode = \"token_classification\"\nmax_length = 64\n\
         overflow = \"window\"\nstride = 16\n",
        tokenizer_path().display().to_string()
    );
    let config = write_config(work.path(), "bio_json", &[input], &extra);
    medtune(work.path(), &["run", "--config", config.to_str().unwrap()]).expect(0);
    let rows = json_rows(
        work.path(),
        "SELECT window, labels, length FROM tokenized ORDER BY window",
    );
    assert!(rows.len() > 2, "{} windows", rows.len());
    assert!(rows.iter().all(|r| r["length"].as_u64().unwrap() <= 64));
    // Put each window back at its place: [CLS] + 62 content tokens + [SEP], windows starting
    // every 62 - 16 = 46 content tokens. Overlaps must agree, and the first-sub-token labels of
    // the reassembled sentence must be exactly its tags: every word labelled, none twice.
    let (budget, step) = (62, 46);
    let mut content: Vec<Option<i64>> = Vec::new();
    for (k, row) in rows.iter().enumerate() {
        let labels = numbers(&row["labels"]);
        let inner = &labels[1..labels.len() - 1];
        assert!(inner.len() <= budget);
        for (j, &label) in inner.iter().enumerate() {
            let pos = k * step + j;
            if content.len() <= pos {
                content.resize(pos + 1, None);
            }
            if let Some(seen) = content[pos] {
                assert_eq!(seen, label, "windows disagree at content token {pos}");
            }
            content[pos] = Some(label);
        }
    }
    let decoded: Vec<i64> = content
        .into_iter()
        .map(Option::unwrap)
        .filter(|&l| l != -100)
        .collect();
    // Label ids: 0 = O, 1 = B-Chemical.
    let expected: Vec<i64> = tags.iter().map(|&t| i64::from(t != "O")).collect();
    assert_eq!(decoded, expected);
}

/// ChemProt at `max_length = 128`: with the default right-hand truncation a prompt that fills
/// the whole length leaves no completion token, so the row is rejected as `no_labelled_tokens`
/// (in `rejects` and the funnel) instead of reaching training as a NaN loss; with
/// `truncation_side = "left"` the prompt gives up its start and every completion survives.
#[test]
fn rows_whose_completion_is_cut_away_are_rejected_or_kept_by_cutting_the_prompt() {
    let mut tokenizer = tokenizers::Tokenizer::from_file(tokenizer_path()).unwrap();
    tokenizer.with_truncation(None).unwrap();
    tokenizer.with_padding(None);
    let ids = |text: &str| -> Vec<i64> {
        let encoding = tokenizer.encode(text, false).unwrap();
        encoding.get_ids().iter().map(|&i| i64::from(i)).collect()
    };
    let max = 128;
    let config_text = |side: &str| {
        let text = bundled_config("chemprot.toml");
        let edited = text.replace(
            "max_length = 512",
            &format!("max_length = {max}\ntruncation_side = \"{side}\""),
        );
        assert_ne!(
            edited, text,
            "chemprot.toml no longer sets max_length = 512"
        );
        edited
    };

    let right = tempfile::tempdir().unwrap();
    let config = right.path().join("right.toml");
    std::fs::write(&config, config_text("right")).unwrap();
    let run = medtune(right.path(), &["run", "--config", config.to_str().unwrap()]).expect(0);
    let split = json_rows(right.path(), "SELECT id, prompt, completion FROM split");
    // [CLS] + the prompt's tokens reach the limit: nothing of the completion is left.
    let expected: Vec<String> = split
        .iter()
        .filter(|r| 1 + ids(r["prompt"].as_str().unwrap()).len() >= max)
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        expected.len() > 10,
        "only {} long prompts at {max}",
        expected.len()
    );
    let mut rejected: Vec<String> = json_rows(
        right.path(),
        "SELECT id, detail FROM rejects WHERE stage = 'tokenize' AND reason = 'no_labelled_tokens'",
    )
    .iter()
    .map(|r| {
        assert!(
            r["detail"].as_str().unwrap().contains("truncation_side"),
            "{r}"
        );
        r["id"].as_str().unwrap().to_string()
    })
    .collect();
    rejected.sort();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(rejected, expected_sorted);
    let tokenized = json_rows(right.path(), "SELECT count(*) AS n FROM tokenized");
    assert_eq!(
        tokenized[0]["n"].as_u64().unwrap() as usize,
        split.len() - expected.len()
    );
    let accounting = format!(
        "tokenize: {} rows in = {} kept + {} dropped",
        split.len(),
        split.len() - expected.len(),
        expected.len()
    );
    assert!(run.stdout.contains(&accounting), "{}", run.stdout);
    let passed_on = (split.len() - expected.len()).to_string();
    assert!(
        run.stdout.lines().any(|l| {
            let cells: Vec<&str> = l.trim_matches('│').split('┆').map(str::trim).collect();
            let dropped = expected.len().to_string();
            cells == ["tokenize", &passed_on, &dropped, "no_labelled_tokens"]
        }),
        "no funnel line for tokenize's drops:\n{}",
        run.stdout
    );

    let left = tempfile::tempdir().unwrap();
    let config = left.path().join("left.toml");
    std::fs::write(&config, config_text("left")).unwrap();
    medtune(left.path(), &["run", "--config", config.to_str().unwrap()]).expect(0);
    let rejected = json_rows(
        left.path(),
        "SELECT count(*) AS n FROM rejects WHERE stage = 'tokenize'",
    );
    assert_eq!(rejected[0]["n"].as_u64(), Some(0));
    let completions: HashMap<String, String> = split
        .iter()
        .map(|r| {
            let text = |c: &str| r[c].as_str().unwrap().to_string();
            (text("id"), text("completion"))
        })
        .collect();
    let rows = json_rows(
        left.path(),
        "SELECT id, input_ids, labels, prompt_tokens FROM tokenized",
    );
    assert_eq!(rows.len(), split.len());
    let mut whole = 0;
    for row in &rows {
        let id = row["id"].as_str().unwrap();
        let (input, labels) = (numbers(&row["input_ids"]), numbers(&row["labels"]));
        let p = row["prompt_tokens"].as_u64().unwrap() as usize;
        assert!(input.len() <= max && input[0] == 101, "{id}: [CLS] kept");
        let completion = [ids(&completions[id]), vec![102]].concat();
        if completion.len() < max {
            // [CLS] + the completion and its EOS fit: they survive whole, after what is left
            // of the prompt.
            assert_eq!(&labels[p..], completion.as_slice(), "{id}");
            assert!(labels[..p].iter().all(|&l| l == -100), "{id}");
            whole += 1;
        } else {
            assert_eq!(p, 1, "{id}: only [CLS] is left of the prompt");
        }
    }
    assert!(whole > rows.len() * 9 / 10, "{whole} of {}", rows.len());
}
