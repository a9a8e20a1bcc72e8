//! The `ack-latency` probe: how long a steady QoS 1 publisher waits for its PUBACKs,
//! and how many write-ahead log compactions the broker ran meanwhile.
//!
//! One publisher sends QoS 1 PUBLISHes open loop at a fixed rate; message *k* is due at
//! `start + k / rate` and its acknowledgement latency is measured from that due time, so a
//! broker that stalls its acknowledgements (a compaction or a password check in the way of
//! the group commit) shows it in the tail instead of slowing the publisher down
//! (coordinated omission). Persistent subscribers make the broker log every message:
//! `subscribers` stay connected and acknowledge, `offline_subscribers` subscribe and leave,
//! so their sessions fill up and the state each compaction writes is large. When the
//! broker's admin address is given, `cutie_wal_compactions_total` is read before and after
//! the measured period.
//!
//! Costs: two threads for the publisher, one per connected subscriber; a 65,536-entry
//! table of due times. Every blocking step has a timeout; the run ends by itself.

use crate::client::{connect, write_packet, Connected};
use crate::config::ConnectOptions;
use crate::error::{BenchError, ClientError};
use crate::latency::{new_histogram, record_us, LatencySummary};
use bytes::Bytes;
use cutie_codec::{Packet, PacketId, Publish, PublishQos, QoS, TopicName};
use hdrhistogram::Histogram;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// What an `ack-latency` run does.
#[derive(Debug, Clone)]
pub struct AckConfig {
    /// The broker's MQTT address.
    pub addr: SocketAddr,
    /// The broker's admin HTTP address (`/metrics`), to count compactions.
    pub admin_addr: Option<SocketAddr>,
    /// PUBLISHes per second (open loop).
    pub rate_per_sec: u32,
    /// Sent, acknowledged, not timed.
    pub warmup: Duration,
    /// Measured sending time after the warm-up.
    pub duration: Duration,
    /// Longest wait for the last acknowledgements after sending stops.
    pub drain: Duration,
    /// Payload bytes of each PUBLISH.
    pub payload_bytes: usize,
    /// Persistent subscribers that stay connected and acknowledge.
    pub subscribers: u32,
    /// Persistent subscribers that subscribe, then disconnect: their sessions queue.
    pub offline_subscribers: u32,
    /// Topics are `<prefix>/<k>`; subscribers take `<prefix>/#`.
    pub topic_prefix: String,
    /// CONNECT settings of every connection.
    pub connect: ConnectOptions,
}

/// What an `ack-latency` run measured.
#[derive(Debug, Clone)]
pub struct AckReport {
    /// PUBLISHes sent (warm-up included).
    pub sent: u64,
    /// PUBACKs received (warm-up included).
    pub acked: u64,
    /// Messages due but not sent: their packet id was still unacknowledged 65,535
    /// messages later.
    pub held_back: u64,
    /// Latency from due time to PUBACK of the measured messages, microseconds.
    pub latency: LatencySummary,
    /// Compactions during the measured period (summed over shards), when known.
    pub compactions: Option<u64>,
    /// The broker's longest compaction since it started (`cutie_wal_compaction_seconds_max`,
    /// largest over shards), milliseconds, when known.
    pub compaction_ms_max: Option<u64>,
    /// Messages delivered to the connected subscribers.
    pub delivered: u64,
}

impl std::fmt::Display for AckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = &self.latency;
        writeln!(
            f,
            "sent {}  acked {}  held back {}  delivered to subscribers {}",
            self.sent, self.acked, self.held_back, self.delivered
        )?;
        writeln!(
            f,
            "PUBACK latency (us, {} measured): p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            l.count, l.p50, l.p90, l.p99, l.p999, l.max
        )?;
        match self.compactions {
            Some(n) => writeln!(f, "compactions during the measured period: {n}")?,
            None => writeln!(
                f,
                "compactions during the measured period: unknown (no --admin)"
            )?,
        }
        if let Some(ms) = self.compaction_ms_max {
            writeln!(f, "longest compaction (broker, since start): {ms} ms")?;
        }
        Ok(())
    }
}

/// One in-flight PUBLISH: when it was due, and whether it is timed.
#[derive(Clone, Copy)]
struct Due {
    at: Instant,
    measured: bool,
}

fn setup_error(client_id: &str, error: ClientError) -> BenchError {
    BenchError::Setup {
        failed: 1,
        total: 1,
        first: format!("{client_id}: {error}"),
    }
}

fn packet_size_max(config: &AckConfig) -> usize {
    config.payload_bytes + config.topic_prefix.len() + 1024
}

/// Runs the probe. See the module docs.
pub fn run_ack_latency(config: &AckConfig) -> Result<AckReport, BenchError> {
    if config.rate_per_sec == 0 {
        return Err(BenchError::Config("--rate must be at least 1".into()));
    }
    let size_max = packet_size_max(config);
    let subscriber_ids: Vec<String> = (0..config.subscribers + config.offline_subscribers)
        .map(|i| format!("{}-sub-{i}", config.topic_prefix.replace('/', "-")))
        .collect();
    let filter = format!("{}/#", config.topic_prefix);
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let mut subscriber_threads = Vec::new();
    for (i, client_id) in subscriber_ids.iter().enumerate() {
        let mut connected = connect(config.addr, client_id, false, &config.connect, size_max)
            .map_err(|e| setup_error(client_id, e))?;
        connected
            .subscribe(
                &filter,
                QoS::AtLeastOnce,
                Instant::now() + config.connect.io_timeout,
            )
            .map_err(|e| setup_error(client_id, e))?;
        if i >= config.subscribers as usize {
            // Offline: the session stays and queues what matches.
            let _ = write_packet(&mut connected.stream, &Packet::Disconnect, "DISCONNECT");
            continue;
        }
        let stop = Arc::clone(&stop);
        let delivered = Arc::clone(&delivered);
        subscriber_threads.push(
            std::thread::Builder::new()
                .name(format!("ack-sub-{i}"))
                .spawn(move || subscribe_loop(connected, &stop, &delivered))
                .map_err(BenchError::Spawn)?,
        );
    }

    let publisher_id = format!("{}-pub", config.topic_prefix.replace('/', "-"));
    let publisher = connect(config.addr, &publisher_id, true, &config.connect, size_max)
        .map_err(|e| setup_error(&publisher_id, e))?;
    let table: Arc<Mutex<Vec<Option<Due>>>> = Arc::new(Mutex::new(vec![None; 65_536]));
    let acked = Arc::new(AtomicU64::new(0));
    let mut stream = publisher.stream.try_clone().map_err(|source| {
        setup_error(
            &publisher_id,
            ClientError::Io {
                doing: "cloning the socket",
                source,
            },
        )
    })?;
    let reader = {
        let table = Arc::clone(&table);
        let acked = Arc::clone(&acked);
        let stop = Arc::clone(&stop);
        let mut publisher = publisher;
        std::thread::Builder::new()
            .name("ack-pub-reader".into())
            .spawn(move || {
                let mut histogram = new_histogram();
                ack_loop(&mut publisher, &table, &acked, &stop, &mut histogram);
                histogram
            })
            .map_err(BenchError::Spawn)?
    };

    let before = config.admin_addr.and_then(read_metrics);
    let interval = Duration::from_secs_f64(1.0 / f64::from(config.rate_per_sec));
    let warmup_count = (config.warmup.as_secs_f64() * f64::from(config.rate_per_sec)) as u64;
    let total =
        warmup_count + (config.duration.as_secs_f64() * f64::from(config.rate_per_sec)) as u64;
    let payload = Bytes::from(vec![0x5a; config.payload_bytes]);
    let start = Instant::now();
    let mut sent = 0u64;
    let mut held_back = 0u64;
    let mut compactions_at_measure = None;
    for k in 0..total {
        if k == warmup_count {
            compactions_at_measure = config
                .admin_addr
                .and_then(read_metrics)
                .or(before)
                .map(|m| m.compactions);
        }
        let due = start + interval.mul_f64(k as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let id = (k % 65_535) as u16 + 1;
        let packet_id = PacketId::new(id).unwrap_or_else(|| unreachable!("1..=65535"));
        {
            let mut table = table.lock().unwrap_or_else(PoisonError::into_inner);
            let slot = &mut table[usize::from(id)];
            if slot.is_some() {
                held_back += 1;
                continue;
            }
            *slot = Some(Due {
                at: due,
                measured: k >= warmup_count,
            });
        }
        let topic = TopicName::new(format!("{}/{}", config.topic_prefix, k % 16))
            .map_err(|reason| BenchError::Config(format!("invalid topic prefix: {reason}")))?;
        let publish = Packet::Publish(Publish {
            dup: false,
            qos: PublishQos::AtLeastOnce(packet_id),
            retain: false,
            topic,
            payload: payload.clone(),
        });
        if let Err(error) = write_packet(&mut stream, &publish, "writing PUBLISH") {
            eprintln!("cutie-bench: publisher: {error}; stopping");
            break;
        }
        sent += 1;
    }
    let after = config.admin_addr.and_then(read_metrics);
    // Drain: wait until everything sent is acknowledged, or the drain time is up.
    let drain_until = Instant::now() + config.drain;
    while acked.load(Ordering::Relaxed) < sent && Instant::now() < drain_until {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = write_packet(&mut stream, &Packet::Disconnect, "DISCONNECT");
    let histogram: Histogram<u64> = reader.join().unwrap_or_else(|_| new_histogram());
    for thread in subscriber_threads {
        let _ = thread.join();
    }
    // Discard the persistent sessions.
    for client_id in &subscriber_ids {
        if let Ok(mut c) = connect(config.addr, client_id, true, &config.connect, size_max) {
            let _ = write_packet(&mut c.stream, &Packet::Disconnect, "DISCONNECT");
        }
    }
    Ok(AckReport {
        sent,
        acked: acked.load(Ordering::Relaxed),
        held_back,
        latency: LatencySummary::of(&histogram),
        compactions: match (compactions_at_measure, after) {
            (Some(b), Some(a)) => Some(a.compactions.saturating_sub(b)),
            _ => None,
        },
        compaction_ms_max: after.map(|a| a.compaction_ms_max),
        delivered: delivered.load(Ordering::Relaxed),
    })
}

/// Reads PUBACKs until `stop`, timing each against its due time.
fn ack_loop(
    connected: &mut Connected,
    table: &Mutex<Vec<Option<Due>>>,
    acked: &AtomicU64,
    stop: &AtomicBool,
    histogram: &mut Histogram<u64>,
) {
    while !stop.load(Ordering::Relaxed) {
        match connected.read_packet(Instant::now() + Duration::from_millis(50), "PUBACK") {
            Ok(Packet::PubAck(packet_id)) => {
                let now = Instant::now();
                let due = table.lock().unwrap_or_else(PoisonError::into_inner)
                    [usize::from(packet_id.get())]
                .take();
                if let Some(due) = due {
                    acked.fetch_add(1, Ordering::Relaxed);
                    if due.measured {
                        record_us(
                            histogram,
                            now.saturating_duration_since(due.at).as_micros() as u64,
                        );
                    }
                }
            }
            Ok(_) | Err(ClientError::Timeout(_)) => {}
            Err(error) => {
                if !stop.load(Ordering::Relaxed) {
                    eprintln!("cutie-bench: publisher: {error}");
                }
                return;
            }
        }
    }
}

/// Acknowledges every QoS 1 delivery until `stop`.
fn subscribe_loop(mut connected: Connected, stop: &AtomicBool, delivered: &AtomicU64) {
    while !stop.load(Ordering::Relaxed) {
        match connected.read_packet(Instant::now() + Duration::from_millis(50), "PUBLISH") {
            Ok(Packet::Publish(publish)) => {
                delivered.fetch_add(1, Ordering::Relaxed);
                if let Some(packet_id) = publish.qos.packet_id() {
                    if write_packet(&mut connected.stream, &Packet::PubAck(packet_id), "PUBACK")
                        .is_err()
                    {
                        return;
                    }
                }
            }
            Ok(_) | Err(ClientError::Timeout(_)) => {}
            Err(_) => return,
        }
    }
    let _ = write_packet(&mut connected.stream, &Packet::Disconnect, "DISCONNECT");
}

/// What the broker's metrics say about compaction.
#[derive(Debug, Clone, Copy)]
pub struct CompactionMetrics {
    /// `cutie_wal_compactions_total`, summed over shards.
    pub compactions: u64,
    /// `cutie_wal_compaction_seconds_max`, largest over shards, in milliseconds.
    pub compaction_ms_max: u64,
}

/// Compaction metrics from `GET /metrics` at `admin`.
pub fn read_metrics(admin: SocketAddr) -> Option<CompactionMetrics> {
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: cutie\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    match stream.read_to_string(&mut body) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::WouldBlock && !body.is_empty() => {}
        Err(_) => return None,
    }
    Some(CompactionMetrics {
        compactions: samples(&body, "cutie_wal_compactions_total").sum::<f64>() as u64,
        compaction_ms_max: (samples(&body, "cutie_wal_compaction_seconds_max").fold(0.0, f64::max)
            * 1e3) as u64,
    })
}

/// Every sample of `name` in a Prometheus text exposition.
fn samples<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = f64> + 'a {
    text.lines()
        .filter(move |line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compactions_are_summed_over_shards() {
        let text = "# HELP cutie_wal_compactions_total x\n\
                    cutie_wal_compactions_total{shard=\"0\"} 3\n\
                    cutie_wal_compactions_total{shard=\"1\"} 4\n\
                    cutie_wal_compactions_total_other 9\n";
        assert_eq!(
            samples(text, "cutie_wal_compactions_total").sum::<f64>(),
            7.0
        );
    }
}
