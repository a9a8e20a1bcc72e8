//! What a run tells its caller while it runs: a progress snapshot every second and each
//! second's latency histogram. The library prints nothing itself; the binary's observer
//! writes the progress line, the HdrHistogram interval log and the Prometheus file.

use hdrhistogram::Histogram;
use std::fmt;
use std::time::{Duration, SystemTime};

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connections are being set up.
    Setup,
    /// Messages are sent but not timed.
    WarmUp,
    /// Messages are sent and timed.
    Measure,
    /// Sending has stopped; waiting for what is still on its way.
    Drain,
    /// Storm: connections are being opened.
    Connect,
    /// Storm: every connection is open and idle.
    Hold,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Setup => "setup",
            Phase::WarmUp => "warm-up",
            Phase::Measure => "measure",
            Phase::Drain => "drain",
            Phase::Connect => "connect",
            Phase::Hold => "hold",
        })
    }
}

/// A once-a-second snapshot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Time since the run started.
    pub elapsed: Duration,
    /// Where the run is.
    pub phase: Phase,
    /// PUBLISHes sent so far (storm: connections established).
    pub sent: u64,
    /// PUBLISHes received so far, duplicates included (storm: connections failed).
    pub received: u64,
    /// Sent per second over the last interval.
    pub sent_per_sec: f64,
    /// Received per second over the last interval.
    pub received_per_sec: f64,
    /// QoS 1/2 acknowledgements so far.
    pub acked: u64,
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        match self.phase {
            Phase::Connect | Phase::Hold => write!(
                f,
                "[{secs:6.1}s {:<7}] connected {:>9} ({:>10.0}/s) failed {:>7}",
                self.phase, self.sent, self.sent_per_sec, self.received
            ),
            _ => write!(
                f,
                "[{secs:6.1}s {:<7}] sent {:>11} ({:>10.0}/s) received {:>11} ({:>10.0}/s) acked {:>11}",
                self.phase,
                self.sent,
                self.sent_per_sec,
                self.received,
                self.received_per_sec,
                self.acked
            ),
        }
    }
}

/// One second's latency samples (microseconds), by receive time.
#[derive(Debug)]
pub struct IntervalHistogram<'a> {
    /// Wall-clock time of the run's start (time zero of `start`).
    pub run_started: SystemTime,
    /// Start of the interval, since the run's start.
    pub start: Duration,
    /// Length of the interval.
    pub length: Duration,
    /// The samples of this interval.
    pub histogram: &'a Histogram<u64>,
    /// All samples of the run up to and including this interval.
    pub cumulative: &'a Histogram<u64>,
}

/// Receives what a run reports while it runs. Both methods default to doing nothing.
pub trait RunObserver {
    /// Called about once a second.
    fn progress(&mut self, _progress: &Progress) {}

    /// Called for each second that had latency samples, in order, a couple of seconds
    /// after it ended (the last ones at the end of the run).
    fn interval(&mut self, _interval: &IntervalHistogram<'_>) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;

impl RunObserver for NoObserver {}
