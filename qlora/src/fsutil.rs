//! Writing a folder of files atomically: into a sibling temporary folder, every file fsynced,
//! then renamed over the target, so a crash never leaves a half-written checkpoint or adapter.

use std::path::{Path, PathBuf};

use crate::error::{QloraError, Result};

/// Creates `dir` with the files `fill` writes into the temporary folder it is given.
pub fn write_dir_atomically(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    let name = dir.file_name().map(|n| n.to_string_lossy().to_string());
    let tmp: PathBuf = parent.join(format!(".tmp-{}", name.unwrap_or_default()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| QloraError::file(&tmp, e))?;
    fill(&tmp)?;
    for entry in std::fs::read_dir(&tmp).map_err(|e| QloraError::file(&tmp, e))? {
        let path = entry.map_err(|e| QloraError::file(&tmp, e))?.path();
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(|e| QloraError::file(&path, e))?;
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir).map_err(|e| QloraError::file(dir, e))
}
