//! Splits a JSON input into records without holding the file in memory: either the elements
//! of a top-level JSON array, or the non-blank lines of a JSON-lines file. Each record comes
//! with the line it starts on, so errors and rejects can name it.

use std::io::{self, BufRead};

use crate::record::{Reject, RejectReason};

/// One framed record: its starting line and raw bytes.
#[derive(Debug, PartialEq)]
pub struct RawRecord {
    /// 1-based line where the record starts.
    pub line: u64,
    /// The record's bytes (without separators).
    pub bytes: Vec<u8>,
}

/// Reads one line without its `\n` or `\r\n`, keeping at most `max` bytes of it. Returns the
/// kept bytes and whether the line was longer; `None` at end of input.
pub fn read_bounded_line<R: BufRead>(
    reader: &mut R,
    max: usize,
) -> io::Result<Option<(Vec<u8>, bool)>> {
    let mut out = Vec::new();
    let mut oversized = false;
    let mut any = false;
    // The cut dropped a `\r`: the line end's, unless more of the line follows.
    let mut cut_cr = false;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        any = true;
        let (chunk, found) = match memchr::memchr(b'\n', buf) {
            Some(i) => (&buf[..i], Some(i)),
            None => (buf, None),
        };
        let room = max.saturating_sub(out.len());
        // A final `\r` is part of the line end, not of the line's size.
        let excess = &chunk[room.min(chunk.len())..];
        if !excess.is_empty() {
            oversized |= cut_cr || excess != b"\r";
            cut_cr = true;
        }
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = found.map_or(buf.len(), |i| i + 1);
        reader.consume(used);
        if found.is_some() {
            break;
        }
    }
    if !any {
        return Ok(None);
    }
    if !cut_cr && out.last() == Some(&b'\r') {
        out.pop();
    }
    Ok(Some((out, oversized)))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Not yet looked at the first byte.
    Detect,
    /// JSON lines.
    Lines,
    /// In an array, just after an element: before the `,` or `]` that ends it.
    AfterElement,
    /// In an array, before an element or the closing bracket.
    BeforeElement,
    /// After the closing bracket.
    AfterArray,
    /// Nothing more to read.
    Done,
}

/// Iterator over the records of a JSON array or JSON-lines stream.
pub struct JsonRecords<R> {
    reader: R,
    state: State,
    line: u64,
    max_record_bytes: usize,
    array: bool,
    /// In `BeforeElement` after a `,`: the comma's line (a `]` next is a trailing comma).
    comma: Option<u64>,
}

impl<R: BufRead> JsonRecords<R> {
    /// Frames `reader`; records longer than `max_record_bytes` are rejected, not stored.
    pub fn new(reader: R, max_record_bytes: usize) -> Self {
        JsonRecords {
            reader,
            state: State::Detect,
            line: 1,
            max_record_bytes,
            array: false,
            comma: None,
        }
    }

    /// Frames `reader` positioned inside a stream read before: just after an array element
    /// (before the `,` or `]` that follows it) when `array`, else at the start of a line.
    /// `line` is the line the reader is on.
    pub fn starting_at(reader: R, line: u64, array: bool, max_record_bytes: usize) -> Self {
        JsonRecords {
            reader,
            state: if array {
                State::AfterElement
            } else {
                State::Lines
            },
            line,
            max_record_bytes,
            array,
            comma: None,
        }
    }

    /// Whether the input turned out to be a JSON array (known after the first record).
    pub fn is_array(&self) -> bool {
        self.array
    }

    /// The underlying reader.
    pub fn get_ref(&self) -> &R {
        &self.reader
    }

    /// Skips a UTF-8 byte-order mark at the start of the input (anywhere else it is data).
    fn skip_bom(&mut self) -> io::Result<()> {
        if self.reader.fill_buf()?.starts_with(&[0xEF, 0xBB, 0xBF]) {
            self.reader.consume(3);
        }
        Ok(())
    }

    /// Skips whitespace, counting lines. Returns the next byte without consuming it, or
    /// `None` at end of input.
    fn skip_whitespace(&mut self) -> io::Result<Option<u8>> {
        loop {
            let buf = self.reader.fill_buf()?;
            if buf.is_empty() {
                return Ok(None);
            }
            let mut used = 0;
            for &b in buf {
                match b {
                    b'\n' => self.line += 1,
                    b' ' | b'\t' | b'\r' => {}
                    _ => {
                        self.reader.consume(used);
                        return Ok(Some(b));
                    }
                }
                used += 1;
            }
            self.reader.consume(used);
        }
    }

    fn read_line(&mut self) -> io::Result<(Vec<u8>, bool)> {
        Ok(read_bounded_line(&mut self.reader, self.max_record_bytes)?.unwrap_or_default())
    }

    /// Reads one array element up to (not including) the `,` or `]` that ends it.
    /// Returns the bytes, whether it was oversized, and the terminator (`None` at EOF).
    fn read_element(&mut self) -> io::Result<(Vec<u8>, bool, Option<u8>)> {
        let mut out = Vec::new();
        let mut oversized = false;
        let (mut depth, mut in_string, mut escaped) = (0i64, false, false);
        loop {
            let buf = self.reader.fill_buf()?;
            if buf.is_empty() {
                return Ok((out, oversized, None));
            }
            let mut end = None;
            for (i, &b) in buf.iter().enumerate() {
                if b == b'\n' {
                    self.line += 1;
                }
                if in_string {
                    match (escaped, b) {
                        (true, _) => escaped = false,
                        (false, b'\\') => escaped = true,
                        (false, b'"') => in_string = false,
                        _ => {}
                    }
                    continue;
                }
                match b {
                    b'"' => in_string = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' if depth > 0 => depth -= 1,
                    b',' | b']' if depth == 0 => {
                        end = Some((i, b));
                        break;
                    }
                    _ => {}
                }
            }
            let take = end.map_or(buf.len(), |(i, _)| i);
            let room = self.max_record_bytes.saturating_sub(out.len());
            // Whitespace before the `,` or `]` is trimmed off, so it does not count.
            if buf[room.min(take)..take]
                .iter()
                .any(|b| !b.is_ascii_whitespace())
            {
                oversized = true;
            }
            out.extend_from_slice(&buf[..take.min(room)]);
            match end {
                Some((i, b)) => {
                    self.reader.consume(i + 1);
                    // Not when cut at the bound: the cut may end inside the element, so the
                    // trim could eat all of it (`[\x0c\r\r…x]`) and make it look absent.
                    while !oversized && out.last().is_some_and(u8::is_ascii_whitespace) {
                        out.pop();
                    }
                    return Ok((out, oversized, Some(b)));
                }
                None => {
                    let n = buf.len();
                    self.reader.consume(n);
                }
            }
        }
    }

    fn oversized(&self, line: u64, bytes: Vec<u8>) -> Reject {
        Reject {
            line,
            reason: RejectReason::RecordTooLarge,
            detail: format!(
                "record is larger than max_record_bytes = {}",
                self.max_record_bytes
            ),
            raw: bytes,
        }
    }

    fn next_record(&mut self) -> io::Result<Option<Result<RawRecord, Reject>>> {
        loop {
            match self.state {
                State::Done => return Ok(None),
                State::Detect => match self.skip_bom().and_then(|()| self.skip_whitespace())? {
                    None => self.state = State::Done,
                    Some(b'[') => {
                        self.reader.consume(1);
                        self.array = true;
                        self.state = State::BeforeElement;
                    }
                    Some(_) => self.state = State::Lines,
                },
                State::Lines => {
                    // Blank lines separate nothing and are skipped.
                    if self.skip_whitespace()?.is_none() {
                        self.state = State::Done;
                        continue;
                    }
                    let line = self.line;
                    let (bytes, oversized) = self.read_line()?;
                    self.line += 1;
                    if oversized {
                        return Ok(Some(Err(self.oversized(line, bytes))));
                    }
                    return Ok(Some(Ok(RawRecord { line, bytes })));
                }
                State::BeforeElement => match self.skip_whitespace()? {
                    None => {
                        self.state = State::Done;
                        return Ok(Some(Err(Reject {
                            line: self.line,
                            reason: RejectReason::Truncated,
                            detail: "the JSON array is not closed with `]` (truncated file?)"
                                .into(),
                            raw: Vec::new(),
                        })));
                    }
                    Some(b']') => {
                        self.reader.consume(1);
                        self.state = State::AfterArray;
                        if let Some(line) = self.comma.take() {
                            return Ok(Some(Err(Reject {
                                line,
                                reason: RejectReason::MalformedJson,
                                detail: "trailing comma before `]`".into(),
                                raw: b",]".to_vec(),
                            })));
                        }
                    }
                    Some(_) => {
                        let line = self.line;
                        let (bytes, oversized, end) = self.read_element()?;
                        self.comma = None;
                        match end {
                            Some(b']') => self.state = State::AfterArray,
                            Some(_) => self.comma = Some(self.line),
                            None => {
                                self.state = State::Done;
                                return Ok(Some(Err(Reject {
                                    line,
                                    reason: RejectReason::Truncated,
                                    detail: "the file ends inside this record (truncated file?)"
                                        .into(),
                                    raw: bytes,
                                })));
                            }
                        }
                        if bytes.is_empty() {
                            // Only a `,` ends an element that starts there: `[,` or `,,`.
                            return Ok(Some(Err(Reject {
                                line,
                                reason: RejectReason::MalformedJson,
                                detail: "missing array element (a `,` with no value before it)"
                                    .into(),
                                raw: b",".to_vec(),
                            })));
                        }
                        if oversized {
                            return Ok(Some(Err(self.oversized(line, bytes))));
                        }
                        return Ok(Some(Ok(RawRecord { line, bytes })));
                    }
                },
                State::AfterElement => match self.skip_whitespace()? {
                    Some(b',') => {
                        self.reader.consume(1);
                        self.comma = Some(self.line);
                        self.state = State::BeforeElement;
                    }
                    Some(b']') => {
                        self.reader.consume(1);
                        self.state = State::AfterArray;
                    }
                    // Anything else: the element scanner frames it (or reports the truncation).
                    _ => self.state = State::BeforeElement,
                },
                State::AfterArray => match self.skip_whitespace()? {
                    None => self.state = State::Done,
                    Some(_) => {
                        let line = self.line;
                        let (bytes, _) = self.read_line()?;
                        self.state = State::Done;
                        return Ok(Some(Err(Reject {
                            line,
                            reason: RejectReason::TrailingData,
                            detail: "data after the closing `]` of the JSON array".into(),
                            raw: bytes,
                        })));
                    }
                },
            }
        }
    }
}

impl<R: BufRead> Iterator for JsonRecords<R> {
    type Item = io::Result<Result<RawRecord, Reject>>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> Vec<Result<(u64, String), (u64, RejectReason)>> {
        JsonRecords::new(text.as_bytes(), 64)
            .map(|r| match r.unwrap() {
                Ok(rec) => Ok((rec.line, String::from_utf8(rec.bytes).unwrap())),
                Err(rej) => Err((rej.line, rej.reason)),
            })
            .collect()
    }

    #[test]
    fn array_elements_come_with_their_start_lines() {
        let text = "[\n  {\"a\": \"x,]}\"},\n  {\"b\": [1, 2]}\n]\n";
        assert_eq!(
            frame(text),
            vec![
                Ok((2, r#"{"a": "x,]}"}"#.to_string())),
                Ok((3, r#"{"b": [1, 2]}"#.to_string()))
            ]
        );
    }

    #[test]
    fn escaped_quotes_do_not_end_strings() {
        let text = r#"[{"a": "say \"hi\", ok"}]"#;
        assert_eq!(
            frame(text),
            vec![Ok((1, r#"{"a": "say \"hi\", ok"}"#.into()))]
        );
    }

    #[test]
    fn json_lines_skip_blank_lines_and_keep_line_numbers() {
        let text = "{\"a\":1}\n\n  \r\n{\"a\":2}\r\n";
        assert_eq!(
            frame(text),
            vec![Ok((1, "{\"a\":1}".into())), Ok((4, "{\"a\":2}".into()))]
        );
    }

    #[test]
    fn a_truncated_array_rejects_the_partial_record() {
        assert_eq!(
            frame("[{\"a\":1},\n{\"a\":"),
            vec![
                Ok((1, "{\"a\":1}".into())),
                Err((2, RejectReason::Truncated))
            ]
        );
        assert_eq!(
            frame("[{\"a\":1},\n"),
            vec![
                Ok((1, "{\"a\":1}".into())),
                Err((2, RejectReason::Truncated))
            ]
        );
    }

    #[test]
    fn data_after_the_array_is_rejected() {
        assert_eq!(
            frame("[{\"a\":1}]\n{\"b\":2}"),
            vec![
                Ok((1, "{\"a\":1}".into())),
                Err((2, RejectReason::TrailingData))
            ]
        );
    }

    #[test]
    fn oversized_records_are_rejected_in_both_modes() {
        let big = format!("{{\"a\":\"{}\"}}", "x".repeat(100));
        assert_eq!(frame(&big), vec![Err((1, RejectReason::RecordTooLarge))]);
        assert_eq!(
            frame(&format!("[{big},{{}}]")),
            vec![Err((1, RejectReason::RecordTooLarge)), Ok((1, "{}".into()))]
        );
    }

    #[test]
    fn empty_arrays_yield_no_records() {
        assert_eq!(frame("[ ]"), vec![]);
        assert_eq!(frame("[\n]\n"), vec![]);
        assert_eq!(frame(""), vec![]);
    }

    #[test]
    fn trailing_and_doubled_commas_are_rejected_and_the_elements_kept() {
        assert_eq!(
            frame("[{},]"),
            vec![Ok((1, "{}".into())), Err((1, RejectReason::MalformedJson))]
        );
        // The reject names the comma's line.
        assert_eq!(
            frame("[\n{},\n{}, \n\n]\n"),
            vec![
                Ok((2, "{}".into())),
                Ok((3, "{}".into())),
                Err((3, RejectReason::MalformedJson))
            ]
        );
        assert_eq!(
            frame("[{},,{}]"),
            vec![
                Ok((1, "{}".into())),
                Err((1, RejectReason::MalformedJson)),
                Ok((1, "{}".into()))
            ]
        );
        assert_eq!(
            frame("[,{}]"),
            vec![Err((1, RejectReason::MalformedJson)), Ok((1, "{}".into()))]
        );
        let details: Vec<String> = JsonRecords::new(&b"[{},\n]"[..], 64)
            .filter_map(|r| r.unwrap().err().map(|rej| rej.detail))
            .collect();
        assert_eq!(details, vec!["trailing comma before `]`".to_string()]);
    }

    #[test]
    fn a_resumed_array_reads_on_from_just_after_an_element() {
        let resumed = |text: &str| -> Vec<_> {
            JsonRecords::starting_at(text.as_bytes(), 5, true, 64)
                .map(|r| match r.unwrap() {
                    Ok(rec) => Ok((rec.line, String::from_utf8(rec.bytes).unwrap())),
                    Err(rej) => Err((rej.line, rej.reason)),
                })
                .collect()
        };
        assert_eq!(resumed("\n]\n"), vec![]);
        assert_eq!(resumed(",\n{}\n]"), vec![Ok((6, "{}".into()))]);
        assert_eq!(resumed(",\n]"), vec![Err((5, RejectReason::MalformedJson))]);
    }

    #[test]
    fn a_byte_order_mark_is_skipped_only_at_the_start() {
        assert_eq!(frame("\u{FEFF}[{}]"), vec![Ok((1, "{}".into()))]);
        assert_eq!(
            frame("\u{FEFF}{}\n{}"),
            vec![Ok((1, "{}".into())), Ok((2, "{}".into()))]
        );
        // Elsewhere it is part of the record (which then fails to parse as JSON).
        assert_eq!(
            frame("[{},\u{FEFF}{}]"),
            vec![Ok((1, "{}".into())), Ok((1, "\u{FEFF}{}".into()))]
        );
    }
}
