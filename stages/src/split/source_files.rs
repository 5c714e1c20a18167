//! Splits taken from the data: each input file's rows go to the split the config names for
//! it (`from = "source_file"`), as a benchmark's own `train` / `devel` / `test` files ask.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

use medtune_pipeline::{PipelineConfig, PipelineError, Result, SourceDecl};

use super::assign::SPLIT_NAMES;

/// The split of every input file, by the path the `source_file` column holds (the path as
/// written in `[ingest] inputs`).
#[derive(Debug, Clone, Default)]
pub struct FileSplits {
    by_source: HashMap<String, u8>,
}

impl FileSplits {
    /// Resolves `map` (input file → split name) against the inputs `sources`. A key names an
    /// input by its file name, by its path as written in `[ingest] inputs`, or by a path that
    /// resolves to the same file. Every key must name one input and every input must have a
    /// split: anything else is a config error naming the file.
    pub fn resolve(
        config: &PipelineConfig,
        map: &BTreeMap<String, String>,
        sources: &[SourceDecl],
    ) -> Result<Self> {
        let inputs = || {
            sources
                .iter()
                .map(|s| s.written.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if sources.is_empty() {
            return Err(config.error(
                "[split]: from = \"source_file\" needs the input files of [ingest], and the \
                 config lists none",
            ));
        }
        let mut by_source: HashMap<String, u8> = HashMap::new();
        let mut named_by: HashMap<&str, &str> = HashMap::new();
        for (key, split_name) in map {
            let split = SPLIT_NAMES
                .iter()
                .position(|n| n == split_name)
                .ok_or_else(|| {
                    config.error(format!(
                        "[split.source_files]: `{key}` goes to `{split_name}`, which is not a \
                         split (choose from {})",
                        SPLIT_NAMES.join(", ")
                    ))
                })? as u8;
            let resolved = lexical(&config.resolve(key));
            let matched: Vec<&SourceDecl> = sources
                .iter()
                .filter(|s| {
                    s.written == *key || file_name(&s.path) == *key || lexical(&s.path) == resolved
                })
                .collect();
            if matched.is_empty() {
                return Err(config.error(format!(
                    "[split.source_files]: `{key}` is not an input file of [ingest] (inputs: {})",
                    inputs()
                )));
            }
            for source in matched {
                if let Some(other) = named_by.insert(&source.written, key) {
                    return Err(config.error(format!(
                        "[split.source_files]: `{other}` and `{key}` both name the input `{}`",
                        source.written
                    )));
                }
                by_source.insert(source.written.clone(), split);
            }
        }
        if let Some(missing) = sources.iter().find(|s| !by_source.contains_key(&s.written)) {
            return Err(config.error(format!(
                "[split.source_files]: the input `{}` has no split; name it (or its file name \
                 `{}`) with one of {}",
                missing.written,
                file_name(&missing.path),
                SPLIT_NAMES.join(", ")
            )));
        }
        Ok(FileSplits { by_source })
    }

    /// The split of the rows read from `source_file` (the `source_file` column's value).
    pub fn split_of(&self, source_file: &str) -> Result<u8> {
        self.by_source.get(source_file).copied().ok_or_else(|| {
            PipelineError::Internal(format!(
                "a row read from `{source_file}`, which [split.source_files] does not map"
            ))
        })
    }
}

/// `path` with `.` and `name/..` steps removed, without touching the file system (the inputs
/// need not exist yet when the config is read).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> PipelineConfig {
        PipelineConfig::parse(Path::new("/data/cfg/medtune.toml"), "").unwrap()
    }

    fn sources(written: &[&str]) -> Vec<SourceDecl> {
        let config = config();
        written
            .iter()
            .map(|w| SourceDecl {
                written: w.to_string(),
                path: config.resolve(w),
            })
            .collect()
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn inputs_are_named_by_file_name_written_path_or_resolved_path() {
        let inputs = sources(&["../bc/train.tsv", "../bc/devel.tsv", "/data/bc/test.tsv"]);
        let splits = FileSplits::resolve(
            &config(),
            &map(&[
                ("train.tsv", "train"),
                ("../bc/devel.tsv", "validation"),
                ("../bc/test.tsv", "test"),
            ]),
            &inputs,
        )
        .unwrap();
        assert_eq!(splits.split_of("../bc/train.tsv").unwrap(), 0);
        assert_eq!(splits.split_of("../bc/devel.tsv").unwrap(), 1);
        assert_eq!(splits.split_of("/data/bc/test.tsv").unwrap(), 2);
        assert!(splits.split_of("other.tsv").is_err());
    }

    #[test]
    fn an_unknown_file_a_missing_input_or_a_bad_split_name_is_a_config_error() {
        let inputs = sources(&["train.tsv", "test.tsv"]);
        let error = |pairs: &[(&str, &str)]| {
            FileSplits::resolve(&config(), &map(pairs), &inputs)
                .unwrap_err()
                .to_string()
        };
        let unknown = error(&[
            ("train.tsv", "train"),
            ("test.tsv", "test"),
            ("dev.tsv", "validation"),
        ]);
        assert!(
            unknown.contains("`dev.tsv` is not an input file") && unknown.contains("test.tsv"),
            "{unknown}"
        );
        let missing = error(&[("train.tsv", "train")]);
        assert!(
            missing.contains("the input `test.tsv` has no split"),
            "{missing}"
        );
        let bad = error(&[("train.tsv", "training"), ("test.tsv", "test")]);
        assert!(bad.contains("`training`, which is not a split"), "{bad}");
        let twice = error(&[
            ("train.tsv", "train"),
            ("/data/cfg/train.tsv", "test"),
            ("test.tsv", "test"),
        ]);
        assert!(twice.contains("both name the input `train.tsv`"), "{twice}");
    }
}
