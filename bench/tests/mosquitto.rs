//! Short runs against a real Mosquitto (Debian package `mosquitto`, which
//! `scripts/test-all` installs): a fan-in, and point-to-point with persistent subscriber
//! sessions. Fails, naming the package, when it is not installed.

use cutie_bench::config::{ConnectOptions, MessageConfig, PersistentSessions, RunConfig, Scenario};
use cutie_bench::{NoObserver, Workload};
use cutie_codec::QoS;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn find_mosquitto() -> Option<PathBuf> {
    let candidates = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")]);
    candidates
        .map(|dir| dir.join("mosquitto"))
        .find(|path| path.is_file())
}

/// Kills the broker however the test ends.
struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts Mosquitto on an ephemeral port and waits until it listens.
fn start_mosquitto() -> (Broker, SocketAddr) {
    // scripts/test-all installs mosquitto: the harness is tested against a real broker.
    let mosquitto = find_mosquitto().expect("mosquitto is installed (apt-get install mosquitto)");
    // An ephemeral port, released for mosquitto to take.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = Command::new(&mosquitto)
        .args(["-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mosquitto");
    let broker = Broker(child);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        assert!(
            Instant::now() < deadline,
            "mosquitto did not listen on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (broker, addr)
}

/// A short QoS 1 open-loop run against `addr`: 64-byte payloads at `rate_per_sec`,
/// 0.2 s warm-up, 1 s measured, up to 2 s drain, two client threads.
fn qos1_run(
    addr: SocketAddr,
    scenario: Scenario,
    rate_per_sec: u64,
    persistent_sessions: PersistentSessions,
    broker_pid: Option<u32>,
) -> RunConfig {
    RunConfig {
        target_name: "mosquitto".into(),
        target_addr: addr.to_string(),
        connect: ConnectOptions::default(),
        workload: Workload::Messages(MessageConfig {
            scenario,
            qos: QoS::AtLeastOnce,
            payload_bytes: 64,
            rate_per_sec: Some(rate_per_sec),
            inflight_max: 100,
            warmup: Duration::from_millis(200),
            duration: Duration::from_secs(1),
            drain: Duration::from_secs(2),
            threads: 2,
            topic_prefix: None,
            persistent_sessions,
        }),
        broker_pid,
    }
}

#[test]
fn fan_in_against_mosquitto_loses_nothing() {
    let (broker, addr) = start_mosquitto();
    let config = qos1_run(
        addr,
        Scenario::FanIn { publishers: 4 },
        2000,
        PersistentSessions::None,
        Some(broker.0.id()),
    );
    let report = cutie_bench::run(&config, &mut NoObserver).expect("run completes");
    let m = report.messages.as_ref().expect("message report");
    assert_eq!(m.sent, 2400, "{report}");
    assert_eq!(m.acked, m.sent, "{report}");
    assert_eq!(m.received, m.expected, "{report}");
    assert_eq!((m.lost, m.duplicated, m.reordered), (0, 0, 0), "{report}");
    assert!(m.drained, "{report}");
    assert_eq!(m.latency_us.count, 2000, "{report}");
    let usage = report.broker.as_ref().expect("mosquitto's /proc entry");
    assert!(usage.after.rss_bytes > 0, "{report}");
    drop(broker);
}

#[test]
fn p2p_with_persistent_subscribers_against_mosquitto_loses_nothing_and_cleans_up() {
    let (broker, addr) = start_mosquitto();
    let config = qos1_run(
        addr,
        Scenario::PointToPoint { pairs: 3 },
        1500,
        PersistentSessions::Subscribers,
        None,
    );
    let report = cutie_bench::run(&config, &mut NoObserver).expect("run completes");
    let m = report.messages.as_ref().expect("message report");
    assert_eq!(m.sent, 1800, "{report}");
    assert_eq!(m.acked, m.sent, "{report}");
    assert_eq!(m.received, m.expected, "{report}");
    assert_eq!((m.lost, m.duplicated, m.reordered), (0, 0, 0), "{report}");
    // No setup failure (no session was present) and every session was discarded.
    assert_eq!(report.errors_total, 0, "{report}");
    drop(broker);
}
