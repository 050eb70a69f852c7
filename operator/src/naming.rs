//! Deterministic names and labels of the objects the operator creates.
//!
//! Names must be DNS-1123 labels (≤ 63 characters, `[a-z0-9-]`, alphanumeric at both ends)
//! because a Job's name becomes a label value on its pods. Long run names are shortened with a
//! hash of the full name, so two runs never share a trial name.

use sha2::{Digest, Sha256};

/// Longest DNS-1123 label (and label value).
pub const MAX_LABEL: usize = 63;

/// Label every object the operator creates carries; the manager watches only these.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY`].
pub const MANAGER: &str = "textrec-operator";
/// Label selector matching what the operator manages.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=textrec-operator";
/// Label with the owning TrainingRun's name (shortened by [`label_value`]).
pub const RUN_LABEL: &str = "textrec.dev/run";
/// Label with the trial name.
pub const TRIAL_LABEL: &str = "textrec.dev/trial";
/// Label with the owning ModelDeployment's name (shortened by [`label_value`]).
pub const DEPLOYMENT_LABEL: &str = "textrec.dev/model-deployment";
/// Annotation with the full owner name (labels may be shortened).
pub const OWNER_ANNOTATION: &str = "textrec.dev/owner";
/// Field manager of server-side apply.
pub const FIELD_MANAGER: &str = "textrec-operator";

fn short_hash(s: &str) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..4])
}

/// Lower-case `s` and replace anything outside `[a-z0-9-]` with `-`.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// `base` + `suffix` as a valid DNS-1123 label: when too long (or altered by sanitizing), `base`
/// is cut and a hash of the original `base` inserted so distinct inputs stay distinct.
pub fn bounded_name(base: &str, suffix: &str) -> String {
    let clean = sanitize(base);
    let full = format!("{clean}{suffix}");
    if full.len() <= MAX_LABEL && clean == base && is_dns1123_label(&full) {
        return full;
    }
    let hash = short_hash(base);
    let room = MAX_LABEL - suffix.len() - hash.len() - 1;
    let mut head: String = clean.chars().take(room).collect();
    while head.ends_with('-') {
        head.pop();
    }
    let head = head.trim_start_matches('-');
    let joined = if head.is_empty() {
        format!("x{hash}{suffix}")
    } else {
        format!("{head}-{hash}{suffix}")
    };
    joined.trim_start_matches('-').to_string()
}

/// Name of trial `index` of run `run`: `<run>-t<index>`, shortened when needed.
pub fn trial_name(run: &str, index: usize) -> String {
    bounded_name(run, &format!("-t{index}"))
}

/// A label value for `name` (≤ 63 characters; shortened with a hash when longer).
pub fn label_value(name: &str) -> String {
    bounded_name(name, "")
}

/// Whether `s` is a DNS-1123 label.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_LABEL
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Names of a ModelDeployment's children.
pub fn serving_name(deployment: &str) -> String {
    bounded_name(deployment, "")
}

/// Name of the HotReload model pointer ConfigMap.
pub fn pointer_configmap_name(deployment: &str) -> String {
    bounded_name(deployment, "-model")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_names_are_kept() {
        assert_eq!(trial_name("lr-search", 3), "lr-search-t3");
    }

    #[test]
    fn long_and_dotted_names_are_shortened_and_distinct() {
        let a = "a".repeat(80);
        let b = format!("{}b", "a".repeat(79));
        let (na, nb) = (trial_name(&a, 0), trial_name(&b, 0));
        assert!(na.len() <= 63 && nb.len() <= 63);
        assert_ne!(na, nb);
        assert!(is_dns1123_label(&trial_name("my.run", 1)));
        assert_ne!(trial_name("my.run", 1), trial_name("my-run", 1));
    }

    proptest! {
        #[test]
        fn trial_names_are_valid_and_unique(run in "[a-z0-9]([a-z0-9.-]{0,120}[a-z0-9])?", n in 1usize..300) {
            let mut seen = std::collections::HashSet::new();
            for i in 0..n {
                let name = trial_name(&run, i);
                prop_assert!(is_dns1123_label(&name), "{name}");
                prop_assert!(seen.insert(name));
            }
            prop_assert!(is_dns1123_label(&label_value(&run)));
        }

        #[test]
        fn different_runs_never_collide(a in "[a-z]{60,80}", b in "[a-z]{60,80}", i in 0usize..256) {
            prop_assume!(a != b);
            prop_assert_ne!(trial_name(&a, i), trial_name(&b, i));
        }
    }
}
