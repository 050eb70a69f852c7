//! The dashboard served as the operator serves it: objects from watch caches of a fake API
//! server (over HTTP, with watches), curves from the quickstart's `metrics.jsonl` fixtures.

mod support {
    pub mod fake_api;
    pub mod ui_fixtures;
}

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::Client;
use serde_json::{json, Value};
use support::fake_api::{serve_http, FakeState};
use support::ui_fixtures as fx;
use textrec_operator::ui::{self, data::ClusterObjects};

const NS: &str = "ml";

fn path(kind: &str, ns: &str, name: &str) -> String {
    format!("/apis/textrec.dev/v1alpha1/namespaces/{ns}/{kind}/{name}")
}

/// Serve the dashboard over a fake API holding `objects`; returns its base URL.
async fn dashboard(objects: Vec<(String, Value)>) -> String {
    let state = Arc::new(Mutex::new(FakeState {
        watchable: true,
        ..Default::default()
    }));
    {
        let mut st = state.lock().unwrap();
        for (p, v) in objects {
            st.objects.insert(p, v);
        }
    }
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_url = format!("http://{}", api.local_addr().unwrap());
    tokio::spawn(serve_http(state, api));
    let client = Client::try_from(kube::Config::new(api_url.parse().unwrap())).unwrap();
    let (objects, watch) = ClusterObjects::watch(&client, None, Default::default());
    tokio::spawn(watch);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = ui::router(ui::Ui::new(Arc::new(objects)));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    let code = r.status().as_u16();
    (code, r.text().await.unwrap())
}

/// GET `url` until its body contains `needle` (the watch caches fill asynchronously).
async fn get_until(url: &str, needle: &str) -> String {
    let start = Instant::now();
    loop {
        let (_, body) = get(url).await;
        if body.contains(needle) {
            return body;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{url} never showed {needle:?}:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `points` of the polyline of `trial` in the chart `id`.
fn polyline(page: &str, id: &str, trial: &str) -> (fx::Frame, Vec<(f64, f64)>) {
    let start = page
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("chart {id}"));
    let svg_open = page[..start].rfind("<svg").unwrap();
    let end = start + page[start..].find("</svg>").unwrap();
    let svg = &page[svg_open..end];
    let tag_end = svg.find('>').unwrap();
    let tag = &svg[..tag_end];
    let frame = fx::Frame::from_attrs(|k| {
        let key = format!("data-{k}=\"");
        let s = tag.find(&key).unwrap_or_else(|| panic!("{key} in {tag}")) + key.len();
        tag[s..s + tag[s..].find('"').unwrap()].to_string()
    });
    let g = svg
        .find(&format!("data-trial=\"{trial}\""))
        .unwrap_or_else(|| panic!("{trial} in chart {id}"));
    let p = g + svg[g..].find("points=\"").unwrap() + 8;
    let points = fx::parse_points(&svg[p..p + svg[p..].find('"').unwrap()]);
    (frame, points)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_pages_show_runs_curves_trials_and_deployment_history() {
    let mut other = fx::run("team-b");
    other["metadata"]["name"] = json!("other-run");
    other["metadata"]["labels"] = json!({"textrec.dev/model": "<b>other</b>", "team": "b"});
    other["status"] = json!({"phase": "Running", "counts": {"total": 4, "running": 2, "succeeded": 1, "failed": 0, "pending": 1},
        "initFrom": {"url": "s3://m/reader-r2/", "sha256": "ab12".repeat(16), "source": "ModelDeployment <reader> (revision 2)"}});
    let base = dashboard(vec![
        (path("trainingruns", NS, "quickstart"), fx::run(NS)),
        (path("trainingruns", "team-b", "other-run"), other),
        (
            path("modeldeployments", NS, "quickstart"),
            fx::deployment(NS),
        ),
        (
            path("modeldeployments", NS, "ocr-auto"),
            fx::busy_deployment(NS),
        ),
    ])
    .await;

    // The list: both runs, newest first, with phase, trials, best model; labels escaped.
    // Runs and deployments come from separate watch caches: wait until both have synced.
    get_until(&format!("{base}/ui"), "/ui/deployments/ml/ocr-auto").await;
    let list = get_until(&format!("{base}/ui"), "other-run").await;
    assert!(list.contains("href=\"/ui/runs/ml/quickstart\""), "{list}");
    assert!(list.contains("<span class=\"badge Succeeded\">Succeeded</span>"));
    assert!(list.contains(">2/2<"), "done/total");
    assert!(list.contains(">1/4<"), "done/total of the running run");
    assert!(list.contains("cer 0.0912"), "best metric");
    assert!(list.contains("ace2123f6ff2"), "short sha256");
    assert!(list.contains("quickstart-t1/model"), "best model URL");
    assert!(list.contains("&lt;b&gt;other&lt;/b&gt;"), "label escaped");
    assert!(!list.contains("<b>other</b>"), "label not escaped");
    assert!(list.contains("href=\"/ui/deployments/ml/ocr-auto\""));

    // Filters.
    let (_, by_ns) = get(&format!("{base}/ui?namespace=team-b")).await;
    assert!(by_ns.contains("other-run") && !by_ns.contains("/ui/runs/ml/quickstart"));
    let (_, by_label) = get(&format!("{base}/ui?selector=team%3Db")).await;
    assert!(by_label.contains("other-run") && !by_label.contains("/ui/runs/ml/quickstart"));
    let (_, by_set) = get(&format!(
        "{base}/ui?selector=textrec.dev%2Fmodel+in+%28quickstart%29"
    ))
    .await;
    assert!(
        !by_set.contains("/ui/runs/team-b/other-run") && by_set.contains("/ui/runs/ml/quickstart")
    );
    let (_, bad) = get(&format!("{base}/ui?selector=%3Cx%3E%3D%3D")).await;
    assert!(
        bad.contains("class=\"error\"") && bad.contains("&lt;x&gt;"),
        "{bad}"
    );

    // The run: four charts with both trials, points from metrics.jsonl.
    let (code, run) = get(&format!("{base}/ui/runs/ml/quickstart")).await;
    assert_eq!(code, 200);
    for id in ["cer-step", "loss-step", "cer-time", "loss-time"] {
        assert!(run.contains(&format!("id=\"{id}\"")), "chart {id}");
    }
    let origin = ["quickstart-t0", "quickstart-t1"]
        .iter()
        .flat_map(|t| {
            let (c, l) = fx::curves(t);
            [c[0].1, l[0].1]
        })
        .fold(f64::INFINITY, f64::min);
    for trial in ["quickstart-t0", "quickstart-t1"] {
        let (cer, loss) = fx::curves(trial);
        let (f, drawn) = polyline(&run, "cer-step", trial);
        let want: Vec<_> = cer.iter().map(|s| (s.0, s.2)).collect();
        fx::assert_points(&format!("{trial} cer-step"), &f, &drawn, &want);
        let (f, drawn) = polyline(&run, "loss-time", trial);
        let want: Vec<_> = loss.iter().map(|s| (s.1 - origin, s.2)).collect();
        fx::assert_points(&format!("{trial} loss-time"), &f, &drawn, &want);
    }
    // Trials sorted by the objective (t1 is best), searched values as columns.
    let t1 = run.find("<tr data-trial=\"quickstart-t1\"").unwrap();
    let t0 = run.find("<tr data-trial=\"quickstart-t0\"").unwrap();
    assert!(t1 < t0, "best trial first");
    assert!(run.contains(">optimizer.lr"), "param column");
    assert!(run.contains(">0.004<") && run.contains(">0.003<"));
    assert!(run.contains("0 restarts and 0 preemptions"));
    // Sorting by a column, and log scale.
    let (_, by_lr) = get(&format!("{base}/ui/runs/ml/quickstart?sort=optimizer.lr")).await;
    assert!(
        by_lr.find("<tr data-trial=\"quickstart-t0\"").unwrap()
            < by_lr.find("<tr data-trial=\"quickstart-t1\"").unwrap()
    );
    let (_, log) = get(&format!("{base}/ui/runs/ml/quickstart?log=1")).await;
    assert!(log.contains("data-log=\"1\""));
    let (f, drawn) = polyline(&log, "cer-step", "quickstart-t0");
    let want: Vec<_> = fx::curves("quickstart-t0")
        .0
        .iter()
        .map(|s| (s.0, s.2))
        .collect();
    fx::assert_points("log cer-step", &f, &drawn, &want);

    // The deployments.
    let (_, dep) = get(&format!("{base}/ui/deployments/ml/quickstart")).await;
    assert!(dep.contains("ace2123f6ff26847c6bd25b5997e8d6492a645517a33a24bb837f08bd071cb81"));
    assert!(
        dep.contains("data-revision=\"1\" class=\"current\""),
        "{dep}"
    );
    assert!(
        dep.contains("href=\"http://quickstart.ml.svc:8080/\""),
        "demo link"
    );
    assert!(
        dep.contains("kubectl -n ml port-forward svc/quickstart 8080:8080"),
        "demo hint"
    );
    let (_, busy) = get(&format!("{base}/ui/deployments/ml/ocr-auto")).await;
    for what in ["promoted", "rolled-back", "refused", "deployed"] {
        assert!(busy.contains(&format!("badge {what}")), "{what}");
    }
    assert!(busy.contains("rollback to revision 1"));
    assert!(busy.contains("does not beat the deployed 0.0912 by at least 0.01"));
    let r3 = busy.find("data-revision=\"3\"").unwrap();
    let r1 = busy.find("data-revision=\"1\"").unwrap();
    assert!(r3 < r1, "newest first");

    // A fine-tune shows the parent its trials started from.
    let (code, tuned) = get(&format!("{base}/ui/runs/team-b/other-run")).await;
    assert_eq!(code, 200);
    assert!(tuned.contains("Fine-tuned from"), "{tuned}");
    assert!(tuned.contains("ModelDeployment &lt;reader&gt; (revision 2)"));
    assert!(tuned.contains("s3://m/reader-r2/") && tuned.contains(&"ab12".repeat(16)));

    let (code, missing) = get(&format!("{base}/ui/runs/ml/%3Cscript%3E")).await;
    assert_eq!(code, 404);
    assert!(missing.contains("&lt;script&gt;") && !missing.contains("<script>"));
}
