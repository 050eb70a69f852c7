//! Status conditions following the Kubernetes API conventions: one entry per type, `status`
//! `True`/`False`/`Unknown`, a CamelCase `reason`, a human `message`, the `observedGeneration`
//! the condition was computed from, and a `lastTransitionTime` that changes only when `status`
//! does (so `kubectl wait` and alerting see real transitions, not every reconcile).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Set condition `type_` in `conds`, keeping `lastTransitionTime` when the status is unchanged.
pub fn set(
    conds: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) {
    let status = if status { "True" } else { "False" };
    let message = crate::util::truncate(message, 1024);
    if let Some(c) = conds.iter_mut().find(|c| c.type_ == type_) {
        if c.status != status {
            c.last_transition_time = now.clone();
        }
        c.status = status.into();
        c.reason = reason.into();
        c.message = message;
        c.observed_generation = generation;
    } else {
        conds.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time: now.clone(),
        });
    }
}

/// Whether condition `type_` is `True`.
pub fn is_true(conds: &[Condition], type_: &str) -> bool {
    conds.iter().any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn t(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    #[test]
    fn transition_time_changes_only_with_status() {
        let mut c = Vec::new();
        set(&mut c, "Ready", false, "Starting", "a", Some(1), &t(10));
        set(
            &mut c,
            "Ready",
            false,
            "StillStarting",
            "b",
            Some(2),
            &t(20),
        );
        assert_eq!(c[0].last_transition_time, t(10));
        assert_eq!(
            (c[0].reason.as_str(), c[0].observed_generation),
            ("StillStarting", Some(2))
        );
        set(&mut c, "Ready", true, "Up", "c", Some(2), &t(30));
        assert_eq!(c[0].last_transition_time, t(30));
        assert!(is_true(&c, "Ready"));
        assert_eq!(c.len(), 1);
    }
}
