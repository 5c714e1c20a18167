//! The pipeline config: a TOML file with a `[pipeline]` section of engine settings and
//! one section per stage. Paths inside it resolve against the config file's folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{PipelineError, Result};

/// Engine settings shared by all stages (the `[pipeline]` section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// A Parquet part is closed once it reaches this many bytes (compressed).
    pub part_max_bytes: u64,
    /// Rows per Parquet row group, at most.
    pub row_group_rows: usize,
    /// A row group is closed once the rows handed to it (as Arrow bytes) or its encoded pages
    /// reach this many bytes, so the writer's memory does not grow with row width.
    pub row_group_max_bytes: u64,
    /// Rows per Arrow record batch handed between threads.
    pub batch_rows: usize,
    /// zstd level of the Parquet outputs.
    pub zstd_level: i32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            part_max_bytes: 128 << 20,
            row_group_rows: 16 * 1024,
            row_group_max_bytes: 4 << 20,
            batch_rows: 1024,
            zstd_level: 3,
        }
    }
}

/// A loaded pipeline config.
impl Settings {
    /// Checks every setting against its allowed range, naming the key and the range.
    pub fn validate(&self) -> std::result::Result<(), String> {
        check_range(
            "pipeline",
            "part_max_bytes",
            self.part_max_bytes,
            1..=u64::MAX,
        )?;
        check_range(
            "pipeline",
            "row_group_rows",
            self.row_group_rows,
            1..=usize::MAX,
        )?;
        check_range(
            "pipeline",
            "row_group_max_bytes",
            self.row_group_max_bytes,
            1..=u64::MAX,
        )?;
        check_range("pipeline", "batch_rows", self.batch_rows, 1..=usize::MAX)?;
        // The levels the zstd library (and so Parquet's writer) accepts.
        check_range("pipeline", "zstd_level", self.zstd_level, 1..=22)
    }
}

/// `true`: the serde default of a switch that is on unless the config turns it off
/// (`#[serde(default = "medtune_pipeline::config::default_true")]`).
pub fn default_true() -> bool {
    true
}

/// Checks that `[section] key = value` lies in `allowed`; the error names all three, so a
/// setting that would fail deep inside a stage (or silently do nothing) is refused up front.
pub fn check_range<T>(
    section: &str,
    key: &str,
    value: T,
    allowed: std::ops::RangeInclusive<T>,
) -> std::result::Result<(), String>
where
    T: PartialOrd + std::fmt::Display + Copy + Bounded,
{
    if allowed.contains(&value) {
        return Ok(());
    }
    let (low, high) = (*allowed.start(), *allowed.end());
    let range = if high == T::MAX {
        format!("at least {low}")
    } else {
        format!("from {low} to {high}")
    };
    Err(format!(
        "[{section}] {key} = {value} is out of range: it must be {range}"
    ))
}

/// The largest value of an integer type (so a range open at the top reads "at least N").
pub trait Bounded {
    /// The type's maximum.
    const MAX: Self;
}

macro_rules! bounded {
    ($($t:ty),*) => { $(impl Bounded for $t { const MAX: Self = <$t>::MAX; })* };
}
bounded!(i32, i64, u32, u64, usize);

/// A loaded pipeline config: its stage sections, the `[pipeline]` settings, and the folder
/// its relative paths are resolved against.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    path: PathBuf,
    dir: PathBuf,
    settings: Settings,
    sections: BTreeMap<String, toml::Table>,
}

impl PipelineConfig {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            PipelineError::config(path, format!("cannot read the config file: {e}"))
        })?;
        Self::parse(path, &text)
    }

    /// Parses config text as if it had been read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| PipelineError::config(path, e.to_string()))?;
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let mut sections = BTreeMap::new();
        let mut settings = Settings::default();
        for (name, value) in table {
            let toml::Value::Table(section) = value else {
                return Err(PipelineError::config(
                    path,
                    format!("`{name}` must be a [section], found a plain value"),
                ));
            };
            if name == "pipeline" {
                settings = toml::Value::Table(section)
                    .try_into::<Settings>()
                    .map_err(|e| PipelineError::config(path, format!("[pipeline]: {e}")))?;
                settings
                    .validate()
                    .map_err(|e| PipelineError::config(path, e))?;
            } else {
                sections.insert(name, section);
            }
        }
        Ok(PipelineConfig {
            path: path.to_path_buf(),
            dir,
            settings,
            sections,
        })
    }

    /// The config file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Engine settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Names of the stage sections present in the file.
    pub fn section_names(&self) -> impl Iterator<Item = &str> {
        self.sections.keys().map(String::as_str)
    }

    /// Whether the config has a section for `stage`.
    pub fn has_section(&self, stage: &str) -> bool {
        self.sections.contains_key(stage)
    }

    /// Deserialises the section of `stage` into its typed config, with errors naming the section.
    pub fn section<T: DeserializeOwned>(&self, stage: &str) -> Result<T> {
        let table = self.sections.get(stage).cloned().unwrap_or_default();
        toml::Value::Table(table)
            .try_into::<T>()
            .map_err(|e| PipelineError::config(&self.path, format!("[{stage}]: {e}")))
    }

    /// Resolves a path written in the config against the config file's folder.
    pub fn resolve(&self, written: &str) -> PathBuf {
        let p = Path::new(written);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    /// Refuses `[section] key = value` outside `allowed` with an error naming the config
    /// file, the key and the range.
    pub fn check_range<T>(
        &self,
        section: &str,
        key: &str,
        value: T,
        allowed: std::ops::RangeInclusive<T>,
    ) -> Result<()>
    where
        T: PartialOrd + std::fmt::Display + Copy + Bounded,
    {
        check_range(section, key, value, allowed).map_err(|e| self.error(e))
    }

    /// A config error naming this file.
    pub fn error(&self, message: impl Into<String>) -> PipelineError {
        PipelineError::config(&self.path, message)
    }
}

/// Flattens a JSON value into `dotted.key -> value` pairs, for explaining config changes.
pub fn flatten(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// Describes how two config values differ, one `key: old -> new` phrase per changed key.
pub fn describe_changes(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten("", old, &mut a);
    flatten("", new, &mut b);
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(unset)".into());
            format!("{k}: {} -> {}", show(a.get(k)), show(b.get(k)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_resolve_against_the_config_folder() {
        let cfg = PipelineConfig::parse(Path::new("configs/x.toml"), "[ingest]\n").unwrap();
        assert_eq!(
            cfg.resolve("../data/a.jsonl"),
            Path::new("configs/../data/a.jsonl")
        );
        assert_eq!(cfg.resolve("/abs/a.jsonl"), Path::new("/abs/a.jsonl"));
    }

    #[test]
    fn unknown_pipeline_settings_are_rejected_by_name() {
        let err = PipelineConfig::parse(Path::new("c.toml"), "[pipeline]\npart_bytes = 3\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("c.toml") && err.contains("part_bytes"),
            "{err}"
        );
    }

    #[test]
    fn config_changes_name_the_key_and_both_values() {
        let old = serde_json::json!({"format": "conll", "bio": {"invalid": "reject"}});
        let new = serde_json::json!({"format": "conll", "bio": {"invalid": "repair"}});
        assert_eq!(
            describe_changes(&old, &new),
            vec![r#"bio.invalid: "reject" -> "repair""#.to_string()]
        );
    }
}
