//! Background batch loading: rendering, decoding and preprocessing happen off the training
//! thread, and batches still arrive strictly in order.
//!
//! Batches are built a chunk at a time: a chunk is `bucket` consecutive batches' worth of
//! sampler positions, sorted by line width and cut into `bucket` batches of similar widths, so
//! a batch pads its lines to little more than their own width (padding is compute spent on
//! nothing, and its zeros skew BatchNorm's statistics). The chunk's batches then go out in a
//! shuffled order fixed by the chunk's index, so long and short batches alternate. With
//! `bucket = 1` every batch is its own chunk, in sampler order.
//!
//! Worker `w` of `n` builds chunks `w, w + n, w + 2n, ...` into its own bounded channel, and the
//! consumer reads the channels round-robin. So order is fixed without a reordering buffer,
//! memory is bounded by `prefetch_batches`, and batch `k` is the same whatever the thread
//! count. Chunks are aligned to absolute positions, so a run resumed mid-chunk rebuilds that
//! chunk and skips the batches it already trained on: the batches are exactly those of an
//! uninterrupted run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{anyhow, Context, Result};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError};
use textrec_contract::config::PreprocessConfig;

use super::{Batch, Dataset, Sampler};
use crate::tokenizer::Tokenizer;

/// How often a wait for the next batch checks whether the caller wants to stop.
pub const STOP_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Loads batches on background threads; dropping it stops them.
pub struct Loader {
    channels: Vec<Receiver<Result<Vec<Batch>>>>,
    /// The rest of the current chunk, next batch last.
    ready: Vec<Batch>,
    /// Batches of the first chunk that were trained on before the start position.
    skip: usize,
    turn: usize,
    failed: bool,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl Loader {
    /// Start `threads` workers (at least one) that build batches of `batch_size` samples in
    /// width-sorted chunks of `bucket` batches, the first batch being the one at global
    /// position `start_position` (a multiple of `batch_size`), keeping about
    /// `prefetch_batches` ready (at least one chunk per worker).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        dataset: Arc<dyn Dataset>,
        sampler: Sampler,
        tokenizer: Tokenizer,
        pre: PreprocessConfig,
        batch_size: usize,
        bucket: usize,
        start_position: u64,
        threads: usize,
        prefetch_batches: usize,
    ) -> Self {
        let threads = threads.max(1);
        let batch_size = batch_size.max(1) as u64;
        let bucket = bucket.max(1) as u64;
        let chunk_len = batch_size * bucket;
        let first_chunk = start_position / chunk_len;
        let skip = ((start_position % chunk_len) / batch_size) as usize;
        let depth = prefetch_batches.div_ceil(threads * bucket as usize).max(1);
        let stop = Arc::new(AtomicBool::new(false));
        let mut channels = Vec::with_capacity(threads);
        let mut workers = Vec::with_capacity(threads);
        for w in 0..threads {
            let (tx, rx) = bounded(depth);
            channels.push(rx);
            let (dataset, tokenizer, pre, stop) = (
                dataset.clone(),
                tokenizer.clone(),
                pre.clone(),
                stop.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name(format!("textrec-loader-{w}"))
                .spawn(move || {
                    let mut chunk = first_chunk + w as u64;
                    while !stop.load(Ordering::Relaxed) {
                        let batches = build_chunk(
                            &*dataset, &sampler, &tokenizer, &pre, chunk, batch_size, bucket,
                        );
                        let failed = batches.is_err();
                        if tx.send(batches).is_err() || failed {
                            break;
                        }
                        chunk += threads as u64;
                    }
                });
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(e) => {
                    // The receiver of this slot reports the failure in order.
                    let (tx, rx) = bounded(1);
                    let _ = tx.send(Err(anyhow!("cannot start a data loader thread: {e}")));
                    channels[w] = rx;
                }
            }
        }
        Self {
            channels,
            ready: Vec::new(),
            skip,
            turn: 0,
            failed: false,
            stop,
            workers,
        }
    }

    /// The next batch in order. After a data set error every later call fails too (the run
    /// must not continue with a hole in its data).
    pub fn next_batch(&mut self) -> Result<Batch> {
        Ok(self.next_batch_unless(&|| false)?.expect("never stopped"))
    }

    /// [`Self::next_batch`], but waiting for a batch still being built gives up with `None` as
    /// soon as `stopped()` says so (polled every [`STOP_POLL`]): a SIGTERM must not wait for a
    /// large batch to be decoded and preprocessed. Nothing is consumed then, so a later call
    /// returns the same batch.
    pub fn next_batch_unless(&mut self, stopped: &dyn Fn() -> bool) -> Result<Option<Batch>> {
        if self.failed {
            return Err(anyhow!("the data loader stopped after an earlier error"));
        }
        while self.ready.is_empty() {
            let slot = self.turn;
            let chunk = match self.channels[slot].recv_timeout(STOP_POLL) {
                Ok(c) => c,
                Err(RecvTimeoutError::Timeout) if stopped() => return Ok(None),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => Err(anyhow!(
                    "data loader thread {slot} stopped unexpectedly (it panicked)"
                )),
            };
            self.turn = (self.turn + 1) % self.channels.len();
            match chunk {
                Ok(mut batches) => {
                    let skip = std::mem::take(&mut self.skip).min(batches.len());
                    batches.drain(..skip);
                    batches.reverse();
                    self.ready = batches;
                }
                Err(e) => {
                    self.failed = true;
                    return Err(e);
                }
            }
        }
        Ok(self.ready.pop())
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receivers wakes workers blocked on a full channel.
        self.channels.clear();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// The batches of chunk `chunk`, in the order they are trained on. Batch `k` of the result
/// sits at positions `chunk · bucket · batch_size + k · batch_size ..` (its `first_position`).
fn build_chunk(
    dataset: &dyn Dataset,
    sampler: &Sampler,
    tokenizer: &Tokenizer,
    pre: &PreprocessConfig,
    chunk: u64,
    batch_size: u64,
    bucket: u64,
) -> Result<Vec<Batch>> {
    let first = chunk * batch_size * bucket;
    let mut samples = (first..first + batch_size * bucket)
        .map(|p| {
            let index = sampler.index_at(p);
            dataset
                .get(index)
                .with_context(|| format!("loading sample {index} (position {p})"))
        })
        .collect::<Result<Vec<_>>>()?;
    if bucket > 1 {
        // Width after resizing to a common height is proportional to the aspect ratio; the
        // sort is stable, so equal ratios keep their sampler order.
        samples.sort_by(|a, b| {
            let ratio = |s: &super::Sample| s.image.width() as f64 / s.image.height().max(1) as f64;
            ratio(a).total_cmp(&ratio(b))
        });
    }
    let mut groups: Vec<Vec<super::Sample>> = Vec::with_capacity(bucket as usize);
    let mut rest = samples.into_iter();
    for _ in 0..bucket {
        groups.push(rest.by_ref().take(batch_size as usize).collect());
    }
    // Fisher-Yates keyed by the chunk: the same order in every run and on every resume.
    let mut state = super::mix_seed(0x6275_636b_6574, chunk);
    for i in (1..groups.len()).rev() {
        state = super::mix_seed(state, i as u64);
        groups.swap(i, (state % (i as u64 + 1)) as usize);
    }
    groups
        .into_iter()
        .enumerate()
        .map(|(k, g)| Batch::collate(g, tokenizer, pre, first + k as u64 * batch_size))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Sample;
    use image::{GrayImage, Luma};
    use std::sync::atomic::AtomicUsize;

    /// A cheap set whose sample `i` encodes `i` in its text and image width.
    struct Counting {
        len: Option<u64>,
        fail_at: Option<u64>,
        loads: AtomicUsize,
    }

    impl Dataset for Counting {
        fn len(&self) -> Option<u64> {
            self.len
        }
        fn get(&self, index: u64) -> Result<Sample> {
            self.loads.fetch_add(1, Ordering::Relaxed);
            if Some(index) == self.fail_at {
                anyhow::bail!("broken sample {index}");
            }
            let w = 8 + (index % 50) as u32;
            Ok(Sample {
                image: GrayImage::from_fn(w, 8, |x, _| Luma([if x % 3 == 0 { 0 } else { 255 }])),
                text: index.to_string(),
                id: format!("n{index}"),
            })
        }
        fn describe(&self) -> String {
            "counting".into()
        }
    }

    fn counting(len: Option<u64>, fail_at: Option<u64>) -> Arc<Counting> {
        Arc::new(Counting {
            len,
            fail_at,
            loads: AtomicUsize::new(0),
        })
    }

    fn pre() -> PreprocessConfig {
        PreprocessConfig {
            height: 8,
            max_width: 128,
            width_multiple: 4,
            max_source_pixels: 100_000,
            stretch: 1.0,
        }
    }

    fn run(
        ds: Arc<dyn Dataset>,
        start: u64,
        threads: usize,
        batches: usize,
    ) -> Vec<(u64, Vec<String>, Vec<f32>)> {
        run_bucketed(ds, 1, start, threads, batches)
    }

    fn run_bucketed(
        ds: Arc<dyn Dataset>,
        bucket: usize,
        start: u64,
        threads: usize,
        batches: usize,
    ) -> Vec<(u64, Vec<String>, Vec<f32>)> {
        let sampler = Sampler::new(ds.len(), 11);
        let mut l = Loader::start(
            ds,
            sampler,
            Tokenizer::new("0123456789"),
            pre(),
            4,
            bucket,
            start,
            threads,
            3,
        );
        (0..batches)
            .map(|_| {
                let b = l.next_batch().unwrap();
                let pixels = Vec::<f32>::try_from(b.images().0.flatten(0, -1)).unwrap();
                (b.first_position, b.ids, pixels)
            })
            .collect()
    }

    #[test]
    fn resumed_run_equals_the_tail_of_a_full_run() {
        for len in [Some(10u64), None] {
            let full = run(counting(len, None), 0, 1, 12);
            for threads in 1..=4 {
                assert_eq!(
                    run(counting(len, None), 0, threads, 12),
                    full,
                    "threads {threads}"
                );
                let resumed = run(counting(len, None), 5 * 4, threads, 7);
                assert_eq!(resumed, full[5..], "len {len:?} threads {threads}");
            }
            assert_eq!(full[3].0, 12);
        }
    }

    #[test]
    fn bucketed_batches_resume_exactly_and_pad_less() {
        let width = |b: &(u64, Vec<String>, Vec<f32>)| b.2.len() / 4;
        for len in [Some(37u64), None] {
            let full = run_bucketed(counting(len, None), 4, 0, 1, 16);
            for threads in 1..=3 {
                assert_eq!(run_bucketed(counting(len, None), 4, 0, threads, 16), full);
                // Mid-chunk (batch 5 of chunk 1) and on a chunk boundary.
                for start in [5, 8] {
                    let resumed = run_bucketed(counting(len, None), 4, start * 4, threads, 6);
                    assert_eq!(resumed, full[start as usize..start as usize + 6]);
                }
            }
            // The same samples as unbucketed loading, chunk by chunk.
            let plain = run(counting(len, None), 0, 1, 12);
            for c in 0..3 {
                let ids = |bs: &[(u64, Vec<String>, Vec<f32>)]| {
                    let mut v: Vec<String> = bs.iter().flat_map(|b| b.1.clone()).collect();
                    v.sort();
                    v
                };
                assert_eq!(ids(&full[c * 4..c * 4 + 4]), ids(&plain[c * 4..c * 4 + 4]));
            }
            let total = |bs: &[(u64, Vec<String>, Vec<f32>)]| bs.iter().map(width).sum::<usize>();
            // The endless set's widths already rise with the position; the finite one is
            // shuffled, and sorting must cut its padding.
            assert!(total(&full[..12]) <= total(&plain));
            if len.is_some() {
                assert!(
                    total(&full[..12]) < total(&plain),
                    "sorting must cut padding"
                );
            }
        }
    }

    #[test]
    fn finite_epochs_cover_the_set() {
        let batches = run(counting(Some(10), None), 0, 2, 5);
        let mut ids: Vec<String> = batches.iter().flat_map(|b| b.1.clone()).take(10).collect();
        ids.sort();
        let mut want: Vec<String> = (0..10).map(|i| format!("n{i}")).collect();
        want.sort();
        assert_eq!(ids, want);
    }

    #[test]
    fn dataset_errors_reach_the_consumer_in_order() {
        let ds = counting(None, Some(9));
        let mut l = Loader::start(
            ds,
            Sampler::new(None, 0),
            Tokenizer::new("0123456789"),
            pre(),
            4,
            1,
            0,
            3,
            6,
        );
        assert!(l.next_batch().is_ok());
        assert!(l.next_batch().is_ok());
        let err = format!("{:#}", l.next_batch().unwrap_err());
        assert!(
            err.contains("broken sample 9") && err.contains("position 9"),
            "{err}"
        );
        assert!(l.next_batch().is_err());
    }

    #[test]
    fn drop_stops_the_workers() {
        let ds = counting(None, None);
        let mut l = Loader::start(
            ds.clone(),
            Sampler::new(None, 0),
            Tokenizer::new("0123456789"),
            pre(),
            2,
            1,
            0,
            4,
            4,
        );
        l.next_batch().unwrap();
        drop(l);
        let after = ds.loads.load(Ordering::Relaxed);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(
            ds.loads.load(Ordering::Relaxed),
            after,
            "workers kept loading after drop"
        );
        assert_eq!(Arc::strong_count(&ds), 1, "workers still hold the data set");
    }

    /// A set whose samples cannot be built until the gate opens: a batch "still being built".
    struct Gated {
        open: Arc<AtomicBool>,
    }

    impl Dataset for Gated {
        fn len(&self) -> Option<u64> {
            Some(100)
        }
        fn get(&self, index: u64) -> Result<Sample> {
            while !self.open.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            counting(None, None).get(index)
        }
        fn describe(&self) -> String {
            "gated".into()
        }
    }

    #[test]
    fn a_stop_ends_the_wait_for_a_batch_without_losing_it() {
        let open = Arc::new(AtomicBool::new(false));
        let ds = Arc::new(Gated { open: open.clone() });
        let mut l = Loader::start(
            ds,
            Sampler::new(Some(100), 11),
            Tokenizer::new("0123456789"),
            pre(),
            4,
            1,
            0,
            1,
            2,
        );
        assert!(l.next_batch_unless(&|| true).unwrap().is_none());
        open.store(true, Ordering::Relaxed);
        let first = l.next_batch_unless(&|| false).unwrap().unwrap();
        assert_eq!(first.first_position, 0);
        assert_eq!(l.next_batch().unwrap().first_position, 4);
    }
}
