//! `cutie-bench`: the command line around the `cutie_bench` library.
//!
//! Exit codes: 0 ran cleanly; 1 ran, but connections failed during the run; 2 usage or
//! configuration error; 3 setup failed (resolve, connect, CONNECT, SUBSCRIBE);
//! 4 the run missed its hard deadline (broker hung); 5 an output file could not be
//! written or a thread not started.

use clap::{Args, Parser, Subcommand};
use cutie_bench::config::{
    ConnectOptions, MessageConfig, PersistentSessions, RunConfig, Scenario, StormConfig,
};
use cutie_bench::hdrlog::HdrLog;
use cutie_bench::observe::{IntervalHistogram, Progress, RunObserver};
use cutie_bench::prom::{self, PromSeries};
use cutie_bench::{BenchError, Comparison, Report, Workload};
use cutie_codec::QoS;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Load-test harness for MQTT 3.1.1 brokers (cutie, Mosquitto, any other).
#[derive(Debug, Parser)]
#[command(name = "cutie-bench", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Debug, Args)]
struct TargetArgs {
    /// Broker host (single runs; compare uses --target).
    #[arg(long, global = true)]
    host: Option<String>,
    /// Broker port (single runs; compare uses --target).
    #[arg(long, global = true)]
    port: Option<u16>,
    /// The broker's pid on this machine: report its CPU time and memory from /proc.
    #[arg(long, global = true)]
    pid: Option<u32>,
}

#[derive(Debug, Args)]
struct OutputArgs {
    /// Print the report as JSON on stdout instead of the table.
    #[arg(long, global = true)]
    json: bool,
    /// Write an HdrHistogram interval log (one histogram per second, microseconds).
    #[arg(long, global = true, value_name = "PATH")]
    hdr_log: Option<PathBuf>,
    /// Write the latency histogram and counters in Prometheus text format (rewritten
    /// every second during the run).
    #[arg(long, global = true, value_name = "PATH")]
    prom: Option<PathBuf>,
    /// No progress lines on stderr.
    #[arg(long, short, global = true)]
    quiet: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Scenario(ScenarioCommand),
    /// Run the same scenario against several targets, one after another, and compare.
    Compare(CompareArgs),
    /// PUBACK latency of one steady QoS 1 publisher while persistent subscribers make the
    /// broker log (and compact); counts compactions through the admin endpoint.
    AckLatency(AckArgs),
}

#[derive(Debug, Clone, Args)]
struct AckArgs {
    /// PUBLISHes per second, open loop (latency from the scheduled time).
    #[arg(long, default_value_t = 2000)]
    rate: u32,
    /// Payload size in bytes.
    #[arg(long, alias = "payload", default_value_t = 256)]
    payload_bytes: usize,
    /// Persistent subscribers that stay connected and acknowledge.
    #[arg(long, default_value_t = 2)]
    subscribers: u32,
    /// Persistent subscribers that subscribe and leave: their sessions queue messages,
    /// so the state every compaction writes is large.
    #[arg(long, default_value_t = 8)]
    offline_subscribers: u32,
    /// The broker's admin HTTP address (HOST:PORT), to count compactions.
    #[arg(long)]
    admin: Option<std::net::SocketAddr>,
    /// Warm-up: sent, not timed.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Measured sending time after the warm-up.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// Longest wait after sending stops for the last PUBACKs.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    drain: Duration,
    /// Topic prefix (default: cutie-bench/ack-<pid>-<time>).
    #[arg(long)]
    topic_prefix: Option<String>,
    #[command(flatten)]
    conn: ConnArgs,
}

#[derive(Debug, Clone, Subcommand)]
enum ScenarioCommand {
    /// N publishers, each on its own topic -> 1 subscriber on a `+` wildcard.
    FanIn {
        /// Publishing connections.
        #[arg(long, default_value_t = 8)]
        publishers: u32,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// 1 publisher -> M subscribers of its topic.
    FanOut {
        /// Subscribing connections.
        #[arg(long, default_value_t = 8)]
        subscribers: u32,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// N publisher/subscriber pairs, each pair on its own topic.
    #[command(name = "p2p", alias = "point-to-point")]
    PointToPoint {
        /// Pairs.
        #[arg(long, default_value_t = 8)]
        pairs: u32,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Open N connections (connect rate, time until all connected), hold them idle,
    /// disconnect.
    Storm(StormArgs),
}

#[derive(Debug, Clone, Args)]
struct ConnArgs {
    /// Keep-alive announced in CONNECT, seconds (PINGREQ at half of it); 0 = off.
    #[arg(long, default_value_t = 60)]
    keep_alive: u16,
    /// Limit on each TCP connect (e.g. 5s, 500ms).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Limit on each handshake step and blocking socket operation.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    io_timeout: Duration,
    /// User name for CONNECT.
    #[arg(long)]
    username: Option<String>,
    /// Password for CONNECT (needs --username).
    #[arg(long)]
    password: Option<String>,
}

#[derive(Debug, Clone, Args)]
struct LoadArgs {
    /// QoS of publishes and subscriptions.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Payload size in bytes (at least 20: publisher id, sequence, timestamp).
    #[arg(long, alias = "payload", default_value_t = 64)]
    payload_bytes: usize,
    /// Total publish rate over all publishers, msg/s, open loop (latency from the
    /// scheduled time). Leave out to publish as fast as possible.
    #[arg(long)]
    rate: Option<u64>,
    /// QoS 1/2: most unacknowledged PUBLISHes per publisher (1..=65535).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..))]
    inflight: u16,
    /// Warm-up: sent and checked, not timed.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Measured sending time after the warm-up.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Longest wait after sending stops for what is still on its way.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    drain: Duration,
    /// Client threads (default: the number of CPUs, at most one per connection).
    #[arg(long)]
    threads: Option<usize>,
    /// Topic prefix (default: cutie-bench/<run id>, unique per run).
    #[arg(long)]
    topic_prefix: Option<String>,
    /// Connect with clean_session = 0 so the broker keeps (and, with durability, logs)
    /// the sessions: `subscribers` (what the bare flag means) or `all`. Client ids are
    /// new in every run; the sessions are discarded after it.
    #[arg(
        long,
        value_enum,
        default_value = "none",
        num_args = 0..=1,
        default_missing_value = "subscribers"
    )]
    persistent: PersistentArg,
    #[command(flatten)]
    conn: ConnArgs,
}

/// `--persistent`: which connections keep a session on the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PersistentArg {
    /// Every connection is a clean session.
    None,
    /// Subscribers keep sessions, publishers are clean.
    Subscribers,
    /// Subscribers and publishers keep sessions.
    All,
}

impl From<PersistentArg> for PersistentSessions {
    fn from(arg: PersistentArg) -> PersistentSessions {
        match arg {
            PersistentArg::None => PersistentSessions::None,
            PersistentArg::Subscribers => PersistentSessions::Subscribers,
            PersistentArg::All => PersistentSessions::All,
        }
    }
}

#[derive(Debug, Clone, Args)]
struct StormArgs {
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    connections: u32,
    /// Total connect rate, connections/s, open loop. Leave out for as fast as possible.
    #[arg(long)]
    connect_rate: Option<u64>,
    /// How long every connection stays open and idle.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    hold: Duration,
    /// Threads opening connections (each handles many, one after another).
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// No new connect starts after this.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    connect_phase_max: Duration,
    #[command(flatten)]
    conn: ConnArgs,
}

#[derive(Debug, Args)]
struct CompareArgs {
    /// A target as NAME=HOST:PORT (or HOST:PORT); give it once per target. Ratios are
    /// against the first.
    #[arg(long = "target", required = true, value_name = "NAME=HOST:PORT")]
    targets: Vec<String>,
    /// A target's broker pid as NAME=PID, for CPU seconds per million messages and RSS.
    #[arg(long = "pid-of", value_name = "NAME=PID")]
    pids: Vec<String>,
    /// Pause between targets (lets the previous broker settle).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pause: Duration,
    #[command(subcommand)]
    scenario: ScenarioCommand,
}

/// `10`, `10s`, `1.5s`, `500ms`, `200us`, `2m`, `1h`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (try 10s, 500ms, 2m)"))?;
    let secs = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" => value / 1e6,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} (use us, ms, s, m, h)"
            ))
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{text:?}: {e}"))
}

fn connect_options(conn: &ConnArgs) -> ConnectOptions {
    ConnectOptions {
        connect_timeout: conn.connect_timeout,
        io_timeout: conn.io_timeout,
        keep_alive_secs: conn.keep_alive,
        username: conn.username.clone(),
        password: conn.password.clone(),
    }
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// The workload and connect options of a scenario command.
fn workload(command: &ScenarioCommand) -> (Workload, ConnectOptions) {
    let messages = |scenario: Scenario, load: &LoadArgs| {
        let qos = QoS::from_u8(load.qos).unwrap_or(QoS::AtMostOnce);
        let workload = Workload::Messages(MessageConfig {
            scenario,
            qos,
            payload_bytes: load.payload_bytes,
            rate_per_sec: load.rate,
            inflight_max: load.inflight,
            warmup: load.warmup,
            duration: load.duration,
            drain: load.drain,
            threads: load.threads.unwrap_or_else(default_threads),
            topic_prefix: load.topic_prefix.clone(),
            persistent_sessions: load.persistent.into(),
        });
        (workload, connect_options(&load.conn))
    };
    match command {
        ScenarioCommand::FanIn { publishers, load } => messages(
            Scenario::FanIn {
                publishers: *publishers,
            },
            load,
        ),
        ScenarioCommand::FanOut { subscribers, load } => messages(
            Scenario::FanOut {
                subscribers: *subscribers,
            },
            load,
        ),
        ScenarioCommand::PointToPoint { pairs, load } => {
            messages(Scenario::PointToPoint { pairs: *pairs }, load)
        }
        ScenarioCommand::Storm(storm) => (
            Workload::Storm(StormConfig {
                connections: storm.connections,
                connect_rate_per_sec: storm.connect_rate,
                hold: storm.hold,
                threads: storm.threads,
                connect_phase_max: storm.connect_phase_max,
            }),
            connect_options(&storm.conn),
        ),
    }
}

/// Progress on stderr, the interval log and the Prometheus file.
struct CliObserver {
    quiet: bool,
    /// Tag and label of the run in progress.
    target: String,
    scenario: String,
    qos: u8,
    hdr_log: Option<(PathBuf, HdrLog)>,
    prom: Option<PathBuf>,
    /// Finished runs' series (compare mode keeps every target in the file).
    prom_finished: Vec<PromSeries>,
    /// The first output failure; reported after the run.
    output_error: Option<BenchError>,
}

impl CliObserver {
    fn new(output: &OutputArgs) -> Result<CliObserver, BenchError> {
        let hdr_log = match &output.hdr_log {
            Some(path) => Some((
                path.clone(),
                HdrLog::create(path).map_err(|source| BenchError::Output {
                    doing: "creating",
                    path: path.clone(),
                    source,
                })?,
            )),
            None => None,
        };
        Ok(CliObserver {
            quiet: output.quiet,
            target: String::new(),
            scenario: String::new(),
            qos: 0,
            hdr_log,
            prom: output.prom.clone(),
            prom_finished: Vec::new(),
            output_error: None,
        })
    }

    fn begin(&mut self, target: &str, workload: &Workload) {
        self.target = target.to_owned();
        (self.scenario, self.qos) = match workload {
            Workload::Messages(m) => (m.scenario.name().to_owned(), m.qos as u8),
            Workload::Storm(_) => ("storm".to_owned(), 0),
        };
    }

    fn write_prom(&mut self, current: Option<PromSeries>) {
        let Some(path) = &self.prom else {
            return;
        };
        let mut series = self.prom_finished.clone();
        series.extend(current);
        if let Err(source) = prom::write_atomically(path, &prom::render(&series)) {
            self.output_error.get_or_insert(BenchError::Output {
                doing: "writing",
                path: path.clone(),
                source,
            });
        }
    }

    /// Final Prometheus output of a finished run.
    fn end(&mut self, report: &Report) {
        if let Some(series) = PromSeries::of_report(report) {
            self.prom_finished.push(series);
            self.write_prom(None);
        }
    }
}

impl RunObserver for CliObserver {
    fn progress(&mut self, progress: &Progress) {
        if !self.quiet {
            eprintln!("{} {progress}", self.target);
        }
    }

    fn interval(&mut self, interval: &IntervalHistogram<'_>) {
        if let Some((path, log)) = &mut self.hdr_log {
            let written = log.write(
                &self.target,
                interval.run_started,
                interval.start,
                interval.length,
                interval.histogram,
            );
            if let Err(source) = written {
                self.output_error.get_or_insert(BenchError::Output {
                    doing: "writing",
                    path: path.clone(),
                    source,
                });
            }
        }
        if self.prom.is_some() {
            let current = PromSeries {
                labels: prom::labels(&self.target, &self.scenario, self.qos),
                latency_us: interval.cumulative.clone(),
                counters: Vec::new(),
            };
            self.write_prom(Some(current));
        }
    }
}

fn exit_code(error: &BenchError) -> u8 {
    match error {
        BenchError::Config(_) => 2,
        BenchError::Resolve { .. } | BenchError::Setup { .. } => 3,
        BenchError::Deadline { .. } => 4,
        BenchError::Spawn(_) | BenchError::Output { .. } => 5,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("cutie-bench: {error}");
            if let BenchError::Deadline { .. } = error {
                eprintln!("cutie-bench: giving up on the hung threads and exiting");
            }
            ExitCode::from(exit_code(&error))
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, BenchError> {
    let mut observer = CliObserver::new(&cli.output)?;
    match &cli.command {
        Command::Scenario(command) => {
            let (workload, connect) = workload(command);
            let host = cli.target.host.as_deref().unwrap_or("127.0.0.1");
            let port = cli.target.port.unwrap_or(1883);
            let addr = if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            raise_fd_limit_for(&workload);
            let config = RunConfig {
                target_name: addr.clone(),
                target_addr: addr,
                connect,
                workload,
                broker_pid: cli.target.pid,
            };
            observer.begin(&config.target_name, &config.workload);
            let report = cutie_bench::run(&config, &mut observer)?;
            observer.end(&report);
            if cli.output.json {
                println!("{}", to_json(&report));
            } else {
                print!("{report}");
            }
            if let Some(error) = observer.output_error.take() {
                return Err(error);
            }
            Ok(if report.errors_total > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::AckLatency(args) => {
            let host = cli.target.host.as_deref().unwrap_or("127.0.0.1");
            let port = cli.target.port.unwrap_or(1883);
            let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| BenchError::Resolve {
                    addr: format!("{host}:{port}"),
                    reason: "no address".into(),
                })?;
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            let config = cutie_bench::ack::AckConfig {
                addr,
                admin_addr: args.admin,
                rate_per_sec: args.rate,
                warmup: args.warmup,
                duration: args.duration,
                drain: args.drain,
                payload_bytes: args.payload_bytes,
                subscribers: args.subscribers,
                offline_subscribers: args.offline_subscribers,
                topic_prefix: args
                    .topic_prefix
                    .clone()
                    .unwrap_or_else(|| format!("cutie-bench/ack-{}-{stamp}", std::process::id())),
                connect: connect_options(&args.conn),
            };
            let report = cutie_bench::ack::run_ack_latency(&config)?;
            print!("{report}");
            Ok(if report.acked < report.sent {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Compare(compare) => {
            if cli.target.host.is_some() || cli.target.port.is_some() || cli.target.pid.is_some() {
                return Err(BenchError::Config(
                    "compare takes --target NAME=HOST:PORT and --pid-of NAME=PID, not --host/--port/--pid"
                        .into(),
                ));
            }
            let targets: Vec<(String, String)> = compare
                .targets
                .iter()
                .map(|t| match t.split_once('=') {
                    Some((name, addr)) => (name.to_owned(), addr.to_owned()),
                    None => (t.clone(), t.clone()),
                })
                .collect();
            let mut pids = Vec::new();
            for entry in &compare.pids {
                let parsed = entry
                    .split_once('=')
                    .and_then(|(name, pid)| Some((name.to_owned(), pid.parse::<u32>().ok()?)));
                match parsed {
                    Some((name, pid)) if targets.iter().any(|(n, _)| *n == name) => {
                        pids.push((name, pid))
                    }
                    _ => {
                        return Err(BenchError::Config(format!(
                            "--pid-of {entry:?}: expected NAME=PID with NAME one of the targets"
                        )))
                    }
                }
            }
            let (workload, connect) = workload(&compare.scenario);
            raise_fd_limit_for(&workload);
            let mut runs = Vec::new();
            for (i, (name, addr)) in targets.iter().enumerate() {
                if i > 0 {
                    std::thread::sleep(compare.pause);
                }
                if !cli.output.quiet {
                    eprintln!("== {name} ({addr})");
                }
                let config = RunConfig {
                    target_name: name.clone(),
                    target_addr: addr.clone(),
                    connect: connect.clone(),
                    workload: workload.clone(),
                    broker_pid: pids.iter().find(|(n, _)| n == name).map(|(_, pid)| *pid),
                };
                observer.begin(name, &config.workload);
                let report = cutie_bench::run(&config, &mut observer).map_err(|e| match e {
                    BenchError::Setup {
                        failed,
                        total,
                        first,
                    } => BenchError::Setup {
                        failed,
                        total,
                        first: format!("target {name}: {first}"),
                    },
                    other => other,
                })?;
                observer.end(&report);
                if !cli.output.json {
                    println!("{report}");
                }
                runs.push(report);
            }
            let any_errors = runs.iter().any(|r| r.errors_total > 0);
            let comparison = Comparison::new(runs);
            if cli.output.json {
                println!("{}", to_json(&comparison));
            } else {
                print!("{comparison}");
            }
            if let Some(error) = observer.output_error.take() {
                return Err(error);
            }
            Ok(if any_errors {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

/// Raises the open-file limit (one descriptor per connection) and warns if it is still
/// too low for the workload.
fn raise_fd_limit_for(workload: &Workload) {
    let connections = match workload {
        Workload::Storm(storm) => u64::from(storm.connections),
        Workload::Messages(m) => {
            u64::from(m.scenario.publishers()) + u64::from(m.scenario.subscribers())
        }
    };
    match cutie_bench::raise_fd_limit() {
        Ok(limit) if limit < connections + 64 => eprintln!(
            "cutie-bench: warning: open-file limit {limit} is too low for {connections} connections; raise `ulimit -n`"
        ),
        Ok(_) => {}
        Err(e) => eprintln!("cutie-bench: warning: cannot raise the open-file limit: {e}"),
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value)
        .unwrap_or_else(|e| format!("{{\"error\": \"serialising the report: {e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_parse_with_and_without_units() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn compare_takes_targets_then_a_scenario() {
        let cli = Cli::try_parse_from([
            "cutie-bench",
            "compare",
            "--target",
            "cutie=127.0.0.1:1883",
            "--target",
            "mosquitto=127.0.0.1:1884",
            "--pid-of",
            "cutie=42",
            "fan-in",
            "--publishers",
            "4",
            "--qos",
            "1",
            "--rate",
            "1000",
        ])
        .expect("parses");
        let Command::Compare(compare) = cli.command else {
            panic!("not compare");
        };
        assert_eq!(compare.targets.len(), 2);
        let (workload, _) = workload(&compare.scenario);
        let Workload::Messages(m) = workload else {
            panic!("not messages");
        };
        assert_eq!(m.scenario, Scenario::FanIn { publishers: 4 });
        assert_eq!(m.qos, QoS::AtLeastOnce);
        assert_eq!(m.rate_per_sec, Some(1000));
    }

    #[test]
    fn persistent_alone_means_subscribers_and_takes_all_or_none() {
        let sessions = |args: &[&str]| {
            let cli = Cli::try_parse_from(["cutie-bench", "p2p"].iter().chain(args))
                .unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let Command::Scenario(command) = cli.command else {
                panic!("not a scenario");
            };
            let Workload::Messages(m) = workload(&command).0 else {
                panic!("not messages");
            };
            m.persistent_sessions
        };
        assert_eq!(sessions(&[]), PersistentSessions::None);
        assert_eq!(sessions(&["--persistent"]), PersistentSessions::Subscribers);
        assert_eq!(
            sessions(&["--persistent", "--qos", "1"]),
            PersistentSessions::Subscribers
        );
        assert_eq!(sessions(&["--persistent", "all"]), PersistentSessions::All);
        assert_eq!(sessions(&["--persistent=none"]), PersistentSessions::None);
        assert!(Cli::try_parse_from(["cutie-bench", "p2p", "--persistent", "some"]).is_err());
    }

    #[test]
    fn qos_above_two_is_refused() {
        assert!(Cli::try_parse_from(["cutie-bench", "fan-in", "--qos", "3"]).is_err());
    }
}
