//! Reading only what was appended to a JSON input since the previous ingest.
//!
//! After ingesting a JSON file that parsed to its end cleanly, the stage records an append
//! point: the offset where its records end (just past the last element of an array; the end
//! of a JSON lines file), the BLAKE3 of the bytes before it, the line there and the number of
//! records read (so row ids, record ordinals, carry on). On the next run, a file
//! whose bytes up to that offset are unchanged and whose records carry on after it (`,` and
//! more elements before the `]`; more lines) is read from the offset on, and its new records
//! are appended to the previous output. Any other change means a full ingest.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use medtune_pipeline::{PipelineError, Result, SourceDecl, StageContext};
use serde::{Deserialize, Serialize};

use super::InputFormat;

const FILE: &str = "append_points.json";
/// How far past a append point the stage looks for the `,` that continues an array.
const LOOKAHEAD: usize = 64 * 1024;

/// Where the records of one input file ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct AppendPoint {
    /// The input as written in the config.
    pub source: String,
    /// Offset of the end of the records (just past the last array element; the end of a JSON
    /// lines file).
    pub offset: u64,
    /// Hex BLAKE3 of the bytes before it.
    pub prefix_blake3: String,
    /// The 1-based line at the offset.
    pub line: u64,
    /// Whether the file is a JSON array (else JSON lines).
    pub array: bool,
    /// Records kept from the file so far.
    pub kept: u64,
    /// Records read from the file so far, kept or rejected: the next one's ordinal is one more.
    pub records: u64,
}

/// Where to carry on reading a file that only grew.
pub(crate) struct AppendStart {
    /// Offset to read from.
    pub start: u64,
    /// The line at `start`.
    pub line: u64,
    /// Whether the reader is inside a JSON array.
    pub array: bool,
    /// Records kept from the file before.
    pub kept: u64,
    /// Records read from the file before, kept or rejected.
    pub records: u64,
    /// The hash of the bytes before the previous append point, and that point's offset and
    /// line, from which the next append point is hashed on.
    pub prefix: (blake3::Hasher, u64, u64),
}

/// The append points saved in `dir`, if any.
pub(crate) fn load(dir: &Path) -> Option<Vec<AppendPoint>> {
    let bytes = std::fs::read(dir.join(FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Saves append points into `dir`.
pub(crate) fn save(dir: &Path, points: &[AppendPoint]) -> Result<()> {
    let path = dir.join(FILE);
    let bytes = serde_json::to_vec_pretty(points).expect("append points serialise");
    std::fs::write(&path, bytes).map_err(|e| PipelineError::io(&path, e))
}

/// Hashes `len` bytes of `file` into `hasher`, returning the newlines among them; `None` when
/// the file ends first.
fn hash_span(
    file: &mut File,
    len: u64,
    hasher: &mut blake3::Hasher,
) -> std::io::Result<Option<u64>> {
    let mut buf = vec![0u8; 1 << 20];
    let (mut left, mut newlines) = (len, 0u64);
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = file.read(&mut buf[..want])?;
        if n == 0 {
            return Ok(None);
        }
        hasher.update(&buf[..n]);
        newlines += memchr::memchr_iter(b'\n', &buf[..n]).count() as u64;
        left -= n as u64;
    }
    Ok(Some(newlines))
}

/// How to carry on reading `path` from `point`, or `None` when the file changed otherwise.
pub(crate) fn check(path: &Path, point: &AppendPoint) -> Result<Option<AppendStart>> {
    let io = |e| super::input::unreadable(path, e);
    let mut file = File::open(path).map_err(io)?;
    let mut hasher = blake3::Hasher::new();
    if hash_span(&mut file, point.offset, &mut hasher)
        .map_err(io)?
        .is_none()
        || hasher.finalize().to_hex().as_str() != point.prefix_blake3
    {
        return Ok(None);
    }
    let mut after = Vec::with_capacity(LOOKAHEAD);
    (&mut file)
        .take(LOOKAHEAD as u64)
        .read_to_end(&mut after)
        .map_err(io)?;
    let carries_on = if point.array {
        // More elements (`,`) or none (`]`): the framer reads on from just after the old last
        // element, so it sees the comma (and a trailing one before `]`) itself.
        after
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| matches!(b, b',' | b']'))
    } else {
        // More lines, or none: the last old line must have ended where it did.
        after.first().is_none_or(|b| matches!(b, b'\n' | b'\r'))
    };
    if !carries_on {
        return Ok(None);
    }
    Ok(Some(AppendStart {
        start: point.offset,
        line: point.line,
        array: point.array,
        kept: point.kept,
        records: point.records,
        prefix: (hasher, point.offset, point.line),
    }))
}

/// The append point of `path` after it was read to its end cleanly: hashed from `from` (the
/// hash, offset and line of an earlier point) or from the start.
pub(crate) fn point_after(
    path: &Path,
    source: &str,
    array: bool,
    kept: u64,
    records: u64,
    from: Option<(blake3::Hasher, u64, u64)>,
) -> Result<Option<AppendPoint>> {
    let io = |e| super::input::unreadable(path, e);
    let mut file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let offset = if array {
        match end_of_elements(&mut file, len).map_err(io)? {
            Some(offset) => offset,
            None => return Ok(None),
        }
    } else {
        len
    };
    let (mut hasher, start, line) = from.unwrap_or_else(|| (blake3::Hasher::new(), 0, 1));
    if offset < start {
        return Ok(None);
    }
    file.seek(SeekFrom::Start(start)).map_err(io)?;
    let Some(newlines) = hash_span(&mut file, offset - start, &mut hasher).map_err(io)? else {
        return Ok(None);
    };
    Ok(Some(AppendPoint {
        source: source.to_string(),
        offset,
        prefix_blake3: hasher.finalize().to_hex().to_string(),
        line: line + newlines,
        array,
        kept,
        records,
    }))
}

/// The offset just past the last element of the array that ends the file: before the
/// whitespace that precedes its closing `]` (only whitespace may follow that).
fn end_of_elements(file: &mut File, len: u64) -> std::io::Result<Option<u64>> {
    let tail = len.min(LOOKAHEAD as u64);
    file.seek(SeekFrom::Start(len - tail))?;
    let mut buf = Vec::with_capacity(tail as usize);
    file.take(tail).read_to_end(&mut buf)?;
    let content = |end: usize| buf[..end].iter().rposition(|b| !b.is_ascii_whitespace());
    let Some(bracket) = content(buf.len()).filter(|&i| buf[i] == b']') else {
        return Ok(None);
    };
    Ok(content(bracket).map(|i| len - tail + i as u64 + 1))
}

/// Where to carry on reading every input, when the previous output left append points
/// and every input only grew past its point.
pub(super) fn starts(
    ctx: &StageContext<'_>,
    sources: &[SourceDecl],
    format: InputFormat,
) -> Result<Option<Vec<AppendStart>>> {
    if format == InputFormat::Conll {
        return Ok(None);
    }
    let Some(points) = ctx.previous().and_then(|p| load(&p.artifacts_dir())) else {
        return Ok(None);
    };
    if points.len() != sources.len() {
        return Ok(None);
    }
    let mut starts = Vec::with_capacity(points.len());
    for (source, point) in sources.iter().zip(&points) {
        if point.source != source.written {
            return Ok(None);
        }
        match check(&source.path, point)? {
            Some(r) => starts.push(r),
            None => return Ok(None),
        }
    }
    Ok(Some(starts))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn point(dir: &Path, text: &str, array: bool) -> (PathBuf, AppendPoint) {
        let path = dir.join("input.json");
        std::fs::write(&path, text).unwrap();
        let point = point_after(&path, "input.json", array, 2, 2, None)
            .unwrap()
            .unwrap();
        (path, point)
    }

    #[test]
    fn an_array_that_grew_is_read_on_after_its_last_old_element() {
        let dir = tempfile::tempdir().unwrap();
        let (path, p) = point(dir.path(), "[\n{\"a\": 1},\n{\"a\": 2}\n]\n", true);
        assert_eq!(p.offset, 20); // just past `{"a": 2}`
        assert_eq!(p.line, 3);
        std::fs::write(&path, "[\n{\"a\": 1},\n{\"a\": 2},\n{\"a\": 3}\n]\n").unwrap();
        let start = check(&path, &p).unwrap().unwrap();
        assert_eq!(
            (start.start, start.line, start.kept, start.records),
            (20, 3, 2, 2)
        );
        // Hashing on from the old point gives the point a full read would.
        let next = point_after(&path, "input.json", true, 3, 3, Some(start.prefix))
            .unwrap()
            .unwrap();
        let full = point_after(&path, "input.json", true, 3, 3, None)
            .unwrap()
            .unwrap();
        assert_eq!(next, full);
    }

    #[test]
    fn an_unchanged_array_appends_at_its_bracket_and_an_edited_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let (path, p) = point(dir.path(), "[{\"a\": 1}, {\"a\": 2}]", true);
        let start = check(&path, &p).unwrap().unwrap();
        assert_eq!(start.start, p.offset);
        std::fs::write(&path, "[{\"a\": 9}, {\"a\": 2}, {\"a\": 3}]").unwrap();
        assert!(check(&path, &p).unwrap().is_none());
        // Something other than `,` or `]` after the last element: not a continuation.
        std::fs::write(&path, "[{\"a\": 1}, {\"a\": 2}} ]").unwrap();
        assert!(check(&path, &p).unwrap().is_none());
    }

    #[test]
    fn json_lines_append_only_at_a_line_end() {
        let dir = tempfile::tempdir().unwrap();
        let (path, p) = point(dir.path(), "{\"a\": 1}\n{\"a\": 2}", false);
        assert_eq!((p.offset, p.line), (17, 2));
        std::fs::write(&path, "{\"a\": 1}\n{\"a\": 2}\n{\"a\": 3}\n").unwrap();
        assert_eq!(check(&path, &p).unwrap().unwrap().start, 17);
        // The old last line carried on: its record changed.
        std::fs::write(&path, "{\"a\": 1}\n{\"a\": 2}, \"b\": 3}\n").unwrap();
        assert!(check(&path, &p).unwrap().is_none());
    }
}
