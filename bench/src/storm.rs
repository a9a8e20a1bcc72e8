//! The connection storm: open many connections, hold them idle, close them.
//!
//! `threads` threads share the connections (connection `i` belongs to thread
//! `i % threads`); each opens its share one after another with the blocking steps of
//! [`crate::client`] (TCP connect, CONNECT, CONNACK), in open loop at the configured
//! total rate or back to back. The handshake time is measured from the scheduled time
//! (open loop) or from the start of the connect, into one histogram.
//!
//! When every thread is done connecting, all connections are held open and idle for
//! `hold` (a PINGREQ at half the keep-alive if one is set), the broker's memory is read
//! at the end of the hold (memory per connection), then every thread sends DISCONNECT
//! on each of its connections and closes it.

use crate::client;
use crate::config::{RunConfig, StormConfig};
use crate::error::BenchError;
use crate::latency::{self, new_histogram, LatencySummary};
use crate::observe::{Phase, Progress, RunObserver};
use crate::procfs;
use crate::report::{BrokerUsage, Report, StormReport};
use crate::runner::{resolve, run_id, JOIN_MARGIN};
use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use cutie_codec::Packet;
use hdrhistogram::Histogram;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// At most this many connect errors are kept per thread.
const ERRORS_PER_THREAD_MAX: usize = 10;

/// Counters the storm threads share with the coordinator for progress.
#[derive(Debug, Default)]
struct Counters {
    established: AtomicU64,
    failed: AtomicU64,
}

/// What one thread reports after its connect phase.
#[derive(Debug)]
struct Connected {
    established: u64,
    failed: u64,
    not_attempted: u64,
    /// When its last connection completed.
    last_connected: Option<Instant>,
    handshake_us: Histogram<u64>,
    errors: Vec<String>,
}

/// What one thread reports after disconnecting.
#[derive(Debug)]
struct Disconnected {
    closed_by_broker: u64,
}

#[derive(Debug)]
enum Event {
    Connected(Box<Connected>),
    Disconnected(Disconnected),
}

/// Everything a storm thread needs.
struct ThreadPlan {
    thread: usize,
    threads: usize,
    addr: SocketAddr,
    run_id: u32,
    config: RunConfig,
    storm: StormConfig,
    t0: Instant,
}

/// Runs the connection storm.
pub fn run_storm(
    config: &RunConfig,
    storm: &StormConfig,
    observer: &mut dyn RunObserver,
) -> Result<Report, BenchError> {
    let started = Instant::now();
    let addr = resolve(&config.target_addr)?;
    let threads = storm.threads.min(storm.connections as usize).max(1);
    let counters = Arc::new(Counters::default());
    let (events_tx, events_rx) = unbounded::<Event>();
    let mut disconnect_txs = Vec::with_capacity(threads);
    let broker_before = config.broker_pid.and_then(|pid| procfs::sample(pid).ok());
    let run_id = run_id();
    let t0 = Instant::now();
    for thread in 0..threads {
        let (disconnect_tx, disconnect_rx) = unbounded::<()>();
        disconnect_txs.push(disconnect_tx);
        let plan = ThreadPlan {
            thread,
            threads,
            addr,
            run_id,
            config: config.clone(),
            storm: storm.clone(),
            t0,
        };
        let (counters, events_tx) = (counters.clone(), events_tx.clone());
        std::thread::Builder::new()
            .name(format!("bench-storm-{thread}"))
            .spawn(move || storm_thread(plan, counters, events_tx, disconnect_rx))
            .map_err(BenchError::Spawn)?;
    }
    drop(events_tx);

    // Connect phase: no new connect starts after `connect_phase_max`; one already
    // started takes at most a connect and a CONNACK timeout.
    let connect_deadline = t0
        + storm.connect_phase_max
        + config.connect.connect_timeout
        + config.connect.io_timeout
        + JOIN_MARGIN;
    let mut connected: Vec<Connected> = Vec::with_capacity(threads);
    let mut next_progress = t0 + Duration::from_secs(1);
    let mut last_established = 0;
    while connected.len() < threads {
        let now = Instant::now();
        if now >= next_progress {
            let established = counters.established.load(Ordering::Relaxed);
            observer.progress(&Progress {
                elapsed: now - t0,
                phase: Phase::Connect,
                sent: established,
                received: counters.failed.load(Ordering::Relaxed),
                sent_per_sec: (established - last_established) as f64,
                received_per_sec: 0.0,
                acked: 0,
            });
            last_established = established;
            next_progress += Duration::from_secs(1);
        }
        if now >= connect_deadline {
            release(&disconnect_txs);
            return Err(BenchError::Deadline {
                what: format!(
                    "{} of {threads} storm threads did not finish connecting",
                    threads - connected.len()
                ),
                deadline_secs: (connect_deadline - t0).as_secs_f64(),
            });
        }
        match events_rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Event::Connected(c)) => connected.push(*c),
            Ok(Event::Disconnected(_)) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }

    // Hold.
    let hold_start = Instant::now();
    let hold_end = hold_start + storm.hold;
    loop {
        let now = Instant::now();
        if now >= hold_end {
            break;
        }
        std::thread::sleep((hold_end - now).min(Duration::from_secs(1)));
        let now = Instant::now();
        if now < hold_end || storm.hold >= Duration::from_secs(1) {
            observer.progress(&Progress {
                elapsed: now - t0,
                phase: Phase::Hold,
                sent: counters.established.load(Ordering::Relaxed),
                received: counters.failed.load(Ordering::Relaxed),
                sent_per_sec: 0.0,
                received_per_sec: 0.0,
                acked: 0,
            });
        }
    }
    let broker_held = config.broker_pid.and_then(|pid| procfs::sample(pid).ok());

    // Disconnect.
    let disconnect_start = Instant::now();
    release(&disconnect_txs);
    let disconnect_deadline = disconnect_start + config.connect.io_timeout * 2 + JOIN_MARGIN;
    let mut closed_by_broker = 0;
    let mut disconnected = 0;
    while disconnected < threads {
        match events_rx.recv_deadline(disconnect_deadline) {
            Ok(Event::Disconnected(d)) => {
                disconnected += 1;
                closed_by_broker += d.closed_by_broker;
            }
            Ok(Event::Connected(_)) => {}
            Err(_) => {
                return Err(BenchError::Deadline {
                    what: format!(
                        "{} of {threads} storm threads did not finish disconnecting",
                        threads - disconnected
                    ),
                    deadline_secs: (disconnect_deadline - t0).as_secs_f64(),
                })
            }
        }
    }
    let disconnect_secs = disconnect_start.elapsed().as_secs_f64();
    let broker_after = config.broker_pid.and_then(|pid| procfs::sample(pid).ok());

    let mut handshake_us = new_histogram();
    let (mut established, mut failed, mut not_attempted) = (0u64, 0u64, 0u64);
    let mut last_connected: Option<Instant> = None;
    let mut errors = Vec::new();
    for c in connected {
        latency::merge(&mut handshake_us, &c.handshake_us);
        established += c.established;
        failed += c.failed;
        not_attempted += c.not_attempted;
        last_connected = last_connected.max(c.last_connected);
        errors.extend(c.errors);
    }
    let connect_secs = last_connected.map_or(0.0, |last| (last - t0).as_secs_f64());
    let mut report = Report {
        scenario: "storm".to_owned(),
        description: format!(
            "{} connections, held {:.1} s",
            storm.connections,
            storm.hold.as_secs_f64()
        ),
        target_name: config.target_name.clone(),
        target_addr: config.target_addr.clone(),
        threads,
        elapsed_secs: started.elapsed().as_secs_f64(),
        messages: None,
        storm: Some(StormReport {
            connections: storm.connections,
            established,
            failed,
            not_attempted,
            connect_rate_target: storm.connect_rate_per_sec,
            connect_secs,
            connect_rate_per_sec: if connect_secs > 0.0 {
                established as f64 / connect_secs
            } else {
                0.0
            },
            handshake_us: LatencySummary::of(&handshake_us),
            hold_secs: (disconnect_start - hold_start).as_secs_f64(),
            closed_by_broker,
            disconnect_secs,
        }),
        broker: None,
        errors: Vec::new(),
        errors_total: 0,
    };
    report.set_errors(errors);
    report.errors_total = failed;
    if let (Some(pid), Some(before), Some(after)) = (config.broker_pid, broker_before, broker_after)
    {
        let held = broker_held.map(|s| s.rss_bytes);
        report.broker = Some(BrokerUsage {
            pid,
            cpu_secs: (after.cpu_secs - before.cpu_secs).max(0.0),
            cpu_secs_per_million_delivered: None,
            before,
            after,
            rss_bytes_held: held,
            rss_bytes_per_connection: held
                .filter(|_| established > 0)
                .map(|held| (held as f64 - before.rss_bytes as f64) / established as f64),
        });
    }
    Ok(report)
}

/// Tells every thread to disconnect (or, on an early exit, to give up).
fn release(disconnect_txs: &[Sender<()>]) {
    for tx in disconnect_txs {
        let _ = tx.send(());
    }
}

fn storm_thread(
    plan: ThreadPlan,
    counters: Arc<Counters>,
    events: Sender<Event>,
    disconnect: Receiver<()>,
) {
    let options = &plan.config.connect;
    let connect_stop = plan.t0 + plan.storm.connect_phase_max;
    let mut streams: Vec<TcpStream> = Vec::new();
    let mut report = Connected {
        established: 0,
        failed: 0,
        not_attempted: 0,
        last_connected: None,
        handshake_us: new_histogram(),
        errors: Vec::new(),
    };
    let mut index = plan.thread as u64;
    while index < u64::from(plan.storm.connections) {
        if !matches!(
            disconnect.try_recv(),
            Err(crossbeam_channel::TryRecvError::Empty)
        ) {
            // Told to stop early (the coordinator gave up).
            return;
        }
        let scheduled = plan.storm.connect_rate_per_sec.map(|rate| {
            let offset_ns = u128::from(index) * 1_000_000_000 / u128::from(rate);
            plan.t0 + Duration::from_nanos(u64::try_from(offset_ns).unwrap_or(u64::MAX))
        });
        if let Some(scheduled) = scheduled {
            let now = Instant::now();
            if scheduled > now {
                std::thread::sleep(scheduled - now);
            }
        }
        let start = Instant::now();
        if start >= connect_stop {
            let remaining = u64::from(plan.storm.connections) - index;
            report.not_attempted += remaining.div_ceil(plan.threads as u64);
            break;
        }
        let client_id = format!("cb{:08x}c{index}", plan.run_id);
        match client::connect(plan.addr, &client_id, true, options, 64 * 1024) {
            Ok(connected) => {
                let done = Instant::now();
                let from = scheduled.unwrap_or(start);
                latency::record_us(
                    &mut report.handshake_us,
                    u64::try_from(done.saturating_duration_since(from).as_micros())
                        .unwrap_or(u64::MAX),
                );
                report.established += 1;
                report.last_connected = Some(done);
                counters.established.fetch_add(1, Ordering::Relaxed);
                streams.push(connected.stream);
            }
            Err(e) => {
                report.failed += 1;
                counters.failed.fetch_add(1, Ordering::Relaxed);
                if report.errors.len() < ERRORS_PER_THREAD_MAX {
                    report.errors.push(format!("{client_id}: {e}"));
                }
            }
        }
        index += plan.threads as u64;
    }
    if events.send(Event::Connected(Box::new(report))).is_err() {
        return;
    }

    // Hold: wait for the signal, pinging if a keep-alive is set.
    let ping_every = (options.keep_alive_secs > 0)
        .then(|| Duration::from_secs(u64::from(options.keep_alive_secs)) / 2);
    let mut ping = Vec::new();
    Packet::PingReq.encode_to_vec(&mut ping);
    loop {
        let signal = match ping_every {
            Some(every) => disconnect.recv_timeout(every),
            None => disconnect
                .recv()
                .map_err(|_| RecvTimeoutError::Disconnected),
        };
        match signal {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                for stream in &mut streams {
                    let _ = stream.write_all(&ping);
                }
            }
        }
    }

    // Disconnect: see which connections the broker closed, then say goodbye.
    let mut disconnect_packet = Vec::new();
    Packet::Disconnect.encode_to_vec(&mut disconnect_packet);
    let mut closed_by_broker = 0;
    let mut scratch = [0u8; 256];
    for mut stream in streams {
        if stream.set_nonblocking(true).is_ok() {
            let closed = loop {
                match stream.read(&mut scratch) {
                    Ok(0) => break true,
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => break e.kind() != ErrorKind::WouldBlock,
                }
            };
            if closed {
                closed_by_broker += 1;
                continue;
            }
        }
        let _ = stream.write_all(&disconnect_packet);
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
    let _ = events.send(Event::Disconnected(Disconnected { closed_by_broker }));
}

/// Encoding into a `Vec` for the few fixed packets written with blocking I/O.
trait EncodeToVec {
    fn encode_to_vec(&self, out: &mut Vec<u8>);
}

impl EncodeToVec for Packet {
    fn encode_to_vec(&self, out: &mut Vec<u8>) {
        let mut buf = bytes::BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut buf);
        out.extend_from_slice(&buf);
    }
}
