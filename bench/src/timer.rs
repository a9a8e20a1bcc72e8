//! A `timerfd` for waking a worker's poll at the next scheduled send.
//!
//! mio rounds poll timeouts up to whole milliseconds (epoll's unit); an open-loop
//! publisher at 100 k msg/s has a message due every 10 µs, and a millisecond of harness
//! oversleep would show up as broker latency. A timerfd registered with the poll wakes
//! it within microseconds. The worker also lowers its thread's timer slack (default
//! 50 µs) with [`set_thread_timer_slack_ns`].

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// A monotonic, non-blocking timerfd.
#[derive(Debug)]
pub struct TimerFd {
    /// The descriptor; closed on drop.
    fd: OwnedFd,
}

impl TimerFd {
    /// A disarmed timer.
    pub fn new() -> io::Result<TimerFd> {
        // SAFETY: timerfd_create takes no pointers; a negative result is an error.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(TimerFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Fires once, `delay` from now (at least 1 ns: a zero value would disarm it).
    pub fn arm_after(&self, delay: Duration) -> io::Result<()> {
        let delay = delay.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: libc::time_t::try_from(delay.as_secs()).unwrap_or(libc::time_t::MAX),
                tv_nsec: delay.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `spec` is a valid itimerspec for the duration of the call; the old
        // value pointer may be null.
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Consumes an expiry so the descriptor stops being readable; errors (nothing to
    /// read) are irrelevant.
    pub fn acknowledge(&self) {
        let mut expirations = [0u8; 8];
        // SAFETY: the buffer is 8 writable bytes, as timerfd reads require.
        let _ = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                expirations.as_mut_ptr().cast(),
                expirations.len(),
            )
        };
    }
}

impl AsRawFd for TimerFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Sets the calling thread's timer slack (how late the kernel may fire its timers).
/// Best effort: a failure leaves the default and only costs precision.
pub fn set_thread_timer_slack_ns(slack_ns: u64) {
    // SAFETY: PR_SET_TIMERSLACK takes an integer argument and no pointers.
    let _ = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, slack_ns as libc::c_ulong, 0, 0, 0) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn timer_wakes_a_poll_well_before_a_millisecond_rounding_would() {
        let timer = TimerFd::new().expect("timerfd");
        let mut poll = mio::Poll::new().expect("poll");
        let fd = timer.as_raw_fd();
        poll.registry()
            .register(
                &mut mio::unix::SourceFd(&fd),
                mio::Token(0),
                mio::Interest::READABLE,
            )
            .expect("register");
        let mut events = mio::Events::with_capacity(4);
        let start = Instant::now();
        timer.arm_after(Duration::from_micros(200)).expect("arm");
        poll.poll(&mut events, Some(Duration::from_secs(2)))
            .expect("poll");
        let waited = start.elapsed();
        assert!(events.iter().any(|e| e.token() == mio::Token(0)));
        assert!(waited >= Duration::from_micros(200), "{waited:?}");
        assert!(waited < Duration::from_secs(1), "{waited:?}");
        timer.acknowledge();
    }
}
