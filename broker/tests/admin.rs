//! The admin endpoint and `$SYS`, against the real `cutie` binary and real clients.
//!
//! - `/metrics` is scraped during real traffic (rumqttc, mosquitto_pub/sub): the
//!   counters and the latency histograms' counts move by exactly what was sent;
//! - `/healthz`, `/readyz` answer 200 on a healthy broker, `/readyz` 503 once a shard's
//!   write-ahead log fails (its data directory on a small tmpfs that fills up: needs
//!   root and `mount`, skipped with a note otherwise, a failure under CI);
//! - the JSON API's lists page through every client and subscription;
//! - `$SYS/broker/...` reaches a real subscriber with the right values;
//! - the dashboard, in headless Chromium driven over WebDriver (chromedriver): its
//!   numbers appear and change with traffic, in the page and in screenshots.
//!
//! The broker runs with `--admin 127.0.0.1:0`; its `cutie is listening` line says
//! `admin=ADDR`.

#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
#[path = "loopback/broker.rs"]
mod broker;
#[allow(dead_code)]
#[path = "loopback/clients.rs"]
mod clients;
mod common;

use broker::{wait_until, Broker, TIMEOUT};
use clients::{mosquitto_pub, MosquittoSub, Mqtt};
use common::prerequisite::{find_tool, require, require_tool};
use common::Launch;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// ----- helpers ---------------------------------------------------------------------------

/// A broker with its admin endpoint on an ephemeral port.
fn start(shards: u16, env: &[(&str, &str)]) -> (Broker, SocketAddr) {
    let mut all = vec![
        ("CUTIE_ADMIN__ENABLED", "true"),
        ("CUTIE_ADMIN__LISTEN", "127.0.0.1:0"),
    ];
    all.extend_from_slice(env);
    let broker = Broker::start_with(shards, &all);
    let admin = broker.admin_addr();
    (broker, admin)
}

/// `GET path`: the status and the body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let stream = TcpStream::connect(addr).expect("connect to the admin endpoint");
    common::http_get(stream, path, TIMEOUT)
}

fn get_json(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (status, body) = get(addr, path);
    (
        status,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body}")),
    )
}

/// The sum of every sample of `name` whose labels include all of `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.trim_end_matches('}')),
                None => (series, ""),
            };
            (series_name == name
                && labels
                    .iter()
                    .all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}

fn scrape(admin: SocketAddr) -> String {
    let (status, text) = get(admin, "/metrics");
    assert_eq!(status, 200, "{text}");
    text
}

// ----- /metrics ---------------------------------------------------------------------------

/// Publishes `n` QoS 1 messages to a subscriber on another shard and checks that the
/// counters and the delivery latency histogram moved by exactly `n`.
#[test]
fn metrics_move_by_what_real_traffic_did() {
    let (broker, admin) = start(2, &[]);
    let before = scrape(admin);
    assert!(before.contains("# TYPE cutie_delivery_latency_seconds histogram"));
    assert!(before.contains("# TYPE cutie_publish_received_total counter"));
    assert_eq!(metric(&before, "cutie_shards", &[]), 2.0);

    let mut subscriber = Mqtt::connect(broker.addr(), "metrics-subscriber");
    subscriber.subscribe("metrics/#", 1);
    let mut publisher = Mqtt::connect(broker.addr(), "metrics-publisher");
    let n = 40;
    for i in 0..n {
        publisher.publish("metrics/a", 1, false, format!("m{i}"));
    }
    publisher.wait_completed(n);
    assert_eq!(subscriber.recv_payloads(n).len(), n);

    let n = n as f64;
    let received = |t: &str| metric(t, "cutie_publish_received_total", &[("qos", "1")]);
    let sent = |t: &str| metric(t, "cutie_publish_sent_total", &[("qos", "1")]);
    let delivered = |t: &str| metric(t, "cutie_delivery_latency_seconds_count", &[]);
    let mut after = String::new();
    wait_until("the counters of 40 deliveries in /metrics", || {
        after = scrape(admin);
        received(&after) - received(&before) == n && delivered(&after) - delivered(&before) == n
    });
    assert_eq!(sent(&after) - sent(&before), n);
    assert_eq!(
        metric(
            &after,
            "cutie_delivery_latency_seconds_bucket",
            &[("le", "+Inf")]
        ) - metric(
            &before,
            "cutie_delivery_latency_seconds_bucket",
            &[("le", "+Inf")]
        ),
        n
    );
    // Every delivery of a loopback test takes less than 10 s, and more than nothing.
    let in_10s = |t: &str| metric(t, "cutie_delivery_latency_seconds_bucket", &[("le", "10")]);
    assert_eq!(in_10s(&after) - in_10s(&before), n);
    assert!(metric(&after, "cutie_delivery_latency_seconds_sum", &[]) > 0.0);
    assert_eq!(metric(&after, "cutie_connections_current", &[]), 2.0);
    assert!(metric(&after, "cutie_subscriptions_current", &[]) >= 1.0);
    assert!(metric(&after, "cutie_network_received_bytes_total", &[]) > 0.0);
    assert!(metric(&after, "cutie_publish_received_bytes_total", &[]) >= 2.0 * n);
    assert_eq!(metric(&after, "cutie_shard_ready", &[]), 2.0);
    assert_eq!(metric(&after, "cutie_wal_healthy", &[]), 2.0);

    // Nobody subscribes to this: counted as dropped for no subscribers.
    let no_subscribers = |t: &str| {
        metric(
            t,
            "cutie_publish_dropped_total",
            &[("reason", "no_subscribers")],
        )
    };
    publisher.publish("nobody/listens", 1, false, "x");
    publisher.wait_completed(41);
    wait_until("a no_subscribers drop", || {
        no_subscribers(&scrape(admin)) - no_subscribers(&before) == 1.0
    });
}

/// The ban table is broker-wide: its size and the bans made are series of their own.
#[test]
fn the_ban_table_is_measured() {
    let (broker, admin) = start(1, &[("CUTIE_LIMITS__BAN_THRESHOLD", "1")]);
    let before = scrape(admin);
    assert!(
        before.contains("# TYPE cutie_bans_total counter"),
        "{before}"
    );
    assert_eq!(metric(&before, "cutie_bans_total", &[]), 0.0);
    // Two malformed first packets from 127.0.0.1: more than the threshold of one.
    for _ in 0..2 {
        let mut stream = TcpStream::connect(broker.addr()).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.write_all(&[0x00, 0x00]).unwrap();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    }
    wait_until("the ban in /metrics", || {
        let text = scrape(admin);
        metric(&text, "cutie_bans_total", &[]) == 1.0
            && metric(&text, "cutie_ban_table_addresses", &[]) == 1.0
    });
}

/// A persistent subscriber's deliveries are logged (durability sync): the commit
/// latency histogram counts every fdatasync.
#[test]
fn wal_commits_are_counted_and_timed() {
    let (broker, admin) = start(1, &[]);
    let mut sub = MosquittoSub::start(
        broker.addr(),
        &["-t", "wal/#", "-q", "1", "-c", "-i", "wal-subscriber"],
    );
    for i in 0..5 {
        mosquitto_pub(
            broker.addr(),
            &["-t", "wal/x", "-q", "1", "-m", &i.to_string()],
        );
    }
    for _ in 0..5 {
        sub.recv();
    }
    let mut text = String::new();
    wait_until("timed commits in /metrics", || {
        text = scrape(admin);
        metric(&text, "cutie_wal_commit_seconds_count", &[]) >= 1.0
    });
    let syncs = metric(&text, "cutie_wal_syncs_total", &[]);
    let timed = metric(&text, "cutie_wal_commit_seconds_count", &[]);
    assert!(
        syncs >= 1.0 && timed <= syncs,
        "syncs {syncs}, timed {timed}"
    );
    assert!(metric(&text, "cutie_wal_records_total", &[]) >= 5.0);
    assert!(metric(&text, "cutie_sessions_online", &[]) >= 1.0);
}

// ----- health, readiness, the JSON API -----------------------------------------------------

#[test]
fn health_and_readiness_are_200_on_a_healthy_broker() {
    let (_broker, admin) = start(2, &[]);
    let (status, health) = get_json(admin, "/healthz");
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "ok");
    let (status, ready) = get_json(admin, "/readyz");
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["shards"], 2);
    let (status, _) = get_json(admin, "/nope");
    assert_eq!(status, 404);
    let (status, page) = get(admin, "/");
    assert_eq!(status, 200);
    assert!(page.contains("<title>cutie dashboard</title>"));
    // Nothing from elsewhere (the SVG namespace is a name, not a download).
    let page = page.replace("http://www.w3.org/2000/svg", "");
    assert!(
        !page.contains("http:") && !page.contains("https:") && !page.contains("<link"),
        "the dashboard loads nothing from elsewhere"
    );
}

#[test]
fn stats_and_paginated_lists_cover_every_client() {
    let (broker, admin) = start(2, &[]);
    let clients: Vec<Mqtt> = (0..7)
        .map(|i| {
            let mut client = Mqtt::connect(broker.addr(), &format!("listed-{i}"));
            client.subscribe(&format!("listed/{i}/#"), 1);
            client.subscribe("listed/all", 0);
            client
        })
        .collect();
    // Counts come from the shards' latest ticks.
    wait_until("7 connections in /api/v1/stats", || {
        let (_, stats) = get_json(admin, "/api/v1/stats");
        stats["totals"]["connections"] == 7 && stats["totals"]["subscriptions"] == 14
    });
    let (_, stats) = get_json(admin, "/api/v1/stats");
    assert_eq!(stats["shard_count"], 2);
    assert_eq!(stats["shards"].as_array().unwrap().len(), 2);
    assert_eq!(stats["ready"], true);

    let mut seen = Vec::new();
    for offset in (0..7).step_by(3) {
        let (status, page) = get_json(admin, &format!("/api/v1/clients?offset={offset}&limit=3"));
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["total"], 7);
        for item in page["items"].as_array().unwrap() {
            assert_eq!(item["connected"], true);
            assert_eq!(item["subscriptions"], 2);
            seen.push(item["client_id"].as_str().unwrap().to_owned());
        }
    }
    seen.sort();
    let expected: Vec<String> = (0..7).map(|i| format!("listed-{i}")).collect();
    assert_eq!(seen, expected);

    let (_, page) = get_json(admin, "/api/v1/subscriptions?offset=0&limit=1000");
    assert_eq!(page["total"], 14);
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 14);
    assert!(items
        .iter()
        .any(|s| s["client_id"] == "listed-3" && s["filter"] == "listed/3/#" && s["qos"] == 1));
    let (_, page) = get_json(admin, "/api/v1/subscriptions?offset=13&limit=5");
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let (status, _) = get_json(admin, "/api/v1/clients?limit=100000");
    assert_eq!(status, 400);
    drop(clients);
}

// ----- $SYS --------------------------------------------------------------------------------

#[test]
fn sys_topics_reach_a_subscriber_with_the_right_values() {
    let (broker, _admin) = start(2, &[("CUTIE_SYS_INTERVAL_SECS", "1")]);
    let mut publisher = Mqtt::connect(broker.addr(), "sys-publisher");
    for i in 0..3 {
        publisher.publish("sys/test", 1, false, format!("{i}"));
    }
    publisher.wait_completed(3);
    let mut sub = MosquittoSub::start(broker.addr(), &["-t", "$SYS/broker/#", "-i", "sys-watcher"]);
    let mut values = std::collections::BTreeMap::new();
    let deadline = Instant::now() + TIMEOUT;
    // Wait for a publication that counts both clients and the 3 messages.
    while values.get("$SYS/broker/publish/messages/received") != Some(&"3".to_owned())
        || values.get("$SYS/broker/clients/connected") != Some(&"2".to_owned())
        || values.len() < 15
    {
        assert!(Instant::now() < deadline, "$SYS values seen: {values:?}");
        let message = sub.recv();
        values.insert(message.topic, message.payload);
    }
    assert_eq!(
        values.get("$SYS/broker/version").map(String::as_str),
        Some(concat!("cutie ", env!("CARGO_PKG_VERSION")))
    );
    let uptime = &values["$SYS/broker/uptime"];
    assert!(
        uptime.ends_with(" seconds") && uptime.trim_end_matches(" seconds").parse::<u64>().is_ok(),
        "{uptime}"
    );
    // The watcher's own subscription.
    assert!(
        values["$SYS/broker/subscriptions/count"]
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert!(values["$SYS/broker/bytes/received"].parse::<u64>().unwrap() > 0);
    assert_eq!(values["$SYS/broker/publish/bytes/received"], "3");
    // Retained: a new subscriber gets them at once, with the retain flag.
    let mut late = MosquittoSub::start(broker.addr(), &["-t", "$SYS/broker/version"]);
    let message = late.recv();
    assert!(message.retain);
    assert_eq!(
        message.payload,
        concat!("cutie ", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn sys_topics_can_be_turned_off() {
    let (broker, _admin) = start(1, &[("CUTIE_SYS_INTERVAL_SECS", "0")]);
    let mut watcher = Mqtt::connect(broker.addr(), "sys-off-watcher");
    watcher.subscribe("$SYS/#", 0);
    watcher.subscribe("marker", 0);
    // With $SYS on, the first publication comes one second after the start
    // (broker/src/admin/sys.rs). Wait until the broker itself says that time has passed,
    // with a margin for the publication to be routed.
    let admin = broker.admin_addr();
    wait_until("the broker to be up for 2 s", || {
        metric(&scrape(admin), "cutie_uptime_seconds", &[]) >= 2.0
    });
    let mut publisher = Mqtt::connect(broker.addr(), "sys-off-publisher");
    publisher.publish("marker", 0, false, "marker");
    // The first message is the marker: no $SYS publication came before it.
    assert_eq!(watcher.recv().topic, "marker");
}

// ----- readiness with a failing write-ahead log ---------------------------------------------

/// Mounts a tmpfs of `size` at a new directory; `None` (with a note) where that is not
/// possible (not root, no mount, a container without the capability), a failure under CI.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?.keep();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .stderr(Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => Some(Tmpfs(dir)),
            other => {
                let _ = std::fs::remove_dir(&dir);
                require(
                    &format!("a tmpfs mount at {} ({other:?})", dir.display()),
                    false,
                    "it needs root and mount(8)",
                );
                None
            }
        }
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The real binary with its admin endpoint on `--admin 127.0.0.1:0` and its data directory
/// on `data_dir` (the loopback harness always uses a temporary directory). Killed on drop.
fn own_broker(data_dir: &Path, env: &[(&str, &str)]) -> Launch {
    Launch::new(data_dir)
        .in_data_dir()
        .admin()
        .envs(env.iter().copied())
        .timeout(TIMEOUT)
}

#[test]
fn readyz_turns_503_when_the_write_ahead_log_fails() {
    let Some(tmpfs) = Tmpfs::mount("4m") else {
        return;
    };
    let broker = own_broker(tmpfs.path(), &[]).start();
    let admin = broker.admin_addr();
    let (status, _) = get_json(admin, "/readyz");
    assert_eq!(status, 200);
    // A persistent subscriber's deliveries are logged with their payloads: publish
    // 64 KiB messages at QoS 1 until the 4 MiB are full and a write fails. Once it has,
    // QoS 1 publishes are refused (the publisher is disconnected): mosquitto_pub's exit
    // status is not checked.
    let _sub = MosquittoSub::start(
        broker.addr,
        &["-t", "fill/#", "-q", "1", "-c", "-i", "filler"],
    );
    let payload = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(payload.path(), "x".repeat(64 * 1024)).unwrap();
    let deadline = Instant::now() + TIMEOUT * 3;
    let ready = loop {
        assert!(Instant::now() < deadline, "the log never failed");
        let (status, ready) = get_json(admin, "/readyz");
        if status == 503 {
            break ready;
        }
        let _ = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &broker.addr.port().to_string()])
            .args(["-t", "fill/x", "-q", "1", "-f"])
            .arg(payload.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    };
    assert_eq!(ready["ready"], false);
    assert!(
        ready["reasons"]
            .to_string()
            .contains("write-ahead log failed"),
        "{ready}"
    );
    // Alive all the same: liveness does not restart a broker for a full disk.
    let (status, health) = get_json(admin, "/healthz");
    assert_eq!(status, 200, "{health}");
    // The counters follow at the shard's next tick.
    wait_until("the failure in /metrics", || {
        let text = scrape(admin);
        metric(&text, "cutie_wal_healthy", &[]) == 0.0
            && metric(&text, "cutie_wal_failures_total", &[]) >= 1.0
    });
}

/// While a large log is recovered, the endpoint is up and says "starting": /readyz and
/// /healthz answer 503 until the shards serve, then 200.
#[test]
fn readyz_is_503_while_the_log_is_recovered() {
    let data_dir = tempfile::tempdir().unwrap();
    // A persistent session that is offline, with a long queue: every message is a
    // record that recovery replays.
    // Every message queued (not dropped at the default 1000), so that recovery replays
    // 30,000 records and takes long enough to be seen from outside.
    let queue = [("CUTIE_LIMITS__MAX_QUEUED_MESSAGES", "100000")];
    {
        let broker = own_broker(data_dir.path(), &queue).start();
        drop(MosquittoSub::start(
            broker.addr,
            &[
                "-t",
                "queued/#",
                "-q",
                "1",
                "-c",
                "-i",
                "offline-subscriber",
            ],
        ));
        let line = "y".repeat(512);
        let input: String = (0..30_000).map(|_| format!("{line}\n")).collect();
        clients::mosquitto_pub_stdin(broker.addr, &["-t", "queued/x", "-q", "1", "-l"], &input);
        broker.stop();
    }
    let mut broker = own_broker(data_dir.path(), &queue).spawn();
    let admin: SocketAddr = loop {
        let line = broker.next_line();
        if line.contains("admin endpoint listening") {
            break common::field(&line, "admin")
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("admin=ADDR in {line}"));
        }
    };
    let mut seen = Vec::new();
    loop {
        let (status, ready) = get_json(admin, "/readyz");
        let (live, _) = get_json(admin, "/healthz");
        seen.push((status, live, ready.to_string()));
        if status == 200 {
            break;
        }
        assert!(seen.len() < 100_000, "never ready: {:?}", seen.last());
    }
    broker.wait_listening();
    let (starting, ready): (Vec<_>, Vec<_>) = seen.iter().partition(|(status, ..)| *status == 503);
    assert!(
        !starting.is_empty(),
        "/readyz was never seen 503 during recovery: {seen:?}"
    );
    assert!(starting[0].2.contains("starting"), "{:?}", starting[0]);
    assert_eq!(starting[0].1, 503, "liveness waits for the shards too");
    assert_eq!(ready.len(), 1);
    eprintln!(
        "/readyz answered 503 {} times during recovery, then 200",
        starting.len()
    );
}

// ----- the dashboard in a headless browser --------------------------------------------------

/// A chromedriver process and one headless Chromium session.
struct WebDriver {
    driver: Child,
    port: u16,
    session: String,
}

const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

impl WebDriver {
    /// `None` (with a note) when chromedriver is not installed; under CI a missing
    /// browser fails the test (`common/prerequisite.rs`).
    fn start() -> Option<WebDriver> {
        let program = require_tool("chromedriver", "chromium-driver")?;
        let browser = find_tool("chromium").or_else(|| find_tool("chromium-browser"));
        if !require(
            "the program chromium",
            browser.is_some(),
            "apt-get install chromium",
        ) {
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(program)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let mut webdriver = WebDriver {
            driver,
            port,
            session: String::new(),
        };
        wait_until("chromedriver to answer /status", || {
            webdriver
                .request("GET", "/status", None)
                .is_some_and(|v| v["value"]["ready"] == true)
        });
        let mut options = serde_json::json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,1000"],
        });
        if let Some(binary) = browser.as_deref().and_then(Path::to_str) {
            options["binary"] = binary.into();
        }
        let capabilities = serde_json::json!({
            "capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}
        });
        let created = webdriver
            .request("POST", "/session", Some(&capabilities))
            .expect("chromedriver answers POST /session");
        webdriver.session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        Some(webdriver)
    }

    /// One WebDriver command; `None` if chromedriver cannot be reached.
    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Option<Value> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .ok()?;
        let body = body.map(Value::to_string).unwrap_or_default();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        )
        .ok()?;
        // chromedriver says `Connection: close` but keeps the socket open: read the
        // head, then Content-Length bytes.
        let mut response = Vec::new();
        let mut chunk = [0u8; 64 * 1024];
        let head_end = loop {
            if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let n = stream.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            response.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&response[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())?;
        while response.len() < head_end + length {
            let n = stream.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            response.extend_from_slice(&chunk[..n]);
        }
        serde_json::from_slice(&response[head_end..head_end + length]).ok()
    }

    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let value = self
            .request(method, &path, body.as_ref())
            .unwrap_or_else(|| panic!("chromedriver did not answer {method} {path}"));
        assert!(
            value["value"].get("error").is_none(),
            "{method} {path}: {value}"
        );
        value["value"].clone()
    }

    fn element(&self, css: &str) -> String {
        let found = self.command(
            "POST",
            "/element",
            Some(serde_json::json!({"using": "css selector", "value": css})),
        );
        found[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_owned()
    }

    fn text(&self, css: &str) -> String {
        let element = self.element(css);
        self.command("GET", &format!("/element/{element}/text"), None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The number an element shows (`12,345`), if it shows one.
    fn number(&self, css: &str) -> Option<u64> {
        self.text(css).replace(',', "").trim().parse().ok()
    }

    fn screenshot(&self, element_css: Option<&str>) -> Vec<u8> {
        let path = match element_css {
            Some(css) => format!("/element/{}/screenshot", self.element(css)),
            None => "/screenshot".to_owned(),
        };
        let encoded = self.command("GET", &path, None);
        base64_decode(encoded.as_str().unwrap())
    }
}

impl Drop for WebDriver {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.request("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut bits, mut count) = (0u32, 0);
    for byte in text.bytes() {
        let Some(value) = ALPHABET.iter().position(|b| *b == byte) else {
            continue; // padding, line breaks
        };
        bits = (bits << 6) | value as u32;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    out
}

/// Decodes a PNG into (width, height, RGBA-or-RGB pixels, bytes per pixel).
fn decode_png(data: &[u8]) -> (u32, u32, Vec<u8>, usize) {
    let decoder = png::Decoder::new(data);
    let mut reader = decoder.read_info().expect("a PNG");
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels).expect("a PNG frame");
    pixels.truncate(info.buffer_size());
    (
        info.width,
        info.height,
        pixels,
        info.color_type.samples() * (info.bit_depth as usize).div_ceil(8),
    )
}

/// Distinct colours in an image: 1 for a blank one, many where text is drawn.
fn colours(pixels: &[u8], bytes_per_pixel: usize) -> usize {
    let mut seen: Vec<&[u8]> = pixels.chunks(bytes_per_pixel).collect();
    seen.sort_unstable();
    seen.dedup();
    seen.len()
}

#[test]
fn dashboard_shows_live_numbers_in_a_headless_browser() {
    // No $SYS: its retained topics would count in the retained messages.
    let (broker, admin) = start(2, &[("CUTIE_SYS_INTERVAL_SECS", "0")]);
    let Some(browser) = WebDriver::start() else {
        return;
    };
    browser.command(
        "POST",
        "/url",
        Some(serde_json::json!({"url": format!("http://{admin}/")})),
    );
    wait_until("the dashboard to show its first numbers", || {
        browser.number("#connections") == Some(0) && browser.text("#status") == "ready"
    });
    assert_eq!(browser.number("#publish-received"), Some(0));
    let card_before = browser.screenshot(Some("#publish-received"));
    let page_before = browser.screenshot(None);

    let mut subscriber = Mqtt::connect(broker.addr(), "dashboard-subscriber");
    subscriber.subscribe("dash/#", 0);
    let mut publisher = Mqtt::connect(broker.addr(), "dashboard-publisher");
    let n = 250;
    for i in 0..n {
        publisher.publish("dash/x", 1, i % 10 == 0, format!("{i}"));
    }
    publisher.wait_completed(n);
    subscriber.recv_payloads(n);
    let expected = [Some(n as u64), Some(2), Some(1), Some(1)];
    let shown = || {
        [
            "#publish-received",
            "#connections",
            "#subscriptions",
            "#retained",
        ]
        .map(|css| browser.number(css))
    };
    let deadline = Instant::now() + TIMEOUT;
    while shown() != expected {
        assert!(
            Instant::now() < deadline,
            "the dashboard shows {:?} (received, connections, subscriptions, retained), \
             expected {expected:?}",
            shown()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(browser.number("#publish-sent"), Some(n as u64));
    assert!(browser.number("#latency-total").unwrap_or(0) >= n as u64);
    assert!(browser.text("#latency-p99").ends_with('s'), "a latency");
    assert_eq!(
        browser
            .command(
                "POST",
                "/elements",
                Some(serde_json::json!({"using": "css selector", "value": "#shards tbody tr"}))
            )
            .as_array()
            .map(Vec::len),
        Some(2),
        "one row per shard"
    );
    let card_after = browser.screenshot(Some("#publish-received"));
    let page_after = browser.screenshot(None);

    // The screenshots: real images, with text drawn, and the number's card changed.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    for (name, data) in [
        ("dashboard-before.png", &page_before),
        ("dashboard-after.png", &page_after),
    ] {
        std::fs::write(dir.join(name), data).unwrap();
    }
    let (width, height, pixels, bpp) = decode_png(&page_after);
    assert!(width >= 800 && height >= 600, "{width}x{height}");
    assert!(colours(&pixels, bpp) > 20, "the page is drawn, not blank");
    let (_, _, card_before_pixels, bpp_before) = decode_png(&card_before);
    let (_, _, card_after_pixels, bpp_after) = decode_png(&card_after);
    assert!(
        colours(&card_before_pixels, bpp_before) > 2,
        "the card shows a number"
    );
    assert!(
        colours(&card_after_pixels, bpp_after) > 2,
        "the card shows a number"
    );
    assert_ne!(
        card_before_pixels, card_after_pixels,
        "the number drawn in the card changed"
    );
    assert_ne!(page_before, page_after);
    eprintln!(
        "dashboard screenshots: {}/dashboard-{{before,after}}.png",
        dir.display()
    );
}

// ----- deploy/grafana -----------------------------------------------------------------------

/// The Grafana dashboard parses and queries only series the broker exports.
#[test]
fn grafana_dashboard_uses_only_exported_metric_names() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/cutie.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("deploy/grafana/cutie.json is JSON");
    assert!(dashboard["panels"]
        .as_array()
        .is_some_and(|p| !p.is_empty()));
    let (_broker, admin) = start(1, &[]);
    let scraped = scrape(admin);
    let exported: std::collections::BTreeSet<&str> = scraped
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .collect();
    let mut used = std::collections::BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("cutie_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        used.insert(name);
    }
    assert!(used.len() > 10, "{used:?}");
    let missing: Vec<&String> = used
        .iter()
        .filter(|name| !exported.contains(name.as_str()))
        .collect();
    assert!(missing.is_empty(), "not exported: {missing:?}");
}
