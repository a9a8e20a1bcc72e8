//! What to run: the scenario, the load, the timing, where to connect.
//!
//! Plain data with defaults that make a short, meaningful run; [`RunConfig::validate`]
//! refuses combinations the runner cannot honour before any socket is opened.

use crate::error::BenchError;
use crate::payload::{HEADER_BYTES, PAYLOAD_BYTES_MAX};
use cutie_codec::QoS;
use serde::Serialize;
use std::time::Duration;

/// A message scenario: who publishes to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// `publishers` publishers, each on its own topic, one subscriber on a `+` filter.
    FanIn {
        /// Number of publishing connections.
        publishers: u32,
    },
    /// One publisher, `subscribers` subscribers on its topic.
    FanOut {
        /// Number of subscribing connections.
        subscribers: u32,
    },
    /// `pairs` publisher/subscriber pairs, each pair on its own topic.
    PointToPoint {
        /// Number of pairs.
        pairs: u32,
    },
}

impl Scenario {
    /// The scenario's command-line name.
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::FanIn { .. } => "fan-in",
            Scenario::FanOut { .. } => "fan-out",
            Scenario::PointToPoint { .. } => "p2p",
        }
    }

    /// Number of publishing connections.
    pub fn publishers(&self) -> u32 {
        match *self {
            Scenario::FanIn { publishers } => publishers,
            Scenario::FanOut { .. } => 1,
            Scenario::PointToPoint { pairs } => pairs,
        }
    }

    /// Number of subscribing connections.
    pub fn subscribers(&self) -> u32 {
        match *self {
            Scenario::FanIn { .. } => 1,
            Scenario::FanOut { subscribers } => subscribers,
            Scenario::PointToPoint { pairs } => pairs,
        }
    }

    /// The publishers whose messages subscriber `subscriber` expects.
    pub fn publishers_of(&self, subscriber: u32) -> Vec<u32> {
        match *self {
            Scenario::FanIn { publishers } => (0..publishers).collect(),
            Scenario::FanOut { .. } => vec![0],
            Scenario::PointToPoint { .. } => vec![subscriber],
        }
    }

    /// The topic publisher `publisher` publishes to, under `prefix`.
    pub fn topic(&self, prefix: &str, publisher: u32) -> String {
        match self {
            Scenario::FanIn { .. } => format!("{prefix}/fan-in/{publisher}"),
            Scenario::FanOut { .. } => format!("{prefix}/fan-out"),
            Scenario::PointToPoint { .. } => format!("{prefix}/p2p/{publisher}"),
        }
    }

    /// The filter subscriber `subscriber` subscribes to, under `prefix`.
    pub fn filter(&self, prefix: &str, subscriber: u32) -> String {
        match self {
            Scenario::FanIn { .. } => format!("{prefix}/fan-in/+"),
            Scenario::FanOut { .. } => format!("{prefix}/fan-out"),
            Scenario::PointToPoint { .. } => format!("{prefix}/p2p/{subscriber}"),
        }
    }

    /// A one-line description for reports.
    pub fn describe(&self) -> String {
        match *self {
            Scenario::FanIn { publishers } => {
                format!("{publishers} publishers -> 1 subscriber (wildcard)")
            }
            Scenario::FanOut { subscribers } => format!("1 publisher -> {subscribers} subscribers"),
            Scenario::PointToPoint { pairs } => format!("{pairs} publisher/subscriber pairs"),
        }
    }
}

/// Which connections keep a session on the broker between connections (CONNECT with
/// `clean_session = 0`).
///
/// A persistent session makes a broker with durability log the session's state: its
/// subscriptions and, for QoS 1/2, every message queued or in flight to it, which a
/// clean session never costs. Client ids are new in every run (`cb<run id>s<n>`,
/// `cb<run id>p<n>`), so each run starts from no session; a run finds one already there
/// only if the broker kept it from elsewhere, and then fails setup rather than measure
/// with stale messages. After the run every persistent client id connects once more
/// with `clean_session = 1` and disconnects, which discards its session
/// [MQTT-3.1.2-6], so a series of runs leaves nothing behind on the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PersistentSessions {
    /// Every connection is a clean session.
    #[default]
    None,
    /// Subscribers keep sessions; publishers are clean.
    Subscribers,
    /// Subscribers and publishers keep sessions.
    All,
}

impl PersistentSessions {
    /// Whether a subscriber (`true`) or publisher (`false`) connects with
    /// `clean_session = 0`.
    pub fn persistent(self, subscriber: bool) -> bool {
        match self {
            PersistentSessions::None => false,
            PersistentSessions::Subscribers => subscriber,
            PersistentSessions::All => true,
        }
    }
}

/// How connections are made and kept.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Limit on one TCP connect.
    pub connect_timeout: Duration,
    /// Limit on each handshake step (CONNACK, SUBACK) and on blocking socket I/O.
    pub io_timeout: Duration,
    /// Keep-alive announced in CONNECT; the harness sends PINGREQ at half of it on
    /// connections that would otherwise stay silent. 0 turns keep-alive off.
    pub keep_alive_secs: u16,
    /// User name for CONNECT, if the broker wants one.
    pub username: Option<String>,
    /// Password for CONNECT (needs `username`).
    pub password: Option<String>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(5),
            keep_alive_secs: 60,
            username: None,
            password: None,
        }
    }
}

/// A message scenario's load and timing.
#[derive(Debug, Clone)]
pub struct MessageConfig {
    /// Who publishes to whom.
    pub scenario: Scenario,
    /// QoS of every PUBLISH and of every subscription.
    pub qos: QoS,
    /// Bytes per payload, header included (at least [`HEADER_BYTES`]).
    pub payload_bytes: usize,
    /// Total publish rate over all publishers (open loop, fixed intervals); `None`
    /// publishes as fast as possible.
    pub rate_per_sec: Option<u64>,
    /// QoS 1/2: most unacknowledged PUBLISHes per publisher.
    pub inflight_max: u16,
    /// Messages sent in the first `warmup` are checked but left out of latency and rate.
    pub warmup: Duration,
    /// The measured time after warm-up during which publishers send.
    pub duration: Duration,
    /// After sending stops, the longest wait for outstanding messages and acks.
    pub drain: Duration,
    /// Client threads the connections are spread over.
    pub threads: usize,
    /// Topic prefix; `None` makes a unique one per run (`cutie-bench/<run id>`).
    pub topic_prefix: Option<String>,
    /// Which connections keep a session on the broker (`clean_session = 0`).
    pub persistent_sessions: PersistentSessions,
}

impl Default for MessageConfig {
    fn default() -> Self {
        MessageConfig {
            scenario: Scenario::FanIn { publishers: 4 },
            qos: QoS::AtMostOnce,
            payload_bytes: 64,
            rate_per_sec: None,
            inflight_max: 100,
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(5),
            drain: Duration::from_secs(5),
            threads: 2,
            topic_prefix: None,
            persistent_sessions: PersistentSessions::None,
        }
    }
}

/// The connection storm's load and timing.
#[derive(Debug, Clone)]
pub struct StormConfig {
    /// Connections to open.
    pub connections: u32,
    /// Total connect rate (open loop); `None` connects as fast as the threads can.
    pub connect_rate_per_sec: Option<u64>,
    /// How long all connections stay open and idle before they disconnect.
    pub hold: Duration,
    /// Threads that open connections, each handling many sockets one after another.
    pub threads: usize,
    /// Connects not started within this time of the storm's start are not attempted.
    pub connect_phase_max: Duration,
}

impl Default for StormConfig {
    fn default() -> Self {
        StormConfig {
            connections: 1000,
            connect_rate_per_sec: None,
            hold: Duration::from_secs(5),
            threads: 4,
            connect_phase_max: Duration::from_secs(60),
        }
    }
}

/// The workload of one run.
#[derive(Debug, Clone)]
pub enum Workload {
    /// Fan-in, fan-out or point-to-point messages.
    Messages(MessageConfig),
    /// Many connections, opened, held idle, closed.
    Storm(StormConfig),
}

/// Everything one run needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// A name for the target in reports (`cutie`, `mosquitto`, or the address).
    pub target_name: String,
    /// `host:port` of the broker.
    pub target_addr: String,
    /// How connections are made.
    pub connect: ConnectOptions,
    /// What to do on them.
    pub workload: Workload,
    /// The broker's process id on this machine, to report its CPU time and memory.
    pub broker_pid: Option<u32>,
}

impl RunConfig {
    /// Refuses settings the runner cannot honour.
    pub fn validate(&self) -> Result<(), BenchError> {
        let fail = |why: String| Err(BenchError::Config(why));
        if self.connect.password.is_some() && self.connect.username.is_none() {
            return fail("a password needs a user name [MQTT-3.1.2-22]".into());
        }
        match &self.workload {
            Workload::Messages(m) => {
                let (publishers, subscribers) = (m.scenario.publishers(), m.scenario.subscribers());
                if publishers == 0 || subscribers == 0 {
                    return fail(format!(
                        "{} needs at least one publisher and one subscriber",
                        m.scenario.name()
                    ));
                }
                if !(HEADER_BYTES..=PAYLOAD_BYTES_MAX).contains(&m.payload_bytes) {
                    return fail(format!(
                        "payload size must be {HEADER_BYTES}..={PAYLOAD_BYTES_MAX} bytes (the first \
                         {HEADER_BYTES} carry publisher id, sequence and timestamp), got {}",
                        m.payload_bytes
                    ));
                }
                if m.rate_per_sec == Some(0) {
                    return fail(
                        "rate must be above 0 (leave it out for as fast as possible)".into(),
                    );
                }
                if m.inflight_max == 0 {
                    return fail("inflight window must be at least 1".into());
                }
                if m.duration.is_zero() {
                    return fail("duration must be above 0".into());
                }
                if m.threads == 0 {
                    return fail("threads must be at least 1".into());
                }
                if let Some(prefix) = &m.topic_prefix {
                    if prefix.is_empty() || prefix.contains(['+', '#']) {
                        return fail(format!(
                            "topic prefix {prefix:?} must be non-empty without wildcards"
                        ));
                    }
                }
            }
            Workload::Storm(s) => {
                if s.connections == 0 {
                    return fail("storm needs at least one connection".into());
                }
                if s.connect_rate_per_sec == Some(0) {
                    return fail("connect rate must be above 0".into());
                }
                if s.threads == 0 {
                    return fail("threads must be at least 1".into());
                }
            }
        }
        Ok(())
    }
}
