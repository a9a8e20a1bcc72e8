//! The harness's errors: from the broker (a [`ClientError`] on one connection) and for
//! the whole run ([`BenchError`], which the binary maps to its exit codes).

use cutie_codec::{ConnectReturnCode, DecodeError, PacketType};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Why one connection failed. Everything the broker sends lands here, never in a panic.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connect failed or timed out.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// Where to.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// A socket read or write failed.
    #[error("{doing}: {source}")]
    Io {
        /// What the harness was doing.
        doing: &'static str,
        /// Why it failed.
        source: io::Error,
    },
    /// The broker did not answer in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The broker closed the connection.
    #[error("connection closed by the broker while waiting for {0}")]
    Closed(&'static str),
    /// The broker sent bytes that are not MQTT.
    #[error("malformed packet from the broker: {0}")]
    Decode(#[from] DecodeError),
    /// CONNACK with a return code other than 0.
    #[error("CONNECT refused with return code {0:?}")]
    Refused(ConnectReturnCode),
    /// CONNACK with session present = 1 for a client id the run has not used yet: the
    /// broker kept a session from elsewhere, whose queued messages would be counted as
    /// unexpected [MQTT-3.2.2-2].
    #[error("CONNACK says a session is already present for a new client id (stale session)")]
    StaleSession,
    /// A packet the harness did not expect at this point.
    #[error("expected {expected}, got {got:?}")]
    Unexpected {
        /// What the harness waited for.
        expected: &'static str,
        /// What came.
        got: PacketType,
    },
    /// SUBACK return code 0x80.
    #[error("SUBSCRIBE to {filter} refused by the broker")]
    SubscribeRefused {
        /// The refused filter.
        filter: String,
    },
    /// A topic or filter built from the configuration is not valid MQTT.
    #[error("invalid topic {topic:?}: {reason}")]
    Topic {
        /// The offending string.
        topic: String,
        /// Why it is invalid.
        reason: cutie_codec::TopicError,
    },
}

/// Why a run could not produce a report.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The configuration cannot be run.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The target address does not resolve.
    #[error("cannot resolve {addr}: {reason}")]
    Resolve {
        /// The address as given.
        addr: String,
        /// Why.
        reason: String,
    },
    /// Connections could not be set up (connect, CONNECT, SUBSCRIBE).
    #[error("setup failed on {failed} of {total} connections; first failure: {first}")]
    Setup {
        /// How many failed.
        failed: usize,
        /// How many were tried.
        total: usize,
        /// The first failure, with its client id.
        first: String,
    },
    /// Threads did not finish by the run's hard deadline: the broker (or the harness)
    /// hung. The process should exit without waiting for them.
    #[error("run did not finish by its hard deadline of {deadline_secs:.1} s: {what}")]
    Deadline {
        /// What was still outstanding.
        what: String,
        /// The deadline, in seconds from the start of the run.
        deadline_secs: f64,
    },
    /// A client thread could not be started.
    #[error("starting a client thread: {0}")]
    Spawn(io::Error),
    /// An output file could not be written.
    #[error("{doing} {path}: {source}")]
    Output {
        /// What was being done.
        doing: &'static str,
        /// Which file.
        path: PathBuf,
        /// Why it failed.
        source: io::Error,
    },
}
