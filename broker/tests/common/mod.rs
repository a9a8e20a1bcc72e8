//! Shared by the integration tests: the real `cutie` binary as a child process
//! ([`Launch`] starts a [`Broker`]) and a minimal, exact MQTT 3.1.1 client over a blocking
//! socket ([`Client`]).

#![allow(dead_code, clippy::unwrap_used)]

pub mod prerequisite;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use cutie_codec::{
    Connect, Decoder, Packet, PacketId, ProtocolLevel, Publish, PublishQos, QoS, Subscribe,
    SubscribeFilter, TopicFilter, TopicName,
};
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long [`Broker::wait_listening`] waits unless [`Launch::timeout`] says otherwise.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Poll interval while waiting for the process to exit.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// How to start `cutie`: `--listen 127.0.0.1:0 --no-pin-cores --shards 1 --data-dir DIR`
/// by default, without any `CUTIE_*` variable of the test's own environment, with
/// `NO_COLOR=1` and `CUTIE_ADMIN__ENABLED=false` (parallel brokers must not fight over the
/// admin endpoint's fixed port), then whatever the options add.
#[derive(Debug)]
pub struct Launch {
    data_dir: PathBuf,
    /// Owns `data_dir` when it is temporary: handed to the [`Broker`], removed after it.
    temp: Option<tempfile::TempDir>,
    in_data_dir: bool,
    listen: SocketAddr,
    shards: u16,
    admin: bool,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    timeout: Duration,
    log: Option<Arc<Mutex<Vec<String>>>>,
    stop_reading_log: bool,
}

impl Launch {
    /// `cutie` on `data_dir`, which it creates if needed.
    pub fn new(data_dir: impl AsRef<Path>) -> Launch {
        Launch {
            data_dir: data_dir.as_ref().to_owned(),
            temp: None,
            in_data_dir: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            shards: 1,
            admin: false,
            args: Vec::new(),
            env: Vec::new(),
            timeout: START_TIMEOUT,
            log: None,
            stop_reading_log: false,
        }
    }

    /// `cutie` on a fresh temporary data directory, run [`Launch::in_data_dir`]; the
    /// directory is removed once the process is gone.
    pub fn temp() -> Launch {
        let dir = tempfile::tempdir().expect("create a temporary data directory");
        let mut launch = Launch::new(dir.path()).in_data_dir();
        launch.temp = Some(dir);
        launch
    }

    /// Runs the process in its data directory, so that no `./cutie.toml` is picked up from
    /// wherever the tests were started. The directory must exist.
    pub fn in_data_dir(mut self) -> Launch {
        self.in_data_dir = true;
        self
    }

    /// `--listen addr` instead of `127.0.0.1:0`.
    pub fn listen(mut self, addr: SocketAddr) -> Launch {
        self.listen = addr;
        self
    }

    /// `--shards n` (default 1).
    pub fn shards(mut self, n: u16) -> Launch {
        self.shards = n;
        self
    }

    /// The admin endpoint on `--admin 127.0.0.1:0` (enabled: no `CUTIE_ADMIN__ENABLED`).
    pub fn admin(mut self) -> Launch {
        self.admin = true;
        self
    }

    /// One more command-line argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Launch {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// More command-line arguments.
    pub fn args<A: AsRef<OsStr>>(mut self, args: impl IntoIterator<Item = A>) -> Launch {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// An environment variable, e.g. `("CUTIE_LIMITS__CONNECT_TIMEOUT_SECS", "1")`; set
    /// after the defaults, so it can override them. The broker ignores unknown `CUTIE_*`
    /// variables with a warning.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Launch {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// More environment variables, as [`Launch::env`].
    pub fn envs<K: AsRef<OsStr>, V: AsRef<OsStr>>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Launch {
        for (key, value) in vars {
            self = self.env(key, value);
        }
        self
    }

    /// How long to wait for a log line ([`Broker::wait_listening`] in all, or
    /// [`Broker::next_line`]); default [`START_TIMEOUT`].
    pub fn timeout(mut self, timeout: Duration) -> Launch {
        self.timeout = timeout;
        self
    }

    /// Appends the log to `log` (shared by several runs) instead of a log of its own. The
    /// caller owns it: it is not printed when the test fails.
    pub fn log_into(mut self, log: &Arc<Mutex<Vec<String>>>) -> Launch {
        self.log = Some(log.clone());
        self
    }

    /// Stops reading the broker's stderr after `cutie is listening`, keeping the pipe open:
    /// once the pipe's buffer (64 KiB on Linux) is full, every write to it would block.
    pub fn stop_reading_log_after_listening(mut self) -> Launch {
        self.stop_reading_log = true;
        self
    }

    /// The command line and environment.
    fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cutie"));
        command
            .arg("--listen")
            .arg(self.listen.to_string())
            .arg("--no-pin-cores")
            .args(["--shards", &self.shards.to_string()])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            .stdin(Stdio::null());
        if self.in_data_dir {
            command.current_dir(&self.data_dir);
        }
        // Only this test's configuration: nothing from the developer's environment.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CUTIE_") {
                command.env_remove(key);
            }
        }
        command.env("NO_COLOR", "1");
        if self.admin {
            command.args(["--admin", "127.0.0.1:0"]);
        } else {
            command.env("CUTIE_ADMIN__ENABLED", "false");
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// Runs `cutie` to its end (one that is expected to refuse to start).
    pub fn output(self) -> Output {
        self.command().output().expect("run the cutie binary")
    }

    /// Starts `cutie` and waits until it listens ([`Broker::wait_listening`]).
    pub fn start(self) -> Broker {
        let mut broker = self.spawn();
        broker.wait_listening();
        broker
    }

    /// Starts `cutie` without waiting: its log lines come from [`Broker::next_line`] until
    /// [`Broker::wait_listening`].
    pub fn spawn(self) -> Broker {
        let mut child = self
            .command()
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the cutie binary");
        let stderr = child.stderr.take().expect("stderr is piped");
        let print_log = self.log.is_none();
        let log = self.log.unwrap_or_default();
        let (line_tx, line_rx) = mpsc::channel::<String>();
        {
            let log = log.clone();
            let stop_reading = self.stop_reading_log;
            thread::spawn(move || {
                let mut stderr = BufReader::new(stderr);
                let mut line = String::new();
                while matches!(stderr.read_line(&mut line), Ok(n) if n > 0) {
                    let text = strip_ansi(line.trim_end_matches(['\r', '\n']));
                    line.clear();
                    log.lock().expect("log lock").push(text.clone());
                    let listening = text.contains("cutie is listening");
                    // Nobody receives once the broker listens; keep recording.
                    let _ = line_tx.send(text);
                    if listening && stop_reading {
                        // Hold the pipe open, unread, for as long as this test runs.
                        loop {
                            thread::park();
                        }
                    }
                }
            });
        }
        Broker {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin: None,
            tls: None,
            shards: self.shards,
            log,
            print_log,
            lines: Some(Mutex::new(line_rx)),
            timeout: self.timeout,
            _data_dir: self.temp,
        }
    }
}

/// A running `cutie` process. Killed (SIGKILL) when dropped; its log is printed then if
/// the test is failing.
#[derive(Debug)]
pub struct Broker {
    child: Child,
    /// Where MQTT clients connect (`listen=` of `cutie is listening`), once
    /// [`Broker::wait_listening`] returned.
    pub addr: SocketAddr,
    admin: Option<SocketAddr>,
    tls: Option<SocketAddr>,
    shards: u16,
    /// Every line the broker wrote to stderr (ANSI colours stripped).
    log: Arc<Mutex<Vec<String>>>,
    print_log: bool,
    /// The log lines not yet read, until the broker listens (in a mutex only to make
    /// `Broker` `Sync`).
    lines: Option<Mutex<mpsc::Receiver<String>>>,
    timeout: Duration,
    /// Removed after the process is gone (fields drop after `Drop::drop` runs).
    _data_dir: Option<tempfile::TempDir>,
}

impl Broker {
    /// Reads log lines up to `cutie is listening` and takes the addresses from it; kills
    /// the process and panics if that does not come within the launch's timeout.
    pub fn wait_listening(&mut self) {
        let deadline = Instant::now() + self.timeout;
        loop {
            let line = self.line_before(deadline, "`cutie is listening`");
            if line.contains("cutie is listening") {
                let addr = |name| field(&line, name).and_then(|a| a.parse().ok());
                self.addr = addr("listen").unwrap_or_else(|| panic!("no listen=ADDR in {line:?}"));
                self.admin = addr("admin");
                self.tls = addr("tls");
                self.lines = None;
                return;
            }
        }
    }

    /// The next log line before the broker listens; kills the process and panics if none
    /// comes within the launch's timeout.
    pub fn next_line(&mut self) -> String {
        self.line_before(Instant::now() + self.timeout, "another line")
    }

    fn line_before(&mut self, deadline: Instant, what: &str) -> String {
        let lines = self
            .lines
            .as_mut()
            .expect("log lines are read until the broker listens")
            .get_mut()
            .expect("lines lock");
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => line,
            Err(_) => {
                let _ = self.child.kill();
                let status = self.child.wait();
                panic!(
                    "cutie did not log {what} within {:?} (exit: {status:?}); log:\n{}",
                    self.timeout,
                    self.log_text()
                );
            }
        }
    }

    /// The admin endpoint's address (`admin=` of `cutie is listening`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.expect("admin=ADDR in the listening line")
    }

    /// The TLS listener's address (`tls=` of `cutie is listening`).
    pub fn tls_addr(&self) -> SocketAddr {
        self.tls.expect("tls=ADDR in the listening line")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log lines so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }

    /// Everything the broker logged so far.
    pub fn log_text(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    /// Whether a log line contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.logged_count(text) > 0
    }

    /// How many log lines contain `text`.
    pub fn logged_count(&self, text: &str) -> usize {
        let log = self.log.lock().expect("log lock");
        log.iter().filter(|l| l.contains(text)).count()
    }

    /// Panics if the process has exited.
    pub fn assert_running(&mut self) {
        let status = self.child.try_wait().expect("query the broker process");
        assert!(
            status.is_none(),
            "the broker died ({status:?}); log:\n{}",
            self.log_text()
        );
    }

    /// Sends `signal` to the running broker.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child. Callers signal a broker they have not waited
        // for, so it has not been reaped and the pid cannot have been reused.
        unsafe { libc::kill(pid, signal) };
    }

    /// SIGTERM, and a clean exit (waited for without a bound).
    pub fn stop(mut self) {
        self.signal(libc::SIGTERM);
        let status = self.child.wait().expect("wait for the broker");
        assert!(
            status.success(),
            "the broker exited with {status} after SIGTERM; log:\n{}",
            self.log_text()
        );
    }

    /// SIGTERM unless it has exited already, then waits up to `timeout` for the exit
    /// status; after that SIGKILL and `None`.
    pub fn terminate_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.child.try_wait().expect("query the broker process") {
            return Some(status);
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the broker") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                self.kill();
                return None;
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        if self.print_log && thread::panicking() {
            eprintln!(
                "--- broker log ({} shard(s), {}) ---\n{}\n--- end of broker log ---",
                self.shards,
                self.addr,
                self.log_text()
            );
        }
    }
}

/// The value of ` name=` in a log line.
pub fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=");
    let rest = &line[line.find(&key)? + key.len()..];
    rest.split_whitespace().next()
}

/// `line` without ANSI escape sequences (`ESC [ ... letter`), in case colours are on.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// What [`Client::request`] got back.
#[allow(dead_code)] // not every test binary uses it
#[derive(Debug)]
pub enum Answer {
    /// A packet.
    Packet(Packet),
    /// The broker closed the connection.
    Closed,
    /// Nothing within the read timeout: the broker left the request hanging.
    Silence,
}

/// A minimal MQTT 3.1.1 client over a blocking socket.
pub struct Client {
    stream: TcpStream,
    decoder: Decoder,
    buf: BytesMut,
}

impl Client {
    /// Connects (3.1.1); returns the client and CONNACK's session-present flag.
    pub fn connect(addr: SocketAddr, client_id: &str, clean_session: bool) -> (Client, bool) {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut client = Client {
            stream,
            decoder: Decoder::new(1 << 20),
            buf: BytesMut::new(),
        };
        client.send(Packet::Connect(Box::new(Connect {
            protocol: ProtocolLevel::V3_1_1,
            clean_session,
            keep_alive_secs: 0,
            client_id: ByteString::from(client_id),
            will: None,
            username: None,
            password: None,
        })));
        match client.next() {
            Some(Packet::ConnAck(connack)) => (client, connack.session_present),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Writes one packet.
    pub fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        packet.encode(&mut out);
        let _ = self.stream.write_all(&out);
    }

    /// The next packet; `None` when the connection closed (or nothing came in 10 s).
    pub fn next(&mut self) -> Option<Packet> {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(packet) = self.decoder.decode(&mut self.buf).unwrap() {
                return Some(packet);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Sends `packet` and says what came back: the first packet, the connection
    /// closing, or nothing within the read timeout (10 s).
    #[allow(dead_code)] // not every test binary uses it
    pub fn request(&mut self, packet: Packet) -> Answer {
        self.send(packet);
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(packet) = self.decoder.decode(&mut self.buf).unwrap() {
                return Answer::Packet(packet);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return Answer::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Answer::Silence
                }
                Err(_) => return Answer::Closed,
            }
        }
    }

    /// Publishes at QoS 1; true when PUBACKed, false when the broker closed instead.
    pub fn publish_qos1(&mut self, topic: &str, payload: Vec<u8>, id: u16) -> bool {
        let packet_id = PacketId::new(id).unwrap();
        self.send(Packet::Publish(Publish {
            dup: false,
            qos: PublishQos::AtLeastOnce(packet_id),
            retain: false,
            topic: TopicName::new(topic).unwrap(),
            payload: Bytes::from(payload),
        }));
        match self.next() {
            Some(Packet::PubAck(acked)) => {
                assert_eq!(acked, packet_id);
                true
            }
            None => false,
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
}

impl Client {
    /// Subscribes and waits for the SUBACK.
    pub fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.send(Packet::Subscribe(Subscribe {
            packet_id: PacketId::new(1).unwrap(),
            filters: vec![SubscribeFilter {
                filter: TopicFilter::new(filter).unwrap(),
                qos,
            }],
        }));
        assert!(matches!(self.next(), Some(Packet::SubAck(_))));
    }

    /// Publishes a retained QoS 1 message and waits for its PUBACK.
    pub fn retain_qos1(&mut self, topic: &str, payload: &[u8], id: u16) -> bool {
        let packet_id = PacketId::new(id).unwrap();
        self.send(Packet::Publish(Publish {
            dup: false,
            qos: PublishQos::AtLeastOnce(packet_id),
            retain: true,
            topic: TopicName::new(topic).unwrap(),
            payload: Bytes::copy_from_slice(payload),
        }));
        matches!(self.next(), Some(Packet::PubAck(acked)) if acked == packet_id)
    }

    /// Reads PUBLISHes (acknowledging QoS 1) until `count` arrived; their payloads.
    pub fn receive(&mut self, count: usize) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        while got.len() < count {
            match self.next() {
                Some(Packet::Publish(publish)) => {
                    if let PublishQos::AtLeastOnce(id) = publish.qos {
                        self.send(Packet::PubAck(id));
                    }
                    got.push(publish.payload.to_vec());
                }
                Some(_) => {}
                None => panic!("connection closed after {} of {count} messages", got.len()),
            }
        }
        got
    }
}

/// Sends `GET path` (HTTP/1.1) on `stream` and reads the answer to its end, waiting at
/// most `timeout` for each read: the status and the body. For the admin endpoint.
pub fn http_get(mut stream: TcpStream, path: &str, timeout: Duration) -> (u16, String) {
    stream.set_read_timeout(Some(timeout)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: cutie\r\n\r\n").unwrap();
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .expect("read the response");
    let response = String::from_utf8(response).expect("UTF-8 response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("a head and a body: {response:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, body.to_owned())
}
