//! The hard leakage checks run after splitting: no normalised text, no group and no
//! near-duplicate cluster may appear in two splits.

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

/// Two rows in different splits that share something they must not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leak {
    /// What they share: `text`, `group` or `near_duplicate_cluster`.
    pub kind: &'static str,
    /// The row seen first, and its split.
    pub first: (String, &'static str),
    /// The row in another split, and its split.
    pub other: (String, &'static str),
}

impl std::fmt::Display for Leak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}) and {} ({}) share their {}",
            self.first.0,
            self.first.1,
            self.other.0,
            self.other.1,
            self.kind.replace('_', " ")
        )
    }
}

impl AsRef<RowKeys> for RowKeys {
    fn as_ref(&self) -> &RowKeys {
        self
    }
}

/// Every leak, by kind: for each shared key, each row whose split differs from the split of
/// the key's first row.
pub fn find_leaks<R: AsRef<RowKeys>>(rows: &[R], split: &[u8]) -> Vec<Leak> {
    let mut leaks = Vec::new();
    check(rows, split, "text", |r| Some(r.text_hash), &mut leaks);
    check(rows, split, "group", |r| Some(r.group.as_str()), &mut leaks);
    check(
        rows,
        split,
        "near_duplicate_cluster",
        |r| r.cluster.as_deref(),
        &mut leaks,
    );
    leaks
}

fn check<'a, R: AsRef<RowKeys>, K: Hash + Eq>(
    rows: &'a [R],
    split: &[u8],
    kind: &'static str,
    key: impl Fn(&'a RowKeys) -> Option<K>,
    leaks: &mut Vec<Leak>,
) {
    let mut first: HashMap<K, usize> = HashMap::new();
    for (i, row) in rows.iter().enumerate() {
        let row = row.as_ref();
        let Some(k) = key(row) else { continue };
        let f = *first.entry(k).or_insert(i);
        if split[f] != split[i] {
            leaks.push(Leak {
                kind,
                first: (rows[f].as_ref().id.clone(), SPLIT_NAMES[split[f] as usize]),
                other: (row.id.clone(), SPLIT_NAMES[split[i] as usize]),
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
        let kinds: Vec<&str> = leaks.iter().map(|l| l.kind).collect();
        assert_eq!(kinds, ["text", "group", "near_duplicate_cluster"]);
        assert_eq!(leaks[0].first, ("a".to_string(), "train"));
        assert_eq!(leaks[0].other, ("c".to_string(), "test"));
        assert_eq!(
            leaks[1].to_string(),
            "a (train) and b (validation) share their group"
        );
    }
}
