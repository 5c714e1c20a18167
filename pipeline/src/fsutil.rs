//! Durable filesystem helpers: atomic file writes, directory fsync, sharing committed files.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::error::{IoContext, Result};

/// Writes `bytes` to `path` atomically: a sibling temporary file, fsync, rename, fsync of the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    fs::create_dir_all(dir).at(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        let mut file = File::create(&tmp).at(&tmp)?;
        file.write_all(bytes).at(&tmp)?;
        file.sync_all().at(&tmp)?;
    }
    fs::rename(&tmp, path).at(path)?;
    sync_dir(dir)
}

/// Hard-links `from` to `to`, copying where a link is not possible (another filesystem): how
/// committed files, immutable once written, are shared with a later cache entry.
pub fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    if fs::hard_link(from, to).is_err() {
        fs::copy(from, to).at(from)?;
    }
    Ok(())
}

/// Flushes a folder's entries (new names, renames) to disk.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// [`link_or_copy`] for a folder: `to` is created and every file under `from` linked into it
/// at the same relative path.
pub fn link_or_copy_tree(from: &Path, to: &Path) -> Result<()> {
    if from.is_file() {
        return link_or_copy(from, to);
    }
    fs::create_dir_all(to).at(to)?;
    for item in fs::read_dir(from).at(from)? {
        let path = item.at(from)?.path();
        let name = path.file_name().expect("a folder's entries have names");
        link_or_copy_tree(&path, &to.join(name))?;
    }
    Ok(())
}
