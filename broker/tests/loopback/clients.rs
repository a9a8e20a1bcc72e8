//! Real MQTT clients: rumqttc (a library) and mosquitto_pub / mosquitto_sub (programs).

use crate::broker::TIMEOUT;
use rumqttc::{
    Client, ClientError, ConnectReturnCode, Event, Incoming, MqttOptions, Publish, QoS,
    SubscribeFilter, SubscribeReasonCode,
};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

/// `n` (0, 1, 2) as rumqttc's QoS.
pub fn qos(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => panic!("QoS {n} does not exist"),
    }
}

/// rumqttc options for `client_id` at `addr`: clean session, keep-alive 60 s, packets up
/// to 64 KiB both ways.
pub fn options(addr: SocketAddr, client_id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options
        .set_keep_alive(Duration::from_secs(60))
        .set_max_packet_size(64 * 1024, 64 * 1024);
    options
}

/// A rumqttc client whose event loop runs on its own thread; events come back over a
/// channel and are sorted here (PUBLISHes queued, acknowledgements counted), so waiting
/// for one kind never loses another.
pub struct Mqtt {
    pub client: Client,
    pub client_id: String,
    /// The CONNACK's session-present flag.
    pub session_present: bool,
    events: Receiver<Result<Event, String>>,
    publishes: VecDeque<Publish>,
    subacks: VecDeque<Vec<SubscribeReasonCode>>,
    unsubacks: usize,
    /// PUBACKs and PUBCOMPs received: QoS 1 and 2 publishes completed.
    completed: usize,
    /// Why the event loop ended, once it has.
    closed: Option<String>,
}

impl std::fmt::Debug for Mqtt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mqtt")
            .field("client_id", &self.client_id)
            .field("queued_publishes", &self.publishes.len())
            .field("completed", &self.completed)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl Mqtt {
    /// Connects `client_id` with a clean session and waits for CONNACK 0.
    pub fn connect(addr: SocketAddr, client_id: &str) -> Mqtt {
        Mqtt::connect_with(options(addr, client_id))
    }

    /// Connects with `options` and waits for CONNACK 0.
    pub fn connect_with(options: MqttOptions) -> Mqtt {
        let client_id = options.client_id();
        let (client, mut connection) = Client::new(options, 64);
        let (event_tx, events) = mpsc::channel();
        thread::Builder::new()
            .name(format!("rumqttc {client_id}"))
            .spawn(move || {
                for event in connection.iter() {
                    let end = event.is_err();
                    if event_tx.send(event.map_err(|e| e.to_string())).is_err() || end {
                        break;
                    }
                }
            })
            .expect("spawn the rumqttc event loop thread");
        let mut mqtt = Mqtt {
            client,
            client_id,
            session_present: false,
            events,
            publishes: VecDeque::new(),
            subacks: VecDeque::new(),
            unsubacks: 0,
            completed: 0,
            closed: None,
        };
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match mqtt.next_event(deadline) {
                Some(Event::Incoming(Incoming::ConnAck(connack))) => {
                    assert_eq!(
                        connack.code,
                        ConnectReturnCode::Success,
                        "CONNACK for {}",
                        mqtt.client_id
                    );
                    mqtt.session_present = connack.session_present;
                    return mqtt;
                }
                Some(other) => mqtt.sort(other),
                None => panic!(
                    "{}: connection ended before CONNACK: {:?}",
                    mqtt.client_id, mqtt.closed
                ),
            }
        }
    }

    /// Subscribes and waits for the SUBACK; returns its return codes.
    pub fn subscribe_many(&mut self, filters: &[(&str, u8)]) -> Vec<SubscribeReasonCode> {
        self.client
            .subscribe_many(
                filters
                    .iter()
                    .map(|(filter, q)| SubscribeFilter::new((*filter).to_owned(), qos(*q))),
            )
            .expect("send SUBSCRIBE");
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(codes) = self.subacks.pop_front() {
                return codes;
            }
            self.pump(deadline, "SUBACK");
        }
    }

    /// Subscribes to one filter, waits for the SUBACK and checks that `qos` was granted.
    pub fn subscribe(&mut self, filter: &str, q: u8) {
        let codes = self.subscribe_many(&[(filter, q)]);
        assert_eq!(
            codes,
            vec![SubscribeReasonCode::Success(qos(q))],
            "{}: SUBACK for {filter}",
            self.client_id
        );
    }

    /// Unsubscribes and waits for the UNSUBACK.
    pub fn unsubscribe(&mut self, filter: &str) {
        let before = self.unsubacks;
        self.client.unsubscribe(filter).expect("send UNSUBSCRIBE");
        let deadline = Instant::now() + TIMEOUT;
        while self.unsubacks == before {
            self.pump(deadline, "UNSUBACK");
        }
    }

    /// Queues a PUBLISH (rumqttc sends it and completes the QoS flow). Waits while
    /// rumqttc's request queue is full (its inflight window is, when the broker does
    /// not acknowledge), and panics if that lasts [`TIMEOUT`].
    pub fn publish(&mut self, topic: &str, q: u8, retain: bool, payload: impl Into<Vec<u8>>) {
        let payload: Vec<u8> = payload.into();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match self
                .client
                .try_publish(topic, qos(q), retain, payload.clone())
            {
                Ok(()) => return,
                Err(ClientError::TryRequest(_)) if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(1));
                }
                Err(error) => panic!(
                    "{}: cannot queue a PUBLISH to {topic} for {TIMEOUT:?} \
                     (no PUBACKs from the broker, or the connection ended): {error}",
                    self.client_id
                ),
            }
        }
    }

    /// Waits until `n` QoS 1/2 publishes of this client have completed (PUBACK or
    /// PUBCOMP received), counting from connect.
    pub fn wait_completed(&mut self, n: usize) {
        let deadline = Instant::now() + TIMEOUT;
        while self.completed < n {
            self.pump(deadline, "PUBACK/PUBCOMP");
        }
    }

    /// Returns once every shard has handled everything this client published before.
    ///
    /// A retained QoS 1 publish is acknowledged only after every shard holds it (the
    /// shard core's barrier), and each shard receives this client's messages in order
    /// over one channel; so its PUBACK means the earlier messages were delivered, queued
    /// or dropped everywhere. Used before a test changes a subscriber that those
    /// messages might still be travelling to. The fence message is retained on
    /// `fence/<client_id>` and then cleared; `completed` counts both.
    pub fn fence(&mut self) {
        let topic = format!("fence/{}", self.client_id);
        let target = self.completed + 2;
        self.publish(&topic, 1, true, "fence");
        self.publish(&topic, 1, true, "");
        self.wait_completed(target);
    }

    /// The next PUBLISH received; panics after [`TIMEOUT`].
    pub fn recv(&mut self) -> Publish {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(publish) = self.publishes.pop_front() {
                return publish;
            }
            self.pump(deadline, "PUBLISH");
        }
    }

    /// Payloads of the next `n` PUBLISHes.
    pub fn recv_payloads(&mut self, n: usize) -> Vec<String> {
        (0..n).map(|_| payload_string(&self.recv())).collect()
    }

    /// Sends DISCONNECT and waits until the broker closes the connection.
    pub fn disconnect(mut self) {
        self.client.disconnect().expect("queue DISCONNECT");
        self.wait_closed();
    }

    /// Waits until the connection ends (the broker closed it); returns why.
    pub fn wait_closed(&mut self) -> String {
        let deadline = Instant::now() + TIMEOUT;
        while self.closed.is_none() {
            match self.next_event(deadline) {
                Some(event) => self.sort(event),
                None if self.closed.is_none() => panic!(
                    "{}: still connected after {TIMEOUT:?}, expected the broker to close it",
                    self.client_id
                ),
                None => {}
            }
        }
        self.closed.clone().unwrap_or_default()
    }

    /// One event into its queue or counter; panics if the connection ended.
    fn pump(&mut self, deadline: Instant, what: &str) {
        match self.next_event(deadline) {
            Some(event) => self.sort(event),
            None => match &self.closed {
                Some(why) => panic!(
                    "{}: connection ended while waiting for {what}: {why}",
                    self.client_id
                ),
                None => panic!(
                    "{}: timed out after {TIMEOUT:?} waiting for {what}",
                    self.client_id
                ),
            },
        }
    }

    fn sort(&mut self, event: Event) {
        match event {
            Event::Incoming(Incoming::Publish(publish)) => self.publishes.push_back(publish),
            Event::Incoming(Incoming::SubAck(suback)) => {
                self.subacks.push_back(suback.return_codes)
            }
            Event::Incoming(Incoming::UnsubAck(_)) => self.unsubacks += 1,
            Event::Incoming(Incoming::PubAck(_) | Incoming::PubComp(_)) => self.completed += 1,
            _ => {}
        }
    }

    /// The next event before `deadline`; `None` on timeout or when the connection has
    /// ended (then `closed` says why).
    fn next_event(&mut self, deadline: Instant) -> Option<Event> {
        if self.closed.is_some() {
            return None;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match self.events.recv_timeout(left) {
            Ok(Ok(event)) => Some(event),
            Ok(Err(why)) => {
                self.closed = Some(why);
                None
            }
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                self.closed = Some("event loop ended".to_owned());
                None
            }
        }
    }
}

/// A PUBLISH's payload as text.
pub fn payload_string(publish: &Publish) -> String {
    String::from_utf8(publish.payload.to_vec()).expect("UTF-8 payload")
}

/// A message as printed by [`MosquittoSub`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MosquittoMessage {
    pub qos: u8,
    pub retain: bool,
    pub topic: String,
    pub payload: String,
}

/// A running `mosquitto_sub`, with `-d` (so SUBACK is visible) and one `MSG` line per
/// message. Killed on drop.
#[derive(Debug)]
pub struct MosquittoSub {
    child: Child,
    lines: Receiver<String>,
    /// The SUBACK line (`Subscribed (mid: 1): 0`).
    subscribed: Option<String>,
    /// Messages printed before the SUBACK line (a persistent session's stored ones).
    early: VecDeque<String>,
}

impl MosquittoSub {
    /// Starts `mosquitto_sub` against `addr` with `args` (`-t`, `-q`, `-i`, `-c`...) and
    /// waits for its SUBACK.
    pub fn start(addr: SocketAddr, args: &[&str]) -> MosquittoSub {
        // mosquitto_sub block-buffers a pipe; stdbuf makes it line-buffered so the
        // SUBACK line is seen before any message arrives.
        let mut child = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub", "-h", &addr.ip().to_string()])
            .args([
                "-p",
                &addr.port().to_string(),
                "-d",
                "-F",
                "MSG %q %r %t %p",
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run mosquitto_sub (install mosquitto-clients)");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (line_tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut sub = MosquittoSub {
            child,
            lines,
            subscribed: None,
            early: VecDeque::new(),
        };
        while sub.subscribed.is_none() {
            let line = sub.next_line("SUBACK");
            if line.starts_with("Subscribed") {
                sub.subscribed = Some(line);
            } else if line.starts_with("MSG ") {
                sub.early.push_back(line);
            }
        }
        sub
    }

    /// The granted QoS values printed for the SUBACK.
    pub fn granted(&self) -> Vec<u8> {
        let line = self.subscribed.as_deref().unwrap_or_default();
        line.rsplit(':')
            .next()
            .unwrap_or_default()
            .split(',')
            .map(|q| q.trim().parse().expect("granted QoS"))
            .collect()
    }

    /// The next message; panics after [`TIMEOUT`] or if mosquitto_sub exits.
    pub fn recv(&mut self) -> MosquittoMessage {
        loop {
            let line = match self.early.pop_front() {
                Some(line) => line,
                None => self.next_line("message"),
            };
            if let Some(rest) = line.strip_prefix("MSG ") {
                let mut fields = rest.splitn(4, ' ');
                let mut field = || fields.next().expect("MSG line has 4 fields");
                return MosquittoMessage {
                    qos: field().parse().expect("QoS"),
                    retain: field() == "1",
                    topic: field().to_owned(),
                    payload: fields.next().unwrap_or_default().to_owned(),
                };
            }
        }
    }

    /// Waits for mosquitto_sub to exit by itself (e.g. after `-C count`).
    pub fn wait_exit(&mut self) -> ExitStatus {
        wait_child(&mut self.child, "mosquitto_sub")
    }

    fn next_line(&mut self, what: &str) -> String {
        match self.lines.recv_timeout(TIMEOUT) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                panic!("mosquitto_sub: no {what} within {TIMEOUT:?}")
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait();
                panic!("mosquitto_sub exited ({status:?}) while a {what} was expected")
            }
        }
    }
}

impl Drop for MosquittoSub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `mosquitto_pub` against `addr` with `args` to completion; panics if it fails.
/// With `-q 1` or `-q 2` it exits only after the broker acknowledged the message.
pub fn mosquitto_pub(addr: SocketAddr, args: &[&str]) {
    mosquitto_pub_stdin(addr, args, "");
}

/// Like [`mosquitto_pub`], writing `stdin` to its standard input (for `-l`: one message
/// per line, `-s`: the whole input as one message).
pub fn mosquitto_pub_stdin(addr: SocketAddr, args: &[&str], stdin: &str) {
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run mosquitto_pub (install mosquitto-clients)");
    let mut input = child.stdin.take().expect("stdin is piped");
    input
        .write_all(stdin.as_bytes())
        .expect("write mosquitto_pub's input");
    drop(input);
    let status = wait_child(&mut child, "mosquitto_pub");
    assert!(status.success(), "mosquitto_pub {args:?} failed: {status}");
}

fn wait_child(child: &mut Child, name: &str) -> ExitStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("wait for a child process") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name} still running after {TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}
