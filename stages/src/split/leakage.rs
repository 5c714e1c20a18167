//! The leakage checks run after splitting: no normalised text, no group and no near-duplicate
//! cluster may appear in two splits. Drawn splits fail on any leak; splits taken from the
//! data (a benchmark's own) report them, and can drop the later rows.

use std::collections::HashMap;
use std::hash::Hash;

use super::assign::SPLIT_NAMES;

/// What split checks about one row.
#[derive(Debug, Clone)]
pub struct RowKeys {
    /// Row id.
    pub id: String,
    /// Its group key.
    pub group: String,
    /// Hash of its normalised text.
    pub text_hash: u128,
    /// Its near-duplicate cluster, if it is in one.
    pub cluster: Option<String>,
}

/// What two rows in different splits share: the kinds of leak, in the order they are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LeakKind {
    /// The same normalised text.
    Text,
    /// The same near-duplicate cluster.
    NearDuplicateCluster,
    /// The same group key (one document, one article).
    Group,
}

impl LeakKind {
    /// Every kind, in checking order.
    pub const ALL: [LeakKind; 3] = [
        LeakKind::Text,
        LeakKind::NearDuplicateCluster,
        LeakKind::Group,
    ];

    /// Its name in counts, rejects and the `split_leaks` dataset.
    pub fn name(self) -> &'static str {
        match self {
            LeakKind::Text => "text",
            LeakKind::NearDuplicateCluster => "near_duplicate_cluster",
            LeakKind::Group => "group",
        }
    }
}

/// A row that shares a key with a row of an earlier split (train, then validation, then test).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leak {
    /// What they share.
    pub kind: LeakKind,
    /// The row of the earliest split holding the key (the first such row), and its split.
    pub earlier: (String, &'static str),
    /// The row in a later split, and its split.
    pub later: (String, &'static str),
    /// The later row's index in the rows checked.
    pub later_row: usize,
}

impl std::fmt::Display for Leak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}) and {} ({}) share their {}",
            self.earlier.0,
            self.earlier.1,
            self.later.0,
            self.later.1,
            self.kind.name().replace('_', " ")
        )
    }
}

impl AsRef<RowKeys> for RowKeys {
    fn as_ref(&self) -> &RowKeys {
        self
    }
}

/// Every leak, by kind: for each shared key, each row in a later split than the key's earliest
/// (rows of the earliest split itself do not leak).
pub fn find_leaks<R: AsRef<RowKeys>>(rows: &[R], split: &[u8]) -> Vec<Leak> {
    let mut leaks = Vec::new();
    for kind in LeakKind::ALL {
        match kind {
            LeakKind::Text => check(rows, split, kind, |r| Some(r.text_hash), &mut leaks),
            LeakKind::NearDuplicateCluster => {
                check(rows, split, kind, |r| r.cluster.as_deref(), &mut leaks)
            }
            LeakKind::Group => check(rows, split, kind, |r| Some(r.group.as_str()), &mut leaks),
        }
    }
    leaks
}

fn check<'a, R: AsRef<RowKeys>, K: Hash + Eq>(
    rows: &'a [R],
    split: &[u8],
    kind: LeakKind,
    key: impl Fn(&'a RowKeys) -> Option<K>,
    leaks: &mut Vec<Leak>,
) {
    // The earliest row of each key: lowest split first, then input order.
    let mut earliest: HashMap<K, usize> = HashMap::new();
    for (i, row) in rows.iter().enumerate() {
        let Some(k) = key(row.as_ref()) else { continue };
        earliest
            .entry(k)
            .and_modify(|e| {
                if split[i] < split[*e] {
                    *e = i;
                }
            })
            .or_insert(i);
    }
    for (i, row) in rows.iter().enumerate() {
        let row = row.as_ref();
        let Some(k) = key(row) else { continue };
        let e = earliest[&k];
        if split[e] != split[i] {
            leaks.push(Leak {
                kind,
                earlier: (rows[e].as_ref().id.clone(), SPLIT_NAMES[split[e] as usize]),
                later: (row.id.clone(), SPLIT_NAMES[split[i] as usize]),
                later_row: i,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, group: &str, text: u128, cluster: Option<&str>) -> RowKeys {
        RowKeys {
            id: id.into(),
            group: group.into(),
            text_hash: text,
            cluster: cluster.map(str::to_string),
        }
    }

    #[test]
    fn a_clean_split_has_no_leaks() {
        let rows = [
            row("a", "g1", 1, None),
            row("b", "g1", 2, None),
            row("c", "g2", 3, None),
        ];
        assert!(find_leaks(&rows, &[0, 0, 1]).is_empty());
    }

    #[test]
    fn each_kind_of_sharing_across_splits_is_reported_with_both_rows() {
        let rows = [
            row("a", "g1", 1, Some("a")),
            row("b", "g1", 2, None),
            row("c", "g2", 1, None),
            row("d", "g3", 4, Some("a")),
        ];
        let leaks = find_leaks(&rows, &[0, 1, 2, 1]);
        let kinds: Vec<LeakKind> = leaks.iter().map(|l| l.kind).collect();
        assert_eq!(
            kinds,
            [
                LeakKind::Text,
                LeakKind::NearDuplicateCluster,
                LeakKind::Group
            ]
        );
        assert_eq!(leaks[0].earlier, ("a".to_string(), "train"));
        assert_eq!(leaks[0].later, ("c".to_string(), "test"));
        assert_eq!(leaks[0].later_row, 2);
        assert_eq!(
            leaks[2].to_string(),
            "a (train) and b (validation) share their group"
        );
    }

    #[test]
    fn the_earlier_row_is_in_the_earliest_split_whatever_the_input_order() {
        // Test rows read first (a config listing test.tsv before train.tsv): the train row is
        // still the earlier one, and both test rows leak.
        let rows = [
            row("t1", "g1", 7, None),
            row("t2", "g2", 7, None),
            row("v1", "g3", 7, None),
            row("r1", "g4", 7, None),
        ];
        let leaks = find_leaks(&rows, &[2, 2, 1, 0]);
        let pairs: Vec<(&str, &str)> = leaks
            .iter()
            .map(|l| (l.earlier.0.as_str(), l.later.0.as_str()))
            .collect();
        assert_eq!(pairs, [("r1", "t1"), ("r1", "t2"), ("r1", "v1")]);
    }
}
