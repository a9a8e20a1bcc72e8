//! `cutie`: the broker binary.
//!
//! - [`config`]: defaults -> `cutie.toml` -> `CUTIE_*` environment -> flags, validated.
//! - [`auth`]: password files, `CUTIE_USER_*` users and ACL files (checks only; not yet
//!   called by the connection path).
//! - [`passwd`]: the `cutie passwd` subcommand, a `mosquitto_passwd` work-alike.
//! - `main` (here): logging, the data directory lock, signals, starting and stopping the
//!   shards ([`cutie_shard::runtime`]).
//!
//! Exit codes: 0 after a clean shutdown (SIGTERM/SIGINT), 2 for a configuration error,
//! 3 when the broker cannot start (address in use, data directory locked, executor setup).

mod auth;
mod config;
mod passwd;

use clap::Parser;
use config::DurabilityMode;
use config::{Cli, Config};
use cutie_shard::{Durability, Limits, LogConfig, RuntimeConfig};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

const EXIT_CONFIG: u8 = 2;
const EXIT_START: u8 = 3;

fn main() -> ExitCode {
    // `cutie passwd ...` manages a password file and never starts a broker.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == "passwd")
    {
        return passwd::main(std::env::args_os().skip(2));
    }
    let cli = Cli::parse();
    let config = match config::load(&cli) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("cutie: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if cli.print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    init_logging(&config.log_level);
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            eprintln!("cutie: {message}");
            ExitCode::from(EXIT_START)
        }
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

/// Holds an exclusive lock on `data_dir/cutie.lock` for the life of the process: two
/// brokers on one data directory would corrupt each other's state, and SO_REUSEPORT would
/// let them share a port silently.
fn lock_data_dir(data_dir: &Path) -> Result<File, String> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("cannot create data directory {}: {e}", data_dir.display()))?;
    let path = data_dir.join("cutie.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // SAFETY: flock on a valid fd we own.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked != 0 {
        return Err(format!(
            "data directory {} is in use by another cutie process (lock {})",
            data_dir.display(),
            path.display()
        ));
    }
    Ok(file)
}

/// Blocks SIGINT and SIGTERM in this thread and every thread it starts, so they can be
/// taken synchronously with `sigwait` here and never interrupt a shard.
fn block_shutdown_signals() -> libc::sigset_t {
    // SAFETY: plain libc signal-set manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut signal: libc::c_int = 0;
    // SAFETY: `set` is initialised; sigwait writes the signal number.
    unsafe { libc::sigwait(set, &mut signal) };
    signal
}

fn run(config: &Config) -> Result<(), String> {
    let _lock = lock_data_dir(&config.data_dir)?;
    let signals = block_shutdown_signals();
    let shards = u16::try_from(config.shards).map_err(|_| "too many shards".to_string())?;
    let runtime = RuntimeConfig {
        shards,
        pin_cores: config.pin_cores,
        listen: config.listener.tcp,
        io_memory_bytes: config.runtime.io_memory_bytes,
        ring_depth: config.runtime.ring_depth,
        mesh_channel_capacity: config.runtime.mesh_channel_capacity,
        connect_timeout: Duration::from_secs(config.limits.connect_timeout_secs),
        max_connections: config.limits.max_connections,
        limits: Limits {
            packet_size_max: config.limits.max_packet_size,
            inflight_max: config.limits.max_inflight,
            queued_max: config.limits.max_queued_messages,
            outbound_buffer_bytes_max: config.limits.outbound_buffer_bytes_max,
            ..Limits::default()
        },
        log: Some(LogConfig {
            durability: match config.persistence.durability {
                DurabilityMode::Sync => Durability::Sync,
                DurabilityMode::Batch => Durability::Batch,
                DurabilityMode::None => Durability::None,
            },
            data_dir: config.data_dir.clone(),
            wal_max_bytes: config.persistence.wal_max_bytes,
            fsync_interval: Duration::from_millis(config.persistence.fsync_interval_ms),
            recover_skip_corrupt: config.persistence.recover_skip_corrupt,
            // A record holds one message with its topic and client id: the packet
            // bound plus room for the names.
            record_bytes_max: u32::try_from(config.limits.max_packet_size + 128 * 1024)
                .unwrap_or(u32::MAX),
        }),
    };
    let broker = cutie_shard::start(runtime).map_err(|e| e.to_string())?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        listen = %broker.local_addr(),
        shards,
        pin_cores = config.pin_cores,
        data_dir = %config.data_dir.display(),
        durability = ?config.persistence.durability,
        "cutie is listening"
    );
    let signal = wait_for_signal(&signals);
    tracing::info!(signal, "shutting down");
    broker.shutdown();
    broker.join();
    tracing::info!("stopped");
    Ok(())
}
