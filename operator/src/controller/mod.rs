//! The two controllers and what they share: context, errors, event sink, backoff.

pub mod cache;
pub mod model_deployment;
pub mod training_run;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};

use crate::metrics::Metrics;
use crate::run_plan::{PlannedEvent, Severity};

/// Reconcile failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The object lacks something every stored object has (name, namespace).
    #[error("malformed object: {0}")]
    Malformed(&'static str),
}

/// Where events go.
pub trait EventSink: Send + Sync {
    /// Record `ev` on the object `regarding`.
    fn publish<'a>(
        &'a self,
        regarding: &'a ObjectReference,
        ev: &'a PlannedEvent,
    ) -> BoxFuture<'a, ()>;
}

/// Events through the `events.k8s.io/v1` API.
pub struct KubeEvents(pub Recorder);

impl EventSink for KubeEvents {
    fn publish<'a>(
        &'a self,
        regarding: &'a ObjectReference,
        ev: &'a PlannedEvent,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let e = Event {
                type_: match ev.severity {
                    Severity::Normal => EventType::Normal,
                    Severity::Warning => EventType::Warning,
                },
                reason: ev.reason.into(),
                note: Some(crate::util::truncate(&ev.message, 1000)),
                action: "Reconcile".into(),
                secondary: None,
            };
            if let Err(err) = self.0.publish(&e, regarding).await {
                tracing::warn!(reason = ev.reason, error = %err, "cannot record event");
            }
        })
    }
}

/// Keeps events in memory (tests, benchmarks).
#[derive(Default)]
pub struct MemoryEvents(pub Mutex<Vec<(String, PlannedEvent)>>);

impl EventSink for MemoryEvents {
    fn publish<'a>(
        &'a self,
        regarding: &'a ObjectReference,
        ev: &'a PlannedEvent,
    ) -> BoxFuture<'a, ()> {
        self.0
            .lock()
            .expect("events")
            .push((regarding.name.clone().unwrap_or_default(), ev.clone()));
        Box::pin(async {})
    }
}

/// Per-object exponential backoff after errors: 2 s, 4 s, … capped at 5 minutes; reset by a
/// successful reconcile.
#[derive(Default)]
pub struct Backoff(Mutex<HashMap<String, u32>>);

impl Backoff {
    /// The delay before retrying `key` after another failure.
    pub fn fail(&self, key: &str) -> Duration {
        let mut m = self.0.lock().expect("backoff");
        let n = m.entry(key.to_string()).or_insert(0);
        *n = (*n + 1).min(16);
        Duration::from_secs((1u64 << *n).min(300))
    }

    /// Forget `key`'s failures.
    pub fn succeed(&self, key: &str) {
        self.0.lock().expect("backoff").remove(key);
    }
}

/// What both controllers share.
pub struct Shared {
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Event sink.
    pub events: Arc<dyn EventSink>,
    /// Error backoff.
    pub backoff: Backoff,
    /// Defaults for unset fields, applied to every object before it is reconciled.
    pub defaults: crate::defaults::Defaults,
}

/// A fresh id for one reconcile, recorded in its span: every log line of that reconcile carries
/// it, so one reconcile's lines can be picked out of many concurrent ones.
pub fn trace_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The `error_policy` of both controllers.
pub fn backoff_action(shared: &Shared, ctrl: &str, key: &str, err: &Error) -> Action {
    shared.metrics.failed(ctrl);
    let delay = shared.backoff.fail(key);
    tracing::warn!(controller = ctrl, object = key, error = %err, retry_in_s = delay.as_secs(), "reconcile failed");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let b = Backoff::default();
        assert_eq!(b.fail("a"), Duration::from_secs(2));
        assert_eq!(b.fail("a"), Duration::from_secs(4));
        for _ in 0..20 {
            b.fail("a");
        }
        assert_eq!(b.fail("a"), Duration::from_secs(300));
        b.succeed("a");
        assert_eq!(b.fail("a"), Duration::from_secs(2));
    }

    #[test]
    fn trace_ids_are_16_hex_digits_and_differ() {
        let (a, b) = (trace_id(), trace_id());
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
