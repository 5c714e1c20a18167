//! The medtune stages. [`build`] turns a config into the stages it names, chained in pipeline
//! order: each stage reads the kept rows of the stage before it in [`KNOWN_STAGES`].

pub mod clean;
pub mod convert;
pub mod dedup;
pub mod evaluate;
pub mod examples;
pub mod ingest;
pub mod loader;
pub mod metrics;
pub mod plot;
pub mod profile;
pub mod rejects;
pub mod shard;
pub mod split;
pub mod state;
pub mod tokenize;
pub mod train;

use medtune_pipeline::{PipelineConfig, Result, Stage};

/// Stage sections a config may hold, in pipeline order.
pub const KNOWN_STAGES: &[&str] = &[
    "ingest", "dedup", "convert", "clean", "split", "profile", "tokenize", "shard", "train",
    "evaluate",
];

/// Builds the stages named by the config's sections.
pub fn build(config: &PipelineConfig) -> Result<Vec<Box<dyn Stage>>> {
    build_stages(config, false)
}

/// Builds the stages named by the config's sections plus `profile`, even when the config has
/// no `[profile]` section (what `medtune profile` runs).
pub fn build_with_profile(config: &PipelineConfig) -> Result<Vec<Box<dyn Stage>>> {
    build_stages(config, true)
}

fn build_stages(config: &PipelineConfig, with_profile: bool) -> Result<Vec<Box<dyn Stage>>> {
    for name in config.section_names() {
        if !KNOWN_STAGES.contains(&name) {
            return Err(config.error(format!(
                "unknown stage section [{name}] (known: {})",
                KNOWN_STAGES.join(", ")
            )));
        }
    }
    let mut stages: Vec<Box<dyn Stage>> = Vec::new();
    // The kept dataset of the last stage built: the next stage's input.
    let mut upstream: Option<&'static str> = None;
    let mut near_duplicates = None;
    let mut rejects: Vec<String> = Vec::new();
    let wanted = |n: &&&str| config.has_section(n) || (with_profile && **n == "profile");
    for &name in KNOWN_STAGES.iter().filter(wanted) {
        let input = || {
            upstream.ok_or_else(|| {
                config.error(format!(
                    "[{name}] reads the output of an earlier stage, but the config has none \
                     (add [ingest])"
                ))
            })
        };
        let stage: Box<dyn Stage> = match name {
            "ingest" => {
                rejects.push(ingest::REJECTS.to_string());
                Box::new(ingest::IngestStage::from_config(config)?)
            }
            "dedup" => {
                near_duplicates = Some(dedup::NEAR_DUPLICATES);
                rejects.push(dedup::DEDUP_REJECTS.to_string());
                Box::new(dedup::DedupStage::from_config(config, input()?)?)
            }
            "convert" => Box::new(convert::ConvertStage::from_config(config, input()?)?),
            "clean" => {
                rejects.push(clean::CLEAN_REJECTS.to_string());
                Box::new(clean::CleanStage::from_config(config, input()?)?)
            }
            "split" => Box::new(split::SplitStage::from_config(
                config,
                input()?,
                near_duplicates,
            )?),
            "tokenize" => Box::new(tokenize::TokenizeStage::from_config(config, input()?)?),
            "shard" => {
                if !config.has_section("tokenize") {
                    return Err(config.error(
                        "[shard] cuts the tokenized rows into shards, but the config has no \
                         [tokenize] section",
                    ));
                }
                Box::new(shard::ShardStage::from_config(config, tokenize::TOKENIZED)?)
            }
            "train" => {
                if !config.has_section("shard") {
                    return Err(config.error(
                        "[train] reads the training shards, but the config has no [shard] section",
                    ));
                }
                Box::new(train::TrainStage::from_config(config)?)
            }
            "evaluate" => {
                if !config.has_section("shard") {
                    return Err(config.error(
                        "[evaluate] scores a split of the shards, but the config has no [shard] \
                         section",
                    ));
                }
                Box::new(evaluate::EvaluateStage::from_config(config)?)
            }
            "profile" => Box::new(profile::ProfileStage::from_config(
                config,
                input()?,
                rejects.clone(),
                near_duplicates,
            )?),
            _ => unreachable!("checked against KNOWN_STAGES above"),
        };
        upstream = Some(match name {
            "ingest" => ingest::INGESTED,
            "dedup" => dedup::DEDUPED,
            "convert" => convert::CONVERTED,
            "clean" => clean::CLEANED,
            "split" => split::SPLIT,
            // profile, tokenize, shard, train and evaluate keep no example rows: a later stage reads the split.
            _ => upstream.unwrap_or(split::SPLIT),
        });
        stages.push(stage);
    }
    if stages.is_empty() {
        return Err(config.error(format!(
            "no stage sections; add at least [ingest] (known: {})",
            KNOWN_STAGES.join(", ")
        )));
    }
    Ok(stages)
}
