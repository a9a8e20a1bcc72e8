//! The thin glommio shell around [`ShardCore`]: executors, sockets, timers, the mesh.
//!
//! One pinned executor per shard. Each accepts on its own SO_REUSEPORT listener, reads
//! CONNECT, and hands a connection whose client id another shard owns to that shard by
//! passing the socket's file descriptor over the mesh (one move per connection, then no
//! proxying). Per connection there is a reader task (socket -> core) and a writer task
//! (core -> socket; it takes everything produced since its last wake-up in one write, so
//! many deliveries cost one syscall).
//!
//! Cost model: one `RefCell` borrow of the core per read, mesh message or tick; never
//! held across an await. The mesh is glommio's SPSC `shared_channel`, bounded; a reader
//! whose messages do not fit waits (backpressure to the publisher), mesh handlers never
//! wait (an answer that does not fit is sent from a spawned task).
//!
//! Observability: the reader stamps each read (`Instant::now()`, passed to
//! [`ShardCore::handle_bytes_at`]) and the writer, once a write returns, records the
//! time since for every delivery in it into the shard's hdrhistogram. Every tick (100 ms)
//! the shard stamps [`ShardHealth::last_tick_ms`], copies its counters into
//! [`ShardHealth::snapshot`] (`try_lock` only: never waits) and answers the admin side's
//! [`Control`] requests (client and subscription pages, `$SYS` publishes), at most
//! `CONTROL_CAPACITY` a tick.
//!
//! TLS ([`tls_proxy`]): the shard that accepts a TLS connection does the handshake and
//! proxies the plaintext through a UNIX socketpair; the other end of the pair takes the
//! plain path above (CONNECT, then served here or its fd handed to the owner).

mod tls_proxy;

use crate::access::{AccessControl, Admitted, AuthOutcome, Identity, Refusal};
use crate::core::{Limits, OutputState, ShardCore};
use crate::durable::{LogConfig, RecoveredLog, ShardHealth};
use crate::message::{owner_of, ConnId, MeshMessage, Message, ShardId};
use crate::startup::StartGate;
use crate::stats::{latency_histogram, ClientInfo, Page, SubscriptionInfo};
use ahash::AHashMap;
use bytes::BytesMut;
use cutie_codec::{ConnAck, Connect, DecodeError, Decoder, Packet};
use futures_lite::AsyncWriteExt;
use glommio::channels::local_channel;
use glommio::channels::shared_channel::{
    self, ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a broker's shards run.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Number of shards (executors), 1..=256.
    pub shards: u16,
    /// Pin each executor to one CPU of the process's affinity mask.
    pub pin_cores: bool,
    /// Where MQTT clients connect.
    pub listen: SocketAddr,
    /// glommio `io_memory` per executor (counted against `ulimit -l`).
    pub io_memory_bytes: usize,
    /// io_uring ring depth per executor.
    pub ring_depth: usize,
    /// How long a pinned shard keeps polling its rings after its last piece of work
    /// before it sleeps (glommio `spin_before_park`); zero sleeps at once. Unpinned
    /// shards always sleep at once (glommio ignores the setting for them).
    pub idle_poll: Duration,
    /// Capacity of each mesh channel, in messages.
    pub mesh_channel_capacity: usize,
    /// A connection must send CONNECT within this time.
    pub connect_timeout: Duration,
    /// Most client connections open at once in the whole broker (counted from accept
    /// to close, across shards); 0: no limit.
    pub max_connections: usize,
    /// Protocol limits.
    pub limits: Limits,
    /// Write-ahead logging; `None`: nothing survives a restart.
    pub log: Option<LogConfig>,
    /// Authentication, authorization and bans, shared by every shard.
    pub access: Arc<AccessControl>,
    /// Message plugins: each shard gets an instance from each factory.
    pub plugins: Vec<Arc<dyn crate::plugin::PluginFactory>>,
    /// The TLS listener; `None`: plain TCP only.
    pub tls: Option<crate::tls::TlsListener>,
}

/// Errors starting the broker.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Binding the MQTT listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// An executor could not be created.
    #[error("cannot start shard {shard}: {message}")]
    Executor {
        /// Which shard.
        shard: u16,
        /// What glommio said.
        message: String,
    },
    /// The configuration is unusable.
    #[error("invalid runtime configuration: {0}")]
    Config(String),
    /// The write-ahead logs could not be recovered.
    #[error(transparent)]
    Recover(#[from] crate::durable::RecoverError),
    /// The shards did not all come up.
    #[error("shard {shard} did not start: {reason}")]
    NotReady {
        /// The first shard that is not ready.
        shard: usize,
        /// What is known.
        reason: String,
    },
}

/// Control messages from outside the shards (signals, admin). A shard polls them with
/// `try_recv` at every tick (100 ms) and answers over the channel it was given, with
/// `try_send`: it never waits for the asker.
#[derive(Debug, Clone)]
pub enum Control {
    /// Stop accepting, close every connection, exit the executor.
    Shutdown,
    /// Answer with `limit` of this shard's sessions from `offset` (see
    /// [`crate::stats::client_page`]).
    Clients {
        /// Sessions to skip.
        offset: usize,
        /// Most sessions to answer (at most [`crate::stats::PAGE_LIMIT_MAX`]).
        limit: usize,
        /// Where the page goes.
        reply: crossbeam_channel::Sender<Page<ClientInfo>>,
    },
    /// Answer with `limit` of this shard's subscriptions from `offset` (see
    /// [`crate::stats::subscription_page`]).
    Subscriptions {
        /// Subscriptions to skip.
        offset: usize,
        /// Most subscriptions to answer (at most [`crate::stats::PAGE_LIMIT_MAX`]).
        limit: usize,
        /// Where the page goes.
        reply: crossbeam_channel::Sender<Page<SubscriptionInfo>>,
    },
    /// Publish these messages on behalf of the broker (`$SYS` topics), in order, through
    /// [`ShardCore::publish_internal`].
    Publish(Vec<Message>),
}

/// Control messages a shard may have waiting; more are refused (`try_send` fails)
/// until its next tick takes them.
const CONTROL_CAPACITY: usize = 64;

/// What travels between shards: protocol messages for the core, or a connection being
/// handed to its owner shard.
#[derive(Debug)]
enum Envelope {
    /// Messages for the core, in order (one flush's worth for this shard).
    Core(Vec<MeshMessage>),
    HandOff(HandOff),
    /// The sender has restored its log and sent everything a peer needs from it (its
    /// subscriptions' interest, its retained messages): the last message before it
    /// accepts clients.
    Recovered,
}

/// A connection whose CONNECT was read on a shard that does not own its client id.
#[derive(Debug)]
struct HandOff {
    fd: OwnedFd,
    connect: Box<Connect>,
    /// Bytes read after the CONNECT.
    rest: BytesMut,
    /// The connection's place in the ban table, released where it ends.
    admitted: Option<Admitted>,
}

/// What the admin side holds of a running broker: every shard's health and control
/// channel. Cheap to clone; usable from any thread; never blocks a shard.
#[derive(Debug, Clone)]
pub struct Monitor {
    controls: Vec<crossbeam_channel::Sender<Control>>,
    health: Vec<Arc<ShardHealth>>,
}

impl Monitor {
    /// Per-shard health and snapshots, by shard index.
    pub fn shards(&self) -> &[Arc<ShardHealth>] {
        &self.health
    }

    /// Queues `control` for shard `shard`'s next tick; `false` if it cannot take more
    /// now (or has exited, or does not exist).
    pub fn send(&self, shard: usize, control: Control) -> bool {
        self.controls
            .get(shard)
            .is_some_and(|tx| tx.try_send(control).is_ok())
    }
}

/// A running broker: its shards, and how to stop them.
#[derive(Debug)]
pub struct Broker {
    local_addr: SocketAddr,
    tls_local_addr: Option<SocketAddr>,
    controls: Vec<crossbeam_channel::Sender<Control>>,
    handles: Vec<glommio::ExecutorJoinHandle<()>>,
    health: Vec<Arc<ShardHealth>>,
}

impl Broker {
    /// Every shard has recovered, heard from every peer, and accepts clients.
    pub fn is_ready(&self) -> bool {
        self.health.iter().all(|h| h.ready.load(Ordering::Relaxed))
    }

    /// Per-shard health (readiness, log failure), for the admin side.
    pub fn health(&self) -> &[Arc<ShardHealth>] {
        &self.health
    }

    /// A handle for the admin side (metrics, API, `$SYS`), usable from other threads.
    pub fn monitor(&self) -> Monitor {
        Monitor {
            controls: self.controls.clone(),
            health: self.health.clone(),
        }
    }

    /// The address the MQTT listener is bound to (the real port if 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address the TLS listener is bound to, if there is one.
    pub fn tls_local_addr(&self) -> Option<SocketAddr> {
        self.tls_local_addr
    }

    /// Asks every shard to shut down (returns at once; see [`Broker::join`]).
    pub fn shutdown(&self) {
        for control in &self.controls {
            let _ = control.send(Control::Shutdown);
        }
    }

    /// Waits until every shard has exited.
    pub fn join(self) {
        for (i, handle) in self.handles.into_iter().enumerate() {
            if let Err(error) = handle.join() {
                tracing::error!(shard = i, %error, "shard exited with an error");
            }
        }
    }
}

/// The CPUs this process may run on (`sched_getaffinity`), in order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it and we only read it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|cpu| libc::CPU_ISSET(*cpu, &set))
            .collect()
    }
}

/// glommio registers `io_memory` once per ring, three rings per executor, all counted
/// against `RLIMIT_MEMLOCK`. When the configured size does not fit the limit for
/// `shards` executors, registration fails (glommio then only warns and runs slower), so
/// shrink it to what fits, never below 64 KiB, and say so.
fn fit_io_memory(configured: usize, shards: u16) -> usize {
    const RINGS_PER_EXECUTOR: usize = 3;
    // The rings themselves also lock memory; measured: 8 x 3 x 256 KiB fits 8 MiB, 8 x 3 x 296 KiB does not.
    const HEADROOM_BYTES: usize = 2 * 1024 * 1024;
    const FLOOR_BYTES: usize = 64 * 1024;
    // SAFETY: getrlimit fills a plain struct.
    let limit = unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) != 0 {
            return configured;
        }
        limit.rlim_cur
    };
    // SAFETY: geteuid has no preconditions. Root is not limited (CAP_IPC_LOCK).
    if limit == libc::RLIM_INFINITY || unsafe { libc::geteuid() } == 0 {
        return configured;
    }
    let budget = usize::try_from(limit)
        .unwrap_or(usize::MAX)
        .saturating_sub(HEADROOM_BYTES);
    let per_ring = budget / (usize::from(shards) * RINGS_PER_EXECUTOR);
    if per_ring >= configured {
        return configured;
    }
    let fitted = (per_ring / 4096 * 4096).max(FLOOR_BYTES);
    tracing::warn!(
        memlock_limit_bytes = limit,
        shards,
        configured_io_memory_bytes = configured,
        io_memory_bytes = fitted,
        "runtime.io_memory_bytes does not fit the locked-memory limit (ulimit -l) for this many \
         shards; using less. Raise the limit (systemd LimitMEMLOCK, ulimit -l) to keep the configured size"
    );
    fitted
}

fn bind_listener(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket)
}

/// Starts the shards and returns once every listener is bound and the mesh is being
/// connected. Bind errors are reported here, before any executor runs.
pub fn start(config: RuntimeConfig) -> Result<Broker, StartError> {
    let n = config.shards;
    if n == 0 || usize::from(n) > crate::message::SHARDS_MAX {
        return Err(StartError::Config(format!(
            "shards must be between 1 and {}",
            crate::message::SHARDS_MAX
        )));
    }
    // Bind every listener here so an address in use is a clear error, and so binding
    // port 0 gives every shard the same port.
    let mut listeners = Vec::with_capacity(usize::from(n));
    let mut local_addr = config.listen;
    for _ in 0..n {
        let socket = bind_listener(local_addr).map_err(|source| StartError::Bind {
            addr: local_addr,
            source,
        })?;
        if local_addr.port() == 0 {
            local_addr = socket
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .ok_or_else(|| StartError::Bind {
                    addr: config.listen,
                    source: std::io::Error::other("no local address after bind"),
                })?;
        }
        listeners.push(OwnedFd::from(socket));
    }

    let (mut tls_listeners, tls_local_addr) = tls_proxy::bind_listeners(&config)?;

    // The mesh: one bounded SPSC channel for every ordered pair of shards.
    let mut senders: Vec<Vec<Option<SharedSender<Envelope>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    let mut receivers: Vec<Vec<Option<SharedReceiver<Envelope>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    for from in 0..usize::from(n) {
        for to in 0..usize::from(n) {
            if from != to {
                let (tx, rx) = shared_channel::new_bounded(config.mesh_channel_capacity);
                senders[from][to] = Some(tx);
                receivers[to][from] = Some(rx);
            }
        }
    }

    // Recover every shard's log before any shard runs (in parallel, one thread each).
    let mut logs: Vec<Option<RecoveredLog>> = match &config.log {
        Some(log_config) => crate::durable::recover(log_config, n)?
            .into_iter()
            .map(Some)
            .collect(),
        None => (0..n).map(|_| None).collect(),
    };
    let health: Vec<Arc<ShardHealth>> = (0..n).map(|_| Arc::default()).collect();

    let io_memory_bytes = fit_io_memory(config.io_memory_bytes, n);
    let cpus = allowed_cpus();
    let mut controls = Vec::new();
    let mut handles = Vec::new();
    for (i, ((listener, my_senders), my_receivers)) in listeners
        .into_iter()
        .zip(senders)
        .zip(receivers)
        .enumerate()
    {
        let log = logs[i].take();
        let tls_listener_fd = tls_listeners[i].take();
        let shard_health = health[i].clone();
        let exit = crate::durable::ExitGuard(shard_health.clone());
        let shard = ShardId(i as u16);
        let (control_tx, control_rx) = crossbeam_channel::bounded(CONTROL_CAPACITY);
        controls.push(control_tx);
        let placement = match (config.pin_cores, cpus.is_empty()) {
            (true, false) => Placement::Fixed(cpus[i % cpus.len()]),
            _ => Placement::Unbound,
        };
        let config = config.clone();
        let mut builder = LocalExecutorBuilder::new(placement);
        if !config.idle_poll.is_zero() {
            builder = builder.spin_before_park(config.idle_poll);
        }
        let handle = builder
            .name(&format!("cutie-shard-{i}"))
            .io_memory(io_memory_bytes)
            .ring_depth(config.ring_depth)
            .spawn(move || {
                // Dropped with this closure if the executor fails before calling it, or
                // when the shard's future ends: either way the shard has exited.
                let exit = exit;
                async move {
                    let _exit = exit;
                    run_shard(ShardSetup {
                        id: shard,
                        config,
                        listener_fd: listener,
                        tls_listener_fd,
                        senders: my_senders,
                        receivers: my_receivers,
                        control: control_rx,
                        log,
                        health: shard_health,
                    })
                    .await
                }
            })
            .map_err(|e| StartError::Executor {
                shard: i as u16,
                message: e.to_string(),
            })?;
        handles.push(handle);
    }
    let broker = Broker {
        local_addr,
        tls_local_addr,
        controls,
        handles,
        health,
    };
    // Serve only once every shard serves: an executor that cannot start (io_uring
    // refused by a seccomp profile, too little locked memory) must fail the start, not
    // leave a process that listens and serves nothing.
    const READY_TIMEOUT: Duration = Duration::from_secs(30);
    let deadline = Instant::now() + READY_TIMEOUT;
    while !broker.is_ready() {
        let failed = broker
            .health
            .iter()
            .position(|h| h.exited.load(Ordering::Relaxed));
        if failed.is_some() || Instant::now() > deadline {
            let shard = failed.unwrap_or_else(|| {
                broker
                    .health
                    .iter()
                    .position(|h| !h.ready.load(Ordering::Relaxed))
                    .unwrap_or(0)
            });
            broker.shutdown();
            return Err(StartError::NotReady {
                shard,
                reason: if failed.is_some() {
                    "its executor ended before serving (io_uring refused? a container's \
                     seccomp profile may block it, or the locked-memory limit, ulimit -l, \
                     is too small: see deploy/README.md)"
                        .to_owned()
                } else {
                    format!(
                        "not ready after {READY_TIMEOUT:?} (is io_uring allowed? a container's \
                         seccomp profile may block it: see deploy/README.md)"
                    )
                },
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(broker)
}

/// Wakes a connection's writer: a flag and one waker (a channel would cost a few hundred
/// bytes per connection for the same job).
#[derive(Default)]
pub(crate) struct Notify {
    notified: Cell<bool>,
    closed: Cell<bool>,
    waker: Cell<Option<std::task::Waker>>,
}

impl Notify {
    pub(crate) fn notify(&self) {
        self.notified.set(true);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    fn close(&self) {
        self.closed.set(true);
        self.notify();
    }

    /// Waits for a notification; false once closed.
    pub(crate) async fn wait(&self) -> bool {
        futures_lite::future::poll_fn(|cx| {
            if self.closed.get() {
                std::task::Poll::Ready(false)
            } else if self.notified.replace(false) {
                std::task::Poll::Ready(true)
            } else {
                self.waker.set(Some(cx.waker().clone()));
                std::task::Poll::Pending
            }
        })
        .await
    }
}

/// What waits to go into one peer's mesh channel: posted by any task of the shard,
/// written into the channel by that peer's one sender task, so envelopes keep their
/// order even when the channel is full.
#[derive(Default)]
struct Outbox {
    queue: RefCell<std::collections::VecDeque<Envelope>>,
    /// Wakes the sender task.
    wake: Notify,
    /// Woken after each envelope the sender task wrote (waiters re-check the queue).
    room: Drained,
}

/// Wakes every task waiting for session queues to drain (paced publishers).
#[derive(Default)]
struct Drained {
    waiters: RefCell<Vec<std::task::Waker>>,
}

impl Drained {
    fn wake_all(&self) {
        for waker in self.waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    /// Resolves at the next `wake_all`.
    async fn wait(&self) {
        let mut registered = false;
        futures_lite::future::poll_fn(|cx| {
            if registered {
                std::task::Poll::Ready(())
            } else {
                registered = true;
                self.waiters.borrow_mut().push(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await
    }
}

/// One shard's runtime state, shared by its tasks (single thread: `Rc`/`RefCell`).
struct Shard {
    id: ShardId,
    config: RuntimeConfig,
    core: RefCell<ShardCore>,
    senders: Vec<Option<ConnectedSender<Envelope>>>,
    writers: RefCell<AHashMap<ConnId, Rc<Notify>>>,
    next_conn: Cell<u64>,
    open_connections: Cell<usize>,
    start: Instant,
    stopping: Cell<bool>,
    /// Signalled after every read: acknowledgements may have drained a paced queue.
    drained: Drained,
    /// Signalled after each log round: the writer took the records waiting for it.
    log_room: Drained,
    /// The buffer every socket read of this shard goes through (see `read_some`).
    scratch: RefCell<Box<[u8]>>,
    /// Wakes the log task: the core has records.
    log_wake: Notify,
    /// Tells the log task to write what is left and end.
    log_stop: Cell<bool>,
    /// Peers' `Envelope::Recovered` markers, and the connections handed over before the
    /// last one (see [`crate::startup`]).
    gate: RefCell<StartGate<HandOff>>,
    /// Woken at each `Envelope::Recovered`.
    peer_recovered: Notify,
    /// Per peer shard: what waits to go into its mesh channel, in order (see
    /// [`Outbox`]).
    outboxes: Vec<Outbox>,
    /// Delivery latencies (µs) since the last tick's snapshot: see
    /// [`ShardCore::take_output_timed`].
    delivery_latency_us: RefCell<Histogram<u64>>,
    /// Write-ahead log commit latencies (µs) since the last tick's snapshot, recorded by
    /// the log task.
    wal_commit_latency_us: Rc<RefCell<Histogram<u64>>>,
}

impl Shard {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Stamps the tick and, unless the admin side holds the snapshot right now (then the
    /// next tick does it), replaces the snapshot's counters and hands over the latency
    /// samples recorded since the last one. Never waits.
    fn publish_snapshot(&self, health: &ShardHealth, retained: u64) {
        health
            .last_tick_ms
            .store(crate::stats::monotonic_ms().max(1), Ordering::Relaxed);
        let Ok(mut snapshot) = health.snapshot.try_lock() else {
            return;
        };
        let core = self.core.borrow();
        snapshot.stats.clone_from(&core.stats);
        snapshot.subscriptions = core.subscription_count() as u64;
        snapshot.retained = retained;
        snapshot.taken_ms = crate::stats::monotonic_ms();
        let snapshot = &mut *snapshot;
        for (local, shared) in [
            (&self.delivery_latency_us, &mut snapshot.delivery_latency_us),
            (
                &*self.wal_commit_latency_us,
                &mut snapshot.wal_commit_latency_us,
            ),
        ] {
            let mut local = local.borrow_mut();
            if !local.is_empty() {
                // Same bounds on both sides: adding cannot fail.
                let _ = shared.add(&*local);
                local.reset();
            }
        }
    }

    fn next_conn_id(&self) -> ConnId {
        let id = self.next_conn.get();
        self.next_conn.set(id + 1);
        ConnId(id)
    }

    /// Wakes writers with new output and collects messages for other shards.
    ///
    /// Messages for one shard go as one batch: one channel slot and at most one wake-up
    /// of the peer (an eventfd write) per flush, not per message.
    fn collect_effects(&self) -> Vec<(ShardId, Vec<MeshMessage>)> {
        let mut woken = Vec::new();
        let mut mesh = Vec::new();
        {
            let mut core = self.core.borrow_mut();
            core.drain_woken(&mut woken);
            core.drain_mesh(&mut mesh);
            if core.has_records() {
                self.log_wake.notify();
            }
        }
        let writers = self.writers.borrow();
        for conn_id in woken {
            if let Some(writer) = writers.get(&conn_id) {
                writer.notify();
            }
        }
        let mut batches: Vec<(ShardId, Vec<MeshMessage>)> = Vec::new();
        for (to, message) in mesh {
            // The newest batch for `to`, unless it is full: a channel slot then holds at
            // most MESH_BATCH_MESSAGES_MAX messages, so `mesh_channel_capacity` bounds
            // the messages (not only the batches) waiting between two shards.
            match batches
                .iter_mut()
                .rev()
                .find(|(shard, batch)| *shard == to && batch.len() < MESH_BATCH_MESSAGES_MAX)
            {
                Some((_, batch)) => batch.push(message),
                None => batches.push((to, vec![message])),
            }
        }
        batches
    }

    /// Applies effects, waiting for room in mesh channels (backpressure).
    async fn flush(&self) {
        let mesh = self.collect_effects();
        if !mesh.is_empty() {
            // Boxed: the send future is large and rarely alive; inline it would grow every
            // connection's task by its size.
            Box::pin(self.send_mesh(mesh)).await;
        }
    }

    /// Pacing: if the latest input pushed a live session's queue past its high
    /// watermark, take no more input from this source until it drains (or the session
    /// stalls or goes away). The waits are re-checked after every read of the shard,
    /// and at least every 50 ms, since stalling is a matter of time.
    async fn pace(&self) {
        let Some(key) = self.core.borrow_mut().take_pressure() else {
            return;
        };
        self.core.borrow_mut().stats.paced_total += 1;
        while self.core.borrow().is_congested(key, self.now_ms()) {
            futures_lite::future::or(self.drained.wait(), async {
                glommio::timer::sleep(Duration::from_millis(50)).await;
            })
            .await;
        }
    }

    /// While the records produced wait for the log writer in numbers
    /// (`ShardCore::log_backlogged`), waits: the input that produced them (a client's
    /// socket, a peer's channel) is not read meanwhile.
    async fn wait_log_room(&self) {
        if !self.core.borrow().log_backlogged() {
            return;
        }
        self.core.borrow_mut().stats.log_paced_total += 1;
        while self.core.borrow().log_backlogged() {
            futures_lite::future::or(self.log_room.wait(), async {
                glommio::timer::sleep(Duration::from_millis(100)).await;
            })
            .await;
        }
    }

    /// Queues the batches for their peers and waits until they are in the channels
    /// (backpressure on the input that produced them).
    async fn send_mesh(&self, mesh: Vec<(ShardId, Vec<MeshMessage>)>) {
        let mut peers = Vec::new();
        for (to, message) in mesh {
            self.post(to, Envelope::Core(message));
            if !peers.contains(&to) {
                peers.push(to);
            }
        }
        for to in peers {
            let outbox = &self.outboxes[to.index()];
            while !outbox.queue.borrow().is_empty() {
                outbox.room.wait().await;
            }
        }
    }

    /// Hands an envelope to the sender task of peer `to`, behind everything queued for it.
    fn post(&self, to: ShardId, envelope: Envelope) {
        let outbox = &self.outboxes[to.index()];
        outbox.queue.borrow_mut().push_back(envelope);
        outbox.wake.notify();
    }

    /// Applies effects without waiting: for mesh handlers, which must never block on a
    /// peer (two shards waiting on each other's full channels would deadlock).
    fn flush_nowait(self: &Rc<Self>) {
        for (to, message) in self.collect_effects() {
            self.post(to, Envelope::Core(message));
        }
    }
}

/// Everything a shard's executor starts with.
struct ShardSetup {
    id: ShardId,
    config: RuntimeConfig,
    listener_fd: OwnedFd,
    /// The TLS listener's socket, when `config.tls` is set.
    tls_listener_fd: Option<OwnedFd>,
    senders: Vec<Option<SharedSender<Envelope>>>,
    receivers: Vec<Option<SharedReceiver<Envelope>>>,
    control: crossbeam_channel::Receiver<Control>,
    log: Option<RecoveredLog>,
    health: Arc<ShardHealth>,
}

async fn run_shard(setup: ShardSetup) {
    let ShardSetup {
        id,
        config,
        listener_fd,
        tls_listener_fd,
        senders,
        receivers,
        control,
        log,
        health,
    } = setup;
    // Connect the mesh in one global order (channel from->to, by from then to), the same
    // on every shard, so rendezvous never wait on each other in a cycle.
    let n = usize::from(config.shards);
    let mut senders: Vec<Option<SharedSender<Envelope>>> = senders;
    let mut receivers: Vec<Option<SharedReceiver<Envelope>>> = receivers;
    let mut connected_senders: Vec<Option<ConnectedSender<Envelope>>> =
        (0..n).map(|_| None).collect();
    let mut connected_receivers: Vec<(ShardId, ConnectedReceiver<Envelope>)> = Vec::new();
    let me = id.index();
    // glommio 0.9 can park an executor whose task queue is still runnable: when the
    // preemption timer has expired before `run_task_queues` ran anything (a thread kept
    // off the CPU for 100 ms, e.g. many shards spinning in these rendezvous on few
    // cores), it returns "nothing ran" and the executor sleeps in io_uring with this
    // task queued (fixed upstream in glommio/glommio#53). Nothing else wakes a shard
    // while its mesh connects, so one stuck there never serves; keep a timer armed
    // until the mesh is up (afterwards the tick loop's timer does it).
    let connecting = Rc::new(Cell::new(true));
    {
        let connecting = connecting.clone();
        glommio::spawn_local(async move {
            while connecting.get() {
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        })
        .detach();
    }
    for (from, to) in (0..n).flat_map(|from| (0..n).map(move |to| (from, to))) {
        if from == me && to != me {
            if let Some(tx) = senders[to].take() {
                connected_senders[to] = Some(tx.connect().await);
            }
        } else if to == me && from != me {
            if let Some(rx) = receivers[from].take() {
                // invariant: from < n <= SHARDS_MAX, which fits u16.
                connected_receivers.push((ShardId(from as u16), rx.connect().await));
            }
        }
    }
    connecting.set(false);

    let limits = config.limits.clone();
    let mut core = ShardCore::new(id, config.shards, limits);
    // Start time in nanoseconds: later than any earlier run's (forward ids start with it).
    let incarnation = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    core.set_incarnation(incarnation);
    let (authorizer_generation, authorizer) = config.access.authorizer();
    core.set_authorizer(authorizer);
    for factory in &config.plugins {
        core.add_plugin(
            factory.build(id, config.shards),
            factory.home(config.shards) == id,
        );
    }
    let authorizer_generation = Cell::new(authorizer_generation);
    if let (Some(log_config), Some(log)) = (&config.log, &log) {
        core = core.with_durability(log_config.durability);
        core.restore(&log.state);
        core.stats.wal_recovery_ms = log.took.as_millis() as u64;
    }
    let shard = Rc::new(Shard {
        id,
        core: RefCell::new(core),
        senders: connected_senders,
        writers: RefCell::new(AHashMap::new()),
        next_conn: Cell::new(0),
        open_connections: Cell::new(0),
        start: Instant::now(),
        stopping: Cell::new(false),
        scratch: RefCell::new(vec![0; READ_CHUNK_BYTES].into_boxed_slice()),
        drained: Drained::default(),
        log_room: Drained::default(),
        log_wake: Notify::default(),
        log_stop: Cell::new(false),
        gate: RefCell::new(StartGate::new(n - 1)),
        peer_recovered: Notify::default(),
        outboxes: (0..n).map(|_| Outbox::default()).collect(),
        delivery_latency_us: RefCell::new(latency_histogram()),
        wal_commit_latency_us: Rc::new(RefCell::new(latency_histogram())),
        config,
    });

    let log_task = match (shard.config.log.clone(), log) {
        (Some(log_config), Some(RecoveredLog { wal, state, .. })) => {
            let shard = shard.clone();
            let health = health.clone();
            Some(glommio::spawn_local(async move {
                let after_round = || {
                    shard.flush_nowait();
                    shard.log_room.wake_all();
                };
                let task = crate::durable::LogTask {
                    config: log_config,
                    shard: u32::from(shard.id.0),
                    health,
                    wal,
                    state,
                    commit_latency_us: shard.wal_commit_latency_us.clone(),
                };
                crate::durable::run_log(
                    &shard.core,
                    &shard.log_wake,
                    &shard.log_stop,
                    task,
                    after_round,
                )
                .await;
            }))
        }
        _ => None,
    };

    for (from, rx) in connected_receivers {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(envelope) = rx.recv().await {
                match envelope {
                    Envelope::Core(batch) => {
                        {
                            let mut core = shard.core.borrow_mut();
                            for message in batch {
                                core.handle_mesh(from, message);
                            }
                        }
                        shard.flush_nowait();
                        // Pacing the mesh channel fills it, which paces the publisher
                        // on the other shard.
                        shard.pace().await;
                        shard.wait_log_room().await;
                        futures_lite::future::yield_now().await;
                    }
                    Envelope::Recovered => {
                        let released = shard.gate.borrow_mut().marker();
                        for handoff in released {
                            start_handoff(&shard, handoff);
                        }
                        shard.peer_recovered.notify();
                    }
                    Envelope::HandOff(handoff) => {
                        // Held until every peer's recovery marker is in (see
                        // `crate::startup`).
                        let ready = shard.gate.borrow_mut().hand_off(handoff);
                        if let Some(handoff) = ready {
                            start_handoff(&shard, handoff);
                        }
                    }
                }
            }
        })
        .detach();
    }

    // One sender task per peer: it alone writes into that peer's channel, in the order
    // envelopes were posted, so the mesh stays FIFO however full the channel gets.
    for peer in 0..n {
        if peer == me {
            continue;
        }
        let shard = shard.clone();
        glommio::spawn_local(async move {
            let outbox = &shard.outboxes[peer];
            loop {
                let next = outbox.queue.borrow_mut().pop_front();
                match next {
                    Some(envelope) => {
                        if let Some(sender) = &shard.senders[peer] {
                            if sender.send(envelope).await.is_err() {
                                tracing::debug!(shard = %shard.id, peer, "mesh channel closed");
                            }
                        }
                        outbox.room.wake_all();
                    }
                    None => {
                        if !outbox.wake.wait().await {
                            break;
                        }
                    }
                }
            }
        })
        .detach();
    }

    // What the restored state owes the peers (interest, retained replicas), then the
    // marker after it; clients are accepted once every peer's marker has arrived.
    shard.flush().await;
    for peer in 0..n {
        if peer != me {
            // invariant: peer < n <= SHARDS_MAX, which fits u16.
            shard.post(ShardId(peer as u16), Envelope::Recovered);
        }
    }
    while !shard.gate.borrow().is_open() {
        shard.peer_recovered.wait().await;
    }
    health
        .last_tick_ms
        .store(crate::stats::monotonic_ms().max(1), Ordering::Relaxed);
    health.ready.store(true, Ordering::Relaxed);

    let (stop_tx, stop_rx) = local_channel::new_bounded::<()>(1);
    {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            accept_loop(&shard, listener_fd, &stop_rx, "TCP", |shard, stream| {
                let origin = Origin::default();
                glommio::spawn_local(accept_connection(shard.clone(), stream, origin)).detach();
            })
            .await;
        })
        .detach();
    }
    let (tls_stop_tx, tls_stop_rx) = local_channel::new_bounded::<()>(1);
    let tls_task = match (tls_listener_fd, shard.config.tls.clone()) {
        (Some(fd), Some(tls)) => Some(glommio::spawn_local(tls_proxy::accept_loop(
            shard.clone(),
            fd,
            tls.server,
            tls_stop_rx,
        ))),
        _ => None,
    };

    // Tick: keep-alive, the snapshot for the admin side, control messages.
    let mut ticks: u64 = 0;
    let mut retained = 0;
    'tick: loop {
        glommio::timer::sleep(Duration::from_millis(100)).await;
        let now = shard.now_ms();
        {
            let mut core = shard.core.borrow_mut();
            core.tick(now);
            // Wills published by expiries are not an input source that can be paced.
            let _ = core.take_pressure();
            // A reloaded ACL (SIGHUP) applies to open connections too.
            if shard.config.access.authorizer_generation() != authorizer_generation.get() {
                let (generation, authorizer) = shard.config.access.authorizer();
                authorizer_generation.set(generation);
                core.set_authorizer(authorizer);
            }
        }
        shard.flush().await;
        // Counting retained messages walks the store: once a second is enough.
        if ticks.is_multiple_of(10) {
            retained = shard.core.borrow().retained_count() as u64;
        }
        ticks += 1;
        shard.publish_snapshot(&health, retained);
        // Bounded by the channel's capacity: what arrives meanwhile waits a tick.
        for _ in 0..CONTROL_CAPACITY {
            let Ok(request) = control.try_recv() else {
                break;
            };
            match request {
                Control::Shutdown => break 'tick,
                Control::Clients {
                    offset,
                    limit,
                    reply,
                } => {
                    let page = crate::stats::client_page(&shard.core.borrow(), offset, limit);
                    let _ = reply.try_send(page);
                }
                Control::Subscriptions {
                    offset,
                    limit,
                    reply,
                } => {
                    let page = crate::stats::subscription_page(&shard.core.borrow(), offset, limit);
                    let _ = reply.try_send(page);
                }
                Control::Publish(messages) => {
                    let now = shard.now_ms();
                    {
                        let mut core = shard.core.borrow_mut();
                        for message in messages {
                            core.publish_internal(message, now);
                        }
                        let _ = core.take_pressure();
                    }
                    shard.flush().await;
                }
            }
        }
    }

    // Shutdown: stop accepting, close every connection, give writers a moment to flush.
    {
        let core = shard.core.borrow();
        let stats = &core.stats;
        tracing::info!(
            shard = %id,
            connections_total = stats.connections_total,
            connections_current = stats.connections_current,
            sessions = core.session_count(),
            subscriptions = core.subscription_count(),
            publish_received_total = stats.publish_received_total.iter().sum::<u64>(),
            publish_sent_total = stats.publish_sent_total.iter().sum::<u64>(),
            forwarded_total = stats.forwarded_total,
            mesh_received_total = stats.mesh_received_total,
            dropped_total = stats.dropped_queue_full_total
                + stats.dropped_outbound_full_total
                + stats.dropped_offline_total,
            protocol_errors_total = stats.protocol_errors_total,
            wal_records_total = stats.wal_records_total,
            wal_writes_total = stats.wal_writes_total,
            wal_syncs_total = stats.wal_syncs_total,
            wal_commit_us_max = stats.wal_commit_us_max,
            wal_compactions_total = stats.wal_compactions_total,
            wal_compaction_ms_max = stats.wal_compaction_ms_max,
            wal_failures_total = stats.wal_failures_total,
            "shard shutting down"
        );
    }
    shard.stopping.set(true);
    let _ = stop_tx.try_send(());
    let _ = tls_stop_tx.try_send(());
    let now = shard.now_ms();
    shard.core.borrow_mut().close_all(now);
    shard.flush().await;
    let deadline = Instant::now() + Duration::from_secs(2);
    while shard.open_connections.get() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    // TLS connections pass the close on to their clients (close_notify).
    if let Some(task) = tls_task {
        task.await;
    }
    health.ready.store(false, Ordering::Relaxed);
    // The log writes (and syncs) what is left, then ends.
    shard.log_stop.set(true);
    shard.log_wake.notify();
    if let Some(task) = log_task {
        task.await;
    }
}

/// What is known of a new connection beyond its socket. Over TLS the socket is one end
/// of a socketpair (see [`tls_proxy`]): the client's address and what its certificate
/// says come from here.
#[derive(Debug, Default)]
struct Origin {
    /// The client's address; `None`: ask the socket (plain TCP).
    peer: Option<SocketAddr>,
    /// With `tls.use_identity_as_username`: who the client certificate names. `Name`
    /// replaces the CONNECT's user name and clears its password, and the client counts
    /// as authenticated (as in Mosquitto); `Missing` is refused with CONNACK 4.
    certificate_user: Option<crate::tls::CertificateUser>,
}

/// Reads CONNECT (within the connect timeout), then serves the connection here or hands
/// it to the shard that owns its client id.
async fn accept_connection(shard: Rc<Shard>, mut stream: TcpStream, origin: Origin) {
    let _ = stream.set_nodelay(true);
    let peer = origin.peer.or_else(|| stream.peer_addr().ok());
    tracing::trace!(shard = %shard.id, ?peer, "accepted");
    let Some(admitted) = admit(&shard, peer) else {
        return;
    };
    let mut buf = BytesMut::new();
    let mut decoder = Decoder::new(shard.config.limits.packet_size_max);
    let timeout = shard.config.connect_timeout;
    let read_bytes = Cell::new(0u64);
    let first = futures_lite::future::or(
        async {
            Some(
                read_first_packet(
                    &shard.scratch,
                    &mut stream,
                    &mut buf,
                    &mut decoder,
                    &read_bytes,
                )
                .await,
            )
        },
        async {
            glommio::timer::sleep(timeout).await;
            None
        },
    )
    .await;
    shard.core.borrow_mut().stats.network_received_bytes_total += read_bytes.get();
    let mut connect = match first {
        None => {
            tracing::debug!(shard = %shard.id, "no CONNECT within the connect timeout");
            return;
        }
        Some(Ok(Packet::Connect(connect))) => connect,
        Some(Ok(other)) => {
            // The first packet must be CONNECT [MQTT-3.1.0-1].
            tracing::debug!(shard = %shard.id, packet = ?other.packet_type(), "first packet is not CONNECT");
            shard.core.borrow_mut().stats.protocol_errors_total += 1;
            if let Some(admitted) = &admitted {
                admitted.record_failure();
            }
            return;
        }
        Some(Err(FirstPacketError::Decode(DecodeError::UnsupportedProtocolLevel(level)))) => {
            // A well-formed CONNECT of a protocol version this broker does not speak (an
            // MQTT 5 client, say): refused with CONNACK 1 [MQTT-3.1.2-2], but not a
            // failure that counts toward a ban. Such a client retries, and banning its
            // address would lock out that host's 3.1.1 clients too.
            tracing::debug!(shard = %shard.id, level, "CONNECT of an unsupported protocol level");
            {
                let stats = &mut shard.core.borrow_mut().stats;
                stats.connections_refused_total += 1;
                stats.connections_refused_protocol_level_total += 1;
            }
            refuse_connect(
                &mut stream,
                cutie_codec::ConnectReturnCode::UnacceptableProtocolVersion,
            )
            .await;
            return;
        }
        Some(Err(FirstPacketError::Decode(error))) => {
            tracing::debug!(shard = %shard.id, %error, "malformed CONNECT");
            if let Some(admitted) = &admitted {
                admitted.record_failure();
            }
            {
                let stats = &mut shard.core.borrow_mut().stats;
                stats.protocol_errors_total += 1;
                if matches!(error, DecodeError::PacketTooLarge { .. }) {
                    stats.packets_too_large_total += 1;
                }
            }
            if let Some(code) = error.connack_return_code() {
                refuse_connect(&mut stream, code).await;
            }
            return;
        }
        Some(Err(FirstPacketError::Io)) => return,
    };

    tracing::trace!(shard = %shard.id, client_id = %connect.client_id, "CONNECT read");
    let Some(by_certificate) = tls_proxy::apply_certificate_user(
        &shard,
        &mut stream,
        &mut connect,
        origin.certificate_user,
        admitted.as_ref(),
    )
    .await
    else {
        return;
    };
    if !by_certificate && !authenticate(&shard, &mut stream, &connect, admitted.as_ref()).await {
        return;
    }
    let owner = if connect.client_id.is_empty() {
        shard.id
    } else {
        owner_of(&connect.client_id, shard.config.shards)
    };
    if owner == shard.id {
        // Its own task, so the memory of this one (the CONNECT decoding) is given back.
        glommio::spawn_local(run_connection(
            shard,
            Box::new(stream),
            connect,
            buf,
            admitted,
        ))
        .detach();
        return;
    }
    // Hand the socket to its owner: duplicate the fd (glommio's stream closes its own),
    // then send it with the CONNECT and whatever followed it.
    // SAFETY: dup of a valid fd we hold; the result is a new fd we own.
    let duplicate = unsafe { libc::dup(stream.as_raw_fd()) };
    if duplicate < 0 {
        tracing::warn!(shard = %shard.id, "dup failed; dropping connection");
        return;
    }
    // SAFETY: `duplicate` is a fresh, valid fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(duplicate) };
    drop(stream);
    if let Some(sender) = &shard.senders[owner.index()] {
        let _ = sender
            .send(Envelope::HandOff(HandOff {
                fd,
                connect,
                rest: buf,
                admitted,
            }))
            .await;
    }
}

enum FirstPacketError {
    Decode(DecodeError),
    Io,
}

async fn read_first_packet(
    scratch: &RefCell<Box<[u8]>>,
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    decoder: &mut Decoder,
    read_bytes: &Cell<u64>,
) -> Result<Packet, FirstPacketError> {
    loop {
        match decoder.decode(buf) {
            Ok(Some(packet)) => return Ok(packet),
            Ok(None) => {}
            Err(error) => return Err(FirstPacketError::Decode(error)),
        }
        let read = read_some(scratch, stream, buf).await?;
        if read == 0 {
            return Err(FirstPacketError::Io);
        }
        read_bytes.set(read_bytes.get() + read as u64);
    }
}

/// Counts a malformed packet or protocol violation the core just closed `conn_id` for
/// against its address. Called right after every `handle_bytes` of a connection, so
/// what the core reports is that connection's.
fn note_violations(core: &mut ShardCore, conn_id: ConnId, admitted: Option<&Admitted>) {
    let mut violations = Vec::new();
    core.drain_violations(&mut violations);
    debug_assert!(violations.iter().all(|c| *c == conn_id));
    if let (true, Some(admitted)) = (violations.contains(&conn_id), admitted) {
        admitted.record_failure();
    }
}

/// Takes a new connection into the broker-wide connection count (`max_connections`)
/// and the ban table (per-address limit, bans). `None`: refused (the socket is dropped).
/// Always `Some(Some(_))` otherwise; the inner option is what the rest of the path passes
/// around.
fn admit(shard: &Shard, peer: Option<SocketAddr>) -> Option<Option<Admitted>> {
    match Admitted::admit(
        &shard.config.access,
        peer.map(|p| p.ip()),
        shard.config.max_connections,
    ) {
        Ok(admitted) => Some(Some(admitted)),
        Err(refusal) => {
            let mut core = shard.core.borrow_mut();
            match refusal {
                Refusal::Banned => core.stats.connections_refused_banned_total += 1,
                Refusal::TooManyConnections => {
                    core.stats.connections_refused_address_limit_total += 1
                }
                Refusal::BrokerFull => core.stats.connections_refused_total += 1,
            }
            tracing::debug!(shard = %shard.id, ?peer, ?refusal, "connection refused");
            None
        }
    }
}

/// Checks the CONNECT's credentials with the authenticator in force, on the shard's
/// password-check thread ([`crate::offload`]: hashing takes milliseconds, and neither the
/// shard nor the log's blocking thread may wait for it). On refusal answers CONNACK 4 or
/// 5, counts the failure against the client's address and returns false; when the check
/// queue is full answers CONNACK 3 (no strike against the address).
async fn authenticate(
    shard: &Rc<Shard>,
    stream: &mut TcpStream,
    connect: &Connect,
    admitted: Option<&Admitted>,
) -> bool {
    let Some(authenticator) = shard.config.access.authenticator() else {
        return true;
    };
    let client_id = connect.client_id.to_string();
    let username = connect.username.as_ref().map(|u| u.to_string());
    let password = connect.password.clone();
    let queued = crate::offload::check_password(shard.id.index(), move || {
        authenticator.authenticate(
            &Identity {
                client_id: &client_id,
                username: username.as_deref(),
            },
            password.as_deref(),
        )
    });
    let outcome = match queued {
        Ok(reply) => reply.await,
        Err(crate::offload::QueueFull) => None,
    };
    let code = match outcome {
        Some(AuthOutcome::Accept) => return true,
        Some(AuthOutcome::BadCredentials) => cutie_codec::ConnectReturnCode::BadUserNameOrPassword,
        Some(AuthOutcome::NotAuthorized) => cutie_codec::ConnectReturnCode::NotAuthorized,
        None => {
            // Too many checks waiting: the server's fault, not the client's.
            {
                let mut core = shard.core.borrow_mut();
                core.stats.connections_refused_total += 1;
                core.stats.auth_checks_refused_total += 1;
            }
            refuse_connect(stream, cutie_codec::ConnectReturnCode::ServerUnavailable).await;
            return false;
        }
    };
    tracing::debug!(
        shard = %shard.id,
        client_id = %connect.client_id,
        username = ?connect.username,
        ?code,
        "CONNECT refused"
    );
    {
        let mut core = shard.core.borrow_mut();
        core.stats.connections_refused_total += 1;
        core.stats.auth_failures_total += 1;
    }
    if let Some(admitted) = admitted {
        admitted.record_failure();
    }
    refuse_connect(stream, code).await;
    false
}

/// Answers a refused CONNECT with CONNACK `code` (the caller then drops the socket).
async fn refuse_connect(stream: &mut TcpStream, code: cutie_codec::ConnectReturnCode) {
    let mut out = BytesMut::new();
    Packet::ConnAck(ConnAck {
        session_present: false,
        return_code: code,
    })
    .encode(&mut out);
    let _ = stream.write_all(&out).await;
    let _ = stream.flush().await;
}

/// Serves a connection another shard handed over.
fn start_handoff(shard: &Rc<Shard>, handoff: HandOff) {
    // SAFETY: the fd is a connected TCP socket we own (moved here).
    let stream = Box::new(unsafe { TcpStream::from_raw_fd(handoff.fd.into_raw_fd()) });
    let task = run_connection(
        shard.clone(),
        stream,
        handoff.connect,
        handoff.rest,
        handoff.admitted,
    );
    glommio::spawn_local(task).detach();
}

/// Accepts on a listening socket until `stop`, refusing connections while the broker
/// holds `max_connections` (a cheap early check: the slot itself is taken by `admit`,
/// which TLS connections reach after their handshake), and hands each accepted one to
/// `serve` (plain TCP and TLS listeners alike).
async fn accept_loop(
    shard: &Rc<Shard>,
    listener_fd: OwnedFd,
    stop: &local_channel::LocalReceiver<()>,
    kind: &str,
    mut serve: impl FnMut(&Rc<Shard>, TcpStream),
) {
    // SAFETY: the fd is a bound, listening TCP socket created in `start` and moved here.
    let listener = unsafe { TcpListener::from_raw_fd(listener_fd.into_raw_fd()) };
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            let _ = stop.recv().await;
            None
        })
        .await;
        let stream = match accepted {
            None => break,
            Some(Ok(stream)) => stream,
            Some(Err(error)) => {
                tracing::warn!(shard = %shard.id, %error, kind, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let connections_max = shard.config.max_connections;
        if connections_max > 0 && shard.config.access.connections() >= connections_max {
            shard.core.borrow_mut().stats.connections_refused_total += 1;
            tracing::debug!(shard = %shard.id, kind, "connection limit reached, refusing");
            continue;
        }
        serve(shard, stream);
    }
}

/// Messages per mesh channel slot: with `mesh_channel_capacity` slots, at most
/// capacity x this many messages wait between two shards.
const MESH_BATCH_MESSAGES_MAX: usize = 64;

/// Bytes one read may take from a socket (the size of the shard's scratch buffer).
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Reads what is available and appends it to `buf`; 0 at end of file.
///
/// The read goes into the shard's one scratch buffer and only the bytes received are
/// copied into the connection's buffer: glommio's socket reads are readiness-based (the
/// buffer is used only inside `poll_read`), so one scratch buffer serves every connection,
/// and an idle connection holds no read buffer beyond its partial packet.
async fn read_some<R: futures_lite::AsyncRead + Unpin>(
    scratch: &RefCell<Box<[u8]>>,
    stream: &mut R,
    buf: &mut BytesMut,
) -> Result<usize, FirstPacketError> {
    let result = futures_lite::future::poll_fn(|cx| {
        let mut scratch = scratch.borrow_mut();
        match std::pin::Pin::new(&mut *stream).poll_read(cx, &mut scratch[..]) {
            std::task::Poll::Ready(Ok(n)) => {
                buf.extend_from_slice(&scratch[..n]);
                std::task::Poll::Ready(Ok(n))
            }
            other => other,
        }
    })
    .await;
    result.map_err(|error| {
        tracing::debug!(%error, "read failed");
        FirstPacketError::Io
    })
}

/// While the core has paused `conn_id`'s input for its output backlog (a client that
/// pipelines requests and does not read the answers: see `ShardCore::input_paused`),
/// reads nothing more from its socket, so TCP backpressure reaches the client; after
/// each write of the connection (or each second, for keep-alive) looks again and hands
/// the core what is buffered. False when the core closed the connection meanwhile.
async fn wait_output_room(
    shard: &Rc<Shard>,
    conn_id: ConnId,
    written: &Notify,
    buf: &mut BytesMut,
    admitted: Option<&Admitted>,
) -> bool {
    while shard.core.borrow().input_paused(conn_id) {
        futures_lite::future::or(
            async {
                let _ = written.wait().await;
            },
            async {
                glommio::timer::sleep(Duration::from_secs(1)).await;
            },
        )
        .await;
        if !shard.core.borrow().connection_open(conn_id) {
            return false;
        }
        let now = shard.now_ms();
        {
            let mut core = shard.core.borrow_mut();
            core.handle_bytes_at(conn_id, buf, now, Instant::now());
            note_violations(&mut core, conn_id, admitted);
        }
        shard.flush().await;
    }
    true
}

/// Serves a connection owned by this shard: CONNECT goes to the core, then a reader
/// loop here and a writer task beside it.
///
/// The socket and the CONNECT come boxed: arguments of an async fn stay in its future for
/// its whole life, and this future lives as long as the connection. For the same reason
/// the boxes are moved into blocks and freed there (moving out of a box frees the
/// allocation only when the box's binding ends), and the rare waits (pacing,
/// throttling) are boxed: the future holds room for its largest await.
async fn run_connection(
    shard: Rc<Shard>,
    stream: Box<TcpStream>,
    connect: Box<Connect>,
    mut buf: BytesMut,
    admitted: Option<Admitted>,
) {
    if shard.stopping.get() {
        return;
    }
    let conn_id = shard.next_conn_id();
    let fd = stream.as_raw_fd();
    let notify = Rc::new(Notify::default());
    shard.writers.borrow_mut().insert(conn_id, notify.clone());
    // Woken by the writer after each write: a reader paused for the output backlog
    // (see `ShardCore::input_paused`) looks again.
    let written = Rc::new(Notify::default());
    shard.open_connections.set(shard.open_connections.get() + 1);
    let (mut reader, mut writer) = {
        let stream: Box<TcpStream> = stream;
        futures_lite::io::split(*stream)
    };
    // The core must know the connection before the writer first asks it for output
    // (a spawned task may run at once).
    let now = shard.now_ms();
    {
        let connect: Box<Connect> = connect;
        let mut core = shard.core.borrow_mut();
        core.connect(conn_id, *connect, now);
        // A takeover's will is not this connection's input: nothing to pace.
        let _ = core.take_pressure();
    }
    if !buf.is_empty() {
        let mut core = shard.core.borrow_mut();
        core.handle_bytes_at(conn_id, &mut buf, now, Instant::now());
        note_violations(&mut core, conn_id, admitted.as_ref());
    }

    // The writer: everything the core produced since the last wake-up, in one write.
    let writer_task = {
        let shard = shard.clone();
        let written = written.clone();
        let writer_loop = async move {
            let mut out = BytesMut::new();
            let mut times: Vec<Instant> = Vec::new();
            loop {
                let state = shard
                    .core
                    .borrow_mut()
                    .take_output_timed(conn_id, &mut out, &mut times);
                tracing::trace!(conn = conn_id.0, ?state, bytes = out.len(), "write");
                if !out.is_empty() {
                    if writer.write_all(&out).await.is_err() {
                        // The reader sees the failure too and reports the loss.
                        out.clear();
                        break;
                    }
                    shard.core.borrow_mut().stats.network_sent_bytes_total += out.len() as u64;
                    out.clear();
                    written.notify();
                    if !times.is_empty() {
                        let written = Instant::now();
                        let mut histogram = shard.delivery_latency_us.borrow_mut();
                        for at in times.drain(..) {
                            histogram.saturating_record(
                                written.saturating_duration_since(at).as_micros() as u64,
                            );
                        }
                    }
                }
                match state {
                    OutputState::Open => {
                        if !notify.wait().await {
                            break;
                        }
                    }
                    OutputState::Close | OutputState::Gone => break,
                }
            }
            let _ = writer.flush().await;
            // SAFETY: `fd` stays open until both halves of the stream are dropped; the
            // reader half is alive until this shutdown wakes it.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            shard.core.borrow_mut().conn_closed(conn_id);
        };
        glommio::spawn_local(writer_loop)
    };

    shard.flush().await;

    loop {
        if !Box::pin(wait_output_room(
            &shard,
            conn_id,
            &written,
            &mut buf,
            admitted.as_ref(),
        ))
        .await
        {
            // Closed by the core while paused (keep-alive): end the stuck writer too.
            // SAFETY: `fd` stays open until both halves of the stream are dropped.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            break;
        }
        let read = read_some(&shard.scratch, &mut reader, &mut buf).await;
        tracing::trace!(conn = conn_id.0, ok = ?read.as_ref().ok(), "read");
        match read {
            Ok(0) | Err(_) => break,
            Ok(read) => {
                let now = shard.now_ms();
                let read_at = Instant::now();
                {
                    let mut core = shard.core.borrow_mut();
                    core.stats.network_received_bytes_total += read as u64;
                    core.handle_bytes_at(conn_id, &mut buf, now, read_at);
                    note_violations(&mut core, conn_id, admitted.as_ref());
                }
                shard.flush().await;
                shard.drained.wake_all();
                if shard.core.borrow().has_pressure() {
                    Box::pin(shard.pace()).await;
                }
                if shard.core.borrow().log_backlogged() {
                    Box::pin(shard.wait_log_room()).await;
                }
                // Over its publish rate: read nothing more (TCP backpressure reaches the
                // client) until its next token, then go on with what is buffered.
                loop {
                    let until = shard.core.borrow().throttled_until(conn_id);
                    let Some(until) = until else { break };
                    let wait_ms = until.saturating_sub(shard.now_ms());
                    Box::pin(glommio::timer::sleep(Duration::from_millis(wait_ms.max(1)))).await;
                    let now = shard.now_ms();
                    {
                        let mut core = shard.core.borrow_mut();
                        core.handle_bytes_at(conn_id, &mut buf, now, Instant::now());
                        note_violations(&mut core, conn_id, admitted.as_ref());
                    }
                    shard.flush().await;
                }
                // A socket with data always ready would otherwise never yield: let the
                // writers (and other readers) of this shard run between reads.
                futures_lite::future::yield_now().await;
            }
        }
    }
    let now = shard.now_ms();
    shard.core.borrow_mut().connection_lost(conn_id, now);
    shard.flush().await;
    // Closing the wake channel ends the writer if it is still waiting.
    if let Some(notify) = shard.writers.borrow_mut().remove(&conn_id) {
        notify.close();
    }
    writer_task.await;
    shard.open_connections.set(shard.open_connections.get() - 1);
}
