//! Search-space expansion: `hyperparameters` (plain JSON where a list is a set of values to
//! search and anything else is fixed) into the parameter sets of the trials.
//!
//! Grid search enumerates the cartesian product in a fixed order (sorted field paths, the last
//! path varying fastest); random search draws a seeded sample of that product without
//! replacement. Both are pure and deterministic, so re-running a reconcile (or the local
//! runner) always yields the same trials in the same order.

use std::collections::BTreeSet;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use crate::crd::SearchAlgorithm;

/// One searched dimension: a dotted path and its candidate values.
#[derive(Debug, Clone, PartialEq)]
pub struct Dimension {
    /// Path inside `hyperparameters`, e.g. `["optimizer", "lr"]`.
    pub path: Vec<String>,
    /// Candidate values, in the order written.
    pub values: Vec<Value>,
}

/// The parameters of one trial.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSet {
    /// Position in the grid's enumeration order.
    pub grid_index: u128,
    /// `hyperparameters` with every list replaced by the chosen value.
    pub params: Value,
    /// The chosen values of the searched dimensions only (`optimizer.lr=0.001`).
    pub searched: Vec<(String, Value)>,
}

/// Why a search space cannot be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SearchError {
    /// `hyperparameters` is not an object.
    #[error("spec.hyperparameters: must be an object of config fields, got {0}")]
    NotAnObject(&'static str),
    /// A list with no values: the search space is empty.
    #[error("spec.hyperparameters.{0}: empty list (the search space would be empty); remove the field or give at least one value")]
    EmptyList(String),
}

/// How a JSON value's type reads in an error message ("a list", "an object", …).
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The searched dimensions of `hp`, sorted by path.
pub fn dimensions(hp: &Value) -> Result<Vec<Dimension>, SearchError> {
    fn walk(
        path: &mut Vec<String>,
        v: &Value,
        out: &mut Vec<Dimension>,
    ) -> Result<(), SearchError> {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    path.push(k.clone());
                    walk(path, v, out)?;
                    path.pop();
                }
                Ok(())
            }
            Value::Array(a) if a.is_empty() => Err(SearchError::EmptyList(path.join("."))),
            Value::Array(a) => {
                out.push(Dimension {
                    path: path.clone(),
                    values: a.clone(),
                });
                Ok(())
            }
            _ => Ok(()),
        }
    }
    match hp {
        Value::Null => return Ok(Vec::new()),
        Value::Object(_) => {}
        other => return Err(SearchError::NotAnObject(kind(other))),
    }
    let mut out = Vec::new();
    walk(&mut Vec::new(), hp, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Number of grid points (saturating; one when nothing is searched).
pub fn grid_size(dims: &[Dimension]) -> u128 {
    dims.iter()
        .fold(1u128, |acc, d| acc.saturating_mul(d.values.len() as u128))
}

fn set_path(tree: &mut Value, path: &[String], value: Value) {
    let mut node = tree;
    for (i, key) in path.iter().enumerate() {
        let map = node
            .as_object_mut()
            .expect("dimension paths run through objects");
        if i + 1 == path.len() {
            map.insert(key.clone(), value);
            return;
        }
        node = map.get_mut(key).expect("dimension path exists");
    }
}

/// The parameters at grid position `index` (mixed radix, last dimension fastest).
pub fn grid_point(hp: &Value, dims: &[Dimension], index: u128) -> ParamSet {
    let mut params = if hp.is_null() {
        Value::Object(Default::default())
    } else {
        hp.clone()
    };
    let mut rest = index;
    let mut chosen = vec![Value::Null; dims.len()];
    for (i, d) in dims.iter().enumerate().rev() {
        let n = d.values.len() as u128;
        chosen[i] = d.values[(rest % n) as usize].clone();
        rest /= n;
    }
    let mut searched = Vec::with_capacity(dims.len());
    for (d, v) in dims.iter().zip(chosen) {
        set_path(&mut params, &d.path, v.clone());
        searched.push((d.path.join("."), v));
    }
    ParamSet {
        grid_index: index,
        params,
        searched,
    }
}

/// Expand `hp` into at most `max_trials` parameter sets.
pub fn expand(
    hp: &Value,
    algorithm: SearchAlgorithm,
    seed: u64,
    max_trials: usize,
) -> Result<Vec<ParamSet>, SearchError> {
    let dims = dimensions(hp)?;
    let total = grid_size(&dims);
    let n = (max_trials as u128).min(total) as usize;
    let indices: Vec<u128> = match algorithm {
        SearchAlgorithm::Grid => (0..n as u128).collect(),
        SearchAlgorithm::Random => sample_without_replacement(total, n, seed),
    };
    Ok(indices
        .into_iter()
        .map(|i| grid_point(hp, &dims, i))
        .collect())
}

/// `n` distinct values of `0..total` drawn with a seeded ChaCha8 stream. `n` is small (≤ 256),
/// so rejection of repeats is cheap even when `total` is astronomically large; when `n` is close
/// to `total` a seeded shuffle is used instead so the loop always ends quickly.
fn sample_without_replacement(total: u128, n: usize, seed: u64) -> Vec<u128> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    if total <= 4 * n as u128 {
        let mut all: Vec<u128> = (0..total).collect();
        for i in 0..n {
            let j = rng.gen_range(i..all.len());
            all.swap(i, j);
        }
        all.truncate(n);
        return all;
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let i = rng.gen_range(0..total);
        if seen.insert(i) {
            out.push(i);
        }
    }
    out
}

/// `key=value` pairs of the searched values, comma-separated and cut to `max` characters, for
/// the trial's status entry.
pub fn summarize(searched: &[(String, Value)], max: usize) -> String {
    let s = searched
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    crate::util::truncate(&s, max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn grid_is_the_cartesian_product_with_nested_objects() {
        let hp = json!({"optimizer": {"lr": [0.001, 0.01], "warmup_steps": 100}, "batch_size": [8, 16, 32]});
        let sets = expand(&hp, SearchAlgorithm::Grid, 0, 100).unwrap();
        assert_eq!(sets.len(), 6);
        // Sorted paths: batch_size, optimizer.lr; the last varies fastest.
        assert_eq!(
            sets[0].params,
            json!({"optimizer": {"lr": 0.001, "warmup_steps": 100}, "batch_size": 8})
        );
        assert_eq!(sets[1].params["optimizer"]["lr"], json!(0.01));
        assert_eq!(sets[2].params["batch_size"], json!(16));
        assert_eq!(
            summarize(&sets[1].searched, 256),
            "batch_size=8,optimizer.lr=0.01"
        );
    }

    #[test]
    fn scalars_only_is_one_trial_and_null_is_one_default_trial() {
        assert_eq!(
            expand(&json!({"max_steps": 10}), SearchAlgorithm::Grid, 0, 5)
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            expand(&Value::Null, SearchAlgorithm::Random, 0, 5)
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn empty_list_names_the_field() {
        let err = expand(
            &json!({"optimizer": {"lr": []}}),
            SearchAlgorithm::Grid,
            0,
            5,
        )
        .unwrap_err();
        assert_eq!(err, SearchError::EmptyList("optimizer.lr".into()));
        assert!(err
            .to_string()
            .contains("spec.hyperparameters.optimizer.lr"));
        assert!(matches!(
            expand(&json!([1]), SearchAlgorithm::Grid, 0, 5),
            Err(SearchError::NotAnObject(_))
        ));
    }

    #[test]
    fn a_list_value_is_searched_as_a_list_of_lists() {
        let hp = json!({"model": {"encoder_channels": [[8, 16, 32]]}});
        let sets = expand(&hp, SearchAlgorithm::Grid, 0, 5).unwrap();
        assert_eq!(sets.len(), 1);
        assert_eq!(
            sets[0].params["model"]["encoder_channels"],
            json!([8, 16, 32])
        );
    }

    #[test]
    fn huge_random_space_samples_quickly() {
        let dims: serde_json::Map<String, Value> = (0..40)
            .map(|i| (format!("p{i:02}"), json!([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])))
            .collect();
        let sets = expand(&Value::Object(dims), SearchAlgorithm::Random, 7, 256).unwrap();
        assert_eq!(sets.len(), 256);
    }

    fn space() -> impl Strategy<Value = Value> {
        proptest::collection::btree_map(
            "[a-d]{1,3}",
            proptest::collection::vec(0i64..100, 1..4),
            0..5,
        )
        .prop_map(|m| {
            let mut obj = serde_json::Map::new();
            for (k, vals) in m {
                // Distinct values so distinct grid points are distinct parameter sets.
                let mut vals = vals;
                vals.sort();
                vals.dedup();
                obj.insert(k, json!(vals));
            }
            obj.insert("fixed".into(), json!({"x": 1}));
            Value::Object(obj)
        })
    }

    proptest! {
        #[test]
        fn grid_count_is_the_product_capped(hp in space(), cap in 1usize..300) {
            let dims = dimensions(&hp).unwrap();
            let product: usize = dims.iter().map(|d| d.values.len()).product();
            let sets = expand(&hp, SearchAlgorithm::Grid, 0, cap).unwrap();
            prop_assert_eq!(sets.len(), product.min(cap));
            let distinct: std::collections::HashSet<String> = sets.iter().map(|s| s.params.to_string()).collect();
            prop_assert_eq!(distinct.len(), sets.len());
        }

        #[test]
        fn random_is_deterministic_without_duplicates(hp in space(), cap in 1usize..50, seed in any::<u64>()) {
            let a = expand(&hp, SearchAlgorithm::Random, seed, cap).unwrap();
            let b = expand(&hp, SearchAlgorithm::Random, seed, cap).unwrap();
            prop_assert_eq!(&a, &b);
            let total = grid_size(&dimensions(&hp).unwrap()) as usize;
            prop_assert_eq!(a.len(), total.min(cap));
            let distinct: std::collections::HashSet<String> = a.iter().map(|s| s.params.to_string()).collect();
            prop_assert_eq!(distinct.len(), a.len());
        }
    }
}
