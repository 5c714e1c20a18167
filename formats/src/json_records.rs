//! Turning one framed JSON record into an example: prompt/completion (ChemProt style),
//! alpaca (`instruction`, `input`, `output`) and BIO JSON.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::error::Category;

use crate::bio::{check_tags, BioConfig};
use crate::record::{Example, Parsed, Reject, RejectReason};
use crate::text::{fold_lower, short_hash};

/// Where a record came from, for group keys that fall back to its position.
pub struct Origin<'a> {
    /// The file's name (no folders), as used in row ids.
    pub file_name: &'a str,
    /// Line where the record starts.
    pub line: u64,
    /// The record's 1-based number in its file (array element or JSON line), as used in row
    /// ids: unlike the line, it does not depend on the file's layout.
    pub ordinal: u64,
}

fn reject(line: u64, reason: RejectReason, detail: impl Into<String>, raw: &[u8]) -> Reject {
    Reject {
        line,
        reason,
        detail: detail.into(),
        raw: raw.to_vec(),
    }
}

/// Decodes UTF-8 and parses JSON into `T`, mapping failures to reject reasons with the line
/// of the problem inside the file.
fn parse<'a, T: Deserialize<'a>>(bytes: &'a [u8], line: u64) -> Result<T, Reject> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let bad_line = line
            + bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count() as u64;
        reject(
            bad_line,
            RejectReason::InvalidUtf8,
            format!("invalid UTF-8 at byte {} of the record", e.valid_up_to()),
            bytes,
        )
    })?;
    serde_json::from_str(text).map_err(|e| {
        let message = e.to_string();
        let (reason, detail) = match e.classify() {
            Category::Data if message.starts_with("missing field") => {
                (RejectReason::MissingField, message)
            }
            // serde's words for it are "duplicate field `name`".
            Category::Data if message.starts_with("duplicate field") => (
                RejectReason::DuplicateKey,
                message.replacen("duplicate field", "duplicate key", 1),
            ),
            Category::Data => (RejectReason::WrongType, message),
            _ => (RejectReason::MalformedJson, message),
        };
        let at = line + e.line().saturating_sub(1) as u64;
        reject(at, reason, detail, bytes)
    })
}

#[derive(Deserialize)]
struct PromptCompletionRow<'a> {
    #[serde(borrow)]
    prompt: Cow<'a, str>,
    #[serde(borrow)]
    completion: Cow<'a, str>,
}

/// Task of a ChemProt-style prompt: the word after "list only of the", if it names one.
pub fn chemprot_task(prompt: &str) -> Option<&'static str> {
    const MARKER: &str = "list only of the ";
    let lower = prompt.get(..prompt.len().min(400))?.to_ascii_lowercase();
    let rest = &lower[lower.find(MARKER)? + MARKER.len()..];
    let word = rest
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("");
    ["chemicals", "diseases", "influences"]
        .into_iter()
        .find(|t| *t == word)
}

/// The article body of a ChemProt-style prompt: the text between the instruction paragraph
/// and the closing "List of extracted ...:" line. Prompts without that shape are their own body.
pub fn chemprot_body(prompt: &str) -> &str {
    let trimmed = prompt.trim();
    match (trimmed.find("\n\n"), trimmed.rfind("\n\n")) {
        // `first + 2 <= last`: in "\n\n\n" the two finds overlap.
        (Some(first), Some(last)) if first + 2 <= last => trimmed[first + 2..last].trim(),
        _ => trimmed,
    }
}

/// Parses a prompt/completion record. The task comes from the prompt's instruction; the
/// group key is the article body, so the same article under different tasks shares it.
pub fn prompt_completion(bytes: &[u8], origin: &Origin) -> Parsed {
    let row: PromptCompletionRow = parse(bytes, origin.line)?;
    let body = chemprot_body(&row.prompt);
    Ok(Example {
        line: origin.line,
        task: chemprot_task(&row.prompt).map(str::to_string),
        group_key: format!("article:{}", short_hash(&fold_lower(body))),
        prompt: Some(row.prompt.into_owned()),
        completion: Some(row.completion.into_owned()),
        ..Default::default()
    })
}

#[derive(Deserialize)]
struct AlpacaRow<'a> {
    #[serde(borrow)]
    instruction: Cow<'a, str>,
    #[serde(borrow, default)]
    input: Option<Cow<'a, str>>,
    #[serde(borrow)]
    output: Cow<'a, str>,
}

/// Parses an alpaca record. The prompt is the instruction, then the input after a blank line
/// when there is one; `output` becomes the completion. The group key is the normalised question
/// (the input, or the instruction when the input is empty).
pub fn alpaca(bytes: &[u8], origin: &Origin) -> Parsed {
    let row: AlpacaRow = parse(bytes, origin.line)?;
    let input = row.input.map(Cow::into_owned).unwrap_or_default();
    let question = if input.trim().is_empty() {
        row.instruction.as_ref()
    } else {
        input.as_str()
    };
    let group_key = format!("question:{}", short_hash(&fold_lower(question)));
    let prompt = if input.trim().is_empty() {
        row.instruction.to_string()
    } else {
        format!("{}\n\n{}", row.instruction, input)
    };
    Ok(Example {
        line: origin.line,
        task: Some("qa".into()),
        prompt: Some(prompt),
        completion: Some(row.output.into_owned()),
        instruction: Some(row.instruction.into_owned()),
        input: Some(input),
        group_key,
        ..Default::default()
    })
}

#[derive(Deserialize)]
struct BioLabel {
    word: String,
    entity: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum GroupId {
    Text(String),
    Number(i64),
}

#[derive(Deserialize)]
struct BioRow {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    labels: Option<Vec<BioLabel>>,
    #[serde(default, alias = "tokens")]
    words: Option<Vec<String>>,
    #[serde(default, alias = "ner_tags")]
    tags: Option<Vec<String>>,
    #[serde(default, alias = "doc_id", alias = "document_id")]
    id: Option<GroupId>,
}

/// Parses a BIO JSON record: `{"text", "labels": [{"word", "entity"}]}`, or parallel
/// `words`/`tokens` and `tags`/`ner_tags` lists. An `id` (or `doc_id`) field becomes the group
/// key; without one, each record is its own group (`sentence:<file>:<ordinal>`, not its line:
/// a minified file is one line).
pub fn bio_json(bytes: &[u8], origin: &Origin, bio: &BioConfig) -> Result<(Example, u64), Reject> {
    let row: BioRow = parse(bytes, origin.line)?;
    let (words, mut tags) = match (row.labels, row.words, row.tags) {
        (Some(labels), _, _) => labels.into_iter().map(|l| (l.word, l.entity)).unzip(),
        (None, Some(words), Some(tags)) => (words, tags),
        _ => {
            return Err(reject(
                origin.line,
                RejectReason::MissingField,
                "expected `labels` (a list of {word, entity}) or `words` and `tags` lists",
                bytes,
            ))
        }
    };
    let repairs = check_tags(&words, &mut tags, bio)
        .map_err(|(reason, detail)| reject(origin.line, reason, detail, bytes))?;
    let group_key = match row.id {
        Some(GroupId::Text(id)) => format!("doc:{id}"),
        Some(GroupId::Number(id)) => format!("doc:{id}"),
        None => format!("sentence:{}:{}", origin.file_name, origin.ordinal),
    };
    let example = Example {
        line: origin.line,
        task: Some("ner".into()),
        prompt: Some(row.text.unwrap_or_else(|| words.join(" "))),
        words: Some(words),
        tags: Some(tags),
        group_key,
        ..Default::default()
    };
    Ok((example, repairs))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: Origin = Origin {
        file_name: "f.jsonl",
        line: 7,
        ordinal: 3,
    };

    #[test]
    fn chemprot_prompts_give_task_and_body() {
        let p = "The following article ... Create a list only of the influences between the \
                 chemicals and diseases mentioned.\n\nBody text.\n\nMore.\n\nList of extracted influences:\n";
        assert_eq!(chemprot_task(p), Some("influences"));
        assert_eq!(chemprot_body(p), "Body text.\n\nMore.");
        assert_eq!(chemprot_task("Summarise this"), None);
    }

    #[test]
    fn same_article_under_two_tasks_shares_a_group() {
        let a = br#"{"prompt": "Create a list only of the chemicals mentioned.\n\nAspirin  works.\n\nList:\n", "completion": "- aspirin"}"#;
        let b = br#"{"prompt": "Create a list only of the diseases mentioned.\n\naspirin works.\n\nList:\n", "completion": ""}"#;
        let (a, b) = (
            prompt_completion(a, &ORIGIN).unwrap(),
            prompt_completion(b, &ORIGIN).unwrap(),
        );
        assert_eq!(a.group_key, b.group_key);
        assert_eq!(a.task.as_deref(), Some("chemicals"));
        assert_eq!(b.completion.as_deref(), Some(""));
    }

    #[test]
    fn json_problems_get_their_reasons_and_lines() {
        let r = prompt_completion(br#"{"prompt": "x"}"#, &ORIGIN).unwrap_err();
        assert_eq!((r.reason, r.line), (RejectReason::MissingField, 7));
        assert!(r.detail.contains("completion"), "{}", r.detail);
        let r = prompt_completion(br#"{"prompt": "x", "completion": 3}"#, &ORIGIN).unwrap_err();
        assert_eq!(r.reason, RejectReason::WrongType);
        let r = prompt_completion(br#"{"prompt": "x", "completion": null}"#, &ORIGIN).unwrap_err();
        assert_eq!(r.reason, RejectReason::WrongType);
        let r =
            prompt_completion(b"{\"prompt\": \"x\",\n \"completion\": \"y\"", &ORIGIN).unwrap_err();
        assert_eq!((r.reason, r.line), (RejectReason::MalformedJson, 8));
        let r = prompt_completion(b"{\"prompt\": \"\xff\", \"completion\": \"y\"}", &ORIGIN)
            .unwrap_err();
        assert_eq!(r.reason, RejectReason::InvalidUtf8);
        let r = prompt_completion(b"[1, 2]", &ORIGIN).unwrap_err();
        assert_eq!(r.reason, RejectReason::WrongType);
    }

    #[test]
    fn a_repeated_key_is_its_own_reason_naming_the_key() {
        let r = prompt_completion(
            b"{\"prompt\": \"x\",\n \"completion\": \"y\", \"prompt\": \"z\"}",
            &ORIGIN,
        )
        .unwrap_err();
        assert_eq!((r.reason, r.line), (RejectReason::DuplicateKey, 8));
        assert!(r.detail.contains("duplicate key `prompt`"), "{}", r.detail);
        let r = alpaca(
            br#"{"instruction": "Q", "output": "A", "output": "B"}"#,
            &ORIGIN,
        )
        .unwrap_err();
        assert_eq!(r.reason, RejectReason::DuplicateKey);
        let bio = BioConfig::default();
        let row = br#"{"words": ["a"], "tags": ["O"], "tags": ["O"]}"#;
        let r = bio_json(row, &ORIGIN, &bio).unwrap_err();
        assert_eq!(r.reason, RejectReason::DuplicateKey);
        assert_eq!(r.reason.code(), "duplicate_key");
    }

    #[test]
    fn alpaca_rows_keep_instruction_and_input() {
        let row = br#"{"instruction": "Answer.", "input": "I have  a Cough", "output": "Rest."}"#;
        let ex = alpaca(row, &ORIGIN).unwrap();
        assert_eq!(ex.prompt.as_deref(), Some("Answer.\n\nI have  a Cough"));
        assert_eq!(ex.completion.as_deref(), Some("Rest."));
        assert_eq!(
            ex.group_key,
            format!("question:{}", short_hash("i have a cough"))
        );
        let no_input = alpaca(br#"{"instruction": "Q?", "output": "A"}"#, &ORIGIN).unwrap();
        assert_eq!(no_input.prompt.as_deref(), Some("Q?"));
        assert_eq!(no_input.input.as_deref(), Some(""));
    }

    #[test]
    fn bio_json_accepts_labels_or_parallel_lists() {
        let bio = BioConfig::default();
        let row = br#"{"text": "Aspirin helps", "labels": [{"word": "Aspirin", "entity": "B-Chemical"}, {"word": "helps", "entity": "O"}]}"#;
        let (ex, repairs) = bio_json(row, &ORIGIN, &bio).unwrap();
        assert_eq!(repairs, 0);
        assert_eq!(ex.words.unwrap(), vec!["Aspirin", "helps"]);
        // Without an id, the record's ordinal (not its line: a minified file is one line).
        assert_eq!(ex.group_key, "sentence:f.jsonl:3");
        let row = br#"{"id": 12, "tokens": ["a", "b"], "ner_tags": ["O"]}"#;
        let r = bio_json(row, &ORIGIN, &bio).unwrap_err();
        assert_eq!(r.reason, RejectReason::WordTagMismatch);
        let row = br#"{"id": "d1", "words": ["a"], "tags": ["B-X"]}"#;
        assert_eq!(bio_json(row, &ORIGIN, &bio).unwrap().0.group_key, "doc:d1");
        let r = bio_json(br#"{"text": "a"}"#, &ORIGIN, &bio).unwrap_err();
        assert_eq!(r.reason, RejectReason::MissingField);
    }
}
