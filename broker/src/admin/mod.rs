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
//! The server binds before the shards start (so `/readyz` answers 503 during recovery).
//! HTTP/1 is hyper's, on a current-thread tokio runtime on the `cutie-admin` thread:
//! one request per connection (`Connection: close`), a request head of at most 8 KiB.
//! Health and readiness are answered on that thread (atomics only); the routes that
//! lock snapshots or wait for shards run on a small blocking pool
//! ([`BLOCKING_THREADS_MAX`]), so a slow one never holds up a probe.
//!
//! Slow and hostile clients are bounded by [`Limits`] (`[admin]` in the configuration):
//! at most `connections_max` connections and `connections_per_address_max` from one
//! address, where a new connection closes the oldest idle one rather than being refused
//! ([`connections`]), `header_read_timeout_secs` to send a whole request head however
//! steadily it trickles, `connection_timeout_secs` in all. Counted by
//! `cutie_admin_connections_open` and `cutie_admin_connections_closed_total{reason}`.
//!
//! [`sys`] publishes the `$SYS/broker/...` topics; it runs whether or not the endpoint
//! is enabled.

pub mod api;
pub mod connections;
pub mod health;
pub mod http;
pub mod metrics;
pub mod sys;

use connections::{ConnectionId, Table};
use cutie_shard::access::AccessControl;
use cutie_shard::stats::monotonic_ms;
use cutie_shard::{Monitor, ShardHealth, ShardStats};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::cell::RefCell;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify};
use tracing_appender::non_blocking::ErrorCounter;

/// Threads that run the routes which lock shard snapshots or wait for shard answers
/// (`/metrics`, `/api/...`), at most; more such requests wait their turn.
pub const BLOCKING_THREADS_MAX: usize = 4;

/// Largest request head hyper buffers (its minimum; the endpoint takes no body).
const HEAD_BYTES_MAX: usize = 8 * 1024;

/// Pause after a failed accept (out of file descriptors, say) before the next.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);

/// The endpoint's bounds on its clients (`[admin]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; a new one closes the oldest idle one.
    pub connections_max: usize,
    /// Connections open at once from one IP address; a new one closes that address's
    /// oldest idle one.
    pub connections_per_address_max: usize,
    /// From accept to a whole request head.
    pub header_read_timeout: Duration,
    /// From accept to the last byte of the answer.
    pub connection_timeout: Duration,
}

/// Why an admin connection ended: the `reason` label of
/// `cutie_admin_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CloseReason {
    /// Answered, or closed by its client without a request.
    Done,
    /// Not an HTTP/1 request hyper accepts, or the socket failed.
    Error,
    /// Displaced by a newer connection ([`connections`]).
    Evicted,
    /// No whole request head within `header_read_timeout_secs`.
    HeaderTimeout,
    /// Not done within `connection_timeout_secs`.
    ConnectionTimeout,
}

impl CloseReason {
    fn label(self) -> &'static str {
        match self {
            CloseReason::Done => "done",
            CloseReason::Error => "error",
            CloseReason::Evicted => "evicted",
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::ConnectionTimeout => "connection_timeout",
        }
    }

    fn count(self) {
        ::metrics::counter!("cutie_admin_connections_closed_total", "reason" => self.label())
            .increment(1);
    }
}

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
    /// Log lines the stderr writer dropped rather than block a shard.
    log_dropped: ErrorCounter,
    /// The ban table's size and counts, broker-wide.
    access: Arc<AccessControl>,
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
        limits: Limits,
        shards: usize,
        prometheus: PrometheusHandle,
        log_dropped: ErrorCounter,
        access: Arc<AccessControl>,
    ) -> Result<AdminServer, String> {
        let listener = TcpListener::bind(listen)
            .map_err(|e| format!("cannot listen on admin address {listen}: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("admin listener on {listen}: {e}"))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("admin listener on {listen}: {e}"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .max_blocking_threads(BLOCKING_THREADS_MAX)
            .thread_name("cutie-admin-blocking")
            .build()
            .map_err(|e| format!("cannot start the admin endpoint's runtime: {e}"))?;
        // Before recovery, which may take a while: probes and tests find it here.
        tracing::info!(admin = %addr, "admin endpoint listening");
        let shared = Arc::new(Shared {
            monitor: OnceLock::new(),
            started: Instant::now(),
            prometheus,
            collected: Mutex::new(metrics::Collected::new(shards)),
            log_dropped,
            access,
        });
        {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("cutie-admin".to_owned())
                .spawn(move || {
                    let local = tokio::task::LocalSet::new();
                    local.block_on(&runtime, serve(listener, shared, limits));
                })
                .map_err(|e| format!("cannot start the admin thread: {e}"))?;
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

/// The connection table, with what closes each connection.
type Connections = Rc<RefCell<Table<oneshot::Sender<()>>>>;

fn set_open_gauge(open: usize) {
    ::metrics::gauge!("cutie_admin_connections_open").set(open as f64);
}

/// Accepts connections for ever, each served by a task of its own on this thread.
async fn serve(listener: TcpListener, shared: Arc<Shared>, limits: Limits) {
    {
        let shared = shared.clone();
        tokio::task::spawn_local(async move {
            let mut upkeep = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                upkeep.tick().await;
                shared.prometheus.run_upkeep();
            }
        });
    }
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "admin endpoint cannot serve its listener");
            return;
        }
    };
    let table: Connections = Rc::new(RefCell::new(Table::new(
        limits.connections_max,
        limits.connections_per_address_max,
    )));
    set_open_gauge(0);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::debug!(%error, "admin accept failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let (close, closed) = oneshot::channel();
        let (id, evicted) = table.borrow_mut().admit(peer.ip(), close);
        for close in evicted {
            // Its task may have ended on its own meanwhile: nothing to close then.
            let _ = close.send(());
            CloseReason::Evicted.count();
        }
        set_open_gauge(table.borrow().len());
        tokio::task::spawn_local(connection(
            stream,
            id,
            closed,
            table.clone(),
            shared.clone(),
            limits,
        ));
    }
}

/// Serves one connection until it is answered, fails, times out or is evicted.
async fn connection(
    stream: tokio::net::TcpStream,
    id: ConnectionId,
    mut evicted: oneshot::Receiver<()>,
    table: Connections,
    shared: Arc<Shared>,
    limits: Limits,
) {
    let head_read = Rc::new(Notify::new());
    let service = {
        let head_read = head_read.clone();
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            head_read.notify_one();
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(respond(shared, request).await.into_hyper()) }
        })
    };
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .title_case_headers(true)
        .auto_date_header(false)
        .max_buf_size(HEAD_BYTES_MAX)
        .serve_connection(TokioIo::new(stream), service);
    let header_deadline = tokio::time::sleep(limits.header_read_timeout);
    let connection_deadline = tokio::time::sleep(limits.connection_timeout);
    tokio::pin!(connection, header_deadline, connection_deadline);
    let mut idle = true;
    let reason = loop {
        tokio::select! {
            biased;
            result = &mut connection => break match result {
                Ok(()) => CloseReason::Done,
                Err(error) => {
                    tracing::debug!(%error, "admin connection failed");
                    CloseReason::Error
                }
            },
            () = head_read.notified(), if idle => {
                idle = false;
                table.borrow_mut().busy(id);
            }
            _ = &mut evicted => break CloseReason::Evicted,
            () = &mut header_deadline, if idle => break CloseReason::HeaderTimeout,
            () = &mut connection_deadline => break CloseReason::ConnectionTimeout,
        }
    };
    // An evicted connection was counted, and taken out of the table, when it was
    // displaced.
    if table.borrow_mut().remove(id) {
        reason.count();
        set_open_gauge(table.borrow().len());
    }
    // Dropping `connection` here closes the socket.
}

/// Answers one request: health on this thread, anything that locks shard snapshots or
/// waits for shards on the blocking pool.
async fn respond(shared: Arc<Shared>, request: hyper::Request<Incoming>) -> Response {
    // hyper leaves the body out of an answer to HEAD, and keeps its Content-Length.
    if !matches!(*request.method(), hyper::Method::GET | hyper::Method::HEAD) {
        return Response::json(405, &serde_json::json!({"error": "only GET and HEAD"}));
    }
    let request = Request::new(
        request.method().as_str(),
        request.uri().path(),
        request.uri().query(),
    );
    match request.path.as_str() {
        "/healthz" | "/readyz" | "/" | "/index.html" => route(&shared, &request),
        _ => tokio::task::spawn_blocking(move || route(&shared, &request))
            .await
            .unwrap_or_else(|error| {
                tracing::warn!(%error, "admin route failed");
                Response::json(500, &serde_json::json!({"error": "internal error"}))
            }),
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
            ::metrics::counter!("cutie_log_lines_dropped_total")
                .absolute(shared.log_dropped.dropped_lines() as u64);
            metrics::update_access(&shared.access);
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
