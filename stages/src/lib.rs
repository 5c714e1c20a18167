//! The medtune stages, on two floors:
//!
//! - **stages** (`ingest`, `dedup`, `convert`, `clean`, `split`, `profile`, `tokenize`,
//!   `shard`, `train`, `evaluate`): one module each, named after its config section. A stage
//!   imports the engine, `medtune-schemas`, `medtune-qlora` and [`shared`], never another stage.
//! - **[`shared`]**: the foundations more than one stage needs (example rows, rejects, grouping,
//!   the ChemProt vocabulary, the tokenizer and model a config names, the shard loader, metrics,
//!   plots).
//!
//! [`build`] turns a config into the stages it names, in pipeline order ([`STAGES`]): each row
//! stage reads the kept rows of the last stage before it that keeps rows, read from the
//! outputs that stage declares.

#![warn(missing_docs)]

pub mod shared;

pub mod clean;
pub mod convert;
pub mod dedup;
pub mod evaluate;
pub mod ingest;
pub mod profile;
pub mod shard;
pub mod split;
pub mod tokenize;
pub mod train;

use medtune_pipeline::engine::{row_stage, udf, ScalarUDF};
use medtune_pipeline::{
    OutputDecl, OutputRole, PipelineConfig, Result, RowStages, SourceDecl, Stage,
};
use medtune_schemas::dataset::{NEAR_DUPLICATES, SHARDS, TOKENIZED};

/// The stages' row functions: what a stage maps row by row, run wherever the engine runs plans.
/// A cluster's scheduler and executors are started with these (`medtune scheduler`,
/// `medtune executor`), so that plans naming them run there.
pub fn row_functions() -> Vec<ScalarUDF> {
    vec![
        udf::<dedup::keys::DedupKeys>(),
        udf::<convert::ConvertRows>(),
        udf::<clean::CleanRows>(),
        udf::<split::SplitKeys>(),
        udf::<tokenize::rows::TokenizeRows>(),
    ]
}

/// The row stages whose parts the engine writes where it maps their rows (see
/// [`medtune_pipeline::engine::write`]): what a cluster's processes are started with.
pub fn row_stages() -> RowStages {
    RowStages::new(vec![
        row_stage::<convert::ConvertRows>(),
        row_stage::<clean::CleanRows>(),
        row_stage::<tokenize::rows::TokenizeRows>(),
    ])
}

/// A stage medtune can build: its name (which is its config section) and how to build it from
/// the config and what the stages before it write.
pub struct StageKind {
    /// The stage's name and config section.
    pub name: &'static str,
    build: fn(&PipelineConfig, &Upstream<'_>) -> Result<Box<dyn Stage>>,
}

/// Every stage, in pipeline order.
pub static STAGES: [StageKind; 10] = [
    StageKind {
        name: ingest::NAME,
        build: |config, _| Ok(Box::new(ingest::IngestStage::from_config(config)?)),
    },
    StageKind {
        name: dedup::NAME,
        build: |config, up| {
            let rows = up.rows(dedup::NAME)?;
            Ok(Box::new(dedup::DedupStage::from_config(config, rows)?))
        },
    },
    StageKind {
        name: convert::NAME,
        build: |config, up| {
            let rows = up.rows(convert::NAME)?;
            Ok(Box::new(convert::ConvertStage::from_config(config, rows)?))
        },
    },
    StageKind {
        name: clean::NAME,
        build: |config, up| {
            let rows = up.rows(clean::NAME)?;
            Ok(Box::new(clean::CleanStage::from_config(config, rows)?))
        },
    },
    StageKind {
        name: split::NAME,
        build: |config, up| {
            let rows = up.rows(split::NAME)?;
            let clusters = up.written(NEAR_DUPLICATES);
            Ok(Box::new(split::SplitStage::from_config(
                config,
                rows,
                clusters,
                &up.sources,
            )?))
        },
    },
    StageKind {
        name: profile::NAME,
        build: |config, up| {
            let rows = up.rows(profile::NAME)?;
            let clusters = up.written(NEAR_DUPLICATES);
            Ok(Box::new(profile::ProfileStage::from_config(
                config,
                rows,
                up.rejects(),
                clusters,
            )?))
        },
    },
    StageKind {
        name: tokenize::NAME,
        build: |config, up| {
            let rows = up.rows(tokenize::NAME)?;
            Ok(Box::new(tokenize::TokenizeStage::from_config(
                config, rows,
            )?))
        },
    },
    StageKind {
        name: shard::NAME,
        build: |config, up| {
            up.require(shard::NAME, TOKENIZED, tokenize::NAME)?;
            Ok(Box::new(shard::ShardStage::from_config(config, TOKENIZED)?))
        },
    },
    StageKind {
        name: train::NAME,
        build: |config, up| {
            up.require(train::NAME, SHARDS, shard::NAME)?;
            Ok(Box::new(train::TrainStage::from_config(config)?))
        },
    },
    StageKind {
        name: evaluate::NAME,
        build: |config, up| {
            up.require(evaluate::NAME, SHARDS, shard::NAME)?;
            Ok(Box::new(evaluate::EvaluateStage::from_config(config)?))
        },
    },
];

/// What the stages built so far declare they read from files and write.
struct Upstream<'a> {
    config: &'a PipelineConfig,
    sources: Vec<SourceDecl>,
    outputs: Vec<OutputDecl>,
}

impl Upstream<'_> {
    /// The kept rows of the last stage that keeps rows: what the row stage `reader` reads.
    fn rows(&self, reader: &str) -> Result<&str> {
        self.outputs
            .iter()
            .rev()
            .find(|o| o.role == OutputRole::Kept)
            .map(|o| o.name.as_str())
            .ok_or_else(|| {
                self.config.error(format!(
                    "[{reader}] reads the output of an earlier stage, but the config has none \
                     (add [{}])",
                    ingest::NAME
                ))
            })
    }

    /// Fails unless a stage before `reader` writes `dataset`, naming the section `writer` that
    /// would: checked before `reader` is built, so that its own checks do not hide the cause.
    fn require(&self, reader: &str, dataset: &str, writer: &str) -> Result<()> {
        match self.written(dataset) {
            Some(_) => Ok(()),
            None => Err(self.config.error(format!(
                "[{reader}] reads `{dataset}`, which [{writer}] writes, but the config has no \
                 [{writer}] section"
            ))),
        }
    }

    /// `dataset`, if a stage before writes it.
    fn written(&self, dataset: &str) -> Option<&str> {
        self.outputs
            .iter()
            .find(|o| o.name == dataset)
            .map(|o| o.name.as_str())
    }

    /// Every rejects dataset written so far.
    fn rejects(&self) -> Vec<String> {
        self.outputs
            .iter()
            .filter(|o| o.role == OutputRole::Rejects)
            .map(|o| o.name.clone())
            .collect()
    }
}

/// Builds the stages named by the config's sections.
pub fn build(config: &PipelineConfig) -> Result<Vec<Box<dyn Stage>>> {
    build_stages(config, false)
}

/// Builds the stages named by the config's sections plus `profile`, even when the config has
/// no `[profile]` section (what `medtune profile` runs).
pub fn build_with_profile(config: &PipelineConfig) -> Result<Vec<Box<dyn Stage>>> {
    build_stages(config, true)
}

fn known() -> String {
    STAGES.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
}

fn build_stages(config: &PipelineConfig, with_profile: bool) -> Result<Vec<Box<dyn Stage>>> {
    for name in config.section_names() {
        if !STAGES.iter().any(|s| s.name == name) {
            return Err(config.error(format!(
                "unknown stage section [{name}] (known: {})",
                known()
            )));
        }
    }
    let mut upstream = Upstream {
        config,
        sources: Vec::new(),
        outputs: Vec::new(),
    };
    let mut stages: Vec<Box<dyn Stage>> = Vec::new();
    let wanted =
        |s: &&StageKind| config.has_section(s.name) || (with_profile && s.name == profile::NAME);
    for kind in STAGES.iter().filter(wanted) {
        // A stage reading what no stage writes is the Dag's error (`Dag::new`).
        let stage = (kind.build)(config, &upstream)?;
        upstream.sources.extend(stage.sources());
        upstream.outputs.extend(stage.outputs());
        stages.push(stage);
    }
    if stages.is_empty() {
        return Err(config.error(format!(
            "no stage sections; add at least [{}] (known: {})",
            ingest::NAME,
            known()
        )));
    }
    Ok(stages)
}
