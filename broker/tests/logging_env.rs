//! The broker's log and its environment, on the real `cutie` binary:
//!
//! - a broker whose stderr nobody reads keeps serving clients: log lines are written by
//!   a thread of their own and, once the pipe is full, dropped and counted
//!   (`cutie_log_lines_dropped_total`) instead of blocking the shard that logs them;
//! - an unknown `CUTIE_*` variable is a warning naming it (with a suggestion for a near
//!   miss), not a refusal to start.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Client, Launch};
use cutie_codec::QoS;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// `GET /metrics`: the sum of the samples of `name`.
fn scrape(admin: SocketAddr, name: &str) -> f64 {
    let mut stream = TcpStream::connect(admin).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: cutie\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let series_name = series.split_once('{').map_or(series, |(n, _)| n);
            (series_name == name)
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

#[test]
fn a_broker_whose_stderr_nobody_reads_keeps_serving() {
    // At trace level every connection logs several lines (accepted, CONNECT read, each
    // read and write): a few hundred connections fill the pipe's 64 KiB.
    let broker = Launch::temp()
        .admin()
        .env("CUTIE_LOG_LEVEL", "trace")
        .stop_reading_log_after_listening()
        .start();
    let admin = broker.admin_addr();

    // Connect until the log writer has had to drop lines: the pipe is full by then, and
    // so is the queue in front of it.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut connections = 0;
    while scrape(admin, "cutie_log_lines_dropped_total") == 0.0 {
        assert!(
            Instant::now() < deadline,
            "no log line dropped after {connections} connections"
        );
        for _ in 0..100 {
            let (client, _) = Client::connect(broker.addr, &format!("filler-{connections}"), true);
            drop(client);
            connections += 1;
        }
    }

    // Still serving: a QoS 1 message from one client to another.
    let (mut subscriber, _) = Client::connect(broker.addr, "subscriber", true);
    subscriber.subscribe("logging/still", QoS::AtLeastOnce);
    let (mut publisher, _) = Client::connect(broker.addr, "publisher", true);
    assert!(publisher.publish_qos1("logging/still", b"serving".to_vec(), 1));
    assert_eq!(subscriber.receive(1), vec![b"serving".to_vec()]);
}

#[test]
fn unknown_cutie_variables_are_warnings_not_a_refusal_to_start() {
    let mut broker = Launch::temp()
        .env("CUTIE_BIN", "x")
        .env("CUTIE_LIMITS__MAX_INFLIHGT", "5")
        .start();
    broker.assert_running();
    let warning = |name: &str| {
        broker
            .log_lines()
            .into_iter()
            .find(|line| line.contains("WARN") && line.contains(name))
            .unwrap_or_else(|| panic!("no warning naming {name}:\n{}", broker.log_text()))
    };
    let bin = warning("CUTIE_BIN");
    assert!(!bin.contains("did you mean"), "{bin}");
    let typo = warning("CUTIE_LIMITS__MAX_INFLIHGT");
    assert!(
        typo.contains("did you mean CUTIE_LIMITS__MAX_INFLIGHT?"),
        "{typo}"
    );
    // And it serves.
    let (mut subscriber, _) = Client::connect(broker.addr, "subscriber", true);
    subscriber.subscribe("env/ok", QoS::AtLeastOnce);
    let (mut publisher, _) = Client::connect(broker.addr, "publisher", true);
    assert!(publisher.publish_qos1("env/ok", b"up".to_vec(), 1));
    assert_eq!(subscriber.receive(1), vec![b"up".to_vec()]);
}
