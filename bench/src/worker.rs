//! One client thread of a message scenario: many connections on one `mio` poll.
//!
//! A worker sets up its connections with the blocking steps of [`crate::client`]
//! (connect, CONNECT/CONNACK, SUBSCRIBE/SUBACK), reports ready, waits for the common
//! start instant, then runs one event loop until the coordinator raises `stop`:
//!
//! - **Publishers** append pre-encoded PUBLISHes ([`PublishTemplate`]) to their write
//!   buffer: in open loop every message whose scheduled time has come, stamped with that
//!   scheduled time; as fast as possible a batch up to [`WRITE_HIGH_WATER`] bytes. QoS 1
//!   and 2 stop at `inflight_max` unacknowledged packet ids. The poll sleeps on a
//!   [`TimerFd`] until the next scheduled message (microsecond precision).
//! - **Subscribers** decode, classify each message with its stream's [`SeqTracker`],
//!   record latency from the header's timestamp to the read that brought it (messages
//!   due in the warm-up are checked but not timed), and acknowledge (PUBACK, PUBREC,
//!   PUBCOMP).
//!
//! Every second the worker ships its interval latency histogram to the coordinator. It
//! never blocks after setup: a broker that stops reading costs only a full write
//! buffer, and the loop sees `stop` within [`POLL_TIMEOUT_MAX`].

use crate::client;
use crate::config::ConnectOptions;
use crate::latency::{self, new_histogram};
use crate::payload::{PayloadHeader, PublishTemplate};
use crate::timer::{self, TimerFd};
use crate::tracker::{Arrival, SeqTracker};
use bytes::{Buf, BytesMut};
use crossbeam_channel::{Receiver, Sender};
use cutie_codec::{Decoder, Packet, PacketId, QoS, TopicName};
use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token};
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A publisher stops encoding while this many bytes wait to be written: big enough to
/// batch hundreds of small messages per `write`, small enough to keep queueing in the
/// broker, not in the harness.
pub const WRITE_HIGH_WATER: usize = 64 * 1024;

/// Bytes read per `read` call.
const READ_CHUNK: usize = 256 * 1024;

/// The longest the loop sleeps before looking at `stop` and the clock again.
pub const POLL_TIMEOUT_MAX: Duration = Duration::from_millis(50);

/// Poll token of the worker's timer; connections use their index.
const TIMER: Token = Token(usize::MAX);

/// Timer slack asked of the kernel for worker threads.
const TIMER_SLACK_NS: u64 = 1_000;

/// Counters all workers add to and the coordinator reads for progress and for knowing
/// when everything has arrived.
#[derive(Debug, Default)]
pub struct Shared {
    /// Raised by the coordinator: finish now.
    pub stop: AtomicBool,
    /// PUBLISHes encoded by publishers.
    pub sent: AtomicU64,
    /// PUBACKs (QoS 1) and PUBCOMPs (QoS 2) received by publishers.
    pub acked: AtomicU64,
    /// PUBLISHes received by subscribers, duplicates included.
    pub received: AtomicU64,
    /// First arrivals (a duplicate does not count).
    pub distinct: AtomicU64,
    /// Publishers that have sent everything and had it acknowledged (or died).
    pub publishers_done: AtomicU32,
}

/// The timing and load every worker follows.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Where to connect.
    pub addr: SocketAddr,
    /// How to connect.
    pub connect: ConnectOptions,
    /// QoS of publishes and subscriptions.
    pub qos: QoS,
    /// Bytes per payload.
    pub payload_bytes: usize,
    /// Total publish rate, `None` for as fast as possible.
    pub rate_per_sec: Option<u64>,
    /// Number of publishers in the run (for the open-loop schedule).
    pub publishers: u32,
    /// Unacknowledged PUBLISHes per publisher, QoS 1/2.
    pub inflight_max: u16,
    /// Messages due before this (ns since start) are warm-up.
    pub warmup_end_ns: u64,
    /// No message is due at or after this (ns since start).
    pub send_end_ns: u64,
}

impl Plan {
    /// Largest packet accepted from the broker.
    pub fn packet_size_max(&self) -> usize {
        cutie_codec::decode::PACKET_SIZE_MAX_DEFAULT.max(self.payload_bytes + 64 * 1024)
    }
}

/// The scheduled time of message `sequence` of publisher `publisher` in open loop:
/// the run's messages are spread evenly, publisher `i` taking slots `i, i + P, ...`.
pub fn scheduled_ns(publisher: u32, sequence: u64, publishers: u32, rate_per_sec: u64) -> u64 {
    let slot = u128::from(sequence) * u128::from(publishers) + u128::from(publisher);
    u64::try_from(slot * 1_000_000_000 / u128::from(rate_per_sec)).unwrap_or(u64::MAX)
}

/// How many messages publisher `publisher` has scheduled before `end_ns` in open loop.
pub fn scheduled_count(publisher: u32, publishers: u32, rate_per_sec: u64, end_ns: u64) -> u64 {
    // Slot j is due at floor(j * 1e9 / rate) < end  <=>  j * 1e9 < end * rate.
    let slots = (u128::from(end_ns) * u128::from(rate_per_sec)).div_ceil(1_000_000_000);
    let (publisher, publishers) = (u128::from(publisher), u128::from(publishers));
    if slots <= publisher {
        return 0;
    }
    u64::try_from((slots - publisher).div_ceil(publishers)).unwrap_or(u64::MAX)
}

/// What one connection does.
#[derive(Debug, Clone)]
pub enum RoleSpec {
    /// Publishes to `topic`.
    Publisher {
        /// Publisher id, dense from 0.
        id: u32,
        /// Where it publishes.
        topic: TopicName,
    },
    /// Subscribes to `filter` and expects the messages of `publishers`.
    Subscriber {
        /// Subscriber id, dense from 0.
        id: u32,
        /// What it subscribes to.
        filter: String,
        /// Whose messages it expects.
        publishers: Vec<u32>,
    },
}

/// One connection to set up.
#[derive(Debug, Clone)]
pub struct ConnSpec {
    /// The MQTT client id.
    pub client_id: String,
    /// CONNECT's `clean_session`; false keeps the session on the broker.
    pub clean_session: bool,
    /// What it does.
    pub role: RoleSpec,
}

/// Coordinator to worker.
#[derive(Debug, Clone, Copy)]
pub enum Command {
    /// Go: this is time zero of the run.
    Start(Instant),
    /// Setup failed elsewhere: close everything and exit.
    Abort,
}

/// Worker to coordinator.
#[derive(Debug)]
pub enum WorkerEvent {
    /// Setup finished; `failures` lists the connections that could not be set up.
    Ready {
        /// Which worker.
        worker: usize,
        /// `client_id: error` for each failed connection.
        failures: Vec<String>,
    },
    /// Latency samples received during second `index` of the run.
    Interval {
        /// Seconds since the start.
        index: u64,
        /// The samples.
        histogram: Histogram<u64>,
    },
    /// The worker has stopped.
    Finished(Box<WorkerResult>),
}

/// A publisher's final counts.
#[derive(Debug, Clone)]
pub struct PublisherResult {
    /// Publisher id.
    pub id: u32,
    /// PUBLISHes encoded (sequence numbers 0..sent).
    pub sent: u64,
    /// Of those, due after the warm-up.
    pub sent_measured: u64,
    /// Open loop: messages due before the end of sending (sent or not).
    pub scheduled: Option<u64>,
    /// PUBACKs / PUBCOMPs received.
    pub acked: u64,
    /// Acks for packet ids that were not in flight.
    pub unexpected_acks: u64,
}

/// A subscriber's final counts.
#[derive(Debug, Clone)]
pub struct SubscriberResult {
    /// Subscriber id.
    pub id: u32,
    /// The QoS the broker granted.
    pub granted_qos: QoS,
    /// One tracker per expected publisher.
    pub streams: Vec<(u32, SeqTracker)>,
    /// PUBLISHes received, duplicates included.
    pub received: u64,
    /// First arrivals due after the warm-up (the latency samples).
    pub received_measured: u64,
    /// PUBLISHes without a valid header or from a publisher it does not expect.
    pub unexpected: u64,
}

/// Everything a worker hands back.
#[derive(Debug)]
pub struct WorkerResult {
    /// Which worker.
    pub worker: usize,
    /// Its publishers.
    pub publishers: Vec<PublisherResult>,
    /// Its subscribers.
    pub subscribers: Vec<SubscriberResult>,
    /// All its latency samples.
    pub latency: Histogram<u64>,
    /// `client_id: error` for connections that failed during the run.
    pub errors: Vec<String>,
}

/// Publisher state of one connection.
#[derive(Debug)]
struct PublisherConn {
    id: u32,
    template: PublishTemplate,
    next_sequence: u64,
    /// Next packet id to try (QoS 1/2).
    next_packet_id: PacketId,
    /// Packet ids in flight, one bit each (QoS 1/2).
    in_use: Vec<u64>,
    inflight: u32,
    /// No more messages will be encoded.
    finished_producing: bool,
    /// Counted in `Shared::publishers_done`.
    done: bool,
    sent_measured: u64,
    acked: u64,
    unexpected_acks: u64,
}

impl PublisherConn {
    fn id_in_use(&self, packet_id: PacketId) -> bool {
        let id = usize::from(packet_id.get());
        self.in_use[id / 64] & (1 << (id % 64)) != 0
    }

    fn set_in_use(&mut self, packet_id: PacketId, in_use: bool) {
        let id = usize::from(packet_id.get());
        if in_use {
            self.in_use[id / 64] |= 1 << (id % 64);
        } else {
            self.in_use[id / 64] &= !(1 << (id % 64));
        }
    }

    /// A free packet id; the caller has checked `inflight < inflight_max <= 65535`, so
    /// one exists among the 65535.
    fn allocate_packet_id(&mut self) -> PacketId {
        let mut candidate = self.next_packet_id;
        while self.id_in_use(candidate) {
            candidate = candidate.next();
        }
        self.next_packet_id = candidate.next();
        self.set_in_use(candidate, true);
        self.inflight += 1;
        candidate
    }

    /// Releases an acknowledged id; false if it was not in flight.
    fn release(&mut self, packet_id: PacketId) -> bool {
        if !self.id_in_use(packet_id) {
            self.unexpected_acks += 1;
            return false;
        }
        self.set_in_use(packet_id, false);
        self.inflight -= 1;
        self.acked += 1;
        true
    }
}

/// Subscriber state of one connection.
#[derive(Debug)]
struct SubscriberConn {
    id: u32,
    granted_qos: QoS,
    /// Indexed by publisher id; `None` for publishers it does not expect.
    streams: Vec<Option<SeqTracker>>,
    received: u64,
    received_measured: u64,
    unexpected: u64,
}

#[derive(Debug)]
enum Role {
    Publisher(Box<PublisherConn>),
    Subscriber(Box<SubscriberConn>),
}

#[derive(Debug)]
struct Conn {
    client_id: String,
    stream: mio::net::TcpStream,
    read_buf: BytesMut,
    write_buf: BytesMut,
    decoder: Decoder,
    role: Role,
    open: bool,
    /// When this connection last wrote, ns since start (for keep-alive pings).
    last_write_ns: u64,
}

/// Per-iteration counter deltas, added to [`Shared`] in one go.
#[derive(Debug, Default)]
struct Deltas {
    sent: u64,
    acked: u64,
    received: u64,
    distinct: u64,
}

/// The body of a worker thread.
pub fn run(
    worker: usize,
    plan: Arc<Plan>,
    specs: Vec<ConnSpec>,
    shared: Arc<Shared>,
    commands: Receiver<Command>,
    events: Sender<WorkerEvent>,
    start_wait_max: Duration,
) {
    timer::set_thread_timer_slack_ns(TIMER_SLACK_NS);
    let mut failures = Vec::new();
    let mut setups = Vec::new();
    for spec in specs {
        match setup(&plan, &spec) {
            Ok(setup) => setups.push(setup),
            Err(e) => {
                failures.push(format!("{}: {e}", spec.client_id));
                break;
            }
        }
    }
    let failed = !failures.is_empty();
    if events
        .send(WorkerEvent::Ready { worker, failures })
        .is_err()
        || failed
    {
        return;
    }
    let t0 = match commands.recv_timeout(start_wait_max) {
        Ok(Command::Start(t0)) => t0,
        Ok(Command::Abort) | Err(_) => return,
    };
    let mut event_loop = match EventLoop::new(worker, plan, shared, events.clone(), t0, setups) {
        Ok(event_loop) => event_loop,
        Err(e) => {
            let result = WorkerResult {
                worker,
                publishers: Vec::new(),
                subscribers: Vec::new(),
                latency: new_histogram(),
                errors: vec![format!("worker {worker}: setting up its poll: {e}")],
            };
            let _ = events.send(WorkerEvent::Finished(Box::new(result)));
            return;
        }
    };
    event_loop.run();
    event_loop.finish();
}

/// A connection after its blocking setup.
struct SetUp {
    spec: ConnSpec,
    connected: client::Connected,
    granted_qos: QoS,
}

fn setup(plan: &Plan, spec: &ConnSpec) -> Result<SetUp, crate::error::ClientError> {
    let mut connected = client::connect(
        plan.addr,
        &spec.client_id,
        spec.clean_session,
        &plan.connect,
        plan.packet_size_max(),
    )?;
    // Client ids are new in every run: a session already there is someone else's.
    if connected.session_present {
        return Err(crate::error::ClientError::StaleSession);
    }
    let granted_qos = match &spec.role {
        RoleSpec::Subscriber { filter, .. } => {
            let deadline = Instant::now() + plan.connect.io_timeout;
            connected.subscribe(filter, plan.qos, deadline)?
        }
        RoleSpec::Publisher { .. } => plan.qos,
    };
    Ok(SetUp {
        spec: spec.clone(),
        connected,
        granted_qos,
    })
}

struct EventLoop {
    worker: usize,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    events_tx: Sender<WorkerEvent>,
    t0: Instant,
    poll: Poll,
    events: Events,
    timer: TimerFd,
    /// The time (ns since start) the timer is armed for, if armed.
    timer_armed_ns: Option<u64>,
    conns: Vec<Conn>,
    /// Readiness of the last poll, reused between iterations: (token, readable, writable).
    ready: Vec<(Token, bool, bool)>,
    scratch: Vec<u8>,
    interval: Histogram<u64>,
    interval_index: u64,
    latency: Histogram<u64>,
    deltas: Deltas,
    errors: Vec<String>,
    /// Last time (ns since start) keep-alive was checked.
    keep_alive_checked_ns: u64,
}

impl EventLoop {
    fn new(
        worker: usize,
        plan: Arc<Plan>,
        shared: Arc<Shared>,
        events_tx: Sender<WorkerEvent>,
        t0: Instant,
        setups: Vec<SetUp>,
    ) -> std::io::Result<EventLoop> {
        let poll = Poll::new()?;
        let timer = TimerFd::new()?;
        let timer_fd = timer.as_raw_fd();
        poll.registry().register(
            &mut mio::unix::SourceFd(&timer_fd),
            TIMER,
            Interest::READABLE,
        )?;
        let mut conns = Vec::with_capacity(setups.len());
        for (index, setup) in setups.into_iter().enumerate() {
            let client::Connected {
                stream,
                read_buf,
                decoder,
                session_present: _,
            } = setup.connected;
            stream.set_read_timeout(None)?;
            stream.set_write_timeout(None)?;
            stream.set_nonblocking(true)?;
            let mut stream = mio::net::TcpStream::from_std(stream);
            poll.registry().register(
                &mut stream,
                Token(index),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            let role = match setup.spec.role {
                RoleSpec::Publisher { id, topic } => Role::Publisher(Box::new(PublisherConn {
                    id,
                    template: PublishTemplate::new(topic, plan.qos, plan.payload_bytes),
                    next_sequence: 0,
                    next_packet_id: PacketId::new(1).unwrap_or_else(|| unreachable!("1 is not 0")),
                    in_use: vec![0; 65536 / 64],
                    inflight: 0,
                    finished_producing: false,
                    done: false,
                    sent_measured: 0,
                    acked: 0,
                    unexpected_acks: 0,
                })),
                RoleSpec::Subscriber { id, publishers, .. } => {
                    let mut streams: Vec<Option<SeqTracker>> =
                        (0..plan.publishers).map(|_| None).collect();
                    for publisher in publishers {
                        if let Some(slot) = streams.get_mut(publisher as usize) {
                            *slot = Some(SeqTracker::default());
                        }
                    }
                    Role::Subscriber(Box::new(SubscriberConn {
                        id,
                        granted_qos: setup.granted_qos,
                        streams,
                        received: 0,
                        received_measured: 0,
                        unexpected: 0,
                    }))
                }
            };
            conns.push(Conn {
                client_id: setup.spec.client_id,
                stream,
                read_buf,
                write_buf: BytesMut::with_capacity(WRITE_HIGH_WATER * 2),
                decoder,
                role,
                open: true,
                last_write_ns: 0,
            });
        }
        Ok(EventLoop {
            worker,
            plan,
            shared,
            events_tx,
            t0,
            poll,
            events: Events::with_capacity(1024),
            timer,
            timer_armed_ns: None,
            conns,
            ready: Vec::with_capacity(1024),
            scratch: vec![0; READ_CHUNK],
            interval: new_histogram(),
            interval_index: 0,
            latency: new_histogram(),
            deltas: Deltas::default(),
            errors: Vec::new(),
            keep_alive_checked_ns: 0,
        })
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.t0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn run(&mut self) {
        // Start is a few milliseconds ahead so every worker sees it in the future.
        let wait = self.t0.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        while !self.shared.stop.load(Ordering::Acquire) {
            let now_ns = self.now_ns();
            let mut busy = false;
            let mut next_wake_ns: Option<u64> = None;
            for index in 0..self.conns.len() {
                if !self.conns[index].open {
                    continue;
                }
                if let Role::Publisher(_) = self.conns[index].role {
                    let due = self.produce(index, now_ns);
                    self.flush(index, now_ns);
                    match due {
                        Some(due_ns) => {
                            next_wake_ns = Some(next_wake_ns.map_or(due_ns, |n| n.min(due_ns)))
                        }
                        None => busy |= self.can_produce(index),
                    }
                }
            }
            self.publish_deltas();
            self.check_publishers_done();
            self.tick(now_ns);
            let timeout = if busy {
                Duration::ZERO
            } else {
                if let Some(due_ns) = next_wake_ns {
                    self.arm_timer(due_ns, now_ns);
                }
                POLL_TIMEOUT_MAX
            };
            if let Err(e) = self.poll.poll(&mut self.events, Some(timeout)) {
                if e.kind() != ErrorKind::Interrupted {
                    self.errors
                        .push(format!("worker {}: poll failed: {e}", self.worker));
                    break;
                }
            }
            let mut ready = std::mem::take(&mut self.ready);
            ready.clear();
            ready.extend(self.events.iter().map(|event| {
                (
                    event.token(),
                    event.is_readable() || event.is_read_closed() || event.is_error(),
                    event.is_writable(),
                )
            }));
            for &(token, readable, writable) in &ready {
                if token == TIMER {
                    self.timer.acknowledge();
                    self.timer_armed_ns = None;
                    continue;
                }
                let index = token.0;
                if index >= self.conns.len() || !self.conns[index].open {
                    continue;
                }
                let now_ns = self.now_ns();
                if readable {
                    self.read(index);
                }
                if writable || readable {
                    self.flush(index, now_ns);
                }
            }
            self.ready = ready;
        }
        self.publish_deltas();
    }

    /// Arms the timer for `due_ns` unless it already fires at or before then.
    fn arm_timer(&mut self, due_ns: u64, now_ns: u64) {
        if matches!(self.timer_armed_ns, Some(armed) if armed <= due_ns && armed > now_ns) {
            return;
        }
        let delay = Duration::from_nanos(due_ns.saturating_sub(now_ns));
        if self.timer.arm_after(delay).is_ok() {
            self.timer_armed_ns = Some(due_ns);
        }
    }

    /// Encodes what publisher `index` may send now; returns when the next message is due
    /// if it is waiting only on the clock.
    fn produce(&mut self, index: usize, now_ns: u64) -> Option<u64> {
        let plan = &*self.plan;
        let conn = &mut self.conns[index];
        let Role::Publisher(publisher) = &mut conn.role else {
            return None;
        };
        let windowed = plan.qos != QoS::AtMostOnce;
        loop {
            if publisher.finished_producing
                || conn.write_buf.len() >= WRITE_HIGH_WATER
                || (windowed && publisher.inflight >= u32::from(plan.inflight_max))
            {
                return None;
            }
            let due_ns = match plan.rate_per_sec {
                Some(rate) => {
                    let due_ns =
                        scheduled_ns(publisher.id, publisher.next_sequence, plan.publishers, rate);
                    if due_ns >= plan.send_end_ns {
                        publisher.finished_producing = true;
                        return None;
                    }
                    if due_ns > now_ns {
                        return Some(due_ns);
                    }
                    due_ns
                }
                None => {
                    if now_ns >= plan.send_end_ns {
                        publisher.finished_producing = true;
                        return None;
                    }
                    now_ns
                }
            };
            let packet_id = windowed.then(|| publisher.allocate_packet_id());
            let header = PayloadHeader {
                publisher_id: publisher.id,
                sequence: publisher.next_sequence,
                sent_at_ns: due_ns,
            };
            publisher
                .template
                .append(&mut conn.write_buf, packet_id, &header);
            publisher.next_sequence += 1;
            self.deltas.sent += 1;
            if due_ns >= plan.warmup_end_ns {
                publisher.sent_measured += 1;
            }
        }
    }

    /// Whether publisher `index` could encode more right away.
    fn can_produce(&self, index: usize) -> bool {
        let conn = &self.conns[index];
        let Role::Publisher(publisher) = &conn.role else {
            return false;
        };
        conn.open
            && !publisher.finished_producing
            && conn.write_buf.len() < WRITE_HIGH_WATER
            && (self.plan.qos == QoS::AtMostOnce
                || publisher.inflight < u32::from(self.plan.inflight_max))
    }

    /// Writes as much of connection `index`'s buffer as the socket takes.
    fn flush(&mut self, index: usize, now_ns: u64) {
        let conn = &mut self.conns[index];
        let mut wrote = false;
        while !conn.write_buf.is_empty() {
            match conn.stream.write(&conn.write_buf) {
                Ok(0) => {
                    self.close(index, "the broker stopped accepting bytes".into());
                    return;
                }
                Ok(n) => {
                    conn.write_buf.advance(n);
                    wrote = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.close(index, format!("writing: {e}"));
                    return;
                }
            }
        }
        if wrote {
            conn.last_write_ns = now_ns;
        }
    }

    /// Reads everything connection `index` has and handles every whole packet.
    fn read(&mut self, index: usize) {
        loop {
            let read = self.conns[index].stream.read(&mut self.scratch);
            match read {
                Ok(0) => {
                    self.close(index, "connection closed by the broker".into());
                    return;
                }
                Ok(n) => {
                    let now_ns = self.now_ns();
                    self.conns[index]
                        .read_buf
                        .extend_from_slice(&self.scratch[..n]);
                    if let Err(reason) = self.handle_packets(index, now_ns) {
                        self.close(index, reason);
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.close(index, format!("reading: {e}"));
                    return;
                }
            }
        }
    }

    /// Handles every whole packet in connection `index`'s read buffer, all received at
    /// `now_ns`. An `Err` is a reason to close the connection.
    fn handle_packets(&mut self, index: usize, now_ns: u64) -> Result<(), String> {
        let plan = &*self.plan;
        let conn = &mut self.conns[index];
        loop {
            let packet = match conn.decoder.decode(&mut conn.read_buf) {
                Ok(Some(packet)) => packet,
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("malformed packet from the broker: {e}")),
            };
            match (&mut conn.role, packet) {
                (_, Packet::PingResp) => {}
                (Role::Publisher(publisher), Packet::PubAck(packet_id))
                    if plan.qos == QoS::AtLeastOnce =>
                {
                    if publisher.release(packet_id) {
                        self.deltas.acked += 1;
                    }
                }
                (Role::Publisher(publisher), Packet::PubRec(packet_id))
                    if plan.qos == QoS::ExactlyOnce =>
                {
                    if publisher.id_in_use(packet_id) {
                        Packet::PubRel(packet_id).encode(&mut conn.write_buf);
                    } else {
                        publisher.unexpected_acks += 1;
                    }
                }
                (Role::Publisher(publisher), Packet::PubComp(packet_id))
                    if plan.qos == QoS::ExactlyOnce =>
                {
                    if publisher.release(packet_id) {
                        self.deltas.acked += 1;
                    }
                }
                (Role::Subscriber(subscriber), Packet::Publish(publish)) => {
                    subscriber.received += 1;
                    self.deltas.received += 1;
                    let stream = PayloadHeader::decode(&publish.payload).and_then(|header| {
                        subscriber
                            .streams
                            .get_mut(header.publisher_id as usize)
                            .and_then(Option::as_mut)
                            .map(|tracker| (header, tracker))
                    });
                    match stream {
                        None => subscriber.unexpected += 1,
                        Some((header, tracker)) => {
                            if tracker.record(header.sequence) != Arrival::Duplicate {
                                self.deltas.distinct += 1;
                                if header.sent_at_ns >= plan.warmup_end_ns
                                    && header.sent_at_ns < plan.send_end_ns
                                {
                                    subscriber.received_measured += 1;
                                    let latency_us =
                                        now_ns.saturating_sub(header.sent_at_ns) / 1_000;
                                    latency::record_us(&mut self.interval, latency_us);
                                }
                            }
                        }
                    }
                    match publish.qos {
                        cutie_codec::PublishQos::AtMostOnce => {}
                        cutie_codec::PublishQos::AtLeastOnce(packet_id) => {
                            Packet::PubAck(packet_id).encode(&mut conn.write_buf)
                        }
                        cutie_codec::PublishQos::ExactlyOnce(packet_id) => {
                            Packet::PubRec(packet_id).encode(&mut conn.write_buf)
                        }
                    }
                }
                (Role::Subscriber(_), Packet::PubRel(packet_id)) => {
                    Packet::PubComp(packet_id).encode(&mut conn.write_buf)
                }
                (Role::Subscriber(_), Packet::SubAck(_)) => {}
                (Role::Publisher(publisher), Packet::Publish(_)) => {
                    publisher.unexpected_acks += 1;
                }
                (_, other) => {
                    return Err(format!(
                        "unexpected {:?} from the broker",
                        other.packet_type()
                    ))
                }
            }
        }
    }

    /// Closes connection `index` after a failure, recording why.
    fn close(&mut self, index: usize, reason: String) {
        let conn = &mut self.conns[index];
        if !conn.open {
            return;
        }
        conn.open = false;
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let _ = conn.stream.shutdown(std::net::Shutdown::Both);
        self.errors.push(format!("{}: {reason}", conn.client_id));
        if let Role::Publisher(publisher) = &mut conn.role {
            publisher.finished_producing = true;
        }
    }

    fn publish_deltas(&mut self) {
        let deltas = std::mem::take(&mut self.deltas);
        if deltas.sent > 0 {
            self.shared.sent.fetch_add(deltas.sent, Ordering::Relaxed);
        }
        if deltas.acked > 0 {
            self.shared.acked.fetch_add(deltas.acked, Ordering::Relaxed);
        }
        if deltas.received > 0 {
            self.shared
                .received
                .fetch_add(deltas.received, Ordering::Relaxed);
        }
        if deltas.distinct > 0 {
            self.shared
                .distinct
                .fetch_add(deltas.distinct, Ordering::Relaxed);
        }
    }

    /// Counts publishers that have nothing left to do; called after
    /// [`Self::publish_deltas`] so their counts are visible first.
    fn check_publishers_done(&mut self) {
        for conn in &mut self.conns {
            let open = conn.open;
            let write_empty = conn.write_buf.is_empty();
            if let Role::Publisher(publisher) = &mut conn.role {
                let finished = !open
                    || (publisher.finished_producing && write_empty && publisher.inflight == 0);
                if finished && !publisher.done {
                    publisher.done = true;
                    self.shared.publishers_done.fetch_add(1, Ordering::Release);
                }
            }
        }
    }

    /// Once-per-interval chores: ship the interval histogram, keep-alive pings.
    fn tick(&mut self, now_ns: u64) {
        let index = now_ns / 1_000_000_000;
        if index > self.interval_index {
            self.ship_interval();
            self.interval_index = index;
        }
        let keep_alive_ns = u64::from(self.plan.connect.keep_alive_secs) * 1_000_000_000;
        if keep_alive_ns == 0 || now_ns < self.keep_alive_checked_ns + 100_000_000 {
            return;
        }
        self.keep_alive_checked_ns = now_ns;
        for index in 0..self.conns.len() {
            let conn = &mut self.conns[index];
            if conn.open && now_ns.saturating_sub(conn.last_write_ns) >= keep_alive_ns / 2 {
                Packet::PingReq.encode(&mut conn.write_buf);
                // Counts as written even if it sits in the buffer: no ping storm.
                conn.last_write_ns = now_ns;
                self.flush(index, now_ns);
            }
        }
    }

    fn ship_interval(&mut self) {
        if self.interval.is_empty() {
            return;
        }
        latency::merge(&mut self.latency, &self.interval);
        let histogram = std::mem::replace(&mut self.interval, new_histogram());
        let _ = self.events_tx.send(WorkerEvent::Interval {
            index: self.interval_index,
            histogram,
        });
    }

    /// Says goodbye on every open connection and hands the results back.
    fn finish(mut self) {
        let now_ns = self.now_ns();
        for index in 0..self.conns.len() {
            if !self.conns[index].open {
                continue;
            }
            // Whatever is still unwritten is lost to the broker: it is counted as sent,
            // so the subscribers report it as lost.
            Packet::Disconnect.encode(&mut self.conns[index].write_buf);
            self.flush(index, now_ns);
            let conn = &mut self.conns[index];
            conn.open = false;
            let _ = conn.stream.shutdown(std::net::Shutdown::Both);
        }
        self.ship_interval();
        let mut publishers = Vec::new();
        let mut subscribers = Vec::new();
        for conn in self.conns {
            match conn.role {
                Role::Publisher(publisher) => publishers.push(PublisherResult {
                    id: publisher.id,
                    sent: publisher.next_sequence,
                    sent_measured: publisher.sent_measured,
                    scheduled: self.plan.rate_per_sec.map(|rate| {
                        scheduled_count(
                            publisher.id,
                            self.plan.publishers,
                            rate,
                            self.plan.send_end_ns,
                        )
                    }),
                    acked: publisher.acked,
                    unexpected_acks: publisher.unexpected_acks,
                }),
                Role::Subscriber(subscriber) => subscribers.push(SubscriberResult {
                    id: subscriber.id,
                    granted_qos: subscriber.granted_qos,
                    streams: subscriber
                        .streams
                        .into_iter()
                        .enumerate()
                        .filter_map(|(publisher, tracker)| {
                            tracker.map(|tracker| (publisher as u32, tracker))
                        })
                        .collect(),
                    received: subscriber.received,
                    received_measured: subscriber.received_measured,
                    unexpected: subscriber.unexpected,
                }),
            }
        }
        let result = WorkerResult {
            worker: self.worker,
            publishers,
            subscribers,
            latency: self.latency,
            errors: self.errors,
        };
        let _ = self.events_tx.send(WorkerEvent::Finished(Box::new(result)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_loop_schedule_spreads_publishers_evenly() {
        // 4 publishers at 1000 msg/s in total: one message per millisecond overall.
        assert_eq!(scheduled_ns(0, 0, 4, 1000), 0);
        assert_eq!(scheduled_ns(1, 0, 4, 1000), 1_000_000);
        assert_eq!(scheduled_ns(3, 0, 4, 1000), 3_000_000);
        assert_eq!(scheduled_ns(0, 1, 4, 1000), 4_000_000);
        assert_eq!(scheduled_ns(2, 5, 4, 1000), 22_000_000);
    }

    #[test]
    fn scheduled_count_matches_counting_the_schedule() {
        for (publishers, rate, end_ns) in [
            (1u32, 1000u64, 1_000_000_000u64),
            (4, 1000, 1_000_000_000),
            (3, 7, 2_500_000_000),
            (5, 3, 999_999_999),
            (2, 1_000_000, 1_234_567),
        ] {
            for publisher in 0..publishers {
                let counted = (0..)
                    .take_while(|&sequence| {
                        scheduled_ns(publisher, sequence, publishers, rate) < end_ns
                    })
                    .count() as u64;
                assert_eq!(
                    scheduled_count(publisher, publishers, rate, end_ns),
                    counted,
                    "publisher {publisher} of {publishers} at {rate}/s until {end_ns} ns"
                );
            }
        }
    }
}
