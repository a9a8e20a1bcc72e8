//! Clients that pipeline requests and never read the answers: the broker stops reading
//! them once what it owes them passes its bounds, so their backlog (and the broker's
//! memory) stays bounded while other clients carry on.

use crate::broker::{wait_until, Broker};
use crate::clients::{payload_string, Mqtt};
use crate::raw::{self, Connect, PINGREQ};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// What each hostile client offers to write: far more than the bounds let in.
const OFFERED_BYTES: usize = 128 << 20;
/// What the broker may have taken from one of them before it stops reading: its
/// output bounds (1 MiB waiting + 1 MiB being written), the kernel's socket buffers on
/// both sides of both directions (a few MiB each on loopback), and one read.
const TAKEN_BYTES_MAX: usize = 64 << 20;
/// How much the broker's resident memory may grow with four such clients attached.
const RSS_GROWTH_BYTES_MAX: u64 = 48 << 20;

shard_tests!(clients_that_never_read_are_paused_and_memory_stays_bounded);

/// Connects, then writes `pattern` over and over without reading a byte, until
/// [`OFFERED_BYTES`] are written or a write stalls (the broker stopped reading).
/// Returns the open socket and how much was written.
fn pipeline_without_reading(
    addr: std::net::SocketAddr,
    client_id: &str,
    pattern: &[u8],
) -> (TcpStream, usize) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .write_all(&Connect::new(client_id).encode())
        .expect("CONNECT");
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).expect("CONNACK");
    assert_eq!(
        connack,
        [0x20, 0x02, 0x00, 0x00],
        "CONNACK 0 for {client_id}"
    );
    stream
        .set_write_timeout(Some(Duration::from_millis(500)))
        .expect("write timeout");
    let chunk: Vec<u8> = pattern
        .iter()
        .copied()
        .cycle()
        .take(pattern.len() * (64 * 1024 / pattern.len()))
        .collect();
    let mut written = 0;
    while written < OFFERED_BYTES {
        // Partial writes go on where they stopped: packets are never torn.
        let at = written % chunk.len();
        match stream.write(&chunk[at..]) {
            Ok(n) => written += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("{client_id}: the broker closed the connection: {e}"),
        }
    }
    (stream, written)
}

fn clients_that_never_read_are_paused_and_memory_stays_bounded(shards: u16) {
    let broker = Broker::start(shards);
    let addr = broker.addr();
    // Retained messages make each SUBSCRIBE to `r/#` cost 256 KiB of answer.
    let mut publisher = Mqtt::connect(addr, "backlog-pub");
    for i in 0..256 {
        publisher.publish(&format!("r/{i}"), 1, true, vec![b'r'; 1024]);
    }
    publisher.wait_completed(256);
    let mut bystander = Mqtt::connect(addr, "backlog-bystander");
    bystander.subscribe("alive", 1);
    let baseline = broker.rss_bytes();

    let mut qos1 = Vec::new();
    let mut qos2 = Vec::new();
    for id in 1..=1000u16 {
        qos1.extend(raw::publish("nobody/listens", b"x", 1, id, false, false));
        qos2.extend(raw::publish("nobody/listens", b"x", 2, id, false, false));
    }
    let patterns: [(&str, Vec<u8>); 4] = [
        ("pings", PINGREQ.to_vec()),
        ("qos1", qos1),
        ("qos2", qos2),
        ("subscribes", raw::subscribe(1, &[("r/#", 0)])),
    ];
    let mut held = Vec::new();
    for (name, pattern) in &patterns {
        let (stream, written) =
            pipeline_without_reading(addr, &format!("never-reads-{name}"), pattern);
        assert!(
            written < TAKEN_BYTES_MAX,
            "{name}: the broker kept reading a client that never reads ({written} bytes taken)"
        );
        eprintln!(
            "{name}: the broker took {} KiB before it stopped reading",
            written >> 10
        );
        held.push(stream);
    }
    let growth = broker.rss_bytes().saturating_sub(baseline);
    eprintln!(
        "broker RSS: {} MiB at start, +{} MiB with four clients that never read",
        baseline >> 20,
        growth >> 20
    );
    assert!(
        growth < RSS_GROWTH_BYTES_MAX,
        "broker memory grew by {} MiB with four clients that never read",
        growth >> 20
    );
    // The broker serves everyone else meanwhile.
    publisher.publish("alive", 1, false, "still here");
    assert_eq!(payload_string(&bystander.recv()), "still here");
    // Once a paused client reads again, it gets its answers and is served again.
    let mut stream = held.remove(0);
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("read timeout");
    let mut drained = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    wait_until("the paused client is read again", || {
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                panic!("the broker closed a paused client");
            }
            drained += n;
        }
        stream.write_all(&PINGREQ).is_ok() && drained > (1 << 20)
    });
}
