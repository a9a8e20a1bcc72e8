//! What a run found: [`Report`] (serialisable for `--json`, printable as a table) and
//! [`Comparison`], the side-by-side of several targets with ratios against the first.

use crate::config::PersistentSessions;
use crate::latency::LatencySummary;
use crate::procfs::ProcSample;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::fmt::{self, Write as _};

/// At most this many error lines are kept in a report; the rest are only counted.
pub const ERRORS_KEPT_MAX: usize = 20;

/// The outcome of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `fan-in`, `fan-out`, `p2p` or `storm`.
    pub scenario: String,
    /// Who talks to whom, in words.
    pub description: String,
    /// The target's name.
    pub target_name: String,
    /// The target's `host:port`.
    pub target_addr: String,
    /// Client threads used.
    pub threads: usize,
    /// Wall time of the run, setup included, in seconds.
    pub elapsed_secs: f64,
    /// Message scenarios' results.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<MessageReport>,
    /// Connection storm's results.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storm: Option<StormReport>,
    /// The broker's CPU and memory, when its pid was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker: Option<BrokerUsage>,
    /// The first [`ERRORS_KEPT_MAX`] connection failures during the run.
    pub errors: Vec<String>,
    /// All connection failures during the run.
    pub errors_total: u64,
}

/// Results of a fan-in, fan-out or point-to-point run.
#[derive(Debug, Clone, Serialize)]
pub struct MessageReport {
    /// QoS asked for.
    pub qos: u8,
    /// Lowest QoS a subscription was granted.
    pub granted_qos: u8,
    /// Bytes per payload.
    pub payload_bytes: usize,
    /// Which connections kept a session on the broker (`clean_session = 0`).
    pub persistent_sessions: PersistentSessions,
    /// Publishing connections.
    pub publishers: u32,
    /// Subscribing connections.
    pub subscribers: u32,
    /// Open-loop total publish rate; `None` = as fast as possible.
    pub rate_per_sec: Option<u64>,
    /// QoS 1/2 window per publisher.
    pub inflight_max: u16,
    /// Warm-up, seconds.
    pub warmup_secs: f64,
    /// Measured sending time, seconds.
    pub duration_secs: f64,
    /// Configured drain limit, seconds.
    pub drain_secs: f64,
    /// Drain time actually used, seconds.
    pub drain_used_secs: f64,
    /// Whether everything sent arrived (and was acknowledged) before the drain limit.
    pub drained: bool,
    /// PUBLISHes sent (warm-up included).
    pub sent: u64,
    /// Of those, due after the warm-up.
    pub sent_measured: u64,
    /// Open loop: messages due that were never sent because the broker held the
    /// publishers back (full inflight window or socket). Their latency is unknown.
    pub not_sent: u64,
    /// QoS 1/2 acknowledgements received by publishers.
    pub acked: u64,
    /// Deliveries expected: each message times the subscribers it is for.
    pub expected: u64,
    /// Deliveries received, duplicates included.
    pub received: u64,
    /// First deliveries of messages due after the warm-up (the latency samples).
    pub received_measured: u64,
    /// Expected deliveries that never arrived.
    pub lost: u64,
    /// Deliveries of a message already delivered to that subscriber.
    pub duplicated: u64,
    /// First deliveries after a later message of the same publisher.
    pub reordered: u64,
    /// Deliveries without a valid header or from a publisher the subscriber does not
    /// expect.
    pub unexpected: u64,
    /// Acknowledgements for packet ids not in flight (a broker bug).
    pub unexpected_acks: u64,
    /// Arrivals too late to be checked for duplication (see `tracker`).
    pub unchecked_late: u64,
    /// Measured messages sent per second.
    pub send_rate_per_sec: f64,
    /// Measured deliveries per second (`received_measured / duration`).
    pub receive_rate_per_sec: f64,
    /// Latency from scheduled send to receipt, microseconds, warm-up excluded.
    pub latency_us: LatencySummary,
    /// Per (publisher, subscriber) counts.
    pub streams: Vec<StreamReport>,
    /// The latency samples behind `latency_us`.
    #[serde(skip)]
    pub latency_histogram: Histogram<u64>,
}

/// One publisher as seen by one subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StreamReport {
    /// Publisher id.
    pub publisher: u32,
    /// Subscriber id.
    pub subscriber: u32,
    /// Messages the publisher sent.
    pub expected: u64,
    /// Deliveries received, duplicates included.
    pub received: u64,
    /// Never arrived.
    pub lost: u64,
    /// Arrived more than once (each extra arrival counts).
    pub duplicated: u64,
    /// Arrived after a later one.
    pub reordered: u64,
}

/// Results of a connection storm.
#[derive(Debug, Clone, Serialize)]
pub struct StormReport {
    /// Connections to open.
    pub connections: u32,
    /// Connections that completed CONNECT/CONNACK.
    pub established: u64,
    /// Connections that failed (connect, refused, timeout).
    pub failed: u64,
    /// Connections not attempted within the connect phase limit.
    pub not_attempted: u64,
    /// Open-loop connect rate asked for.
    pub connect_rate_target: Option<u64>,
    /// From the first connect to the last CONNACK, seconds.
    pub connect_secs: f64,
    /// `established / connect_secs`.
    pub connect_rate_per_sec: f64,
    /// TCP connect + CONNECT/CONNACK, microseconds (from the scheduled time in open
    /// loop).
    pub handshake_us: LatencySummary,
    /// Idle hold, seconds.
    pub hold_secs: f64,
    /// Connections the broker had closed by the end of the hold.
    pub closed_by_broker: u64,
    /// Time to send DISCONNECT on every connection and close it, seconds.
    pub disconnect_secs: f64,
}

/// The broker's CPU and memory over a run (from `/proc`).
#[derive(Debug, Clone, Serialize)]
pub struct BrokerUsage {
    /// The broker's pid.
    pub pid: u32,
    /// CPU seconds (user + system) from the start to the end of the run.
    pub cpu_secs: f64,
    /// `cpu_secs` per million deliveries (all deliveries, warm-up and drain included).
    pub cpu_secs_per_million_delivered: Option<f64>,
    /// Before the run.
    pub before: ProcSample,
    /// After the run.
    pub after: ProcSample,
    /// Storm: resident memory at the end of the hold, all connections open.
    pub rss_bytes_held: Option<u64>,
    /// Storm: `(rss_held - rss_before) / established`.
    pub rss_bytes_per_connection: Option<f64>,
}

impl Report {
    /// Keeps the first [`ERRORS_KEPT_MAX`] of `errors` and counts them all.
    pub fn set_errors(&mut self, errors: Vec<String>) {
        self.errors_total = errors.len() as u64;
        self.errors = errors.into_iter().take(ERRORS_KEPT_MAX).collect();
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// `1234567` as `1,234,567`.
pub fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let row = |f: &mut fmt::Formatter<'_>, key: &str, value: String| {
            writeln!(f, "  {key:<16} {value}")
        };
        writeln!(
            f,
            "cutie-bench {} -> {} ({})",
            self.scenario, self.target_name, self.target_addr
        )?;
        row(f, "scenario", self.description.clone())?;
        if let Some(m) = &self.messages {
            let qos = if m.granted_qos < m.qos {
                format!("{} (granted {})", m.qos, m.granted_qos)
            } else {
                m.qos.to_string()
            };
            let load = match m.rate_per_sec {
                Some(rate) => format!("open loop, {} msg/s in total", thousands(rate)),
                None => "as fast as possible".to_owned(),
            };
            let window = if m.qos > 0 {
                format!(", inflight window {}", m.inflight_max)
            } else {
                String::new()
            };
            row(f, "qos", format!("{qos}{window}"))?;
            row(f, "load", format!("{load}, payload {} B", m.payload_bytes))?;
            row(
                f,
                "sessions",
                match m.persistent_sessions {
                    PersistentSessions::None => "clean".to_owned(),
                    PersistentSessions::Subscribers => {
                        "subscribers persistent (clean_session = 0), publishers clean".to_owned()
                    }
                    PersistentSessions::All => "all persistent (clean_session = 0)".to_owned(),
                },
            )?;
            row(
                f,
                "time",
                format!(
                    "warm-up {:.1} s, measured {:.1} s, drain {:.2} s of {:.1} s ({}), {} threads",
                    m.warmup_secs,
                    m.duration_secs,
                    m.drain_used_secs,
                    m.drain_secs,
                    if m.drained {
                        "all delivered"
                    } else {
                        "limit reached"
                    },
                    self.threads
                ),
            )?;
            row(
                f,
                "sent",
                format!(
                    "{} ({} measured: {} msg/s){}",
                    thousands(m.sent),
                    thousands(m.sent_measured),
                    format_number(m.send_rate_per_sec),
                    if m.not_sent > 0 {
                        format!(
                            ", {} due but held back by the broker",
                            thousands(m.not_sent)
                        )
                    } else {
                        String::new()
                    }
                ),
            )?;
            if m.qos > 0 {
                row(f, "acked", thousands(m.acked))?;
            }
            row(
                f,
                "received",
                format!(
                    "{} of {} expected ({} measured: {} msg/s)",
                    thousands(m.received),
                    thousands(m.expected),
                    thousands(m.received_measured),
                    format_number(m.receive_rate_per_sec)
                ),
            )?;
            row(f, "lost", thousands(m.lost))?;
            row(f, "duplicated", thousands(m.duplicated))?;
            row(f, "reordered", thousands(m.reordered))?;
            if m.unexpected > 0 || m.unexpected_acks > 0 || m.unchecked_late > 0 {
                row(
                    f,
                    "unexpected",
                    format!(
                        "{} messages, {} acks, {} too late to check",
                        m.unexpected, m.unexpected_acks, m.unchecked_late
                    ),
                )?;
            }
            let l = &m.latency_us;
            row(
                f,
                "latency (us)",
                format!(
                    "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {:.0}, n = {})",
                    l.p50,
                    l.p90,
                    l.p99,
                    l.p999,
                    l.max,
                    l.mean,
                    thousands(l.count)
                ),
            )?;
            let faulty: Vec<&StreamReport> = m
                .streams
                .iter()
                .filter(|s| s.lost + s.duplicated + s.reordered > 0)
                .collect();
            if !faulty.is_empty() {
                writeln!(f, "  streams with faults (publisher -> subscriber):")?;
                writeln!(
                    f,
                    "    {:>9} {:>10} {:>12} {:>12} {:>10} {:>10} {:>10}",
                    "publisher",
                    "subscriber",
                    "expected",
                    "received",
                    "lost",
                    "duplicated",
                    "reordered"
                )?;
                for s in faulty.iter().take(16) {
                    writeln!(
                        f,
                        "    {:>9} {:>10} {:>12} {:>12} {:>10} {:>10} {:>10}",
                        s.publisher,
                        s.subscriber,
                        s.expected,
                        s.received,
                        s.lost,
                        s.duplicated,
                        s.reordered
                    )?;
                }
                if faulty.len() > 16 {
                    writeln!(f, "    ... and {} more", faulty.len() - 16)?;
                }
            }
        }
        if let Some(s) = &self.storm {
            row(
                f,
                "load",
                match s.connect_rate_target {
                    Some(rate) => format!("open loop, {} connects/s", thousands(rate)),
                    None => "connect as fast as possible".to_owned(),
                } + &format!(", {} threads", self.threads),
            )?;
            row(
                f,
                "established",
                format!(
                    "{} of {} ({} failed, {} not attempted)",
                    thousands(s.established),
                    thousands(u64::from(s.connections)),
                    s.failed,
                    s.not_attempted
                ),
            )?;
            row(
                f,
                "connect",
                format!(
                    "{:.3} s until the last CONNACK, {} connections/s",
                    s.connect_secs,
                    format_number(s.connect_rate_per_sec)
                ),
            )?;
            let l = &s.handshake_us;
            row(
                f,
                "handshake (us)",
                format!(
                    "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (n = {})",
                    l.p50,
                    l.p90,
                    l.p99,
                    l.p999,
                    l.max,
                    thousands(l.count)
                ),
            )?;
            row(
                f,
                "hold",
                format!(
                    "{:.1} s idle, {} closed by the broker",
                    s.hold_secs, s.closed_by_broker
                ),
            )?;
            row(f, "disconnect", format!("{:.3} s", s.disconnect_secs))?;
        }
        if let Some(b) = &self.broker {
            let mut line = format!("pid {}, cpu {:.2} s", b.pid, b.cpu_secs);
            if let Some(per_million) = b.cpu_secs_per_million_delivered {
                let _ = write!(line, " ({per_million:.3} s per million delivered)");
            }
            let _ = write!(
                line,
                ", rss {:.1} -> {:.1} MiB (peak {:.1})",
                mib(b.before.rss_bytes),
                mib(b.after.rss_bytes),
                mib(b.after.rss_peak_bytes)
            );
            if let (Some(held), Some(per)) = (b.rss_bytes_held, b.rss_bytes_per_connection) {
                let _ = write!(
                    line,
                    ", {:.1} MiB held = {:.0} B per connection",
                    mib(held),
                    per
                );
            }
            row(f, "broker", line)?;
        }
        if self.errors_total == 0 {
            row(f, "errors", "none".to_owned())?;
        } else {
            row(
                f,
                "errors",
                format!("{} connection failures:", self.errors_total),
            )?;
            for error in &self.errors {
                writeln!(f, "    {error}")?;
            }
            if self.errors_total > self.errors.len() as u64 {
                writeln!(
                    f,
                    "    ... and {} more",
                    self.errors_total - self.errors.len() as u64
                )?;
            }
        }
        Ok(())
    }
}

/// One metric across the compared targets.
#[derive(Debug, Clone, Serialize)]
pub struct ComparisonRow {
    /// What is measured, with its unit.
    pub metric: String,
    /// One value per target (`None` where it does not apply).
    pub values: Vec<Option<f64>>,
    /// `value / first target's value` per target.
    pub ratios: Vec<Option<f64>>,
}

/// The same scenario run against several targets.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// The target names, in run order.
    pub targets: Vec<String>,
    /// The metrics, one row each.
    pub rows: Vec<ComparisonRow>,
    /// The full reports.
    pub runs: Vec<Report>,
}

type Metric = (&'static str, fn(&Report) -> Option<f64>);

const MESSAGE_METRICS: &[Metric] = &[
    ("received msg/s (measured)", |r| {
        r.messages.as_ref().map(|m| m.receive_rate_per_sec)
    }),
    ("sent msg/s (measured)", |r| {
        r.messages.as_ref().map(|m| m.send_rate_per_sec)
    }),
    ("latency p50 (us)", |r| {
        r.messages.as_ref().map(|m| m.latency_us.p50 as f64)
    }),
    ("latency p90 (us)", |r| {
        r.messages.as_ref().map(|m| m.latency_us.p90 as f64)
    }),
    ("latency p99 (us)", |r| {
        r.messages.as_ref().map(|m| m.latency_us.p99 as f64)
    }),
    ("latency p99.9 (us)", |r| {
        r.messages.as_ref().map(|m| m.latency_us.p999 as f64)
    }),
    ("latency max (us)", |r| {
        r.messages.as_ref().map(|m| m.latency_us.max as f64)
    }),
    ("lost", |r| r.messages.as_ref().map(|m| m.lost as f64)),
    ("duplicated", |r| {
        r.messages.as_ref().map(|m| m.duplicated as f64)
    }),
    ("reordered", |r| {
        r.messages.as_ref().map(|m| m.reordered as f64)
    }),
    ("not sent (held back)", |r| {
        r.messages.as_ref().map(|m| m.not_sent as f64)
    }),
];

const STORM_METRICS: &[Metric] = &[
    ("established", |r| {
        r.storm.as_ref().map(|s| s.established as f64)
    }),
    ("failed", |r| r.storm.as_ref().map(|s| s.failed as f64)),
    ("connect time (s)", |r| {
        r.storm.as_ref().map(|s| s.connect_secs)
    }),
    ("connections/s", |r| {
        r.storm.as_ref().map(|s| s.connect_rate_per_sec)
    }),
    ("handshake p50 (us)", |r| {
        r.storm.as_ref().map(|s| s.handshake_us.p50 as f64)
    }),
    ("handshake p99 (us)", |r| {
        r.storm.as_ref().map(|s| s.handshake_us.p99 as f64)
    }),
    ("handshake max (us)", |r| {
        r.storm.as_ref().map(|s| s.handshake_us.max as f64)
    }),
];

const BROKER_METRICS: &[Metric] = &[
    ("broker cpu (s)", |r| r.broker.as_ref().map(|b| b.cpu_secs)),
    ("broker cpu s / M delivered", |r| {
        r.broker
            .as_ref()
            .and_then(|b| b.cpu_secs_per_million_delivered)
    }),
    ("broker rss after (MiB)", |r| {
        r.broker.as_ref().map(|b| mib(b.after.rss_bytes))
    }),
    ("broker rss peak (MiB)", |r| {
        r.broker.as_ref().map(|b| mib(b.after.rss_peak_bytes))
    }),
    ("broker rss held (MiB)", |r| {
        r.broker.as_ref().and_then(|b| b.rss_bytes_held.map(mib))
    }),
    ("broker bytes / connection", |r| {
        r.broker.as_ref().and_then(|b| b.rss_bytes_per_connection)
    }),
];

impl Comparison {
    /// Builds the rows from `runs` (in target order); metrics no run has are left out.
    pub fn new(runs: Vec<Report>) -> Comparison {
        let mut rows = Vec::new();
        for (metric, value_of) in MESSAGE_METRICS
            .iter()
            .chain(STORM_METRICS)
            .chain(BROKER_METRICS)
        {
            let values: Vec<Option<f64>> = runs.iter().map(value_of).collect();
            if values.iter().all(Option::is_none) {
                continue;
            }
            let first = values.first().copied().flatten();
            let ratios = values
                .iter()
                .map(|value| match (value, first) {
                    (Some(value), Some(first)) if first != 0.0 => Some(value / first),
                    (Some(value), Some(_)) if *value == 0.0 => Some(1.0),
                    _ => None,
                })
                .collect();
            rows.push(ComparisonRow {
                metric: (*metric).to_owned(),
                values,
                ratios,
            });
        }
        Comparison {
            targets: runs.iter().map(|r| r.target_name.clone()).collect(),
            rows,
            runs,
        }
    }
}

/// A rate or other float for a table: digits grouped from 100 up, 3 decimals below.
pub fn format_number(value: f64) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    let sign = if value < 0.0 { "-" } else { "" };
    let magnitude = value.abs();
    if magnitude >= 100.0 || magnitude.fract() == 0.0 {
        format!("{sign}{}", thousands(magnitude.round() as u64))
    } else {
        format!("{sign}{magnitude:.3}")
    }
}

fn format_value(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), format_number)
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let first = self.targets.first().cloned().unwrap_or_default();
        let mut header = vec!["metric".to_owned()];
        header.extend(self.targets.iter().cloned());
        header.extend(self.targets.iter().skip(1).map(|t| format!("{t}/{first}")));
        let mut lines = vec![header];
        for row in &self.rows {
            let mut line = vec![row.metric.clone()];
            line.extend(row.values.iter().map(|v| format_value(*v)));
            line.extend(
                row.ratios
                    .iter()
                    .skip(1)
                    .map(|r| r.map_or("-".to_owned(), |r| format!("{r:.2}x"))),
            );
            lines.push(line);
        }
        let columns = lines.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                lines
                    .iter()
                    .map(|l| l.get(c).map_or(0, String::len))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for (i, line) in lines.iter().enumerate() {
            let mut text = String::new();
            for (c, cell) in line.iter().enumerate() {
                if c == 0 {
                    let _ = write!(text, "{cell:<w$}", w = widths[c]);
                } else {
                    let _ = write!(text, "  {cell:>w$}", w = widths[c]);
                }
            }
            writeln!(f, "{}", text.trim_end())?;
            if i == 0 {
                writeln!(f, "{}", "-".repeat(text.trim_end().len()))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped_from_100_and_decimal_below() {
        assert_eq!(format_number(2_193_888.4), "2,193,888");
        assert_eq!(format_number(27.3624), "27.362");
        assert_eq!(format_number(5.0), "5");
        assert_eq!(format_number(-1500.0), "-1,500");
    }

    #[test]
    fn comparison_ratios_are_against_the_first_target() {
        fn report(name: &str, received_per_sec: f64, lost: u64) -> Report {
            Report {
                scenario: "fan-in".into(),
                description: String::new(),
                target_name: name.into(),
                target_addr: String::new(),
                threads: 1,
                elapsed_secs: 1.0,
                messages: Some(MessageReport {
                    qos: 1,
                    granted_qos: 1,
                    payload_bytes: 64,
                    persistent_sessions: PersistentSessions::None,
                    publishers: 1,
                    subscribers: 1,
                    rate_per_sec: None,
                    inflight_max: 10,
                    warmup_secs: 0.0,
                    duration_secs: 1.0,
                    drain_secs: 1.0,
                    drain_used_secs: 0.0,
                    drained: true,
                    sent: 0,
                    sent_measured: 0,
                    not_sent: 0,
                    acked: 0,
                    expected: 0,
                    received: 0,
                    received_measured: 0,
                    lost,
                    duplicated: 0,
                    reordered: 0,
                    unexpected: 0,
                    unexpected_acks: 0,
                    unchecked_late: 0,
                    send_rate_per_sec: 0.0,
                    receive_rate_per_sec: received_per_sec,
                    latency_us: LatencySummary::of(&crate::latency::new_histogram()),
                    streams: Vec::new(),
                    latency_histogram: crate::latency::new_histogram(),
                }),
                storm: None,
                broker: None,
                errors: Vec::new(),
                errors_total: 0,
            }
        }
        let comparison = Comparison::new(vec![report("a", 1000.0, 0), report("b", 250.0, 7)]);
        let row = |metric: &str| {
            comparison
                .rows
                .iter()
                .find(|r| r.metric == metric)
                .unwrap_or_else(|| panic!("no row {metric}"))
                .clone()
        };
        let received = row("received msg/s (measured)");
        assert_eq!(received.values, vec![Some(1000.0), Some(250.0)]);
        assert_eq!(received.ratios, vec![Some(1.0), Some(0.25)]);
        assert_eq!(
            row("lost").ratios,
            vec![Some(1.0), None],
            "7 / 0 has no ratio"
        );
        assert!(comparison
            .rows
            .iter()
            .all(|r| !r.metric.starts_with("broker")));
        let table = comparison.to_string();
        assert!(
            table.lines().next().is_some_and(|l| l.contains("b/a")),
            "{table}"
        );
        assert!(table.contains("0.25x"), "{table}");
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
