//! Splitting rows appended to an input that was split before, without moving old rows.
//!
//! The rule: every row split before keeps its split and group. A new row that shares a group
//! key, a normalised text or a near-duplicate cluster with old rows joins their split (and
//! the group of the earliest of them); new rows that touch no old row form new groups, which
//! are placed by the same objective as a full split, counting the old rows as fixed, so that
//! the splits keep their fractions in every stratum. When new rows join old rows of two
//! different splits (a new row bridging two groups), no placement avoids a leak without
//! moving old rows: the stage then splits everything afresh, and says so.
//!
//! The state this needs is one record per split row (id, group key, text hash, stratum, group,
//! split), saved beside every output of the stage.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, StringArray, UInt64Array, UInt8Array};
use arrow::record_batch::RecordBatch;
use medtune_pipeline::Result;

use super::assign::{assign_onto, Group};
use super::join_shared_keys;
use super::leakage::{find_leaks, RowKeys};
use crate::shared::append_state::{read_table, write_table};
use crate::shared::examples::typed_column as column;

const TABLE: &str = "split_rows";

/// What split remembers about one row it placed.
#[derive(Debug, Clone)]
pub(crate) struct PlacedRow {
    /// The row's keys (its cluster is looked up afresh on every run).
    pub keys: RowKeys,
    /// Its stratum.
    pub stratum: String,
    /// The name of its group (the `split_group` column).
    pub group_name: String,
    /// Its split (index into the split names).
    pub split: u8,
}

/// Writes the placed rows into `dir`.
pub(crate) fn save(dir: &Path, rows: &[PlacedRow]) -> Result<()> {
    let strings = |f: &dyn Fn(&PlacedRow) -> &str| -> ArrayRef {
        Arc::new(rows.iter().map(|r| Some(f(r))).collect::<StringArray>())
    };
    let hi: UInt64Array = rows
        .iter()
        .map(|r| (r.keys.text_hash >> 64) as u64)
        .collect();
    let lo: UInt64Array = rows.iter().map(|r| r.keys.text_hash as u64).collect();
    let split: UInt8Array = rows.iter().map(|r| Some(r.split)).collect();
    let batch = RecordBatch::try_from_iter([
        ("id", strings(&|r| &r.keys.id)),
        ("group_key", strings(&|r| &r.keys.group)),
        ("text_hash_hi", Arc::new(hi) as ArrayRef),
        ("text_hash_lo", Arc::new(lo) as ArrayRef),
        ("stratum", strings(&|r| &r.stratum)),
        ("split_group", strings(&|r| &r.group_name)),
        ("split", Arc::new(split) as ArrayRef),
    ])?;
    write_table(dir, TABLE, &batch)
}

/// Reads the placed rows saved in `dir` (`None` when there are none).
pub(crate) fn load(dir: &Path) -> Result<Option<Vec<PlacedRow>>> {
    let Some(batches) = read_table(dir, TABLE)? else {
        return Ok(None);
    };
    let mut rows = Vec::new();
    for batch in &batches {
        let text = |name| column::<StringArray>(batch, TABLE, name);
        let (id, group, stratum, group_name) = (
            text("id")?,
            text("group_key")?,
            text("stratum")?,
            text("split_group")?,
        );
        let hi = column::<UInt64Array>(batch, TABLE, "text_hash_hi")?;
        let lo = column::<UInt64Array>(batch, TABLE, "text_hash_lo")?;
        let split = column::<UInt8Array>(batch, TABLE, "split")?;
        for row in 0..batch.num_rows() {
            rows.push(PlacedRow {
                keys: RowKeys {
                    id: id.value(row).to_string(),
                    group: group.value(row).to_string(),
                    text_hash: (u128::from(hi.value(row)) << 64) | u128::from(lo.value(row)),
                    cluster: None,
                },
                stratum: stratum.value(row).to_string(),
                group_name: group_name.value(row).to_string(),
                split: split.value(row),
            });
        }
    }
    Ok(Some(rows))
}

impl AsRef<RowKeys> for PlacedRow {
    fn as_ref(&self) -> &RowKeys {
        &self.keys
    }
}

/// New rows to place: their keys (clusters filled in) and strata.
pub(crate) struct NewRows {
    pub keys: Vec<RowKeys>,
    pub strata: Vec<String>,
}

/// The placement of appended rows.
pub(crate) struct AppendPlan {
    /// Every row's record, old then new (the state to save).
    pub rows: Vec<PlacedRow>,
    /// How many of them are old.
    pub old_rows: usize,
    /// Groups in all.
    pub groups: u64,
    /// Strata in all.
    pub strata: u64,
}

/// Places `new` after `old` by the rule in the module docs; `Err` says why it cannot.
pub(crate) fn plan(
    mut old: Vec<PlacedRow>,
    new: NewRows,
    clusters: &HashMap<String, String>,
    fractions: [f64; 3],
    seed: u64,
) -> std::result::Result<AppendPlan, String> {
    for row in &mut old {
        row.keys.cluster = clusters.get(&row.keys.id).cloned();
    }
    // The old groups: name -> (index, split, first row).
    let mut group_index: HashMap<&str, usize> = HashMap::new();
    let mut group_split: Vec<u8> = Vec::new();
    let mut group_name: Vec<&str> = Vec::new();
    let mut by_key: HashMap<&str, usize> = HashMap::new();
    let mut by_text: HashMap<u128, usize> = HashMap::new();
    let mut by_cluster: HashMap<&str, BTreeSet<usize>> = HashMap::new();
    for row in &old {
        let next = group_split.len();
        let g = *group_index.entry(&row.group_name).or_insert(next);
        if g == next {
            group_split.push(row.split);
            group_name.push(&row.group_name);
        }
        by_key.entry(&row.keys.group).or_insert(g);
        by_text.entry(row.keys.text_hash).or_insert(g);
        if let Some(c) = &row.keys.cluster {
            by_cluster.entry(c).or_default().insert(g);
        }
    }

    // The new rows' components, and the old groups each one touches.
    let n = new.keys.len();
    let mut components = join_shared_keys(&new.keys);
    let mut touched: HashMap<u32, BTreeSet<usize>> = HashMap::new();
    for (i, k) in new.keys.iter().enumerate() {
        let set = touched.entry(components.find(i as u32)).or_default();
        set.extend(by_key.get(k.group.as_str()));
        set.extend(by_text.get(&k.text_hash));
        if let Some(c) = &k.cluster {
            set.extend(by_cluster.get(c.as_str()).into_iter().flatten());
        }
    }

    // Strata, old and new, and the old rows per split and stratum.
    let mut stratum_index: HashMap<&str, usize> = HashMap::new();
    for s in old
        .iter()
        .map(|r| r.stratum.as_str())
        .chain(new.strata.iter().map(String::as_str))
    {
        let next = stratum_index.len();
        stratum_index.entry(s).or_insert(next);
    }
    let mut placed = vec![vec![0u64; stratum_index.len()]; 3];
    for row in &old {
        placed[row.split as usize][stratum_index[row.stratum.as_str()]] += 1;
    }

    // Components joining old rows take their split; the others become new groups.
    let mut joined: HashMap<u32, (u8, String)> = HashMap::new();
    let mut new_group: HashMap<u32, usize> = HashMap::new();
    let mut groups: Vec<Group> = Vec::new();
    let mut row_root = Vec::with_capacity(n);
    for (i, k) in new.keys.iter().enumerate() {
        let root = components.find(i as u32);
        row_root.push(root);
        let old_groups = &touched[&root];
        if let Some(&first) = old_groups.iter().next() {
            let splits: BTreeSet<u8> = old_groups.iter().map(|&g| group_split[g]).collect();
            if splits.len() > 1 {
                return Err(format!(
                    "appended row {} shares keys with earlier rows in {} splits",
                    k.id,
                    splits.len()
                ));
            }
            joined
                .entry(root)
                .or_insert_with(|| (group_split[first], group_name[first].to_string()));
            continue;
        }
        let g = *new_group.entry(root).or_insert_with(|| {
            groups.push(Group {
                name: new.keys[root as usize].id.clone(),
                strata: Vec::new(),
            });
            groups.len() - 1
        });
        let s = stratum_index[new.strata[i].as_str()];
        match groups[g].strata.iter_mut().find(|(k, _)| *k == s) {
            Some((_, count)) => *count += 1,
            None => groups[g].strata.push((s, 1)),
        }
    }
    let new_split = assign_onto(placed, &groups, fractions, seed);

    let old_rows = old.len();
    let strata = stratum_index.len() as u64;
    let group_count = (group_split.len() + groups.len()) as u64;
    let mut rows = old;
    for ((keys, stratum), root) in new.keys.into_iter().zip(new.strata).zip(row_root) {
        let (split, group_name) = match joined.get(&root) {
            Some((split, name)) => (*split, name.clone()),
            None => {
                let g = new_group[&root];
                (new_split[g], groups[g].name.clone())
            }
        };
        rows.push(PlacedRow {
            keys,
            stratum,
            group_name,
            split,
        });
    }
    let splits: Vec<u8> = rows.iter().map(|r| r.split).collect();
    if let Some(leak) = find_leaks(&rows, &splits).first() {
        return Err(format!("placing the appended rows would leak: {leak}"));
    }
    Ok(AppendPlan {
        rows,
        old_rows,
        groups: group_count,
        strata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(id: &str, group: &str, text: u128) -> RowKeys {
        RowKeys {
            id: id.into(),
            group: group.into(),
            text_hash: text,
            cluster: None,
        }
    }

    fn placed(id: &str, group: &str, text: u128, split: u8) -> PlacedRow {
        PlacedRow {
            keys: keys(id, group, text),
            stratum: "all".into(),
            group_name: group.into(),
            split,
        }
    }

    /// 80 old rows in train, 10 in validation, 10 in test, one group each.
    fn old_rows() -> Vec<PlacedRow> {
        (0..100)
            .map(|i| {
                let split = match i {
                    0..80 => 0,
                    80..90 => 1,
                    _ => 2,
                };
                placed(&format!("r{i}"), &format!("g{i}"), i as u128, split)
            })
            .collect()
    }

    #[test]
    fn new_rows_join_the_split_of_the_old_rows_they_share_keys_with() {
        let mut new = NewRows {
            keys: vec![
                keys("n0", "g85", 1000),   // same group as a validation row
                keys("n1", "new-a", 95),   // same text as a test row
                keys("n2", "new-b", 2000), // same cluster as a train row
            ],
            strata: vec!["all".into(); 3],
        };
        new.keys[2].cluster = Some("c".into());
        let clusters = HashMap::from([("r3".to_string(), "c".to_string())]);
        let plan = plan(old_rows(), new, &clusters, [0.8, 0.1, 0.1], 1).unwrap();
        let placed: Vec<(u8, &str)> = plan.rows[100..]
            .iter()
            .map(|r| (r.split, r.group_name.as_str()))
            .collect();
        assert_eq!(placed, vec![(1, "g85"), (2, "g95"), (0, "g3")]);
        assert_eq!(plan.groups, 100);
        assert!(plan.rows[..100]
            .iter()
            .zip(old_rows())
            .all(|(now, before)| now.split == before.split));
    }

    #[test]
    fn new_groups_fill_the_splits_towards_their_fractions() {
        let new = NewRows {
            keys: (0..50)
                .map(|i| keys(&format!("n{i}"), &format!("new{i}"), 1000 + i as u128))
                .collect(),
            strata: vec!["all".into(); 50],
        };
        let plan = plan(old_rows(), new, &HashMap::new(), [0.8, 0.1, 0.1], 1).unwrap();
        let mut per_split = [0; 3];
        for r in &plan.rows {
            per_split[r.split as usize] += 1;
        }
        assert_eq!(per_split, [120, 15, 15]);
    }

    #[test]
    fn a_new_row_bridging_two_splits_cannot_be_placed() {
        let new = NewRows {
            keys: vec![keys("n0", "g0", 95)], // group of a train row, text of a test row
            strata: vec!["all".into()],
        };
        let why = plan(old_rows(), new, &HashMap::new(), [0.8, 0.1, 0.1], 1)
            .err()
            .unwrap();
        assert!(why.contains("n0") && why.contains("2 splits"), "{why}");
    }
}
