//! `medtune status`: whether each stage's cached output is fresh, stale (and why) or missing,
//! computed from the keys alone; nothing runs.

use std::collections::{BTreeMap, BTreeSet};

use super::{KeyParts, Runner};
use crate::config::describe_changes;
use crate::error::Result;
use crate::hash::SourceHashMemo;
use crate::manifest::Manifest;
use crate::reader::CommittedDataset;
use crate::stage::Stage;
use crate::workdir::Lookup;

/// Freshness of one stage's cached output against the current config and inputs.
#[derive(Debug, Clone, PartialEq)]
pub enum Freshness {
    /// The cache holds a verified output for exactly this config and these inputs.
    Fresh,
    /// An older output exists; the reasons say what changed.
    Stale(Vec<String>),
    /// The stage has never produced an output in this workdir.
    Missing,
}

/// Status of one stage.
#[derive(Debug, Clone)]
pub struct StageStatus {
    /// Stage name.
    pub stage: String,
    /// Fresh, stale (why) or missing.
    pub freshness: Freshness,
}

impl Runner<'_> {
    /// Reports, for every stage, whether its cached output is fresh, stale (and why) or missing.
    pub fn status(&self) -> Result<Vec<StageStatus>> {
        let memo = SourceHashMemo::open(self.workdir.source_memo_path());
        let mut fresh: BTreeMap<String, CommittedDataset> = BTreeMap::new();
        let mut out = Vec::new();
        for stage in self.dag.stages() {
            let stage = stage.as_ref();
            let previous = self.workdir.latest_manifest(stage.name());
            let not_fresh: Vec<String> = stage
                .inputs()
                .into_iter()
                .filter(|name| !fresh.contains_key(name))
                .collect();
            let freshness = if !not_fresh.is_empty() {
                let mut reasons: Vec<String> = not_fresh
                    .iter()
                    .map(|name| {
                        let up = self
                            .dag
                            .producer_of(name)
                            .map(|p| self.dag.stages()[p].name().to_string())
                            .unwrap_or_default();
                        format!("upstream stage `{up}` is not fresh")
                    })
                    .collect();
                match &previous {
                    Some(prev) => {
                        reasons.extend(self.own_changes(stage, prev));
                        Freshness::Stale(reasons)
                    }
                    None => Freshness::Missing,
                }
            } else {
                let inputs: BTreeMap<String, CommittedDataset> = stage
                    .inputs()
                    .into_iter()
                    .filter_map(|n| fresh.get(&n).map(|d| (n, d.clone())))
                    .collect();
                match self.key_parts(stage, &inputs, &memo, false) {
                    Err(e) => Freshness::Stale(vec![e.to_string()]),
                    Ok(parts) => match self.workdir.lookup(stage.name(), &parts.key) {
                        Lookup::Hit(manifest) => {
                            let dir = self.workdir.entry_dir(stage.name(), &parts.key);
                            for dataset in CommittedDataset::all_in_entry(&dir, &manifest) {
                                fresh.insert(dataset.name.clone(), dataset);
                            }
                            Freshness::Fresh
                        }
                        Lookup::Corrupt(why) => Freshness::Stale(vec![format!(
                            "cached output failed verification: {why}"
                        )]),
                        Lookup::Missing => match &previous {
                            None => Freshness::Missing,
                            Some(prev) => Freshness::Stale(explain(
                                self.own_changes(stage, prev),
                                prev,
                                &parts,
                            )),
                        },
                    },
                }
            };
            out.push(StageStatus {
                stage: stage.name().to_string(),
                freshness,
            });
        }
        let _ = memo.save();
        Ok(out)
    }

    /// What changed in the stage itself (logic version, its config) since `prev`, whatever
    /// happened upstream.
    fn own_changes(&self, stage: &dyn Stage, prev: &Manifest) -> Vec<String> {
        let mut reasons = Vec::new();
        if prev.version != stage.version() {
            reasons.push(format!(
                "stage logic changed (version {} -> {})",
                prev.version,
                stage.version()
            ));
        }
        reasons.extend(
            describe_changes(&prev.config, &self.stage_config(stage))
                .into_iter()
                .map(|c| format!("config {c}")),
        );
        reasons
    }
}

/// Why the output `prev` is not what the stage would produce now: `own` (its logic and
/// config changes), then changed input datasets and source files.
fn explain(own: Vec<String>, prev: &Manifest, now: &KeyParts) -> Vec<String> {
    let mut reasons = own;
    let names: BTreeSet<&String> = prev.inputs.keys().chain(now.inputs.keys()).collect();
    for name in names {
        if prev.inputs.get(name) != now.inputs.get(name) {
            reasons.push(format!("input dataset `{name}` changed"));
        }
    }
    let old: BTreeMap<&str, &str> = prev
        .sources
        .iter()
        .map(|s| (s.path.as_str(), s.blake3.as_str()))
        .collect();
    let new: BTreeMap<&str, &str> = now
        .sources
        .iter()
        .map(|s| (s.path.as_str(), s.blake3.as_str()))
        .collect();
    for (path, hash) in &new {
        match old.get(path) {
            None => reasons.push(format!("new source file {path}")),
            Some(h) if h != hash => reasons.push(format!("source file {path} changed")),
            _ => {}
        }
    }
    for path in old.keys().filter(|p| !new.contains_key(*p)) {
        reasons.push(format!("source file {path} no longer read"));
    }
    if reasons.is_empty() {
        reasons.push("the cached output was removed".into());
    }
    reasons
}
