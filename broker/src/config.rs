//! The broker's configuration: one [`Config`] merged from four layers.
//!
//! Precedence, lowest first:
//!
//! 1. built-in defaults ([`Config::default`]): `cutie` with no file runs a working
//!    broker on `0.0.0.0:1883` with data under `./data`;
//! 2. a TOML file: `--config PATH`, else the path in `CUTIE_CONFIG`, else
//!    `./cutie.toml` if it exists, else none. A file that was asked for by name
//!    must exist;
//! 3. environment variables `CUTIE_<KEY>`, with `__` between nesting levels:
//!    `CUTIE_SHARDS=8`, `CUTIE_LISTENER__TCP=0.0.0.0:1883`,
//!    `CUTIE_LIMITS__MAX_INFLIGHT=64`. Only upper-case `CUTIE_` names are read.
//!    `CUTIE_CONFIG` names the file and is not a key, nor is `CUTIE_USER_<NAME>`,
//!    which defines a user (`crate::auth::env`);
//! 4. command-line flags ([`Cli`]).
//!
//! The file is strict: a key that [`Config`] does not have is an error that names
//! it and the file. A `CUTIE_*` variable that names no key is not: the environment
//! is shared with whatever else runs (`CUTIE_BIN` in a user's script), so it is
//! ignored with a warning ([`UnknownVariable`]) that names it and, for a near miss,
//! the key it probably meant. A value of the wrong type or out of range is an error
//! in every layer. Ranges are checked once, on the merged result, and the error
//! names the layer that supplied the value.
//!
//! Loading is done once at start-up, off the shard threads; it reads at most one
//! small file.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Parser;
use figment::error::Kind;
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

use crate::auth::env::USER_ENV_PREFIX;

/// Prefix of the environment variables that set configuration keys.
pub const ENV_PREFIX: &str = "CUTIE_";

/// Separator between nesting levels in an environment variable name.
pub const ENV_NESTING_SEPARATOR: &str = "__";

/// Environment variable naming the configuration file (below `--config`).
pub const CONFIG_PATH_ENV: &str = "CUTIE_CONFIG";

/// File read from the working directory when no file is named.
pub const DEFAULT_CONFIG_FILE: &str = "cutie.toml";

/// Upper bound on `shards`: more shards than this is a typo, not a machine.
pub const SHARDS_MAX: usize = 256;

/// The largest MQTT packet: a 268_435_455-byte remaining length plus a fixed
/// header of at most 5 bytes.
pub const PACKET_SIZE_MAX: usize = 268_435_455 + 5;

/// Whether `CUTIE_<rest>` is one of the variables Kubernetes sets for a Service named
/// `cutie` (`CUTIE_SERVICE_HOST`, `CUTIE_SERVICE_PORT[_<NAME>]`, `CUTIE_PORT`,
/// `CUTIE_PORT_<N>_<PROTO>[_PROTO|_PORT|_ADDR]`). No configuration key starts with
/// `service_` or `port`.
fn is_kubernetes_service_link(rest: &str) -> bool {
    rest == "SERVICE_HOST"
        || rest == "SERVICE_PORT"
        || rest.starts_with("SERVICE_PORT_")
        || rest == "PORT"
        || rest
            .strip_prefix("PORT_")
            .is_some_and(|r| r.chars().next().is_some_and(|c| c.is_ascii_digit()))
}

/// Name of the metadata of the environment layer; used to recognise it in errors.
const ENV_METADATA_NAME: &str = "environment";

/// The merged configuration of one broker process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Number of shards (executor threads), one per core. Defaults to the CPUs
    /// this process may run on, so an unconfigured broker uses the machine.
    pub shards: usize,
    /// Pin each shard to its own core. Off is useful on shared hosts and in CI,
    /// where pinning to cores the scheduler gives to others hurts.
    pub pin_cores: bool,
    /// Directory for the write-ahead logs and snapshots, relative to the
    /// working directory of the process unless absolute.
    #[serde(serialize_with = "serialize_path_lossy")]
    pub data_dir: PathBuf,
    /// A `tracing` `EnvFilter` directive (`info`, `warn,cutie_shard=debug`).
    pub log_level: String,
    /// Seconds between publications of the `$SYS/broker/...` topics; 0 turns them off.
    pub sys_interval_secs: u64,
    /// Where clients connect.
    pub listener: ListenerConfig,
    /// The admin HTTP endpoint (metrics, health).
    pub admin: AdminConfig,
    /// Bounds on what clients may make the broker hold.
    pub limits: LimitsConfig,
    /// Executor tuning; the defaults suit most machines.
    pub runtime: RuntimeConfig,
    /// The write-ahead logs: when acknowledgements wait for the disk, compaction.
    pub persistence: PersistenceConfig,
    /// Who may connect, and what they may publish and subscribe to.
    pub auth: AuthConfig,
    /// The TLS listener's certificate, key and client certificates.
    pub tls: TlsConfig,
    /// Message plugins to load.
    pub plugins: PluginsConfig,
}

/// `[plugins]`: message plugins shipped with the broker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
    /// `[[plugins.aggregate]]` entries: rolling statistics of numeric payloads.
    pub aggregate: Vec<AggregateConfig>,
}

/// One `[[plugins.aggregate]]`: for each topic matching `filter`, the count, minimum,
/// maximum and average of numeric payloads, published every `interval_secs` as JSON to
/// `topic_prefix` + topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    /// The topic filter whose messages are aggregated.
    pub filter: String,
    /// Seconds per interval.
    #[serde(default = "default_aggregate_interval_secs")]
    pub interval_secs: u64,
    /// Prefix of the derived topics.
    #[serde(default = "default_aggregate_prefix")]
    pub topic_prefix: String,
}

fn default_aggregate_interval_secs() -> u64 {
    10
}

fn default_aggregate_prefix() -> String {
    "$aggregate/".to_owned()
}

/// `[tls]`: the TLS listener (`listener.tls`). The files are read at start (a file that
/// does not load is a configuration error naming it) and again on SIGHUP (a file that
/// does not load then keeps the certificate in force).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain: the server certificate first, then intermediates.
    #[serde(serialize_with = "serialize_opt_path_lossy")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the server certificate (PKCS#8, PKCS#1 or SEC1).
    #[serde(serialize_with = "serialize_opt_path_lossy")]
    pub key_file: Option<PathBuf>,
    /// PEM CA certificates. Set: every client must present a certificate signed by one
    /// of them (mutual TLS); unset: no client certificate is asked for.
    #[serde(serialize_with = "serialize_opt_path_lossy")]
    pub client_ca_file: Option<PathBuf>,
    /// The client certificate's subject CN becomes the MQTT user name, authenticated by
    /// the certificate (no password check), as Mosquitto's option of that name. Needs
    /// `client_ca_file`.
    pub use_identity_as_username: bool,
}

/// `[auth]`: authentication (password file, `CUTIE_USER_<NAME>` variables) and
/// authorization (an ACL file). Reloaded on SIGHUP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Accept clients that send no user name. Unset: true only when there is no
    /// password file and no `CUTIE_USER_*` user (said loudly in the log).
    pub allow_anonymous: Option<bool>,
    /// Mosquitto-style password file (`user:$7$...` lines), managed with `cutie passwd`.
    #[serde(serialize_with = "serialize_opt_path_lossy")]
    pub password_file: Option<PathBuf>,
    /// Mosquitto-style ACL file (`user`, `topic`, `pattern` lines). Unset: every client
    /// may publish and subscribe to everything.
    #[serde(serialize_with = "serialize_opt_path_lossy")]
    pub acl_file: Option<PathBuf>,
}

/// When acknowledgements wait for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityMode {
    /// PUBACK/PUBREC (and the SUBACK/CONNACK of persistent sessions) only after the
    /// record is on disk (fdatasync, shared by every record of a batch).
    Sync,
    /// Records written at once, synced every `fsync_interval_ms`; acknowledgements do
    /// not wait: a power loss can lose the last interval, a process crash loses nothing
    /// written.
    Batch,
    /// Records written at once, never synced by the broker (the OS decides).
    None,
}

/// `[persistence]`: the per-shard write-ahead logs under `data_dir/shard-<n>/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PersistenceConfig {
    /// `sync` (default), `batch` or `none`: see the README's durability section.
    pub durability: DurabilityMode,
    /// With `durability = "batch"`: the longest time between syncs, in milliseconds.
    pub fsync_interval_ms: u64,
    /// A shard whose log segments pass this many bytes writes a snapshot of its state
    /// and deletes the segments (compaction).
    pub wal_max_bytes: u64,
    /// Start even if a log is damaged: keep what is readable, set the damaged files
    /// aside (`<name>.corrupt-<n>`, never deleted) and say what was lost. Off: a damaged
    /// log stops the start with a message naming the file.
    pub recover_skip_corrupt: bool,
}

impl Default for PersistenceConfig {
    fn default() -> Self {
        PersistenceConfig {
            durability: DurabilityMode::Sync,
            fsync_interval_ms: 100,
            wal_max_bytes: 64 * 1024 * 1024,
            recover_skip_corrupt: false,
        }
    }
}

/// `[listener]`: the MQTT listeners.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerConfig {
    /// Plain-TCP MQTT listener address.
    pub tcp: SocketAddr,
    /// MQTT over TLS listener address (8883 by convention); unset: no TLS listener.
    /// Needs `tls.cert_file` and `tls.key_file`.
    pub tls: Option<SocketAddr>,
}

/// `[admin]`: the admin HTTP endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the endpoint; loopback by default because it is unauthenticated.
    pub listen: SocketAddr,
    /// Serve the endpoint at all.
    pub enabled: bool,
    /// Connections open at once; a new one closes the oldest idle one (no whole request
    /// yet) rather than being refused, so probes get through.
    pub connections_max: usize,
    /// Connections open at once from one IP address; a new one closes that address's
    /// oldest idle one. At most `connections_max`.
    pub connections_per_address_max: usize,
    /// Seconds a connection has, from accept, to send its whole request head.
    pub header_read_timeout_secs: u64,
    /// Seconds a connection may stay open in all, answer included.
    pub connection_timeout_secs: u64,
}

/// `[limits]`: every queue and buffer a client can fill has its bound here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest packet accepted or sent, in bytes, fixed header included.
    /// Bigger packets are refused before they are buffered.
    pub max_packet_size: usize,
    /// Connections open at once, for the whole broker; more are refused.
    pub max_connections: usize,
    /// Seconds a new connection has to send CONNECT before it is closed.
    pub connect_timeout_secs: u64,
    /// QoS 1 and 2 messages in flight to one session, unacknowledged.
    pub max_inflight: u16,
    /// Messages queued for one session beyond those in flight (while it is
    /// offline or slow); above this new messages are dropped and counted.
    pub max_queued_messages: usize,
    /// Bytes waiting to be written to one connection; QoS 0 messages that
    /// would go above this are dropped and counted.
    pub outbound_buffer_bytes_max: usize,
    /// Connections open at once from one client address; 0: no limit.
    pub max_connections_per_address: u32,
    /// Subscriptions one client session may hold; more get SUBACK 0x80.
    pub max_subscriptions_per_client: usize,
    /// Levels (`/`-separated) a topic or filter may have; deeper publishes are dropped
    /// and counted, deeper subscriptions refused.
    pub max_topic_levels: usize,
    /// Bytes a topic or filter may have; longer publishes are dropped and counted,
    /// longer subscriptions refused.
    pub max_topic_length: usize,
    /// PUBLISH packets per second one connection may send (bursts of as many); beyond,
    /// the broker stops reading from it until it is under the rate again. 0: no limit.
    pub max_publish_rate: u32,
    /// Failures (bad credentials, malformed packets) from one address within
    /// `ban_window_secs` after which it is banned; 0 turns banning off.
    pub ban_threshold: u32,
    /// The window failures are counted in, in seconds.
    pub ban_window_secs: u64,
    /// How long a banned address is refused, in seconds.
    pub ban_duration_secs: u64,
    /// Retained messages the whole broker keeps; a retained message for a new topic
    /// beyond this is not stored (it is still delivered) and counted. 0: no limit.
    pub max_retained_messages: usize,
    /// Bytes (topics and payloads) of retained messages the whole broker keeps; a
    /// retained message that would take the store past this is not stored and counted.
    /// 0: no limit.
    pub max_retained_bytes: usize,
    /// A persistent session (clean session 0) whose client has not reconnected for this
    /// long is removed, from memory and from the log, as Mosquitto's option of the same
    /// name does: a number and a unit, `h` (hours), `d` (days), `w` (weeks), `m`
    /// (months of 30 days), `y` (years of 365 days), and also `s` (seconds). `"off"`
    /// (the default): kept until the client cleans it, as MQTT 3.1.1 says.
    pub persistent_client_expiration: String,
}

/// `[runtime]`: executor tuning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Memory each shard registers with io_uring for buffers (glommio
    /// `io_memory`), in bytes.
    pub io_memory_bytes: usize,
    /// Entries in each io_uring ring; a power of two.
    pub ring_depth: usize,
    /// Batches each shard-to-shard channel holds before the sender waits (a batch is
    /// what one read or tick produced for that shard).
    pub mesh_channel_capacity: usize,
    /// Microseconds a pinned shard keeps polling for work after its last piece of work
    /// before it sleeps; 0 sleeps at once.
    pub idle_poll_us: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            shards: default_shards(),
            pin_cores: true,
            data_dir: PathBuf::from("./data"),
            log_level: "info".to_owned(),
            sys_interval_secs: 10,
            listener: ListenerConfig::default(),
            admin: AdminConfig::default(),
            limits: LimitsConfig::default(),
            runtime: RuntimeConfig::default(),
            persistence: PersistenceConfig::default(),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            plugins: PluginsConfig::default(),
        }
    }
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            tcp: SocketAddr::from(([0, 0, 0, 0], 1883)),
            tls: None,
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            enabled: true,
            connections_max: 64,
            connections_per_address_max: 16,
            header_read_timeout_secs: 5,
            connection_timeout_secs: 30,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_packet_size: 1024 * 1024,
            max_connections: 100_000,
            connect_timeout_secs: 10,
            max_inflight: 32,
            max_queued_messages: 1000,
            outbound_buffer_bytes_max: 1024 * 1024,
            max_connections_per_address: 0,
            max_subscriptions_per_client: 10_000,
            max_topic_levels: 128,
            max_topic_length: 65_535,
            max_publish_rate: 0,
            ban_threshold: 10,
            ban_window_secs: 60,
            ban_duration_secs: 300,
            max_retained_messages: 100_000,
            max_retained_bytes: 64 << 20,
            persistent_client_expiration: "off".to_owned(),
        }
    }
}

impl LimitsConfig {
    /// `persistent_client_expiration` as a duration; `None`: off.
    pub fn persistent_client_expiration(&self) -> Result<Option<std::time::Duration>, String> {
        parse_expiration(&self.persistent_client_expiration)
    }
}

/// Parses Mosquitto's `persistent_client_expiration` value (see
/// [`LimitsConfig::persistent_client_expiration`]).
fn parse_expiration(text: &str) -> Result<Option<std::time::Duration>, String> {
    let text = text.trim();
    if text.is_empty() || text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit (one of s, h, d, w, m, y)"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a number"))?;
    let unit_secs: u64 = match unit {
        "s" => 1,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "m" => 30 * 86_400,
        "y" => 365 * 86_400,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (one of s, h, d, w, m, y)"
            ))
        }
    };
    if number == 0 {
        return Err(format!("{text:?}: must be positive (or \"off\")"));
    }
    number
        .checked_mul(unit_secs)
        .map(|secs| Some(std::time::Duration::from_secs(secs)))
        .ok_or_else(|| format!("{text:?} is too long"))
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            io_memory_bytes: 512 * 1024,
            ring_depth: 128,
            mesh_channel_capacity: 128,
            idle_poll_us: 0,
        }
    }
}

/// The CPUs this process may run on (affinity and cgroup quota included),
/// clamped to `1..=SHARDS_MAX`.
fn default_shards() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, SHARDS_MAX)
}

/// [`serialize_path_lossy`] for an optional path (absent stays absent).
fn serialize_opt_path_lossy<S: serde::Serializer>(
    path: &Option<PathBuf>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match path {
        Some(path) => s.serialize_some(&path.to_string_lossy()),
        None => s.serialize_none(),
    }
}

/// Paths are written as UTF-8 text; a non-UTF-8 path is written lossily rather
/// than making `--print-config` fail.
fn serialize_path_lossy<S: serde::Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

/// A key whose merged value is out of range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Dotted key path, e.g. `limits.max_inflight`.
    pub key: &'static str,
    /// What the value must be.
    pub reason: String,
}

/// `value` is within `min..=max`, or `key` is out of range.
fn range<T: PartialOrd + fmt::Display>(
    key: &'static str,
    value: T,
    min: T,
    max: T,
) -> Result<(), Violation> {
    if value < min || value > max {
        return Err(Violation {
            key,
            reason: format!("must be between {min} and {max}, got {value}"),
        });
    }
    Ok(())
}

impl Config {
    /// Checks every range; returns the first key out of range.
    pub fn validate(&self) -> Result<(), Violation> {
        range("shards", self.shards, 1, SHARDS_MAX)?;
        range("sys_interval_secs", self.sys_interval_secs, 0, 86_400)?;
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return Err(Violation {
                key: "log_level",
                reason: format!("not a valid log filter directive: {e}"),
            });
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(Violation {
                key: "data_dir",
                reason: "must not be empty".to_owned(),
            });
        }
        if self.admin.enabled && addresses_overlap(self.admin.listen, self.listener.tcp) {
            return Err(Violation {
                key: "admin.listen",
                reason: format!(
                    "{} collides with listener.tcp {}",
                    self.admin.listen, self.listener.tcp
                ),
            });
        }
        self.validate_tls()?;
        self.validate_admin()?;

        let limits = &self.limits;
        range(
            "limits.max_packet_size",
            limits.max_packet_size,
            64,
            PACKET_SIZE_MAX,
        )?;
        range(
            "limits.max_connections",
            limits.max_connections,
            1,
            10_000_000,
        )?;
        range(
            "limits.connect_timeout_secs",
            limits.connect_timeout_secs,
            1,
            3600,
        )?;
        range("limits.max_inflight", limits.max_inflight, 1, u16::MAX)?;
        range(
            "limits.max_queued_messages",
            limits.max_queued_messages,
            1,
            10_000_000,
        )?;
        range(
            "limits.outbound_buffer_bytes_max",
            limits.outbound_buffer_bytes_max,
            1024,
            1 << 30,
        )?;

        let runtime = &self.runtime;
        range(
            "runtime.io_memory_bytes",
            runtime.io_memory_bytes,
            64 * 1024,
            1 << 30,
        )?;
        range("runtime.ring_depth", runtime.ring_depth, 8, 4096)?;
        range("runtime.idle_poll_us", runtime.idle_poll_us, 0, 10_000)?;
        if !runtime.ring_depth.is_power_of_two() {
            return Err(Violation {
                key: "runtime.ring_depth",
                reason: format!("must be a power of two, got {}", runtime.ring_depth),
            });
        }
        range(
            "runtime.mesh_channel_capacity",
            runtime.mesh_channel_capacity,
            1,
            1 << 20,
        )?;
        range(
            "limits.max_subscriptions_per_client",
            limits.max_subscriptions_per_client,
            1,
            10_000_000,
        )?;
        range(
            "limits.max_topic_length",
            limits.max_topic_length,
            1,
            65_535,
        )?;
        range(
            "limits.max_topic_levels",
            limits.max_topic_levels,
            1,
            65_535,
        )?;
        range("limits.ban_window_secs", limits.ban_window_secs, 1, 86_400)?;
        if let Err(reason) = limits.persistent_client_expiration() {
            return Err(Violation {
                key: "limits.persistent_client_expiration",
                reason,
            });
        }
        range(
            "limits.ban_duration_secs",
            limits.ban_duration_secs,
            1,
            30 * 86_400,
        )?;
        for aggregate in &self.plugins.aggregate {
            if let Err(error) = cutie_codec::TopicFilter::new(aggregate.filter.as_str()) {
                return Err(Violation {
                    key: "plugins.aggregate.filter",
                    reason: format!("{:?} is not a topic filter: {error}", aggregate.filter),
                });
            }
            range(
                "plugins.aggregate.interval_secs",
                aggregate.interval_secs,
                1,
                86_400,
            )?;
            if aggregate.topic_prefix.is_empty() || aggregate.topic_prefix.contains(['+', '#']) {
                return Err(Violation {
                    key: "plugins.aggregate.topic_prefix",
                    reason: "must be non-empty and contain no wildcard".to_owned(),
                });
            }
        }
        range(
            "persistence.fsync_interval_ms",
            self.persistence.fsync_interval_ms,
            1,
            60_000,
        )?;
        range(
            "persistence.wal_max_bytes",
            self.persistence.wal_max_bytes,
            64 * 1024,
            1 << 40,
        )?;
        Ok(())
    }

    /// `[admin]`'s bounds on its clients.
    fn validate_admin(&self) -> Result<(), Violation> {
        let admin = &self.admin;
        range("admin.connections_max", admin.connections_max, 1, 65_536)?;
        range(
            "admin.connections_per_address_max",
            admin.connections_per_address_max,
            1,
            admin.connections_max,
        )?;
        range(
            "admin.header_read_timeout_secs",
            admin.header_read_timeout_secs,
            1,
            3600,
        )?;
        range(
            "admin.connection_timeout_secs",
            admin.connection_timeout_secs,
            admin.header_read_timeout_secs,
            86_400,
        )
    }

    /// `listener.tls` and `[tls]`: the listener's address is free and its files are
    /// named (whether they load is checked when they are read).
    fn validate_tls(&self) -> Result<(), Violation> {
        if let Some(tls) = self.listener.tls {
            if addresses_overlap(tls, self.listener.tcp) {
                return Err(Violation {
                    key: "listener.tls",
                    reason: format!("{tls} collides with listener.tcp {}", self.listener.tcp),
                });
            }
            if self.admin.enabled && addresses_overlap(self.admin.listen, tls) {
                return Err(Violation {
                    key: "admin.listen",
                    reason: format!("{} collides with listener.tls {tls}", self.admin.listen),
                });
            }
            if self.tls.cert_file.is_none() || self.tls.key_file.is_none() {
                return Err(Violation {
                    key: "listener.tls",
                    reason: "a TLS listener needs tls.cert_file and tls.key_file".to_owned(),
                });
            }
        }
        if self.tls.use_identity_as_username && self.tls.client_ca_file.is_none() {
            return Err(Violation {
                key: "tls.use_identity_as_username",
                reason: "needs tls.client_ca_file (client certificates to take the name from)"
                    .to_owned(),
            });
        }
        Ok(())
    }

    /// The configuration as pretty TOML, for `--print-config`. Loading the
    /// output as a file gives the same configuration back.
    pub fn to_toml(&self) -> String {
        // Serializing can only fail for integers above i64::MAX, which
        // `validate` rules out; say so in the output rather than panic.
        toml::to_string_pretty(self)
            .unwrap_or_else(|e| format!("# cannot render the configuration as TOML: {e}\n"))
    }
}

/// Two socket addresses that cannot both be bound: same port (not 0) and the
/// same IP, or one of them the wildcard address.
fn addresses_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Command-line flags. Flags override every other layer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Parser)]
#[command(
    name = "cutie",
    version,
    about = "cutie: a thread-per-core MQTT broker"
)]
pub struct Cli {
    /// Configuration file (TOML). Default: $CUTIE_CONFIG, else ./cutie.toml if present.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// MQTT TCP listener address (listener.tcp).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Number of shards, one thread per core (shards).
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// Data directory (data_dir).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Admin HTTP endpoint address (admin.listen).
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Log filter, e.g. `info` or `warn,cutie_shard=debug` (log_level).
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Do not pin shards to cores (pin_cores = false).
    #[arg(long)]
    pub no_pin_cores: bool,
    /// When acknowledgements wait for the disk (persistence.durability).
    #[arg(long, value_name = "MODE")]
    pub durability: Option<DurabilityMode>,
    /// Start even if a write-ahead log is damaged, keeping what is readable
    /// (persistence.recover_skip_corrupt = true).
    #[arg(long)]
    pub recover_skip_corrupt: bool,
    /// Password file, Mosquitto's `user:hash` shape (auth.password_file).
    #[arg(long, value_name = "PATH")]
    pub password_file: Option<PathBuf>,
    /// Accept clients without a user name: true or false (auth.allow_anonymous).
    #[arg(long, value_name = "BOOL")]
    pub allow_anonymous: Option<bool>,
    /// Print the merged configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

impl Cli {
    /// The flag that sets `key`, if it was given.
    fn flag_for(&self, key: &str) -> Option<&'static str> {
        match key {
            "listener.tcp" => self.listen.is_some().then_some("--listen"),
            "shards" => self.shards.is_some().then_some("--shards"),
            "data_dir" => self.data_dir.is_some().then_some("--data-dir"),
            "admin.listen" => self.admin.is_some().then_some("--admin"),
            "log_level" => self.log_level.is_some().then_some("--log-level"),
            "pin_cores" => self.no_pin_cores.then_some("--no-pin-cores"),
            "persistence.durability" => self.durability.is_some().then_some("--durability"),
            "persistence.recover_skip_corrupt" => self
                .recover_skip_corrupt
                .then_some("--recover-skip-corrupt"),
            "auth.password_file" => self.password_file.is_some().then_some("--password-file"),
            "auth.allow_anonymous" => self
                .allow_anonymous
                .is_some()
                .then_some("--allow-anonymous"),
            _ => None,
        }
    }

    /// Overrides `config` with the flags that were given.
    fn apply(&self, config: &mut Config) {
        if let Some(tcp) = self.listen {
            config.listener.tcp = tcp;
        }
        if let Some(shards) = self.shards {
            config.shards = shards;
        }
        if let Some(data_dir) = &self.data_dir {
            config.data_dir.clone_from(data_dir);
        }
        if let Some(listen) = self.admin {
            config.admin.listen = listen;
        }
        if let Some(log_level) = &self.log_level {
            config.log_level.clone_from(log_level);
        }
        if self.no_pin_cores {
            config.pin_cores = false;
        }
        if let Some(durability) = self.durability {
            config.persistence.durability = durability;
        }
        if self.recover_skip_corrupt {
            config.persistence.recover_skip_corrupt = true;
        }
        if let Some(path) = &self.password_file {
            config.auth.password_file = Some(path.clone());
        }
        if let Some(allow) = self.allow_anonymous {
            config.auth.allow_anonymous = Some(allow);
        }
    }
}

/// Which layer supplied a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueSource {
    /// [`Config::default`].
    Default,
    /// The configuration file at this path.
    File(PathBuf),
    /// This environment variable.
    Env(String),
    /// This command-line flag.
    Flag(&'static str),
    /// Not known (should not happen; kept so errors never lose their message).
    Unknown,
}

impl fmt::Display for ValueSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueSource::Default => f.write_str("the built-in default"),
            ValueSource::File(path) => write!(f, "{}", path.display()),
            ValueSource::Env(name) => write!(f, "environment variable {name}"),
            ValueSource::Flag(flag) => write!(f, "command-line flag {flag}"),
            ValueSource::Unknown => f.write_str("an unknown source"),
        }
    }
}

/// Why the configuration could not be loaded. Every variant names the file,
/// key or variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file named by `--config` or `CUTIE_CONFIG` is not there.
    #[error("configuration file {} does not exist", path.display())]
    FileNotFound {
        /// The path as resolved against the working directory.
        path: PathBuf,
    },
    /// The file exists but could not be read.
    #[error("cannot read configuration file {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("cannot parse configuration file {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML parser's message, with line and column.
        message: String,
    },
    /// A key that [`Config`] does not have.
    #[error("unknown configuration key '{key}' in {origin}")]
    UnknownKey {
        /// Dotted key path as written (lower-cased for environment variables).
        key: String,
        /// Where it was written.
        origin: ValueSource,
    },
    /// A value of the wrong type, or out of range.
    #[error("invalid value for '{key}' (from {origin}): {reason}")]
    InvalidValue {
        /// Dotted key path.
        key: String,
        /// The layer that supplied the value.
        origin: ValueSource,
        /// What is wrong with it.
        reason: String,
    },
}

/// A `CUTIE_*` environment variable that names no configuration key: ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownVariable {
    /// The variable.
    pub name: String,
    /// The variable of the nearest key, if it is near enough to be a typo.
    pub suggestion: Option<String>,
}

impl fmt::Display for UnknownVariable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ignoring environment variable {}: not a configuration key",
            self.name
        )?;
        match &self.suggestion {
            Some(suggestion) => write!(f, " (did you mean {suggestion}?)"),
            None => Ok(()),
        }
    }
}

/// A loaded configuration, and what was ignored on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The merged, validated configuration.
    pub config: Config,
    /// `CUTIE_*` variables that name no key, to warn about.
    pub unknown_variables: Vec<UnknownVariable>,
}

/// Loads the configuration from the process environment and working directory.
pub fn load(cli: &Cli) -> Result<Loaded, ConfigError> {
    let env = std::env::vars_os().filter_map(|(name, value)| {
        let name = name.into_string().ok()?;
        name.starts_with(ENV_PREFIX)
            .then(|| (name, value.to_string_lossy().into_owned()))
    });
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    load_with_warnings(cli, env, &cwd)
}

/// [`load_with_warnings`] without the warnings.
#[cfg(test)]
pub fn load_from(
    cli: &Cli,
    env: impl IntoIterator<Item = (String, String)>,
    cwd: &Path,
) -> Result<Config, ConfigError> {
    load_with_warnings(cli, env, cwd).map(|loaded| loaded.config)
}

/// Loads the configuration from the given flags, environment variables and
/// working directory, touching no process-wide state (tests run in parallel).
pub fn load_with_warnings(
    cli: &Cli,
    env: impl IntoIterator<Item = (String, String)>,
    cwd: &Path,
) -> Result<Loaded, ConfigError> {
    let env: BTreeMap<String, String> = env.into_iter().collect();
    let defaults = Config::default();

    let mut figment = Figment::new().merge(Serialized::defaults(&defaults));
    if let Some(file) = config_file(cli, &env, cwd)? {
        figment = figment.merge(file);
    }
    let env_vars = EnvVars::new(&env, &defaults)?;
    let unknown_variables = env_vars.unknown.clone();
    figment = figment.merge(env_vars);

    let mut config: Config = figment.extract().map_err(from_figment)?;
    cli.apply(&mut config);
    config.validate().map_err(|violation| {
        let origin = match cli.flag_for(violation.key) {
            Some(flag) => ValueSource::Flag(flag),
            None => figment
                .find_metadata(violation.key)
                .map(|md| value_source(md, &Profile::Default, &split_key(violation.key)))
                .unwrap_or(ValueSource::Unknown),
        };
        ConfigError::InvalidValue {
            key: violation.key.to_owned(),
            origin,
            reason: violation.reason,
        }
    })?;
    Ok(Loaded {
        config,
        unknown_variables,
    })
}

/// Finds and reads the configuration file, if there is one.
fn config_file(
    cli: &Cli,
    env: &BTreeMap<String, String>,
    cwd: &Path,
) -> Result<Option<TomlFile>, ConfigError> {
    let named = cli
        .config
        .clone()
        .or_else(|| env.get(CONFIG_PATH_ENV).map(PathBuf::from));
    let (path, required) = match named {
        Some(path) => (cwd.join(path), true),
        None => (cwd.join(DEFAULT_CONFIG_FILE), false),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            if let Err(e) = toml::from_str::<toml::Table>(&text) {
                return Err(ConfigError::Parse {
                    path,
                    message: e.to_string().trim_end().to_owned(),
                });
            }
            Ok(Some(TomlFile { path, text }))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if required {
                Err(ConfigError::FileNotFound { path })
            } else {
                Ok(None)
            }
        }
        Err(source) => Err(ConfigError::ReadFile { path, source }),
    }
}

/// Turns a figment error into one that names the key and its source.
fn from_figment(error: figment::Error) -> ConfigError {
    let profile = error.profile.clone().unwrap_or_default();
    let origin = error
        .metadata
        .as_ref()
        .map(|md| value_source(md, &profile, &error.path))
        .unwrap_or(ValueSource::Unknown);
    match &error.kind {
        Kind::UnknownField(field, _) => {
            let mut path = error.path.clone();
            if path.last() != Some(field) {
                path.push(field.clone());
            }
            let origin = match origin {
                ValueSource::Env(_) => ValueSource::Env(env_var_name(&path)),
                other => other,
            };
            ConfigError::UnknownKey {
                key: path.join("."),
                origin,
            }
        }
        kind => ConfigError::InvalidValue {
            key: error.path.join("."),
            origin,
            reason: kind.to_string(),
        },
    }
}

/// Which layer a figment metadata stands for.
fn value_source<K: AsRef<str>>(md: &Metadata, profile: &Profile, path: &[K]) -> ValueSource {
    match &md.source {
        Some(figment::Source::File(file)) => ValueSource::File(file.clone()),
        Some(figment::Source::Code(_)) => ValueSource::Default,
        _ if md.name == ENV_METADATA_NAME => ValueSource::Env(md.interpolate(profile, path)),
        _ => ValueSource::Unknown,
    }
}

fn split_key(key: &str) -> Vec<&str> {
    key.split('.').collect()
}

/// The canonical variable for a key path: `limits.max_inflight` ->
/// `CUTIE_LIMITS__MAX_INFLIGHT`.
fn env_var_name<K: AsRef<str>>(path: &[K]) -> String {
    let keys: Vec<String> = path
        .iter()
        .map(|k| k.as_ref().to_ascii_uppercase())
        .collect();
    format!("{ENV_PREFIX}{}", keys.join(ENV_NESTING_SEPARATOR))
}

/// The configuration file as a figment layer; its metadata carries the path so
/// errors can name it.
struct TomlFile {
    path: PathBuf,
    text: String,
}

impl Provider for TomlFile {
    fn metadata(&self) -> Metadata {
        Metadata::from("configuration file", self.path.as_path())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Toml::string(&self.text).data()
    }
}

/// The `CUTIE_*` environment variables as a figment layer, built from given
/// pairs rather than the process environment.
struct EnvVars {
    dict: Dict,
    /// Key path -> the variable that set it, for error messages.
    names: Arc<BTreeMap<String, String>>,
    /// The variables left out because they name no key.
    unknown: Vec<UnknownVariable>,
}

impl EnvVars {
    /// Values are parsed like figment's `Env` (numbers, booleans, arrays),
    /// except for keys whose default is a string: `CUTIE_DATA_DIR=2024` is the
    /// directory "2024", not a number. A variable that names no key is left out and
    /// reported in `unknown`.
    fn new(env: &BTreeMap<String, String>, defaults: &Config) -> Result<Self, ConfigError> {
        let defaults_value = Value::serialize(defaults).map_err(from_figment)?;
        let mut dict = Dict::new();
        let mut names = BTreeMap::new();
        let mut unknown = Vec::new();
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            // `CUTIE_USER_<NAME>` defines a user (crate::auth::env), not a key.
            if name == CONFIG_PATH_ENV || rest.is_empty() || name.starts_with(USER_ENV_PREFIX) {
                continue;
            }
            // Kubernetes injects `<SERVICE>_SERVICE_HOST`, `<SERVICE>_PORT_1883_TCP`, ...
            // for every Service: with a Service named `cutie` these are not keys either.
            if is_kubernetes_service_link(rest) {
                continue;
            }
            let key = rest
                .to_ascii_lowercase()
                .split(ENV_NESTING_SEPARATOR)
                .collect::<Vec<_>>()
                .join(".");
            let raw = raw.trim();
            let value = match defaults_value.find_ref(&key) {
                Some(Value::String(..)) => Value::from(raw.to_owned()),
                _ => raw.parse().unwrap_or_else(|never| match never {}),
            };
            if !names_a_key(defaults, &key, &value) {
                unknown.push(UnknownVariable {
                    name: name.clone(),
                    suggestion: nearest_variable(rest, &defaults_value),
                });
                continue;
            }
            insert_nested(&mut dict, &key, value);
            names.insert(key, name.clone());
        }
        Ok(EnvVars {
            dict,
            names: Arc::new(names),
            unknown,
        })
    }
}

/// Whether `key` = `value` alone on top of `defaults` is a key [`Config`] has: the
/// deserializer, which refuses unknown fields, decides (a value of the wrong type is
/// still a key, and an error later).
fn names_a_key(defaults: &Config, key: &str, value: &Value) -> bool {
    let mut dict = Dict::new();
    insert_nested(&mut dict, key, value.clone());
    match Figment::from(Serialized::defaults(defaults))
        .merge(Serialized::defaults(dict))
        .extract::<Config>()
    {
        Ok(_) => true,
        Err(errors) => !errors
            .into_iter()
            .any(|error| matches!(error.kind, Kind::UnknownField(..))),
    }
}

/// The `CUTIE_*` variable of the key nearest to `rest` (a variable's name after
/// `CUTIE_`), if it is within a typo or two: Damerau-Levenshtein distance at most a
/// quarter of the name's length, between 1 and 3.
fn nearest_variable(rest: &str, defaults: &Value) -> Option<String> {
    let mut keys = Vec::new();
    leaf_keys(defaults, &mut Vec::new(), &mut keys);
    let rest = rest.to_ascii_uppercase();
    let distance_max = (rest.len() / 4).clamp(1, 3);
    keys.iter()
        .map(|path| env_var_name(path))
        .map(|name| {
            let distance = strsim::damerau_levenshtein(&rest, &name[ENV_PREFIX.len()..]);
            (distance, name)
        })
        .filter(|(distance, _)| *distance <= distance_max)
        .min()
        .map(|(_, name)| name)
}

/// Every key path of `value` that holds something other than a table.
fn leaf_keys(value: &Value, path: &mut Vec<String>, keys: &mut Vec<Vec<String>>) {
    match value {
        Value::Dict(_, dict) => {
            for (key, inner) in dict {
                path.push(key.clone());
                leaf_keys(inner, path, keys);
                path.pop();
            }
        }
        _ if !path.is_empty() => keys.push(path.clone()),
        _ => {}
    }
}

/// Inserts `value` at the dotted `key`, creating tables on the way; a later
/// scalar on the way is replaced by a table.
fn insert_nested(dict: &mut Dict, key: &str, value: Value) {
    match key.split_once('.') {
        None => {
            dict.insert(key.to_owned(), value);
        }
        Some((head, tail)) => {
            let entry = dict
                .entry(head.to_owned())
                .or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert_nested(inner, tail, value);
            }
        }
    }
}

impl Provider for EnvVars {
    fn metadata(&self) -> Metadata {
        let names = Arc::clone(&self.names);
        Metadata::named(ENV_METADATA_NAME).interpolater(move |_: &Profile, path: &[&str]| {
            names
                .get(&path.join("."))
                .cloned()
                .unwrap_or_else(|| env_var_name(path))
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

#[cfg(test)]
mod tests {
    // Tests change one field of a default config at a time; that reads best as
    // assignments.
    #![allow(clippy::unwrap_used, clippy::field_reassign_with_default)]

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn dir_with_file(text: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DEFAULT_CONFIG_FILE), text).unwrap();
        dir
    }

    fn load_err(cli: &Cli, pairs: &[(&str, &str)], cwd: &Path) -> String {
        load_from(cli, env(pairs), cwd).unwrap_err().to_string()
    }

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("cutie").chain(args.iter().copied())).unwrap()
    }

    fn empty_dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn cli_parses_every_flag() {
        let parsed = cli(&[
            "--config",
            "x.toml",
            "--listen",
            "127.0.0.1:1884",
            "--shards",
            "3",
            "--data-dir",
            "/var/lib/cutie",
            "--admin",
            "127.0.0.1:9191",
            "--log-level",
            "debug",
            "--no-pin-cores",
            "--print-config",
        ]);
        assert_eq!(
            parsed,
            Cli {
                config: Some(PathBuf::from("x.toml")),
                listen: Some("127.0.0.1:1884".parse::<SocketAddr>().unwrap()),
                shards: Some(3),
                data_dir: Some(PathBuf::from("/var/lib/cutie")),
                admin: Some("127.0.0.1:9191".parse::<SocketAddr>().unwrap()),
                log_level: Some("debug".to_owned()),
                no_pin_cores: true,
                durability: None,
                recover_skip_corrupt: false,
                password_file: None,
                allow_anonymous: None,
                print_config: true,
            }
        );
    }

    #[test]
    fn cli_rejects_a_bad_address() {
        assert!(Cli::try_parse_from(["cutie", "--listen", "nowhere"]).is_err());
    }

    #[test]
    fn persistent_client_expiration_reads_mosquittos_units() {
        let secs = |text: &str| parse_expiration(text).map(|d| d.map(|d| d.as_secs()));
        assert_eq!(secs("off"), Ok(None));
        assert_eq!(secs(""), Ok(None));
        assert_eq!(secs("2h"), Ok(Some(7200)));
        assert_eq!(secs("14d"), Ok(Some(14 * 86_400)));
        assert_eq!(secs("1w"), Ok(Some(604_800)));
        assert_eq!(secs("6m"), Ok(Some(6 * 30 * 86_400)));
        assert_eq!(secs("1y"), Ok(Some(365 * 86_400)));
        assert_eq!(secs("30s"), Ok(Some(30)));
        for bad in ["h", "10", "10x", "0h", "-1d", "99999999999999999999y"] {
            assert!(secs(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn defaults_are_the_documented_values() {
        let config = Config::default();
        assert!((1..=SHARDS_MAX).contains(&config.shards));
        assert!(config.pin_cores);
        assert_eq!(config.data_dir, PathBuf::from("./data"));
        assert_eq!(config.log_level, "info");
        assert_eq!(config.sys_interval_secs, 10);
        assert_eq!(
            config.listener.tcp,
            "0.0.0.0:1883".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            config.admin.listen,
            "127.0.0.1:9090".parse::<SocketAddr>().unwrap()
        );
        assert!(config.admin.enabled);
        assert_eq!(config.limits.max_packet_size, 1_048_576);
        assert_eq!(config.limits.max_connections, 100_000);
        assert_eq!(config.limits.connect_timeout_secs, 10);
        assert_eq!(config.limits.max_inflight, 32);
        assert_eq!(config.limits.max_queued_messages, 1000);
        assert_eq!(config.limits.outbound_buffer_bytes_max, 1_048_576);
        assert_eq!(config.runtime.io_memory_bytes, 512 * 1024);
        assert_eq!(config.runtime.ring_depth, 128);
        assert_eq!(config.runtime.mesh_channel_capacity, 128);
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn no_file_no_env_no_flags_gives_the_defaults() {
        let dir = empty_dir();
        let config = load_from(&Cli::default(), env(&[("PATH", "/bin")]), dir.path()).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn file_overrides_defaults() {
        let dir = dir_with_file(
            "shards = 3\npin_cores = false\n[listener]\ntcp = \"127.0.0.1:1999\"\n\
             [limits]\nmax_inflight = 7\n",
        );
        let config = load_from(&Cli::default(), env(&[]), dir.path()).unwrap();
        assert_eq!(config.shards, 3);
        assert!(!config.pin_cores);
        assert_eq!(
            config.listener.tcp,
            "127.0.0.1:1999".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(config.limits.max_inflight, 7);
        // Keys the file does not mention keep their defaults, also inside a table.
        assert_eq!(config.limits.max_queued_messages, 1000);
        assert_eq!(config.admin, AdminConfig::default());
    }

    #[test]
    fn env_overrides_file() {
        let dir = dir_with_file("shards = 3\n[limits]\nmax_inflight = 7\nmax_connections = 9\n");
        let config = load_from(
            &Cli::default(),
            env(&[
                ("CUTIE_SHARDS", "5"),
                ("CUTIE_LIMITS__MAX_INFLIGHT", "11"),
                ("CUTIE_LISTENER__TCP", "127.0.0.1:2883"),
                ("CUTIE_PIN_CORES", "false"),
            ]),
            dir.path(),
        )
        .unwrap();
        assert_eq!(config.shards, 5);
        assert_eq!(config.limits.max_inflight, 11);
        assert_eq!(config.limits.max_connections, 9);
        assert_eq!(
            config.listener.tcp,
            "127.0.0.1:2883".parse::<SocketAddr>().unwrap()
        );
        assert!(!config.pin_cores);
    }

    #[test]
    fn flags_override_env() {
        let dir = dir_with_file("shards = 3\nlog_level = \"warn\"\n");
        let flags = cli(&[
            "--shards",
            "2",
            "--listen",
            "127.0.0.1:3883",
            "--admin",
            "127.0.0.1:9999",
            "--data-dir",
            "/tmp/flag-data",
            "--log-level",
            "debug",
            "--no-pin-cores",
        ]);
        let config = load_from(
            &flags,
            env(&[
                ("CUTIE_SHARDS", "5"),
                ("CUTIE_LISTENER__TCP", "127.0.0.1:2883"),
                ("CUTIE_ADMIN__LISTEN", "127.0.0.1:2884"),
                ("CUTIE_DATA_DIR", "/tmp/env-data"),
                ("CUTIE_LOG_LEVEL", "error"),
                ("CUTIE_PIN_CORES", "true"),
            ]),
            dir.path(),
        )
        .unwrap();
        assert_eq!(config.shards, 2);
        assert_eq!(
            config.listener.tcp,
            "127.0.0.1:3883".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            config.admin.listen,
            "127.0.0.1:9999".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(config.data_dir, PathBuf::from("/tmp/flag-data"));
        assert_eq!(config.log_level, "debug");
        assert!(!config.pin_cores);
    }

    #[test]
    fn env_values_for_string_keys_stay_strings() {
        let dir = empty_dir();
        let config = load_from(
            &Cli::default(),
            env(&[("CUTIE_DATA_DIR", "2024"), ("CUTIE_LOG_LEVEL", " warn ")]),
            dir.path(),
        )
        .unwrap();
        assert_eq!(config.data_dir, PathBuf::from("2024"));
        assert_eq!(config.log_level, "warn");
    }

    #[test]
    fn config_flag_reads_the_named_file_relative_to_the_working_directory() {
        let dir = dir_with_file("shards = 3\n");
        std::fs::write(dir.path().join("other.toml"), "shards = 4\n").unwrap();
        let config = load_from(&cli(&["--config", "other.toml"]), env(&[]), dir.path()).unwrap();
        assert_eq!(config.shards, 4);
    }

    #[test]
    fn config_env_var_names_the_file_and_is_not_a_key() {
        let dir = dir_with_file("shards = 3\n");
        std::fs::write(dir.path().join("env.toml"), "shards = 6\n").unwrap();
        let pairs = [("CUTIE_CONFIG", "env.toml")];
        let config = load_from(&Cli::default(), env(&pairs), dir.path()).unwrap();
        assert_eq!(config.shards, 6);

        std::fs::write(dir.path().join("flag.toml"), "shards = 7\n").unwrap();
        let flags = cli(&["--config", "flag.toml"]);
        let config = load_from(&flags, env(&pairs), dir.path()).unwrap();
        assert_eq!(config.shards, 7, "--config wins over CUTIE_CONFIG");
    }

    #[test]
    fn missing_config_file_is_an_error_naming_the_path() {
        let dir = empty_dir();
        let message = load_err(&cli(&["--config", "nope.toml"]), &[], dir.path());
        assert_eq!(
            message,
            format!(
                "configuration file {} does not exist",
                dir.path().join("nope.toml").display()
            )
        );

        let error = load_from(
            &Cli::default(),
            env(&[("CUTIE_CONFIG", "/no/such.toml")]),
            dir.path(),
        )
        .unwrap_err();
        assert!(
            matches!(&error, ConfigError::FileNotFound { path } if path == Path::new("/no/such.toml")),
            "{error}"
        );
    }

    #[test]
    fn unreadable_config_path_is_an_error_naming_the_path() {
        let dir = empty_dir();
        let path = dir.path().join("a-directory.toml");
        std::fs::create_dir(&path).unwrap();
        let message = load_err(&cli(&["--config", "a-directory.toml"]), &[], dir.path());
        assert!(message.starts_with(&format!(
            "cannot read configuration file {}: ",
            path.display()
        )));
    }

    #[test]
    fn malformed_toml_is_an_error_naming_the_file_and_line() {
        let dir = dir_with_file("shards = 3\n[limits\n");
        let message = load_err(&Cli::default(), &[], dir.path());
        let path = dir.path().join(DEFAULT_CONFIG_FILE);
        assert!(
            message.starts_with(&format!(
                "cannot parse configuration file {}: ",
                path.display()
            )),
            "{message}"
        );
        assert!(message.contains("line 2"), "{message}");
    }

    #[test]
    fn unknown_key_in_file_is_an_error_naming_key_and_file() {
        let dir = dir_with_file("listenr = \"0.0.0.0:1883\"\n");
        let path = dir.path().join(DEFAULT_CONFIG_FILE);
        assert_eq!(
            load_err(&Cli::default(), &[], dir.path()),
            format!("unknown configuration key 'listenr' in {}", path.display())
        );

        let dir = dir_with_file("[limits]\nmax_inflght = 3\n");
        let path = dir.path().join(DEFAULT_CONFIG_FILE);
        assert_eq!(
            load_err(&Cli::default(), &[], dir.path()),
            format!(
                "unknown configuration key 'limits.max_inflght' in {}",
                path.display()
            )
        );
    }

    #[test]
    fn unknown_key_named_like_its_table_keeps_the_full_path() {
        let dir = dir_with_file("[limits]\nlimits = 3\n");
        let message = load_err(&Cli::default(), &[], dir.path());
        assert!(
            message.starts_with("unknown configuration key 'limits.limits' in "),
            "{message}"
        );
    }

    #[test]
    fn unknown_env_variable_is_a_warning_naming_it() {
        let dir = empty_dir();
        let unknown = |pairs: &[(&str, &str)]| {
            let loaded = load_with_warnings(&Cli::default(), env(pairs), dir.path()).unwrap();
            assert_eq!(
                loaded.config,
                Config::default(),
                "{pairs:?} changed nothing"
            );
            loaded.unknown_variables
        };
        // Not a near miss of anything: no suggestion.
        assert_eq!(
            unknown(&[("CUTIE_BIN", "/usr/local/bin/cutie")]),
            vec![UnknownVariable {
                name: "CUTIE_BIN".to_owned(),
                suggestion: None
            }]
        );
        assert_eq!(
            unknown(&[("CUTIE_BIN", "x")])[0].to_string(),
            "ignoring environment variable CUTIE_BIN: not a configuration key"
        );
        // Near misses: a transposition, a missing letter, a missing level separator.
        for (typo, meant) in [
            ("CUTIE_LIMITS__MAX_INFLIHGT", "CUTIE_LIMITS__MAX_INFLIGHT"),
            ("CUTIE_LIMITS__MAX_INFLGHT", "CUTIE_LIMITS__MAX_INFLIGHT"),
            ("CUTIE_SHARD", "CUTIE_SHARDS"),
            ("CUTIE_LISTENER_TCP", "CUTIE_LISTENER__TCP"),
            (
                "CUTIE_ADMIN__CONNECTION_MAX",
                "CUTIE_ADMIN__CONNECTIONS_MAX",
            ),
            ("CUTIE_TLS__CERT_FLE", "CUTIE_TLS__CERT_FILE"),
        ] {
            let found = unknown(&[(typo, "5")]);
            assert_eq!(found.len(), 1, "{typo}");
            assert_eq!(found[0].suggestion.as_deref(), Some(meant), "{typo}");
        }
        assert_eq!(
            unknown(&[("CUTIE_LIMITS__MAX_INFLIHGT", "5")])[0].to_string(),
            "ignoring environment variable CUTIE_LIMITS__MAX_INFLIHGT: not a configuration \
             key (did you mean CUTIE_LIMITS__MAX_INFLIGHT?)"
        );
        // Known variables beside the unknown ones still apply.
        let loaded = load_with_warnings(
            &Cli::default(),
            env(&[("CUTIE_SHARDS", "3"), ("CUTIE_BIN", "x")]),
            dir.path(),
        )
        .unwrap();
        assert_eq!(loaded.config.shards, 3);
        assert_eq!(loaded.unknown_variables.len(), 1);
    }

    #[test]
    fn known_env_variables_give_no_warning() {
        let dir = empty_dir();
        let pairs = [
            ("CUTIE_SHARDS", "2"),
            ("CUTIE_LIMITS__MAX_INFLIGHT", "5"),
            ("CUTIE_TLS__CERT_FILE", "/etc/cutie/cert.pem"),
            ("CUTIE_AUTH__ALLOW_ANONYMOUS", "false"),
            ("CUTIE_USER_ALICE", "secret"),
            ("CUTIE_CONFIG", "cutie.toml"),
            ("CUTIE_SERVICE_HOST", "10.0.0.1"),
        ];
        let loaded = load_with_warnings(&Cli::default(), env(&pairs), dir.path());
        // The named file does not exist: only that is an error.
        assert!(matches!(loaded, Err(ConfigError::FileNotFound { .. })));
        let loaded = load_with_warnings(&Cli::default(), env(&pairs[..5]), dir.path()).unwrap();
        assert_eq!(loaded.unknown_variables, vec![]);
    }

    #[test]
    fn a_bad_value_for_a_known_env_variable_is_still_an_error() {
        let dir = empty_dir();
        assert!(
            load_err(&Cli::default(), &[("CUTIE_SHARDS", "many")], dir.path())
                .starts_with("invalid value for 'shards'")
        );
    }

    #[test]
    fn variables_without_the_prefix_are_ignored() {
        let dir = empty_dir();
        let pairs = [
            ("CUTIESHARDS", "x"),
            ("HOME", "/root"),
            ("cutie_shards", "x"),
        ];
        let config = load_from(&Cli::default(), env(&pairs), dir.path()).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn kubernetes_service_link_variables_are_not_configuration_keys() {
        for name in [
            "CUTIE_SERVICE_HOST",
            "CUTIE_SERVICE_PORT",
            "CUTIE_SERVICE_PORT_MQTT",
            "CUTIE_PORT",
            "CUTIE_PORT_1883_TCP",
            "CUTIE_PORT_1883_TCP_ADDR",
        ] {
            assert!(
                is_kubernetes_service_link(name.strip_prefix("CUTIE_").unwrap_or(name)),
                "{name}"
            );
        }
        for name in [
            "CUTIE_SHARDS",
            "CUTIE_PORTS",
            "CUTIE_PORT_X",
            "CUTIE_SERVICE",
        ] {
            assert!(
                !is_kubernetes_service_link(name.strip_prefix("CUTIE_").unwrap_or(name)),
                "{name}"
            );
        }
    }

    #[test]
    fn user_variables_are_not_configuration_keys() {
        let dir = empty_dir();
        let pairs = [("CUTIE_USER_ALICE", "secret"), ("CUTIE_USER_", "x")];
        let config = load_from(&Cli::default(), env(&pairs), dir.path()).unwrap();
        assert_eq!(config, Config::default());
        // A near miss is an unknown variable, not a user.
        let loaded =
            load_with_warnings(&Cli::default(), env(&[("CUTIE_USERS", "x")]), dir.path()).unwrap();
        assert_eq!(loaded.config, Config::default());
        assert_eq!(loaded.unknown_variables[0].name, "CUTIE_USERS");
    }

    #[test]
    fn bad_value_type_in_file_is_an_error_naming_the_key() {
        let dir = dir_with_file("shards = \"many\"\n");
        let message = load_err(&Cli::default(), &[], dir.path());
        let path = dir.path().join(DEFAULT_CONFIG_FILE);
        assert!(
            message.starts_with(&format!(
                "invalid value for 'shards' (from {}): ",
                path.display()
            )),
            "{message}"
        );
        assert!(message.contains("many"), "{message}");

        let dir = dir_with_file("[limits]\nmax_inflight = 70000\n");
        let message = load_err(&Cli::default(), &[], dir.path());
        assert!(
            message.starts_with("invalid value for 'limits.max_inflight'"),
            "{message}"
        );
    }

    #[test]
    fn bad_value_in_env_is_an_error_naming_the_variable() {
        let dir = empty_dir();
        let message = load_err(
            &Cli::default(),
            &[("CUTIE_LISTENER__TCP", "nowhere")],
            dir.path(),
        );
        assert!(
            message.starts_with(
                "invalid value for 'listener.tcp' (from environment variable CUTIE_LISTENER__TCP): "
            ),
            "{message}"
        );
        let message = load_err(&Cli::default(), &[("CUTIE_SHARDS", "many")], dir.path());
        assert!(
            message
                .starts_with("invalid value for 'shards' (from environment variable CUTIE_SHARDS)"),
            "{message}"
        );
    }

    #[test]
    fn range_violations_name_the_key_and_where_the_value_came_from() {
        let dir = dir_with_file("[limits]\nmax_inflight = 0\n");
        let path = dir.path().join(DEFAULT_CONFIG_FILE);
        assert_eq!(
            load_err(&Cli::default(), &[], dir.path()),
            format!(
                "invalid value for 'limits.max_inflight' (from {}): must be between 1 and 65535, got 0",
                path.display()
            )
        );

        let dir = empty_dir();
        assert_eq!(
            load_err(&cli(&["--shards", "0"]), &[], dir.path()),
            "invalid value for 'shards' (from command-line flag --shards): \
             must be between 1 and 256, got 0"
        );
        assert_eq!(
            load_err(
                &Cli::default(),
                &[("CUTIE_RUNTIME__RING_DEPTH", "100")],
                dir.path()
            ),
            "invalid value for 'runtime.ring_depth' (from environment variable \
             CUTIE_RUNTIME__RING_DEPTH): must be a power of two, got 100"
        );
    }

    #[test]
    fn every_range_is_checked() {
        type Breaker = fn(&mut Config);
        let cases: Vec<(&str, Breaker)> = vec![
            ("shards", |c| c.shards = SHARDS_MAX + 1),
            ("log_level", |c| c.log_level = "info,[".to_owned()),
            ("sys_interval_secs", |c| c.sys_interval_secs = 86_401),
            ("data_dir", |c| c.data_dir = PathBuf::new()),
            ("limits.max_packet_size", |c| c.limits.max_packet_size = 63),
            ("limits.max_packet_size", |c| {
                c.limits.max_packet_size = PACKET_SIZE_MAX + 1
            }),
            ("limits.max_connections", |c| c.limits.max_connections = 0),
            ("limits.connect_timeout_secs", |c| {
                c.limits.connect_timeout_secs = 0
            }),
            ("limits.max_inflight", |c| c.limits.max_inflight = 0),
            ("limits.max_queued_messages", |c| {
                c.limits.max_queued_messages = 0
            }),
            ("limits.outbound_buffer_bytes_max", |c| {
                c.limits.outbound_buffer_bytes_max = 0
            }),
            ("limits.persistent_client_expiration", |c| {
                c.limits.persistent_client_expiration = "3 weeks".to_owned()
            }),
            ("limits.persistent_client_expiration", |c| {
                c.limits.persistent_client_expiration = "0d".to_owned()
            }),
            ("runtime.io_memory_bytes", |c| {
                c.runtime.io_memory_bytes = 64 * 1024 - 1
            }),
            ("runtime.ring_depth", |c| c.runtime.ring_depth = 4),
            ("runtime.ring_depth", |c| c.runtime.ring_depth = 8192),
            ("runtime.mesh_channel_capacity", |c| {
                c.runtime.mesh_channel_capacity = 0
            }),
            ("admin.connections_max", |c| c.admin.connections_max = 0),
            ("admin.connections_per_address_max", |c| {
                c.admin.connections_per_address_max = 0
            }),
            ("admin.connections_per_address_max", |c| {
                c.admin.connections_per_address_max = c.admin.connections_max + 1
            }),
            ("admin.header_read_timeout_secs", |c| {
                c.admin.header_read_timeout_secs = 0
            }),
            ("admin.connection_timeout_secs", |c| {
                c.admin.connection_timeout_secs = c.admin.header_read_timeout_secs - 1
            }),
        ];
        for (key, break_it) in cases {
            let mut config = Config::default();
            break_it(&mut config);
            let violation = config.validate().unwrap_err();
            assert_eq!(violation.key, key, "{violation:?}");
        }

        let mut edges = Config::default();
        edges.shards = 1;
        edges.limits.max_packet_size = PACKET_SIZE_MAX;
        edges.limits.max_inflight = u16::MAX;
        edges.runtime.ring_depth = 8;
        edges.runtime.io_memory_bytes = 64 * 1024;
        edges.admin.connections_max = 1;
        edges.admin.connections_per_address_max = 1;
        edges.admin.connection_timeout_secs = edges.admin.header_read_timeout_secs;
        assert_eq!(edges.validate(), Ok(()));
    }

    #[test]
    fn admin_may_not_share_the_mqtt_port() {
        let dir = empty_dir();
        let message = load_err(&cli(&["--admin", "127.0.0.1:1883"]), &[], dir.path());
        assert!(
            message
                .starts_with("invalid value for 'admin.listen' (from command-line flag --admin)"),
            "{message}"
        );

        let mut config = Config::default();
        config.admin.listen = "127.0.0.1:1883".parse::<SocketAddr>().unwrap();
        config.admin.enabled = false;
        assert_eq!(
            config.validate(),
            Ok(()),
            "a disabled admin endpoint binds nothing"
        );
    }

    #[test]
    fn printed_config_loads_back_to_the_same_config() {
        let mut config = Config::default();
        config.shards = 3;
        config.pin_cores = false;
        config.data_dir = PathBuf::from("/var/lib/cutie");
        config.log_level = "warn,cutie_shard=debug".to_owned();
        config.listener.tcp = "[::1]:1884".parse::<SocketAddr>().unwrap();
        config.admin.enabled = false;
        config.limits.max_inflight = 65535;
        config.limits.connect_timeout_secs = 30;
        config.runtime.ring_depth = 1024;

        for config in [Config::default(), config] {
            let text = config.to_toml();
            let dir = dir_with_file(&text);
            let loaded = load_from(&Cli::default(), env(&[]), dir.path()).unwrap();
            assert_eq!(loaded, config, "printed:\n{text}");
        }
    }

    #[test]
    fn printed_config_uses_tables_for_sections() {
        let text = Config::default().to_toml();
        for table in ["[listener]", "[admin]", "[limits]", "[runtime]"] {
            assert!(text.contains(table), "{text}");
        }
    }

    #[test]
    fn tls_listener_is_off_by_default() {
        let config = Config::default();
        assert_eq!(config.listener.tls, None);
        assert_eq!(config.tls, TlsConfig::default());
        let text = config.to_toml();
        assert!(!text.contains("tls = "), "{text}");
        assert!(text.contains("[tls]"), "{text}");
    }

    #[test]
    fn tls_keys_load_from_file_and_environment() {
        let dir = dir_with_file(
            "[listener]\ntls = \"127.0.0.1:8883\"\n\
             [tls]\ncert_file = \"/etc/cutie/cert.pem\"\nkey_file = \"/etc/cutie/key.pem\"\n",
        );
        let config = load_from(&Cli::default(), env(&[]), dir.path()).unwrap();
        assert_eq!(
            config.listener.tls,
            Some("127.0.0.1:8883".parse::<SocketAddr>().unwrap())
        );
        assert_eq!(
            config.tls.cert_file.as_deref(),
            Some(Path::new("/etc/cutie/cert.pem"))
        );
        assert!(!config.tls.use_identity_as_username);

        let config = load_from(
            &Cli::default(),
            env(&[
                ("CUTIE_LISTENER__TLS", "0.0.0.0:8884"),
                ("CUTIE_TLS__CERT_FILE", "c.pem"),
                ("CUTIE_TLS__KEY_FILE", "k.pem"),
                ("CUTIE_TLS__CLIENT_CA_FILE", "ca.pem"),
                ("CUTIE_TLS__USE_IDENTITY_AS_USERNAME", "true"),
            ]),
            dir.path(),
        )
        .unwrap();
        assert_eq!(
            config.listener.tls,
            Some("0.0.0.0:8884".parse::<SocketAddr>().unwrap())
        );
        assert_eq!(
            config.tls.client_ca_file.as_deref(),
            Some(Path::new("ca.pem"))
        );
        assert!(config.tls.use_identity_as_username);
    }

    #[test]
    fn tls_listener_needs_its_files_and_a_port_of_its_own() {
        let dir = empty_dir();
        assert_eq!(
            load_err(
                &Cli::default(),
                &[("CUTIE_LISTENER__TLS", "0.0.0.0:8883")],
                dir.path()
            ),
            "invalid value for 'listener.tls' (from environment variable CUTIE_LISTENER__TLS): \
             a TLS listener needs tls.cert_file and tls.key_file"
        );
        let files = [
            ("CUTIE_TLS__CERT_FILE", "c.pem"),
            ("CUTIE_TLS__KEY_FILE", "k.pem"),
        ];
        let message = load_err(
            &Cli::default(),
            &[
                files[0],
                files[1],
                ("CUTIE_LISTENER__TLS", "127.0.0.1:1883"),
            ],
            dir.path(),
        );
        assert!(
            message.starts_with("invalid value for 'listener.tls'")
                && message.ends_with("127.0.0.1:1883 collides with listener.tcp 0.0.0.0:1883"),
            "{message}"
        );
        let message = load_err(
            &cli(&["--admin", "127.0.0.1:8883"]),
            &[files[0], files[1], ("CUTIE_LISTENER__TLS", "0.0.0.0:8883")],
            dir.path(),
        );
        assert!(
            message
                .starts_with("invalid value for 'admin.listen' (from command-line flag --admin)"),
            "{message}"
        );
        let message = load_err(
            &Cli::default(),
            &[("CUTIE_TLS__USE_IDENTITY_AS_USERNAME", "true")],
            dir.path(),
        );
        assert!(
            message.starts_with(
                "invalid value for 'tls.use_identity_as_username' (from environment variable \
                 CUTIE_TLS__USE_IDENTITY_AS_USERNAME): needs tls.client_ca_file"
            ),
            "{message}"
        );
        // Port 0 (tests) collides with nothing.
        let mut config = Config::default();
        config.listener.tcp = "127.0.0.1:0".parse::<SocketAddr>().unwrap();
        config.listener.tls = Some("127.0.0.1:0".parse::<SocketAddr>().unwrap());
        config.tls.cert_file = Some(PathBuf::from("c.pem"));
        config.tls.key_file = Some(PathBuf::from("k.pem"));
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn printed_config_with_tls_loads_back_to_the_same_config() {
        let mut config = Config::default();
        config.listener.tls = Some("[::]:8883".parse::<SocketAddr>().unwrap());
        config.tls = TlsConfig {
            cert_file: Some(PathBuf::from("/etc/cutie/tls/chain.pem")),
            key_file: Some(PathBuf::from("/etc/cutie/tls/key.pem")),
            client_ca_file: Some(PathBuf::from("/etc/cutie/tls/clients.pem")),
            use_identity_as_username: true,
        };
        let text = config.to_toml();
        let dir = dir_with_file(&text);
        let loaded = load_from(&Cli::default(), env(&[]), dir.path()).unwrap();
        assert_eq!(loaded, config, "printed:\n{text}");
    }
}
