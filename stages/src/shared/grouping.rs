//! Grouping rows: a union-find whose sets are named after their first member, and joining
//! the rows that share a key. Split joins rows sharing a group key, a text or a near-duplicate
//! cluster; dedup joins near-duplicates into clusters.

use std::collections::HashMap;
use std::hash::Hash;

/// Disjoint sets over dense indices `0..len`. The root of a set is always its smallest index,
/// so a set can be named after its first row whatever order the joins came in.
#[derive(Debug, Clone, Default)]
pub struct UnionFind {
    parent: Vec<u32>,
}

impl UnionFind {
    /// `len` singletons.
    pub fn new(len: usize) -> Self {
        UnionFind {
            parent: (0..len as u32).collect(),
        }
    }

    /// Adds a singleton and returns its index.
    pub fn push(&mut self) -> u32 {
        let index = self.parent.len() as u32;
        self.parent.push(index);
        index
    }

    /// The root (smallest index) of `x`'s set; halves the path on the way.
    pub fn find(&mut self, mut x: u32) -> u32 {
        while self.parent[x as usize] != x {
            let up = self.parent[self.parent[x as usize] as usize];
            self.parent[x as usize] = up;
            x = up;
        }
        x
    }

    /// Joins the sets of `a` and `b`.
    pub fn union(&mut self, a: u32, b: u32) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            let (root, child) = if ra < rb { (ra, rb) } else { (rb, ra) };
            self.parent[child as usize] = root;
        }
    }

    /// Joins every element with the first element that had the same key: `keyed` yields
    /// (element, key) pairs; elements without a key are simply not yielded.
    pub fn join_by_key<K: Hash + Eq>(&mut self, keyed: impl IntoIterator<Item = (u32, K)>) {
        let mut first: HashMap<K, u32> = HashMap::new();
        for (element, key) in keyed {
            let f = *first.entry(key).or_insert(element);
            self.union(f, element);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_are_rooted_at_their_smallest_member_whatever_the_join_order() {
        let mut sets = UnionFind::new(6);
        sets.union(5, 3);
        sets.union(3, 4);
        sets.union(4, 1);
        assert_eq!(
            (1..=5).map(|x| sets.find(x)).collect::<Vec<_>>(),
            [1, 2, 1, 1, 1]
        );
        assert_eq!(sets.find(0), 0);
    }

    #[test]
    fn rows_sharing_any_key_end_up_together() {
        let mut sets = UnionFind::new(5);
        sets.join_by_key([(0, "a"), (1, "b"), (2, "a"), (3, "c"), (4, "b")]);
        sets.join_by_key([(1, 7), (3, 7)]);
        let roots: Vec<u32> = (0..5).map(|x| sets.find(x)).collect();
        assert_eq!(roots, [0, 1, 0, 1, 1]);
        assert_eq!(sets.push(), 5);
        assert_eq!(sets.find(5), 5);
    }
}
