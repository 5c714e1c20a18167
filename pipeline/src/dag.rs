//! The stage graph: which stage produces which dataset, in what order stages run.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{PipelineError, Result};
use crate::stage::Stage;

/// Stages in dependency order, with the producer of each dataset.
pub struct Dag {
    stages: Vec<Box<dyn Stage>>,
    producer: BTreeMap<String, usize>,
}

impl Dag {
    /// Orders `stages` so that every stage comes after the producers of its inputs.
    ///
    /// Fails when two stages produce the same dataset, a stage reads a dataset no stage
    /// produces, or the inputs form a cycle.
    pub fn new(stages: Vec<Box<dyn Stage>>) -> Result<Self> {
        let mut producer = BTreeMap::new();
        for (i, stage) in stages.iter().enumerate() {
            for out in stage.outputs() {
                if out.name == crate::sql::REJECTS_TABLE {
                    return Err(PipelineError::Usage(format!(
                        "stage `{}` names a dataset `{}`, a name reserved for the union of \
                         every stage's rejects; call it `{}_rejects`",
                        stage.name(),
                        out.name,
                        stage.name()
                    )));
                }
                if let Some(prev) = producer.insert(out.name.clone(), i) {
                    return Err(PipelineError::Usage(format!(
                        "dataset `{}` is produced by both `{}` and `{}`",
                        out.name,
                        stages[prev].name(),
                        stage.name()
                    )));
                }
            }
        }
        let mut deps: Vec<BTreeSet<usize>> = Vec::with_capacity(stages.len());
        for stage in &stages {
            let mut set = BTreeSet::new();
            for input in stage.inputs() {
                let p = producer.get(&input).ok_or_else(|| {
                    PipelineError::Usage(format!(
                        "stage `{}` reads `{input}`, which no stage in this config produces",
                        stage.name()
                    ))
                })?;
                set.insert(*p);
            }
            deps.push(set);
        }
        // Kahn's algorithm, taking ready stages in declaration order for a stable order.
        let mut order = Vec::with_capacity(stages.len());
        let mut placed = vec![false; stages.len()];
        while order.len() < stages.len() {
            let next = (0..stages.len())
                .find(|&i| !placed[i] && deps[i].iter().all(|&d| placed[d]))
                .ok_or_else(|| {
                    let stuck: Vec<&str> = (0..stages.len())
                        .filter(|&i| !placed[i])
                        .map(|i| stages[i].name())
                        .collect();
                    PipelineError::Usage(format!(
                        "stages {stuck:?} depend on each other in a cycle"
                    ))
                })?;
            placed[next] = true;
            order.push(next);
        }
        let mut slots: Vec<Option<Box<dyn Stage>>> = stages.into_iter().map(Some).collect();
        let stages: Vec<Box<dyn Stage>> = order
            .iter()
            .map(|&i| slots[i].take().expect("each stage placed once"))
            .collect();
        let producer = stages
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.outputs().into_iter().map(move |o| (o.name, i)))
            .collect();
        Ok(Dag { stages, producer })
    }

    /// Stages in run order.
    pub fn stages(&self) -> &[Box<dyn Stage>] {
        &self.stages
    }

    /// Position (in run order) of the stage producing `dataset`.
    pub fn producer_of(&self, dataset: &str) -> Option<usize> {
        self.producer.get(dataset).copied()
    }

    /// Position of the stage called `name`.
    pub fn position(&self, name: &str) -> Result<usize> {
        self.stages
            .iter()
            .position(|s| s.name() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = self.stages.iter().map(|s| s.name()).collect();
                PipelineError::Usage(format!(
                    "no stage `{name}` in this config (stages: {})",
                    known.join(", ")
                ))
            })
    }

    /// The named stages and everything upstream of them, in run order.
    pub fn closure(&self, names: &[String]) -> Result<Vec<usize>> {
        let mut wanted = BTreeSet::new();
        let mut todo: Vec<usize> = names
            .iter()
            .map(|n| self.position(n))
            .collect::<Result<_>>()?;
        while let Some(i) = todo.pop() {
            if wanted.insert(i) {
                for input in self.stages[i].inputs() {
                    todo.extend(self.producer_of(&input));
                }
            }
        }
        Ok(wanted.into_iter().collect())
    }
}
