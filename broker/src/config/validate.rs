//! Checks on the merged configuration: ranges and conflicts, each naming the layer that
//! supplied the value.

use super::*;

/// A key whose merged value is out of range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Dotted key path, e.g. `limits.max_inflight`.
    pub key: &'static str,
    /// What the value must be.
    pub reason: String,
}

/// `value` is within `min..=max`, or `key` is out of range.
pub(super) fn range<T: PartialOrd + fmt::Display>(
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
        range("log_queue_lines", self.log_queue_lines, 1, 10_000_000)?;
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
pub(super) fn addresses_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}
