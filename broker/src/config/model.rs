//! The configuration's shape: [`Config`] and its sections, their defaults, and the
//! limits on what a value may be.

use super::*;

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
pub(super) fn is_kubernetes_service_link(rest: &str) -> bool {
    rest == "SERVICE_HOST"
        || rest == "SERVICE_PORT"
        || rest.starts_with("SERVICE_PORT_")
        || rest == "PORT"
        || rest
            .strip_prefix("PORT_")
            .is_some_and(|r| r.chars().next().is_some_and(|c| c.is_ascii_digit()))
}

/// Name of the metadata of the environment layer; used to recognise it in errors.
pub(super) const ENV_METADATA_NAME: &str = "environment";

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
    /// Log lines queued for the writer thread at most; beyond, lines are dropped (and
    /// counted) rather than block a shard.
    pub log_queue_lines: usize,
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

pub(super) fn default_aggregate_interval_secs() -> u64 {
    10
}

pub(super) fn default_aggregate_prefix() -> String {
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
            log_queue_lines: 16 * 1024,
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
pub(super) fn parse_expiration(text: &str) -> Result<Option<std::time::Duration>, String> {
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
pub(super) fn default_shards() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, SHARDS_MAX)
}

/// [`serialize_path_lossy`] for an optional path (absent stays absent).
pub(super) fn serialize_opt_path_lossy<S: serde::Serializer>(
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
pub(super) fn serialize_path_lossy<S: serde::Serializer>(
    path: &Path,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}
