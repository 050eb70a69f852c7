//! Background batch loading: rendering, decoding and preprocessing happen off the training
//! thread, and batches still arrive strictly in order.
//!
//! Worker `w` of `n` builds batches `w, w + n, w + 2n, ...` (counted from the start position)
//! into its own bounded channel, and the consumer reads the channels round-robin. So order is
//! fixed without a reordering buffer, memory is bounded by `prefetch_batches`, and batch `k`
//! is the same whatever the thread count.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{anyhow, Context, Result};
use crossbeam_channel::{bounded, Receiver};
use textrec_contract::config::PreprocessConfig;

use super::{Batch, Dataset, Sampler};
use crate::tokenizer::Tokenizer;

/// Loads batches on background threads; dropping it stops them.
pub struct Loader {
    channels: Vec<Receiver<Result<Batch>>>,
    turn: usize,
    failed: bool,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl Loader {
    /// Start `threads` workers (at least one) that build batches of `batch_size` samples,
    /// the first starting at global position `start_position`, keeping up to
    /// `prefetch_batches` ready (at least one per worker).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        dataset: Arc<dyn Dataset>,
        sampler: Sampler,
        tokenizer: Tokenizer,
        pre: PreprocessConfig,
        batch_size: usize,
        start_position: u64,
        threads: usize,
        prefetch_batches: usize,
    ) -> Self {
        let threads = threads.max(1);
        let batch_size = batch_size.max(1) as u64;
        let depth = prefetch_batches.div_ceil(threads).max(1);
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
                    let mut k = w as u64;
                    while !stop.load(Ordering::Relaxed) {
                        let first = start_position + k * batch_size;
                        let batch = build(&*dataset, &sampler, &tokenizer, &pre, first, batch_size);
                        let failed = batch.is_err();
                        if tx.send(batch).is_err() || failed {
                            break;
                        }
                        k += threads as u64;
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
            turn: 0,
            failed: false,
            stop,
            workers,
        }
    }

    /// The next batch in order. After a data set error every later call fails too (the run
    /// must not continue with a hole in its data).
    pub fn next_batch(&mut self) -> Result<Batch> {
        if self.failed {
            return Err(anyhow!("the data loader stopped after an earlier error"));
        }
        let slot = self.turn;
        let received = self.channels[slot].recv();
        self.turn = (self.turn + 1) % self.channels.len();
        let batch = match received {
            Ok(b) => b,
            Err(_) => Err(anyhow!(
                "data loader thread {slot} stopped unexpectedly (it panicked)"
            )),
        };
        self.failed = batch.is_err();
        batch
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

fn build(
    dataset: &dyn Dataset,
    sampler: &Sampler,
    tokenizer: &Tokenizer,
    pre: &PreprocessConfig,
    first: u64,
    batch_size: u64,
) -> Result<Batch> {
    let samples = (first..first + batch_size)
        .map(|p| {
            let index = sampler.index_at(p);
            dataset
                .get(index)
                .with_context(|| format!("loading sample {index} (position {p})"))
        })
        .collect::<Result<Vec<_>>>()?;
    Batch::collate(samples, tokenizer, pre, first)
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
        }
    }

    fn run(
        ds: Arc<dyn Dataset>,
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
            start,
            threads,
            3,
        );
        (0..batches)
            .map(|_| {
                let b = l.next_batch().unwrap();
                let pixels = Vec::<f32>::try_from(b.images.flatten(0, -1)).unwrap();
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
}
