//! The dynamic batcher: a bounded queue in front of dedicated inference threads.
//!
//! Requests are decoded on the async side, then queued here; an inference thread takes the
//! first waiting request and gathers more, up to `max_batch` or `max_wait`, into one forward
//! pass. It waits only while more requests are on their way (admitted and being decoded, or
//! expected back from the previous batch), so a lone request is never delayed by the window.
//! Forward passes never run on the async runtime's threads. An idle thread is woken
//! last-idle-first (see [`super::handoff`]), so a light load stays on one cache-warm thread.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use textrec_model::batching::{plan_batches, BatchLimits};
use textrec_model::widths::PreparedLine;
use textrec_model::Prediction;
use tokio::sync::oneshot;

use super::engine::Engine;
use super::handoff::{HandoffQueue, Popped, PushError};
use super::limits::ServeError;
use super::metrics::Metrics;

/// Batching settings.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Most images per forward pass (1: no batching).
    pub max_batch: usize,
    /// Longest the first request of a batch waits for company.
    pub max_wait: Duration,
    /// Queue capacity; a full queue sheds load.
    pub queue_capacity: usize,
    /// Inference threads.
    pub threads: usize,
    /// Most padded columns per forward pass (see [`BatchLimits`]); `None`: the model's own.
    pub max_columns: Option<usize>,
}

/// What the batcher answers for one image.
#[derive(Debug, Clone)]
pub struct BatchOutput {
    /// The model's prediction.
    pub prediction: Prediction,
    /// Version of the model that produced it.
    pub model_version: String,
    /// Time spent queued.
    pub queue: Duration,
    /// Duration of the forward pass.
    pub inference: Duration,
    /// Images in that forward pass.
    pub batch_size: usize,
}

/// Counts requests admitted but not yet taken into a forward pass: the batcher waits for
/// company only while this exceeds what it already holds.
#[derive(Debug, Default)]
pub struct Pending(AtomicUsize);

/// One admitted request's share of [`Pending`]; released on drop.
#[derive(Debug)]
pub struct PendingGuard(Arc<Pending>);

impl Pending {
    /// Count one more request until the guard drops.
    pub fn enter(self: &Arc<Self>) -> PendingGuard {
        self.0.fetch_add(1, Ordering::SeqCst);
        PendingGuard(self.clone())
    }
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One queued image.
pub struct Job {
    /// The model the request was admitted under: in-flight requests finish on it even when a
    /// newer model is swapped in meanwhile.
    pub engine: Arc<dyn Engine>,
    /// The prepared line (at every width the model reads).
    pub image: PreparedLine,
    /// When the caller stops waiting.
    pub deadline: Instant,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<BatchOutput, ServeError>>,
    /// This request's place in [`Pending`].
    pub pending: Option<PendingGuard>,
    enqueued: Instant,
}

impl Job {
    /// A job; `pending` is released when its forward pass starts.
    pub fn new(
        engine: Arc<dyn Engine>,
        image: PreparedLine,
        deadline: Instant,
        pending: PendingGuard,
    ) -> (Self, oneshot::Receiver<Result<BatchOutput, ServeError>>) {
        let (reply, rx) = oneshot::channel();
        let job = Self {
            engine,
            image,
            deadline,
            reply,
            pending: Some(pending),
            enqueued: Instant::now(),
        };
        (job, rx)
    }
}

/// The queue and its inference threads.
pub struct Batcher {
    queue: Arc<HandoffQueue<Job>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    pending: Arc<Pending>,
    metrics: Arc<Metrics>,
}

impl Batcher {
    /// Start `cfg.threads` inference threads.
    pub fn start(cfg: BatchConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        let workers = cfg.threads.max(1);
        let queue = Arc::new(HandoffQueue::new(cfg.queue_capacity, workers));
        let pending = Arc::new(Pending::default());
        let mut threads = Vec::new();
        for worker in 0..workers {
            let queue = queue.clone();
            let pending = pending.clone();
            let metrics = metrics.clone();
            let handle = std::thread::Builder::new()
                .name(format!("textrec-infer-{worker}"))
                .spawn(move || inference_loop(cfg, worker, &queue, &pending, &metrics))
                .expect("cannot start an inference thread");
            threads.push(handle);
        }
        Arc::new(Self {
            queue,
            threads: Mutex::new(threads),
            pending,
            metrics,
        })
    }

    /// The pending-request counter requests register with on admission.
    pub fn pending(&self) -> &Arc<Pending> {
        &self.pending
    }

    /// Images waiting in the queue.
    pub fn depth(&self) -> usize {
        self.queue.len()
    }

    /// Queue a job without blocking: a full queue or a closed batcher is an error at once.
    pub fn submit(&self, job: Job) -> Result<(), ServeError> {
        match self.queue.try_push(job) {
            Ok(()) => {
                self.metrics.queue_depth.set(self.queue.len() as i64);
                Ok(())
            }
            Err(PushError::Full(_)) => Err(ServeError::Overloaded(
                "the inference queue is full; retry with backoff".into(),
            )),
            Err(PushError::Closed(_)) => Err(ServeError::Unavailable(
                "the server is shutting down".into(),
            )),
        }
    }

    /// Stop taking jobs, let the threads finish what is queued, and wait for them.
    pub fn close(&self) {
        self.queue.close();
        let threads: Vec<_> =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

fn inference_loop(
    cfg: BatchConfig,
    worker: usize,
    queue: &HandoffQueue<Job>,
    pending: &Pending,
    metrics: &Metrics,
) {
    // Requests seen when the previous batch started. Closed-loop callers answered by that batch
    // come back within moments, before they are admitted and counted in `pending`; expecting
    // them keeps batches full under steady load instead of alternating small and large ones.
    // At concurrency 1 it stays 1, so a lone caller never waits.
    let mut expected = 1usize;
    // pop fails only once the queue is closed and empty: the drain on shutdown.
    while let Some(first) = queue.pop(worker) {
        let mut batch = vec![first];
        let until = Instant::now() + cfg.max_wait;
        while batch.len() < cfg.max_batch {
            if let Some(job) = queue.try_pop() {
                batch.push(job);
                continue;
            }
            // Nobody else admitted or expected: waiting would only add latency.
            if batch.len() >= pending.get().max(expected) {
                break;
            }
            let now = Instant::now();
            if now >= until {
                break;
            }
            // Short slices, so a request that fails decoding (and leaves `pending`) stops the wait.
            match queue.pop_until(worker, until.min(now + Duration::from_micros(500))) {
                Popped::Job(job) => batch.push(job),
                Popped::TimedOut => {}
                Popped::Closed => break,
            }
        }
        expected = pending.get().max(batch.len()).min(cfg.max_batch);
        metrics.queue_depth.set(queue.len() as i64);
        run_batch(batch, &cfg, metrics);
    }
}

fn run_batch(jobs: Vec<Job>, cfg: &BatchConfig, metrics: &Metrics) {
    let start = Instant::now();
    let mut live = Vec::with_capacity(jobs.len());
    for mut job in jobs {
        job.pending.take();
        if job.reply.is_closed() {
            // The caller is gone (deadline or disconnect): do not spend a forward pass on it.
            continue;
        }
        if start >= job.deadline {
            let waited = start.duration_since(job.enqueued).as_millis();
            let _ = job.reply.send(Err(ServeError::DeadlineExceeded(format!(
                "deadline passed after {waited} ms in the queue"
            ))));
            continue;
        }
        live.push(job);
    }
    // A hot reload can leave jobs for two models in one gathering; each model gets its own pass.
    while !live.is_empty() {
        let engine = live[0].engine.clone();
        let (group, rest): (Vec<Job>, Vec<Job>) = live
            .into_iter()
            .partition(|j| Arc::ptr_eq(&j.engine, &engine));
        live = rest;
        // Sorted by width and cut by cost and the column budget: one pass per run of similar
        // widths.
        let model_limits = engine.batch_limits();
        let limits = BatchLimits {
            max_images: cfg.max_batch,
            max_columns: cfg.max_columns.unwrap_or(model_limits.max_columns),
            pass_cost_columns: model_limits.pass_cost_columns,
        };
        let widths: Vec<u32> = group.iter().map(|j| j.image.first().width).collect();
        let mut passes = plan_batches(&widths, limits);
        // The passes run one after another, so their order decides who waits for the others:
        // the pass holding the longest-waiting request goes first, which bounds the worst wait
        // (narrowest-first would keep wide lines waiting behind every narrower one).
        passes.sort_by_key(|pass| pass.iter().map(|&i| group[i].enqueued).min());
        let mut slots: Vec<Option<Job>> = group.into_iter().map(Some).collect();
        for pass in passes {
            let jobs = pass
                .iter()
                .map(|&i| slots[i].take().expect("each job is in one pass"))
                .collect();
            run_pass(&engine, jobs, metrics);
        }
    }
}

fn run_pass(engine: &Arc<dyn Engine>, group: Vec<Job>, metrics: &Metrics) {
    let n = group.len();
    let mut images = Vec::with_capacity(n);
    let mut replies = Vec::with_capacity(n);
    for job in group {
        images.push(job.image);
        replies.push((job.reply, job.enqueued));
    }
    let t0 = Instant::now();
    // A panic inside libtorch must fail these requests, not kill the inference thread.
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.recognize(&images)));
    let inference = t0.elapsed();
    metrics.observe_batch(n, inference);
    let outcome: Result<Vec<Prediction>, String> = match result {
        Ok(Ok(r)) if r.predictions.len() == n => {
            metrics.observe_rereads(r.reread);
            Ok(r.predictions)
        }
        Ok(Ok(r)) => Err(format!(
            "model returned {} predictions for {n} images",
            r.predictions.len()
        )),
        Ok(Err(e)) => Err(format!("inference failed: {e:#}")),
        Err(_) => Err("inference panicked".to_string()),
    };
    match outcome {
        Ok(predictions) => {
            for ((reply, enqueued), prediction) in replies.into_iter().zip(predictions) {
                let _ = reply.send(Ok(BatchOutput {
                    prediction,
                    model_version: engine.version().to_string(),
                    queue: t0.saturating_duration_since(enqueued),
                    inference,
                    batch_size: n,
                }));
            }
        }
        Err(msg) => {
            tracing::error!(batch = n, "{msg}");
            for (reply, _) in replies {
                let _ = reply.send(Err(ServeError::Internal(msg.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::engine::fake::FakeEngine;
    use super::*;
    use textrec_model::preprocess::PreparedImage;

    fn image() -> PreparedLine {
        PreparedLine::single(PreparedImage {
            data: vec![0.0; 8],
            height: 1,
            width: 8,
        })
    }

    fn batcher(max_batch: usize, max_wait_ms: u64, cap: usize) -> Arc<Batcher> {
        batcher_with_columns(max_batch, max_wait_ms, cap, None)
    }

    fn batcher_with_columns(
        max_batch: usize,
        max_wait_ms: u64,
        cap: usize,
        max_columns: Option<usize>,
    ) -> Arc<Batcher> {
        let cfg = BatchConfig {
            max_batch,
            max_wait: Duration::from_millis(max_wait_ms),
            queue_capacity: cap,
            threads: 1,
            max_columns,
        };
        Batcher::start(cfg, Arc::new(Metrics::new()))
    }

    /// Admit one line per width (all at once, so the batcher gathers them together), then queue
    /// them in order, a millisecond apart so that their arrival order is unambiguous.
    fn submit_lines(
        b: &Batcher,
        engine: &Arc<FakeEngine>,
        widths: &[u32],
    ) -> Vec<oneshot::Receiver<Result<BatchOutput, ServeError>>> {
        let guards: Vec<_> = widths.iter().map(|_| b.pending().enter()).collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut rxs = Vec::new();
        for (g, &w) in guards.into_iter().zip(widths) {
            let image = PreparedLine::single(PreparedImage {
                data: vec![0.0; w as usize],
                height: 1,
                width: w,
            });
            let (job, rx) = Job::new(engine.clone(), image, deadline, g);
            b.submit(job).unwrap();
            rxs.push(rx);
            std::thread::sleep(Duration::from_millis(1));
        }
        rxs
    }

    #[tokio::test]
    async fn a_gathering_splits_by_width_and_answers_each_caller_its_own() {
        let mut fake = FakeEngine::new("v1", "", Duration::from_millis(5));
        fake.echo_width = true;
        let engine = Arc::new(fake);
        let b = batcher_with_columns(8, 200, 64, Some(100));
        let widths = [10u32, 90, 12, 95, 11];
        let rxs = submit_lines(&b, &engine, &widths);
        for (rx, w) in rxs.into_iter().zip(widths) {
            let out = rx.await.unwrap().unwrap();
            assert_eq!(out.prediction.text, w.to_string());
            // 10, 11 and 12 fit 100 columns together; 90 and 95 cannot share a pass.
            assert_eq!(out.batch_size, if w < 50 { 3 } else { 1 }, "width {w}");
        }
        assert_eq!(*engine.batches.lock().unwrap(), vec![3, 1, 1]);
        b.close();
    }

    #[tokio::test]
    async fn the_pass_with_the_longest_waiting_request_runs_first() {
        let mut fake = FakeEngine::new("v1", "", Duration::from_millis(5));
        fake.echo_width = true;
        let engine = Arc::new(fake);
        let b = batcher_with_columns(8, 200, 64, Some(100));
        // The wide line arrives first; three narrow ones after it share the other pass.
        let rxs = submit_lines(&b, &engine, &[90, 10, 12, 11]);
        for rx in rxs {
            rx.await.unwrap().unwrap();
        }
        // Narrowest-first would have run [3, 1].
        assert_eq!(*engine.batches.lock().unwrap(), vec![1, 3]);
        b.close();
    }

    #[tokio::test]
    async fn concurrent_requests_share_a_forward_pass() {
        let engine = Arc::new(FakeEngine::new("v1", "hi", Duration::from_millis(30)));
        let b = batcher(8, 50, 64);
        // All eight are admitted before any is queued, as concurrent requests would be.
        let guards: Vec<_> = (0..8).map(|_| b.pending().enter()).collect();
        let mut rxs = Vec::new();
        for g in guards {
            let deadline = Instant::now() + Duration::from_secs(5);
            let (job, rx) = Job::new(engine.clone(), image(), deadline, g);
            b.submit(job).unwrap();
            rxs.push(rx);
        }
        for rx in rxs {
            let out = rx.await.unwrap().unwrap();
            assert_eq!(out.prediction.text, "hi");
            assert_eq!(out.model_version, "v1");
        }
        let sizes = engine.batches.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 8);
        assert!(sizes.len() <= 2, "expected batching, got batches {sizes:?}");
        b.close();
    }

    #[tokio::test]
    async fn a_lone_request_does_not_wait_for_the_window() {
        let engine = Arc::new(FakeEngine::new("v1", "x", Duration::ZERO));
        let b = batcher(8, 2_000, 4);
        let t = Instant::now();
        let (job, rx) = Job::new(
            engine.clone(),
            image(),
            Instant::now() + Duration::from_secs(5),
            b.pending().enter(),
        );
        b.submit(job).unwrap();
        rx.await.unwrap().unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "waited {:?}",
            t.elapsed()
        );
        b.close();
    }

    #[tokio::test]
    async fn max_batch_one_runs_images_alone_and_full_queue_sheds() {
        let engine = Arc::new(FakeEngine::new("v1", "x", Duration::from_millis(100)));
        let b = batcher(1, 10, 2);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut rxs = Vec::new();
        let mut shed = 0;
        for _ in 0..6 {
            let (job, rx) = Job::new(engine.clone(), image(), deadline, b.pending().enter());
            match b.submit(job) {
                Ok(()) => rxs.push(rx),
                Err(ServeError::Overloaded(_)) => shed += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(
            shed >= 3,
            "a queue of 2 behind a busy thread must shed, shed {shed}"
        );
        for rx in rxs {
            rx.await.unwrap().unwrap();
        }
        assert!(engine.batches.lock().unwrap().iter().all(|&n| n == 1));
        b.close();
    }

    #[tokio::test]
    async fn expired_jobs_are_answered_deadline_exceeded_without_a_forward_pass() {
        let engine = Arc::new(FakeEngine::new("v1", "x", Duration::from_millis(150)));
        let b = batcher(1, 0, 8);
        let long = Instant::now() + Duration::from_secs(5);
        let (j1, r1) = Job::new(engine.clone(), image(), long, b.pending().enter());
        b.submit(j1).unwrap();
        let (j2, r2) = Job::new(
            engine.clone(),
            image(),
            Instant::now() + Duration::from_millis(20),
            b.pending().enter(),
        );
        b.submit(j2).unwrap();
        r1.await.unwrap().unwrap();
        assert!(matches!(
            r2.await.unwrap(),
            Err(ServeError::DeadlineExceeded(_))
        ));
        assert_eq!(engine.calls.load(Ordering::SeqCst), 1);
        b.close();
    }

    #[tokio::test]
    async fn close_drains_queued_work_then_refuses() {
        let engine = Arc::new(FakeEngine::new("v1", "x", Duration::from_millis(20)));
        let b = batcher(1, 0, 8);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut rxs = Vec::new();
        for _ in 0..3 {
            let (job, rx) = Job::new(engine.clone(), image(), deadline, b.pending().enter());
            b.submit(job).unwrap();
            rxs.push(rx);
        }
        let b2 = b.clone();
        tokio::task::spawn_blocking(move || b2.close())
            .await
            .unwrap();
        for rx in rxs {
            rx.await.unwrap().unwrap();
        }
        let (job, _rx) = Job::new(engine, image(), deadline, b.pending().enter());
        assert!(matches!(b.submit(job), Err(ServeError::Unavailable(_))));
    }
}
