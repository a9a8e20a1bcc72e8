//! The command-line flags, the last layer.

use super::*;

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
    pub(super) fn flag_for(&self, key: &str) -> Option<&'static str> {
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
    pub(super) fn apply(&self, config: &mut Config) {
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
