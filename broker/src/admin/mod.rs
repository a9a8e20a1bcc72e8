//! The admin HTTP endpoint (`[admin]`, default `127.0.0.1:9090`): a plain std thread,
//! off the shards, that talks to them only through what [`cutie_shard::Monitor`] gives:
//! atomics, the snapshot each shard replaces every tick (which shards only `try_lock`),
//! and requests over their control channels that their tick loops answer.
//!
//! - `/metrics`: Prometheus text ([`metrics`]);
//! - `/healthz`, `/readyz`: liveness and readiness, 200 or 503 with a JSON body saying
//!   why ([`health`]);
//! - `/`: the dashboard, one self-contained HTML page polling `/api/v1/stats`;
//! - `/api/v1/stats`, `/api/v1/clients`, `/api/v1/subscriptions`: JSON ([`api`]).
//!
//! The server binds before the shards start (so `/readyz` answers 503 during recovery)
//! and serves each connection on its own short-lived thread, at most
//! [`CONNECTIONS_MAX`] at once, one request per connection. [`sys`] publishes the
//! `$SYS/broker/...` topics; it runs whether or not the endpoint is enabled.

pub mod api;
pub mod health;
pub mod http;
pub mod metrics;
pub mod sys;

use cutie_shard::stats::monotonic_ms;
use cutie_shard::{Monitor, ShardHealth, ShardStats};
use http::{ReadError, Request, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Admin connections served at once; more are answered 503 at once.
pub const CONNECTIONS_MAX: usize = 32;

/// How long a client has to send its request, and to take the answer.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the recorder's upkeep runs (it bounds the memory of its histograms).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The dashboard: HTML, CSS and JavaScript in one file, no external assets.
const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// One shard's health flags, read from its atomics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardState {
    /// Serving clients.
    pub ready: bool,
    /// Its executor has ended.
    pub exited: bool,
    /// Its write-ahead log is failed.
    pub log_failed: bool,
    /// Since its latest tick; `None` before it first served.
    pub tick_age_ms: Option<u64>,
}

impl ShardState {
    /// Reads `health` at `now_ms` ([`monotonic_ms`]).
    pub fn read(health: &ShardHealth, now_ms: u64) -> ShardState {
        ShardState {
            ready: health.ready.load(Ordering::Relaxed),
            exited: health.exited.load(Ordering::Relaxed),
            log_failed: health.log_failed.load(Ordering::Relaxed),
            tick_age_ms: health.tick_age_ms(now_ms),
        }
    }
}

/// One shard as of its latest snapshot.
#[derive(Debug, Clone, Default)]
pub struct ShardView {
    /// The shard's index.
    pub index: usize,
    /// Its health flags.
    pub state: ShardState,
    /// Its counters.
    pub stats: ShardStats,
    /// Its subscriptions.
    pub subscriptions: u64,
    /// Its retained messages (a replica of the whole store).
    pub retained: u64,
}

/// Installs the Prometheus recorder for the whole process (the latency buckets apply to
/// any histogram recorded through it). Call once.
pub fn install_recorder() -> Result<PrometheusHandle, String> {
    PrometheusBuilder::new()
        .set_buckets(&metrics::latency_buckets_seconds())
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))
}

/// What the server threads share.
#[derive(Debug)]
struct Shared {
    /// Set once the shards run (after recovery).
    monitor: OnceLock<Monitor>,
    started: Instant,
    prometheus: PrometheusHandle,
    collected: Mutex<metrics::Collected>,
    connections: AtomicUsize,
}

impl Shared {
    fn states(&self) -> Option<Vec<ShardState>> {
        let now = monotonic_ms();
        self.monitor.get().map(|monitor| {
            monitor
                .shards()
                .iter()
                .map(|health| ShardState::read(health, now))
                .collect()
        })
    }

    /// Copies every shard's snapshot and moves its latency samples into the collected
    /// histograms. Holds each shard's snapshot lock for a copy (the shard skips one
    /// tick's publication if it meets the lock held).
    fn collect(&self) -> (Vec<ShardView>, MutexGuard<'_, metrics::Collected>) {
        let mut collected = lock(&self.collected);
        collected.begin();
        let Some(monitor) = self.monitor.get() else {
            return (Vec::new(), collected);
        };
        let now = monotonic_ms();
        let views = monitor
            .shards()
            .iter()
            .enumerate()
            .map(|(index, health)| {
                let state = ShardState::read(health, now);
                let mut snapshot = lock(&health.snapshot);
                if !snapshot.delivery_latency_us.is_empty() {
                    collected.delivery.add(index, &snapshot.delivery_latency_us);
                    snapshot.delivery_latency_us.reset();
                }
                if !snapshot.wal_commit_latency_us.is_empty() {
                    collected
                        .wal_commit
                        .add(index, &snapshot.wal_commit_latency_us);
                    snapshot.wal_commit_latency_us.reset();
                }
                ShardView {
                    index,
                    state,
                    stats: snapshot.stats.clone(),
                    subscriptions: snapshot.subscriptions,
                    retained: snapshot.retained,
                }
            })
            .collect();
        (views, collected)
    }
}

/// A lock that a panicked holder did not poison for us: the data are counters.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The running admin endpoint.
#[derive(Debug)]
pub struct AdminServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl AdminServer {
    /// Binds `listen` and serves on a thread of its own. Until [`AdminServer::attach`],
    /// health and readiness answer 503 "starting".
    pub fn start(
        listen: SocketAddr,
        shards: usize,
        prometheus: PrometheusHandle,
    ) -> Result<AdminServer, String> {
        let listener = TcpListener::bind(listen)
            .map_err(|e| format!("cannot listen on admin address {listen}: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("admin listener on {listen}: {e}"))?;
        // Before recovery, which may take a while: probes and tests find it here.
        tracing::info!(admin = %addr, "admin endpoint listening");
        let shared = Arc::new(Shared {
            monitor: OnceLock::new(),
            started: Instant::now(),
            prometheus,
            collected: Mutex::new(metrics::Collected::new(shards)),
            connections: AtomicUsize::new(0),
        });
        {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("cutie-admin".to_owned())
                .spawn(move || serve(&listener, &shared))
                .map_err(|e| format!("cannot start the admin thread: {e}"))?;
        }
        {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("cutie-admin-upkeep".to_owned())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_INTERVAL);
                    shared.prometheus.run_upkeep();
                })
                .map_err(|e| format!("cannot start the metrics upkeep thread: {e}"))?;
        }
        Ok(AdminServer { addr, shared })
    }

    /// The bound address (the real port if 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shards run: serve their state from now on.
    pub fn attach(&self, monitor: Monitor) {
        let _ = self.shared.monitor.set(monitor);
    }
}

fn serve(listener: &TcpListener, shared: &Arc<Shared>) {
    for stream in listener.incoming() {
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%error, "admin accept failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let _ = stream.set_read_timeout(Some(SOCKET_TIMEOUT));
        let _ = stream.set_write_timeout(Some(SOCKET_TIMEOUT));
        if shared.connections.fetch_add(1, Ordering::Relaxed) >= CONNECTIONS_MAX {
            shared.connections.fetch_sub(1, Ordering::Relaxed);
            let busy = Response::json(
                503,
                &serde_json::json!({"error": "too many admin connections"}),
            );
            let _ = http::write_response(&mut stream, &busy, false);
            continue;
        }
        let worker = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("cutie-admin-conn".to_owned())
            .spawn(move || {
                handle(&worker, stream);
                worker.connections.fetch_sub(1, Ordering::Relaxed);
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start an admin connection thread");
            shared.connections.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

fn handle(shared: &Shared, mut stream: TcpStream) {
    let (response, head_only) = match http::read_request(&mut stream) {
        Ok(request) => match request.method.as_str() {
            "GET" => (route(shared, &request), false),
            "HEAD" => (route(shared, &request), true),
            _ => (
                Response::json(405, &serde_json::json!({"error": "only GET and HEAD"})),
                false,
            ),
        },
        Err(ReadError::TooLarge) => (Response::text(431, "request head too large\n"), false),
        Err(ReadError::Malformed) => (Response::text(400, "malformed request\n"), false),
        Err(ReadError::Io(error)) => {
            tracing::debug!(%error, "admin request not read");
            return;
        }
    };
    if let Err(error) = http::write_response(&mut stream, &response, head_only) {
        tracing::debug!(%error, "admin response not written");
    }
}

fn route(shared: &Shared, request: &Request) -> Response {
    match request.path.as_str() {
        "/" | "/index.html" => Response {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: DASHBOARD_HTML.as_bytes().to_vec(),
        },
        "/metrics" => {
            let (views, collected) = shared.collect();
            metrics::update(&views, shared.started.elapsed().as_secs_f64());
            let mut text = shared.prometheus.render();
            metrics::render_histograms(&mut text, &collected);
            Response {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: text.into_bytes(),
            }
        }
        "/healthz" => verdict(health::liveness(shared.states().as_deref())),
        "/readyz" => verdict(health::readiness(shared.states().as_deref())),
        "/api/v1/stats" => {
            let (views, collected) = shared.collect();
            let ready = health::readiness(shared.states().as_deref()).ok;
            Response::json(
                200,
                &api::stats(&views, &collected, shared.started.elapsed(), ready),
            )
        }
        "/api/v1/clients" => list(shared, request, api::List::Clients),
        "/api/v1/subscriptions" => list(shared, request, api::List::Subscriptions),
        _ => Response::json(404, &serde_json::json!({"error": "not found"})),
    }
}

fn verdict(verdict: health::Verdict) -> Response {
    Response::json(if verdict.ok { 200 } else { 503 }, &verdict.body)
}

fn list(shared: &Shared, request: &Request, which: api::List) -> Response {
    let page = match api::PageRequest::parse(request) {
        Ok(page) => page,
        Err(message) => return Response::json(400, &serde_json::json!({ "error": message })),
    };
    let Some(monitor) = shared.monitor.get() else {
        return Response::json(503, &serde_json::json!({"error": "starting"}));
    };
    match api::list(monitor, which, page) {
        Ok(body) => Response::json(200, &body),
        Err(message) => Response::json(503, &serde_json::json!({ "error": message })),
    }
}
