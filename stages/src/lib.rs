//! The medtune stages. [`build`] turns a config into the stages it names.

pub mod ingest;
pub mod text;

use medtune_pipeline::{PipelineConfig, Result, Stage};

/// Stage sections a config may hold, in pipeline order.
pub const KNOWN_STAGES: &[&str] = &["ingest"];

/// Builds the stages named by the config's sections.
pub fn build(config: &PipelineConfig) -> Result<Vec<Box<dyn Stage>>> {
    let mut stages: Vec<Box<dyn Stage>> = Vec::new();
    for name in config.section_names() {
        match name {
            "ingest" => stages.push(Box::new(ingest::IngestStage::from_config(config)?)),
            other => {
                return Err(config.error(format!(
                    "unknown stage section [{other}] (known: {})",
                    KNOWN_STAGES.join(", ")
                )))
            }
        }
    }
    if stages.is_empty() {
        return Err(config.error(format!(
            "no stage sections; add at least [ingest] (known: {})",
            KNOWN_STAGES.join(", ")
        )));
    }
    Ok(stages)
}
