//! Group-aware, stratified assignment of groups to splits.
//!
//! Every group goes whole into one split. The objective is the squared gap between each split's
//! rows and its target in every stratum, each stratum weighted by one over its size so small
//! strata count as much as large ones. Groups are placed greedily, largest first (ties in a
//! seeded pseudo-random order), each where it raises the objective least; then single-group
//! moves that lower it are made until none is left (a greedy pass alone overshoots a stratum
//! whose rows only come in mixed groups, while later small groups fill the other strata).
//! With groups much smaller than the splits, every split ends within about one group of its
//! target in every stratum.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The names of the splits, in order.
pub const SPLIT_NAMES: [&str; 3] = ["train", "validation", "test"];

/// A group to place: its rows per stratum, and a name that seeds its place in the visit order.
#[derive(Debug, Clone)]
pub struct Group {
    /// Stable name (e.g. the id of its first row).
    pub name: String,
    /// `(stratum index, rows)` pairs.
    pub strata: Vec<(usize, u64)>,
}

impl Group {
    fn size(&self) -> u64 {
        self.strata.iter().map(|&(_, n)| n).sum()
    }
}

/// Assigns each group a split index (into [`SPLIT_NAMES`]); `fractions` sum to 1.
pub fn assign(groups: &[Group], strata: usize, fractions: [f64; 3], seed: u64) -> Vec<u8> {
    assign_onto(vec![vec![0; strata]; 3], groups, fractions, seed)
}

/// Assigns `groups` to splits that already hold `placed[split][stratum]` rows which stay where
/// they are (rows appended to an input that was split before): the targets are the fractions
/// of all rows, placed and new, and only the new groups move.
pub fn assign_onto(
    placed: Vec<Vec<u64>>,
    groups: &[Group],
    fractions: [f64; 3],
    seed: u64,
) -> Vec<u8> {
    let strata = placed[0].len();
    let mut totals: Vec<u64> = (0..strata)
        .map(|k| placed.iter().map(|split| split[k]).sum())
        .collect();
    for g in groups {
        for &(k, n) in &g.strata {
            totals[k] += n;
        }
    }
    let target: Vec<Vec<f64>> = fractions
        .iter()
        .map(|f| totals.iter().map(|&t| f * t as f64).collect())
        .collect();
    let mut assigned = placed;
    let mut order: Vec<(u64, u64, usize)> = groups
        .iter()
        .enumerate()
        .map(|(i, g)| (g.size(), xxh3_64_with_seed(g.name.as_bytes(), seed), i))
        .collect();
    order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let weight: Vec<f64> = totals.iter().map(|&t| 1.0 / t.max(1) as f64).collect();
    let open: Vec<usize> = (0..3).filter(|&s| fractions[s] > 0.0).collect();
    // Change of the objective when `g` joins split `s` (sign +1) or leaves it (sign -1).
    let change = |assigned: &[Vec<u64>], g: &Group, s: usize, sign: f64| -> f64 {
        g.strata
            .iter()
            .map(|&(k, n)| {
                let gap = assigned[s][k] as f64 - target[s][k];
                let n = n as f64;
                weight[k] * n * (sign * 2.0 * gap + n)
            })
            .sum()
    };
    let mut out = vec![0u8; groups.len()];
    for &(_, _, i) in &order {
        let g = &groups[i];
        let best = open
            .iter()
            .copied()
            .min_by(|&a, &b| {
                change(&assigned, g, a, 1.0)
                    .total_cmp(&change(&assigned, g, b, 1.0))
                    .then(a.cmp(&b))
            })
            .unwrap_or(0);
        for &(k, n) in &g.strata {
            assigned[best][k] += n;
        }
        out[i] = best as u8;
    }
    for _pass in 0..MAX_IMPROVEMENT_PASSES {
        let mut moved = false;
        for &(_, _, i) in &order {
            let g = &groups[i];
            let from = out[i] as usize;
            let leave = change(&assigned, g, from, -1.0);
            for &to in open.iter().filter(|&&s| s != from) {
                if leave + change(&assigned, g, to, 1.0) < -1e-12 {
                    for &(k, n) in &g.strata {
                        assigned[from][k] -= n;
                        assigned[to][k] += n;
                    }
                    out[i] = to as u8;
                    moved = true;
                    break;
                }
            }
        }
        if !moved {
            break;
        }
    }
    out
}

/// Bound on the improvement passes (each visits every group once; a handful suffice).
const MAX_IMPROVEMENT_PASSES: usize = 100;

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(n: usize, per_group: &[(usize, u64)]) -> Vec<Group> {
        (0..n)
            .map(|i| Group {
                name: format!("g{i}"),
                strata: per_group.to_vec(),
            })
            .collect()
    }

    fn counts(groups: &[Group], split: &[u8], strata: usize) -> Vec<Vec<u64>> {
        let mut c = vec![vec![0; strata]; 3];
        for (g, &s) in groups.iter().zip(split) {
            for &(k, n) in &g.strata {
                c[s as usize][k] += n;
            }
        }
        c
    }

    #[test]
    fn proportions_land_within_one_group_of_the_target_per_stratum() {
        // Articles with three tasks, articles with one, and a second kind with two rows.
        let mut all = groups(700, &[(0, 1), (1, 1), (2, 1)]);
        all.extend(groups(150, &[(1, 1)]));
        all.extend(groups(90, &[(2, 2)]));
        for (i, g) in all.iter_mut().enumerate() {
            g.name = format!("group-{i}");
        }
        let split = assign(&all, 3, [0.8, 0.1, 0.1], 7);
        let c = counts(&all, &split, 3);
        // The largest group holds at most 2 rows of any one stratum.
        for stratum in 0..3 {
            let total: u64 = c.iter().map(|split| split[stratum]).sum();
            for (split, share) in c.iter().zip([0.8, 0.1, 0.1]) {
                let gap = (split[stratum] as f64 - share * total as f64).abs();
                assert!(
                    gap <= 2.0,
                    "stratum {stratum}: {} of {total}",
                    split[stratum]
                );
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_split_and_another_seed_another() {
        let all = groups(500, &[(0, 1), (1, 1)]);
        let named: Vec<Group> = all
            .into_iter()
            .enumerate()
            .map(|(i, mut g)| {
                g.name = format!("a{i}");
                g
            })
            .collect();
        let a = assign(&named, 2, [0.8, 0.1, 0.1], 1);
        assert_eq!(a, assign(&named, 2, [0.8, 0.1, 0.1], 1));
        assert_ne!(a, assign(&named, 2, [0.8, 0.1, 0.1], 2));
    }

    #[test]
    fn an_empty_split_gets_nothing() {
        let all = groups(100, &[(0, 1)]);
        let split = assign(&all, 1, [0.9, 0.1, 0.0], 3);
        assert!(split.iter().all(|&s| s != 2));
    }
}
