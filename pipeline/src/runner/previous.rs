//! The output a stage may append to: its latest one made with the same version and config,
//! with how each input changed since (the same parts, the same parts followed by new ones, or
//! replaced).

use std::collections::BTreeMap;

use super::{KeyParts, Runner};
use crate::hash::hash_parts;
use crate::reader::CommittedDataset;
use crate::stage::{InputChange, PreviousOutput, Stage};

impl Runner<'_> {
    /// The stage's latest output, when it was made by the same stage version and config and
    /// still verifies, with how each input changed since.
    pub(super) fn previous_output(
        &self,
        stage: &dyn Stage,
        now: &KeyParts,
        inputs: &BTreeMap<String, CommittedDataset>,
    ) -> Option<PreviousOutput> {
        let manifest = self.workdir.latest_manifest(stage.name())?;
        if manifest.version != stage.version()
            || manifest.config != now.config
            || manifest.key == now.key
            || manifest.inputs.keys().ne(inputs.keys())
        {
            return None;
        }
        let entry_dir = self.workdir.entry_dir(stage.name(), &manifest.key);
        if let Err(why) = manifest.verify(&entry_dir) {
            self.progress.warning(
                stage.name(),
                &format!("previous output failed verification ({why}); not extending it"),
            );
            return None;
        }
        let changes = inputs
            .iter()
            .map(|(name, dataset)| (name.clone(), input_change(&manifest.inputs[name], dataset)))
            .collect();
        let sources_unchanged = manifest.sources == now.sources;
        Some(PreviousOutput {
            manifest,
            entry_dir,
            inputs: changes,
            sources_unchanged,
        })
    }
}

/// How `dataset` relates to an input whose content hash was `before`: the same, the same
/// parts followed by new ones, or something else.
fn input_change(before: &str, dataset: &CommittedDataset) -> InputChange {
    let files = &dataset.manifest.files;
    if dataset.manifest.content_hash == before {
        return InputChange::Same;
    }
    let prefix_hash = |n: usize| {
        hash_parts(
            files[..n]
                .iter()
                .map(|f| (f.path.as_str(), f.blake3.as_bytes())),
        )
    };
    match (1..files.len()).rev().find(|&n| prefix_hash(n) == before) {
        Some(n) => {
            let mut delta = dataset.clone();
            delta.manifest.files = files[n..].to_vec();
            delta.manifest.rows = delta.manifest.files.iter().map(|f| f.rows).sum();
            delta.manifest.bytes = delta.manifest.files.iter().map(|f| f.bytes).sum();
            InputChange::Appended(delta)
        }
        None => InputChange::Replaced,
    }
}
