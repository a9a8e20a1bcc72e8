//! `cutie`: the broker binary.
//!
//! - [`config`]: defaults -> `cutie.toml` -> `CUTIE_*` environment -> flags, validated.
//! - [`auth`]: password files, `CUTIE_USER_*` users and ACL files.
//! - [`access`]: those, plugged into the shards' authentication/authorization interface;
//!   reloaded on SIGHUP.
//! - [`passwd`]: the `cutie passwd` subcommand, a `mosquitto_passwd` work-alike.
//! - [`tls`]: the TLS listener's files, loaded at start and reloaded on SIGHUP.
//! - [`admin`]: the admin HTTP endpoint (`/metrics`, `/healthz`, `/readyz`, the
//!   dashboard, the JSON API) and the `$SYS` topics.
//! - `main` (here): logging, the data directory lock, signals, starting and stopping the
//!   shards ([`cutie_shard::runtime`]).
//!
//! Exit codes: 0 after a clean shutdown (SIGTERM/SIGINT), 2 for a configuration error,
//! 3 when the broker cannot start (address in use, data directory locked, executor setup).

mod access;
mod admin;
mod auth;
mod config;
mod passwd;
mod plugins;
mod tls;

use clap::Parser;
use config::DurabilityMode;
use config::{Cli, Config};
use cutie_shard::access::{AccessControl, BanConfig};
use cutie_shard::{Durability, Limits, LogConfig, RuntimeConfig};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    let config::Loaded {
        config,
        unknown_variables,
    } = match config::load(&cli) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("cutie: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if cli.print_config {
        for unknown in &unknown_variables {
            eprintln!("cutie: warning: {unknown}");
        }
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    // Before any thread starts (the logging thread is the first): a thread that does not
    // block them could take SIGTERM with its default action, killing the process instead
    // of shutting it down.
    let signals = block_shutdown_signals();
    // Flushes the log lines still queued when `main` returns.
    let (_log_guard, log_dropped) = init_logging(&config.log_level, config.log_queue_lines);
    for unknown in &unknown_variables {
        tracing::warn!("{unknown}");
    }
    let access = Arc::new(AccessControl::new(BanConfig {
        threshold: config.limits.ban_threshold,
        window: Duration::from_secs(config.limits.ban_window_secs),
        duration: Duration::from_secs(config.limits.ban_duration_secs),
        connections_per_address_max: config.limits.max_connections_per_address,
    }));
    match access::load(&config.auth, &access) {
        Ok(loaded) => access::log_loaded(&loaded, &config.auth),
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("cutie: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    let tls = match tls::load(&config) {
        Ok(tls) => tls,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("cutie: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match run(&config, &access, tls, log_dropped, &signals) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            eprintln!("cutie: {message}");
            ExitCode::from(EXIT_START)
        }
    }
}

/// Logs to stderr through a queue and a writer thread of its own (`cutie-log`). Keep the
/// guard for the life of the process: dropping it writes out what is queued. At most
/// `queue_lines` lines wait (16,384 by default: about 4 MiB at a few hundred bytes a
/// line); when stderr is slower than the broker logs (a full pipe nobody reads, a
/// stalled terminal) further lines are dropped and counted
/// (`cutie_log_lines_dropped_total`) rather than blocking the shard that logs them.
fn init_logging(
    filter: &str,
    queue_lines: usize,
) -> (
    tracing_appender::non_blocking::WorkerGuard,
    tracing_appender::non_blocking::ErrorCounter,
) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(queue_lines)
        .thread_name("cutie-log")
        .finish(std::io::stderr());
    let dropped = writer.error_counter();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer)
        .init();
    (guard, dropped)
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
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// SIGHUP: reloads what can change without a restart (users, ACL). A bad file keeps
/// what is in force.
fn reload(config: &Config, access: &AccessControl) {
    tracing::info!("SIGHUP: reloading");
    access::reload(&config.auth, access);
}

fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut signal: libc::c_int = 0;
    // SAFETY: `set` is initialised; sigwait writes the signal number.
    unsafe { libc::sigwait(set, &mut signal) };
    signal
}

fn run(
    config: &Config,
    access: &Arc<AccessControl>,
    tls: Option<cutie_shard::tls::TlsListener>,
    log_dropped: tracing_appender::non_blocking::ErrorCounter,
    signals: &libc::sigset_t,
) -> Result<(), String> {
    let started = Instant::now();
    let _lock = lock_data_dir(&config.data_dir)?;
    // Up before recovery, so that /healthz and /readyz say "starting" meanwhile.
    let admin = if config.admin.enabled {
        let prometheus = admin::install_recorder()?;
        Some(admin::AdminServer::start(
            config.admin.listen,
            admin::Limits {
                connections_max: config.admin.connections_max,
                connections_per_address_max: config.admin.connections_per_address_max,
                header_read_timeout: Duration::from_secs(config.admin.header_read_timeout_secs),
                connection_timeout: Duration::from_secs(config.admin.connection_timeout_secs),
            },
            config.shards,
            prometheus,
            log_dropped,
            access.clone(),
        )?)
    } else {
        None
    };
    let shards = u16::try_from(config.shards).map_err(|_| "too many shards".to_string())?;
    let runtime = RuntimeConfig {
        shards,
        pin_cores: config.pin_cores,
        listen: config.listener.tcp,
        io_memory_bytes: config.runtime.io_memory_bytes,
        ring_depth: config.runtime.ring_depth,
        mesh_channel_capacity: config.runtime.mesh_channel_capacity,
        idle_poll: Duration::from_micros(config.runtime.idle_poll_us),
        connect_timeout: Duration::from_secs(config.limits.connect_timeout_secs),
        max_connections: config.limits.max_connections,
        limits: Limits {
            packet_size_max: config.limits.max_packet_size,
            inflight_max: config.limits.max_inflight,
            queued_max: config.limits.max_queued_messages,
            outbound_buffer_bytes_max: config.limits.outbound_buffer_bytes_max,
            subscriptions_per_client_max: config.limits.max_subscriptions_per_client,
            topic_levels_max: config.limits.max_topic_levels,
            publish_rate_max: config.limits.max_publish_rate,
            topic_bytes_max: config.limits.max_topic_length,
            retained_messages_max: config.limits.max_retained_messages,
            retained_bytes_max: config.limits.max_retained_bytes,
            // Validated when the configuration was loaded.
            persistent_session_expiry_ms: config
                .limits
                .persistent_client_expiration()
                .ok()
                .flatten()
                .map_or(0, |expiry| expiry.as_millis() as u64),
            ..Limits::default()
        },
        access: access.clone(),
        plugins: plugins::factories(&config.plugins)?,
        tls: tls.clone(),
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
    if let Some(admin) = &admin {
        admin.attach(broker.monitor());
    }
    let sys_stop = Arc::new(AtomicBool::new(false));
    let sys = match config.sys_interval_secs {
        0 => None,
        secs => Some(
            admin::sys::spawn(
                broker.monitor(),
                Duration::from_secs(secs),
                started,
                sys_stop.clone(),
            )
            .map_err(|e| format!("cannot start the $SYS thread: {e}"))?,
        ),
    };
    let admin_addr = admin
        .as_ref()
        .map_or_else(|| "disabled".to_owned(), |a| a.local_addr().to_string());
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        listen = %broker.local_addr(),
        admin = %admin_addr,
        tls = %broker
            .tls_local_addr()
            .map_or_else(|| "disabled".to_owned(), |a| a.to_string()),
        shards,
        pin_cores = config.pin_cores,
        data_dir = %config.data_dir.display(),
        durability = ?config.persistence.durability,
        "cutie is listening"
    );
    let signal = loop {
        match wait_for_signal(signals) {
            libc::SIGHUP => {
                reload(config, access);
                if let Some(tls) = &tls {
                    tls::reload(&tls.server);
                }
            }
            signal => break signal,
        }
    };
    tracing::info!(signal, "shutting down");
    sys_stop.store(true, Ordering::Relaxed);
    if let Some(sys) = sys {
        let _ = sys.join();
    }
    broker.shutdown();
    broker.join();
    tracing::info!("stopped");
    Ok(())
}
