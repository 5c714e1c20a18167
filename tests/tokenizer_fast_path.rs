//! The tokenizer fast path gives exactly the ids `tokenizers` gives: every text of every bundled
//! corpus, BC5CDR's sentences as pre-tokenized words, chat-templated prompts with their special
//! tokens, and seeded random ASCII built to reach every branch (control bytes, whitespace runs,
//! contractions, added tokens inside words, over-long words), for both real tokenizers:
//! all-MiniLM-L6-v2 (WordPiece) and SmolLM2-135M-Instruct (byte-level BPE, from its GGUF file).

mod common;

use std::path::{Path, PathBuf};

use common::*;
use medtune_stages::shared::tokenizer::template::{ChatTemplate, PromptTemplate};
use medtune_stages::shared::tokenizer::{load_tokenizer, TextEncoder};

fn model_file(rel: &str) -> PathBuf {
    let path = repo().join("models").join(rel);
    assert!(
        path.is_file(),
        "run scripts/fetch-model.sh first ({})",
        path.display()
    );
    path
}

fn minilm() -> PathBuf {
    model_file("all-MiniLM-L6-v2/tokenizer.json")
}

fn smollm2() -> PathBuf {
    model_file("SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The fast encoder and the `tokenizers`-only one of the tokenizer at `path`.
fn encoders(path: &Path) -> (TextEncoder, TextEncoder) {
    let fast = TextEncoder::new(load_tokenizer(path).unwrap());
    assert!(
        fast.fast_path().is_ok(),
        "{}: {:?}",
        path.display(),
        fast.fast_path()
    );
    let reference = TextEncoder::without_fast_path(load_tokenizer(path).unwrap());
    (fast, reference)
}

/// Every text of the bundled corpora: ChemProt prompts and completions, ChatDoctor's fields and
/// the prompts ingest builds from them, BC5CDR's sentences joined with spaces.
fn bundled_texts() -> Vec<String> {
    let mut texts = Vec::new();
    let chemprot =
        std::fs::read_to_string(shared_data("chemprot/both_rel_instruct_raw.jsonl")).unwrap();
    for line in chemprot.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        for field in ["prompt", "completion"] {
            texts.push(row[field].as_str().unwrap().to_string());
        }
    }
    let chatdoctor: Vec<serde_json::Value> = serde_json::from_slice(
        &std::fs::read(shared_data("chatdoctor/chatdoctor5k.json")).unwrap(),
    )
    .unwrap();
    for row in &chatdoctor {
        let field = |f: &str| row[f].as_str().unwrap_or("").to_string();
        texts.push(format!("{}\n\n{}", field("instruction"), field("input")));
        texts.extend(["instruction", "input", "output"].map(field));
    }
    for sentence in bc5cdr_sentences() {
        texts.push(sentence.join(" "));
    }
    texts
}

/// BC5CDR's sentences (words only), all three files.
fn bc5cdr_sentences() -> Vec<Vec<String>> {
    let mut sentences = Vec::new();
    for file in ["train", "devel", "test"] {
        let text = std::fs::read_to_string(shared_data(&format!("bc5cdr/{file}.tsv"))).unwrap();
        let mut sentence = Vec::new();
        for line in text.lines() {
            match line.split_once('\t') {
                Some((word, _)) => sentence.push(word.to_string()),
                None if !sentence.is_empty() => sentences.push(std::mem::take(&mut sentence)),
                None => {}
            }
        }
        if !sentence.is_empty() {
            sentences.push(sentence);
        }
    }
    sentences
}

/// Seeded random ASCII made of pieces that reach every branch of both fast paths.
fn random_texts(count: usize, seed: u64) -> Vec<String> {
    let pieces: Vec<String> = [
        " ",
        " ",
        " ",
        "  ",
        "\n",
        "\n\n",
        "\t",
        "\r\n",
        " \n ",
        "\x0b",
        "\x0c",
        "\x00",
        "\x01",
        "\x1c",
        "\x1f",
        "\x7f",
        "'s",
        "'t",
        "'re",
        "'ve",
        "'m",
        "'ll",
        "'d",
        "'S",
        "'",
        "''",
        "?'",
        "the",
        "The",
        "patient",
        "Hypertension",
        "hyperbaric",
        "bupivacaine",
        "mg",
        "1%",
        "8",
        "25-gauge",
        "12345",
        "3.5",
        "x2",
        "A1c",
        "Qu",
        "zzqx",
        "##ing",
        "#",
        "...",
        "!!",
        "(",
        ")",
        "[",
        "]",
        "-",
        "_",
        "\"",
        "`",
        "~",
        "|",
        "\\",
        "/",
        "@",
        "^",
        "[CLS]",
        "[SEP]",
        "[UNK]",
        "[MASK]",
        "[PAD]",
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
        "<|im_start",
        "im_end|>",
        "<",
        "|",
        ">",
        "aaaaaaaaaa",
        "----------",
    ]
    .into_iter()
    .map(String::from)
    .chain((0u8..128).map(|b| char::from(b).to_string()))
    .collect();
    let mut state = seed;
    let mut next = move || {
        // xorshift64*: enough randomness for picking pieces, and the same texts every run.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize
    };
    (0..count)
        .map(|i| {
            let len = if i % 97 == 0 { 150 } else { next() % 24 };
            let mut text = String::new();
            for _ in 0..len {
                text.push_str(&pieces[next() % pieces.len()]);
            }
            // Over-long words: WordPiece's 100-character limit.
            if i % 101 == 0 {
                text.push_str(&"ab".repeat(60));
            }
            text
        })
        .collect()
}

/// Asserts both encoders give the same ids for every text; returns how many texts went
/// through `tokenizers` on the fast encoder.
fn assert_same_ids(path: &Path, texts: &[String]) -> u64 {
    let (fast, reference) = encoders(path);
    let mut mismatches = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let (got, want) = (fast.encode(text).unwrap(), reference.encode(text).unwrap());
        if got != want {
            let start: String = text.chars().take(200).collect();
            mismatches.push(format!(
                "text {i} {start:?}...:\n fast {got:?}\n want {want:?}"
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{}: {} of {} texts differ; first: {}",
        path.display(),
        mismatches.len(),
        texts.len(),
        mismatches[0]
    );
    fast.through_tokenizers()
}

#[test]
fn every_bundled_text_gets_the_tokenizers_ids_with_minilm_and_smollm2() {
    let texts = bundled_texts();
    assert!(texts.len() > 40_000, "{} texts", texts.len());
    // Counted apart from the encoder: the texts that are not ASCII, the only ones the fast
    // path leaves to `tokenizers`.
    let not_ascii = texts.iter().filter(|t| !t.is_ascii()).count() as u64;
    assert!(not_ascii > 0);
    for path in [minilm(), smollm2()] {
        assert_eq!(
            assert_same_ids(&path, &texts),
            not_ascii,
            "{}",
            path.display()
        );
    }
}

/// The ASCII bytes the byte-level vocabulary of `tokenizer` has no token for (GPT-2's byte map
/// writes bytes 0..=32 as U+0100.. and 127 as U+0121).
fn bytes_without_token(tokenizer: &tokenizers::Tokenizer) -> Vec<u8> {
    (0u8..128)
        .filter(|&b| {
            let c = match b {
                0..=32 => char::from_u32(0x100 + u32::from(b)).unwrap(),
                127 => '\u{121}',
                _ => char::from(b),
            };
            tokenizer.token_to_id(&c.to_string()).is_none()
        })
        .collect()
}

#[test]
fn random_ascii_gets_the_tokenizers_ids_with_minilm_and_smollm2() {
    let texts = random_texts(20_000, 0x5eed_1234_abcd_0001);
    assert_eq!(assert_same_ids(&minilm(), &texts), 0);
    // SmolLM2's vocabulary lacks a few control bytes: texts with one go through `tokenizers`
    // (which drops such a byte), the rest take the fast path.
    let path = smollm2();
    let missing = bytes_without_token(&load_tokenizer(&path).unwrap());
    assert!(!missing.is_empty() && missing.iter().all(|b| b.is_ascii_control()));
    let with_missing = texts
        .iter()
        .filter(|t| t.bytes().any(|b| missing.contains(&b)))
        .count() as u64;
    assert!(with_missing < texts.len() as u64 / 2, "{with_missing}");
    assert_eq!(assert_same_ids(&path, &texts), with_missing, "{missing:?}");
}

#[test]
fn chat_templated_prompts_keep_their_special_tokens_on_the_fast_path() {
    let path = smollm2();
    let tokenizer = load_tokenizer(&path).unwrap();
    let template = PromptTemplate::load(ChatTemplate::Model, &path, &tokenizer).unwrap();
    let chemprot =
        std::fs::read_to_string(shared_data("chemprot/both_rel_instruct_raw.jsonl")).unwrap();
    let prompts: Vec<String> = chemprot
        .lines()
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            template.render(row["prompt"].as_str().unwrap()).unwrap()
        })
        .collect();
    let (fast, _) = encoders(&path);
    let im_start = fast.tokenizer().token_to_id("<|im_start|>").unwrap();
    let first = fast.encode(&prompts[0]).unwrap();
    assert_eq!(
        first[0], im_start,
        "the template's first token is one added token"
    );
    assert_same_ids(&path, &prompts);
}

#[test]
fn bc5cdr_words_get_the_tokenizers_ids_and_word_ids() {
    let path = minilm();
    let (fast, reference) = encoders(&path);
    let sentences = bc5cdr_sentences();
    assert!(sentences.len() > 13_000, "{} sentences", sentences.len());
    let mut random = random_texts(3_000, 7);
    random.retain(|t| !t.trim().is_empty());
    let random_words: Vec<Vec<String>> = random.chunks(5).map(|chunk| chunk.to_vec()).collect();
    for words in sentences.iter().chain(&random_words) {
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        assert_eq!(
            fast.encode_words(&words).unwrap(),
            reference.encode_words(&words).unwrap(),
            "{words:?}"
        );
    }
    assert_eq!(fast.through_tokenizers(), 0, "BC5CDR is ASCII");
    let first = fast.encode_words(&["Selegiline"]).unwrap();
    assert_eq!(
        (first.prefix.len(), first.suffix.len()),
        (1, 1),
        "[CLS] and [SEP]"
    );
}
