//! Each reconcile's tracing span.

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use textrec_operator::controller::{self};
use textrec_operator::crd::TrainingRun;

use crate::harness::*;

/// A log sink the test can read.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs [`reconcile_spans_alone`] in a process of its own: tracing's callsite interest is
/// global, and reconciles on other test threads (no subscriber) race with this test's
/// thread-local subscriber.
#[test]
fn each_reconcile_runs_in_a_span_naming_the_object_its_generation_and_a_trace_id() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "reconcile_spans::reconcile_spans_alone",
            "--exact",
            "--ignored",
            "--test-threads=1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
}

#[tokio::test]
#[ignore = "run in its own process by each_reconcile_runs_in_a_span_naming_the_object_its_generation_and_a_trace_id"]
async fn reconcile_spans_alone() {
    let logs = LogBuffer::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(move || sink.clone())
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // Other tests, on other threads and without a subscriber, may have registered the
    // reconcilers' callsites first; make them ask this thread's subscriber again.
    tracing::callsite::rebuild_interest_cache();

    let run = run_json("ocr", json!({}));
    let h = harness(&run);
    let tr: TrainingRun = serde_json::from_value(run).unwrap();
    controller::training_run::reconcile(Arc::new(tr.clone()), h.ctx.clone())
        .await
        .unwrap();
    controller::training_run::reconcile(Arc::new(tr), h.ctx.clone())
        .await
        .unwrap();
    let md = md_json(json!({}));
    let mh = md_harness(&md);
    reconcile_md(&mh, md).await;

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let spans: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["span"]["name"] == "reconcile")
        .map(|v| v["span"].clone())
        .collect();
    assert_eq!(spans.len(), 3, "{text}");
    for (s, controller, name) in [
        (&spans[0], "trainingrun", "ocr"),
        (&spans[2], "modeldeployment", "reader"),
    ] {
        assert_eq!(s["controller"], controller, "{s}");
        assert_eq!(
            (s["namespace"].as_str(), s["object"].as_str()),
            (Some("ml"), Some(name))
        );
        assert_eq!(s["generation"], 1);
        assert_eq!(s["trace_id"].as_str().unwrap().len(), 16, "{s}");
    }
    assert_ne!(
        spans[0]["trace_id"], spans[1]["trace_id"],
        "one id per reconcile"
    );
}
