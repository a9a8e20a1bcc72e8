//! Work a shard must not do on its own thread, nor on glommio's blocking pool: password
//! checks.
//!
//! A `$7$` (PBKDF2) check costs milliseconds of CPU. On the shard thread it would stall
//! every connection of the shard; on glommio's blocking pool (one thread per executor)
//! it queues in front of the write-ahead log's group commits, which run there too, so a
//! burst of password CONNECTs would hold back every PUBACK of the shard. Each shard
//! therefore has its own small pool, [`PasswordChecks`]: [`CHECK_THREADS`] plain threads
//! (`cutie-auth-<n>`, not pinned: the scheduler puts them on whatever core is idle, at
//! nice 10 so that a shard on the same core keeps priority) fed
//! by a bounded queue of [`CHECK_QUEUE_MAX`] checks. The connection task awaits its
//! [`Reply`] without blocking the shard; a check submitted to a full queue is refused at
//! once (the runtime answers CONNACK 3, "server unavailable", and counts it): a burst
//! costs bounded memory and a bounded wait, never an unbounded queue.
//!
//! The pool is started on first use, by the shard thread, and lives as long as that
//! thread (a thread-local): when the shard's executor ends, the queue closes, the
//! threads finish the checks already queued and are joined.
//!
//! Cost per check: one boxed closure, one `Arc<Mutex>` reply slot, one cross-thread wake
//! (an eventfd write when the shard sleeps).

use std::cell::OnceCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

/// Threads per shard doing password checks.
pub const CHECK_THREADS: usize = 1;
/// Checks per shard waiting for a thread; one more is refused.
pub const CHECK_QUEUE_MAX: usize = 64;
/// Nice value of the check threads: below the shard's priority (Linux: per thread).
const CHECK_THREAD_NICE: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

/// The queue was full: the check was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

/// One shard's password-check threads and their bounded queue. See the module docs.
#[derive(Debug)]
pub struct PasswordChecks {
    jobs: Option<crossbeam_channel::Sender<Job>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl PasswordChecks {
    /// Starts `threads` threads named `cutie-auth-<shard>` behind a queue of `queue_max`.
    pub fn start(shard: usize, threads: usize, queue_max: usize) -> std::io::Result<Self> {
        let (jobs, queue) = crossbeam_channel::bounded::<Job>(queue_max);
        let mut started = Vec::with_capacity(threads);
        for _ in 0..threads.max(1) {
            let queue = queue.clone();
            started.push(
                std::thread::Builder::new()
                    .name(format!("cutie-auth-{shard}"))
                    .spawn(move || {
                        // Hashing is all CPU; the shard thread must win it. Best effort.
                        // SAFETY: gettid has no preconditions; setpriority on this
                        // thread's own id changes only this thread's nice value (Linux).
                        let _ = unsafe {
                            libc::setpriority(
                                libc::PRIO_PROCESS,
                                libc::gettid() as libc::id_t,
                                CHECK_THREAD_NICE,
                            )
                        };
                        for job in queue {
                            job();
                        }
                    })?,
            );
        }
        Ok(Self {
            jobs: Some(jobs),
            threads: started,
        })
    }

    /// Queues `check`; the [`Reply`] resolves to its result (`None` if it never ran: the
    /// pool went away first). [`QueueFull`] when `queue_max` checks are already waiting.
    pub fn submit<T: Send + 'static>(
        &self,
        check: impl FnOnce() -> T + Send + 'static,
    ) -> Result<Reply<T>, QueueFull> {
        let slot = Arc::new(Mutex::new(Slot {
            value: None,
            done: false,
            waker: None,
        }));
        let completer = Completer(Arc::clone(&slot));
        let job: Job = Box::new(move || completer.complete(check()));
        let Some(jobs) = &self.jobs else {
            return Err(QueueFull);
        };
        match jobs.try_send(job) {
            Ok(()) => Ok(Reply(slot)),
            Err(_) => Err(QueueFull),
        }
    }
}

impl Drop for PasswordChecks {
    fn drop(&mut self) {
        drop(self.jobs.take());
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

thread_local! {
    /// This shard thread's pool, started by the first [`check_password`].
    static POOL: OnceCell<Option<PasswordChecks>> = const { OnceCell::new() };
}

/// Runs `check` on the calling shard's password-check pool (started on first use, named
/// after `shard`). [`QueueFull`] when [`CHECK_QUEUE_MAX`] checks are waiting, or when the
/// pool's threads could not be started (logged once).
pub fn check_password<T: Send + 'static>(
    shard: usize,
    check: impl FnOnce() -> T + Send + 'static,
) -> Result<Reply<T>, QueueFull> {
    POOL.with(|pool| {
        let pool = pool.get_or_init(|| {
            match PasswordChecks::start(shard, CHECK_THREADS, CHECK_QUEUE_MAX) {
                Ok(pool) => Some(pool),
                Err(error) => {
                    tracing::error!(shard, %error, "cannot start the password-check thread");
                    None
                }
            }
        });
        match pool {
            Some(pool) => pool.submit(check),
            None => Err(QueueFull),
        }
    })
}

#[derive(Debug)]
struct Slot<T> {
    value: Option<T>,
    /// The job ran or was dropped: no value will come after this.
    done: bool,
    waker: Option<Waker>,
}

/// The worker's end of a [`Reply`]: completes it, or, dropped unrun, closes it.
struct Completer<T>(Arc<Mutex<Slot<T>>>);

impl<T> Completer<T> {
    fn complete(self, value: T) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).value = Some(value);
        // Drop wakes.
    }
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        let waker = {
            let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            slot.done = true;
            slot.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The result of a submitted check, awaited by the connection task.
#[derive(Debug)]
pub struct Reply<T>(Arc<Mutex<Slot<T>>>);

impl<T> Future for Reply<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.done {
            return Poll::Ready(slot.value.take());
        }
        match &slot.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_check_runs_off_the_calling_thread_and_its_reply_resolves() {
        let pool = PasswordChecks::start(0, 1, 4).unwrap_or_else(|e| panic!("{e}"));
        let caller = std::thread::current().id();
        let reply = pool
            .submit(move || std::thread::current().id() != caller)
            .unwrap_or_else(|_| panic!("queue full"));
        assert_eq!(futures_lite::future::block_on(reply), Some(true));
    }

    #[test]
    fn a_full_queue_refuses_at_once_and_frees_up_again() {
        let pool = PasswordChecks::start(0, 1, 2).unwrap_or_else(|e| panic!("{e}"));
        let (entered_tx, entered) = mpsc::channel();
        let (release, gate) = mpsc::channel::<()>();
        let gate = Arc::new(Mutex::new(gate));
        let blocked = |n: u32| {
            let entered_tx = entered_tx.clone();
            let gate = Arc::clone(&gate);
            move || {
                let _ = entered_tx.send(n);
                let _ = gate.lock().unwrap_or_else(PoisonError::into_inner).recv();
                n
            }
        };
        let first = pool.submit(blocked(1)).unwrap_or_else(|_| panic!("full"));
        // The thread holds check 1; two more fill the queue; the fourth is refused.
        assert_eq!(entered.recv().ok(), Some(1));
        let second = pool.submit(blocked(2)).unwrap_or_else(|_| panic!("full"));
        let third = pool.submit(blocked(3)).unwrap_or_else(|_| panic!("full"));
        assert_eq!(pool.submit(blocked(4)).err(), Some(QueueFull));
        for _ in 0..3 {
            let _ = release.send(());
        }
        assert_eq!(futures_lite::future::block_on(first), Some(1));
        assert_eq!(futures_lite::future::block_on(second), Some(2));
        assert_eq!(futures_lite::future::block_on(third), Some(3));
        let _ = release.send(());
        let fifth = pool.submit(blocked(5)).unwrap_or_else(|_| panic!("full"));
        assert_eq!(futures_lite::future::block_on(fifth), Some(5));
    }
}
