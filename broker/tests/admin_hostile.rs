//! The admin endpoint against slow and hostile HTTP clients, on the real `cutie` binary
//! with its default `[admin]` limits (64 connections, 16 per address, 5 s to send a
//! request head, 30 s per connection):
//!
//! - `/healthz` still answers 200 while 100 idle TCP connections hold the admin port:
//!   the oldest idle connections are closed to make room, new ones are not refused;
//! - a slowloris client, one header byte a second, is closed once the header timeout
//!   has passed, however steadily it trickles;
//! - one address over its limit closes its own oldest idle connections, unanswered,
//!   and leaves another address's connections alone.
//!
//! Every wait polls a condition against a deadline; the only timed pause is the
//! slowloris client's own pace.

#![allow(clippy::unwrap_used)]

mod common;

use common::Launch;
use socket2::{Domain, Socket, Type};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The default `admin.header_read_timeout_secs`.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The default `admin.connections_per_address_max`.
const CONNECTIONS_PER_ADDRESS_MAX: usize = 16;

/// Generous bound on anything that should happen at once.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `GET path` on `stream` and reads the answer to its end: the status and the body.
fn request(stream: TcpStream, path: &str) -> (u16, String) {
    common::http_get(stream, path, TIMEOUT)
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    request(TcpStream::connect(addr).expect("connect"), path)
}

/// A connection from `source` (any port) to `addr`.
fn connect_from(source: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from((source, 0)).into())
        .expect("bind the client's source address");
    socket.connect(&addr.into()).expect("connect");
    socket.into()
}

/// The sum of the samples of `name` whose labels include `label` (`key="value"`).
fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, labels) = series.split_once('{').unwrap_or((series, ""));
            (series_name == name && labels.contains(label))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// What the server did with a connection on which the client sent nothing more.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    /// Closed without a byte.
    Closed,
    /// Answered something (then, presumably, closed).
    Answered(String),
    /// Still open at the deadline.
    Open,
}

/// Waits until `stream` is closed or answered, or `deadline`.
fn fate(stream: &mut TcpStream, deadline: Instant) -> Fate {
    let mut buffer = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Fate::Open;
        }
        stream
            .set_read_timeout(Some(left.min(Duration::from_millis(100))))
            .unwrap();
        match stream.read(&mut buffer) {
            Ok(0) => return Fate::Closed,
            Ok(n) => return Fate::Answered(String::from_utf8_lossy(&buffer[..n]).into_owned()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Fate::Closed,
            Err(e) => panic!("reading an idle admin connection: {e}"),
        }
    }
}

#[test]
fn healthz_answers_while_100_idle_connections_hold_the_port() {
    let broker = Launch::temp().admin().start();
    let admin = broker.admin_addr();
    let idle: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(admin).expect("connect an idle client"))
        .collect();

    let (status, body) = get(admin, "/healthz");
    assert_eq!(status, 200, "{body}");

    // The idle clients made room: at most the per-address limit of them stays open.
    let text = get(admin, "/metrics").1;
    let open = metric(&text, "cutie_admin_connections_open", "");
    assert!(
        open <= CONNECTIONS_PER_ADDRESS_MAX as f64 + 1.0,
        "{open} admin connections open"
    );
    let evicted = metric(
        &text,
        "cutie_admin_connections_closed_total",
        "reason=\"evicted\"",
    );
    assert!(
        evicted >= (100 - CONNECTIONS_PER_ADDRESS_MAX) as f64,
        "only {evicted} idle connections were evicted"
    );
    drop(idle);
}

#[test]
fn slowloris_client_is_closed_after_the_header_timeout() {
    let broker = Launch::temp().admin().start();
    let admin = broker.admin_addr();
    let mut slow = TcpStream::connect(admin).unwrap();
    let started = Instant::now();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: cutie\r\nX-Slow: ")
        .unwrap();
    let deadline = started + HEADER_READ_TIMEOUT + TIMEOUT;
    let closed_after = loop {
        // One byte a second: each read, and so each byte, resets a per-read timeout.
        match fate(
            &mut slow,
            (Instant::now() + Duration::from_secs(1)).min(deadline),
        ) {
            Fate::Closed => break started.elapsed(),
            Fate::Answered(text) => panic!("a request never completed was answered: {text}"),
            Fate::Open if Instant::now() >= deadline => {
                panic!("the slowloris client is still connected after {deadline:?}")
            }
            Fate::Open => {
                if slow.write_all(b"a").is_err() {
                    break started.elapsed();
                }
            }
        }
    };
    assert!(
        closed_after >= HEADER_READ_TIMEOUT - Duration::from_millis(500),
        "closed after {closed_after:?}, before the header timeout"
    );
    let text = get(admin, "/metrics").1;
    assert_eq!(
        metric(
            &text,
            "cutie_admin_connections_closed_total",
            "reason=\"header_timeout\""
        ),
        1.0,
        "{text}"
    );
}

#[test]
fn one_address_over_its_limit_closes_its_own_oldest_connections() {
    let broker = Launch::temp().admin().start();
    let admin = broker.admin_addr();
    // Another address first: its connections are the oldest of all.
    let other: Vec<TcpStream> = (0..8)
        .map(|_| connect_from([127, 0, 0, 2], admin))
        .collect();
    let over = 20;
    let mut oldest: Vec<TcpStream> = (0..over)
        .map(|_| connect_from([127, 0, 0, 1], admin))
        .collect();
    let newest: Vec<TcpStream> = (0..CONNECTIONS_PER_ADDRESS_MAX)
        .map(|_| connect_from([127, 0, 0, 1], admin))
        .collect();

    // The oldest of the crowded address are closed unanswered, well before they would
    // time out ...
    let deadline = Instant::now() + HEADER_READ_TIMEOUT - Duration::from_secs(1);
    for (i, stream) in oldest.iter_mut().enumerate() {
        assert_eq!(fate(stream, deadline), Fate::Closed, "connection {i}");
    }
    // ... and the newest still get their answers, as do the other address's.
    for (i, stream) in newest.into_iter().chain(other).enumerate() {
        let (status, body) = request(stream, "/healthz");
        assert_eq!(status, 200, "connection {i}: {body}");
    }
    let text = get(admin, "/metrics").1;
    assert_eq!(
        metric(
            &text,
            "cutie_admin_connections_closed_total",
            "reason=\"evicted\""
        ),
        over as f64,
        "{text}"
    );
}
