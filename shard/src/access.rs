//! Who may connect and what they may do: the interface the broker's authentication and
//! authorization plug into, and the ban table for clients that keep failing.
//!
//! - [`Authenticator`] checks CONNECT credentials. It may be slow (password hashing), so
//!   the runtime calls it on the accepting shard's password-check thread
//!   ([`crate::offload`]), never on a shard, before the connection reaches its owner
//!   shard. It is shared by every shard (`Send + Sync`).
//! - [`Authorizer`] makes, at CONNECT, one [`ClientPolicy`] per connection; the core asks
//!   that policy on every PUBLISH and SUBSCRIBE (and for the will), and on every message
//!   it is about to send to the client (read access is checked per message, as Mosquitto
//!   does, so a subscription may overlap topics the client cannot read). Policies must
//!   answer in bounded time without I/O or locks: they run on the shard.
//! - [`BanTable`] counts failures (bad credentials, malformed packets) per client address
//!   and refuses an address that failed too often. It is the one structure shared by all
//!   shards behind a lock, touched only when a connection is accepted, fails or closes,
//!   never per message, with O(1) amortized work each time. It is bounded
//!   ([`ADDRESSES_MAX`]): addresses that failed and went quiet are forgotten oldest
//!   first, bans are not.
//!
//! Reloading (SIGHUP) swaps the authenticator and authorizer in an [`AccessControl`];
//! shards pick up a new authorizer at their next tick and re-derive the policies of
//! their connections. Existing subscriptions stay, but every message is checked against
//! the new policy before it is sent: what the new rules deny stops at once, for
//! persistent sessions too (their queued messages are checked when they are sent).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The client a decision is about.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    /// The client identifier (the assigned one if the client sent none).
    pub client_id: &'a str,
    /// The CONNECT user name, if any.
    pub username: Option<&'a str>,
}

/// What an [`Authenticator`] decided about a CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Credentials are good.
    Accept,
    /// Unknown user or wrong password: CONNACK 4.
    BadCredentials,
    /// Not allowed to connect: CONNACK 5.
    NotAuthorized,
}

/// Checks CONNECT credentials. Called on a password-check thread; may take milliseconds.
pub trait Authenticator: Send + Sync + std::fmt::Debug {
    /// Decides about a client presenting `password` (with `client.username`, which may be
    /// absent: an anonymous client).
    fn authenticate(&self, client: &Identity<'_>, password: Option<&[u8]>) -> AuthOutcome;
}

/// One connection's permissions, asked on the shard for every PUBLISH, SUBSCRIBE and
/// message sent to the client.
pub trait ClientPolicy: Send + std::fmt::Debug {
    /// Whether the client may publish to the topic name `topic`.
    fn may_publish(&self, topic: &str) -> bool;
    /// Whether the client may subscribe to the topic filter `filter`. A filter that
    /// overlaps topics the client may not read can be granted: [`may_read`] withholds
    /// those messages. Refuse only a filter none of whose messages could be sent.
    ///
    /// [`may_read`]: ClientPolicy::may_read
    fn may_subscribe(&self, filter: &str) -> bool;
    /// Whether a message published to the topic name `topic` may be sent to the client.
    fn may_read(&self, topic: &str) -> bool;
}

/// Makes the [`ClientPolicy`] of each connection.
pub trait Authorizer: Send + Sync + std::fmt::Debug {
    /// The permissions of `client`, resolved once at CONNECT.
    fn policy(&self, client: &Identity<'_>) -> Box<dyn ClientPolicy>;
}

/// The authentication and authorization in force, swappable at run time (SIGHUP).
#[derive(Debug, Default)]
pub struct AccessControl {
    authenticator: RwLock<Option<Arc<dyn Authenticator>>>,
    authorizer: RwLock<Option<Arc<dyn Authorizer>>>,
    /// Bumped at each [`AccessControl::set_authorizer`]: shards compare it at each tick.
    authorizer_generation: AtomicU64,
    /// Bans and per-address failure counts.
    pub bans: BanTable,
    /// Client connections admitted and not yet closed, on every shard: what
    /// `max_connections` limits (one atomic add per accepted connection, never per
    /// message).
    connections: AtomicUsize,
}

impl AccessControl {
    /// No authentication, no authorization, banning with `ban`.
    pub fn new(ban: BanConfig) -> AccessControl {
        AccessControl {
            bans: BanTable::new(ban),
            ..AccessControl::default()
        }
    }

    /// Replaces the authenticator (`None`: every client is accepted).
    pub fn set_authenticator(&self, authenticator: Option<Arc<dyn Authenticator>>) {
        *self
            .authenticator
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = authenticator;
    }

    /// The authenticator now in force.
    pub fn authenticator(&self) -> Option<Arc<dyn Authenticator>> {
        self.authenticator
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Replaces the authorizer (`None`: everything is allowed).
    pub fn set_authorizer(&self, authorizer: Option<Arc<dyn Authorizer>>) {
        *self
            .authorizer
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = authorizer;
        self.authorizer_generation.fetch_add(1, Ordering::Release);
    }

    /// The authorizer now in force and its generation.
    pub fn authorizer(&self) -> (u64, Option<Arc<dyn Authorizer>>) {
        let generation = self.authorizer_generation.load(Ordering::Acquire);
        let authorizer = self
            .authorizer
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        (generation, authorizer)
    }

    /// The generation of the authorizer (cheap: an atomic load).
    pub fn authorizer_generation(&self) -> u64 {
        self.authorizer_generation.load(Ordering::Acquire)
    }

    /// Client connections admitted and not yet closed, broker-wide.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

/// When an address is banned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BanConfig {
    /// Failures within `window` that ban the address; 0 turns banning off.
    pub threshold: u32,
    /// The window failures are counted in.
    pub window: Duration,
    /// How long a ban lasts.
    pub duration: Duration,
    /// Connections open at once from one address; 0: no limit.
    pub connections_per_address_max: u32,
}

impl Default for BanConfig {
    fn default() -> BanConfig {
        BanConfig {
            threshold: 10,
            window: Duration::from_secs(60),
            duration: Duration::from_secs(300),
            connections_per_address_max: 0,
        }
    }
}

#[derive(Debug, Default)]
struct AddressState {
    /// Failures in the current window, and when the window started.
    failures: u32,
    window_start: Option<Instant>,
    banned_until: Option<Instant>,
    /// Connections open now.
    open: u32,
    /// The sequence number the address was last put in [`Addresses::quiet`] with; an
    /// older entry for it there is stale.
    quiet_seq: Option<u64>,
}

/// The table behind [`BanTable`]'s lock, with what makes eviction O(1) amortized.
///
/// An address stays in `states` while it has a connection open, a failure recorded or a
/// ban. Once it has failures or a ban but no connection open it is *quiet*, and queued
/// in `quiet` (in the order addresses went quiet, so by last failure or last close);
/// bans are queued in `bans` in the order they end (they all last `duration`). Both
/// queues are lazy: an entry whose address has since connected, been queued again or
/// been removed is stale and dropped when met. Each entry is pushed once and popped at
/// most once, and a queue with more stale entries than live ones is compacted, so the
/// work per call is O(1) amortized, never a scan of the table per accept.
#[derive(Debug, Default)]
struct Addresses {
    states: HashMap<IpAddr, AddressState>,
    quiet: VecDeque<(u64, IpAddr)>,
    quiet_seq_next: u64,
    bans: VecDeque<(Instant, IpAddr)>,
    /// Queue entries looked at while evicting, for the tests' O(1) check.
    examined_total: u64,
}

impl Addresses {
    /// `address` has failures or a ban and no connection open: queues it for eviction
    /// behind every address that went quiet before it.
    fn went_quiet(&mut self, address: IpAddr) {
        let Some(state) = self.states.get_mut(&address) else {
            return;
        };
        let seq = self.quiet_seq_next;
        self.quiet_seq_next += 1;
        state.quiet_seq = Some(seq);
        self.quiet.push_back((seq, address));
        if self.quiet.len() > 2 * self.states.len() + 64 {
            // At least half the entries are stale (an address has one live entry at
            // most): dropping them pays for the pushes since the last compaction.
            let states = &self.states;
            self.quiet.retain(|(seq, address)| {
                states.get(address).and_then(|s| s.quiet_seq) == Some(*seq)
            });
        }
    }

    /// `address` was banned until `until`.
    fn banned(&mut self, address: IpAddr, until: Instant) {
        self.bans.push_back((until, address));
        if self.bans.len() > 2 * self.states.len() + 64 {
            let states = &self.states;
            self.bans.retain(|(until, address)| {
                states.get(address).and_then(|s| s.banned_until) == Some(*until)
            });
        }
    }

    /// Makes room for one more address when the table holds `addresses_max`: forgets an
    /// address whose ban has ended, or else the address that went quiet first and is not
    /// banned now. An address banned now or with a connection open is never forgotten;
    /// when only such addresses are left the table grows past `addresses_max` by them.
    fn make_room(&mut self, addresses_max: usize, now: Instant) {
        if self.states.len() < addresses_max {
            return;
        }
        // Bans end in the order they were imposed; an ended one is the quietest entry.
        while let Some(&(until, address)) = self.bans.front() {
            if until > now {
                break;
            }
            self.bans.pop_front();
            self.examined_total += 1;
            if self
                .states
                .get(&address)
                .is_some_and(|s| s.banned_until == Some(until) && s.open == 0)
            {
                self.states.remove(&address);
                return;
            }
        }
        while let Some((seq, address)) = self.quiet.pop_front() {
            self.examined_total += 1;
            let Some(state) = self.states.get(&address) else {
                continue;
            };
            if state.quiet_seq != Some(seq) || state.open > 0 {
                // Stale, or connected again: queued again when its last connection closes.
                continue;
            }
            if state.banned_until.is_some_and(|until| until > now) {
                // Banned now: `bans` holds it until the ban ends.
                continue;
            }
            self.states.remove(&address);
            return;
        }
    }
}

/// Failure counts, bans and open connections per client address. See the module docs.
///
/// Bounded: at most [`ADDRESSES_MAX`] addresses, plus those banned now or with a
/// connection open (which the connection limits bound). Beyond it a new address evicts
/// the address that failed and went quiet longest ago; a flood of addresses that each
/// fail once therefore cycles through the table without evicting a ban.
#[derive(Debug)]
pub struct BanTable {
    config: BanConfig,
    addresses_max: usize,
    addresses: Mutex<Addresses>,
    /// Addresses banned so far (a ban that expires and is imposed again counts twice).
    pub bans_total: AtomicU64,
    /// Connections refused because their address was banned.
    pub refused_banned_total: AtomicU64,
    /// Connections refused for the per-address limit.
    pub refused_address_limit_total: AtomicU64,
}

impl Default for BanTable {
    fn default() -> BanTable {
        BanTable::new(BanConfig::default())
    }
}

/// Why [`BanTable::admit`] refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The address is banned.
    Banned,
    /// The address has `connections_per_address_max` connections open.
    TooManyConnections,
    /// The broker has `max_connections` connections open.
    BrokerFull,
}

/// An admitted connection's place in the broker-wide connection count and in the
/// [`BanTable`]: released when dropped, wherever the connection ends (it may move to
/// another shard with its socket).
#[derive(Debug)]
pub struct Admitted {
    access: Arc<AccessControl>,
    /// The client's address, when the socket could tell it.
    pub peer: Option<IpAddr>,
}

impl Admitted {
    /// Admits a connection from `peer` while fewer than `connections_max` are open in
    /// the whole broker (0: no limit), or says why not.
    pub fn admit(
        access: &Arc<AccessControl>,
        peer: Option<IpAddr>,
        connections_max: usize,
    ) -> Result<Admitted, Refusal> {
        let open = access.connections.fetch_add(1, Ordering::Relaxed);
        if connections_max > 0 && open >= connections_max {
            access.connections.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::BrokerFull);
        }
        // From here on, dropping `admitted` gives the slot back.
        let mut admitted = Admitted {
            access: Arc::clone(access),
            peer: None,
        };
        if let Some(address) = peer {
            access.bans.admit(address, Instant::now())?;
            // Admitted by the ban table too: released there on drop.
            admitted.peer = Some(address);
        }
        Ok(admitted)
    }

    /// The client failed (bad credentials, malformed packet): counts toward a ban.
    pub fn record_failure(&self) {
        if let Some(peer) = self.peer {
            self.access.bans.record_failure(peer, Instant::now());
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.access.connections.fetch_sub(1, Ordering::Relaxed);
        if let Some(peer) = self.peer {
            self.access.bans.release(peer);
        }
    }
}

/// Addresses kept at most, besides those banned now or with a connection open; beyond
/// it, the address that failed and went quiet longest ago is forgotten (so a scan from
/// many addresses cannot grow memory without bound). Under 200 bytes each, queues included.
pub const ADDRESSES_MAX: usize = 100_000;

impl BanTable {
    /// A table applying `config`.
    pub fn new(config: BanConfig) -> BanTable {
        BanTable::with_addresses_max(config, ADDRESSES_MAX)
    }

    /// A table applying `config` that keeps `addresses_max` quiet addresses at most.
    pub fn with_addresses_max(config: BanConfig, addresses_max: usize) -> BanTable {
        BanTable {
            config,
            addresses_max,
            addresses: Mutex::default(),
            bans_total: AtomicU64::new(0),
            refused_banned_total: AtomicU64::new(0),
            refused_address_limit_total: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Addresses> {
        self.addresses
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Addresses in the table now.
    pub fn len(&self) -> usize {
        self.lock().states.len()
    }

    /// Whether the table holds no address.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A connection from `address` was accepted: admits it (and counts it open) or says
    /// why not. An admitted connection must be [`BanTable::release`]d when it closes.
    /// O(1) amortized: one lookup, and at most one eviction when the address is new.
    pub fn admit(&self, address: IpAddr, now: Instant) -> Result<(), Refusal> {
        let mut addresses = self.lock();
        if !addresses.states.contains_key(&address) {
            addresses.make_room(self.addresses_max, now);
        }
        let state = addresses.states.entry(address).or_default();
        if let Some(until) = state.banned_until {
            if until > now {
                self.refused_banned_total.fetch_add(1, Ordering::Relaxed);
                return Err(Refusal::Banned);
            }
            state.banned_until = None;
            state.failures = 0;
            state.window_start = None;
        }
        let max = self.config.connections_per_address_max;
        if max > 0 && state.open >= max {
            self.refused_address_limit_total
                .fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::TooManyConnections);
        }
        state.open += 1;
        Ok(())
    }

    /// An admitted connection from `address` closed.
    pub fn release(&self, address: IpAddr) {
        let mut addresses = self.lock();
        let Some(state) = addresses.states.get_mut(&address) else {
            return;
        };
        state.open = state.open.saturating_sub(1);
        if state.open > 0 {
            return;
        }
        if state.failures == 0 && state.banned_until.is_none() {
            addresses.states.remove(&address);
        } else {
            addresses.went_quiet(address);
        }
    }

    /// A client at `address` failed (bad credentials, malformed packet). Returns true
    /// when this failure banned the address.
    pub fn record_failure(&self, address: IpAddr, now: Instant) -> bool {
        if self.config.threshold == 0 {
            return false;
        }
        let mut addresses = self.lock();
        if !addresses.states.contains_key(&address) {
            addresses.make_room(self.addresses_max, now);
        }
        let state = addresses.states.entry(address).or_default();
        match state.window_start {
            Some(start) if now.duration_since(start) <= self.config.window => {}
            _ => {
                state.window_start = Some(now);
                state.failures = 0;
            }
        }
        state.failures += 1;
        let open = state.open;
        let mut banned = false;
        if state.failures > self.config.threshold && state.banned_until.is_none_or(|u| u <= now) {
            let until = now + self.config.duration;
            state.banned_until = Some(until);
            self.bans_total.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                %address,
                failures = state.failures,
                ban_secs = self.config.duration.as_secs(),
                "banning a client address that keeps failing"
            );
            addresses.banned(address, until);
            banned = true;
        }
        if open == 0 {
            // Failed with no connection open (a TLS handshake): quiet from now on.
            addresses.went_quiet(address);
        }
        banned
    }

    /// Whether `address` is banned now.
    pub fn is_banned(&self, address: IpAddr, now: Instant) -> bool {
        self.lock()
            .states
            .get(&address)
            .and_then(|s| s.banned_until)
            .is_some_and(|until| until > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn table(threshold: u32, per_address: u32) -> BanTable {
        BanTable::new(BanConfig {
            threshold,
            window: Duration::from_secs(10),
            duration: Duration::from_secs(30),
            connections_per_address_max: per_address,
        })
    }

    #[test]
    fn an_address_is_banned_after_more_than_threshold_failures_in_the_window() {
        let t = table(3, 0);
        let now = Instant::now();
        for i in 0..3 {
            assert!(!t.record_failure(ip(1), now + Duration::from_secs(i)));
        }
        assert!(t.admit(ip(1), now).is_ok());
        assert!(t.record_failure(ip(1), now + Duration::from_secs(3)));
        assert_eq!(
            t.admit(ip(1), now + Duration::from_secs(4)),
            Err(Refusal::Banned)
        );
        assert!(
            t.admit(ip(2), now).is_ok(),
            "other addresses are not affected"
        );
        // The ban ends.
        assert!(t.admit(ip(1), now + Duration::from_secs(40)).is_ok());
        assert_eq!(t.bans_total.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let t = table(2, 0);
        let now = Instant::now();
        for i in 0..6 {
            assert!(!t.record_failure(ip(1), now + Duration::from_secs(11 * i)));
        }
        assert!(!t.is_banned(ip(1), now + Duration::from_secs(70)));
    }

    #[test]
    fn threshold_zero_turns_banning_off() {
        let t = table(0, 0);
        let now = Instant::now();
        for _ in 0..100 {
            assert!(!t.record_failure(ip(1), now));
        }
        assert!(t.admit(ip(1), now).is_ok());
    }

    #[test]
    fn admitted_connections_are_counted_broker_wide_and_released_on_drop() {
        let access = Arc::new(AccessControl::new(BanConfig {
            threshold: 1,
            ..BanConfig::default()
        }));
        let a = Admitted::admit(&access, Some(ip(1)), 2).expect("first");
        let b = Admitted::admit(&access, None, 2).expect("second, no address");
        assert_eq!(
            Admitted::admit(&access, Some(ip(2)), 2).err(),
            Some(Refusal::BrokerFull)
        );
        assert_eq!(access.connections(), 2, "a refusal gives its slot back");
        drop(a);
        assert!(Admitted::admit(&access, Some(ip(2)), 2).is_ok());
        drop(b);
        assert_eq!(access.connections(), 0);
        // A banned address takes no slot.
        let now = Instant::now();
        access.bans.record_failure(ip(3), now);
        access.bans.record_failure(ip(3), now);
        assert_eq!(
            Admitted::admit(&access, Some(ip(3)), 2).err(),
            Some(Refusal::Banned)
        );
        assert_eq!(access.connections(), 0);
    }

    /// Address number `n` of a flood (10.x.y.z).
    fn flood_ip(n: u32) -> IpAddr {
        IpAddr::from(((10u32 << 24) | n).to_be_bytes())
    }

    #[test]
    fn a_flood_of_addresses_failing_once_keeps_the_table_at_its_bound_and_the_ban() {
        const MAX: usize = 1000;
        const FLOOD: u32 = 20_000;
        let t = BanTable::with_addresses_max(
            BanConfig {
                threshold: 3,
                window: Duration::from_secs(10),
                duration: Duration::from_secs(3600),
                connections_per_address_max: 1,
            },
            MAX,
        );
        let now = Instant::now();
        let banned = IpAddr::from([192, 168, 0, 1]);
        for _ in 0..4 {
            t.record_failure(banned, now);
        }
        assert!(t.is_banned(banned, now));
        // An address with a connection open that failed once: never evicted either.
        let connected = IpAddr::from([192, 168, 0, 2]);
        assert!(t.admit(connected, now).is_ok());
        t.record_failure(connected, now);
        for n in 1..=FLOOD {
            let address = flood_ip(n);
            let at = now + Duration::from_millis(u64::from(n));
            assert!(t.admit(address, at).is_ok());
            assert!(!t.record_failure(address, at));
            t.release(address);
            assert!(t.len() <= MAX, "{} addresses after {n}", t.len());
        }
        let at = now + Duration::from_secs(60);
        assert!(t.is_banned(banned, at), "the flood evicted a ban");
        assert_eq!(t.admit(banned, at), Err(Refusal::Banned));
        assert_eq!(
            t.admit(connected, at),
            Err(Refusal::TooManyConnections),
            "the flood evicted an address with a connection open"
        );
        // The most recent failures are the ones kept.
        assert_eq!(t.len(), MAX);
        let kept = t.lock();
        assert!(kept.states.contains_key(&flood_ip(FLOOD)));
        assert!(!kept.states.contains_key(&flood_ip(FLOOD - MAX as u32)));
        // O(1) amortized per accept: each queue entry is looked at about once.
        assert!(
            kept.examined_total <= 2 * u64::from(FLOOD),
            "{} queue entries examined for {FLOOD} accepts",
            kept.examined_total
        );
        assert!(kept.quiet.len() <= 2 * kept.states.len() + 64);
    }

    #[test]
    fn failures_without_a_connection_are_bounded_too() {
        // A TLS handshake that fails records a failure before any admit.
        let t = BanTable::with_addresses_max(
            BanConfig {
                threshold: 1,
                ..BanConfig::default()
            },
            100,
        );
        let now = Instant::now();
        for n in 0..10_000 {
            t.record_failure(flood_ip(n), now);
            assert!(t.len() <= 100);
        }
        // Repeated failures of one address do not grow its queue without bound.
        for _ in 0..10_000 {
            t.record_failure(flood_ip(0), now);
        }
        let table = t.lock();
        assert!(table.quiet.len() <= 2 * table.states.len() + 64);
    }

    #[test]
    fn an_ended_ban_is_evicted_like_a_quiet_address() {
        let t = BanTable::with_addresses_max(
            BanConfig {
                threshold: 1,
                window: Duration::from_secs(10),
                duration: Duration::from_secs(30),
                connections_per_address_max: 0,
            },
            10,
        );
        let now = Instant::now();
        t.record_failure(ip(1), now);
        assert!(t.record_failure(ip(1), now));
        // Ten addresses that fail once, each newer than the ban: while it lasts, the
        // ban stays and the oldest of them goes.
        for n in 100..110 {
            t.record_failure(flood_ip(n), now);
        }
        assert!(t.is_banned(ip(1), now));
        assert!(t.len() <= 10);
        // Once it has ended, it is the first to go.
        let later = now + Duration::from_secs(31);
        t.record_failure(flood_ip(200), later);
        assert!(!t.lock().states.contains_key(&ip(1)));
        assert!(t.len() <= 10);
    }

    #[test]
    fn connections_per_address_are_limited_and_released() {
        let t = table(0, 2);
        let now = Instant::now();
        assert!(t.admit(ip(1), now).is_ok());
        assert!(t.admit(ip(1), now).is_ok());
        assert_eq!(t.admit(ip(1), now), Err(Refusal::TooManyConnections));
        t.release(ip(1));
        assert!(t.admit(ip(1), now).is_ok());
    }
}
