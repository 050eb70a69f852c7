//! A bounded job queue whose idle workers are woken last-idle-first.
//!
//! A channel wakes its waiting receivers in the order they started waiting, so under light load
//! the inference threads take turns: each forward pass runs on the thread (and usually the core)
//! whose caches the previous pass did not warm. On the 2-core machine of BENCHMARKS.md that cost
//! about 1 ms per request of the `small` model at concurrency 1 (model time 14.0 ms with two
//! alternating threads against 11.8 ms with one). Waking the most recently idle worker instead,
//! as I/O completion ports do, keeps a light load on one hot thread, while a heavy load still
//! keeps every worker busy since nobody waits while jobs are queued.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// Why a job was not queued; the job comes back.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError<T> {
    /// The queue holds its capacity.
    Full(T),
    /// [`HandoffQueue::close`] was called.
    Closed(T),
}

/// What a worker waiting with a deadline got.
#[derive(Debug, PartialEq, Eq)]
pub enum Popped<T> {
    /// A job.
    Job(T),
    /// The deadline passed with the queue empty.
    TimedOut,
    /// The queue is closed and empty: no job will come.
    Closed,
}

struct State<T> {
    jobs: VecDeque<T>,
    /// Workers blocked in a pop, the most recent last; a push wakes the last.
    waiting: Vec<usize>,
    closed: bool,
}

/// The queue shared by a fixed set of workers, numbered `0..workers`.
pub struct HandoffQueue<T> {
    state: Mutex<State<T>>,
    /// One per worker, so that a push wakes exactly the worker it picked.
    wakers: Vec<Condvar>,
    capacity: usize,
}

impl<T> HandoffQueue<T> {
    /// A queue of at most `capacity` jobs (at least 1) for `workers` workers.
    pub fn new(capacity: usize, workers: usize) -> Self {
        Self {
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                waiting: Vec::with_capacity(workers),
                closed: false,
            }),
            wakers: (0..workers).map(|_| Condvar::new()).collect(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing panics while holding the lock, but a poisoned queue must still drain.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue a job without blocking, waking the most recently idle worker.
    pub fn try_push(&self, job: T) -> Result<(), PushError<T>> {
        let mut s = self.lock();
        if s.closed {
            return Err(PushError::Closed(job));
        }
        if s.jobs.len() >= self.capacity {
            return Err(PushError::Full(job));
        }
        s.jobs.push_back(job);
        // A worker registers as waiting only when it finds the queue empty, so each job pushed
        // since has woken one of them: no job sits queued while a worker sleeps. Jobs beyond
        // the waiting workers are taken by busy workers as they finish, or by the worker
        // gathering a batch, instead of waking another worker into a batch of its own.
        if let Some(worker) = s.waiting.pop() {
            self.wakers[worker].notify_one();
        }
        Ok(())
    }

    /// Take a queued job, if any, without waiting.
    pub fn try_pop(&self) -> Option<T> {
        self.lock().jobs.pop_front()
    }

    /// Wait for a job as `worker`; `None` once the queue is closed and empty.
    pub fn pop(&self, worker: usize) -> Option<T> {
        match self.wait(worker, None) {
            Popped::Job(job) => Some(job),
            Popped::TimedOut | Popped::Closed => None,
        }
    }

    /// Wait for a job as `worker` until `deadline`.
    pub fn pop_until(&self, worker: usize, deadline: Instant) -> Popped<T> {
        self.wait(worker, Some(deadline))
    }

    fn wait(&self, worker: usize, deadline: Option<Instant>) -> Popped<T> {
        let mut s = self.lock();
        loop {
            if let Some(job) = s.jobs.pop_front() {
                s.waiting.retain(|&w| w != worker);
                return Popped::Job(job);
            }
            if s.closed {
                s.waiting.retain(|&w| w != worker);
                return Popped::Closed;
            }
            if !s.waiting.contains(&worker) {
                s.waiting.push(worker);
            }
            s = match deadline {
                None => self.wakers[worker]
                    .wait(s)
                    .unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        s.waiting.retain(|&w| w != worker);
                        return Popped::TimedOut;
                    }
                    self.wakers[worker]
                        .wait_timeout(s, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }

    /// Jobs waiting.
    pub fn len(&self) -> usize {
        self.lock().jobs.len()
    }

    /// Whether no job is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Refuse new jobs; workers still take what is queued, then their pops return `None`.
    pub fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        s.waiting.clear();
        for w in &self.wakers {
            w.notify_all();
        }
    }

    #[cfg(test)]
    fn waiting(&self) -> Vec<usize> {
        self.lock().waiting.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    /// Block until `workers` are waiting, in that order.
    fn until_waiting(q: &HandoffQueue<u32>, workers: &[usize]) {
        let start = Instant::now();
        while q.waiting() != workers {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "waiting: {:?}",
                q.waiting()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn the_most_recently_idle_worker_gets_the_next_job() {
        let q = Arc::new(HandoffQueue::<u32>::new(8, 3));
        let (tx, rx) = std::sync::mpsc::channel();
        let spawn = |w: usize| {
            let (q, tx) = (q.clone(), tx.clone());
            std::thread::spawn(move || {
                while let Some(job) = q.pop(w) {
                    tx.send((w, job)).unwrap();
                }
            })
        };
        let mut threads = vec![spawn(0)];
        until_waiting(&q, &[0]);
        threads.push(spawn(2));
        until_waiting(&q, &[0, 2]);
        threads.push(spawn(1));
        until_waiting(&q, &[0, 2, 1]);
        // One job at a time: each goes to the last worker to become idle, which is the one that
        // ran the job before (a channel would rotate through 0, 2, 1).
        for job in 0..4 {
            q.try_push(job).unwrap();
            assert_eq!(rx.recv().unwrap(), (1, job));
            until_waiting(&q, &[0, 2, 1]);
        }
        q.close();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn a_burst_wakes_as_many_workers_as_it_has_jobs() {
        let q = Arc::new(HandoffQueue::<u32>::new(8, 2));
        let (tx, rx) = std::sync::mpsc::channel();
        let gate = Arc::new(std::sync::Barrier::new(3));
        let mut threads = Vec::new();
        for w in 0..2 {
            let (q2, tx, gate) = (q.clone(), tx.clone(), gate.clone());
            threads.push(std::thread::spawn(move || {
                let job = q2.pop(w).unwrap();
                tx.send(w).unwrap();
                // Hold the job until both workers have one: neither can take the second.
                gate.wait();
                job
            }));
            // One at a time, so that the waiting order is known.
            until_waiting(&q, &[0, 1][..=w]);
        }
        q.try_push(7).unwrap();
        q.try_push(8).unwrap();
        let mut got = [rx.recv().unwrap(), rx.recv().unwrap()];
        got.sort();
        assert_eq!(got, [0, 1]);
        gate.wait();
        let mut jobs: Vec<u32> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        jobs.sort();
        assert_eq!(jobs, [7, 8]);
    }

    #[test]
    fn a_full_queue_hands_the_job_back() {
        let q = HandoffQueue::new(2, 1);
        q.try_push(1).unwrap();
        q.try_push(2).unwrap();
        assert_eq!(q.try_push(3), Err(PushError::Full(3)));
        assert_eq!(q.len(), 2);
        assert_eq!(q.try_pop(), Some(1));
        q.try_push(3).unwrap();
    }

    #[test]
    fn pop_until_times_out_and_leaves_the_idle_list() {
        let q = HandoffQueue::<u32>::new(2, 1);
        let start = Instant::now();
        assert_eq!(
            q.pop_until(0, start + Duration::from_millis(20)),
            Popped::TimedOut
        );
        assert!(start.elapsed() >= Duration::from_millis(20));
        assert!(q.waiting().is_empty());
        q.try_push(5).unwrap();
        assert_eq!(q.pop_until(0, Instant::now()), Popped::Job(5));
    }

    #[test]
    fn close_lets_workers_drain_then_ends_their_wait() {
        let q = Arc::new(HandoffQueue::<u32>::new(4, 1));
        q.try_push(1).unwrap();
        q.try_push(2).unwrap();
        q.close();
        assert_eq!(q.try_push(3), Err(PushError::Closed(3)));
        assert_eq!(q.pop(0), Some(1));
        assert_eq!(q.pop(0), Some(2));
        assert_eq!(q.pop(0), None);
        assert_eq!(q.pop_until(0, Instant::now()), Popped::Closed);

        // A worker already blocked is released by close.
        let q = Arc::new(HandoffQueue::<u32>::new(4, 1));
        let waiter = {
            let q = q.clone();
            std::thread::spawn(move || q.pop(0))
        };
        until_waiting(&q, &[0]);
        q.close();
        assert_eq!(waiter.join().unwrap(), None);
    }
}
