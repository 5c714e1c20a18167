//! The workdir: the content-addressed cache, the catalog and the run lock.
//!
//! ```text
//! <workdir>/lock                       held by a running `medtune run`
//! <workdir>/readers.lock               shared by each query while it reads; exclusive while a
//!                                      run replaces a committed output in place (`--force`)
//! <workdir>/catalog.json               dataset name -> (stage, key) of its latest output
//! <workdir>/cache/<stage>/<key>/       a committed output: manifest.json + <dataset>/part-*.parquet
//! <workdir>/cache/<stage>/.tmp-*       an output being written (never trusted, swept on the next run)
//! <workdir>/source-hashes.json         memo of source-file hashes by (path, size, mtime)
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{IoContext, PipelineError, Result};
use crate::fsutil::{sync_dir, write_atomic};
use crate::manifest::{Manifest, ARTIFACTS_DIR, MANIFEST_FILE};
use crate::output::OutputRole;
use crate::reader::CommittedDataset;

/// A medtune workdir.
#[derive(Debug, Clone)]
pub struct Workdir {
    root: PathBuf,
}

/// What the cache holds for a stage and key.
#[derive(Debug)]
pub enum Lookup {
    /// A verified entry.
    Hit(Box<Manifest>),
    /// No entry.
    Missing,
    /// An entry exists but failed verification; the reason says which file and how.
    Corrupt(String),
}

/// Where the catalog points a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogEntry {
    /// Stage that produced it.
    pub stage: String,
    /// Cache key of that stage's output.
    pub key: String,
    /// The dataset's role, kept here so that a query over `rejects` knows which datasets it
    /// needs even when their manifest is gone (`None` in catalogs written before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<OutputRole>,
}

/// A dataset the catalog names whose entry cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnavailableDataset {
    /// Dataset name.
    pub name: String,
    /// Its role as the catalog recorded it, if it did.
    pub role: Option<OutputRole>,
    /// Why it cannot be read.
    pub why: String,
}

/// Dataset name -> latest committed output, and stage name -> latest key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// Datasets by name.
    pub datasets: BTreeMap<String, CatalogEntry>,
    /// Latest key of each stage.
    pub stages: BTreeMap<String, String>,
    /// The config file of the last run that published here (absolute path), so `status` for
    /// another config can say whose outputs SQL serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<PathBuf>,
}

/// The catalog as a query sees it: the datasets it can read, and the ones it cannot (with why),
/// so one damaged entry leaves every other table usable.
#[derive(Debug, Default)]
pub struct CatalogView {
    /// Readable datasets.
    pub datasets: Vec<CommittedDataset>,
    /// Datasets the catalog names whose entry is missing or unreadable.
    pub unavailable: Vec<UnavailableDataset>,
}

impl Workdir {
    /// A workdir rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Workdir { root: root.into() }
    }

    /// The workdir folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of the source-hash memo.
    pub fn source_memo_path(&self) -> PathBuf {
        self.root.join("source-hashes.json")
    }

    fn stage_dir(&self, stage: &str) -> PathBuf {
        self.root.join("cache").join(stage)
    }

    /// Folder of the cache entry of `stage` with `key`.
    pub fn entry_dir(&self, stage: &str, key: &str) -> PathBuf {
        self.stage_dir(stage).join(key)
    }

    /// Folder that keeps a stage's resumable state for `key` across failed runs.
    pub fn scratch_dir(&self, stage: &str, key: &str) -> PathBuf {
        self.root.join("scratch").join(stage).join(key)
    }

    /// The artifacts folder of the latest committed output of `stage`, if it has artifacts.
    pub fn latest_artifacts(&self, stage: &str) -> Option<PathBuf> {
        let key = self.read_catalog().ok()?.stages.get(stage)?.clone();
        let dir = self.entry_dir(stage, &key);
        let manifest = Manifest::read(&dir).ok()?;
        (!manifest.artifacts.is_empty()).then(|| dir.join(ARTIFACTS_DIR))
    }

    /// Looks up and verifies the entry of `stage` with `key`.
    pub fn lookup(&self, stage: &str, key: &str) -> Lookup {
        let dir = self.entry_dir(stage, key);
        if !dir.join(MANIFEST_FILE).exists() {
            return Lookup::Missing;
        }
        match Manifest::read(&dir) {
            Err(e) => Lookup::Corrupt(e.to_string()),
            Ok(m) if m.key != key || m.stage != stage => Lookup::Corrupt(format!(
                "{}: manifest is for {}/{}",
                dir.display(),
                m.stage,
                m.key
            )),
            Ok(m) => match m.verify(&dir) {
                Ok(()) => Lookup::Hit(Box::new(m)),
                Err(why) => Lookup::Corrupt(why),
            },
        }
    }

    /// The manifest of the latest committed output of `stage`, if the catalog knows one.
    pub fn latest_manifest(&self, stage: &str) -> Option<Manifest> {
        let key = self.read_catalog().ok()?.stages.get(stage)?.clone();
        Manifest::read(&self.entry_dir(stage, &key)).ok()
    }

    /// Starts a new entry: a fresh temporary folder that nothing trusts until [`Self::commit`].
    /// Leftover temporary folders of earlier, interrupted runs of the stage are removed.
    pub fn begin(&self, stage: &str, key: &str) -> Result<PendingEntry> {
        let stage_dir = self.stage_dir(stage);
        fs::create_dir_all(&stage_dir).at(&stage_dir)?;
        for entry in fs::read_dir(&stage_dir).at(&stage_dir)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let tmp = stage_dir.join(format!(".tmp-{key}-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&tmp).at(&tmp)?;
        Ok(PendingEntry {
            tmp,
            target: self.entry_dir(stage, key),
        })
    }

    /// Commits a pending entry: writes its manifest, fsyncs, and renames it into place.
    ///
    /// Replacing an entry that already exists (a forced rerun, or a corrupt entry) waits until
    /// no query is reading the workdir ([`Self::read_lock`]), so a query sees the old entry or
    /// the new one, never a gap between them; `on_wait` is called first if it has to wait.
    pub fn commit(
        &self,
        pending: PendingEntry,
        manifest: &Manifest,
        on_wait: &dyn Fn(),
    ) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(manifest).expect("manifest serialises");
        let manifest_path = pending.tmp.join(MANIFEST_FILE);
        {
            let mut file = File::create(&manifest_path).at(&manifest_path)?;
            file.write_all(&bytes).at(&manifest_path)?;
            file.sync_all().at(&manifest_path)?;
        }
        for sub in fs::read_dir(&pending.tmp).at(&pending.tmp)?.flatten() {
            if sub.path().is_dir() {
                sync_dir(&sub.path())?;
            }
        }
        sync_dir(&pending.tmp)?;
        let parent = pending.target.parent().expect("entry has a parent");
        if !pending.target.exists() {
            fs::rename(&pending.tmp, &pending.target).at(&pending.target)?;
            return sync_dir(parent);
        }
        // An entry under the same key: swap it out while no query reads, moving it aside first
        // so that the rename into place is atomic.
        let _readers = self.writer_lock(on_wait)?;
        let trash = pending.tmp.with_extension("replaced");
        fs::rename(&pending.target, &trash).at(&pending.target)?;
        fs::rename(&pending.tmp, &pending.target).at(&pending.target)?;
        sync_dir(parent)?;
        fs::remove_dir_all(&trash).at(&trash)
    }

    fn readers_lock_file(&self) -> Result<File> {
        fs::create_dir_all(&self.root).at(&self.root)?;
        let path = self.root.join("readers.lock");
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .at(&path)
    }

    /// Held by a query from reading the catalog to its last row: committed entries are not
    /// replaced meanwhile (new entries under new keys still land). Shared between queries.
    pub fn read_lock(&self) -> Result<ReadLock> {
        if !self.root.is_dir() {
            return Ok(ReadLock { _file: None });
        }
        let file = self.readers_lock_file()?;
        let path = self.root.join("readers.lock");
        file.lock_shared().at(&path)?;
        Ok(ReadLock { _file: Some(file) })
    }

    fn writer_lock(&self, on_wait: &dyn Fn()) -> Result<File> {
        let file = self.readers_lock_file()?;
        let path = self.root.join("readers.lock");
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                on_wait();
                file.lock().at(&path)?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(PipelineError::io(&path, e)),
        }
        Ok(file)
    }

    /// Reads the catalog (empty when there is none yet).
    pub fn read_catalog(&self) -> Result<Catalog> {
        let path = self.root.join("catalog.json");
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                PipelineError::Damaged(format!(
                    "{} is damaged ({e}); `medtune run --config FILE` rebuilds it",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Catalog::default()),
            Err(e) => Err(PipelineError::io(path, e)),
        }
    }

    /// Starts the catalog of a run of the config at `config`: a damaged catalog is replaced
    /// by an empty one (the run publishes every stage it passes, so it is rebuilt), and the
    /// catalog records which config it now serves. Returns why the old catalog was dropped.
    pub fn open_catalog_for_run(&self, config: Option<&Path>) -> Result<Option<String>> {
        let (mut catalog, dropped) = match self.read_catalog() {
            Ok(catalog) => (catalog, None),
            Err(PipelineError::Damaged(why)) => (Catalog::default(), Some(why)),
            Err(e) => return Err(e),
        };
        let config = config.map(|p| p.canonicalize().unwrap_or_else(|_| p.to_path_buf()));
        if dropped.is_some() || catalog.config != config {
            catalog.config = config;
            self.write_catalog(&catalog)?;
        }
        Ok(dropped)
    }

    /// The config file whose outputs the catalog (and so SQL) serves, when it is another
    /// file than `config`: `None` when they are the same or the catalog names no config.
    pub fn catalog_config_other_than(&self, config: &Path) -> Result<Option<PathBuf>> {
        let held = self.read_catalog()?.config;
        let config = config
            .canonicalize()
            .unwrap_or_else(|_| config.to_path_buf());
        Ok(held.filter(|held| *held != config))
    }

    fn write_catalog(&self, catalog: &Catalog) -> Result<()> {
        fs::create_dir_all(&self.root).at(&self.root)?;
        let bytes = serde_json::to_vec_pretty(catalog).expect("catalog serialises");
        write_atomic(&self.root.join("catalog.json"), &bytes)
    }

    /// Points the catalog at a committed output of `stage`.
    pub fn publish(&self, manifest: &Manifest) -> Result<()> {
        let mut catalog = self.read_catalog()?;
        catalog
            .stages
            .insert(manifest.stage.clone(), manifest.key.clone());
        for (name, dataset) in &manifest.datasets {
            catalog.datasets.insert(
                name.clone(),
                CatalogEntry {
                    stage: manifest.stage.clone(),
                    key: manifest.key.clone(),
                    role: Some(dataset.role),
                },
            );
        }
        self.write_catalog(&catalog)
    }

    /// Drops the catalog entries of stages not in `stages`, so that the catalog (and SQL) shows
    /// the datasets of the pipeline being run, never leftovers of another config's stages.
    pub fn retain_stages(&self, stages: &BTreeSet<&str>) -> Result<()> {
        let mut catalog = self.read_catalog()?;
        let before = (catalog.stages.len(), catalog.datasets.len());
        catalog.stages.retain(|s, _| stages.contains(s.as_str()));
        catalog
            .datasets
            .retain(|_, e| stages.contains(e.stage.as_str()));
        if before == (catalog.stages.len(), catalog.datasets.len()) {
            return Ok(());
        }
        self.write_catalog(&catalog)
    }

    /// Every dataset the catalog names, split into those a query can read and those whose
    /// entry is missing or has an unreadable manifest. A damaged catalog is an error.
    pub fn catalog_view(&self) -> Result<CatalogView> {
        let catalog = self.read_catalog()?;
        let mut view = CatalogView::default();
        for (name, entry) in catalog.datasets {
            let dir = self.entry_dir(&entry.stage, &entry.key);
            let manifest = match Manifest::read(&dir) {
                Ok(manifest) => manifest,
                Err(e) => {
                    view.unavailable.push(UnavailableDataset {
                        why: format!("its output of stage `{}` cannot be read: {e}", entry.stage),
                        name,
                        role: entry.role,
                    });
                    continue;
                }
            };
            match CommittedDataset::in_entry(&dir, &manifest, &name) {
                Some(dataset) => view.datasets.push(dataset),
                None => view.unavailable.push(UnavailableDataset {
                    why: format!("the manifest in {} does not list it", dir.display()),
                    name,
                    role: entry.role,
                }),
            }
        }
        Ok(view)
    }

    /// Every dataset the catalog names, with its manifest entry.
    pub fn catalog_datasets(&self) -> Result<Vec<CommittedDataset>> {
        let catalog = self.read_catalog()?;
        let mut out = Vec::new();
        for (name, entry) in catalog.datasets {
            let dir = self.entry_dir(&entry.stage, &entry.key);
            let manifest = Manifest::read(&dir)?;
            out.extend(CommittedDataset::in_entry(&dir, &manifest, &name));
        }
        Ok(out)
    }

    /// Takes the workdir's run lock, failing at once if another process holds it.
    pub fn lock(&self) -> Result<RunLock> {
        fs::create_dir_all(&self.root).at(&self.root)?;
        let path = self.root.join("lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .at(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(PipelineError::Busy(format!(
                    "workdir {} is in use by another medtune run{}; wait for it to finish \
                     or use another --workdir",
                    self.root.display(),
                    if holder.is_empty() {
                        String::new()
                    } else {
                        format!(" ({holder})")
                    }
                )));
            }
            Err(fs::TryLockError::Error(e)) => return Err(PipelineError::io(&path, e)),
        }
        file.set_len(0).at(&path)?;
        file.rewind().at(&path)?;
        write!(file, "pid {}", std::process::id()).at(&path)?;
        file.flush().at(&path)?;
        Ok(RunLock { _file: file })
    }
}

/// An entry being written; dropped without commit, it is swept by the next run.
#[derive(Debug)]
pub struct PendingEntry {
    tmp: PathBuf,
    target: PathBuf,
}

impl PendingEntry {
    /// The temporary folder the stage's outputs are written into.
    pub fn dir(&self) -> &Path {
        &self.tmp
    }
}

/// Held by a query while it reads the workdir; released on drop (or when the process dies).
#[derive(Debug)]
pub struct ReadLock {
    _file: Option<File>,
}

/// Held while a run uses the workdir; released on drop (or when the process dies).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}
