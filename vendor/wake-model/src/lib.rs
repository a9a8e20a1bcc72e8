//! Loom models of the two wake-up handshakes that `vendor/glommio-cutie.patch` changed
//! (`vendor/README.md`, points 5 and 7), checked under every interleaving and every value
//! the C11 memory model lets a load see.
//!
//! Both are the same Dekker pattern: one side writes something and then reads a flag, the
//! other sets the flag and then reads what was written. With a `SeqCst` fence between the
//! write and the read on each side, at least one of them sees the other: either the
//! would-be sleeper sees the news and stays awake, or the other side sees that it sleeps
//! and wakes it. Without one of the fences (or without the re-check), both can miss each
//! other, and a thread sleeps with work waiting and nothing left to wake it.
//!
//! - [`sleep`]: an executor about to park (`Reactor::sleep` in `src/sys/uring.rs`:
//!   `prepare_to_sleep`, a fence, then the re-check of its channels) against a remote
//!   executor that has just written to one of those channels and notifies it
//!   (`SleepNotifier::notify` in `src/sys/mod.rs`: a fence, then a compare-exchange of
//!   `should_notify`, and an eventfd write if it was set). The patch replaced the
//!   sleeper's process-wide membarrier with the fence, and added the notifier's.
//! - [`room`]: a producer that finds a shared channel full (`wait_for_room` in
//!   `src/channels/shared_channel.rs`: announce `producer_waiting`, a fence, re-check the
//!   free space) against its consumer, which pops and then wakes the producer only if it
//!   announced (`take_producer_waiting` in `src/channels/spsc_queue.rs`: a fence, then
//!   read and clear the flag). Upstream woke the producer after every pop.
//!
//! The models copy the orderings of the vendored source; when the patch changes, change
//! them together. Each takes a protocol value that can drop one part of the handshake;
//! the tests check that the patched protocol holds and that every weakened one loses a
//! wake-up, so the model itself is shown able to fail.
//!
//! Loom treats `SeqCst` loads, stores and read-modify-writes as `AcqRel`, weaker than C11,
//! but models `SeqCst` fences exactly: the patched protocol does not rely on the former.

use loom::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

/// What a model reports when a wake-up is lost; the tests look for it.
pub const LOST_WAKE_UP: &str = "lost wake-up";

/// Which parts of the executor sleep protocol ([`sleep`]) are kept.
#[derive(Debug, Clone, Copy)]
pub struct SleepProtocol {
    /// The sleeper's `SeqCst` fence between announcing the sleep and re-checking its
    /// channels (upstream: a process-wide membarrier).
    pub sleeper_fence: bool,
    /// The notifier's `SeqCst` fence between its channel write and reading the sleep flag.
    pub notifier_fence: bool,
}

impl SleepProtocol {
    /// As in the vendored glommio.
    pub const PATCHED: SleepProtocol = SleepProtocol {
        sleeper_fence: true,
        notifier_fence: true,
    };
}

/// What the sleeper and the notifier share.
#[derive(Debug)]
struct Sleeper {
    /// `SleepNotifier::should_notify`: the executor sleeps, or is about to.
    should_notify: AtomicBool,
    /// A remote channel (or the foreign waker queue) has something for the executor.
    channel: AtomicBool,
    /// The eventfd was written: a sleeping executor wakes (a write before the sleep
    /// counts too, the eventfd is level-triggered).
    eventfd: AtomicBool,
}

/// Checks the executor sleep protocol under `protocol`: panics with [`LOST_WAKE_UP`] if
/// some execution parks the executor with a message in its channel and no eventfd write.
pub fn sleep(protocol: SleepProtocol) {
    loom::model(move || {
        let shared = Arc::new(Sleeper {
            should_notify: AtomicBool::new(false),
            channel: AtomicBool::new(false),
            eventfd: AtomicBool::new(false),
        });
        let remote = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || {
                // The remote executor's send: the channel write, then `notify(false)`.
                shared.channel.store(true, Ordering::Release);
                if protocol.notifier_fence {
                    fence(Ordering::SeqCst);
                }
                if shared
                    .should_notify
                    .compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    shared.eventfd.store(true, Ordering::Release);
                }
            })
        };
        // The executor parks: `prepare_to_sleep`, the barrier, `process_remote_channels`.
        shared.should_notify.store(true, Ordering::Relaxed);
        if protocol.sleeper_fence {
            fence(Ordering::SeqCst);
        }
        let slept = if shared.channel.load(Ordering::Acquire) {
            // Found work: does not sleep (`wake_up`).
            shared.should_notify.store(false, Ordering::Relaxed);
            false
        } else {
            true
        };
        remote.join().expect("the remote executor");
        assert!(
            !slept || shared.eventfd.load(Ordering::Acquire),
            "{LOST_WAKE_UP}: the executor sleeps with a message in its channel and no \
             eventfd write"
        );
    });
}

/// Which parts of the shared channel's room handshake ([`room`]) are kept.
#[derive(Debug, Clone, Copy)]
pub struct RoomProtocol {
    /// The producer's `SeqCst` fence after announcing that it waits.
    pub producer_fence: bool,
    /// The producer's second look at the free space after announcing.
    pub producer_recheck: bool,
    /// The consumer's `SeqCst` fence between its pop and reading the announcement.
    pub consumer_fence: bool,
}

impl RoomProtocol {
    /// As in the vendored glommio.
    pub const PATCHED: RoomProtocol = RoomProtocol {
        producer_fence: true,
        producer_recheck: true,
        consumer_fence: true,
    };
}

/// A one-slot SPSC queue, full, as `spsc_queue.rs` keeps it.
#[derive(Debug)]
struct Channel {
    /// The consumer's position (`ccache.head`).
    head: AtomicUsize,
    /// The producer's position (`pcache.tail`).
    tail: AtomicUsize,
    /// The one slot's `has_value`.
    slot_has_value: AtomicBool,
    /// `pcache.producer_waiting`: the producer found no room and waits.
    producer_waiting: AtomicBool,
}

const CAPACITY: usize = 1;

impl Channel {
    /// `Producer::free_space() > 0`: `size()` reads both positions with `Acquire`.
    fn has_room(&self) -> bool {
        let tail = self.tail.load(Ordering::Acquire);
        let head = self.head.load(Ordering::Acquire);
        tail.saturating_sub(head) < CAPACITY
    }
}

/// Checks the room handshake under `protocol`: panics with [`LOST_WAKE_UP`] if some
/// execution leaves the producer waiting for room that the consumer made, unwoken.
pub fn room(protocol: RoomProtocol) {
    loom::model(move || {
        let channel = Arc::new(Channel {
            head: AtomicUsize::new(0),
            tail: AtomicUsize::new(CAPACITY),
            slot_has_value: AtomicBool::new(true),
            producer_waiting: AtomicBool::new(false),
        });
        let consumer = {
            let channel = Arc::clone(&channel);
            thread::spawn(move || {
                // `try_pop`.
                let head = channel.head.load(Ordering::Relaxed);
                assert!(channel.slot_has_value.load(Ordering::Acquire));
                channel.slot_has_value.store(false, Ordering::Release);
                channel.head.store(head + 1, Ordering::Relaxed);
                // `take_producer_waiting`, then `notify` if it says so.
                if protocol.consumer_fence {
                    fence(Ordering::SeqCst);
                }
                let waiting = &channel.producer_waiting;
                waiting.load(Ordering::Relaxed) && waiting.swap(false, Ordering::SeqCst)
            })
        };
        // `wait_for_room`.
        let ready = channel.has_room() || {
            // (The waker is registered here; it only matters once notified.)
            channel.producer_waiting.store(true, Ordering::SeqCst);
            if protocol.producer_fence {
                fence(Ordering::SeqCst);
            }
            protocol.producer_recheck && channel.has_room()
        };
        let notified = consumer.join().expect("the consumer");
        assert!(
            ready || notified,
            "{LOST_WAKE_UP}: the producer waits for room the consumer made and was not \
             notified"
        );
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a weakened model and checks that loom finds the lost wake-up.
    fn assert_loses_a_wake_up(model: impl FnOnce() + std::panic::UnwindSafe) {
        let payload = std::panic::catch_unwind(model)
            .expect_err("loom found no lost wake-up in a weakened protocol");
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        assert!(
            message.contains(LOST_WAKE_UP),
            "the model failed for another reason: {message:?}"
        );
    }

    #[test]
    fn the_patched_sleep_protocol_never_loses_a_wake_up() {
        sleep(SleepProtocol::PATCHED);
    }

    #[test]
    fn without_the_sleepers_fence_a_wake_up_is_lost() {
        assert_loses_a_wake_up(|| {
            sleep(SleepProtocol {
                sleeper_fence: false,
                ..SleepProtocol::PATCHED
            })
        });
    }

    #[test]
    fn without_the_notifiers_fence_a_wake_up_is_lost() {
        assert_loses_a_wake_up(|| {
            sleep(SleepProtocol {
                notifier_fence: false,
                ..SleepProtocol::PATCHED
            })
        });
    }

    #[test]
    fn the_patched_room_handshake_never_loses_a_wake_up() {
        room(RoomProtocol::PATCHED);
    }

    #[test]
    fn without_the_producers_recheck_a_wake_up_is_lost() {
        assert_loses_a_wake_up(|| {
            room(RoomProtocol {
                producer_recheck: false,
                ..RoomProtocol::PATCHED
            })
        });
    }

    #[test]
    fn without_the_producers_fence_a_wake_up_is_lost() {
        assert_loses_a_wake_up(|| {
            room(RoomProtocol {
                producer_fence: false,
                ..RoomProtocol::PATCHED
            })
        });
    }

    #[test]
    fn without_the_consumers_fence_a_wake_up_is_lost() {
        assert_loses_a_wake_up(|| {
            room(RoomProtocol {
                consumer_fence: false,
                ..RoomProtocol::PATCHED
            })
        });
    }
}
