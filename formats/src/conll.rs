//! CoNLL-style BIO files: `token<TAB>label` per line, a blank line after each sentence,
//! optional `-DOCSTART-` lines between documents. A line with any other number of columns
//! rejects its sentence; a UTF-8 byte-order mark at the start of the file is skipped.

use std::io::{self, BufRead};

use crate::bio::{check_tags, BioConfig};
use crate::framing::read_bounded_line;
use crate::record::{Example, ReadItem, Reject, RejectReason};

/// Longest line kept; longer lines are malformed for this format.
const MAX_LINE_BYTES: usize = 64 * 1024;
/// Raw text kept for a rejected sentence.
const MAX_RAW_BYTES: usize = 16 * 1024;
/// The UTF-8 byte-order mark, skipped at the start of a file.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Iterator over the sentences of a CoNLL file.
pub struct ConllSentences<'a, R> {
    reader: R,
    file_name: &'a str,
    bio: &'a BioConfig,
    max_words: usize,
    line: u64,
    document: Option<u64>,
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
    /// Reads sentences of at most `max_words` words from `reader`.
    pub fn new(reader: R, file_name: &'a str, bio: &'a BioConfig, max_words: usize) -> Self {
        ConllSentences {
            reader,
            file_name,
            bio,
            max_words,
            line: 0,
            document: None,
        }
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
        let group_key = match self.document {
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
                if p.count > 0 {
                    return Ok(Some(self.finish(p)));
                }
                continue;
            }
            if bytes.starts_with(b"-DOCSTART-") {
                let pending = (p.count > 0).then(|| self.finish(std::mem::take(&mut p)));
                self.document = Some(self.line);
                if pending.is_some() {
                    return Ok(pending);
                }
                continue;
            }
            if p.count == 0 {
                p.start = self.line;
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
