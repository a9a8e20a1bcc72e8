//! The harness's correctness counters against a broker that misbehaves on purpose.
//!
//! `Relay` is a tiny MQTT broker stand-in (std threads, a `TcpListener` on
//! 127.0.0.1:0): it answers CONNECT, SUBSCRIBE, PINGREQ and the QoS 1/2 handshakes, and
//! forwards every PUBLISH to the subscribers whose filter matches. Its `Fault` decides
//! per publisher stream what goes wrong (drop every 10th, duplicate some, swap
//! neighbours, stop reading, never answer, refuse, close) and it counts exactly what it
//! did, per delivery. Each test runs the harness's library API against it and asserts
//! the report's counts equal the relay's.

use bytes::BytesMut;
use cutie_bench::config::{
    ConnectOptions, MessageConfig, PersistentSessions, RunConfig, Scenario, StormConfig,
};
use cutie_bench::{BenchError, NoObserver, Report, Workload};
use cutie_codec::{
    ConnAck, ConnectReturnCode, Decoder, Packet, PacketId, Publish, PublishQos, QoS, SubAck,
    SubscribeReturnCode, TopicFilter,
};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Forward everything once, in order.
    None,
    /// Drop message 9, 19, 29, ... of every publisher.
    DropEveryTenth,
    /// Forward message 3, 10, 17, ... of every publisher twice.
    DuplicateSome,
    /// Hold message 4, 14, 24, ... of every publisher and send it after the next one.
    SwapAdjacent,
    /// After CONNECT and SUBSCRIBE, never read from publishers again (a hung broker).
    StopReading,
    /// Accept TCP but never answer CONNECT.
    Silent,
    /// Answer CONNECT with return code 5 (not authorized).
    RefuseConnect,
    /// Close each publisher's connection after 50 messages.
    CloseAfterFifty,
    /// Answer every CONNECT with session present = 1 (a session left from elsewhere).
    SessionPresent,
}

/// What the relay did, counted per delivery (one message to one subscriber).
#[derive(Debug, Default)]
struct Stats {
    /// PUBLISHes received from publishers.
    published: AtomicU64,
    /// Deliveries written to subscribers (duplicates included).
    delivered: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    swapped: AtomicU64,
    /// Every CONNECT, in arrival order: (client id, clean_session).
    connects: Mutex<Vec<(String, bool)>>,
}

struct Relay {
    addr: SocketAddr,
    stats: Arc<Stats>,
    shutdown: Arc<AtomicBool>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::Release);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
    }
}

/// A subscriber connection's write side.
struct Outbound {
    stream: TcpStream,
    next_packet_id: PacketId,
}

struct Subscription {
    filter: TopicFilter,
    qos: QoS,
    outbound: Arc<Mutex<Outbound>>,
}

type Registry = Arc<Mutex<Vec<Subscription>>>;

impl Relay {
    fn start(fault: Fault) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let stats = Arc::new(Stats::default());
        let shutdown = Arc::new(AtomicBool::new(false));
        let registry: Registry = Arc::new(Mutex::new(Vec::new()));
        let (stats2, shutdown2) = (stats.clone(), shutdown.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if shutdown2.load(Ordering::Acquire) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let (registry, stats) = (registry.clone(), stats2.clone());
                std::thread::spawn(move || serve(stream, fault, registry, stats));
            }
        });
        Relay {
            addr,
            stats,
            shutdown,
        }
    }

    fn get(&self, counter: fn(&Stats) -> &AtomicU64) -> u64 {
        counter(&self.stats).load(Ordering::Acquire)
    }
}

fn write(stream: &mut TcpStream, packet: &Packet) {
    let mut buf = BytesMut::new();
    packet.encode(&mut buf);
    let _ = stream.write_all(&buf);
}

/// How many subscribers `publish` goes to.
fn matching(publish: &Publish, registry: &Registry) -> u64 {
    let subscriptions = registry.lock().expect("registry");
    subscriptions
        .iter()
        .filter(|s| s.filter.matches(&publish.topic))
        .count() as u64
}

/// Forwards `publish` to every matching subscriber. The delivery count is added before
/// the bytes leave, so the harness can never see a delivery the stats do not.
fn forward(publish: &Publish, registry: &Registry, stats: &Stats) {
    let subscriptions = registry.lock().expect("registry");
    for subscription in subscriptions.iter() {
        if !subscription.filter.matches(&publish.topic) {
            continue;
        }
        stats.delivered.fetch_add(1, Ordering::AcqRel);
        let qos = publish.qos.qos().min(subscription.qos);
        let mut outbound = subscription.outbound.lock().expect("outbound");
        let packet_id = outbound.next_packet_id;
        outbound.next_packet_id = packet_id.next();
        let packet = Packet::Publish(Publish {
            dup: false,
            qos: PublishQos::with(qos, packet_id),
            retain: false,
            topic: publish.topic.clone(),
            payload: publish.payload.clone(),
        });
        write(&mut outbound.stream, &packet);
    }
}

fn serve(mut stream: TcpStream, fault: Fault, registry: Registry, stats: Arc<Stats>) {
    let _ = stream.set_nodelay(true);
    if fault == Fault::Silent {
        // Hold the socket open, answer nothing.
        std::thread::sleep(Duration::from_secs(10));
        return;
    }
    let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
    let mut decoder = Decoder::default();
    let mut buf = BytesMut::new();
    let mut scratch = vec![0u8; 64 * 1024];
    let mut outbound: Option<Arc<Mutex<Outbound>>> = None;
    // Per publisher stream: message index and a held message (swap).
    let mut index = 0u64;
    let mut held: Option<Publish> = None;
    loop {
        loop {
            let packet = match decoder.decode(&mut buf) {
                Ok(Some(packet)) => packet,
                Ok(None) => break,
                Err(_) => return,
            };
            match packet {
                Packet::Connect(connect) => {
                    stats
                        .connects
                        .lock()
                        .expect("connects")
                        .push((connect.client_id.to_string(), connect.clean_session));
                    let return_code = if fault == Fault::RefuseConnect {
                        ConnectReturnCode::NotAuthorized
                    } else {
                        ConnectReturnCode::Accepted
                    };
                    write(
                        &mut stream,
                        &Packet::ConnAck(ConnAck {
                            session_present: fault == Fault::SessionPresent,
                            return_code,
                        }),
                    );
                    if fault == Fault::RefuseConnect {
                        return;
                    }
                }
                Packet::Subscribe(subscribe) => {
                    let out = outbound
                        .get_or_insert_with(|| {
                            Arc::new(Mutex::new(Outbound {
                                stream: stream.try_clone().expect("clone"),
                                next_packet_id: PacketId::new(1).expect("non-zero"),
                            }))
                        })
                        .clone();
                    let mut codes = Vec::new();
                    let mut subscriptions = registry.lock().expect("registry");
                    for filter in subscribe.filters {
                        codes.push(SubscribeReturnCode::Success(filter.qos));
                        subscriptions.push(Subscription {
                            filter: filter.filter,
                            qos: filter.qos,
                            outbound: out.clone(),
                        });
                    }
                    drop(subscriptions);
                    let mut out = out.lock().expect("outbound");
                    write(
                        &mut out.stream,
                        &Packet::SubAck(SubAck {
                            packet_id: subscribe.packet_id,
                            return_codes: codes,
                        }),
                    );
                }
                Packet::Publish(_) if fault == Fault::StopReading => {
                    // Hung: no ack, no forwarding, no more reading.
                    stats.published.fetch_add(1, Ordering::AcqRel);
                    std::thread::sleep(Duration::from_secs(10));
                    return;
                }
                Packet::Publish(publish) => {
                    stats.published.fetch_add(1, Ordering::AcqRel);
                    match publish.qos {
                        PublishQos::AtMostOnce => {}
                        PublishQos::AtLeastOnce(id) => write(&mut stream, &Packet::PubAck(id)),
                        PublishQos::ExactlyOnce(id) => write(&mut stream, &Packet::PubRec(id)),
                    }
                    let i = index;
                    index += 1;
                    match fault {
                        Fault::DropEveryTenth if i % 10 == 9 => {
                            let subscribers = matching(&publish, &registry);
                            stats.dropped.fetch_add(subscribers, Ordering::AcqRel);
                        }
                        Fault::DuplicateSome if i % 7 == 3 => {
                            let copies = matching(&publish, &registry);
                            stats.duplicated.fetch_add(copies, Ordering::AcqRel);
                            forward(&publish, &registry, &stats);
                            forward(&publish, &registry, &stats);
                        }
                        Fault::SwapAdjacent if i % 10 == 4 => held = Some(publish),
                        Fault::SwapAdjacent if held.is_some() => {
                            if let Some(earlier) = held.take() {
                                let late = matching(&earlier, &registry);
                                stats.swapped.fetch_add(late, Ordering::AcqRel);
                                forward(&publish, &registry, &stats);
                                forward(&earlier, &registry, &stats);
                            }
                        }
                        Fault::CloseAfterFifty if i >= 49 => {
                            forward(&publish, &registry, &stats);
                            let _ = stream.shutdown(std::net::Shutdown::Both);
                            return;
                        }
                        _ => forward(&publish, &registry, &stats),
                    }
                }
                Packet::PubRel(id) => write(&mut stream, &Packet::PubComp(id)),
                Packet::PubRec(id) => {
                    if let Some(out) = &outbound {
                        let mut out = out.lock().expect("outbound");
                        write(&mut out.stream, &Packet::PubRel(id));
                    }
                }
                Packet::PubAck(_) | Packet::PubComp(_) => {}
                Packet::PingReq => write(&mut stream, &Packet::PingResp),
                Packet::Disconnect => return,
                _ => return,
            }
        }
        match stream.read(&mut scratch) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&scratch[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                // Quiet for a moment: a held message goes out unswapped.
                if let Some(earlier) = held.take() {
                    forward(&earlier, &registry, &stats);
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn message_config(addr: SocketAddr, scenario: Scenario, qos: QoS) -> RunConfig {
    RunConfig {
        target_name: "relay".into(),
        target_addr: addr.to_string(),
        connect: ConnectOptions {
            connect_timeout: Duration::from_secs(2),
            io_timeout: Duration::from_millis(500),
            ..ConnectOptions::default()
        },
        workload: Workload::Messages(MessageConfig {
            scenario,
            qos,
            payload_bytes: 32,
            rate_per_sec: Some(4000),
            inflight_max: 50,
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(400),
            // Long enough for a loaded machine; a run that gets everything stops early.
            drain: Duration::from_secs(3),
            threads: 2,
            topic_prefix: None,
            persistent_sessions: PersistentSessions::None,
        }),
        broker_pid: None,
    }
}

/// Deliveries per published message: each subscriber of its topic gets one.
fn fan_out(scenario: Scenario) -> u64 {
    match scenario {
        Scenario::FanOut { subscribers } => u64::from(subscribers),
        _ => 1,
    }
}

/// `config` with `sessions` kept on the broker.
fn persistent(mut config: RunConfig, sessions: PersistentSessions) -> RunConfig {
    if let Workload::Messages(m) = &mut config.workload {
        m.persistent_sessions = sessions;
    }
    config
}

/// `config` with a short drain, for runs that never get everything (loss).
fn short_drain(mut config: RunConfig) -> RunConfig {
    if let Workload::Messages(m) = &mut config.workload {
        m.drain = Duration::from_millis(300);
    }
    config
}

fn run(config: &RunConfig) -> Report {
    cutie_bench::run(config, &mut NoObserver).expect("run completes")
}

/// Asserts the report's per-stream counts add up to its totals.
fn assert_streams_add_up(report: &Report) {
    let m = report.messages.as_ref().expect("message report");
    let sum =
        |f: fn(&cutie_bench::report::StreamReport) -> u64| m.streams.iter().map(f).sum::<u64>();
    assert_eq!(sum(|s| s.lost), m.lost);
    assert_eq!(sum(|s| s.duplicated), m.duplicated);
    assert_eq!(sum(|s| s.reordered), m.reordered);
    assert_eq!(sum(|s| s.expected), m.expected);
}

#[test]
fn clean_relay_reports_nothing_lost_duplicated_or_reordered_at_every_qos() {
    let scenarios = [
        (Scenario::FanIn { publishers: 3 }, QoS::AtMostOnce),
        (Scenario::FanOut { subscribers: 3 }, QoS::AtLeastOnce),
        (Scenario::PointToPoint { pairs: 2 }, QoS::ExactlyOnce),
    ];
    for (scenario, qos) in scenarios {
        let relay = Relay::start(Fault::None);
        let report = run(&message_config(relay.addr, scenario, qos));
        let m = report.messages.as_ref().expect("message report");
        let context = format!("{scenario:?} at {qos:?}:\n{report}");
        assert!(m.sent > 0, "{context}");
        assert_eq!(m.sent, relay.get(|s| &s.published), "{context}");
        assert_eq!(m.received, relay.get(|s| &s.delivered), "{context}");
        assert_eq!(m.expected, m.sent * fan_out(scenario), "{context}");
        assert_eq!(m.received, m.expected, "{context}");
        assert_eq!((m.lost, m.duplicated, m.reordered), (0, 0, 0), "{context}");
        assert_eq!(m.unexpected, 0, "{context}");
        assert!(m.drained, "{context}");
        assert_eq!(report.errors_total, 0, "{context}");
        if qos != QoS::AtMostOnce {
            assert_eq!(m.acked, m.sent, "{context}");
        }
        // Open loop at 4000/s for 0.5 s: the schedule fixes the count exactly.
        assert_eq!(m.sent, 2000, "{context}");
        assert_eq!(m.sent_measured, 1600, "{context}");
        assert_eq!(m.not_sent, 0, "{context}");
        assert_eq!(
            m.latency_us.count,
            m.sent_measured * fan_out(scenario),
            "{context}"
        );
        assert_streams_add_up(&report);
    }
}

#[test]
fn dropped_messages_are_counted_as_lost_exactly() {
    let relay = Relay::start(Fault::DropEveryTenth);
    let report = run(&short_drain(message_config(
        relay.addr,
        Scenario::FanIn { publishers: 3 },
        QoS::AtLeastOnce,
    )));
    let m = report.messages.as_ref().expect("message report");
    let dropped = relay.get(|s| &s.dropped);
    assert!(dropped > 0);
    assert_eq!(m.lost, dropped, "{report}");
    assert_eq!((m.duplicated, m.reordered), (0, 0), "{report}");
    assert_eq!(m.received, m.expected - dropped, "{report}");
    assert!(!m.drained, "loss keeps the drain waiting until its limit");
    // 2000 messages over 3 publishers (667, 667, 666): 66 dropped from each.
    assert_eq!(m.lost, 198, "{report}");
    assert_streams_add_up(&report);
}

#[test]
fn duplicated_messages_are_counted_exactly_for_every_subscriber() {
    let relay = Relay::start(Fault::DuplicateSome);
    let report = run(&message_config(
        relay.addr,
        Scenario::FanOut { subscribers: 2 },
        QoS::AtMostOnce,
    ));
    let m = report.messages.as_ref().expect("message report");
    let duplicated = relay.get(|s| &s.duplicated);
    assert!(duplicated > 0);
    assert_eq!(m.duplicated, duplicated, "{report}");
    assert_eq!((m.lost, m.reordered), (0, 0), "{report}");
    assert_eq!(m.received, m.expected + duplicated, "{report}");
    // One publisher, 2000 messages, indices 3, 10, ..., 1998: 286 each to 2 subscribers.
    assert_eq!(m.duplicated, 2 * 286, "{report}");
    assert_eq!(
        m.latency_us.count,
        2 * m.sent_measured,
        "duplicates are not timed"
    );
    assert_streams_add_up(&report);
}

#[test]
fn swapped_neighbours_are_counted_as_reordered_exactly() {
    let relay = Relay::start(Fault::SwapAdjacent);
    let report = run(&message_config(
        relay.addr,
        Scenario::PointToPoint { pairs: 2 },
        QoS::ExactlyOnce,
    ));
    let m = report.messages.as_ref().expect("message report");
    let swapped = relay.get(|s| &s.swapped);
    assert!(swapped > 0);
    assert_eq!(m.reordered, swapped, "{report}");
    assert_eq!((m.lost, m.duplicated), (0, 0), "{report}");
    assert_eq!(m.received, m.expected, "{report}");
    assert!(m.drained, "{report}");
    assert_streams_add_up(&report);
}

#[test]
fn a_broker_that_stops_reading_cannot_hang_the_run() {
    let relay = Relay::start(Fault::StopReading);
    let config = short_drain(message_config(
        relay.addr,
        Scenario::FanIn { publishers: 2 },
        QoS::AtLeastOnce,
    ));
    let started = Instant::now();
    let report = run(&config);
    let elapsed = started.elapsed();
    let m = report.messages.as_ref().expect("message report");
    // warm-up + duration + drain = 0.8 s; setup and the stop take little more.
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    assert!(!m.drained, "{report}");
    assert_eq!(m.received, 0, "{report}");
    assert_eq!(m.lost, m.expected, "{report}");
    assert_eq!(m.acked, 0, "{report}");
    // The window (50 per publisher) filled and the open-loop schedule went on.
    assert!(m.sent <= 100, "{report}");
    assert_eq!(m.sent + m.not_sent, 2000, "{report}");
}

#[test]
fn a_broker_that_never_answers_connect_fails_setup_within_the_timeout() {
    let relay = Relay::start(Fault::Silent);
    let config = message_config(
        relay.addr,
        Scenario::FanIn { publishers: 2 },
        QoS::AtMostOnce,
    );
    let started = Instant::now();
    let result = cutie_bench::run(&config, &mut NoObserver);
    assert!(
        matches!(&result, Err(BenchError::Setup { first, .. }) if first.contains("timed out waiting for CONNACK")),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn a_refused_connect_fails_setup_with_the_return_code() {
    let relay = Relay::start(Fault::RefuseConnect);
    let config = message_config(
        relay.addr,
        Scenario::FanIn { publishers: 1 },
        QoS::AtMostOnce,
    );
    let result = cutie_bench::run(&config, &mut NoObserver);
    assert!(
        matches!(&result, Err(BenchError::Setup { first, .. }) if first.contains("NotAuthorized")),
        "{result:?}"
    );
}

#[test]
fn a_connection_closed_mid_run_is_reported_and_the_run_completes() {
    let relay = Relay::start(Fault::CloseAfterFifty);
    let report = run(&short_drain(message_config(
        relay.addr,
        Scenario::FanIn { publishers: 2 },
        QoS::AtLeastOnce,
    )));
    let m = report.messages.as_ref().expect("message report");
    assert_eq!(report.errors_total, 2, "{report}");
    assert!(
        report
            .errors
            .iter()
            .all(|e| e.contains("closed by the broker")
                || e.contains("reset")
                || e.contains("writing")),
        "{report}"
    );
    assert_eq!(m.received, 100, "{report}");
    assert_eq!(m.lost, m.expected - 100, "{report}");
}

#[test]
fn persistent_sessions_connect_without_clean_session_and_are_discarded_after_the_run() {
    for sessions in [PersistentSessions::Subscribers, PersistentSessions::All] {
        let relay = Relay::start(Fault::None);
        let config = persistent(
            message_config(
                relay.addr,
                Scenario::PointToPoint { pairs: 2 },
                QoS::AtLeastOnce,
            ),
            sessions,
        );
        let report = run(&config);
        let m = report.messages.as_ref().expect("message report");
        let context = format!("{sessions:?}:\n{report}");
        assert_eq!(m.persistent_sessions, sessions, "{context}");
        assert_eq!(m.sent, 2000, "{context}");
        assert_eq!(m.received, m.expected, "{context}");
        assert_eq!((m.lost, m.duplicated, m.reordered), (0, 0, 0), "{context}");
        assert_eq!(report.errors_total, 0, "{context}");
        assert!(report.to_string().contains("persistent"), "{context}");

        // Every client id's CONNECTs in order: persistent ones connect with
        // clean_session = 0 for the run, then once with 1 to discard the session.
        let connects = relay.stats.connects.lock().expect("connects").clone();
        let of = |client_id: &str| -> Vec<bool> {
            connects
                .iter()
                .filter(|(id, _)| id == client_id)
                .map(|(_, clean)| *clean)
                .collect()
        };
        let mut client_ids: Vec<&String> = connects.iter().map(|(id, _)| id).collect();
        client_ids.sort();
        client_ids.dedup();
        assert_eq!(client_ids.len(), 4, "{connects:?}");
        for client_id in client_ids {
            // cb<8 hex digits of the run id>s<n> or ...p<n>.
            let subscriber = client_id[10..].starts_with('s');
            let expected = if sessions.persistent(subscriber) {
                vec![false, true]
            } else {
                vec![true]
            };
            assert_eq!(of(client_id), expected, "{client_id} in {connects:?}");
        }
    }
}

#[test]
fn a_session_already_present_for_a_new_client_id_fails_setup() {
    let relay = Relay::start(Fault::SessionPresent);
    let config = persistent(
        message_config(
            relay.addr,
            Scenario::PointToPoint { pairs: 1 },
            QoS::AtLeastOnce,
        ),
        PersistentSessions::Subscribers,
    );
    let result = cutie_bench::run(&config, &mut NoObserver);
    assert!(
        matches!(&result, Err(BenchError::Setup { first, .. }) if first.contains("stale session")),
        "{result:?}"
    );
}

fn storm_config(addr: SocketAddr, connections: u32) -> RunConfig {
    RunConfig {
        target_name: "relay".into(),
        target_addr: addr.to_string(),
        connect: ConnectOptions {
            connect_timeout: Duration::from_secs(2),
            io_timeout: Duration::from_secs(1),
            keep_alive_secs: 0,
            ..ConnectOptions::default()
        },
        workload: Workload::Storm(StormConfig {
            connections,
            connect_rate_per_sec: None,
            hold: Duration::from_millis(200),
            threads: 3,
            connect_phase_max: Duration::from_secs(10),
        }),
        broker_pid: Some(std::process::id()),
    }
}

#[test]
fn storm_opens_holds_and_closes_every_connection() {
    let relay = Relay::start(Fault::None);
    let report = run(&storm_config(relay.addr, 200));
    let storm = report.storm.as_ref().expect("storm report");
    assert_eq!(storm.established, 200, "{report}");
    assert_eq!((storm.failed, storm.not_attempted), (0, 0), "{report}");
    assert_eq!(storm.handshake_us.count, 200);
    assert!(storm.connect_secs > 0.0 && storm.connect_rate_per_sec > 0.0);
    assert!(storm.hold_secs >= 0.2);
    assert_eq!(storm.closed_by_broker, 0, "{report}");
    let broker = report.broker.as_ref().expect("own pid sampled");
    assert!(broker.rss_bytes_held.is_some());
    assert!(broker.rss_bytes_per_connection.is_some());
}

#[test]
fn storm_counts_refused_connections_as_failed() {
    let relay = Relay::start(Fault::RefuseConnect);
    let report = run(&storm_config(relay.addr, 30));
    let storm = report.storm.as_ref().expect("storm report");
    assert_eq!(storm.established, 0, "{report}");
    assert_eq!(storm.failed, 30, "{report}");
    assert_eq!(report.errors_total, 30);
    assert!(report.errors[0].contains("NotAuthorized"), "{report}");
}
