//! New-file DEKs generated ahead of need.
//!
//! With a key service, every new file's DEK is a round trip (GenerateDataKey). Creating
//! thousands of files one round trip at a time would be latency × N, so a few worker
//! threads keep a small pool of ready (file id, DEK, wrapped slots) triples, with bounded
//! concurrency. The file id is chosen at generation time because the key service binds it
//! into the wrapped DEK (EncryptionContext).

use crate::crypto::Secret32;
use crate::error::Result;
use crate::format::KeySlot;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// A DEK made for a file that does not exist yet.
pub struct Prepared {
    pub file_id: [u8; 16],
    pub dek: Secret32,
    pub slots: Vec<KeySlot>,
}

type Generate = dyn Fn() -> Result<Prepared> + Send + Sync;

struct Shared {
    /// Ready DEKs, and how many workers are generating one right now (so that together
    /// they never overshoot the target and waste key-service calls).
    pool: Mutex<(VecDeque<Prepared>, usize)>,
    /// Signalled when the pool shrinks (workers refill) or the prefetcher stops.
    wanted: Condvar,
    target: usize,
    stop: AtomicBool,
}

pub struct Prefetcher {
    shared: Arc<Shared>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Prefetcher {
    /// Keep `target` DEKs ready using `concurrency` worker threads.
    pub fn start(target: usize, concurrency: usize, generate: Arc<Generate>) -> Prefetcher {
        let shared = Arc::new(Shared {
            pool: Mutex::new((VecDeque::with_capacity(target), 0)),
            wanted: Condvar::new(),
            target,
            stop: AtomicBool::new(false),
        });
        let workers = (0..concurrency)
            .map(|i| {
                let shared = shared.clone();
                let generate = generate.clone();
                std::thread::Builder::new()
                    .name(format!("envfs-prefetch-{i}"))
                    .spawn(move || worker(&shared, &*generate))
                    .expect("spawn prefetch worker")
            })
            .collect();
        Prefetcher { shared, workers }
    }

    /// A ready DEK, if one is in the pool.
    pub fn take(&self) -> Option<Prepared> {
        let item = self.shared.pool.lock().unwrap().0.pop_front();
        self.shared.wanted.notify_one();
        item
    }

    pub fn ready(&self) -> usize {
        self.shared.pool.lock().unwrap().0.len()
    }
}

fn worker(shared: &Shared, generate: &Generate) {
    let mut backoff = Duration::from_millis(100);
    loop {
        {
            let mut pool = shared.pool.lock().unwrap();
            while pool.0.len() + pool.1 >= shared.target && !shared.stop.load(Ordering::Relaxed) {
                pool = shared.wanted.wait(pool).unwrap();
            }
            if shared.stop.load(Ordering::Relaxed) {
                return;
            }
            pool.1 += 1;
        }
        let result = generate();
        let mut pool = shared.pool.lock().unwrap();
        pool.1 -= 1;
        match result {
            Ok(p) => {
                backoff = Duration::from_millis(100);
                pool.0.push_back(p);
            }
            Err(e) => {
                // The key service is down or refusing: creating files will report it; the
                // pool retries quietly, slower and slower.
                tracing::debug!("DEK prefetch failed: {e}");
                let _ = shared.wanted.wait_timeout(pool, backoff).unwrap();
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wanted.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn fills_to_target_and_refills_after_take() {
        let made = Arc::new(AtomicUsize::new(0));
        let counter = made.clone();
        let p = Prefetcher::start(
            4,
            2,
            Arc::new(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok(Prepared {
                    file_id: crate::crypto::random::array(),
                    dek: Secret32::random(),
                    slots: vec![],
                })
            }),
        );
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while p.ready() < 4 && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(p.ready(), 4);
        let a = p.take().unwrap();
        let b = p.take().unwrap();
        assert_ne!(a.file_id, b.file_id);
        while p.ready() < 4 && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(p.ready(), 4);
        assert!(made.load(Ordering::SeqCst) >= 6);
    }
}
