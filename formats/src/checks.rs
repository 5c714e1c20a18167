//! Invariant checks of the parsers on arbitrary bytes, shared by the fuzz targets (`fuzz/`)
//! and the stable property test (`tests/properties.rs`).
//!
//! Each function runs one parser on the input (with a small and a large record bound, so the
//! oversize paths run too) and panics, naming the broken rule, when a "no lost row" invariant
//! fails: every record or sentence of the input ends as exactly one example or one reject,
//! lines never go back, and what the input means when `serde_json` (or a plain line split)
//! reads it is what the parser yields. The expectations are computed here without calling the
//! parser under test.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::bio::{BioConfig, InvalidContinuation};
use crate::conll::ConllSentences;
use crate::framing::{JsonRecords, RawRecord};
use crate::json_records::{alpaca, bio_json, prompt_completion, Origin};
use crate::record::{Example, Reject, RejectReason};

/// The small record bound: most fuzz records exceed it.
pub const SMALL_RECORD_BYTES: usize = 64;
/// A bound no in-memory input reaches.
const LARGE_RECORD_BYTES: usize = 1 << 40;
/// The CoNLL reader's line bound (its `MAX_LINE_BYTES`), restated for the oracle.
const CONLL_MAX_LINE_BYTES: usize = 64 * 1024;
const BOM: &[u8] = b"\xEF\xBB\xBF";

type Framed = Result<RawRecord, Reject>;

fn frame(data: &[u8], max: usize) -> Vec<Framed> {
    JsonRecords::new(data, max)
        .map(|item| item.expect("framing an in-memory slice cannot fail with an I/O error"))
        .collect()
}

fn newlines(bytes: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', bytes).count() as u64
}

fn show(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out: String = text.chars().take(200).collect();
    if text.chars().count() > 200 {
        out.push('…');
    }
    format!("{out:?}")
}

fn item_line(item: &Framed) -> u64 {
    match item {
        Ok(r) => r.line,
        Err(r) => r.line,
    }
}

/// Rules every framing run obeys, whatever the input.
fn check_framed(data: &[u8], items: &[Framed], max: usize) {
    let last_line = 1 + newlines(data);
    assert!(
        items.len() <= data.len() + 1,
        "framing (max {max}) yielded {} items from {} bytes",
        items.len(),
        data.len()
    );
    let mut previous = 1;
    for (i, item) in items.iter().enumerate() {
        let line = item_line(item);
        assert!(
            (previous..=last_line).contains(&line),
            "framing (max {max}): item {i} is on line {line}, after line {previous}, input has {last_line} lines"
        );
        previous = line;
        match item {
            Ok(rec) => {
                assert!(
                    !rec.bytes.is_empty(),
                    "framing (max {max}): record {i} is empty"
                );
                assert!(
                    rec.bytes.len() <= max,
                    "framing (max {max}): record {i} has {} bytes",
                    rec.bytes.len()
                );
                assert!(
                    !b" \t\r\n".contains(&rec.bytes[0]),
                    "framing (max {max}): record {i} starts with whitespace: {}",
                    show(&rec.bytes)
                );
                assert!(
                    memchr::memmem::find(data, &rec.bytes).is_some(),
                    "framing (max {max}): record {i} is not a piece of the input: {}",
                    show(&rec.bytes)
                );
            }
            Err(rej) => {
                assert!(
                    !rej.detail.is_empty(),
                    "framing (max {max}): reject {i} ({:?}) has no detail",
                    rej.reason
                );
                if matches!(
                    rej.reason,
                    RejectReason::Truncated | RejectReason::TrailingData
                ) {
                    assert_eq!(
                        i + 1,
                        items.len(),
                        "framing (max {max}): a {:?} reject is not the last item",
                        rej.reason
                    );
                }
            }
        }
    }
}

/// The JSON values of a valid JSON array or JSON-lines input, as `(line, value)` (line 0 when
/// the line is not known, for array elements); `None` when the input is neither.
fn valid_json_input(data: &[u8]) -> Option<Vec<(u64, Value)>> {
    let data = data.strip_prefix(BOM).unwrap_or(data);
    let first = data.iter().find(|b| !b" \t\r\n".contains(b))?;
    if *first == b'[' {
        return match serde_json::from_slice::<Value>(data).ok()? {
            Value::Array(items) => Some(items.into_iter().map(|v| (0, v)).collect()),
            _ => None,
        };
    }
    let mut values = Vec::new();
    for (i, line) in data.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(|b| b" \t\r".contains(b)) {
            continue;
        }
        values.push((i as u64 + 1, serde_json::from_slice::<Value>(line).ok()?));
    }
    Some(values)
}

/// The JSON framer (`framing::JsonRecords`): the record bound changes no framing; an array or
/// JSON-lines input that `serde_json` accepts is framed into exactly its values, in order.
pub fn json_framing(data: &[u8]) {
    let large = frame(data, LARGE_RECORD_BYTES);
    let small = frame(data, SMALL_RECORD_BYTES);
    check_framed(data, &large, LARGE_RECORD_BYTES);
    check_framed(data, &small, SMALL_RECORD_BYTES);
    assert_eq!(
        large.len(),
        small.len(),
        "the record bound changed the number of records (large {}, small {})",
        large.len(),
        small.len()
    );
    for (i, (l, s)) in large.iter().zip(&small).enumerate() {
        assert_eq!(
            item_line(l),
            item_line(s),
            "item {i}: the record bound changed its line"
        );
        match (l, s) {
            (Ok(l), Ok(s)) => assert_eq!(l.bytes, s.bytes, "item {i}: bytes differ by bound"),
            (Ok(l), Err(s)) => {
                assert_eq!(
                    s.reason,
                    RejectReason::RecordTooLarge,
                    "item {i}: framed under the large bound, {:?} under the small one",
                    s.reason
                );
                assert!(
                    l.bytes.len() > SMALL_RECORD_BYTES,
                    "item {i}: a record of {} bytes was rejected as larger than {SMALL_RECORD_BYTES}: {}",
                    l.bytes.len(),
                    show(&l.bytes)
                );
            }
            (Err(l), Ok(_)) => panic!(
                "item {i}: rejected ({:?}) only under the large bound",
                l.reason
            ),
            (Err(l), Err(s)) => {
                assert_ne!(
                    l.reason,
                    RejectReason::RecordTooLarge,
                    "item {i}: too large for 2^40 bytes"
                );
                assert_eq!(
                    l.reason, s.reason,
                    "item {i}: the bound changed the reject reason"
                );
            }
        }
    }
    if let Some(values) = valid_json_input(data) {
        assert_eq!(
            large.len(),
            values.len(),
            "valid JSON input of {} values framed into {} items",
            values.len(),
            large.len()
        );
        for (i, (item, (line, value))) in large.iter().zip(&values).enumerate() {
            let rec = match item {
                Ok(rec) => rec,
                Err(rej) => panic!(
                    "value {i} of valid JSON input was rejected: {:?} {}",
                    rej.reason, rej.detail
                ),
            };
            let framed: Value = serde_json::from_slice(&rec.bytes).unwrap_or_else(|e| {
                panic!(
                    "record {i} is not the JSON value it came from ({e}): {}",
                    show(&rec.bytes)
                )
            });
            assert_eq!(
                &framed, value,
                "record {i} differs from value {i} of the input"
            );
            if *line > 0 {
                assert_eq!(rec.line, *line, "JSON line {i} framed with the wrong line");
            }
        }
    }
}

/// Whether a JSON text has an object with a repeated key anywhere (`None` when it does not
/// parse into plain values).
fn has_duplicate_keys(bytes: &[u8]) -> Option<bool> {
    struct Dups(bool);
    struct DupVisitor;
    impl<'de> Visitor<'de> for DupVisitor {
        type Value = Dups;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Dups, E> {
            Ok(Dups(false))
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Dups, E> {
            Ok(Dups(false))
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Dups, E> {
            Ok(Dups(false))
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Dups, E> {
            Ok(Dups(false))
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Dups, E> {
            Ok(Dups(false))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Dups, E> {
            Ok(Dups(false))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Dups, A::Error> {
            let mut any = false;
            while let Some(Dups(d)) = seq.next_element()? {
                any |= d;
            }
            Ok(Dups(any))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Dups, A::Error> {
            let (mut seen, mut any) = (HashSet::new(), false);
            while let Some(key) = map.next_key::<String>()? {
                any |= !seen.insert(key);
                let Dups(d) = map.next_value()?;
                any |= d;
            }
            Ok(Dups(any))
        }
    }
    impl<'de> Deserialize<'de> for Dups {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(DupVisitor)
        }
    }
    serde_json::from_slice::<Dups>(bytes).ok().map(|Dups(d)| d)
}

/// What the oracle knows of one JSON record.
struct JsonFacts<'a> {
    bytes: &'a [u8],
    line: u64,
    utf8: bool,
    /// `serde_json` accepts its syntax (numbers not converted).
    syntax: bool,
    /// The object, when it is one, parses into plain values and has no repeated key.
    object: Option<serde_json::Map<String, Value>>,
}

impl<'a> JsonFacts<'a> {
    fn new(bytes: &'a [u8], line: u64) -> Self {
        let utf8 = std::str::from_utf8(bytes).is_ok();
        let syntax = serde_json::from_slice::<IgnoredAny>(bytes).is_ok();
        let object = match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(m)) if has_duplicate_keys(bytes) == Some(false) => Some(m),
            _ => None,
        };
        JsonFacts {
            bytes,
            line,
            utf8,
            syntax,
            object,
        }
    }

    fn str_field(&self, name: &str) -> Option<&str> {
        self.object.as_ref()?.get(name)?.as_str()
    }

    /// Rules every reject obeys; `parser` names the parser in messages.
    fn check_reject(&self, parser: &str, rej: &Reject) {
        assert!(
            !rej.detail.is_empty(),
            "{parser}: reject {:?} has no detail",
            rej.reason
        );
        let last = self.line + newlines(self.bytes);
        assert!(
            (self.line..=last).contains(&rej.line),
            "{parser}: reject on line {} for a record on lines {}..={last}",
            rej.line,
            self.line
        );
        if !self.utf8 {
            assert_eq!(
                rej.reason,
                RejectReason::InvalidUtf8,
                "{parser}: non-UTF-8 record"
            );
        }
        if self.object.is_none() {
            return;
        }
        assert!(
            !matches!(
                rej.reason,
                RejectReason::MalformedJson | RejectReason::InvalidUtf8
            ),
            "{parser}: a valid JSON object was rejected as {:?}: {}",
            rej.reason,
            rej.detail
        );
    }

    /// Rules every example obeys.
    fn check_example(&self, parser: &str, ex: &Example) {
        assert!(
            self.utf8 && self.syntax,
            "{parser}: accepted a record that is not JSON: {}",
            show(self.bytes)
        );
        assert_eq!(ex.line, self.line, "{parser}: example line");
        assert!(!ex.group_key.is_empty(), "{parser}: empty group key");
    }
}

fn same(parser: &str, field: &str, got: Option<&str>, want: Option<&str>) {
    assert_eq!(got, want, "{parser}: `{field}` differs from the record's");
}

/// The BIO grammar the readers promise for the tags of an accepted sentence.
fn check_bio(parser: &str, words: &[String], tags: &[String], bio: &BioConfig) {
    assert!(
        !words.is_empty(),
        "{parser}: accepted a sentence with no words"
    );
    assert_eq!(
        words.len(),
        tags.len(),
        "{parser}: words and tags differ in length"
    );
    let mut previous: Option<&str> = None;
    for (i, (word, tag)) in words.iter().zip(tags).enumerate() {
        assert!(!word.is_empty(), "{parser}: word {i} is empty");
        if tag == "O" {
            previous = None;
            continue;
        }
        let (prefix, kind) = (tag.get(..2), tag.get(2..).unwrap_or(""));
        assert!(
            matches!(prefix, Some("B-" | "I-")) && !kind.is_empty(),
            "{parser}: tag {i} `{tag}` is not O, B-X or I-X"
        );
        if let Some(types) = &bio.entity_types {
            assert!(
                types.iter().any(|t| t == kind),
                "{parser}: tag {i} `{tag}` has an unknown type"
            );
        }
        if prefix == Some("I-") {
            assert_eq!(
                previous,
                Some(kind),
                "{parser}: tag {i} `{tag}` continues nothing"
            );
        }
        previous = Some(kind);
    }
}

/// Repairs reported = tags changed (and only `I-X` became `B-X`).
fn check_repairs(parser: &str, before: &[String], after: &[String], repairs: u64) {
    let mut changed = 0;
    for (b, a) in before.iter().zip(after) {
        if b != a {
            changed += 1;
            assert!(
                b.strip_prefix("I-").is_some() && b.get(2..) == a.get(2..) && a.starts_with("B-"),
                "{parser}: tag `{b}` became `{a}`"
            );
        }
    }
    assert_eq!(
        repairs, changed,
        "{parser}: repairs counted vs tags changed"
    );
}

fn bio_configs() -> [BioConfig; 2] {
    [
        BioConfig::default(),
        BioConfig {
            invalid_continuation: InvalidContinuation::Repair,
            entity_types: Some(vec!["Chemical".into(), "Disease".into()]),
        },
    ]
}

fn check_json_record(bytes: &[u8], line: u64, ordinal: u64) {
    let facts = JsonFacts::new(bytes, line);
    let origin = Origin {
        file_name: "fuzz.jsonl",
        line,
        ordinal,
    };

    let parser = "prompt_completion";
    let (prompt, completion) = (facts.str_field("prompt"), facts.str_field("completion"));
    match prompt_completion(bytes, &origin) {
        Ok(ex) => {
            facts.check_example(parser, &ex);
            if facts.object.is_some() {
                same(parser, "prompt", ex.prompt.as_deref(), prompt);
                same(parser, "completion", ex.completion.as_deref(), completion);
            }
            assert!(
                ex.group_key.starts_with("article:"),
                "{parser}: group key {}",
                ex.group_key
            );
        }
        Err(rej) => {
            facts.check_reject(parser, &rej);
            assert!(
                prompt.is_none() || completion.is_none(),
                "{parser}: rejected a record with string prompt and completion: {:?} {}",
                rej.reason,
                rej.detail
            );
        }
    }

    let parser = "alpaca";
    let (instruction, output) = (facts.str_field("instruction"), facts.str_field("output"));
    let input = facts.object.as_ref().and_then(|m| match m.get("input") {
        None | Some(Value::Null) => Some(""),
        Some(v) => v.as_str(),
    });
    match alpaca(bytes, &origin) {
        Ok(ex) => {
            facts.check_example(parser, &ex);
            if facts.object.is_some() {
                same(
                    parser,
                    "instruction",
                    ex.instruction.as_deref(),
                    instruction,
                );
                same(parser, "output", ex.completion.as_deref(), output);
                same(parser, "input", ex.input.as_deref(), input);
                let (instruction, input) = (instruction.unwrap_or(""), input.unwrap_or(""));
                let prompt = if input.trim().is_empty() {
                    instruction.to_string()
                } else {
                    format!("{instruction}\n\n{input}")
                };
                same(parser, "prompt", ex.prompt.as_deref(), Some(&prompt));
            }
        }
        Err(rej) => {
            facts.check_reject(parser, &rej);
            assert!(
                instruction.is_none() || output.is_none() || input.is_none(),
                "{parser}: rejected a record with string instruction, input and output: {:?} {}",
                rej.reason,
                rej.detail
            );
        }
    }

    for bio in bio_configs() {
        let parser = "bio_json";
        match bio_json(bytes, &origin, &bio) {
            Ok((ex, repairs)) => {
                facts.check_example(parser, &ex);
                let (words, tags) = (
                    ex.words.as_deref().unwrap_or(&[]),
                    ex.tags.as_deref().unwrap_or(&[]),
                );
                check_bio(parser, words, tags, &bio);
                let Some(m) = &facts.object else { continue };
                let has_id = ["id", "doc_id", "document_id"]
                    .iter()
                    .any(|k| m.get(*k).is_some_and(|v| !v.is_null()));
                if !has_id {
                    assert_eq!(
                        ex.group_key,
                        format!("sentence:fuzz.jsonl:{ordinal}"),
                        "{parser}: a record without an id is its own group, by ordinal"
                    );
                }
                let strings = |v: &Value, field: &str| -> Option<Vec<String>> {
                    v.as_array()?
                        .iter()
                        .map(|x| match field {
                            "" => x.as_str().map(str::to_string),
                            f => x.get(f)?.as_str().map(str::to_string),
                        })
                        .collect()
                };
                let pick = |a: &str, b: &str| {
                    m.get(a)
                        .filter(|v| !v.is_null())
                        .or(m.get(b))
                        .filter(|v| !v.is_null())
                };
                let (want_words, want_tags) = match m.get("labels").filter(|v| !v.is_null()) {
                    Some(labels) => (strings(labels, "word"), strings(labels, "entity")),
                    None => (
                        pick("words", "tokens").and_then(|v| strings(v, "")),
                        pick("tags", "ner_tags").and_then(|v| strings(v, "")),
                    ),
                };
                assert_eq!(
                    Some(words),
                    want_words.as_deref(),
                    "{parser}: words differ from the record's"
                );
                let want_tags = want_tags.expect("accepted tags are a list of strings");
                check_repairs(parser, &want_tags, tags, repairs);
                if bio.invalid_continuation == InvalidContinuation::Reject {
                    assert_eq!(repairs, 0, "{parser}: repairs under the reject policy");
                }
            }
            Err(rej) => facts.check_reject(parser, &rej),
        }
    }
}

/// The JSON record parsers (`prompt_completion`, `alpaca`, `bio_json` under two BIO
/// settings), on the whole input as one record and on each record the framer cuts from it:
/// each record gives one example or one reject with a detail and a line inside the record;
/// non-UTF-8 is `invalid_utf8`; text that is not JSON is never accepted; an accepted record's
/// fields are the JSON object's; a JSON object with the required string fields is accepted.
pub fn json_records(data: &[u8]) {
    check_json_record(data, 1, 1);
    for (i, item) in JsonRecords::new(data, 1 << 20).enumerate() {
        if let Ok(rec) = item.expect("framing an in-memory slice cannot fail") {
            check_json_record(&rec.bytes, rec.line, i as u64 + 1);
        }
    }
}

/// One line as the CoNLL oracle sees it: its 1-based number and bytes.
struct Line<'a> {
    number: u64,
    bytes: &'a [u8],
}

/// The sentences of a CoNLL input by its rules, restated: lines end at `\n` (a final `\r`
/// dropped), a leading BOM is not part of the first line, blank lines (ASCII whitespace only)
/// end sentences, `-DOCSTART-` lines end sentences and are no part of any. Each sentence comes
/// with whether a `-DOCSTART-` line came before it.
fn conll_sentences(data: &[u8]) -> Vec<(bool, Vec<Line<'_>>)> {
    let data = data.strip_prefix(BOM).unwrap_or(data);
    let mut lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let (mut sentences, mut current, mut document) = (Vec::new(), Vec::new(), false);
    for (i, bytes) in lines.into_iter().enumerate() {
        let bytes = &bytes[..bytes.len().min(CONLL_MAX_LINE_BYTES)];
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        let blank = bytes.iter().all(u8::is_ascii_whitespace);
        let docstart = bytes.starts_with(b"-DOCSTART-");
        if blank || docstart {
            if !current.is_empty() {
                sentences.push((document, std::mem::take(&mut current)));
            }
            document |= docstart;
            continue;
        }
        current.push(Line {
            number: i as u64 + 1,
            bytes,
        });
    }
    if !current.is_empty() {
        sentences.push((document, current));
    }
    sentences
}

/// The CoNLL reader (`conll::ConllSentences`), with a long and a 4-word sentence bound and two
/// BIO settings: sentences (runs of non-blank lines, by the rules restated in
/// `conll_sentences`) = examples + rejects, in order; an example starts on its sentence's first
/// line, has one word and one tag per line, the line's first column as word, valid BIO tags and
/// a `doc:` group key exactly when a `-DOCSTART-` line came before; a sentence with a line that
/// is not `token<TAB>label`, not UTF-8, or over the word bound is rejected on one of its lines.
pub fn conll(data: &[u8]) {
    let sentences = conll_sentences(data);
    for (bio, max_words) in bio_configs().into_iter().zip([1000, 4]) {
        let items: Vec<_> = ConllSentences::new(data, "fuzz.tsv", &bio, max_words)
            .map(|item| item.expect("reading an in-memory slice cannot fail"))
            .collect();
        assert_eq!(
            items.len(),
            sentences.len(),
            "conll (max_words {max_words}): {} sentences in the input, {} items read",
            sentences.len(),
            items.len()
        );
        for (i, (item, (document, lines))) in items.iter().zip(&sentences).enumerate() {
            let (first, last) = (lines[0].number, lines[lines.len() - 1].number);
            let text: Option<Vec<&str>> = lines
                .iter()
                .map(|l| std::str::from_utf8(l.bytes).ok())
                .collect();
            let well_formed = text.as_ref().is_some_and(|t| {
                t.iter().all(|l| {
                    let mut cols = l.split('\t');
                    let (token, label) = (cols.next().unwrap_or(""), cols.next());
                    cols.next().is_none()
                        && !token.trim().is_empty()
                        && label.is_some_and(|x| !x.trim().is_empty())
                })
            });
            match item {
                Ok((ex, repairs)) => {
                    let parser = "conll";
                    assert!(well_formed, "conll: sentence {i} (lines {first}..={last}) has a line that is not token<TAB>label, yet was accepted");
                    assert!(
                        lines.len() <= max_words,
                        "conll: sentence {i} over the word bound was accepted"
                    );
                    assert_eq!(
                        ex.line, first,
                        "conll: sentence {i} starts on the wrong line"
                    );
                    let (words, tags) = (
                        ex.words.as_deref().unwrap_or(&[]),
                        ex.tags.as_deref().unwrap_or(&[]),
                    );
                    assert_eq!(
                        words.len(),
                        lines.len(),
                        "conll: sentence {i}: words vs lines"
                    );
                    check_bio(parser, words, tags, &bio);
                    let columns: Vec<(&str, &str)> = text
                        .unwrap_or_default()
                        .iter()
                        .map(|l| {
                            l.split_once('\t')
                                .map(|(w, t)| (w.trim(), t.trim()))
                                .unwrap_or_default()
                        })
                        .collect();
                    for (j, word) in words.iter().enumerate() {
                        assert_eq!(word, columns[j].0, "conll: sentence {i} word {j}");
                    }
                    let labels: Vec<String> = columns.iter().map(|c| c.1.to_string()).collect();
                    check_repairs(parser, &labels, tags, *repairs);
                    assert_eq!(
                        ex.group_key.starts_with("doc:"),
                        *document,
                        "conll: sentence {i} group key {} (after -DOCSTART-: {document})",
                        ex.group_key
                    );
                }
                Err(rej) => {
                    assert!(
                        !rej.detail.is_empty(),
                        "conll: reject {:?} has no detail",
                        rej.reason
                    );
                    assert!(
                        (first..=last).contains(&rej.line),
                        "conll: sentence {i} on lines {first}..={last} rejected on line {}",
                        rej.line
                    );
                }
            }
        }
    }
}
