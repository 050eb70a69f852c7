//! Training through a storage outage: mid-run checkpoint and progress writes that hang or fail
//! must not stop training, must never leave progress naming a checkpoint that is not complete,
//! and must not lose metrics records; the final writes must still be made once the storage
//! answers.
//!
//! The trial runs in this process (not through the binary) so that its output store can be a
//! local folder behind [`OutageStore`], an `ObjectStore` that holds or refuses the writes a test
//! chooses and logs every write it answers. Runs share the process's torch RNG, so they take
//! turns ([`RUN_LOCK`]).

mod train_support;

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use textrec_contract::metrics::{MetricsRecord, RecordKind, TrialProgress, WorkerPhase};
use textrec_contract::{Store, TrainConfig};
use textrec_worker::train::checkpoint;
use textrec_worker::train::signals::StopFlag;
use textrec_worker::train::trainer::{self, Outcome, TrialContext};
use tokio::sync::watch;
use train_support::complete_checkpoints;

/// The store's URL: a remote scheme, as in production (the trainer never sees the folder).
const URL: &str = "s3://outage-test/";
const MAX_STEPS: u64 = 40;

/// What [`OutageStore`] does with one write.
enum Verdict {
    /// Write it.
    Store,
    /// Answer with an error at once.
    Refuse,
    /// Answer only after [`OutageStore::answer_again`], then write it.
    HoldUntilReleased,
}

/// Decides each write from its path and, for puts, its bytes.
type Outage = Box<dyn FnMut(&str, Option<&[u8]>) -> Verdict + Send>;

/// One write the store answered, in the order the answers were given.
#[derive(Debug, Clone)]
struct Logged {
    path: String,
    /// `None` for a delete.
    bytes: Option<Bytes>,
    stored: bool,
}

/// A local folder whose writes (puts, deletes, copies) go through an [`Outage`]; reads and
/// listings always answer.
struct OutageStore {
    inner: LocalFileSystem,
    outage: Mutex<Outage>,
    released: watch::Sender<bool>,
    log: Mutex<Vec<Logged>>,
}

impl OutageStore {
    fn new(dir: &Path, outage: Outage) -> Arc<Self> {
        Arc::new(Self {
            inner: LocalFileSystem::new_with_prefix(dir).unwrap(),
            outage: Mutex::new(outage),
            released: watch::channel(false).0,
            log: Mutex::new(Vec::new()),
        })
    }

    /// End an outage of held writes: they, and every write after them, are made.
    fn answer_again(&self) {
        self.released.send_replace(true);
    }

    fn log(&self) -> Vec<Logged> {
        self.log.lock().unwrap().clone()
    }

    /// Let `path` through, refuse it, or hold it, as the outage says.
    async fn gate(&self, path: &ObjPath, bytes: Option<&[u8]>) -> object_store::Result<()> {
        let verdict = (self.outage.lock().unwrap())(path.as_ref(), bytes);
        match verdict {
            Verdict::Store => Ok(()),
            Verdict::Refuse => {
                self.record(path, bytes.map(Bytes::copy_from_slice), false);
                Err(object_store::Error::Generic {
                    store: "OutageStore",
                    source: "the storage is unavailable (a test outage)".into(),
                })
            }
            Verdict::HoldUntilReleased => {
                let mut released = self.released.subscribe();
                let _ = released.wait_for(|r| *r).await;
                Ok(())
            }
        }
    }

    fn record(&self, path: &ObjPath, bytes: Option<Bytes>, stored: bool) {
        self.log.lock().unwrap().push(Logged {
            path: path.to_string(),
            bytes,
            stored,
        });
    }
}

impl fmt::Display for OutageStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OutageStore({})", self.inner)
    }
}

impl fmt::Debug for OutageStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

// `object_store` declares its trait with `async_trait`, which this crate has through tonic.
#[tonic::async_trait]
impl ObjectStore for OutageStore {
    async fn put_opts(
        &self,
        location: &ObjPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let bytes: Bytes = payload.clone().into();
        self.gate(location, Some(&bytes)).await?;
        let result = self.inner.put_opts(location, payload, opts).await;
        self.record(location, Some(bytes), result.is_ok());
        result
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.gate(location, None).await?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &ObjPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn delete(&self, location: &ObjPath) -> object_store::Result<()> {
        self.gate(location, None).await?;
        let result = self.inner.delete(location).await;
        self.record(location, None, result.is_ok());
        result
    }

    fn list(
        &self,
        prefix: Option<&ObjPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjPath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &ObjPath, to: &ObjPath) -> object_store::Result<()> {
        self.gate(to, None).await?;
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &ObjPath, to: &ObjPath) -> object_store::Result<()> {
        self.gate(to, None).await?;
        self.inner.copy_if_not_exists(from, to).await
    }
}

/// The step of the checkpoint folder `path` is in, if it is in one.
fn checkpoint_step(path: &str) -> Option<u64> {
    path.strip_prefix("checkpoints/step-")?
        .split('/')
        .next()?
        .parse()
        .ok()
}

/// Training runs take turns: they share libtorch's global RNG and thread pools.
static RUN_LOCK: Mutex<()> = Mutex::new(());

/// The test trial: the `tiny` example with a checkpoint every 5 steps (keeping `keep`), a log
/// record every 5 and evaluations at 20 and 40, on one thread.
fn config(keep: usize) -> TrainConfig {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/trial-tiny.yaml");
    let sets: Vec<String> = [
        format!("max_steps={MAX_STEPS}"),
        "threads=1".into(),
        "batch_size=8".into(),
        "eval_interval=20".into(),
        "log_interval=5".into(),
        "checkpoint.every_steps=5".into(),
        "checkpoint.every_seconds=0".into(),
        format!("checkpoint.keep={keep}"),
        "data.validation.samples=16".into(),
        "reading_widths=[1]".into(),
    ]
    .into();
    let cfg = TrainConfig::load(&example, &sets).unwrap();
    static THREADS: Once = Once::new();
    // libtorch fixes its thread pools on first use: once per process.
    THREADS.call_once(|| textrec_worker::device::set_threads(cfg.threads));
    cfg
}

/// What a run left: its outcome and everything it logged.
struct Ran {
    outcome: anyhow::Result<(Outcome, TrialProgress)>,
    log: String,
}

impl Ran {
    fn finished(&self) -> &TrialProgress {
        match &self.outcome {
            Ok((Outcome::Finished, p)) => p,
            Ok((other, _)) => panic!("ended {other:?}\n{}", self.log),
            Err(e) => panic!("failed: {e:#}\n{}", self.log),
        }
    }
}

/// Log lines as the trainer prints them, kept for the test to read while the trial runs.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Train the test trial into `store` (3 checkpoints kept), logging into `captured`.
fn train_into(store: Store, captured: &Captured) -> Ran {
    train_keeping(store, captured, 3)
}

/// [`train_into`] with `checkpoint.keep` = `keep`.
fn train_keeping(store: Store, captured: &Captured, keep: usize) -> Ran {
    let _turn = RUN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = config(keep);
    // As the worker builds it: the background writes need a thread of their own.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let ctx = TrialContext {
        store,
        rt,
        device: tch::Device::Cpu,
        stop: StopFlag::default(),
        stop_at_step: None,
        run: None,
        trial: None,
    };
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let outcome = tracing::subscriber::with_default(subscriber, || trainer::train(&cfg, &ctx));
    Ran {
        outcome,
        log: captured.text(),
    }
}

/// The sha256 of the model a healthy store gets, for comparison.
fn healthy_model_sha() -> &'static str {
    static SHA: OnceLock<String> = OnceLock::new();
    SHA.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        train_into(store, &Captured::default()).finished();
        model_sha(dir.path())
    })
}

/// The sha256 of the model folder's weights, after checking the folder reads as a model.
fn model_sha(out: &Path) -> String {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let model = rt
        .block_on(textrec_worker::model_source::fetch(
            out.join("model").to_str().unwrap(),
        ))
        .expect("the model folder is complete");
    textrec_contract::manifest::sha256_hex(&model.weights)
}

/// The newest complete checkpoint under `out`, read back and verified.
fn newest_checkpoint(out: &Path) -> u64 {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = Store::open(out.to_str().unwrap()).unwrap();
    rt.block_on(checkpoint::load_newest(&store))
        .unwrap()
        .expect("a complete checkpoint")
        .state
        .step
}

fn records(jsonl: &[u8]) -> Vec<MetricsRecord> {
    String::from_utf8_lossy(jsonl)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every log step and evaluation of the trial is in `jsonl`.
fn assert_all_records(jsonl: &[u8]) {
    let recs = records(jsonl);
    let steps = |kind| -> Vec<u64> {
        recs.iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.step)
            .collect()
    };
    let every_log_step: Vec<u64> = (1..=MAX_STEPS / 5).map(|i| i * 5).collect();
    assert_eq!(steps(RecordKind::Train), every_log_step);
    assert_eq!(steps(RecordKind::Eval), vec![20, MAX_STEPS]);
}

/// Replay the store's log: a stored `progress.json` only ever names a checkpoint whose
/// manifest was stored before it and not deleted since, a checkpoint folder is only deleted
/// after a newer checkpoint was stored completely (so the newest good one never is), and never
/// while the stored `progress.json` names it.
fn assert_progress_names_only_complete_checkpoints(log: &[Logged]) {
    let mut complete = std::collections::BTreeSet::new();
    let mut named = None;
    for w in log.iter().filter(|w| w.stored) {
        let step = checkpoint_step(&w.path);
        match (&w.bytes, step) {
            (Some(_), Some(s)) if w.path.ends_with("/manifest.json") => {
                complete.insert(s);
            }
            (None, Some(s)) => {
                assert_ne!(
                    named,
                    Some(s),
                    "{} deleted while progress.json names its checkpoint",
                    w.path
                );
                complete.remove(&s);
                let newest = complete.last().copied();
                assert!(
                    newest.is_some_and(|n| n > s),
                    "{} deleted while the newest complete checkpoint is {newest:?}",
                    w.path
                );
            }
            (Some(bytes), None) if w.path == "progress.json" => {
                let p: TrialProgress = serde_json::from_slice(bytes).unwrap();
                named = p.checkpoint.as_ref().map(|c| c.step);
                if let Some(c) = p.checkpoint {
                    assert!(
                        complete.contains(&c.step),
                        "progress.json of step {} names checkpoint {} while the complete ones are {complete:?}",
                        p.step,
                        c.step
                    );
                }
            }
            _ => {}
        }
    }
}

/// A store that stops answering writes at checkpoint 10 and answers again only once training
/// is over: the trial trains every step meanwhile, then writes everything it held back.
#[test]
fn training_continues_while_the_storage_hangs_and_the_final_writes_follow() {
    let expected = healthy_model_sha();
    let dir = tempfile::tempdir().unwrap();
    let mut down = false;
    let store = OutageStore::new(
        dir.path(),
        Box::new(move |path, _| {
            down |= checkpoint_step(path).is_some_and(|s| s >= 10);
            if down {
                Verdict::HoldUntilReleased
            } else {
                Verdict::Store
            }
        }),
    );
    let captured = Captured::default();
    let trial = {
        let (store, captured) = (store.clone(), captured.clone());
        std::thread::spawn(move || {
            train_into(Store::from_object_store(store, URL).unwrap(), &captured)
        })
    };
    // Training reports its last step while checkpoint 10 is still held.
    let deadline = Instant::now() + Duration::from_secs(60);
    let last_step = format!("step {MAX_STEPS}/{MAX_STEPS}:");
    let trained_through = loop {
        if captured.text().contains(&last_step) {
            break true;
        }
        if Instant::now() > deadline || trial.is_finished() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let during = complete_checkpoints(dir.path());
    let log_during = captured.text();
    store.answer_again();
    let ran = trial.join().unwrap();
    assert!(
        trained_through,
        "training did not reach step {MAX_STEPS} while the storage hung:\n{}",
        ran.log
    );
    assert!(
        during.len() == 1 && during[0] < 10,
        "checkpoint 10 was held, not written: {during:?}"
    );
    // The hang is reported long before the client would give up, once, with what is safe.
    let delayed: Vec<&str> = log_during
        .lines()
        .filter(|l| l.contains("is still being written after"))
        .collect();
    assert_eq!(delayed.len(), 1, "{log_during}");
    assert!(
        delayed[0].contains("WARN")
            && delayed[0].contains("training continues")
            && delayed[0].contains(&format!(
                "the last checkpoint safely stored is s3://outage-test/checkpoints/step-{:010}",
                during[0]
            )),
        "{}",
        delayed[0]
    );

    let p = ran.finished();
    assert_eq!((p.phase, p.step), (WorkerPhase::Succeeded, MAX_STEPS));
    assert_eq!(p.checkpoint.as_ref().map(|c| c.step), Some(MAX_STEPS));
    // The held checkpoint was written once the store answered, then the final one.
    let complete = complete_checkpoints(dir.path());
    assert!(
        complete.len() == 3 && complete[0] == during[0] && (10..15).contains(&complete[1]),
        "{complete:?}"
    );
    assert_eq!(complete[2], MAX_STEPS);
    assert_eq!(newest_checkpoint(dir.path()), MAX_STEPS);
    assert_eq!(
        model_sha(dir.path()),
        expected,
        "the outage changed the training"
    );
    assert_all_records(&std::fs::read(dir.path().join("metrics.jsonl")).unwrap());
    assert_progress_names_only_complete_checkpoints(&store.log());
}

/// A store that refuses the manifests of the checkpoints from step 15 to 24 (their folders
/// stay incomplete) and the first progress write after the step-20 evaluation: warnings say
/// what was not stored and what is safe, progress keeps naming the checkpoint before the
/// outage until a newer one is complete, pruning keeps it, and the evaluation's record is
/// stored by a later write.
#[test]
fn failed_mid_run_writes_are_warnings_and_progress_keeps_the_last_good_checkpoint() {
    let expected = healthy_model_sha();
    let dir = tempfile::tempdir().unwrap();
    let mut eval_write_refused = false;
    let store = OutageStore::new(
        dir.path(),
        Box::new(move |path, bytes| {
            let refused_checkpoint = checkpoint_step(path)
                .is_some_and(|s| (15..25).contains(&s) && path.ends_with("/manifest.json"));
            let first_eval_metrics = path == "metrics.jsonl"
                && !eval_write_refused
                && bytes.is_some_and(|b| String::from_utf8_lossy(b).contains(r#""kind":"eval""#));
            if first_eval_metrics {
                eval_write_refused = true;
            }
            if refused_checkpoint || first_eval_metrics {
                Verdict::Refuse
            } else {
                Verdict::Store
            }
        }),
    );
    let ran = train_into(
        Store::from_object_store(store.clone(), URL).unwrap(),
        &Captured::default(),
    );
    let p = ran.finished();
    assert_eq!(p.checkpoint.as_ref().map(|c| c.step), Some(MAX_STEPS));
    let log = store.log();
    // A checkpoint that comes due while the previous one is still being written is taken a
    // step or two later, so the steps are read from the store's log.
    let refused_at = log
        .iter()
        .position(|w| !w.stored && checkpoint_step(&w.path).is_some())
        .expect("a checkpoint write was refused");
    let refused = checkpoint_step(&log[refused_at].path).unwrap();
    let last_good = log[..refused_at]
        .iter()
        .filter(|w| w.stored && w.path.ends_with("/manifest.json"))
        .filter_map(|w| checkpoint_step(&w.path))
        .max()
        .expect("a checkpoint before the outage");

    // The failures were warnings that say what is missing, why, and what is safe.
    let warning = ran
        .log
        .lines()
        .find(|l| l.contains(&format!("checkpoint of step {refused} was NOT stored")))
        .unwrap_or_else(|| panic!("no warning for checkpoint {refused}:\n{}", ran.log));
    for says in [
        "WARN".to_string(),
        format!("s3://outage-test/checkpoints/step-{refused:010}/manifest.json"),
        "a test outage".into(),
        "training continues".into(),
        format!(
            "the last checkpoint safely stored is s3://outage-test/checkpoints/step-{last_good:010} (step {last_good})"
        ),
    ] {
        assert!(warning.contains(&says), "{says:?} missing from: {warning}");
    }
    let warning = ran
        .log
        .lines()
        .find(|l| l.contains("(progress.json, metrics.jsonl) was NOT stored"))
        .unwrap_or_else(|| panic!("no warning for the refused progress:\n{}", ran.log));
    assert!(
        warning.contains("s3://outage-test/metrics.jsonl")
            && warning.contains("training continues"),
        "{warning}"
    );

    // Progress written during the outage names checkpoint 10, never a refused one.
    assert_progress_names_only_complete_checkpoints(&log);
    let progress_during: Vec<TrialProgress> = log
        .iter()
        .filter(|w| w.stored && w.path == "progress.json")
        .map(|w| serde_json::from_slice(w.bytes.as_ref().unwrap()).unwrap())
        .filter(|p: &TrialProgress| (15..25).contains(&p.step))
        .collect();
    assert!(
        !progress_during.is_empty(),
        "no progress stored during the outage"
    );
    for p in &progress_during {
        assert_eq!(
            p.checkpoint.as_ref().map(|c| c.step),
            Some(last_good),
            "{p:?}"
        );
    }
    // The evaluation's record, refused once, was stored mid-run by a later write.
    assert!(
        log.iter().any(|w| {
            w.stored
                && w.path == "metrics.jsonl"
                && records(w.bytes.as_ref().unwrap())
                    .iter()
                    .any(|r| r.kind == RecordKind::Eval && r.step == 20)
                && records(w.bytes.as_ref().unwrap())
                    .iter()
                    .all(|r| r.step < MAX_STEPS)
        }),
        "the step-20 evaluation was not stored before the end"
    );

    // The incomplete folders were pruned once newer checkpoints were complete; the trial
    // finished with everything in place.
    let left: Vec<u64> = log
        .iter()
        .filter(|w| w.stored && w.bytes.is_some())
        .filter_map(|w| checkpoint_step(&w.path))
        .filter(|s| (15..25).contains(s))
        .collect();
    assert!(!left.is_empty(), "the refused checkpoints wrote no files");
    for s in left {
        let folder = dir.path().join(format!("checkpoints/step-{s:010}"));
        assert!(
            !folder.join(checkpoint::WEIGHTS).exists(),
            "incomplete checkpoint {s} was not pruned"
        );
    }
    assert_eq!(complete_checkpoints(dir.path()), vec![30, 35, MAX_STEPS]);
    assert_eq!(newest_checkpoint(dir.path()), MAX_STEPS);
    assert_eq!(
        model_sha(dir.path()),
        expected,
        "the failures changed the training"
    );
    assert_all_records(&std::fs::read(dir.path().join("metrics.jsonl")).unwrap());
}

/// With `checkpoint.keep` = 1 on a healthy store, no checkpoint is deleted while
/// `progress.json` still names it (pruning waits for progress to name the newer one), and the
/// trial ends with the final checkpoint alone, named by progress.
#[test]
fn keeping_one_checkpoint_never_leaves_progress_naming_a_deleted_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = OutageStore::new(dir.path(), Box::new(|_, _| Verdict::Store));
    let captured = Captured::default();
    let ran = train_keeping(
        Store::from_object_store(store.clone(), URL).unwrap(),
        &captured,
        1,
    );
    let p = ran.finished();
    assert_eq!(p.checkpoint.as_ref().map(|c| c.step), Some(MAX_STEPS));
    let log = store.log();
    let deletes = log
        .iter()
        .filter(|w| w.stored && w.bytes.is_none() && checkpoint_step(&w.path).is_some())
        .count();
    assert!(deletes > 0, "nothing was pruned");
    assert_progress_names_only_complete_checkpoints(&log);
    assert_eq!(complete_checkpoints(dir.path()), vec![MAX_STEPS]);
}
