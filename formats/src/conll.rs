//! CoNLL-style BIO files: `token<TAB>label` per line, a blank line after each sentence,
//! optional `-DOCSTART-` lines between documents. A line with any other number of columns
//! rejects its sentence; a UTF-8 byte-order mark at the start of the file is skipped.
//!
//! The sentences of one document share a group key (`doc:<file>:<document>`), so that split
//! keeps them together; a sentence outside any document is its own group. Where a corpus marks
//! documents otherwise, a [`DocumentBoundary`] rule says how.

use std::io::{self, BufRead};

use serde::{Deserialize, Serialize};

use crate::bio::{check_tags, BioConfig};
use crate::framing::read_bounded_line;
use crate::record::{Example, ReadItem, Reject, RejectReason};

/// Longest line kept; longer lines are malformed for this format.
const MAX_LINE_BYTES: usize = 64 * 1024;
/// Raw text kept for a rejected sentence.
const MAX_RAW_BYTES: usize = 16 * 1024;
/// The UTF-8 byte-order mark, skipped at the start of a file.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// What marks the start of a document in a CoNLL file. `-DOCSTART-` lines start one under
/// every rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocumentBoundary {
    /// `-DOCSTART-` lines only (CoNLL-2003); sentences before the first are their own groups.
    #[default]
    Docstart,
    /// Two or more blank lines in a row end a document; the first starts with the file.
    BlankLines,
    /// A comment line `# doc_id = X` (or CoNLL-U's `# newdoc id = X`) starts document `X`;
    /// other comment lines (`#` first, no tab) are skipped.
    Comment,
}

impl DocumentBoundary {
    /// Whether this is the default rule.
    pub fn is_docstart(&self) -> bool {
        *self == DocumentBoundary::Docstart
    }

    /// What marks a document under this rule, for messages.
    pub fn marker(self) -> &'static str {
        match self {
            DocumentBoundary::Docstart => "`-DOCSTART-` lines",
            DocumentBoundary::BlankLines => "two blank lines in a row",
            DocumentBoundary::Comment => "`# doc_id` or `# newdoc` comments",
        }
    }
}

/// Iterator over the sentences of a CoNLL file.
pub struct ConllSentences<'a, R> {
    reader: R,
    file_name: &'a str,
    bio: &'a BioConfig,
    max_words: usize,
    boundary: DocumentBoundary,
    line: u64,
    /// The current document's name (its first line, or its `doc_id`).
    document: Option<String>,
    /// Document boundaries seen (`-DOCSTART-` lines, blank-line pairs, doc comments).
    boundaries: u64,
    /// Blank lines read since the last non-blank one.
    blank_run: u32,
}

#[derive(Default)]
struct Pending {
    start: u64,
    words: Vec<String>,
    tags: Vec<String>,
    count: usize,
    raw: Vec<u8>,
    problem: Option<(u64, RejectReason, String)>,
}

impl<'a, R: BufRead> ConllSentences<'a, R> {
    /// Reads sentences of at most `max_words` words from `reader`, with documents marked by
    /// `-DOCSTART-` lines.
    pub fn new(reader: R, file_name: &'a str, bio: &'a BioConfig, max_words: usize) -> Self {
        ConllSentences {
            reader,
            file_name,
            bio,
            max_words,
            boundary: DocumentBoundary::Docstart,
            line: 0,
            document: None,
            boundaries: 0,
            blank_run: 0,
        }
    }

    /// Marks documents by `boundary` instead.
    pub fn with_documents(mut self, boundary: DocumentBoundary) -> Self {
        self.boundary = boundary;
        self
    }

    /// Document boundaries read so far: none at the end of a file means its documents were not
    /// marked the way the rule expects.
    pub fn boundaries(&self) -> u64 {
        self.boundaries
    }

    /// The underlying reader.
    pub fn get_ref(&self) -> &R {
        &self.reader
    }

    fn finish(&self, p: Pending) -> ReadItem {
        let reject = |line, reason, detail| Reject {
            line,
            reason,
            detail,
            raw: p.raw.clone(),
        };
        if let Some((line, reason, detail)) = p.problem {
            return Err(reject(line, reason, detail));
        }
        let mut tags = p.tags;
        let repairs = check_tags(&p.words, &mut tags, self.bio)
            .map_err(|(reason, detail)| reject(p.start, reason, detail))?;
        let group_key = match &self.document {
            Some(doc) => format!("doc:{}:{doc}", self.file_name),
            None => format!("sentence:{}:{}", self.file_name, p.start),
        };
        Ok((
            Example {
                line: p.start,
                task: Some("ner".into()),
                prompt: Some(p.words.join(" ")),
                words: Some(p.words),
                tags: Some(tags),
                group_key,
                ..Default::default()
            },
            repairs,
        ))
    }

    fn next_sentence(&mut self) -> io::Result<Option<ReadItem>> {
        let mut p = Pending::default();
        loop {
            let Some((mut bytes, oversized)) = read_bounded_line(&mut self.reader, MAX_LINE_BYTES)?
            else {
                return Ok((p.count > 0).then(|| self.finish(p)));
            };
            if self.line == 0 && bytes.starts_with(BOM) {
                bytes.drain(..BOM.len());
            }
            self.line += 1;
            let blank = bytes.iter().all(u8::is_ascii_whitespace);
            if blank {
                self.blank_run += 1;
                if self.blank_run == 2
                    && self.boundary == DocumentBoundary::BlankLines
                    && self.document.is_some()
                {
                    self.boundaries += 1;
                    self.document = None;
                }
                if p.count > 0 {
                    return Ok(Some(self.finish(p)));
                }
                continue;
            }
            self.blank_run = 0;
            let start = if bytes.starts_with(b"-DOCSTART-") {
                Some(self.line.to_string())
            } else if self.boundary == DocumentBoundary::Comment && is_comment(&bytes) {
                match document_comment(&bytes) {
                    Some(name) => Some(name.unwrap_or_else(|| self.line.to_string())),
                    None => continue,
                }
            } else {
                None
            };
            if let Some(name) = start {
                let pending = (p.count > 0).then(|| self.finish(std::mem::take(&mut p)));
                self.document = Some(name);
                self.boundaries += 1;
                if pending.is_some() {
                    return Ok(pending);
                }
                continue;
            }
            if p.count == 0 {
                p.start = self.line;
                if self.boundary == DocumentBoundary::BlankLines && self.document.is_none() {
                    self.document = Some(self.line.to_string());
                }
            }
            p.count += 1;
            if p.raw.len() < MAX_RAW_BYTES {
                p.raw.extend_from_slice(&bytes);
                p.raw.push(b'\n');
            }
            if p.problem.is_some() {
                continue;
            }
            let line = self.line;
            let problem = |reason, detail: String| Some((line, reason, detail));
            if oversized {
                p.problem = problem(
                    RejectReason::MalformedLine,
                    format!("line {line} is longer than {MAX_LINE_BYTES} bytes"),
                );
                continue;
            }
            if p.count > self.max_words {
                p.problem = problem(
                    RejectReason::SentenceTooLong,
                    format!(
                        "sentence starting at line {} has more than {} words (missing blank line?)",
                        p.start, self.max_words
                    ),
                );
                continue;
            }
            let text = match std::str::from_utf8(&bytes) {
                Ok(t) => t,
                Err(e) => {
                    p.problem = problem(
                        RejectReason::InvalidUtf8,
                        format!("line {line}: invalid UTF-8 at byte {}", e.valid_up_to()),
                    );
                    continue;
                }
            };
            let columns = text.split('\t').count();
            match text.split_once('\t') {
                Some((token, label))
                    if columns == 2 && !token.trim().is_empty() && !label.trim().is_empty() =>
                {
                    p.words.push(token.trim().to_string());
                    p.tags.push(label.trim().to_string());
                }
                _ => {
                    let what = if columns == 2 {
                        "an empty column".to_string()
                    } else if columns == 1 {
                        "1 column (no tab)".to_string()
                    } else {
                        format!("{columns} columns")
                    };
                    p.problem = problem(
                        RejectReason::MalformedLine,
                        format!(
                            "line {line}: expected `token<TAB>label` (2 columns), found {what}: \
                             {text:?}"
                        ),
                    );
                }
            }
        }
    }
}

/// A comment line: `#` first and no tab (a token `#` has its label after a tab).
fn is_comment(line: &[u8]) -> bool {
    line.first() == Some(&b'#') && !line.contains(&b'\t')
}

/// For a comment line that starts a document (`# doc_id = X`, `# newdoc id = X`), its name
/// (`None` inside when it gives none); `None` for any other comment.
fn document_comment(line: &[u8]) -> Option<Option<String>> {
    let text = String::from_utf8_lossy(&line[1..]);
    let text = text.trim();
    if !(text.starts_with("doc_id") || text.starts_with("newdoc")) {
        return None;
    }
    let name = text
        .split_once('=')
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty());
    Some(name)
}

impl<R: BufRead> Iterator for ConllSentences<'_, R> {
    type Item = io::Result<ReadItem>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_sentence().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str, bio: &BioConfig) -> Vec<ReadItem> {
        ConllSentences::new(text.as_bytes(), "t.tsv", bio, 4)
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn sentences_end_at_blank_lines_and_file_end() {
        let items = read(
            "A\tB-Chemical\nb\tO\n\n\nc\tB-Disease\n",
            &BioConfig::default(),
        );
        assert_eq!(items.len(), 2);
        let (first, _) = items[0].clone().unwrap();
        assert_eq!(first.words.unwrap(), vec!["A", "b"]);
        assert_eq!(first.line, 1);
        assert_eq!(first.group_key, "sentence:t.tsv:1");
        assert_eq!(items[1].clone().unwrap().0.line, 5);
    }

    #[test]
    fn docstart_groups_the_following_sentences() {
        let items = read("-DOCSTART-\tO\n\na\tO\n\nb\tO\n", &BioConfig::default());
        let keys: Vec<String> = items.into_iter().map(|i| i.unwrap().0.group_key).collect();
        assert_eq!(keys, vec!["doc:t.tsv:1", "doc:t.tsv:1"]);
    }

    fn group_keys(text: &str, boundary: DocumentBoundary) -> (Vec<String>, u64) {
        let bio = BioConfig::default();
        let mut reader =
            ConllSentences::new(text.as_bytes(), "t.tsv", &bio, 4).with_documents(boundary);
        let keys = reader
            .by_ref()
            .map(|i| i.unwrap().unwrap().0.group_key)
            .collect();
        (keys, reader.boundaries())
    }

    #[test]
    fn without_docstart_lines_each_sentence_is_its_own_group_and_no_boundary_is_seen() {
        let (keys, boundaries) = group_keys("a\tO\n\nb\tO\n\n\nc\tO\n", DocumentBoundary::Docstart);
        assert_eq!(
            keys,
            ["sentence:t.tsv:1", "sentence:t.tsv:3", "sentence:t.tsv:6"]
        );
        assert_eq!(boundaries, 0);
    }

    #[test]
    fn two_blank_lines_end_a_document_under_the_blank_lines_rule() {
        let text = "a\tO\n\nb\tO\n\n\nc\tO\n\nd\tO\n\n\n\ne\tO\n";
        let (keys, boundaries) = group_keys(text, DocumentBoundary::BlankLines);
        assert_eq!(
            keys,
            [
                "doc:t.tsv:1",
                "doc:t.tsv:1",
                "doc:t.tsv:6",
                "doc:t.tsv:6",
                "doc:t.tsv:12"
            ]
        );
        assert_eq!(boundaries, 2);
        // No blank-line pair: the whole file is one document, and no boundary was seen.
        let (keys, boundaries) = group_keys("a\tO\n\nb\tO\n", DocumentBoundary::BlankLines);
        assert_eq!(keys, ["doc:t.tsv:1", "doc:t.tsv:1"]);
        assert_eq!(boundaries, 0);
    }

    #[test]
    fn doc_id_comments_start_documents_and_other_comments_are_skipped() {
        let text = "# doc_id = PMID1\n# text = a b\na\tO\n\nb\tO\n\n# newdoc id = PMID2\n\
                    #\tO\n\n# doc_id\nc\tO\n";
        let (keys, boundaries) = group_keys(text, DocumentBoundary::Comment);
        assert_eq!(
            keys,
            [
                "doc:t.tsv:PMID1",
                "doc:t.tsv:PMID1",
                "doc:t.tsv:PMID2",
                "doc:t.tsv:10"
            ]
        );
        assert_eq!(boundaries, 3);
        // Under the default rule a comment is not a token line: its sentence is rejected.
        let items = read("# doc_id = X\na\tO\n", &BioConfig::default());
        assert_eq!(
            items[0].clone().unwrap_err().reason,
            RejectReason::MalformedLine
        );
    }

    #[test]
    fn a_bad_line_rejects_its_sentence_naming_the_line() {
        let items = read("a\tO\nno tab here\nc\tO\n\nd\tO\n", &BioConfig::default());
        let rej = items[0].clone().unwrap_err();
        assert_eq!((rej.reason, rej.line), (RejectReason::MalformedLine, 2));
        assert!(items[1].is_ok());
    }

    #[test]
    fn too_long_sentences_and_bad_tags_are_rejected() {
        let items = read("a\tO\nb\tO\nc\tO\nd\tO\ne\tO\n", &BioConfig::default());
        assert_eq!(
            items[0].clone().unwrap_err().reason,
            RejectReason::SentenceTooLong
        );
        let items = read("a\tO\nb\tI-Disease\n", &BioConfig::default());
        assert_eq!(
            items[0].clone().unwrap_err().reason,
            RejectReason::InvalidBioSequence
        );
    }

    #[test]
    fn a_leading_byte_order_mark_is_not_part_of_the_first_word() {
        let items = read("\u{FEFF}Aspirin\tB-Chemical\nb\tO\n", &BioConfig::default());
        let (first, _) = items[0].clone().unwrap();
        assert_eq!(first.words.unwrap(), vec!["Aspirin", "b"]);
        assert_eq!(first.prompt.as_deref(), Some("Aspirin b"));
        let items = read("\u{FEFF}-DOCSTART-\tO\n\na\tO\n", &BioConfig::default());
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].clone().unwrap().0.group_key, "doc:t.tsv:1");
    }

    #[test]
    fn a_line_must_have_exactly_two_columns() {
        for (text, found) in [
            ("a\tO\nb\tNN\tO\n", "3 columns"),
            ("a\tO\nb\tO\t\n", "3 columns"),
            ("a\tO\nb O\n", "1 column"),
        ] {
            let rej = read(text, &BioConfig::default())[0].clone().unwrap_err();
            assert_eq!(
                (rej.reason, rej.line),
                (RejectReason::MalformedLine, 2),
                "{text:?}"
            );
            assert!(rej.detail.contains(found), "{text:?}: {}", rej.detail);
        }
    }

    #[test]
    fn crlf_line_ends_are_accepted() {
        let items = read("a\tB-X\r\nb\tI-X\r\n\r\n", &BioConfig::default());
        assert_eq!(
            items[0].clone().unwrap().0.tags.unwrap(),
            vec!["B-X", "I-X"]
        );
    }
}
