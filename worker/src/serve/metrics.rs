//! Prometheus metrics of the server, exposed at `/metrics`.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~33 s: covers a cached tiny model and a large model on a busy CPU.
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

/// Every metric the server records.
pub struct Metrics {
    registry: Registry,
    /// Requests by `api` and `outcome` (`ok` or an error label).
    pub requests: Family<Labels, Counter>,
    /// End-to-end request latency by `api`, seconds.
    pub request_seconds: HistogramFamily,
    /// Images per forward pass.
    pub batch_size: Histogram,
    /// Duration of forward passes, seconds.
    pub inference_seconds: Histogram,
    /// Images waiting for an inference thread.
    pub queue_depth: Gauge,
    /// Requests admitted and not yet answered.
    pub in_flight: Gauge,
    /// 1 for the version being served (label `version`).
    pub model_info: Family<Labels, Gauge>,
    /// Model loads by `outcome` (`ok`, `error`).
    pub reloads: Family<Labels, Counter>,
    /// 1 when the last reload attempt failed.
    pub last_reload_failed: Gauge,
    /// Flagged samples by `outcome`.
    pub flags: Family<Labels, Counter>,
    /// Requests refused for a missing or wrong bearer token, by `protocol` and `reason`.
    pub auth_refusals: Family<Labels, Counter>,
    /// Lines read again at further widths after a doubtful first reading (`--widths`).
    pub lines_reread: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics in their own registry (one per server, so tests can run several).
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("textrec");
        let requests = Family::<Labels, Counter>::default();
        registry.register(
            "requests",
            "Recognition requests by API and outcome",
            requests.clone(),
        );
        let request_seconds: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "Request latency by API",
            request_seconds.clone(),
        );
        let batch_size = Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]);
        registry.register("batch_size", "Images per forward pass", batch_size.clone());
        let inference_seconds = latency_histogram();
        registry.register(
            "inference_duration_seconds",
            "Forward pass duration",
            inference_seconds.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Images waiting for an inference thread",
            queue_depth.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "in_flight_requests",
            "Requests admitted and not yet answered",
            in_flight.clone(),
        );
        let model_info = Family::<Labels, Gauge>::default();
        registry.register(
            "model_info",
            "The model being served (value 1, label version)",
            model_info.clone(),
        );
        let reloads = Family::<Labels, Counter>::default();
        registry.register(
            "model_reloads",
            "Model load attempts by outcome",
            reloads.clone(),
        );
        let last_reload_failed = Gauge::default();
        registry.register(
            "model_last_reload_failed",
            "1 when the last model load failed",
            last_reload_failed.clone(),
        );
        let flags = Family::<Labels, Counter>::default();
        registry.register("flags", "Flagged samples by outcome", flags.clone());
        let auth_refusals = Family::<Labels, Counter>::default();
        registry.register(
            "auth_refusals",
            "Requests refused for a missing or wrong bearer token, by protocol and reason",
            auth_refusals.clone(),
        );
        let lines_reread = Counter::default();
        registry.register(
            "lines_reread",
            "Lines read again at further widths (serve --widths) after a doubtful first reading",
            lines_reread.clone(),
        );
        Self {
            registry,
            requests,
            request_seconds,
            batch_size,
            inference_seconds,
            queue_depth,
            in_flight,
            model_info,
            reloads,
            last_reload_failed,
            flags,
            auth_refusals,
            lines_reread,
        }
    }

    /// Record one finished request.
    pub fn observe_request(&self, api: &'static str, outcome: &'static str, elapsed: Duration) {
        self.requests
            .get_or_create(&vec![
                ("api", api.to_string()),
                ("outcome", outcome.to_string()),
            ])
            .inc();
        self.request_seconds
            .get_or_create(&vec![("api", api.to_string())])
            .observe(elapsed.as_secs_f64());
    }

    /// Record one forward pass.
    pub fn observe_batch(&self, size: usize, elapsed: Duration) {
        self.batch_size.observe(size as f64);
        self.inference_seconds.observe(elapsed.as_secs_f64());
    }

    /// Record lines read again at further widths.
    pub fn observe_rereads(&self, lines: usize) {
        self.lines_reread.inc_by(lines as u64);
    }

    /// Record a model load attempt; on success `version` becomes the served one.
    pub fn observe_reload(&self, ok: bool, version: Option<&str>) {
        let outcome = if ok { "ok" } else { "error" };
        self.reloads
            .get_or_create(&vec![("outcome", outcome.to_string())])
            .inc();
        self.last_reload_failed.set(i64::from(!ok));
        if let Some(v) = version {
            self.model_info.clear();
            self.model_info
                .get_or_create(&vec![("version", v.to_string())])
                .set(1);
        }
    }

    /// Record a flag.
    pub fn observe_flag(&self, outcome: &'static str) {
        self.flags
            .get_or_create(&vec![("outcome", outcome.to_string())])
            .inc();
    }

    /// Record a request refused by the bearer-token check (`protocol`: grpc or http; `reason`:
    /// missing or wrong).
    pub fn observe_auth_refusal(&self, protocol: &'static str, reason: &'static str) {
        self.auth_refusals
            .get_or_create(&vec![
                ("protocol", protocol.to_string()),
                ("reason", reason.to_string()),
            ])
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_with_labels() {
        let m = Metrics::new();
        m.observe_request("http", "ok", Duration::from_millis(3));
        m.observe_batch(4, Duration::from_millis(10));
        m.observe_reload(true, Some("abc"));
        m.observe_reload(false, None);
        let text = m.render();
        assert!(
            text.contains(r#"textrec_requests_total{api="http",outcome="ok"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"textrec_model_info{version="abc"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"textrec_model_reloads_total{outcome="error"} 1"#),
            "{text}"
        );
        assert!(text.contains("textrec_batch_size_count 1"), "{text}");
        assert!(
            text.contains("textrec_model_last_reload_failed 1"),
            "{text}"
        );
    }
}
