//! `cutie-bench`: a load-test harness for MQTT 3.1.1 brokers (cutie, Mosquitto, any).
//!
//! It speaks MQTT only through `cutie-codec` and depends on no other crate of ours. A
//! run is [`run`]`(&`[`RunConfig`]`, observer) -> `[`Report`]; the `cutie-bench` binary is
//! a thin command line around it.
//!
//! Scenarios: fan-in (N publishers -> 1 wildcard subscriber), fan-out (1 -> M),
//! point-to-point (N pairs), each at QoS 0, 1 or 2, open loop at a fixed total rate
//! (latency from the *scheduled* send time, so a stalled broker cannot hide behind a
//! publisher that waited for it) or as fast as possible with a bounded inflight window;
//! and the connection storm (connect rate, time until all connected, idle hold for
//! memory per connection, disconnect). Every payload carries publisher id, sequence and
//! timestamp; subscribers count lost, duplicated and reordered messages per stream.
//! Subscribers (or every connection) can keep persistent sessions (`clean_session = 0`),
//! which a broker with durability has to log; they are discarded after the run.
//!
//! Modules:
//! - [`ack`]: the `ack-latency` probe: PUBACK latency of a steady QoS 1 publisher while
//!   persistent subscribers make the broker log (and compact).
//! - [`config`]: what to run ([`RunConfig`], [`Scenario`], defaults, validation).
//! - [`payload`]: the payload header and the pre-encoded PUBLISH template.
//! - [`tracker`]: per-stream loss / duplication / reordering counters.
//! - [`latency`]: the one histogram shape and its percentile summary.
//! - [`client`]: blocking connect, CONNECT/CONNACK, SUBSCRIBE/SUBACK with deadlines.
//! - [`worker`]: one client thread of a message scenario (a `mio` loop over many
//!   connections).
//! - [`runner`]: the coordinator of a message scenario: setup, start, drain, deadline.
//! - [`storm`]: the connection storm.
//! - [`timer`]: a `timerfd` for microsecond-precise open-loop sends.
//! - [`procfs`]: the broker's CPU time and memory from `/proc`.
//! - [`observe`]: progress and per-second histograms handed out during a run.
//! - [`report`]: [`Report`], its table, and [`Comparison`] of several targets.
//! - [`prom`]: Prometheus text exposition of the latency histogram and counters.
//! - [`hdrlog`]: HdrHistogram interval log writer.
//! - [`error`]: [`ClientError`] (one connection) and [`BenchError`] (a run).

pub mod ack;
pub mod client;
pub mod config;
pub mod error;
pub mod hdrlog;
pub mod latency;
pub mod observe;
pub mod payload;
pub mod procfs;
pub mod prom;
pub mod report;
pub mod runner;
pub mod storm;
pub mod timer;
pub mod tracker;
pub mod worker;

pub use config::{ConnectOptions, MessageConfig, RunConfig, Scenario, StormConfig, Workload};
pub use error::{BenchError, ClientError};
pub use observe::{NoObserver, Progress, RunObserver};
pub use report::{Comparison, Report};

/// Runs one scenario against one target and reports what it found.
///
/// Returns by itself even if the broker hangs: every blocking step has a timeout, the
/// message loop sees its stop flag within 50 ms, and threads that miss the hard
/// deadline (warm-up + duration + drain + a margin) turn into
/// [`BenchError::Deadline`]; a caller that gets it should exit rather than wait.
pub fn run(config: &RunConfig, observer: &mut dyn RunObserver) -> Result<Report, BenchError> {
    config.validate()?;
    match &config.workload {
        Workload::Messages(messages) => runner::run_messages(config, messages, observer),
        Workload::Storm(storm) => storm::run_storm(config, storm, observer),
    }
}

/// Raises this process's open-file limit to its hard limit (a storm needs one
/// descriptor per connection); returns the new soft limit.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: `limit` is a valid rlimit for setrlimit to read.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}
