//! The TLS listener, end to end: the real `cutie` binary with `listener.tls` on an
//! ephemeral port, certificates generated here (rcgen), and real clients:
//! `mosquitto_pub`/`mosquitto_sub` (OpenSSL) and rumqttc (rustls).
//!
//! Brokers run with 4 shards, so most connections land on a shard that does not own their
//! client id and take the hand-off path behind the TLS proxy. Every wait is bounded
//! ([`TIMEOUT`]); brokers and client processes are killed when dropped.

#![allow(clippy::unwrap_used)]

mod common;

use common::Launch;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rumqttc::{
    Client, ConnectReturnCode, ConnectionError, Event, Incoming, MqttOptions, QoS,
    SubscribeReasonCode, TlsConfiguration, Transport,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// How long any one step may take (debug builds, parallel tests, a small machine).
const TIMEOUT: Duration = Duration::from_secs(20);

const SHARDS: u16 = 4;

/// A certificate authority that signs server and client certificates into `dir`.
struct Authority {
    dir: PathBuf,
    name: String,
    key: KeyPair,
    cert: rcgen::Certificate,
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
struct Pem {
    cert: PathBuf,
    key: PathBuf,
}

impl Authority {
    fn new(dir: &Path, name: &str) -> Authority {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("cutie test CA {name}"));
        let cert = params.self_signed(&key).unwrap();
        let authority = Authority {
            dir: dir.to_owned(),
            name: name.to_owned(),
            key,
            cert,
        };
        std::fs::write(authority.ca_file(), authority.cert.pem()).unwrap();
        authority
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.crt", self.name))
    }

    /// A server certificate for 127.0.0.1 and localhost.
    fn server(&self) -> Pem {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, "server")
    }

    /// A client certificate whose subject CN is `common_name` (none: no CN at all).
    fn client(&self, common_name: Option<&str>) -> Pem {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "cutie tests");
        if let Some(name) = common_name {
            params.distinguished_name.push(DnType::CommonName, name);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(
            params,
            &format!("client-{}", common_name.unwrap_or("nameless")),
        )
    }

    fn sign(&self, params: CertificateParams, what: &str) -> Pem {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let pem = Pem {
            cert: self.dir.join(format!("{}-{what}.crt", self.name)),
            key: self.dir.join(format!("{}-{what}.key", self.name)),
        };
        std::fs::write(&pem.cert, cert.pem()).unwrap();
        std::fs::write(&pem.key, key.serialize_pem()).unwrap();
        pem
    }
}

/// A running `cutie` with a TLS listener, and its two addresses.
struct Broker {
    cutie: common::Broker,
    tcp: SocketAddr,
    tls: SocketAddr,
}

impl Broker {
    /// Starts `cutie` with `listener.tls = 127.0.0.1:0`, the server certificate `server`
    /// and the extra `CUTIE_*` variables `env`; waits for `cutie is listening`.
    fn start(server: &Pem, env: &[(&str, &Path)]) -> Broker {
        Broker::start_with(server, env, SHARDS)
    }

    /// [`Broker::start`] with `shards` shards.
    fn start_with(server: &Pem, env: &[(&str, &Path)], shards: u16) -> Broker {
        let cutie = Launch::temp()
            .shards(shards)
            .env("CUTIE_SYS_INTERVAL_SECS", "0")
            .env("CUTIE_LISTENER__TLS", "127.0.0.1:0")
            .env("CUTIE_TLS__CERT_FILE", &server.cert)
            .env("CUTIE_TLS__KEY_FILE", &server.key)
            .envs(env.iter().copied())
            .timeout(TIMEOUT)
            .start();
        Broker {
            tcp: cutie.addr,
            tls: cutie.tls_addr(),
            cutie,
        }
    }

    /// SIGHUP, then waits until the log has one more line containing `outcome`.
    fn reload(&self, outcome: &str) {
        let before = self.cutie.logged_count(outcome);
        self.cutie.signal(libc::SIGHUP);
        wait_until(&format!("log line {outcome:?}"), || {
            self.cutie.logged_count(outcome) > before
        });
    }

    /// SIGTERM and a clean exit.
    fn stop(mut self) {
        let status = self
            .cutie
            .terminate_within(TIMEOUT)
            .unwrap_or_else(|| panic!("cutie did not exit within {TIMEOUT:?}"));
        assert!(status.success(), "{status:?}\n{}", self.cutie.log_text());
    }
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for `child` to exit; kills it and panics after [`TIMEOUT`].
fn wait_child(child: &mut Child, what: &str) -> ExitStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// `mosquitto_pub`/`mosquitto_sub` options to reach `addr` over TLS with `ca` (and a
/// client certificate).
fn tls_args(addr: SocketAddr, ca: &Path, client: Option<&Pem>) -> Vec<String> {
    let mut args = vec![
        "-h".to_owned(),
        addr.ip().to_string(),
        "-p".to_owned(),
        addr.port().to_string(),
        "--cafile".to_owned(),
        ca.display().to_string(),
    ];
    if let Some(client) = client {
        args.extend([
            "--cert".to_owned(),
            client.cert.display().to_string(),
            "--key".to_owned(),
            client.key.display().to_string(),
        ]);
    }
    args
}

/// Runs `mosquitto_pub` with `args`; its exit status and stderr.
fn mosquitto_pub(args: &[String]) -> (ExitStatus, String) {
    let mut child = Command::new("mosquitto_pub")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mosquitto_pub (install mosquitto-clients)");
    let mut stderr = child.stderr.take().unwrap();
    let reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let status = wait_child(&mut child, "mosquitto_pub");
    (status, reader.join().unwrap_or_default())
}

/// Publishes one QoS 1 message as `client_id`; true when mosquitto_pub succeeded.
fn publish(connection: &[String], client_id: &str, topic: &str, payload: &str) -> bool {
    let mut args = connection.to_vec();
    args.extend(["-i", client_id, "-q", "1", "-t", topic, "-m", payload].map(str::to_owned));
    let (status, stderr) = mosquitto_pub(&args);
    if !status.success() {
        eprintln!("mosquitto_pub {client_id}: {status:?}: {stderr}");
    }
    status.success()
}

/// A running `mosquitto_sub` (with `-d`, so its SUBACK shows). Killed on drop.
struct MosquittoSub {
    child: Child,
    lines: Receiver<String>,
}

impl MosquittoSub {
    /// Subscribes to `topic` at QoS 1 as `client_id` and waits for the SUBACK.
    fn start(connection: &[String], client_id: &str, topic: &str) -> MosquittoSub {
        // stdbuf: line-buffered output through the pipe.
        let mut child = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub"])
            .args(connection)
            .args([
                "-d",
                "-i",
                client_id,
                "-q",
                "1",
                "-t",
                topic,
                "-F",
                "MSG %t %p",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run mosquitto_sub (install mosquitto-clients)");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut sub = MosquittoSub { child, lines };
        while !sub.next_line("SUBACK").starts_with("Subscribed") {}
        sub
    }

    fn next_line(&mut self, what: &str) -> String {
        match self.lines.recv_timeout(TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let status = self.child.try_wait();
                panic!("mosquitto_sub: no {what} within {TIMEOUT:?} (exit: {status:?})")
            }
        }
    }

    /// The next message, as `topic payload`.
    fn recv(&mut self) -> String {
        loop {
            if let Some(message) = self.next_line("message").strip_prefix("MSG ") {
                return message.to_owned();
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

/// rumqttc over rustls to the TLS listener, CA `ca`, optional client certificate.
fn rumqttc_options(
    addr: SocketAddr,
    client_id: &str,
    ca: &Path,
    client: Option<&Pem>,
) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20);
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
        ca: std::fs::read(ca).unwrap(),
        alpn: None,
        client_auth: client.map(|pem| {
            (
                std::fs::read(&pem.cert).unwrap(),
                std::fs::read(&pem.key).unwrap(),
            )
        }),
    }));
    options
}

/// A rumqttc client whose event loop runs on a thread; its events come back here.
struct Rumqttc {
    client: Client,
    events: Receiver<Result<Event, ConnectionError>>,
}

impl Rumqttc {
    /// Connects; the CONNACK's return code, and the client if it was accepted.
    fn connect(options: MqttOptions) -> Result<Rumqttc, String> {
        let (client, mut connection) = Client::new(options, 16);
        let (tx, events) = mpsc::channel();
        thread::spawn(move || {
            for event in connection.iter() {
                let end = event.is_err();
                if tx.send(event).is_err() || end {
                    break;
                }
            }
        });
        let mut rumqttc = Rumqttc { client, events };
        match rumqttc.next_incoming("CONNACK") {
            Ok(Incoming::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => Ok(rumqttc),
            Ok(other) => Err(format!("{other:?}")),
            Err(error) => Err(error),
        }
    }

    /// The next packet from the broker (or the error that ended the connection).
    fn next_incoming(&mut self, what: &str) -> Result<Incoming, String> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Ok(Event::Incoming(packet))) => return Ok(packet),
                Ok(Ok(Event::Outgoing(_))) => {}
                Ok(Err(error)) => return Err(format!("{error:?}")),
                Err(_) => panic!("rumqttc: no {what} within {TIMEOUT:?}"),
            }
        }
    }

    /// Subscribes to `filter` at QoS 1; the SUBACK's code.
    fn subscribe(&mut self, filter: &str) -> SubscribeReasonCode {
        self.client.subscribe(filter, QoS::AtLeastOnce).unwrap();
        loop {
            if let Incoming::SubAck(ack) = self.next_incoming("SUBACK").unwrap() {
                return ack.return_codes[0];
            }
        }
    }

    /// The next PUBLISH: (topic, payload).
    fn recv(&mut self) -> (String, Vec<u8>) {
        loop {
            if let Incoming::Publish(publish) = self.next_incoming("PUBLISH").unwrap() {
                return (publish.topic, publish.payload.to_vec());
            }
        }
    }
}

#[test]
fn mosquitto_clients_publish_and_subscribe_over_tls_across_shards() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new(dir.path(), "a");
    let broker = Broker::start(&ca.server(), &[]);
    let connection = tls_args(broker.tls, &ca.ca_file(), None);

    // Client ids spread over the shards: most connections are handed off behind the
    // proxy to a shard that did not accept them.
    let mut sub = MosquittoSub::start(&connection, "tls-sub", "fleet/#");
    let publishers = 8;
    for i in 0..publishers {
        assert!(publish(
            &connection,
            &format!("tls-pub-{i}"),
            &format!("fleet/{i}"),
            &format!("m{i}")
        ));
    }
    let mut got: Vec<String> = (0..publishers).map(|_| sub.recv()).collect();
    got.sort();
    let mut want: Vec<String> = (0..publishers).map(|i| format!("fleet/{i} m{i}")).collect();
    want.sort();
    assert_eq!(got, want);

    // Plain TCP and TLS clients see each other's messages.
    let plain = vec![
        "-h".to_owned(),
        broker.tcp.ip().to_string(),
        "-p".to_owned(),
        broker.tcp.port().to_string(),
    ];
    assert!(publish(&plain, "tcp-pub", "fleet/tcp", "plain"));
    assert_eq!(sub.recv(), "fleet/tcp plain");
    drop(sub);
    broker.stop();
}

#[test]
fn rumqttc_over_rustls_round_trips_qos1_across_shards() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new(dir.path(), "a");
    let broker = Broker::start(&ca.server(), &[]);
    let mut subscriber = Rumqttc::connect(rumqttc_options(
        broker.tls,
        "rustls-sub",
        &ca.ca_file(),
        None,
    ))
    .unwrap();
    assert_eq!(
        subscriber.subscribe("rustls/#"),
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    let publisher = Rumqttc::connect(rumqttc_options(
        broker.tls,
        "rustls-pub-7",
        &ca.ca_file(),
        None,
    ))
    .unwrap();
    // Large enough to span several TLS records and socketpair reads.
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    for i in 0..5u8 {
        let mut message = payload.clone();
        message[0] = i;
        publisher
            .client
            .publish("rustls/big", QoS::AtLeastOnce, false, message)
            .unwrap();
    }
    for i in 0..5u8 {
        let (topic, got) = subscriber.recv();
        assert_eq!(topic, "rustls/big");
        assert_eq!(got.len(), payload.len());
        assert_eq!(got[0], i);
        assert_eq!(got[1..], payload[1..]);
    }
    drop(publisher);
    drop(subscriber);
    broker.stop();
}

#[test]
fn a_plain_tcp_client_on_the_tls_port_fails_cleanly_and_the_broker_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new(dir.path(), "a");
    let mut broker = Broker::start(&ca.server(), &[]);

    // An MQTT CONNECT in the clear: the handshake fails and the broker closes.
    let mut stream = TcpStream::connect(broker.tls).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let connect = [
        0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x04, b'p',
        b'l', b'a', b'n',
    ];
    stream.write_all(&connect).unwrap();
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    assert!(
        read.is_ok() || answer.is_empty(),
        "the broker should close the connection: {read:?}"
    );
    assert!(
        answer.first() != Some(&0x20),
        "no CONNACK in the clear on the TLS port: {answer:?}"
    );

    // mosquitto_pub in the clear, and with a CA that did not sign the server's
    // certificate: both fail.
    let plain = vec![
        "-h".to_owned(),
        broker.tls.ip().to_string(),
        "-p".to_owned(),
        broker.tls.port().to_string(),
    ];
    assert!(!publish(&plain, "clear", "t", "x"));
    let stranger = Authority::new(dir.path(), "stranger");
    assert!(!publish(
        &tls_args(broker.tls, &stranger.ca_file(), None),
        "wrong-ca",
        "t",
        "x"
    ));

    // The broker is up, and TLS and TCP clients still get through.
    broker.cutie.assert_running();
    assert!(publish(
        &tls_args(broker.tls, &ca.ca_file(), None),
        "after",
        "t",
        "x"
    ));
    assert!(publish(
        &[
            "-h".to_owned(),
            broker.tcp.ip().to_string(),
            "-p".to_owned(),
            broker.tcp.port().to_string()
        ],
        "after-tcp",
        "t",
        "x"
    ));
    broker.stop();
}

#[test]
fn a_client_that_never_finishes_the_handshake_is_closed_after_the_connect_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new(dir.path(), "a");
    let broker = Broker::start(
        &ca.server(),
        &[("CUTIE_LIMITS__CONNECT_TIMEOUT_SECS", Path::new("1"))],
    );
    let mut stream = TcpStream::connect(broker.tls).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let read = stream.read(&mut buf);
    assert!(matches!(read, Ok(0)) || read.is_err(), "{read:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    broker.stop();
}

#[test]
fn mutual_tls_refuses_clients_without_a_certificate_from_the_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new(dir.path(), "a");
    let clients = Authority::new(dir.path(), "clients");
    let stranger = Authority::new(dir.path(), "stranger");
    let broker = Broker::start(
        &ca.server(),
        &[("CUTIE_TLS__CLIENT_CA_FILE", &clients.ca_file())],
    );
    let good = clients.client(Some("device-1"));
    let bad = stranger.client(Some("device-1"));

    assert!(!publish(
        &tls_args(broker.tls, &ca.ca_file(), None),
        "no-cert",
        "t",
        "x"
    ));
    assert!(!publish(
        &tls_args(broker.tls, &ca.ca_file(), Some(&bad)),
        "bad-cert",
        "t",
        "x"
    ));
    let with_cert = tls_args(broker.tls, &ca.ca_file(), Some(&good));
    let mut sub = MosquittoSub::start(&with_cert, "mtls-sub", "mtls/#");
    assert!(publish(&with_cert, "mtls-pub", "mtls/1", "hello"));
    assert_eq!(sub.recv(), "mtls/1 hello");

    // rumqttc too: refused without a certificate, accepted with one.
    assert!(Rumqttc::connect(rumqttc_options(broker.tls, "r-none", &ca.ca_file(), None)).is_err());
    let mut client = Rumqttc::connect(rumqttc_options(
        broker.tls,
        "r-good",
        &ca.ca_file(),
        Some(&good),
    ))
    .unwrap();
    assert_eq!(
        client.subscribe("mtls/#"),
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    drop(sub);
    drop(client);
    broker.stop();
}

#[test]
fn use_identity_as_username_takes_the_certificates_common_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new(dir.path(), "a");
    let clients = Authority::new(dir.path(), "clients");
    // Each user may use only users/<its name>/...; anonymous clients nothing.
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "pattern readwrite users/%u/#\n").unwrap();
    let broker = Broker::start(
        &ca.server(),
        &[
            ("CUTIE_TLS__CLIENT_CA_FILE", &clients.ca_file()),
            ("CUTIE_TLS__USE_IDENTITY_AS_USERNAME", Path::new("true")),
            ("CUTIE_AUTH__ACL_FILE", &acl),
        ],
    );
    let alice = clients.client(Some("alice"));

    // The CONNECT's own user name and password are replaced by the certificate's CN
    // (and no password is asked for).
    let mut options = rumqttc_options(broker.tls, "alice-1", &ca.ca_file(), Some(&alice));
    options.set_credentials("mallory", "not a password");
    let mut client = Rumqttc::connect(options).unwrap();
    assert_eq!(
        client.subscribe("users/alice/#"),
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    assert_eq!(
        client.subscribe("users/mallory/#"),
        SubscribeReasonCode::Failure
    );
    client
        .client
        .publish("users/alice/inbox", QoS::AtLeastOnce, false, b"hi".to_vec())
        .unwrap();
    assert_eq!(
        client.recv(),
        ("users/alice/inbox".to_owned(), b"hi".to_vec())
    );

    // mosquitto_sub with the same certificate.
    let connection = tls_args(broker.tls, &ca.ca_file(), Some(&alice));
    let mut sub = MosquittoSub::start(&connection, "alice-2", "users/alice/#");
    assert!(publish(&connection, "alice-3", "users/alice/x", "y"));
    assert_eq!(sub.recv(), "users/alice/x y");

    // A certificate without a CN names no one: CONNACK 4.
    let nameless = clients.client(None);
    let refused = Rumqttc::connect(rumqttc_options(
        broker.tls,
        "nameless",
        &ca.ca_file(),
        Some(&nameless),
    ))
    .err()
    .unwrap_or_default();
    assert!(refused.contains("BadUserNamePassword"), "{refused}");
    drop(sub);
    drop(client);
    broker.stop();
}

#[test]
fn sighup_swaps_the_certificate_and_open_connections_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let old_ca = Authority::new(dir.path(), "old");
    let new_ca = Authority::new(dir.path(), "new");
    let server = old_ca.server();
    // The broker reads these paths; the test rewrites them.
    let cert_file = dir.path().join("server.crt");
    let key_file = dir.path().join("server.key");
    std::fs::copy(&server.cert, &cert_file).unwrap();
    std::fs::copy(&server.key, &key_file).unwrap();
    let broker = Broker::start(
        &Pem {
            cert: cert_file.clone(),
            key: key_file.clone(),
        },
        &[],
    );
    let old = tls_args(broker.tls, &old_ca.ca_file(), None);
    let new = tls_args(broker.tls, &new_ca.ca_file(), None);
    let mut sub = MosquittoSub::start(&old, "long-lived", "reload/#");
    let mut rumqttc = Rumqttc::connect(rumqttc_options(
        broker.tls,
        "long-lived-2",
        &old_ca.ca_file(),
        None,
    ))
    .unwrap();
    assert_eq!(
        rumqttc.subscribe("reload/#"),
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    assert!(publish(&old, "p1", "reload/1", "before"));
    assert!(!publish(&new, "p2", "reload/1", "not-yet"));
    assert_eq!(sub.recv(), "reload/1 before");
    assert_eq!(rumqttc.recv().1, b"before".to_vec());

    // New certificate and key, SIGHUP: new connections get the new certificate; the
    // connections made before keep working.
    let fresh = new_ca.server();
    std::fs::copy(&fresh.cert, &cert_file).unwrap();
    std::fs::copy(&fresh.key, &key_file).unwrap();
    broker.reload("TLS certificate reloaded");
    assert!(publish(&new, "p3", "reload/2", "after"));
    assert!(!publish(&old, "p4", "reload/2", "old-ca"));
    assert_eq!(sub.recv(), "reload/2 after");
    assert_eq!(rumqttc.recv().1, b"after".to_vec());

    // A broken key file: the reload fails and the certificate in force stays.
    std::fs::write(&key_file, "-----BEGIN PRIVATE KEY-----\nbroken\n").unwrap();
    broker.reload("TLS certificate not reloaded");
    assert!(publish(&new, "p5", "reload/3", "still"));
    assert_eq!(sub.recv(), "reload/3 still");
    // A certificate that does not go with the key: the same.
    std::fs::copy(&fresh.key, &key_file).unwrap();
    std::fs::copy(&server.cert, &cert_file).unwrap();
    broker.reload("TLS certificate not reloaded");
    assert!(publish(&new, "p6", "reload/4", "again"));
    assert_eq!(sub.recv(), "reload/4 again");
    assert_eq!(rumqttc.recv().1, b"still".to_vec());
    assert_eq!(rumqttc.recv().1, b"again".to_vec());
    drop(sub);
    drop(rumqttc);
    broker.stop();
}

#[test]
fn unusable_tls_files_stop_the_start_with_exit_code_2_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new(dir.path(), "a");
    let server = ca.server();
    let missing = dir.path().join("missing.key");
    let run = |env: &[(&str, &Path)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cutie"));
        command
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .current_dir(dir.path())
            .stdin(Stdio::null());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CUTIE_") {
                command.env_remove(key);
            }
        }
        command
            .env("CUTIE_ADMIN__ENABLED", "false")
            .env("CUTIE_LISTENER__TLS", "127.0.0.1:0");
        for (key, value) in env {
            command.env(key, value);
        }
        command.output().unwrap()
    };
    let output = run(&[
        ("CUTIE_TLS__CERT_FILE", &server.cert),
        ("CUTIE_TLS__KEY_FILE", &missing),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot read tls.key_file {}", missing.display())),
        "{stderr}"
    );
    let output = run(&[("CUTIE_TLS__CERT_FILE", &server.cert)]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("tls.key_file"), "{stderr}");
}

/// A byte stream to the broker: a TCP socket, or rustls over one.
trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// An exact MQTT 3.1.1 client over a blocking [`Stream`], for the measurement.
struct Raw {
    stream: Box<dyn Stream>,
    decoder: cutie_codec::Decoder,
    buf: bytes::BytesMut,
}

/// A rustls client for `127.0.0.1` that trusts the certificates in the PEM file `ca`.
fn client_connection(ca: &Path) -> rustls::ClientConnection {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    rustls::ClientConnection::new(Arc::new(config), name).unwrap()
}

impl Raw {
    /// Connects (clean session) over TCP, or over TLS trusting `ca`.
    fn connect(addr: SocketAddr, tls_ca: Option<&Path>, client_id: &str) -> Raw {
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_nodelay(true).unwrap();
        tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
        let stream: Box<dyn Stream> = match tls_ca {
            None => Box::new(tcp),
            Some(ca) => Box::new(rustls::StreamOwned::new(client_connection(ca), tcp)),
        };
        let mut raw = Raw {
            stream,
            decoder: cutie_codec::Decoder::new(1 << 20),
            buf: bytes::BytesMut::new(),
        };
        raw.send(&[cutie_codec::Packet::Connect(Box::new(
            cutie_codec::Connect {
                protocol: cutie_codec::ProtocolLevel::V3_1_1,
                clean_session: true,
                keep_alive_secs: 0,
                client_id: client_id.into(),
                will: None,
                username: None,
                password: None,
            },
        ))]);
        assert!(
            matches!(raw.next(), cutie_codec::Packet::ConnAck(ack) if ack.return_code == ConnectReturnCodeCodec::Accepted)
        );
        raw
    }

    fn send(&mut self, packets: &[cutie_codec::Packet]) {
        let mut out = bytes::BytesMut::new();
        for packet in packets {
            packet.encode(&mut out);
        }
        self.stream.write_all(&out).unwrap();
        self.stream.flush().unwrap();
    }

    /// The packets decoded from what one read returned (at least one).
    fn next_batch(&mut self) -> Vec<cutie_codec::Packet> {
        let mut packets = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            while let Some(packet) = self.decoder.decode(&mut self.buf).unwrap() {
                packets.push(packet);
            }
            if !packets.is_empty() {
                return packets;
            }
            let n = self.stream.read(&mut chunk).unwrap();
            assert!(n > 0, "the broker closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn next(&mut self) -> cutie_codec::Packet {
        let mut batch = self.next_batch();
        assert_eq!(batch.len(), 1, "one packet expected: {batch:?}");
        batch.remove(0)
    }
}

use cutie_codec::ConnectReturnCode as ConnectReturnCodeCodec;

/// The broker's CPU time so far (user + system), from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses): utime is the 12th, stime
    // the 13th.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    let total: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_micros(total * 1_000_000 / ticks)
}

/// QoS 1 messages of `payload_bytes` from one publisher (a window of `window` per round
/// trip) to one subscriber through the broker: (messages per second, broker CPU per
/// message).
fn measure(
    broker: &Broker,
    tls_ca: Option<&Path>,
    payload_bytes: usize,
    messages: u32,
) -> (f64, Duration) {
    const WINDOW: u16 = 64;
    let addr = if tls_ca.is_some() {
        broker.tls
    } else {
        broker.tcp
    };
    let mut subscriber = Raw::connect(addr, tls_ca, "measure-sub");
    subscriber.send(&[cutie_codec::Packet::Subscribe(cutie_codec::Subscribe {
        packet_id: cutie_codec::PacketId::new(1).unwrap(),
        filters: vec![cutie_codec::SubscribeFilter {
            filter: cutie_codec::TopicFilter::new("measure/t").unwrap(),
            qos: cutie_codec::QoS::AtLeastOnce,
        }],
    })]);
    assert!(matches!(subscriber.next(), cutie_codec::Packet::SubAck(_)));
    let mut publisher = Raw::connect(addr, tls_ca, "measure-pub");
    let receiver = thread::spawn(move || {
        let mut received = 0;
        while received < messages {
            let mut acks = Vec::new();
            for packet in subscriber.next_batch() {
                if let cutie_codec::Packet::Publish(publish) = packet {
                    received += 1;
                    if let cutie_codec::PublishQos::AtLeastOnce(id) = publish.qos {
                        acks.push(cutie_codec::Packet::PubAck(id));
                    }
                }
            }
            subscriber.send(&acks);
        }
    });
    let payload = bytes::Bytes::from(vec![0x5a; payload_bytes]);
    let topic = cutie_codec::TopicName::new("measure/t").unwrap();
    let cpu_before = cpu_time(broker.cutie.pid());
    let started = Instant::now();
    let mut sent = 0;
    while sent < messages {
        let batch: Vec<cutie_codec::Packet> = (1..=WINDOW)
            .take((messages - sent) as usize)
            .map(|id| {
                cutie_codec::Packet::Publish(cutie_codec::Publish {
                    dup: false,
                    qos: cutie_codec::PublishQos::AtLeastOnce(
                        cutie_codec::PacketId::new(id).unwrap(),
                    ),
                    retain: false,
                    topic: topic.clone(),
                    payload: payload.clone(),
                })
            })
            .collect();
        let count = batch.len();
        publisher.send(&batch);
        let mut acked = 0;
        while acked < count {
            acked += publisher
                .next_batch()
                .iter()
                .filter(|p| matches!(p, cutie_codec::Packet::PubAck(_)))
                .count();
        }
        sent += count as u32;
    }
    receiver.join().unwrap();
    let elapsed = started.elapsed();
    let cpu = cpu_time(broker.cutie.pid()).saturating_sub(cpu_before);
    (f64::from(messages) / elapsed.as_secs_f64(), cpu / messages)
}

/// The record layer alone, in memory: for each batch of 64 messages, what the broker's
/// side does for one publisher and one subscriber (decrypt the PUBLISHes, encrypt the
/// deliveries), timed on the server side only. CPU time per message.
fn measure_record_layer(
    server: Arc<rustls::ServerConfig>,
    ca: &Path,
    payload_bytes: usize,
) -> Duration {
    let mut client = client_connection(ca);
    let mut server = rustls::ServerConnection::new(server).unwrap();
    // A whole batch is buffered before it is sent.
    client.set_buffer_limit(None);
    server.set_buffer_limit(None);
    let mut wire = Vec::new();
    // Handshake in memory.
    while client.is_handshaking() || server.is_handshaking() {
        wire.clear();
        client.write_tls(&mut wire).unwrap();
        server.read_tls(&mut &wire[..]).unwrap();
        server.process_new_packets().unwrap();
        wire.clear();
        server.write_tls(&mut wire).unwrap();
        client.read_tls(&mut &wire[..]).unwrap();
        client.process_new_packets().unwrap();
    }
    let message = vec![0x5au8; payload_bytes + 20];
    let mut plaintext = vec![0u8; 1 << 20];
    let mut server_time = Duration::ZERO;
    let batches = 200;
    for _ in 0..batches {
        for _ in 0..64 {
            client.writer().write_all(&message).unwrap();
        }
        wire.clear();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        let started = Instant::now();
        let mut input = &wire[..];
        while !input.is_empty() {
            server.read_tls(&mut input).unwrap();
            server.process_new_packets().unwrap();
            while let Ok(n) = server.reader().read(&mut plaintext) {
                if n == 0 {
                    break;
                }
            }
        }
        for _ in 0..64 {
            server.writer().write_all(&message).unwrap();
        }
        let mut out = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut out).unwrap();
        }
        server_time += started.elapsed();
        let mut input = &out[..];
        while !input.is_empty() {
            client.read_tls(&mut input).unwrap();
            client.process_new_packets().unwrap();
            while let Ok(n) = client.reader().read(&mut plaintext) {
                if n == 0 {
                    break;
                }
            }
        }
    }
    server_time / (batches * 64)
}

/// What the TLS proxy costs: the same QoS 1 stream over TCP and over TLS, one shard (so
/// no hand-off), with the broker's CPU time per message; and the record layer's share of
/// it, measured in memory. Timings are printed, never asserted. Run it on a release
/// build: `cargo test --release -p cutie-broker --test tls -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement; run with --release -- --ignored --nocapture"]
fn measure_tls_proxy_cost() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new(dir.path(), "a");
    let broker = Broker::start_with(&ca.server(), &[], 1);
    let messages: u32 = std::env::var("CUTIE_MEASURE_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let server = ca.server();
    let server_config = cutie_shard::tls::TlsServer::load(cutie_shard::tls::TlsSettings {
        cert_file: server.cert.clone(),
        key_file: server.key.clone(),
        client_ca_file: None,
        use_identity_as_username: false,
    })
    .unwrap()
    .config();
    println!("transport payload_bytes msgs_per_s MB_per_s broker_cpu_us_per_msg");
    for payload_bytes in [64, 1024, 16 * 1024] {
        for (name, ca_file) in [("tcp", None), ("tls", Some(ca.ca_file()))] {
            let (rate, cpu) = measure(&broker, ca_file.as_deref(), payload_bytes, messages);
            println!(
                "{name} {payload_bytes} {rate:.0} {:.1} {:.2}",
                rate * payload_bytes as f64 / 1e6,
                cpu.as_secs_f64() * 1e6
            );
        }
        let record_layer =
            measure_record_layer(server_config.clone(), &ca.ca_file(), payload_bytes);
        println!(
            "record-layer-only {payload_bytes} - - {:.2}",
            record_layer.as_secs_f64() * 1e6
        );
    }
    broker.stop();
}

#[test]
fn failed_tls_handshakes_count_toward_a_ban_and_a_banned_address_gets_no_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new(dir.path(), "a");
    let broker = Broker::start(
        &ca.server(),
        &[("CUTIE_LIMITS__BAN_THRESHOLD", Path::new("2"))],
    );
    // Three clients speaking MQTT in the clear to the TLS port: three failed handshakes.
    for _ in 0..3 {
        let mut stream = TcpStream::connect(broker.tls).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let _ = stream.write_all(&[0x10, 0x02, 0x00, 0x00]);
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
    }
    // Now even a correct TLS client from that address is refused.
    assert!(
        !publish(&tls_args(broker.tls, &ca.ca_file(), None), "good", "t", "x"),
        "a banned address completed a TLS session"
    );
}
