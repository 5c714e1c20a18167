//! Content hashes: BLAKE3 of files, of files as they are written, and of cache-key parts.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result};

/// Hex BLAKE3 of a whole file, streamed in 1 MiB reads.
pub fn hash_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).at(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).at(path)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// A writer that hashes every byte it passes on, so an output file's checksum costs no re-read.
pub struct HashingWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: blake3::Hasher::new(),
            written: 0,
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The inner writer and the hex hash of everything written.
    pub fn finish(self) -> (W, String, u64) {
        (
            self.inner,
            self.hasher.finalize().to_hex().to_string(),
            self.written,
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hex BLAKE3 of a sequence of labelled parts, unambiguous about where each part ends.
pub fn hash_parts<'a>(parts: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> String {
    let mut hasher = blake3::Hasher::new();
    for (label, bytes) in parts {
        for piece in [label.as_bytes(), bytes] {
            hasher.update(&(piece.len() as u64).to_le_bytes());
            hasher.update(piece);
        }
    }
    hasher.finalize().to_hex().to_string()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    len: u64,
    mtime_ns: u128,
    blake3: String,
}

/// Remembers the hash of each source file by (path, length, modification time), so that a
/// warm run does not re-read large inputs. A file whose length or mtime changed is re-hashed.
pub struct SourceHashMemo {
    path: PathBuf,
    entries: Mutex<BTreeMap<String, Stamp>>,
}

impl SourceHashMemo {
    /// Opens the memo stored at `path` (missing or unreadable means empty).
    pub fn open(path: PathBuf) -> Self {
        let entries = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        SourceHashMemo {
            path,
            entries: Mutex::new(entries),
        }
    }

    /// The content hash of `file`, from the memo when the file is unchanged.
    pub fn hash(&self, file: &Path) -> Result<String> {
        let meta = std::fs::metadata(file).at(file)?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let key = std::fs::canonicalize(file)
            .unwrap_or_else(|_| file.to_path_buf())
            .to_string_lossy()
            .into_owned();
        let mut entries = self.entries.lock().expect("memo lock poisoned");
        if let Some(stamp) = entries.get(&key) {
            if stamp.len == meta.len() && stamp.mtime_ns == mtime_ns {
                return Ok(stamp.blake3.clone());
            }
        }
        let blake3 = hash_file(file)?;
        entries.insert(
            key,
            Stamp {
                len: meta.len(),
                mtime_ns,
                blake3: blake3.clone(),
            },
        );
        Ok(blake3)
    }

    /// Writes the memo back (atomically; a failure only costs re-hashing next time).
    pub fn save(&self) -> Result<()> {
        let entries = self.entries.lock().expect("memo lock poisoned");
        let bytes = serde_json::to_vec(&*entries).expect("memo serialises");
        crate::fsutil::write_atomic(&self.path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_boundaries_change_the_hash() {
        assert_ne!(
            hash_parts([("a", b"bc".as_slice())]),
            hash_parts([("ab", b"c".as_slice())])
        );
    }

    #[test]
    fn hashing_writer_matches_hashing_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut w = HashingWriter::new(File::create(&path).unwrap());
        w.write_all(b"hello world").unwrap();
        let (_, hex, n) = w.finish();
        assert_eq!(n, 11);
        assert_eq!(hex, hash_file(&path).unwrap());
    }

    #[test]
    fn memo_rehashes_a_changed_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("input");
        std::fs::write(&file, b"one").unwrap();
        let memo = SourceHashMemo::open(dir.path().join("memo.json"));
        let first = memo.hash(&file).unwrap();
        std::fs::write(&file, b"three").unwrap();
        assert_ne!(memo.hash(&file).unwrap(), first);
        assert_eq!(memo.hash(&file).unwrap(), hash_file(&file).unwrap());
    }
}
