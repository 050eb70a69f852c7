//! Prometheus metrics of the manager.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::crd::TrialCounts;

type Labels = Vec<(String, String)>;

/// The operator's metrics.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    durations: Family<Labels, Histogram>,
    trials: Family<Labels, Gauge>,
    leader: Gauge,
    per_run: Mutex<HashMap<String, TrialCounts>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn controller(c: &str) -> Labels {
    vec![("controller".into(), c.into())]
}

impl Metrics {
    /// Register every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("textrec_operator");
        let reconciles = Family::<Labels, Counter>::default();
        let errors = Family::<Labels, Counter>::default();
        let durations = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let trials = Family::<Labels, Gauge>::default();
        let leader = Gauge::default();
        registry.register("reconciles", "Reconciles by controller", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciles by controller",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration by controller",
            durations.clone(),
        );
        registry.register(
            "trials",
            "Trials of all TrainingRuns by phase",
            trials.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            durations,
            trials,
            leader,
            per_run: Mutex::default(),
        }
    }

    /// Count one reconcile of `ctrl` that took `d`.
    pub fn reconciled(&self, ctrl: &str, d: Duration) {
        self.reconciles.get_or_create(&controller(ctrl)).inc();
        self.durations
            .get_or_create(&controller(ctrl))
            .observe(d.as_secs_f64());
    }

    /// Count one failed reconcile.
    pub fn failed(&self, ctrl: &str) {
        self.errors.get_or_create(&controller(ctrl)).inc();
    }

    /// Record a run's trial counts (summed over runs into the `trials` gauge).
    pub fn set_trials(&self, run: &str, counts: Option<TrialCounts>) {
        let mut map = self.per_run.lock().expect("metrics map");
        match counts {
            Some(c) => map.insert(run.to_string(), c),
            None => map.remove(run),
        };
        let mut sum = TrialCounts::default();
        for c in map.values() {
            sum.pending += c.pending;
            sum.running += c.running;
            sum.succeeded += c.succeeded;
            sum.failed += c.failed;
            sum.early_stopped += c.early_stopped;
        }
        for (phase, v) in [
            ("Pending", sum.pending),
            ("Running", sum.running),
            ("Succeeded", sum.succeeded),
            ("Failed", sum.failed),
            ("EarlyStopped", sum.early_stopped),
        ] {
            self.trials
                .get_or_create(&vec![("phase".into(), phase.into())])
                .set(v as i64);
        }
    }

    /// Whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(leading as i64);
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("metrics encode");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_trials_by_phase() {
        let m = Metrics::new();
        m.reconciled("trainingrun", Duration::from_millis(3));
        m.failed("trainingrun");
        m.set_trials(
            "ns/a",
            Some(TrialCounts {
                total: 4,
                pending: 1,
                running: 2,
                succeeded: 1,
                failed: 0,
                early_stopped: 1,
            }),
        );
        m.set_trials(
            "ns/b",
            Some(TrialCounts {
                total: 1,
                pending: 0,
                running: 1,
                succeeded: 0,
                failed: 0,
                early_stopped: 0,
            }),
        );
        let text = m.render();
        assert!(
            text.contains("textrec_operator_reconciles_total{controller=\"trainingrun\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("textrec_operator_trials{phase=\"Running\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("textrec_operator_trials{phase=\"EarlyStopped\"} 1"),
            "{text}"
        );
        m.set_trials("ns/b", None);
        assert!(m
            .render()
            .contains("textrec_operator_trials{phase=\"Running\"} 2"));
    }
}
