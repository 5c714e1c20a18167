//! Opening an input file: a quick look at its first bytes against the declared format, then
//! a buffered reader that counts the bytes it has read (the progress bar's position).

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use medtune_pipeline::{PipelineError, Result};

use super::InputFormat;

/// The file's name, which row ids start with.
pub(super) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Counts bytes read, for progress.
pub(super) struct Counting<R> {
    inner: R,
    /// Bytes read so far.
    pub(super) bytes: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

pub(super) type Input = BufReader<Counting<File>>;

/// The error for an input that cannot be opened or read: bad input (exit 2), naming the file
/// and the OS error.
pub(super) fn unreadable(path: &Path, e: io::Error) -> PipelineError {
    PipelineError::bad_input(path, format!("cannot read it: {e}"))
}

/// Opens an input at byte `start` (where an earlier ingest of it stopped).
pub(super) fn open_at(path: &Path, start: u64) -> Result<Input> {
    let mut file = File::open(path).map_err(|e| unreadable(path, e))?;
    file.seek(SeekFrom::Start(start))
        .map_err(|e| unreadable(path, e))?;
    Ok(BufReader::with_capacity(
        1 << 20,
        Counting {
            inner: file,
            bytes: 0,
        },
    ))
}

/// Opens an input, failing clearly when it is empty or obviously not in `format`.
pub(super) fn open_checked(format: InputFormat, path: &Path) -> Result<Input> {
    let mut file = File::open(path).map_err(|e| unreadable(path, e))?;
    let mut head = vec![0u8; 64 * 1024];
    let mut filled = 0;
    while filled < head.len() {
        let n = file
            .read(&mut head[filled..])
            .map_err(|e| unreadable(path, e))?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    head.truncate(filled);
    sniff(format, &head).map_err(|m| PipelineError::bad_input(path, m))?;
    open_at(path, 0)
}

/// Checks the first bytes of a file against its declared format.
fn sniff(format: InputFormat, head: &[u8]) -> std::result::Result<(), String> {
    let body = head.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(head);
    let Some(first) = body.iter().position(|b| !b.is_ascii_whitespace()) else {
        return Err(if head.is_empty() {
            "the file is empty".into()
        } else {
            "the file holds only whitespace".into()
        });
    };
    let line = 1 + body[..first].iter().filter(|&&b| b == b'\n').count();
    match format {
        InputFormat::Conll => {
            // Comment lines (`# doc_id = ...`: `#` first, no tab) may come before the first
            // token; whether they are allowed is the reader's to say, line by line.
            let mut line = line;
            let mut rest = &body[first..];
            let first_line = loop {
                let end = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
                let candidate = &rest[..end];
                let comment =
                    candidate.first() == Some(&b'#') && memchr::memchr(b'\t', candidate).is_none();
                let blank = candidate.iter().all(u8::is_ascii_whitespace);
                if !(comment || blank) || end == rest.len() {
                    break candidate;
                }
                rest = &rest[end + 1..];
                line += 1;
            };
            let comment_only = first_line.first() == Some(&b'#');
            if first_line.starts_with(b"-DOCSTART-")
                || memchr::memchr(b'\t', first_line).is_some()
                || comment_only
            {
                Ok(())
            } else {
                Err(format!(
                    "not a CoNLL file: line {line} has no tab (expected `token<TAB>label`), \
                     found {:?}",
                    String::from_utf8_lossy(&first_line[..first_line.len().min(80)])
                ))
            }
        }
        _ => match body[first] {
            b'[' | b'{' => Ok(()),
            other => Err(format!(
                "not JSON: format `{}` expects a JSON array or JSON lines, but line {line} \
                 starts with {:?}",
                format.kind(),
                char::from(other)
            )),
        },
    }
}
