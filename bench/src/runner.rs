//! The coordinator of a message scenario.
//!
//! 1. Plans the connections (subscribers first, then publishers) and spreads them
//!    round-robin over `threads` [`worker`]s.
//! 2. Waits until every worker has set up its connections (bounded by the connect and
//!    I/O timeouts), then gives them one common start instant.
//! 3. Watches the shared counters: a progress snapshot every second, each second's
//!    latency histogram passed on in order. Sending stops at warm-up + duration; the
//!    run stops as soon as every expected delivery has arrived and every QoS 1/2
//!    PUBLISH is acknowledged, or when the drain limit passes.
//! 4. Raises `stop`, collects every worker's result by a hard deadline (a worker that
//!    misses it is reported as [`BenchError::Deadline`]; the caller should exit), and
//!    builds the [`Report`].

use crate::config::{MessageConfig, RunConfig};
use crate::error::BenchError;
use crate::latency::{self, new_histogram, LatencySummary};
use crate::observe::{IntervalHistogram, Phase, Progress, RunObserver};
use crate::procfs;
use crate::report::{BrokerUsage, MessageReport, Report, StreamReport};
use crate::worker::{self, Command, ConnSpec, Plan, RoleSpec, Shared, WorkerEvent, WorkerResult};
use crossbeam_channel::{unbounded, RecvTimeoutError, Sender};
use cutie_codec::{QoS, TopicName};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Time given to threads to hand in their results after `stop`, on top of their poll
/// interval.
pub const JOIN_MARGIN: Duration = Duration::from_secs(5);

/// How often the coordinator looks at the counters.
const TICK: Duration = Duration::from_millis(20);

/// Resolves `host:port` to its first address.
pub fn resolve(addr: &str) -> Result<SocketAddr, BenchError> {
    let resolve_error = |reason: String| BenchError::Resolve {
        addr: addr.to_owned(),
        reason,
    };
    addr.to_socket_addrs()
        .map_err(|e| resolve_error(e.to_string()))?
        .next()
        .ok_or_else(|| resolve_error("no address".to_owned()))
}

/// A run id that keeps the topics and client ids of concurrent or successive runs apart.
pub fn run_id() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| {
            d.subsec_nanos() ^ (d.as_secs() as u32).rotate_left(7)
        });
    nanos ^ std::process::id().rotate_left(16)
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Runs a fan-in, fan-out or point-to-point scenario.
pub fn run_messages(
    config: &RunConfig,
    m: &MessageConfig,
    observer: &mut dyn RunObserver,
) -> Result<Report, BenchError> {
    let started = Instant::now();
    let addr = resolve(&config.target_addr)?;
    let run_id = run_id();
    let prefix = m
        .topic_prefix
        .clone()
        .unwrap_or_else(|| format!("cutie-bench/{run_id:08x}"));
    let scenario = m.scenario;
    let mut specs = Vec::new();
    for id in 0..scenario.subscribers() {
        specs.push(ConnSpec {
            client_id: format!("cb{run_id:08x}s{id}"),
            clean_session: !m.persistent_sessions.persistent(true),
            role: RoleSpec::Subscriber {
                id,
                filter: scenario.filter(&prefix, id),
                publishers: scenario.publishers_of(id),
            },
        });
    }
    for id in 0..scenario.publishers() {
        let topic = scenario.topic(&prefix, id);
        let topic = TopicName::new(topic.clone())
            .map_err(|e| BenchError::Config(format!("topic {topic:?}: {e}")))?;
        specs.push(ConnSpec {
            client_id: format!("cb{run_id:08x}p{id}"),
            clean_session: !m.persistent_sessions.persistent(false),
            role: RoleSpec::Publisher { id, topic },
        });
    }
    let total_connections = specs.len();
    let persistent_client_ids: Vec<String> = specs
        .iter()
        .filter(|spec| !spec.clean_session)
        .map(|spec| spec.client_id.clone())
        .collect();
    let threads = m.threads.min(total_connections).max(1);
    let mut per_worker: Vec<Vec<ConnSpec>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, spec) in specs.into_iter().enumerate() {
        per_worker[i % threads].push(spec);
    }
    let most_per_worker = per_worker.iter().map(Vec::len).max().unwrap_or(0) as u32;
    // Each connection's setup is a connect plus at most two answered packets.
    let setup_max = (config.connect.connect_timeout + config.connect.io_timeout * 2)
        * most_per_worker
        + Duration::from_secs(1);

    let warmup_end_ns = duration_ns(m.warmup);
    let send_end_ns = duration_ns(m.warmup + m.duration);
    let plan = Arc::new(Plan {
        addr,
        connect: config.connect.clone(),
        qos: m.qos,
        payload_bytes: m.payload_bytes,
        rate_per_sec: m.rate_per_sec,
        publishers: scenario.publishers(),
        inflight_max: m.inflight_max,
        warmup_end_ns,
        send_end_ns,
    });
    let shared = Arc::new(Shared::default());
    let (events_tx, events_rx) = unbounded::<WorkerEvent>();
    let mut command_txs: Vec<Sender<Command>> = Vec::with_capacity(threads);
    for (worker, specs) in per_worker.into_iter().enumerate() {
        let (command_tx, command_rx) = unbounded();
        command_txs.push(command_tx);
        let (plan, shared, events_tx) = (plan.clone(), shared.clone(), events_tx.clone());
        std::thread::Builder::new()
            .name(format!("bench-worker-{worker}"))
            .spawn(move || {
                worker::run(
                    worker, plan, specs, shared, command_rx, events_tx, setup_max,
                )
            })
            .map_err(BenchError::Spawn)?;
    }
    drop(events_tx);
    let abort = |command_txs: &[Sender<Command>]| {
        for tx in command_txs {
            let _ = tx.send(Command::Abort);
        }
    };

    // Setup.
    observer.progress(&Progress {
        elapsed: started.elapsed(),
        phase: Phase::Setup,
        sent: 0,
        received: 0,
        sent_per_sec: 0.0,
        received_per_sec: 0.0,
        acked: 0,
    });
    let setup_deadline = Instant::now() + setup_max;
    let mut ready = 0;
    let mut failures = Vec::new();
    while ready < threads {
        match events_rx.recv_deadline(setup_deadline) {
            Ok(WorkerEvent::Ready { failures: f, .. }) => {
                ready += 1;
                failures.extend(f);
                if !failures.is_empty() {
                    break;
                }
            }
            Ok(_) => {}
            Err(_) => {
                abort(&command_txs);
                return Err(BenchError::Deadline {
                    what: format!(
                        "{} of {threads} client threads did not finish setting up",
                        threads - ready
                    ),
                    deadline_secs: setup_max.as_secs_f64(),
                });
            }
        }
    }
    if let Some(first) = failures.first() {
        abort(&command_txs);
        // Sessions set up before the failure would stay on the broker.
        let _ = discard_sessions(addr, &config.connect, &persistent_client_ids);
        return Err(BenchError::Setup {
            failed: failures.len(),
            total: total_connections,
            first: first.clone(),
        });
    }

    // Run.
    let broker_before = config.broker_pid.and_then(|pid| procfs::sample(pid).ok());
    let t0 = Instant::now() + Duration::from_millis(5);
    for tx in &command_txs {
        let _ = tx.send(Command::Start(t0));
    }
    let send_end = t0 + m.warmup + m.duration;
    let drain_deadline = send_end + m.drain;
    let hard_deadline = drain_deadline + worker::POLL_TIMEOUT_MAX + JOIN_MARGIN;
    let deliveries_per_message = match scenario {
        crate::config::Scenario::FanOut { subscribers } => u64::from(subscribers),
        _ => 1,
    };
    let publishers = scenario.publishers();
    let mut intervals = IntervalMerger::new(t0);
    let mut next_progress = t0 + Duration::from_secs(1);
    let (mut last_sent, mut last_received) = (0u64, 0u64);
    let mut results: Vec<WorkerResult> = Vec::with_capacity(threads);
    let mut drained = false;
    let stopped_at;
    loop {
        let now = Instant::now();
        let done_publishing =
            shared.publishers_done.load(Ordering::Acquire) >= publishers && now >= send_end;
        if done_publishing {
            let sent = shared.sent.load(Ordering::Relaxed);
            let all_delivered =
                shared.distinct.load(Ordering::Relaxed) >= sent * deliveries_per_message;
            let all_acked =
                m.qos == QoS::AtMostOnce || shared.acked.load(Ordering::Relaxed) >= sent;
            if all_delivered && all_acked {
                drained = true;
            }
        }
        if drained || now >= drain_deadline {
            stopped_at = now;
            break;
        }
        if now >= next_progress {
            let sent = shared.sent.load(Ordering::Relaxed);
            let received = shared.received.load(Ordering::Relaxed);
            let elapsed = now.saturating_duration_since(t0);
            let phase = if now < t0 + m.warmup {
                Phase::WarmUp
            } else if now < send_end {
                Phase::Measure
            } else {
                Phase::Drain
            };
            observer.progress(&Progress {
                elapsed,
                phase,
                sent,
                received,
                sent_per_sec: (sent - last_sent) as f64,
                received_per_sec: (received - last_received) as f64,
                acked: shared.acked.load(Ordering::Relaxed),
            });
            (last_sent, last_received) = (sent, received);
            next_progress += Duration::from_secs(1);
        }
        match events_rx.recv_timeout(TICK) {
            Ok(WorkerEvent::Interval { index, histogram }) => intervals.add(index, histogram),
            Ok(WorkerEvent::Finished(result)) => results.push(*result),
            Ok(WorkerEvent::Ready { .. }) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                stopped_at = Instant::now();
                break;
            }
        }
        let current = now.saturating_duration_since(t0).as_secs();
        intervals.emit_before(current.saturating_sub(1), observer);
    }
    shared.stop.store(true, Ordering::Release);
    while results.len() < threads {
        match events_rx.recv_deadline(hard_deadline) {
            Ok(WorkerEvent::Interval { index, histogram }) => intervals.add(index, histogram),
            Ok(WorkerEvent::Finished(result)) => results.push(*result),
            Ok(WorkerEvent::Ready { .. }) => {}
            Err(_) => {
                return Err(BenchError::Deadline {
                    what: format!(
                        "{} of {threads} client threads did not stop",
                        threads - results.len()
                    ),
                    deadline_secs: hard_deadline.saturating_duration_since(t0).as_secs_f64(),
                })
            }
        }
    }
    while let Ok(event) = events_rx.try_recv() {
        if let WorkerEvent::Interval { index, histogram } = event {
            intervals.add(index, histogram);
        }
    }
    intervals.emit_before(u64::MAX, observer);
    let broker_after = config.broker_pid.and_then(|pid| procfs::sample(pid).ok());
    // After the broker's usage is sampled: the clean-up is not part of the measurement.
    let cleanup_errors = discard_sessions(addr, &config.connect, &persistent_client_ids);

    let mut report = build_report(config, m, threads, results, drained, cleanup_errors);
    if let Some(report_messages) = &mut report.messages {
        report_messages.drain_used_secs =
            stopped_at.saturating_duration_since(send_end).as_secs_f64();
    }
    if let (Some(pid), Some(before), Some(after)) = (config.broker_pid, broker_before, broker_after)
    {
        let cpu_secs = (after.cpu_secs - before.cpu_secs).max(0.0);
        let delivered = report.messages.as_ref().map_or(0, |m| m.received);
        report.broker = Some(BrokerUsage {
            pid,
            cpu_secs,
            cpu_secs_per_million_delivered: (delivered > 0)
                .then(|| cpu_secs / (delivered as f64 / 1e6)),
            before,
            after,
            rss_bytes_held: None,
            rss_bytes_per_connection: None,
        });
    }
    report.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Discards the sessions of `client_ids` on the broker: connects each with
/// `clean_session = 1` [MQTT-3.1.2-6] and disconnects. Stops at the first failure (a
/// broker that does not answer would cost the I/O timeout per id) and returns what went
/// wrong, naming the sessions left behind.
pub fn discard_sessions(
    addr: SocketAddr,
    connect: &crate::config::ConnectOptions,
    client_ids: &[String],
) -> Vec<String> {
    for (done, client_id) in client_ids.iter().enumerate() {
        let discarded = crate::client::connect(addr, client_id, true, connect, 64 * 1024).and_then(
            |mut connected| {
                crate::client::write_packet(
                    &mut connected.stream,
                    &cutie_codec::Packet::Disconnect,
                    "writing DISCONNECT",
                )
            },
        );
        if let Err(e) = discarded {
            return vec![format!(
                "{client_id}: discarding its session after the run: {e} ({} persistent \
                 sessions left on the broker)",
                client_ids.len() - done
            )];
        }
    }
    Vec::new()
}

/// Collects the workers' per-second histograms and hands each second on once.
#[derive(Debug)]
struct IntervalMerger {
    run_started: SystemTime,
    pending: BTreeMap<u64, Histogram<u64>>,
    cumulative: Option<Histogram<u64>>,
}

impl IntervalMerger {
    /// A merger for a run whose time zero is `t0`.
    fn new(t0: Instant) -> IntervalMerger {
        let now = Instant::now();
        let run_started = if t0 >= now {
            SystemTime::now() + (t0 - now)
        } else {
            SystemTime::now() - (now - t0)
        };
        IntervalMerger {
            run_started,
            pending: BTreeMap::new(),
            cumulative: None,
        }
    }

    fn add(&mut self, index: u64, histogram: Histogram<u64>) {
        match self.pending.get_mut(&index) {
            Some(existing) => latency::merge(existing, &histogram),
            None => {
                self.pending.insert(index, histogram);
            }
        }
    }

    /// Passes on every second before `index`, in order.
    fn emit_before(&mut self, index: u64, observer: &mut dyn RunObserver) {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() >= index {
                return;
            }
            let (second, histogram) = entry.remove_entry();
            let cumulative = self.cumulative.get_or_insert_with(new_histogram);
            latency::merge(cumulative, &histogram);
            observer.interval(&IntervalHistogram {
                run_started: self.run_started,
                start: Duration::from_secs(second),
                length: Duration::from_secs(1),
                histogram: &histogram,
                cumulative,
            });
        }
    }
}

fn build_report(
    config: &RunConfig,
    m: &MessageConfig,
    threads: usize,
    results: Vec<WorkerResult>,
    drained: bool,
    cleanup_errors: Vec<String>,
) -> Report {
    let mut sent_by_publisher: BTreeMap<u32, u64> = BTreeMap::new();
    let mut latency_histogram = new_histogram();
    let mut errors = Vec::new();
    let (mut sent, mut sent_measured, mut not_sent, mut acked, mut unexpected_acks) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut subscribers = Vec::new();
    for result in results {
        latency::merge(&mut latency_histogram, &result.latency);
        errors.extend(result.errors);
        for p in result.publishers {
            sent_by_publisher.insert(p.id, p.sent);
            sent += p.sent;
            sent_measured += p.sent_measured;
            not_sent += p.scheduled.map_or(0, |s| s.saturating_sub(p.sent));
            acked += p.acked;
            unexpected_acks += p.unexpected_acks;
        }
        subscribers.extend(result.subscribers);
    }
    subscribers.sort_by_key(|s| s.id);
    let mut streams = Vec::new();
    let (mut expected, mut received, mut received_measured) = (0u64, 0u64, 0u64);
    let (mut lost, mut duplicated, mut reordered, mut unexpected, mut unchecked_late) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut granted_qos = m.qos;
    for s in &subscribers {
        granted_qos = granted_qos.min(s.granted_qos);
        received += s.received;
        received_measured += s.received_measured;
        unexpected += s.unexpected;
        for (publisher, tracker) in &s.streams {
            let stream_expected = sent_by_publisher.get(publisher).copied().unwrap_or(0);
            let stream = StreamReport {
                publisher: *publisher,
                subscriber: s.id,
                expected: stream_expected,
                received: tracker.distinct() + tracker.duplicates(),
                lost: tracker.lost(stream_expected),
                duplicated: tracker.duplicates(),
                reordered: tracker.reordered(),
            };
            expected += stream.expected;
            lost += stream.lost;
            duplicated += stream.duplicated;
            reordered += stream.reordered;
            unchecked_late += tracker.too_old();
            streams.push(stream);
        }
    }
    let duration_secs = m.duration.as_secs_f64();
    let mut report = Report {
        scenario: m.scenario.name().to_owned(),
        description: m.scenario.describe(),
        target_name: config.target_name.clone(),
        target_addr: config.target_addr.clone(),
        threads,
        elapsed_secs: 0.0,
        messages: Some(MessageReport {
            qos: m.qos as u8,
            granted_qos: granted_qos as u8,
            payload_bytes: m.payload_bytes,
            persistent_sessions: m.persistent_sessions,
            publishers: m.scenario.publishers(),
            subscribers: m.scenario.subscribers(),
            rate_per_sec: m.rate_per_sec,
            inflight_max: m.inflight_max,
            warmup_secs: m.warmup.as_secs_f64(),
            duration_secs,
            drain_secs: m.drain.as_secs_f64(),
            drain_used_secs: 0.0,
            drained,
            sent,
            sent_measured,
            not_sent,
            acked,
            expected,
            received,
            received_measured,
            lost,
            duplicated,
            reordered,
            unexpected,
            unexpected_acks,
            unchecked_late,
            send_rate_per_sec: sent_measured as f64 / duration_secs,
            receive_rate_per_sec: received_measured as f64 / duration_secs,
            latency_us: LatencySummary::of(&latency_histogram),
            streams,
            latency_histogram,
        }),
        storm: None,
        broker: None,
        errors: Vec::new(),
        errors_total: 0,
    };
    errors.extend(cleanup_errors);
    report.set_errors(errors);
    report
}
